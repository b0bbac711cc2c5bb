import Foundation
import LLMClient
import SAELabelCore
import SAELabelStore

/// Scores one explanation against a feature's held-out windows.
public protocol Scorer: Sendable {
    /// "simulation" | "detection" | "fuzzing" — the score's name in the store and the exports.
    var name: String { get }
    var model: String { get }
    /// Hash of the templates and settings that shape the requests.
    var promptHash: String { get }
    /// `heldout` is the feature's held-out split in ordinal order: element i is held-out ordinal i.
    func score(feature: Int, explanation: String, heldout: [ActivationWindow]) async throws(SAELabelError) -> ScoreResult
    /// LLM calls a first attempt at scoring these windows sends (retries of bad answers not counted),
    /// so `--dry-run` predicts what the run sends.
    func plannedCalls(heldout: [ActivationWindow]) -> Int
}

extension Scorer {
    /// One call per non-empty held-out window (the simulators).
    public func plannedCalls(heldout: [ActivationWindow]) -> Int { heldout.filter { !$0.tokens.isEmpty }.count }
}

public struct ScoreResult: Sendable, Equatable {
    /// The headline number (Pearson r, or balanced accuracy); nil when it cannot be computed.
    public var value: Double?
    /// JSON object: `SimulationDetails` or `ClassificationDetails`.
    public var details: String
    /// Set when the score is not trustworthy under the failure rule (see `ScoreStep`); the score is then
    /// not stored and the feature fails with this reason.
    public var failure: String?
    /// Call tags of the unusable answers: they are dropped from the response cache when the score
    /// fails, so the next run asks the server again instead of re-reading the same bad answer.
    public var unusableTags: [String] = []

    public init(value: Double?, details: String, failure: String? = nil) {
        self.value = value
        self.details = details
        self.failure = failure
    }
}

public enum ScoreStep {
    /// Scores the feature's current explanation with every scorer that has no stored score for it yet
    /// from the same model and prompt (so a resumed run skips finished scorers, and a changed simulator
    /// re-scores). Each score is saved as soon as it is computed; the last save moves the feature to
    /// `scored`. Throws on failure; the caller marks the feature failed.
    ///
    /// The failure rule: a failure is never a score. A simulation with any held-out window still
    /// unusable after the retry, or a detection/fuzzing score with any prompt still unusable after the
    /// retry, is not stored; the feature fails with the reason, exports show `null`, and the next run
    /// scores it again.
    public static func run(feature: Int, store: JobStore, scorers: [any Scorer]) async throws(SAELabelError) {
        guard let explanation = try store.currentExplanation(feature: feature) else {
            throw .feature(index: feature, stage: "score", reason: "no explanation in the current pass; run explain first")
        }
        let stored = try store.scores(explanation: explanation)
        var seen = Set<String>()
        let todo = scorers.filter { scorer in
            let done = stored.contains { $0.scorer == scorer.name && $0.model == scorer.model && $0.promptHash == scorer.promptHash }
            return !done && seen.insert(scorer.name).inserted
        }
        guard !todo.isEmpty else {
            if try store.feature(feature)?.state != .scored { try store.setState(feature: feature, .scored) }
            return
        }
        let heldout = try store.examples(feature: feature, split: .heldout).map(\.window)
        guard !heldout.isEmpty else {
            throw .feature(index: feature, stage: "score", reason: "no held-out examples in the store; run collect first")
        }
        var deferred: SAELabelError?
        for (position, scorer) in todo.enumerated() {
            let result: ScoreResult
            do {
                result = try await scorer.score(feature: feature, explanation: explanation.text, heldout: heldout)
            } catch {
                // Batch mode: let the other scorers queue their requests too before the feature is put off.
                guard ScoringSupport.isDeferred else { throw error }
                deferred = deferred ?? error
                continue
            }
            if let failure = result.failure {
                try store.forgetLLMResponses(tags: result.unusableTags)
                throw .feature(index: feature, stage: "score", reason: "\(scorer.name): \(failure)")
            }
            if stored.contains(where: { $0.scorer == scorer.name }) {
                try store.removeStaleScore(explanation: explanation, scorer: scorer.name)
            }
            let score = StoredScore(scorer: scorer.name, value: result.value, model: scorer.model,
                                    promptHash: scorer.promptHash, details: result.details)
            try store.saveScore(explanation: explanation, score: score, completesFeature: position == todo.count - 1 && deferred == nil)
        }
        if let deferred { throw deferred }
    }
}

/// Helpers shared by the scorers.
enum ScoringSupport {
    static func hash(_ parts: [String]) -> String {
        String(Hashing.sha256Hex(parts.joined(separator: "\u{0}")).prefix(16))
    }

    /// The optional system message, then the user message, both rendered from one context.
    static func messages(system: PromptTemplate?, user: PromptTemplate, context: [String: Any]) -> [ChatMessage] {
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: "system", content: trimmed(system.render(context)))) }
        messages.append(ChatMessage(role: "user", content: trimmed(user.render(context))))
        return messages
    }

    /// Drops the trailing whitespace Mustache leaves after the last line.
    static func trimmed(_ text: String) -> String {
        var result = text
        while let last = result.last, last == "\n" || last == " " { result.removeLast() }
        return result
    }

    /// Whether a request of the running feature step was queued for a batch (see `BatchDeferral`).
    static var isDeferred: Bool { BatchDeferral.mark?.isSet ?? false }

    static func chat(_ client: LLMClient, _ request: ChatRequest, tag: String) async throws(SAELabelError) -> ChatResponse {
        do {
            return try await client.chat(request, tag: tag)
        } catch {
            throw .llm(error.description)
        }
    }

    static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    /// A token as written on a `token<TAB>N` line: newlines and tabs would break the line format,
    /// so they are written as the visible escapes `\n`, `\r` and `\t`.
    static func lineToken(_ token: String) -> String {
        token.replacingOccurrences(of: "\r\n", with: "\\r\\n").replacingOccurrences(of: "\n", with: "\\n")
            .replacingOccurrences(of: "\r", with: "\\r").replacingOccurrences(of: "\t", with: "\\t")
    }

    /// A bad answer as shown back to the model in a retry (long answers are cut).
    static func shown(_ answer: String, limit: Int = 2000) -> String {
        answer.count > limit ? String(answer.prefix(limit)) + "…" : answer
    }
}

