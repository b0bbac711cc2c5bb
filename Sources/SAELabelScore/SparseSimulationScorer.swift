import Foundation
import LLMClient
import SAELabelCore

/// The sparse simulator: at temperature 0 the model lists only the tokens it predicts active; every
/// token not listed is 0. Its output grows with the active tokens rather than with the window, which
/// is most of a scoring bill (output tokens cost several times input tokens) and most of the demo's
/// wall time.
///
/// Two request shapes:
/// - **one window a request** (`windowsPerRequest == 1`): tokens shown numbered, one a line (`0 The`, `1  cat`, …),
///   answer `{"activations": [{"index": i, "activation": 1…10}, …]}`;
/// - **several windows a request** (the default): a feature's held-out windows in chunks of at most
///   `windowsPerRequest`, each shown as a `Window k:` line and its numbered lines, answer by position,
///   `{"windows": [[[i, v], …], [], …]}`: one list per window in order, of `[index, activation]` pairs
///   for the tokens it fires on (an empty list where nothing fires). Naming neither the window nor the
///   pair's members keeps the answer, the dearest part of the bill, to ≈ 1.5 tokens a quiet window
///   and ≈ 6 a listed token (`{"window": k, "activations": [{"index": i, "activation": v}]}` took ≈ 12
///   and ≈ 12). The instructions (system message) and then the explanation come first, so a prompt
///   cache reuses them; each window is sent once instead of the instructions once per window.
///
/// The structured-output schema closes every object and requires all its properties (OpenAI's strict
/// mode), fixes the number of windows, indices to the window and values to 1–10; on llama.cpp servers
/// it also gives each window its own index range (`prefixItems`, which strict mode refuses). In the
/// one-window answer properties are written in the order the model should answer them (a llama.cpp
/// grammar follows the schema's order): index before its activation.
///
/// Robustness: an answer that is not such JSON, lists another number of windows than asked, or names
/// a token outside its window gets one retry that shows the model what was wrong, for the unusable
/// windows only (all of them when the count is wrong, since positions then mean nothing); a window
/// still unusable after it fails the whole score (never scored as zeros). A token listed twice keeps
/// its larger value. Requests are cached by their bytes, so a resumed run pays for nothing twice.
public struct SparseSimulationScorer: Scorer {
    /// Windows a request carries unless the job says otherwise (`[simulator] windows_per_request`):
    /// every held-out window of a feature with the default `[collect]` (5 + 5 + 5) in one request, so the
    /// instructions and the explanation go once per feature. Measured on the demo with SmolLM2 (README,
    /// "Sparse against dense simulation") and with `saelabel-bench cost`.
    public static let defaultWindowsPerRequest = 16

    public let name = "simulation"
    public let model: String
    public let promptHash: String
    public let windowsPerRequest: Int
    private let client: LLMClient
    private let system: PromptTemplate?
    private let user: PromptTemplate

    public init(client: LLMClient, model: String, prompts: PromptLibrary,
                windowsPerRequest: Int = SparseSimulationScorer.defaultWindowsPerRequest) throws(SAELabelError) {
        self.client = client
        self.model = model
        self.windowsPerRequest = max(1, windowsPerRequest)
        let several = self.windowsPerRequest > 1
        self.user = try prompts.template(several ? "simulator-sparse-windows" : "simulator-sparse")
        self.system = try prompts.optionalTemplate(several ? "simulator-sparse-windows.system" : "simulator-sparse.system")
        var parts = [several ? "sparse-windows-simulator-v3" : "sparse-simulator-v3", user.source]
        if let system { parts.append(system.source) }
        if several {
            parts.append("windows_per_request=\(self.windowsPerRequest)")
            if !client.server.isLlamaCpp { parts.append("schema=unpinned") }
        }
        self.promptHash = ScoringSupport.hash(parts)
    }

    public func plannedCalls(heldout: [ActivationWindow]) -> Int { chunks(heldout).count }

    public func score(feature: Int, explanation: String, heldout: [ActivationWindow]) async throws(SAELabelError) -> ScoreResult {
        if windowsPerRequest == 1 {
            return try await SimulationScoring.score(feature: feature, heldout: heldout) { (ordinal, tokens) async throws(SAELabelError) in
                try await simulate(feature: feature, ordinal: ordinal, explanation: explanation, tokens: tokens)
            }
        }
        let chunks = chunks(heldout)
        var simulations = heldout.map { _ in JSONSimulationScorer.WindowSimulation(values: [], retried: false, error: nil) }
        var deferred: SAELabelError?
        for chunk in chunks {
            do {
                let results = try await simulate(feature: feature, explanation: explanation,
                                                 windows: chunk.map { heldout[$0].tokens }, ordinals: chunk)
                for (ordinal, result) in zip(chunk, results) { simulations[ordinal] = result }
            } catch {
                // Batch mode: queue every chunk's request in this round, then put the feature off.
                guard ScoringSupport.isDeferred else { throw error }
                deferred = deferred ?? error
            }
        }
        if let deferred { throw deferred }
        return SimulationScoring.assemble(heldout: heldout, simulations: simulations) { ordinal in
            let tag = chunks.first { $0.contains(ordinal) }.map { Self.tag(feature: feature, ordinals: $0) } ?? "simulate:\(feature):\(ordinal)"
            return [tag, tag + ":retry"]
        }
    }

    /// The held-out ordinals each request carries: the non-empty windows in order, `windowsPerRequest`
    /// at a time (an empty window needs no call and scores as no tokens).
    func chunks(_ heldout: [ActivationWindow]) -> [[Int]] {
        let ordinals = heldout.indices.filter { !heldout[$0].tokens.isEmpty }
        return stride(from: 0, to: ordinals.count, by: windowsPerRequest).map {
            Array(ordinals[$0..<min($0 + windowsPerRequest, ordinals.count)])
        }
    }

    /// "simulate:F:first-last": the feature and the held-out ordinals a several-window request covers.
    static func tag(feature: Int, ordinals: [Int]) -> String {
        "simulate:\(feature):\(ordinals.first ?? 0)-\(ordinals.last ?? 0)"
    }

    // MARK: One window a request

    /// The numbered token list placed between `<tokens>` and `</tokens>`: a line per token, its index, one
    /// space, then the token exactly, with `\`, line breaks and tabs written `\\`, `\n`, `\r`, `\t`; so a
    /// line is always one token, in order, and the text after the first space is that token (about 4.3
    /// prompt tokens per window token, against 5.6 for JSON `[index, token]` pairs).
    public static func tokenList(_ tokens: [String]) -> String {
        tokens.enumerated().map { "\($0.offset) \(listed($0.element))" }.joined(separator: "\n")
    }

    /// A token as one line of the list.
    static func listed(_ token: String) -> String {
        var out = ""
        for scalar in token.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// One window's list as the prompt shows it, between its tags (the template writes them itself).
    static func tokenBlock(_ tokens: [String]) -> String { "<tokens>\n\(tokenList(tokens))\n</tokens>" }

    /// A window of a several-window request as its template shows it: a `Window k:` line, then its
    /// list (no tags: a token line always starts with its index, so a header cannot be mistaken for one).
    static func windowBlock(number: Int, tokens: [String]) -> String { "Window \(number):\n\(tokenList(tokens))" }

    /// The first request's messages: the system text (the same for every window of every feature, so a
    /// server's prompt cache reuses it), then the explanation and the window.
    public func messages(explanation: String, tokens: [String]) -> [ChatMessage] {
        let context: [String: Any] = ["explanation": explanation, "tokens": Self.tokenList(tokens), "last": tokens.count - 1]
        return ScoringSupport.messages(system: system, user: user, context: context)
    }

    /// `{"activations": [{"index": 0…count-1, "activation": 1…10}]}` with at most `count` entries; closed
    /// objects that require every property, as OpenAI's strict mode demands.
    public static func schema(count: Int) -> String {
        SchemaText.object([("activations", activationList(count: count))])
    }

    /// Up to `count` entries `{"index": 0…count-1, "activation": 1…10}`, index first.
    static func activationList(count: Int) -> String {
        let entry = SchemaText.object([("index", SchemaText.integers(0..<max(count, 1))),
                                       ("activation", SchemaText.integers(1..<11))])
        return #"{"type":"array","maxItems":\#(count),"items":\#(entry)}"#
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
        return parseActivations(object, count: count)
    }

    /// `{"activations": [...]}` or the bare list, as one value per token of a `count`-token window.
    static func parseActivations(_ object: Any, count: Int) -> Result<JSONSimulationScorer.ParsedAnswer, JSONSimulationScorer.AnswerProblem> {
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
            + "each index from 0 to \(tokens.count - 1), each activation an integer from 1 to 10.\n\(Self.tokenBlock(tokens))"
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

    // MARK: Several windows a request

    /// What makes one window of a several-window answer unusable.
    public enum WindowProblem: Error, Sendable, Equatable, CustomStringConvertible {
        /// The whole answer: not JSON, or no `windows` list.
        case answer(JSONSimulationScorer.AnswerProblem)
        /// The answer lists another number of windows than were asked: entries are matched to windows by
        /// position, so none of them can be trusted.
        case count(found: Int, expected: Int)
        /// This window's entry is unusable.
        case window(Int, JSONSimulationScorer.AnswerProblem)

        public var description: String {
            switch self {
            case .answer(let problem): return problem.description
            case .count(let found, let expected): return "the answer lists \(found) windows but \(expected) were asked, in order"
            case .window(let window, let problem): return "window \(window): \(problem)"
            }
        }
    }

    /// The first request's messages for a chunk: the system text (the same for every request), then
    /// the explanation, then the windows numbered from 0.
    public func messages(explanation: String, windows: [[String]]) -> [ChatMessage] {
        let context: [String: Any] = ["explanation": explanation, "count": windows.count,
                                      "windows": Self.windowContext(windows, numbers: Array(windows.indices))]
        return ScoringSupport.messages(system: system, user: user, context: context)
    }

    /// `{"number": k, "tokens": "0 The\n1  cat…", "last": n-1}` per window, for the templates.
    static func windowContext(_ windows: [[String]], numbers: [Int]) -> [[String: Any]] {
        zip(numbers, windows).map { ["number": $0, "tokens": tokenList($1), "last": $1.count - 1] }
    }

    /// `{"windows": [...]}` with exactly one entry per window of `lengths`, in order (the answer names no
    /// window: its position does, which saves ≈ 11 answer tokens a window): the window's active tokens as
    /// `[index, activation]` pairs, at most one per token. `pinned` (llama.cpp servers) gives entry i its
    /// own window's indices and each pair's index and activation their own ranges with `prefixItems`;
    /// otherwise every entry shares one `items` schema, pairs of integers from 0 to the longest window's
    /// last index or 10, which OpenAI's strict mode accepts (it refuses `prefixItems`; `minItems` and
    /// `maxItems` pin the number of windows and of pair members).
    public static func schema(lengths: [Int], pinned: Bool) -> String {
        func pairs(_ length: Int, _ pair: String) -> String { #"{"type":"array","maxItems":\#(length),"items":\#(pair)}"# }
        let count = lengths.count
        let list: String
        if pinned {
            let entries = lengths.map { length in
                pairs(length, #"{"type":"array","minItems":2,"maxItems":2,"prefixItems":[\#(SchemaText.integers(0..<max(length, 1))),\#(SchemaText.integers(1..<11))]}"#)
            }
            list = #"{"type":"array","minItems":\#(count),"maxItems":\#(count),"prefixItems":[\#(entries.joined(separator: ","))]}"#
        } else {
            let longest = lengths.max() ?? 1
            let entry = pairs(longest, #"{"type":"array","minItems":2,"maxItems":2,"items":\#(SchemaText.integers(0..<max(longest, 11)))}"#)
            list = #"{"type":"array","minItems":\#(count),"maxItems":\#(count),"items":\#(entry)}"#
        }
        return SchemaText.object([("windows", list)])
    }

    /// Room for a window's list (about 4 tokens) and every one of its tokens listed (about 8 a pair).
    static func maxTokens(lengths: [Int]) -> Int { 32 + lengths.reduce(0) { $0 + 4 + 10 * $1 } }

    private func request(_ messages: [ChatMessage], lengths: [Int]) -> ChatRequest {
        ChatRequest(model: model, messages: messages, temperature: 0, maxTokens: Self.maxTokens(lengths: lengths),
                    responseFormat: .jsonSchema(name: "active_tokens_by_window",
                                                schema: Self.schema(lengths: lengths, pinned: client.server.isLlamaCpp)))
    }

    /// Parses a several-window answer by position: entry i is the window of `lengths[i]` tokens, named
    /// `numbers[i]` in problems (default i). Returns one result per window. An answer with another number
    /// of entries is unusable for every window; an unusable entry only for its own window. Also
    /// accepted: text around the JSON, a bare list of entries, and inside an entry everything the
    /// one-window parser accepts (`{"index", "activation"}` objects, `{"activations": [...]}`).
    public static func parseAnswer(_ text: String, lengths: [Int], numbers: [Int]? = nil)
        -> [Result<JSONSimulationScorer.ParsedAnswer, WindowProblem>] {
        let numbers = numbers ?? Array(lengths.indices)
        guard let object = JSONSimulationScorer.jsonValue(in: text) else { return lengths.map { _ in .failure(.answer(.notJSON)) } }
        let entries: [Any]
        if let dict = object as? [String: Any], let list = dict["windows"] as? [Any] {
            entries = list
        } else if let list = object as? [Any] {
            entries = list
        } else {
            return lengths.map { _ in .failure(.answer(.noActivations)) }
        }
        guard entries.count == lengths.count else {
            return lengths.map { _ in .failure(.count(found: entries.count, expected: lengths.count)) }
        }
        return zip(numbers, zip(entries, lengths)).map { number, entry in
            parseActivations(entry.0, count: entry.1).mapError { WindowProblem.window(number, $0) }
        }
    }

    /// The retry conversation for a chunk: the bad answer as the assistant's turn, then what was wrong
    /// with which windows, and those windows' tokens again (under the same numbers), to be answered in
    /// that order.
    public func retryMessages(first: [ChatMessage], answer: String, problems: [Int: String], windows: [Int: [String]]) -> [ChatMessage] {
        let numbers = problems.keys.sorted()
        let listed = numbers.map { "window \($0)" }.joined(separator: ", ")
        let what = numbers.map { "\(problems[$0] ?? "")" }.uniqued().joined(separator: "; ")
        let shown = numbers.map { Self.windowBlock(number: $0, tokens: windows[$0] ?? []) }.joined(separator: "\n")
        let example = numbers.count == 1 ? "[[[3, 7]]]" : "[[[3, 7]], " + Array(repeating: "[]", count: numbers.count - 1).joined(separator: ", ") + "]"
        let correction = "That answer cannot be used for \(listed): \(what). Reply again with JSON only, "
            + (numbers.count == 1 ? "for that window only, " : "for those \(numbers.count) windows only, in this order (\(listed)), ")
            + "{\"windows\": \(example)}, one list per window of [index, activation] pairs for the tokens the neuron "
            + "fires on, by their index in that window, each activation an integer from 1 to 10.\n\(shown)"
        return first + [ChatMessage(role: "assistant", content: ScoringSupport.shown(answer)),
                        ChatMessage(role: "user", content: correction)]
    }

    /// Simulates one chunk of windows (shown numbered 0…n-1) with at most one retry, for the windows
    /// whose first answer was unusable. Returns one simulation per window; throws only when an LLM
    /// call itself fails.
    public func simulate(feature: Int, explanation: String, windows: [[String]], ordinals: [Int])
        async throws(SAELabelError) -> [JSONSimulationScorer.WindowSimulation] {
        let tag = Self.tag(feature: feature, ordinals: ordinals)
        let lengths = windows.map(\.count)
        let first = messages(explanation: explanation, windows: windows)
        let answer = try await ScoringSupport.chat(client, request(first, lengths: lengths), tag: tag).text
        let parsed = Self.parseAnswer(answer, lengths: lengths)
        let problems = parsed.map { SimulationScoring.problem(of: $0) }
        let again = windows.indices.filter { problems[$0] != nil }
        guard !again.isEmpty else {
            return parsed.map { .init(values: try? $0.get().values, retried: false, error: nil) }
        }
        let retry = retryMessages(first: first, answer: answer,
                                  problems: Dictionary(uniqueKeysWithValues: again.map { ($0, problems[$0] ?? "") }),
                                  windows: Dictionary(uniqueKeysWithValues: again.map { ($0, windows[$0]) }))
        let retryLengths = again.map { lengths[$0] }
        let second = try await ScoringSupport.chat(client, request(retry, lengths: retryLengths), tag: tag + ":retry").text
        let reparsed = Dictionary(uniqueKeysWithValues: zip(again, Self.parseAnswer(second, lengths: retryLengths, numbers: again)))
        return windows.indices.map { number in
            guard let problem = problems[number], let retried = reparsed[number] else {
                return .init(values: try? parsed[number].get().values, retried: false, error: nil)
            }
            return SimulationScoring.afterRetry(first: try? parsed[number].get(), problem: problem, retry: retried)
        }
    }
}

/// JSON schema text written by hand, so that properties keep the order given: a llama.cpp grammar
/// makes the model write them in the schema's order, and the bytes (the cache key) stay stable.
enum SchemaText {
    /// A closed object requiring every property, in the given order.
    static func object(_ properties: [(String, String)]) -> String {
        let body = properties.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",")
        let required = properties.map { "\"\($0.0)\"" }.joined(separator: ",")
        return #"{"type":"object","properties":{\#(body)},"required":[\#(required)],"additionalProperties":false}"#
    }

    /// An integer that is one of `values`.
    static func integers<Values: Sequence<Int>>(_ values: Values) -> String {
        #"{"type":"integer","enum":[\#(values.map(String.init).joined(separator: ","))]}"#
    }
}

private extension Array where Element: Hashable {
    func uniqued() -> [Element] {
        var seen = Set<Element>()
        return filter { seen.insert($0).inserted }
    }
}
