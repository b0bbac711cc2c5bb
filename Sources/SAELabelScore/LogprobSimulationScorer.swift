import Foundation
import LLMClient
import SAELabelCore
import Synchronization

/// SPEC §5's all-at-once simulator on the completions API: one prompt per held-out window (a
/// few-shot block from `Prompts/simulator-logprobs.mustache`, then the window with every value
/// written `unknown`), sent with `echo` and `logprobs`. `max_tokens` is 1, never 0 (llama.cpp then
/// generates until the context is full); the generated token is dropped. At each `unknown` position
/// the value is the expected value over the digits "0"…"10" among the top logprobs,
/// `Σ v·exp(lp_v) / Σ exp(lp_v)`, and 0 when no digit is among them.
///
/// Alignment: OpenAI's entry i is the distribution of token i; llama.cpp (SmolLM2) shifts it by one
/// (entry i is the distribution of token i+1). The first call of a scorer sends a probe prompt
/// and picks the convention whose entries put more probability on digits at the `unknown` positions.
/// Which `unknown` tokens belong to the window: the last n tokens whose text is `unknown`.
public struct LogprobSimulationScorer: Scorer {
    public let name = "simulation"
    public let model: String
    public let promptHash: String
    public let topLogprobs: Int
    private let client: LLMClient
    private let template: PromptTemplate
    private let convention = ConventionBox()

    public enum Alignment: String, Sendable, Equatable {
        /// Entry i holds the distribution of token i.
        case sameToken
        /// Entry i holds the distribution of token i+1.
        case nextToken
    }

    public init(client: LLMClient, model: String, prompts: PromptLibrary, topLogprobs: Int = 15) throws(SAELabelError) {
        if let refusal = Self.unsupported(client.server) { throw .usage(refusal) }
        self.client = client
        self.model = model
        self.topLogprobs = topLogprobs
        self.template = try prompts.template("simulator-logprobs")
        self.promptHash = ScoringSupport.hash(["logprob-simulator-v1", "logprobs=\(topLogprobs)", template.source])
    }

    /// Servers the logprob simulator works with: those whose `/completions` return logprobs for the echoed prompt.
    public static let supportedServers = LLMServer.allCases.filter(\.echoesPromptLogprobs)

    /// One line saying why `server` cannot run the logprob simulator, or nil when it can.
    public static func unsupported(_ server: LLMServer) -> String? {
        guard !server.echoesPromptLogprobs else { return nil }
        let names = supportedServers.map(\.rawValue).joined(separator: " or ")
        return "the logprob simulator needs prompt logprobs from /completions with echo, which only \(names) return; "
            + "\(server.rawValue) does not: use the JSON simulator (mode = \"json\", --simulator json)"
    }

    public func prompt(explanation: String, tokens: [String]) -> String {
        let lines = ActivationFormat.recordLines(tokens: tokens.map(ScoringSupport.lineToken),
                                                 values: Array(repeating: nil, count: tokens.count))
        return template.render(["explanation": explanation, "records": ActivationFormat.wrapRecords([lines])])
    }

    /// The digit distributions at the window's `unknown` positions, under an alignment.
    static func distributions(_ response: CompletionResponse, count: Int, alignment: Alignment) -> [[TopLogprob]]? {
        // The last token is the one generated (max_tokens 1): drop it.
        let tokens = Array(response.tokens.dropLast())
        let entries = Array(response.topLogprobs.prefix(tokens.count))
        let positions = tokens.indices.filter { tokens[$0].trimmingCharacters(in: .whitespacesAndNewlines) == "unknown" }
        guard positions.count >= count else { return nil }
        return positions.suffix(count).map { position in
            let index = alignment == .sameToken ? position : position - 1
            return entries.indices.contains(index) ? entries[index] : []
        }
    }

    /// `Σ v·exp(lp_v) / Σ exp(lp_v)` over the digit tokens present; nil when none is.
    public static func expectedValue(_ top: [TopLogprob]) -> Double? {
        var weighted = 0.0, total = 0.0
        for entry in top {
            guard let value = Int(entry.token.trimmingCharacters(in: .whitespaces)), (0...10).contains(value) else { continue }
            let p = exp(entry.logprob)
            weighted += Double(value) * p
            total += p
        }
        return total > 0 ? weighted / total : nil
    }

    private static func digitMass(_ distributions: [[TopLogprob]]) -> Double {
        distributions.reduce(0) { sum, top in
            sum + top.reduce(0) { inner, entry in
                guard let value = Int(entry.token.trimmingCharacters(in: .whitespaces)), (0...10).contains(value) else { return inner }
                return inner + exp(entry.logprob)
            }
        }
    }

    private func complete(_ prompt: String, tag: String) async throws(SAELabelError) -> CompletionResponse {
        let request = CompletionRequest(model: model, prompt: prompt, maxTokens: 1, echo: true, logprobs: topLogprobs, temperature: 0)
        do {
            return try await client.complete(request, tag: tag)
        } catch {
            throw .llm(error.description)
        }
    }

    /// Detects (once per scorer) which logprob convention the server follows.
    public func alignment() async throws(SAELabelError) -> Alignment {
        if let known = convention.value { return known }
        let tokens = ["The", " cat", " sat", " on", " the", " mat", "."]
        let response = try await complete(prompt(explanation: "the word \"cat\"", tokens: tokens), tag: "simulate:probe")
        let same = Self.distributions(response, count: tokens.count, alignment: .sameToken).map(Self.digitMass) ?? 0
        let next = Self.distributions(response, count: tokens.count, alignment: .nextToken).map(Self.digitMass) ?? 0
        guard same > 0 || next > 0 else {
            throw .llm("the server's echo logprobs put no digits at the `unknown` positions of the probe prompt; use the JSON simulator")
        }
        let found: Alignment = same >= next ? .sameToken : .nextToken
        convention.value = found
        return found
    }

    public func score(feature: Int, explanation: String, heldout: [ActivationWindow]) async throws(SAELabelError) -> ScoreResult {
        let alignment = try await alignment()
        var windows: [SimulationDetails.Window] = []
        var simulated: [[Double]] = []
        var failed = 0
        for (ordinal, window) in heldout.enumerated() {
            guard !window.tokens.isEmpty else {
                simulated.append([])
                windows.append(SimulationDetails.Window(heldoutOrdinal: ordinal, simulated: []))
                continue
            }
            let response = try await complete(prompt(explanation: explanation, tokens: window.tokens),
                                              tag: "simulate:\(feature):\(ordinal)")
            if let distributions = Self.distributions(response, count: window.tokens.count, alignment: alignment) {
                let values = distributions.map { Self.expectedValue($0) ?? 0 }
                simulated.append(values)
                windows.append(SimulationDetails.Window(heldoutOrdinal: ordinal, simulated: values))
            } else {
                failed += 1
                simulated.append(Array(repeating: 0, count: window.tokens.count))
                windows.append(SimulationDetails.Window(heldoutOrdinal: ordinal, simulated: nil,
                                                        error: "the echoed prompt does not hold \(window.tokens.count) `unknown` tokens"))
            }
        }
        var result = SimulationScoring.result(heldout: heldout, simulated: simulated, windows: windows,
                                              failedWindows: failed, retriedWindows: 0)
        result.unusableTags = windows.filter { $0.simulated == nil }.map { "simulate:\(feature):\($0.heldoutOrdinal)" }
        return result
    }
}

/// The detected alignment, shared by copies of one scorer.
final class ConventionBox: Sendable {
    private let state = Mutex<LogprobSimulationScorer.Alignment?>(nil)
    var value: LogprobSimulationScorer.Alignment? {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }
}
