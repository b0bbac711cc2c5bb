import Foundation
import LLMClient
import SAELabelCore

/// SPEC §5's JSON simulator: one chat request per held-out window, temperature 0, with structured
/// output whose schema fixes the array length (and, on llama.cpp servers, each entry's token).
///
/// Retry: when an answer does not parse, has the wrong number of entries, or holds a value that is
/// not a number in 0–10, the bad answer is sent back as the assistant's turn followed by a user
/// message that says what was wrong (and repeats the token list). If the second answer parses with
/// the right length, its out-of-range or non-numeric values become 0 (SPEC §5); if it does not, the
/// first answer is used the same way when it had the right length; otherwise the window is scored
/// as all zeros and counted in `failedWindows`; any such window fails the whole score (ScoreStep).
///
/// Score: Pearson r between the true raw activations and the simulated values, over all held-out
/// tokens concatenated (top + quantile + random); no variance → 0 with `undefinedReason`.
/// `rsquared` and `absoluteDevExplained` (SPEC §6 formulas) are computed on the simulator's scale:
/// the true values are first mapped to 0–10 as `10·relu(a)/max`, max over the held-out windows
/// (continuous, no flooring), so that t and p are comparable; Pearson r is scale-free anyway.
public struct JSONSimulationScorer: Scorer {
    public let name = "simulation"
    public let model: String
    public let promptHash: String
    private let client: LLMClient
    private let system: PromptTemplate?
    private let user: PromptTemplate

    public init(client: LLMClient, model: String, prompts: PromptLibrary) throws(SAELabelError) {
        self.client = client
        self.model = model
        self.user = try prompts.template("simulator")
        self.system = try prompts.optionalTemplate("simulator.system")
        var parts = ["json-simulator-v1", user.source]
        if let system { parts.append(system.source) }
        // Servers other than llama.cpp get a schema that does not pin each token: a different request,
        // so a different hash (llama.cpp's keeps the hash it always had).
        if !client.server.isLlamaCpp { parts.append("schema=unpinned") }
        self.promptHash = ScoringSupport.hash(parts)
    }

    // MARK: Requests

    /// The JSON list of tokens placed between `<tokens>` and `</tokens>`.
    public static func tokenList(_ tokens: [String]) -> String {
        ScoringSupport.json(tokens)
    }

    /// The messages of the first request for one window.
    public func messages(explanation: String, tokens: [String]) -> [ChatMessage] {
        let context: [String: Any] = ["explanation": explanation, "tokens": Self.tokenList(tokens), "count": tokens.count]
        return ScoringSupport.messages(system: system, user: user, context: context)
    }

    /// JSON schema: an object with `activations`, an array of exactly `tokens.count` entries
    /// `{"token": string, "activation": one of 0…10}`. With `pinTokens` (llama.cpp servers, which turn
    /// `prefixItems` into a grammar) entry i's token is fixed to tokens[i]; otherwise every entry has the
    /// same `items` schema, the subset OpenAI's strict mode accepts. Every object is closed and
    /// requires all its properties, as strict mode demands.
    public static func schema(tokens: [String], pinTokens: Bool = true) -> String {
        func entry(_ token: String?) -> [String: Any] {
            let tokenSchema: [String: Any] = token.map { ["type": "string", "enum": [$0]] } ?? ["type": "string"]
            return ["type": "object",
                    "properties": ["token": tokenSchema, "activation": ["type": "integer", "enum": Array(0...10)]],
                    "required": ["token", "activation"],
                    "additionalProperties": false]
        }
        var array: [String: Any] = ["type": "array", "minItems": tokens.count, "maxItems": tokens.count]
        if pinTokens {
            array["prefixItems"] = tokens.map { entry(pinnable($0) ? $0 : nil) }
        } else {
            array["items"] = entry(nil)
        }
        let schema: [String: Any] = [
            "type": "object",
            "properties": ["activations": array],
            "required": ["activations"],
            "additionalProperties": false,
        ]
        guard let data = try? JSONSerialization.data(withJSONObject: schema, options: [.sortedKeys, .withoutEscapingSlashes]) else {
            return "{\"type\":\"object\"}"
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Whether a token can be pinned with `enum` in the schema. llama-cpp-python 0.3.36 turns a
    /// quote, backslash or control character inside an enum string into a grammar it cannot parse,
    /// and its server then dies; such tokens are left free (the array length still fixes the count).
    static func pinnable(_ token: String) -> Bool {
        token.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value != 0x7F && $0 != "\"" && $0 != "\\" }
    }

    private func request(_ messages: [ChatMessage], tokens: [String]) -> ChatRequest {
        ChatRequest(model: model, messages: messages, temperature: 0, maxTokens: 64 + 24 * tokens.count,
                    responseFormat: .jsonSchema(name: "simulated_activations",
                                                schema: Self.schema(tokens: tokens, pinTokens: client.server.isLlamaCpp)))
    }

    // MARK: Parsing

    public struct ParsedAnswer: Sendable, Equatable {
        /// One value per token; bad values already replaced by 0.
        public var values: [Double]
        /// Entries whose value was not a number in 0–10.
        public var badValues: Int
    }

    public enum AnswerProblem: Error, Sendable, Equatable, CustomStringConvertible {
        case notJSON
        case noActivations
        case wrongLength(got: Int, expected: Int)
        /// Sparse answers: an index that names no token of the window.
        case indexOutOfRange(index: Int, count: Int)

        public var description: String {
            switch self {
            case .indexOutOfRange(let index, let count):
                return "index \(index) names no token (the indices run from 0 to \(count - 1))"
            case .notJSON: return "the answer is not valid JSON"
            case .noActivations: return "the answer has no \"activations\" list"
            case .wrongLength(let got, let expected):
                return "the answer has \(got) entries but there are \(expected) tokens"
            }
        }
    }

    /// Parses `{"activations":[{"token":…,"activation":…},…]}`. Also accepted: text around the JSON
    /// object, a bare list of entries or of numbers. Numeric strings count as numbers.
    public static func parseAnswer(_ text: String, expectedCount: Int) -> Result<ParsedAnswer, AnswerProblem> {
        guard let object = jsonValue(in: text) else { return .failure(.notJSON) }
        let entries: [Any]
        if let dict = object as? [String: Any] {
            guard let list = dict["activations"] as? [Any] else { return .failure(.noActivations) }
            entries = list
        } else if let list = object as? [Any] {
            entries = list
        } else {
            return .failure(.noActivations)
        }
        guard entries.count == expectedCount else { return .failure(.wrongLength(got: entries.count, expected: expectedCount)) }
        var values: [Double] = []
        var bad = 0
        for entry in entries {
            let raw: Any? = (entry as? [String: Any]).map { $0["activation"] as Any } ?? entry
            if let value = number(raw), value >= 0, value <= 10 {
                values.append(value)
            } else {
                values.append(0)
                bad += 1
            }
        }
        return .success(ParsedAnswer(values: values, badValues: bad))
    }

    static func number(_ value: Any?) -> Double? {
        switch value {
        case let number as NSNumber:
            let double = number.doubleValue
            return double.isFinite ? double : nil
        case let string as String:
            guard let double = Double(string.trimmingCharacters(in: .whitespaces)), double.isFinite else { return nil }
            return double
        default:
            return nil
        }
    }

    /// The JSON value in `text`: the whole text, else the span from the first `{`/`[` to the last `}`/`]`.
    static func jsonValue(in text: String) -> Any? {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if let value = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8), options: [.fragmentsAllowed]),
           value is [String: Any] || value is [Any] {
            return value
        }
        for (open, close) in [("{", "}"), ("[", "]")] {
            guard let start = trimmed.firstIndex(of: Character(open)), let end = trimmed.lastIndex(of: Character(close)),
                  start < end else { continue }
            if let value = try? JSONSerialization.jsonObject(with: Data(trimmed[start...end].utf8)) { return value }
        }
        return nil
    }

    // MARK: Simulation

    public struct WindowSimulation: Sendable, Equatable {
        /// nil when the window failed twice (the whole score then fails).
        public var values: [Double]?
        public var retried: Bool
        public var error: String?
    }

    /// The retry conversation: the first request, the bad answer as the assistant's turn, and a user
    /// message saying what was wrong that repeats the token list.
    public func retryMessages(first: [ChatMessage], answer: String, problem: String, tokens: [String]) -> [ChatMessage] {
        let correction = "That answer cannot be used: \(problem). Reply again with JSON only, "
            + "{\"activations\": [{\"token\": \"...\", \"activation\": 0}, ...]}, with exactly \(tokens.count) entries, "
            + "one per token in this order, each activation an integer from 0 to 10.\n<tokens>\(Self.tokenList(tokens))</tokens>"
        return first + [ChatMessage(role: "assistant", content: ScoringSupport.shown(answer)),
                        ChatMessage(role: "user", content: correction)]
    }

    /// Simulates one window (with at most one retry). Throws only when the LLM call itself fails.
    public func simulate(feature: Int, ordinal: Int, explanation: String, tokens: [String]) async throws(SAELabelError) -> WindowSimulation {
        try await SimulationScoring.simulate(
            client: client, tag: "simulate:\(feature):\(ordinal)", tokens: tokens,
            first: messages(explanation: explanation, tokens: tokens),
            request: { request($0, tokens: tokens) },
            parse: { Self.parseAnswer($0, expectedCount: tokens.count) },
            retry: { retryMessages(first: $0, answer: $1, problem: $2, tokens: tokens) })
    }

    public func score(feature: Int, explanation: String, heldout: [ActivationWindow]) async throws(SAELabelError) -> ScoreResult {
        try await SimulationScoring.score(feature: feature, heldout: heldout) { (ordinal, tokens) async throws(SAELabelError) in
            try await simulate(feature: feature, ordinal: ordinal, explanation: explanation, tokens: tokens)
        }
    }
}

/// The score and details from simulated values, shared by the JSON and logprob simulators.
enum SimulationScoring {
    /// One window through the chat simulators (dense JSON and sparse): the first request, and when its
    /// answer cannot be used as it is, one retry that shows the model what was wrong (see
    /// JSONSimulationScorer for the rule on which answer is kept).
    static func simulate(client: LLMClient, tag: String, tokens: [String], first: [ChatMessage],
                         request: ([ChatMessage]) -> ChatRequest,
                         parse: (String) -> Result<JSONSimulationScorer.ParsedAnswer, JSONSimulationScorer.AnswerProblem>,
                         retry: ([ChatMessage], String, String) -> [ChatMessage])
        async throws(SAELabelError) -> JSONSimulationScorer.WindowSimulation {
        guard !tokens.isEmpty else { return .init(values: [], retried: false, error: nil) }
        let answer = try await ScoringSupport.chat(client, request(first), tag: tag).text
        let parsed = parse(answer)
        guard let problem = problem(of: parsed) else { return .init(values: try? parsed.get().values, retried: false, error: nil) }
        let second = try await ScoringSupport.chat(client, request(retry(first, answer, problem)), tag: tag + ":retry").text
        return afterRetry(first: try? parsed.get(), problem: problem, retry: parse(second))
    }

    /// Why a window's answer needs the retry, or nil when it can be used as it is.
    static func problem<Problem: Error & CustomStringConvertible>(of parsed: Result<JSONSimulationScorer.ParsedAnswer, Problem>) -> String? {
        switch parsed {
        case .success(let result) where result.badValues == 0: return nil
        case .success(let result): return "\(result.badValues) of the activations are not integers from 0 to 10"
        case .failure(let error): return error.description
        }
    }

    /// A window once its retry answered: the retry's values when they parse (bad values set to 0),
    /// else the first answer's when it had the right shape, else none (the window failed).
    static func afterRetry<Problem: Error & CustomStringConvertible>(
        first: JSONSimulationScorer.ParsedAnswer?, problem: String, retry: Result<JSONSimulationScorer.ParsedAnswer, Problem>)
        -> JSONSimulationScorer.WindowSimulation {
        switch retry {
        case .success(let result):
            let note = result.badValues > 0 ? "\(result.badValues) values outside 0–10 or not numbers were set to 0" : nil
            return .init(values: result.values, retried: true, error: note)
        case .failure(let error):
            if let first {
                return .init(values: first.values, retried: true,
                             error: "\(first.badValues) values outside 0–10 or not numbers were set to 0; retry: \(error)")
            }
            return .init(values: nil, retried: true, error: "first answer: \(problem); retry: \(error)")
        }
    }

    /// Simulates the held-out windows one after another (the caller runs features in parallel, and
    /// local servers answer one request at a time anyway) and scores them. Shared by the dense JSON and
    /// sparse simulators, so both put a feature off in batch mode the same way.
    static func score(feature: Int, heldout: [ActivationWindow],
                      simulate: (Int, [String]) async throws(SAELabelError) -> JSONSimulationScorer.WindowSimulation)
        async throws(SAELabelError) -> ScoreResult {
        var simulations: [JSONSimulationScorer.WindowSimulation] = []
        var deferred: SAELabelError?
        for (ordinal, window) in heldout.enumerated() {
            do {
                simulations.append(try await simulate(ordinal, window.tokens))
            } catch {
                // Batch mode: queue every window's request in this round, then put the feature off.
                guard ScoringSupport.isDeferred else { throw error }
                deferred = deferred ?? error
            }
        }
        if let deferred { throw deferred }
        return assemble(heldout: heldout, simulations: simulations) {
            ["simulate:\(feature):\($0)", "simulate:\(feature):\($0):retry"]
        }
    }

    /// The score from one simulation per held-out window (element i for held-out ordinal i).
    /// `tags(ordinal)` names the calls that answered that window, dropped from the cache when it failed.
    static func assemble(heldout: [ActivationWindow], simulations: [JSONSimulationScorer.WindowSimulation],
                         tags: (Int) -> [String]) -> ScoreResult {
        let windows = simulations.enumerated().map {
            SimulationDetails.Window(heldoutOrdinal: $0.offset, simulated: $0.element.values, error: $0.element.error)
        }
        let simulated = zip(heldout, simulations).map { $1.values ?? Array(repeating: 0, count: $0.tokens.count) }
        var result = Self.result(heldout: heldout, simulated: simulated, windows: windows,
                                 failedWindows: simulations.filter { $0.values == nil }.count,
                                 retriedWindows: simulations.filter(\.retried).count)
        var seen = Set<String>()
        result.unusableTags = windows.filter { $0.simulated == nil }.flatMap { tags($0.heldoutOrdinal) }.filter { seen.insert($0).inserted }
        return result
    }

    static func result(heldout: [ActivationWindow], simulated: [[Double]], windows: [SimulationDetails.Window],
                       failedWindows: Int, retriedWindows: Int) -> ScoreResult {
        let truth = heldout.flatMap { $0.activations.map(Double.init) }
        let predicted = simulated.flatMap { $0 }
        let correlation = ScoreMath.correlation(truth, predicted)
        var reason: String?
        if correlation == nil {
            if truth.count != predicted.count {
                reason = "the held-out windows hold different numbers of tokens and activations"
            } else if truth.count < 2 {
                reason = "fewer than 2 held-out tokens"
            } else if Set(truth).count <= 1 {
                reason = "the true activations are constant over the held-out tokens"
            } else {
                reason = "the simulated activations are constant over the held-out tokens"
            }
        }
        let maxActivation = Double(ActivationFormat.maxActivation(heldout.map(\.activations)))
        let scaled = truth.map { maxActivation > 0 ? 10 * max(0, $0) / maxActivation : 0 }
        let details = SimulationDetails(rsquared: ScoreMath.rsquared(scaled, predicted),
                                        absoluteDevExplained: ScoreMath.absoluteDevExplained(scaled, predicted),
                                        failedWindows: failedWindows, retriedWindows: retriedWindows,
                                        undefinedReason: reason, windows: windows)
        // The failure rule (ScoreStep): any window still unusable after the retry fails the score.
        var failure: String?
        if failedWindows > 0 {
            let example = windows.first { $0.simulated == nil }?.error ?? "no usable answer"
            failure = "\(failedWindows) of \(heldout.count) held-out windows unusable after the retry (\(example))"
        }
        return ScoreResult(value: failure == nil ? correlation ?? 0 : nil, details: ScoringSupport.json(details), failure: failure)
    }
}
