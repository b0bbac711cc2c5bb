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
    typealias Parsed = [Int: Result<JSONSimulationScorer.ParsedAnswer, SparseSimulationScorer.WindowProblem>]

    static let feature = EndToEndTests.feature
    static let heldout = EndToEndTests.heldout

    func values(_ parsed: Parsed, _ window: Int) -> [Double]? { try? parsed[window]?.get().values }

    @Test func answersAreReadPerWindowAndAMissingOrBadWindowIsNamed() throws {
        let lengths = [0: 3, 1: 4, 2: 2]
        let good = SparseSimulationScorer.parseAnswer(#"""
            {"windows": [{"window": 0, "activations": [{"index": 2, "activation": 7}]},
                         {"window": 1, "activations": []}, {"window": 2, "activations": [[1, "4"]]}]}
            """#, lengths: lengths)
        #expect(values(good, 0) == [0, 0, 7] && values(good, 1) == [0, 0, 0, 0] && values(good, 2) == [0, 4])

        // Window 1 missing and window 2 naming a token it does not have: only those two are unusable.
        let partial = SparseSimulationScorer.parseAnswer(#"""
            Here: {"windows": [{"window": 0, "activations": [{"index": 0, "activation": 3}]},
                               {"window": 2, "activations": [{"index": 2, "activation": 1}]}]}
            """#, lengths: lengths)
        #expect(values(partial, 0) == [3, 0, 0])
        #expect(partial[1] == .failure(.missing(window: 1)))
        #expect(partial[2] == .failure(.window(2, .indexOutOfRange(index: 2, count: 2))))
        #expect(String(describing: SparseSimulationScorer.WindowProblem.missing(window: 1)) == "window 1 is missing from the answer")

        // A window given twice keeps each token's larger value; a window not asked for is ignored.
        let twice = SparseSimulationScorer.parseAnswer(#"""
            [{"window": 0, "activations": [{"index": 0, "activation": 2}]}, {"window": 9, "activations": []},
             {"window": 0, "activations": [{"index": 0, "activation": 5}, {"index": 1, "activation": 1}]}]
            """#, lengths: [0: 2])
        #expect(values(twice, 0) == [5, 1])

        #expect(SparseSimulationScorer.parseAnswer("no", lengths: lengths)[1] == .failure(.answer(.notJSON)))
        #expect(SparseSimulationScorer.parseAnswer(#"{"activations": []}"#, lengths: lengths)[0] == .failure(.answer(.noActivations)))
    }

    /// The schema OpenAI's strict mode accepts, and the pinned one for llama.cpp; properties in the
    /// order the model should write them (a llama.cpp grammar follows it).
    @Test func schemaFixesTheWindowsAndOrdersTheProperties() throws {
        let open = SparseSimulationScorer.schema(lengths: [3, 2], numbers: [0, 1], pinned: false)
        #expect(open.firstRange(of: "\"window\"")!.lowerBound < open.firstRange(of: "\"activations\":{")!.lowerBound)
        #expect(open.firstRange(of: "\"index\"")!.lowerBound < open.firstRange(of: "\"activation\":")!.lowerBound)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(open.utf8)) as? [String: Any])
        let list = try #require((object["properties"] as? [String: Any])?["windows"] as? [String: Any])
        #expect(list["minItems"] as? Int == 2 && list["maxItems"] as? Int == 2 && list["prefixItems"] == nil)
        let entry = try #require(list["items"] as? [String: Any])
        #expect(entry["additionalProperties"] as? Bool == false && entry["required"] as? [String] == ["window", "activations"])
        let properties = try #require(entry["properties"] as? [String: Any])
        #expect((properties["window"] as? [String: Any])?["enum"] as? [Int] == [0, 1])
        #expect((properties["activations"] as? [String: Any])?["maxItems"] as? Int == 3)

        // Pinned (llama.cpp): entry i is window numbers[i] with its own length; a retry asks for windows 1 and 4 only.
        let pinned = SparseSimulationScorer.schema(lengths: [4, 2], numbers: [1, 4], pinned: true)
        let pinnedObject = try #require(try JSONSerialization.jsonObject(with: Data(pinned.utf8)) as? [String: Any])
        let pinnedList = try #require((pinnedObject["properties"] as? [String: Any])?["windows"] as? [String: Any])
        let entries = try #require(pinnedList["prefixItems"] as? [[String: Any]])
        let windows = entries.map { (($0["properties"] as? [String: Any])?["window"] as? [String: Any])?["enum"] as? [Int] }
        let maxItems = entries.map { (($0["properties"] as? [String: Any])?["activations"] as? [String: Any])?["maxItems"] as? Int }
        #expect(windows == [[1], [4]] && maxItems == [4, 2])
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

    /// An answer without its last window: only that window is asked again, and the score is the same.
    @Test func aDroppedWindowIsRetriedAlone() async throws {
        let (result, details, requests, tags) = try await score(windowsPerRequest: 8, faults: ["wrong_length"])
        #expect(requests == 2 && tags == ["simulate:7:0-4", "simulate:7:0-4:retry"])
        #expect(details.retriedWindows == 1 && details.failedWindows == 0)
        #expect(details.windows.map(\.simulated) == EndToEndTests.mockSimulation.map { Optional($0) })
        #expect(abs((result.value ?? .nan) - pearson(EndToEndTests.truth, EndToEndTests.mockSimulation.flatMap { $0 })) < 1e-9)
    }

    /// The failure rule: a window still missing after the retry fails the score with the reason,
    /// and both calls of its request are named for the cache to forget.
    @Test func aWindowMissingTwiceFailsTheScore() async throws {
        let (result, details, requests, _) = try await score(windowsPerRequest: 8, faults: ["wrong_length", "wrong_length"])
        #expect(requests == 2)
        #expect(result.value == nil)
        let failure = try #require(result.failure)
        #expect(failure.contains("1 of 5 held-out windows unusable after the retry") && failure.contains("window 4 is missing"), "\(failure)")
        #expect(result.unusableTags == ["simulate:7:0-4", "simulate:7:0-4:retry"])
        #expect(details.failedWindows == 1 && details.retriedWindows == 1 && details.windows[4].simulated == nil)
        #expect(details.windows[0].simulated == EndToEndTests.mockSimulation[0])
    }
}
