import Foundation
import LLMClient
import SAELabelCore

/// delphi's detection and fuzzing scores (SPEC §6), sharing one engine.
///
/// Items: the held-out top and quantile windows are "activating" (truth 1), the held-out random
/// windows "non-activating" (truth 0). They are shuffled with a generator seeded from `seed` and the
/// feature index, and asked about `batchSize` per prompt as `<examples count=N>` with
/// `<example i>…</example>` (i from 1). The answer is a list of N 0/1 values, parsed from a JSON list
/// or, failing that, from the standalone digits 0/1 in the answer. A bad answer is sent back with
/// the problem stated and asked once more; if that fails too, the prompt is counted in
/// `failedPrompts` and each of its windows counts as wrongly classified.
/// Value: balanced accuracy (see `ScoreMath.classification` for the 0/0 cases).
struct ClassificationEngine: Sendable {
    enum Mode: String, Sendable {
        case detection, fuzzing
        var tagPrefix: String { self == .detection ? "detect" : "fuzz" }
    }

    let mode: Mode
    let model: String
    let seed: UInt64
    let batchSize: Int
    let client: LLMClient
    let system: PromptTemplate?
    let user: PromptTemplate
    let promptHash: String

    init(mode: Mode, client: LLMClient, model: String, prompts: PromptLibrary, seed: UInt64, batchSize: Int) throws(SAELabelError) {
        self.mode = mode
        self.client = client
        self.model = model
        self.seed = seed
        self.batchSize = max(1, batchSize)
        self.user = try prompts.template(mode.rawValue)
        self.system = try prompts.optionalTemplate("\(mode.rawValue).system")
        var parts = ["\(mode.rawValue)-v1", "batch=\(self.batchSize)", "seed=\(seed)", user.source]
        if let system { parts.append(system.source) }
        self.promptHash = ScoringSupport.hash(parts)
    }

    struct Item: Sendable, Equatable {
        var ordinal: Int
        var truth: Bool
        var text: String
    }

    /// The shuffled items with the text shown for each window.
    func items(feature: Int, heldout: [ActivationWindow]) -> [Item] {
        var generator = SplitMix64(state: seed ^ (UInt64(truncatingIfNeeded: feature) &* 0x9E37_79B9_7F4A_7C15))
        let activating = heldout.filter { $0.kind != .random }
        // Fuzzing marks as many random tokens in a non-activating window as an activating one has on average.
        let highlightCounts = activating.map { window in
            window.activations.filter { $0 > 0.3 * window.maxActivation && window.maxActivation > 0 }.count
        }
        let meanHighlights = highlightCounts.isEmpty ? 1
            : max(1, Int((Double(highlightCounts.reduce(0, +)) / Double(highlightCounts.count)).rounded()))
        var items: [Item] = []
        for (ordinal, window) in heldout.enumerated() {
            let truth = window.kind != .random
            let text: String
            switch mode {
            case .detection:
                text = window.tokens.joined()
            case .fuzzing where truth:
                text = ActivationFormat.highlighted(tokens: window.tokens, activations: window.activations)
            case .fuzzing:
                var positions = Array(window.tokens.indices)
                positions.shuffle(using: &generator)
                let marked = Set(positions.prefix(min(meanHighlights, positions.count)))
                let marks: [Float] = window.tokens.indices.map { marked.contains($0) ? 1 : 0 }
                text = ActivationFormat.highlighted(tokens: window.tokens, activations: marks)
            }
            items.append(Item(ordinal: ordinal, truth: truth, text: text))
        }
        items.shuffle(using: &generator)
        return items
    }

    func messages(explanation: String, batch: [Item]) -> [ChatMessage] {
        let examples: [[String: Any]] = batch.enumerated().map { ["index": $0.offset + 1, "text": $0.element.text] }
        let context: [String: Any] = ["explanation": explanation, "count": batch.count, "examples": examples]
        return ScoringSupport.messages(system: system, user: user, context: context)
    }

    /// Reads N answers: a JSON list of 0/1 (numbers, booleans or "0"/"1" strings), or else the
    /// standalone digits 0 and 1 in the text, in order.
    static func parseAnswer(_ text: String, count: Int) -> Result<[Bool], ClassificationAnswerProblem> {
        if let start = text.firstIndex(of: "["), let end = text[start...].firstIndex(of: "]"),
           let list = try? JSONSerialization.jsonObject(with: Data(text[start...end].utf8)) as? [Any] {
            var values: [Bool] = []
            for entry in list {
                switch entry {
                case let string as String:
                    guard let value = binary(string) else { return .failure(.notBinary) }
                    values.append(value)
                case let number as NSNumber:
                    guard number.doubleValue == 0 || number.doubleValue == 1 else { return .failure(.notBinary) }
                    values.append(number.doubleValue == 1)
                default:
                    return .failure(.notBinary)
                }
            }
            return values.count == count ? .success(values) : .failure(.wrongLength(got: values.count, expected: count))
        }
        let digits = text.split(whereSeparator: { !$0.isNumber }).compactMap { binary(String($0)) }
        if digits.isEmpty { return .failure(.noList) }
        return digits.count == count ? .success(digits) : .failure(.wrongLength(got: digits.count, expected: count))
    }

    private static func binary(_ text: String) -> Bool? {
        switch text.trimmingCharacters(in: .whitespaces).lowercased() {
        case "1", "true", "yes": return true
        case "0", "false", "no": return false
        default: return nil
        }
    }

    func score(feature: Int, explanation: String, heldout: [ActivationWindow]) async throws(SAELabelError) -> ScoreResult {
        let all = items(feature: feature, heldout: heldout)
        var truth: [Bool] = []
        var predicted: [Bool] = []
        var failedPrompts = 0
        var firstProblem: String?
        var unusableTags: [String] = []
        var start = 0
        var promptIndex = 0
        var deferred: SAELabelError?
        while start < all.count {
            let batch = Array(all[start..<min(start + batchSize, all.count)])
            start += batch.count
            let tag = "\(mode.tagPrefix):\(feature):\(promptIndex)"
            promptIndex += 1
            let first = messages(explanation: explanation, batch: batch)
            let request = ChatRequest(model: model, messages: first, temperature: 0, maxTokens: 8 + 4 * batch.count)
            let answer: String
            do {
                answer = try await ScoringSupport.chat(client, request, tag: tag).text
            } catch {
                // Batch mode: queue every prompt's request in this round, then put the feature off.
                guard ScoringSupport.isDeferred else { throw error }
                deferred = deferred ?? error
                continue
            }
            var answers: [Bool]?
            switch Self.parseAnswer(answer, count: batch.count) {
            case .success(let values):
                answers = values
            case .failure(let problem):
                let original = first.last?.content ?? ""
                let correction = "That answer cannot be used: \(problem). Reply with a JSON list of exactly \(batch.count) "
                    + "numbers, each 0 or 1, and nothing else.\n\n" + original
                var retry = request
                retry.messages = first + [ChatMessage(role: "assistant", content: ScoringSupport.shown(answer)),
                                          ChatMessage(role: "user", content: correction)]
                let second = try await ScoringSupport.chat(client, retry, tag: tag + ":retry").text
                switch Self.parseAnswer(second, count: batch.count) {
                case .success(let values): answers = values
                case .failure(let again): if firstProblem == nil { firstProblem = "first answer: \(problem); retry: \(again)" }
                }
            }
            if answers == nil {
                failedPrompts += 1
                unusableTags += [tag, tag + ":retry"]
            }
            for (position, item) in batch.enumerated() {
                truth.append(item.truth)
                predicted.append(answers?[position] ?? !item.truth)
            }
        }
        if let deferred { throw deferred }
        var details = ScoreMath.classification(truth: truth, predicted: predicted)
        details.failedPrompts = failedPrompts
        // The failure rule (ScoreStep): any prompt still unusable after the retry fails the score.
        let promptCount = (all.count + batchSize - 1) / batchSize
        let failure = failedPrompts > 0
            ? "\(failedPrompts) of \(promptCount) prompts unusable after the retry (\(firstProblem ?? "no usable answer"))" : nil
        var result = ScoreResult(value: all.isEmpty || failure != nil ? nil : details.balancedAccuracy,
                                 details: ScoringSupport.json(details), failure: failure)
        result.unusableTags = unusableTags
        return result
    }
}

public enum ClassificationAnswerProblem: Error, Sendable, Equatable, CustomStringConvertible {
    case noList
    case notBinary
    case wrongLength(got: Int, expected: Int)

    public var description: String {
        switch self {
        case .noList: return "it holds no list of 0s and 1s"
        case .notBinary: return "the list holds values other than 0 and 1"
        case .wrongLength(let got, let expected): return "it has \(got) answers but there are \(expected) excerpts"
        }
    }
}

/// Detection: does the excerpt contain what the explanation describes?
public struct DetectionScorer: Scorer {
    public let name = "detection"
    public var model: String { engine.model }
    public var promptHash: String { engine.promptHash }
    let engine: ClassificationEngine

    public init(client: LLMClient, model: String, prompts: PromptLibrary, seed: UInt64 = 0, batchSize: Int = 5) throws(SAELabelError) {
        engine = try ClassificationEngine(mode: .detection, client: client, model: model, prompts: prompts, seed: seed, batchSize: batchSize)
    }

    /// Reads a list of `count` 0/1 answers (JSON list, else the standalone digits 0/1 in order).
    public static func parseAnswer(_ text: String, count: Int) -> Result<[Bool], ClassificationAnswerProblem> {
        ClassificationEngine.parseAnswer(text, count: count)
    }

    /// The exact messages of every prompt, in order (for inspection and tests).
    public func prompts(feature: Int, explanation: String, heldout: [ActivationWindow]) -> [(messages: [ChatMessage], truth: [Bool])] {
        engine.batches(feature: feature, explanation: explanation, heldout: heldout)
    }

    public func score(feature: Int, explanation: String, heldout: [ActivationWindow]) async throws(SAELabelError) -> ScoreResult {
        try await engine.score(feature: feature, explanation: explanation, heldout: heldout)
    }

    public func plannedCalls(heldout: [ActivationWindow]) -> Int { (heldout.count + engine.batchSize - 1) / engine.batchSize }
}

/// Fuzzing: are the marked tokens the ones the explanation describes? Activating windows mark the
/// tokens above 0.3 × the window's max; non-activating windows mark random tokens.
public struct FuzzingScorer: Scorer {
    public let name = "fuzzing"
    public var model: String { engine.model }
    public var promptHash: String { engine.promptHash }
    let engine: ClassificationEngine

    public init(client: LLMClient, model: String, prompts: PromptLibrary, seed: UInt64 = 0, batchSize: Int = 5) throws(SAELabelError) {
        engine = try ClassificationEngine(mode: .fuzzing, client: client, model: model, prompts: prompts, seed: seed, batchSize: batchSize)
    }

    public func prompts(feature: Int, explanation: String, heldout: [ActivationWindow]) -> [(messages: [ChatMessage], truth: [Bool])] {
        engine.batches(feature: feature, explanation: explanation, heldout: heldout)
    }

    public func score(feature: Int, explanation: String, heldout: [ActivationWindow]) async throws(SAELabelError) -> ScoreResult {
        try await engine.score(feature: feature, explanation: explanation, heldout: heldout)
    }

    public func plannedCalls(heldout: [ActivationWindow]) -> Int { (heldout.count + engine.batchSize - 1) / engine.batchSize }
}

extension ClassificationEngine {
    func batches(feature: Int, explanation: String, heldout: [ActivationWindow]) -> [(messages: [ChatMessage], truth: [Bool])] {
        let all = items(feature: feature, heldout: heldout)
        return stride(from: 0, to: all.count, by: batchSize).map { start in
            let batch = Array(all[start..<min(start + batchSize, all.count)])
            return (messages(explanation: explanation, batch: batch), batch.map(\.truth))
        }
    }
}
