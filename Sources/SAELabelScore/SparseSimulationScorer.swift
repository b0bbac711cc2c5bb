import Foundation
import LLMClient
import SAELabelCore

/// The sparse simulator: like the JSON simulator (SPEC §5) one chat request per held-out window at
/// temperature 0, but the model lists only the tokens it predicts active, as
/// `{"activations": [{"index": i, "activation": 1…10}, …]}`; every token not listed is 0. Its output
/// grows with the active tokens rather than with the window, which is most of a scoring bill
/// (output tokens cost several times input tokens), and most of the demo's wall time.
///
/// Tokens are shown numbered, `[[0, "The"], [1, " cat"], …]`. The structured-output schema fixes each
/// index to the window's range and each value to 1–10; the same schema goes to every server (nothing
/// is pinned per token, so llama.cpp and OpenAI's strict mode accept it alike). An index outside the
/// window, or an answer that is not such a list, gets one retry as in the JSON simulator, and a window
/// still unusable after it fails the whole score. A listed token given twice keeps its larger value.
public struct SparseSimulationScorer: Scorer {
    public let name = "simulation"
    public let model: String
    public let promptHash: String
    private let client: LLMClient
    private let system: PromptTemplate?
    private let user: PromptTemplate

    public init(client: LLMClient, model: String, prompts: PromptLibrary) throws(SAELabelError) {
        self.client = client
        self.model = model
        self.user = try prompts.template("simulator-sparse")
        self.system = try prompts.optionalTemplate("simulator-sparse.system")
        var parts = ["sparse-simulator-v1", user.source]
        if let system { parts.append(system.source) }
        self.promptHash = ScoringSupport.hash(parts)
    }

    /// The numbered token list placed between `<tokens>` and `</tokens>`.
    public static func tokenList(_ tokens: [String]) -> String {
        let pairs = tokens.enumerated().map { [$0.offset, $0.element] as [Any] }
        guard let data = try? JSONSerialization.data(withJSONObject: pairs, options: [.withoutEscapingSlashes]) else { return "[]" }
        return String(decoding: data, as: UTF8.self)
    }

    /// The first request's messages: the system text (the same for every window of every feature, so a
    /// server's prompt cache reuses it), then the explanation and the window.
    public func messages(explanation: String, tokens: [String]) -> [ChatMessage] {
        let context: [String: Any] = ["explanation": explanation, "tokens": Self.tokenList(tokens), "last": tokens.count - 1]
        return ScoringSupport.messages(system: system, user: user, context: context)
    }

    /// `{"activations": [{"index": 0…count-1, "activation": 1…10}]}` with at most `count` entries; closed
    /// objects that require every property, as OpenAI's strict mode demands.
    public static func schema(count: Int) -> String {
        let entry: [String: Any] = [
            "type": "object",
            "properties": ["index": ["type": "integer", "enum": Array(0..<max(count, 1))],
                           "activation": ["type": "integer", "enum": Array(1...10)]],
            "required": ["index", "activation"],
            "additionalProperties": false,
        ]
        let schema: [String: Any] = [
            "type": "object",
            "properties": ["activations": ["type": "array", "maxItems": count, "items": entry] as [String: Any]],
            "required": ["activations"],
            "additionalProperties": false,
        ]
        guard let data = try? JSONSerialization.data(withJSONObject: schema, options: [.sortedKeys]) else { return "{\"type\":\"object\"}" }
        return String(decoding: data, as: UTF8.self)
    }

    /// Room for every token listed (about 12 tokens an entry), which the schema's `maxItems` bounds.
    static func maxTokens(count: Int) -> Int { 32 + 12 * count }

    private func request(_ messages: [ChatMessage], count: Int) -> ChatRequest {
        ChatRequest(model: model, messages: messages, temperature: 0, maxTokens: Self.maxTokens(count: count),
                    responseFormat: .jsonSchema(name: "active_tokens", schema: Self.schema(count: count)))
    }

    /// Parses the sparse answer into one value per token (unlisted tokens 0). Also accepted: text around
    /// the JSON, a bare list of entries, `[index, value]` pairs and numeric strings. A value that is not a
    /// number in 0–10 becomes 0 and is counted; an index outside the window makes the answer unusable.
    public static func parseAnswer(_ text: String, count: Int) -> Result<JSONSimulationScorer.ParsedAnswer, JSONSimulationScorer.AnswerProblem> {
        guard let object = JSONSimulationScorer.jsonValue(in: text) else { return .failure(.notJSON) }
        let entries: [Any]
        if let dict = object as? [String: Any] {
            guard let list = dict["activations"] as? [Any] else { return .failure(.noActivations) }
            entries = list
        } else if let list = object as? [Any] {
            entries = list
        } else {
            return .failure(.noActivations)
        }
        var values = Array(repeating: 0.0, count: count)
        var bad = 0
        for entry in entries {
            let index: Double?, raw: Any?
            if let dict = entry as? [String: Any] {
                index = JSONSimulationScorer.number(dict["index"]); raw = dict["activation"]
            } else if let pair = entry as? [Any], pair.count == 2 {
                index = JSONSimulationScorer.number(pair[0]); raw = pair[1]
            } else {
                return .failure(.noActivations)
            }
            guard let index, index == index.rounded(), index >= 0, index < Double(count) else {
                return .failure(.indexOutOfRange(index: Int(index ?? -1), count: count))
            }
            if let value = JSONSimulationScorer.number(raw), value >= 0, value <= 10 {
                values[Int(index)] = max(values[Int(index)], value)
            } else {
                bad += 1
            }
        }
        return .success(.init(values: values, badValues: bad))
    }

    /// The retry conversation: the bad answer as the assistant's turn, then what was wrong and the
    /// numbered tokens again.
    public func retryMessages(first: [ChatMessage], answer: String, problem: String, tokens: [String]) -> [ChatMessage] {
        let correction = "That answer cannot be used: \(problem). Reply again with JSON only, "
            + "{\"activations\": [{\"index\": 0, \"activation\": 5}, ...]}, listing only the tokens the neuron fires on, "
            + "each index from 0 to \(tokens.count - 1), each activation an integer from 1 to 10.\n<tokens>\(Self.tokenList(tokens))</tokens>"
        return first + [ChatMessage(role: "assistant", content: ScoringSupport.shown(answer)),
                        ChatMessage(role: "user", content: correction)]
    }

    public func simulate(feature: Int, ordinal: Int, explanation: String, tokens: [String])
        async throws(SAELabelError) -> JSONSimulationScorer.WindowSimulation {
        try await SimulationScoring.simulate(
            client: client, tag: "simulate:\(feature):\(ordinal)", tokens: tokens,
            first: messages(explanation: explanation, tokens: tokens),
            request: { request($0, count: tokens.count) },
            parse: { Self.parseAnswer($0, count: tokens.count) },
            retry: { retryMessages(first: $0, answer: $1, problem: $2, tokens: tokens) })
    }

    public func score(feature: Int, explanation: String, heldout: [ActivationWindow]) async throws(SAELabelError) -> ScoreResult {
        try await SimulationScoring.score(feature: feature, heldout: heldout) { (ordinal, tokens) async throws(SAELabelError) in
            try await simulate(feature: feature, ordinal: ordinal, explanation: explanation, tokens: tokens)
        }
    }
}
