import Foundation
import LLMClient
import SAELabelCore
import SAELabelScore
import SAELabelStore
import TestSupport
import Testing

/// The sparse simulator with several held-out windows a request: parsing, schema, prompt, and the
/// retry and failure rules against Tools/mock_llm_server.py.
@Suite struct SparseWindowsTests {
    typealias Parsed = [Result<JSONSimulationScorer.ParsedAnswer, SparseSimulationScorer.WindowProblem>]

    static let feature = EndToEndTests.feature
    static let heldout = EndToEndTests.heldout

    func values(_ parsed: Parsed, _ window: Int) -> [Double]? { try? parsed[window].get().values }

    @Test func answersAreReadByPositionAndABadWindowIsNamed() throws {
        let lengths = [3, 4, 2]
        let good = SparseSimulationScorer.parseAnswer(#"{"windows": [[[2, 7]], [], [[1, "4"], [1, 2]]]}"#, lengths: lengths)
        #expect(values(good, 0) == [0, 0, 7] && values(good, 1) == [0, 0, 0, 0] && values(good, 2) == [0, 4])

        // Window 2 naming a token it does not have: only that window is unusable, under its own number.
        let partial = SparseSimulationScorer.parseAnswer(#"Here: {"windows": [[[0, 3]], [], [[2, 1]]]}"#, lengths: lengths)
        #expect(values(partial, 0) == [3, 0, 0] && values(partial, 1) == [0, 0, 0, 0])
        #expect(partial[2] == .failure(.window(2, .indexOutOfRange(index: 2, count: 2))))
        // A retry's answer: its entries are the windows asked again, named by their numbers in the first request.
        let retried = SparseSimulationScorer.parseAnswer(#"{"windows": [[], [[5, 1]]]}"#, lengths: [4, 2], numbers: [1, 2])
        #expect(values(retried, 0) == [0, 0, 0, 0] && retried[1] == .failure(.window(2, .indexOutOfRange(index: 5, count: 2))))

        // Another number of windows than asked: positions mean nothing, so no window is usable.
        let short = SparseSimulationScorer.parseAnswer(#"{"windows": [[[0, 3]], []]}"#, lengths: lengths)
        #expect(short == Array(repeating: .failure(.count(found: 2, expected: 3)), count: 3))
        #expect(String(describing: SparseSimulationScorer.WindowProblem.count(found: 2, expected: 3))
                == "the answer lists 2 windows but 3 were asked, in order")

        // Also read: a bare list of entries, and the one-window parser's forms inside an entry.
        let lenient = SparseSimulationScorer.parseAnswer(#"""
            [[{"index": 0, "activation": 2}], {"activations": [{"index": 1, "activation": 5}]}]
            """#, lengths: [2, 2])
        #expect(values(lenient, 0) == [2, 0] && values(lenient, 1) == [0, 5])
        #expect(SparseSimulationScorer.parseAnswer(#"{"windows": [[], 3]}"#, lengths: [1, 1])[1] == .failure(.window(1, .noActivations)))
        #expect(SparseSimulationScorer.parseAnswer("no", lengths: lengths)[1] == .failure(.answer(.notJSON)))
        #expect(SparseSimulationScorer.parseAnswer(#"{"activations": []}"#, lengths: lengths)[0] == .failure(.answer(.noActivations)))
    }

    /// The schema OpenAI's strict mode accepts (closed objects, every property required, no
    /// `prefixItems`; the window count and pair size pinned by `minItems`/`maxItems`), and the pinned
    /// one for llama.cpp, where each window has its own index range and each pair its index then its value.
    @Test func schemaFixesTheWindowCountAndThePairs() throws {
        func windowsList(_ schema: String) throws -> [String: Any] {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(schema.utf8)) as? [String: Any])
            #expect(object["additionalProperties"] as? Bool == false && object["required"] as? [String] == ["windows"])
            return try #require((object["properties"] as? [String: Any])?["windows"] as? [String: Any])
        }
        let open = try windowsList(SparseSimulationScorer.schema(lengths: [3, 12], pinned: false))
        #expect(open["minItems"] as? Int == 2 && open["maxItems"] as? Int == 2 && open["prefixItems"] == nil)
        let entry = try #require(open["items"] as? [String: Any])
        #expect(entry["type"] as? String == "array" && entry["maxItems"] as? Int == 12)
        let pair = try #require(entry["items"] as? [String: Any])
        #expect(pair["minItems"] as? Int == 2 && pair["maxItems"] as? Int == 2 && pair["prefixItems"] == nil)
        #expect((pair["items"] as? [String: Any])?["enum"] as? [Int] == Array(0..<12))
        // Short windows: the shared enum still holds every activation value.
        let short = try windowsList(SparseSimulationScorer.schema(lengths: [3], pinned: false))
        #expect(((((short["items"] as? [String: Any])?["items"] as? [String: Any])?["items"]) as? [String: Any])?["enum"] as? [Int] == Array(0...10))

        let pinned = try windowsList(SparseSimulationScorer.schema(lengths: [4, 2], pinned: true))
        #expect(pinned["minItems"] as? Int == 2 && pinned["maxItems"] as? Int == 2)
        let entries = try #require(pinned["prefixItems"] as? [[String: Any]])
        #expect(entries.map { $0["maxItems"] as? Int } == [4, 2])
        let members = entries.map { (($0["items"] as? [String: Any])?["prefixItems"] as? [[String: Any]])?.map { $0["enum"] as? [Int] } }
        #expect(members[0] == [Array(0..<4), Array(1...10)] && members[1] == [Array(0..<2), Array(1...10)])
    }

    /// Sent as OpenAI's strict structured output to the mock in OpenAI's dialect: the schema for OpenAI
    /// is accepted and answered by position; the llama.cpp one (`prefixItems`) is refused, as OpenAI does.
    @Test func openAIStrictModeTakesTheUnpinnedSchemaAndRefusesThePinnedOne() async throws {
        let server = try await MockLLMServer.start(["--dialect", "openai"])
        defer { server.stop() }
        let client = server.client(retries: 0, server: .openai)
        defer { client.shutdown() }
        let messages = [ChatMessage(role: "user", content: "Window 0:\n0 import\n1 x\nWindow 1:\n0 y")]
        func request(pinned: Bool) -> ChatRequest {
            ChatRequest(model: "gpt-4.1-mini", messages: messages, temperature: 0, maxTokens: 60,
                        responseFormat: .jsonSchema(name: "active_tokens_by_window",
                                                    schema: SparseSimulationScorer.schema(lengths: [2, 1], pinned: pinned)))
        }
        let answer = try await client.chat(request(pinned: false)).text
        let parsed = SparseSimulationScorer.parseAnswer(answer, lengths: [2, 1])
        #expect(values(parsed, 0) == [Double(mockActivation("import")), Double(mockActivation("x"))] && values(parsed, 1) == [Double(mockActivation("y"))], "\(answer)")
        await #expect(throws: LLMError.self) { _ = try await client.chat(request(pinned: true)) }
        let refused = try await server.stats().refused
        #expect(refused.count == 1 && refused[0].contains("prefixItems"), "\(refused)")
    }

    /// The system text is the same for every feature, the explanation comes before the windows, and
    /// each window is shown once, numbered.
    @Test func promptPutsTheSharedPartFirstAndEachWindowOnce() throws {
        let client = LLMClient(configuration: LLMClientConfiguration(baseURL: "http://127.0.0.1:9/v1"))
        defer { client.shutdown() }
        let scorer = try SparseSimulationScorer(client: client, model: "m", prompts: prompts, windowsPerRequest: 4)
        let a = scorer.messages(explanation: "cats", windows: [["a", "b"], ["c"]])
        let b = scorer.messages(explanation: "dogs", windows: [["d"]])
        #expect(a.count == 2 && a[0].role == "system" && a[0].content == b[0].content)
        let user = a[1].content
        #expect(user.hasPrefix("The neuron responds to: cats"))
        #expect(user == "The neuron responds to: cats\nWindow 0:\n0 a\n1 b\nWindow 1:\n0 c\nList, for each of these 2 windows, the tokens on which it fires.", "\(user)")
        // The per-window mode is a different request, so a different prompt hash.
        let single = try SparseSimulationScorer(client: client, model: "m", prompts: prompts, windowsPerRequest: 1)
        #expect(single.promptHash != scorer.promptHash)
        #expect(scorer.plannedCalls(heldout: Self.heldout) == 2 && single.plannedCalls(heldout: Self.heldout) == 5)
    }

    /// Tokens the numbered list must show unambiguously: spaces, line breaks, tabs, quotes, bars,
    /// backslashes (also one that looks like an escape), digits with a space, a header, a tag, nothing.
    static let awkwardTokens = ["The", " ", "  two", "a b", "\n", "\t", "\r\n", "\"q\"", "|", "x|1", "\\", "\\n",
                                "12 3", "Window 1:", "</tokens>", "", " end\n"]

    /// Reads a window's list back: each line is the index, one space, the token with `\\ \n \r \t` escaped.
    static func decodeList(_ block: String) -> [(index: Int, token: String)] {
        block.split(separator: "\n", omittingEmptySubsequences: false).compactMap { line -> (Int, String)? in
            guard let space = line.firstIndex(of: " "), let index = Int(line[..<space]) else { return nil }
            var token = "", escaped = false
            for scalar in line[line.index(after: space)...].unicodeScalars {
                if escaped {
                    token.unicodeScalars.append(scalar == "n" ? "\n" : scalar == "r" ? "\r" : scalar == "t" ? "\t" : scalar)
                    escaped = false
                } else if scalar == "\\" {
                    escaped = true
                } else {
                    token.unicodeScalars.append(scalar)
                }
            }
            return (index, token)
        }
    }

    /// The numbered list round-trips: in the prompt as sent, every window's tokens come back exactly, in
    /// order, each with its index; and the mock, which reads the list with its own parser, simulates
    /// each awkward token by its own value (the answer indices land on the right tokens).
    @Test func numberedTokenListRoundTrips() async throws {
        // The last window ends in spaces: nothing after it may be trimmed away.
        let windows = [Self.awkwardTokens, Array(Self.awkwardTokens.reversed()), ["only", "  "]]
        let client = LLMClient(configuration: LLMClientConfiguration(baseURL: "http://127.0.0.1:9/v1"))
        defer { client.shutdown() }
        let scorer = try SparseSimulationScorer(client: client, model: "m", prompts: prompts, windowsPerRequest: 4)
        let user = scorer.messages(explanation: "anything", windows: windows)[1].content
        for (number, tokens) in windows.enumerated() {
            let start = try #require(user.range(of: "\nWindow \(number):\n"))
            let end = user.range(of: "\nWindow \(number + 1):\n", range: start.upperBound..<user.endIndex)?.lowerBound ?? user.endIndex
            let decoded = Self.decodeList(String(user[start.upperBound..<end]))
            #expect(decoded.map(\.index) == Array(tokens.indices), "window \(number)")
            #expect(decoded.map(\.token) == tokens, "window \(number)")
        }
        #expect(SparseSimulationScorer.tokenList(["a\\nb", "a\nb"]) == "0 a\\\\nb\n1 a\\nb")

        let server = try await MockLLMServer.start()
        defer { server.stop() }
        let mockClient = server.client()
        defer { mockClient.shutdown() }
        let heldout = windows.map { window($0, $0.indices.map { Float($0 % 3) }) }
        for perRequest in [1, 4] {
            let mockScorer = try SparseSimulationScorer(client: mockClient, model: "mock", prompts: prompts, windowsPerRequest: perRequest)
            let result = try await mockScorer.score(feature: 1, explanation: "anything", heldout: heldout)
            let details = try JSONDecoder().decode(SimulationDetails.self, from: Data(result.details.utf8))
            #expect(details.windows.map(\.simulated) == windows.map { Optional($0.map { Double(mockActivation($0)) }) }, "\(perRequest)")
        }
    }

    /// Runs the scorer on the five held-out windows of EndToEndTests against the mock after scripting faults.
    func score(windowsPerRequest: Int, faults: [String] = []) async throws -> (ScoreResult, SimulationDetails, requests: Int, tags: [String]) {
        let server = try await MockLLMServer.start()
        defer { server.stop() }
        let recorder = TagRecorder()
        let client = server.client(cache: recorder)
        defer { client.shutdown() }
        try await server.script(faults)
        let scorer = try SparseSimulationScorer(client: client, model: "mock", prompts: prompts, windowsPerRequest: windowsPerRequest)
        let result = try await scorer.score(feature: Self.feature, explanation: "the token \"import\"", heldout: Self.heldout)
        let details = try JSONDecoder().decode(SimulationDetails.self, from: Data(result.details.utf8))
        return (result, details, try await server.requestCount(), recorder.tags)
    }

    /// Given the same answers (the mock's), one request for all windows, chunks of two, and a request per
    /// window give the same simulated values and score.
    @Test func severalWindowsScoreAsOneWindowARequest() async throws {
        let (single, singleDetails, singleRequests, _) = try await score(windowsPerRequest: 1)
        let (all, allDetails, allRequests, allTags) = try await score(windowsPerRequest: 8)
        let (pairs, pairsDetails, pairsRequests, pairsTags) = try await score(windowsPerRequest: 2)
        #expect(singleRequests == 5 && allRequests == 1 && pairsRequests == 3)
        #expect(allTags == ["simulate:7:0-4"])
        #expect(pairsTags.sorted() == ["simulate:7:0-1", "simulate:7:2-3", "simulate:7:4-4"])
        #expect(singleDetails.windows.map(\.simulated) == EndToEndTests.mockSimulation.map { Optional($0) })
        #expect(allDetails.windows == singleDetails.windows && pairsDetails.windows == singleDetails.windows)
        let expected = pearson(EndToEndTests.truth, EndToEndTests.mockSimulation.flatMap { $0 })
        for result in [single, all, pairs] { #expect(abs((result.value ?? .nan) - expected) < 1e-9) }
        #expect(allDetails.failedWindows == 0 && allDetails.retriedWindows == 0)
    }

    /// An answer one window short: positions mean nothing, so every window of the request is asked
    /// again, and the score is the same once the retry answers.
    @Test func aWrongWindowCountAsksEveryWindowAgain() async throws {
        let (result, details, requests, tags) = try await score(windowsPerRequest: 8, faults: ["wrong_length"])
        #expect(requests == 2 && tags == ["simulate:7:0-4", "simulate:7:0-4:retry"])
        #expect(details.retriedWindows == 5 && details.failedWindows == 0)
        #expect(details.windows.map(\.simulated) == EndToEndTests.mockSimulation.map { Optional($0) })
        #expect(abs((result.value ?? .nan) - pearson(EndToEndTests.truth, EndToEndTests.mockSimulation.flatMap { $0 })) < 1e-9)
    }

    /// An answer whose last window names a token it does not have: only that window is asked again.
    @Test func aBadWindowIsRetriedAlone() async throws {
        let (result, details, requests, tags) = try await score(windowsPerRequest: 8, faults: ["bad_index"])
        #expect(requests == 2 && tags == ["simulate:7:0-4", "simulate:7:0-4:retry"])
        #expect(details.retriedWindows == 1 && details.failedWindows == 0)
        #expect(details.windows.map(\.simulated) == EndToEndTests.mockSimulation.map { Optional($0) })
        #expect(abs((result.value ?? .nan) - pearson(EndToEndTests.truth, EndToEndTests.mockSimulation.flatMap { $0 })) < 1e-9)
    }

    /// The failure rule: a window still unusable after the retry fails the score with the reason,
    /// and both calls of its request are named for the cache to forget.
    @Test func aWindowUnusableTwiceFailsTheScore() async throws {
        let (result, details, requests, _) = try await score(windowsPerRequest: 8, faults: ["bad_index", "bad_index"])
        #expect(requests == 2)
        #expect(result.value == nil)
        let failure = try #require(result.failure)
        #expect(failure.contains("1 of 5 held-out windows unusable after the retry") && failure.contains("window 4: index"), "\(failure)")
        #expect(result.unusableTags == ["simulate:7:0-4", "simulate:7:0-4:retry"])
        #expect(details.failedWindows == 1 && details.retriedWindows == 1 && details.windows[4].simulated == nil)
        #expect(details.windows[0].simulated == EndToEndTests.mockSimulation[0])

        // A wrong count twice: every window of the request is unusable.
        let (again, againDetails, _, _) = try await score(windowsPerRequest: 8, faults: ["wrong_length", "wrong_length"])
        #expect(again.value == nil && againDetails.failedWindows == 5)
        #expect(again.failure?.contains("the answer lists 4 windows but 5 were asked") == true, "\(again.failure ?? "")")
    }
}
