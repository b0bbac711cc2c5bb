import Foundation
import LLMClient
import SAELabelCore
import SAELabelExplain
import SAELabelScore
import SAELabelStore
import Synchronization
import TestSupport
import Testing

/// Records the tags of every LLM call (a stand-in for the job store's cache; never answers from cache).
final class TagRecorder: LLMResponseCache {
    private let state = Mutex<[String]>([])
    func cachedResponse(forKey key: String) -> Data? { nil }
    func storeResponse(_ body: Data, forKey key: String, record: LLMCallRecord) {}
    func recordCall(_ record: LLMCallRecord) { state.withLock { $0.append(record.tag) } }
    var tags: [String] { state.withLock { $0 } }
}

/// End to end through Tools/mock_llm_server.py over 127.0.0.1 with a real job store.
@Suite struct EndToEndTests {
    static let feature = 7
    static let explain = [
        window(["import", " os", "\n", "from", " sys", " import", " path"], [9, 0, 0, 3, 0, 8, 0]),
        window(["def", " f", "():", "\n", "import", " re"], [0, 0, 0, 0, 7, 0], sequence: 1),
    ]
    static let heldout = [
        window(["import", " numpy", " as", " np"], [6, 0, 0, 0], .top, sequence: 2),
        window(["from", " a", " import", " b"], [0, 0, 5, 1], .top, sequence: 3),
        window(["x", " =", " import", "lib"], [0, 0, 2, 0], .quantile, sequence: 4),
        window(["the", " cat", " sat", " down"], [0, 0, 0, 0], .random, sequence: 5),
        window(["hello", " world", "!", " ok"], [0, 0, 0, 0.5], .random, sequence: 6),
    ]

    /// What the mock's explain rule answers for the records the explainer sends (SPEC §4 floor
    /// normalization with the max over all explain windows; totals per stripped token).
    static func expectedExplanation() -> String {
        let max = explain.flatMap(\.activations).max()!
        var totals: [String: Int] = [:]
        for w in explain {
            for (token, a) in zip(w.tokens, w.activations) {
                let n = min(10, Int((10 * a / max).rounded(.down)))
                let key = token.replacingOccurrences(of: "\n", with: "\\n").trimmingCharacters(in: .whitespaces)
                totals[key, default: 0] += n
            }
        }
        let best = totals.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }[0].key
        return "the token \"\(best)\""
    }

    static var truth: [Double] { heldout.flatMap { $0.activations.map(Double.init) } }
    static var mockSimulation: [[Double]] { heldout.map { $0.tokens.map { Double(mockActivation($0)) } } }

    /// The mock's detect rule on one example text: 1 when a whitespace-separated word has activation ≥ 8.
    static func mockDetects(_ text: String) -> Bool {
        text.split(whereSeparator: \.isWhitespace).contains { mockActivation(String($0)) >= 8 }
    }

    static func balancedAccuracy(truth: [Bool], predicted: [Bool]) -> Double {
        let p = truth.filter { $0 }.count, n = truth.count - p
        let tp = zip(truth, predicted).filter { $0 && $1 }.count
        let tn = zip(truth, predicted).filter { !$0 && !$1 }.count
        return (Double(tp) / Double(p) + Double(tn) / Double(n)) / 2
    }

    static func simulationDetails(_ store: JobStore) throws -> (StoredScore, SimulationDetails) {
        let explanation = try #require(try store.currentExplanation(feature: feature))
        let score = try #require(try store.scores(explanation: explanation).first { $0.scorer == "simulation" })
        return (score, try JSONDecoder().decode(SimulationDetails.self, from: Data(score.details.utf8)))
    }

    @Test func explainAndScoreThroughTheMock() async throws {
        let server = try await MockLLMServer.start()
        defer { server.stop() }
        let recorder = TagRecorder()
        let client = LLMClient(configuration: LLMClientConfiguration(
            baseURL: server.baseURL, apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY", maxInFlight: 4,
            requestTimeout: 10, maxRetries: 2, backoffBase: 0.02, backoffMax: 0.1), cache: recorder)
        defer { client.shutdown() }
        let (store, directory) = try makeStore(feature: Self.feature, explain: Self.explain, heldout: Self.heldout)
        defer { try? FileManager.default.removeItem(at: directory) }

        let explainer = try LLMExplainer(client: client, model: "mock", prompts: prompts)
        try await ExplainStep.run(feature: Self.feature, store: store, explainer: explainer)
        let explanation = try #require(try store.currentExplanation(feature: Self.feature))
        #expect(explanation.text == Self.expectedExplanation())
        #expect(explanation.text == "the token \"import\"")
        #expect(explanation.explainerModel == "mock" && explanation.promptHash == explainer.promptHash)
        #expect(try store.feature(Self.feature)?.state == .explained)

        let detection = try DetectionScorer(client: client, model: "mock", prompts: prompts, seed: 11)
        let fuzzing = try FuzzingScorer(client: client, model: "mock", prompts: prompts, seed: 11)
        let scorers: [any Scorer] = [try JSONSimulationScorer(client: client, model: "mock", prompts: prompts), detection, fuzzing]
        try await ScoreStep.run(feature: Self.feature, store: store, scorers: scorers)
        #expect(try store.feature(Self.feature)?.state == .scored)

        // Simulation: Pearson r of the raw held-out activations against the mock's FNV-1a values.
        let (simulation, details) = try Self.simulationDetails(store)
        let expected = pearson(Self.truth, Self.mockSimulation.flatMap { $0 })
        #expect(abs((simulation.value ?? .nan) - expected) < 1e-9)
        #expect(details.failedWindows == 0 && details.retriedWindows == 0 && details.undefinedReason == nil)
        #expect(details.windows.map(\.heldoutOrdinal) == [0, 1, 2, 3, 4])
        #expect(details.windows.map(\.simulated) == Self.mockSimulation.map { Optional($0) })
        #expect(details.rsquared != nil && details.absoluteDevExplained != nil)

        // Detection: the mock says 1 when a word of the excerpt has activation ≥ 8.
        let scores = try store.scores(explanation: explanation)
        let detectionScore = try #require(scores.first { $0.scorer == "detection" })
        let detectionTruth = Self.heldout.map { $0.kind != .random }
        let detectionPredicted = Self.heldout.map { Self.mockDetects($0.tokens.joined()) }
        #expect(detectionScore.value == Self.balancedAccuracy(truth: detectionTruth, predicted: detectionPredicted))
        let detectionDetails = try JSONDecoder().decode(ClassificationDetails.self, from: Data(detectionScore.details.utf8))
        #expect(detectionDetails.truePositives + detectionDetails.falseNegatives == 3)
        #expect(detectionDetails.failedPrompts == 0)

        // Fuzzing: the same rule on the marked texts actually sent.
        let fuzzingScore = try #require(scores.first { $0.scorer == "fuzzing" })
        var fuzzTruth: [Bool] = [], fuzzPredicted: [Bool] = []
        for batch in fuzzing.prompts(feature: Self.feature, explanation: explanation.text, heldout: Self.heldout) {
            fuzzTruth += batch.truth
            fuzzPredicted += PromptRenderingTests.examples(batch.messages.last!.content).map(Self.mockDetects)
        }
        #expect(fuzzTruth.count == 5)
        #expect(fuzzingScore.value == Self.balancedAccuracy(truth: fuzzTruth, predicted: fuzzPredicted))

        // Tags name the stage, feature and window.
        let tags = recorder.tags
        #expect(tags.contains("explain:7"))
        #expect((0..<5).allSatisfy { tags.contains("simulate:7:\($0)") })
        #expect(tags.contains("detect:7:0") && !tags.contains("detect:7:1") && tags.contains("fuzz:7:0"))  // 5 windows, 5 per prompt

        // Resume: nothing left to do, so no request reaches the server.
        let before = try await server.requestCount()
        try await ExplainStep.run(feature: Self.feature, store: store, explainer: explainer)
        try await ScoreStep.run(feature: Self.feature, store: store, scorers: scorers)
        #expect(try await server.requestCount() == before)
        #expect(try store.scores(explanation: explanation).count == 3)
    }

    /// Stores an explanation directly and runs only the JSON simulator after scripting faults.
    private func simulate(faults: [String]) async throws -> (StoredScore, SimulationDetails, requests: Int, tags: [String]) {
        let server = try await MockLLMServer.start()
        defer { server.stop() }
        let recorder = TagRecorder()
        let client = LLMClient(configuration: LLMClientConfiguration(
            baseURL: server.baseURL, apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY", maxInFlight: 4,
            requestTimeout: 10, maxRetries: 2, backoffBase: 0.02, backoffMax: 0.1), cache: recorder)
        defer { client.shutdown() }
        let (store, directory) = try makeStore(feature: Self.feature, explain: Self.explain, heldout: Self.heldout)
        defer { try? FileManager.default.removeItem(at: directory) }
        try store.saveExplanation(feature: Self.feature, text: "the token \"import\"", explainerModel: "mock",
                                  promptHash: "test", rawResponse: nil)
        try await server.script(faults)
        try await ScoreStep.run(feature: Self.feature, store: store,
                                scorers: [try JSONSimulationScorer(client: client, model: "mock", prompts: prompts)])
        let (score, details) = try Self.simulationDetails(store)
        return (score, details, try await server.requestCount(), recorder.tags)
    }

    @Test func wrongLengthIsRetriedOnceWithTheErrorShown() async throws {
        let (score, details, requests, tags) = try await simulate(faults: ["wrong_length"])
        #expect(details.retriedWindows == 1 && details.failedWindows == 0)
        #expect(requests == Self.heldout.count + 1)
        #expect(tags.contains("simulate:7:0:retry"))
        #expect(details.windows[0].simulated == Self.mockSimulation[0])
        #expect(abs((score.value ?? .nan) - pearson(Self.truth, Self.mockSimulation.flatMap { $0 })) < 1e-9)
    }

    /// The failure rule: a window still unusable after the retry fails the whole score (not stored,
    /// the feature fails with the reason) instead of being scored as zeros.
    @Test func windowFailingTwiceFailsTheScoreInsteadOfScoringZeros() async throws {
        let server = try await MockLLMServer.start()
        defer { server.stop() }
        let client = LLMClient(configuration: LLMClientConfiguration(
            baseURL: server.baseURL, apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY", maxInFlight: 4,
            requestTimeout: 10, maxRetries: 2, backoffBase: 0.02, backoffMax: 0.1))
        defer { client.shutdown() }
        let (store, directory) = try makeStore(feature: Self.feature, explain: Self.explain, heldout: Self.heldout)
        defer { try? FileManager.default.removeItem(at: directory) }
        let explanation = try store.saveExplanation(feature: Self.feature, text: "the token \"import\"", explainerModel: "mock",
                                                    promptHash: "test", rawResponse: nil)
        try await server.script(["wrong_length", "wrong_length"])
        let scorer = try JSONSimulationScorer(client: client, model: "mock", prompts: prompts)
        let result = try await scorer.score(feature: Self.feature, explanation: explanation.text, heldout: Self.heldout)
        #expect(result.value == nil)
        #expect(result.failure?.contains("1 of \(Self.heldout.count) held-out windows unusable after the retry") == true)
        #expect(result.unusableTags == ["simulate:7:0", "simulate:7:0:retry"])
        let details = try JSONDecoder().decode(SimulationDetails.self, from: Data(result.details.utf8))
        #expect(details.failedWindows == 1 && details.retriedWindows == 1)
        #expect(details.windows[0].simulated == nil)
        #expect(details.windows[0].error?.contains("entries but there are 4 tokens") == true)

        try await server.script(["wrong_length", "wrong_length"])
        await #expect(throws: SAELabelError.self) {
            try await ScoreStep.run(feature: Self.feature, store: store, scorers: [scorer])
        }
        #expect(try store.scores(explanation: explanation).isEmpty, "a failure is never stored as a score")
    }

    /// The failure rule for detection and fuzzing: a prompt still unusable after the retry fails the score.
    @Test func detectionPromptFailingTwiceFailsTheScore() async throws {
        let server = try await MockLLMServer.start()
        defer { server.stop() }
        let client = LLMClient(configuration: LLMClientConfiguration(
            baseURL: server.baseURL, apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY", maxInFlight: 4,
            requestTimeout: 10, maxRetries: 2, backoffBase: 0.02, backoffMax: 0.1))
        defer { client.shutdown() }
        let (store, directory) = try makeStore(feature: Self.feature, explain: Self.explain, heldout: Self.heldout)
        defer { try? FileManager.default.removeItem(at: directory) }
        let explanation = try store.saveExplanation(feature: Self.feature, text: "the token \"import\"", explainerModel: "mock",
                                                    promptHash: "test", rawResponse: nil)
        let scorer = try DetectionScorer(client: client, model: "mock", prompts: prompts)
        #expect(scorer.plannedCalls(heldout: Self.heldout) == 1)
        try await server.script(["wrong_length", "wrong_length"])
        let result = try await scorer.score(feature: Self.feature, explanation: explanation.text, heldout: Self.heldout)
        #expect(result.value == nil, "not a below-chance balanced accuracy")
        #expect(result.failure?.hasPrefix("1 of 1 prompts unusable after the retry") == true, "\(result.failure ?? "nil")")
        #expect(result.unusableTags == ["detect:7:0", "detect:7:0:retry"])

        try await server.script(["wrong_length", "wrong_length"])
        await #expect(throws: SAELabelError.self) {
            try await ScoreStep.run(feature: Self.feature, store: store, scorers: [scorer])
        }
        #expect(try store.scores(explanation: explanation).isEmpty)
        // With usable answers the same call scores and stores it.
        try await ScoreStep.run(feature: Self.feature, store: store, scorers: [scorer])
        #expect(try store.scores(explanation: explanation).first?.value != nil)
    }

    @Test func malformedBodyIsRetriedByTheClient() async throws {
        let (score, details, requests, _) = try await simulate(faults: ["malformed"])
        #expect(details.failedWindows == 0 && details.retriedWindows == 0)
        #expect(requests == Self.heldout.count + 1)
        #expect(abs((score.value ?? .nan) - pearson(Self.truth, Self.mockSimulation.flatMap { $0 })) < 1e-9)
    }

    @Test func logprobSimulatorDetectsAlignmentAndTakesExpectedValues() async throws {
        let server = try await MockLLMServer.start(["--dialect", "vllm"])
        defer { server.stop() }
        let client = server.client(server: .vllm)
        defer { client.shutdown() }
        let scorer = try LogprobSimulationScorer(client: client, model: "mock", prompts: prompts)
        #expect(try await scorer.alignment() == .sameToken)  // the mock follows OpenAI's convention
        let result = try await scorer.score(feature: Self.feature, explanation: "imports", heldout: Self.heldout)
        let details = try JSONDecoder().decode(SimulationDetails.self, from: Data(result.details.utf8))
        // The mock: logit(v) = −1.5·|v − p| with p = mock_activation of the word before `unknown`.
        func expectedValue(_ token: String) -> Double {
            let word = String(token.split(whereSeparator: \.isWhitespace).last ?? "")
            let p = Double(mockActivation(word))
            let weights = (0...10).map { exp(-1.5 * abs(Double($0) - p)) }
            return zip(0...10, weights).reduce(0) { $0 + Double($1.0) * $1.1 } / weights.reduce(0, +)
        }
        for (ordinal, w) in Self.heldout.enumerated() {
            let simulated = try #require(details.windows[ordinal].simulated)
            let wanted = w.tokens.map(expectedValue)
            #expect(zip(simulated, wanted).allSatisfy { abs($0 - $1) < 1e-4 }, "window \(ordinal): \(simulated) vs \(wanted)")
        }
        #expect(details.failedWindows == 0)
        let predicted = Self.heldout.flatMap { $0.tokens.map(expectedValue) }
        #expect(abs((result.value ?? .nan) - pearson(Self.truth, predicted)) < 1e-4)
    }
}

@Suite struct ReasoningModelTests {
    /// A reasoning model that spends the whole limit on hidden reasoning returns empty content with
    /// finish_reason "length": the failure says so instead of calling the empty answer a bad label.
    @Test func anAnswerCutOffByHiddenReasoningSaysWhichLimitToRaise() async throws {
        let server = try await MockLLMServer.start(["--dialect", "openai", "--reasoning-tokens", "100000"])
        defer { server.stop() }
        let client = server.client()
        defer { client.shutdown() }
        let explainer = try LLMExplainer(client: client, model: "gpt-5-mini", prompts: prompts, maxTokens: 40)
        await #expect {
            _ = try await explainer.explain(feature: 3, examples: EndToEndTests.explain)
        } throws: { error in
            (error as? SAELabelError)?.description.contains("max_tokens = 40") == true
        }
        #expect(try await server.stats().refused.isEmpty)

        // With the mock's default reasoning spend, the allowance saelabel adds leaves room for the answer.
        let roomy = try await MockLLMServer.start(["--dialect", "openai"])
        defer { roomy.stop() }
        let roomyClient = roomy.client()
        defer { roomyClient.shutdown() }
        let result = try await LLMExplainer(client: roomyClient, model: "gpt-5-mini", prompts: prompts, maxTokens: 40)
            .explain(feature: 3, examples: EndToEndTests.explain)
        #expect(result.text.hasPrefix("the token"))
    }
}
