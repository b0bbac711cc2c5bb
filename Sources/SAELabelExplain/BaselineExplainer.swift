import Foundation
import SAELabelCore

/// A label without an LLM: the tokens the feature fires on most in its explain set, weighted by
/// activation, e.g. `tokens like "import", "from", "def"`. Deterministic; a floor to compare LLM
/// labels against and a way to run the pipeline with no server.
public struct BaselineExplainer: Explainer {
    public let name = "baseline"
    public let model = "baseline"
    public let topTokens: Int
    public var promptHash: String { "baseline-v1-top\(topTokens)" }

    public init(topTokens: Int = 3) {
        self.topTokens = max(1, topTokens)
    }

    /// The firing tokens ranked by summed positive activation (ties: alphabetical). Tokens are
    /// compared with surrounding whitespace removed, so " import" and "import" count together.
    public func rankedTokens(_ examples: [ActivationWindow]) -> [(token: String, weight: Double)] {
        var weights: [String: Double] = [:]
        for window in examples {
            for (token, activation) in zip(window.tokens, window.activations) where activation > 0 {
                let trimmed = token.trimmingCharacters(in: .whitespacesAndNewlines)
                let key = trimmed.isEmpty ? ActivationFormat.escapedToken(token) : trimmed
                weights[key, default: 0] += Double(activation)
            }
        }
        return weights.map { (token: $0.key, weight: $0.value) }
            .sorted { $0.weight != $1.weight ? $0.weight > $1.weight : $0.token < $1.token }
    }

    public func explain(feature: Int, examples: [ActivationWindow]) async throws(SAELabelError) -> ExplanationResult {
        let ranked = rankedTokens(examples).prefix(topTokens)
        guard !ranked.isEmpty else {
            throw .feature(index: feature, stage: "explain", reason: "the feature fires on no token of its explain examples")
        }
        let quoted = ranked.map { "\"\($0.token)\"" }.joined(separator: ", ")
        return ExplanationResult(text: "tokens like \(quoted)", raw: nil)
    }
}
