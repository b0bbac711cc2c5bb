import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport
import Testing

/// Issue 16 points 2–4 through the real binary against the mock: the sparse simulator, prompt-cache
/// accounting, prices and `[limits] max_cost`.
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct CostTests {
    static let sparse = "[\"simulation\"]\nmode = \"sparse\""
    static let prices = "\n[prices.mock]\ninput = 100.0\ncached_input = 25.0\noutput = 400.0\n"

    func status(_ db: String) async throws -> [String: Any] {
        let result = try await runSAELabel(["status", "--db", db, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    }

    func simulationScores(_ db: String) throws -> [Int: Double] {
        let store = try JobStore(path: db)
        var scores: [Int: Double] = [:]
        for feature in try store.features(in: [.scored]) {
            let explanation = try #require(try store.currentExplanation(feature: feature))
            scores[feature] = try store.scores(explanation: explanation).first { $0.scorer == "simulation" }?.value
        }
        return scores
    }

    /// The mock answers the sparse request with exactly the dense answer's non-zero values, so both
    /// simulators must give every feature the same score; the sparse one answers in fewer tokens.
    @Test(arguments: ["llama-cpp-python", "openai"])
    func sparseSimulationScoresAsTheDenseOneOnTheSameAnswers(_ dialect: String) async throws {
        let mock = try await MockLLMServer.start(["--dialect", dialect])
        defer { mock.stop() }
        let model = dialect == "openai" ? "gpt-4.1-mini" : "smollm2"
        var tokensOut: [String: Int] = [:]
        var scores: [String: [Int: Double]] = [:]
        for (name, scorers) in [("dense", "[\"simulation\"]\nmode = \"json\""), ("sparse", Self.sparse)] {
            let dir = TempDirectory()
            let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8", scorers: scorers, model: model, server: dialect)
            let result = try await runSAELabel(["run", "--config", job, "--quiet"])
            #expect(result.status == 0, "\(name): \(result.stderr)")
            scores[name] = try simulationScores(dir.file("job.sqlite"))
            let stages = try #require(try await status(dir.file("job.sqlite"))["usage_by_stage"] as? [[String: Any]])
            tokensOut[name] = stages.first { $0["stage"] as? String == "score" }?["completion_tokens"] as? Int
        }
        let stats = try await mock.stats()
        #expect(stats.refused.isEmpty, "refused: \(stats.refused)")
        #expect(!(scores["dense"] ?? [:]).isEmpty)
        #expect(scores["sparse"] == scores["dense"])
        let dense = try #require(tokensOut["dense"]), sparse = try #require(tokensOut["sparse"])
        #expect(sparse < dense, "sparse \(sparse) vs dense \(dense) answer tokens")
    }

    /// An answer naming a token outside the window gets the retry; the mock's bad answers on both
    /// tries fail the score, as the dense simulator's wrong lengths do.
    @Test func sparseAnswerWithAnIndexOutsideTheWindowFailsTheScoreAfterTheRetry() async throws {
        let mock = try await MockLLMServer.start(["--dialect", "openai"])
        defer { mock.stop() }
        try await mock.script(Array(repeating: "wrong_length", count: 500))
        let dir = TempDirectory()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..2", scorers: Self.sparse + "\nwindows_per_request = 1", model: "gpt-4.1-mini",
                               server: "openai")
        let result = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(result.status == 1, "\(result.stdout)\n\(result.stderr)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        let failed = try store.features(in: [.failed])
        #expect(!failed.isEmpty)
        for feature in failed {
            let reason = try #require(try store.feature(feature)?.failureReason)
            #expect(reason.contains("names no token"), "\(reason)")
        }
    }

    /// A copy of the built-in prompts whose system messages open with a 1,100-word block (as few-shot
    /// examples would): long enough for OpenAI's prompt cache, which serves only prompts of 1,024 tokens
    /// or more, in 128-token steps.
    static func longSystemPrompts(_ dir: TempDirectory) throws -> String {
        let folder = dir.file("prompts")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let block = (0..<1100).map { "example\($0)" }.joined(separator: " ")
        for name in PromptLibrary.bundledNames {
            var source = try PromptLibrary.bundled.template(name).source
            if name.hasSuffix(".system") { source = block + "\n\n" + source }
            try source.write(toFile: folder + "/\(name).mustache", atomically: true, encoding: .utf8)
        }
        return folder
    }

    /// The mock caches prompt prefixes as OpenAI does: with the built-in prompts (a short shared part)
    /// nothing is cached; with a long shared system message every request after the first reuses it.
    /// The store keeps the cached tokens per call, and status and the summary price them at cached_input.
    @Test func cachedPromptTokensAreStoredAndPriced() async throws {
        var cachedByPrompts: [String: Int] = [:]
        for variant in ["built-in", "long system"] {
            let mock = try await MockLLMServer.start(["--dialect", "openai"])
            defer { mock.stop() }
            let dir = TempDirectory()
            let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..4", scorers: Self.sparse, extra: Self.prices)
            let environment = variant == "built-in" ? [:] : ["SAELABEL_PROMPTS": try Self.longSystemPrompts(dir)]
            let result = try await runSAELabel(["run", "--config", job], environment: environment)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.contains("prompt-cached") && result.stdout.contains("per labeled feature"), "\(result.stdout)")
            let json = try await status(dir.file("job.sqlite"))
            let llm = try #require(json["llm"] as? [String: Any])
            let cached = try #require(llm["cached_prompt_tokens"] as? Int)
            cachedByPrompts[variant] = cached
            let prompt = try #require(llm["prompt_tokens"] as? Int), completion = try #require(llm["completion_tokens"] as? Int)
            #expect(cached < prompt)
            let cost = try #require(json["cost"] as? Double)
            let expected = (Double(prompt - cached) * 100 + Double(cached) * 25 + Double(completion) * 400) / 1_000_000
            #expect(abs(cost - expected) < 1e-9, "\(cost) vs \(expected)")
            let explained = try #require(json["explanations"] as? Int)
            #expect(abs(try #require(json["cost_per_labeled_feature"] as? Double) - cost / Double(explained)) < 1e-12)
        }
        #expect(cachedByPrompts["built-in"] == 0, "the built-in prompts share fewer than 1,024 tokens")
        let long = try #require(cachedByPrompts["long system"])
        #expect(long >= 1024 && long % 128 == 0, "cached \(long): whole 128-token steps of at least 1,024")
    }

    /// `[limits] max_cost` stops the run before it could spend more (exit 1, no feature failed), and a
    /// rerun with a higher limit finishes with the same tokens as one uninterrupted run: nothing paid twice.
    @Test func maxCostStopsCleanlyAndARerunFinishesWithoutPayingTwice() async throws {
        let full = TempDirectory()
        let fullMock = try await MockLLMServer.start(["--dialect", "openai"])
        defer { fullMock.stop() }
        let fullJob = try Demo.job(full, endpoint: fullMock.baseURL, features: "0..8", scorers: Self.sparse, extra: Self.prices)
        #expect(try await runSAELabel(["run", "--config", fullJob, "--quiet"]).status == 0)
        let fullStatus = try await status(full.file("job.sqlite"))
        let fullCost = try #require(fullStatus["cost"] as? Double)
        let fullLLM = try #require(fullStatus["llm"] as? [String: Any])

        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--dialect", "openai"])
        defer { mock.stop() }
        let limit = fullCost / 2
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8", scorers: Self.sparse,
                               extra: "max_cost = \(limit)" + Self.prices)
        let stopped = try await runSAELabel(["run", "--config", job])
        #expect(stopped.status == 1, "\(stopped.stdout)\n\(stopped.stderr)")
        #expect(stopped.stdout.contains("max_cost"), "\(stopped.stdout)")
        let partial = try await status(dir.file("job.sqlite"))
        #expect(try #require(partial["cost"] as? Double) <= limit)
        let states = try #require(partial["states"] as? [String: Int])
        #expect(states["failed"] == 0 && states["scored", default: 0] < fullStatus["states"].flatMap { ($0 as? [String: Int])?["scored"] } ?? 0,
                "\(states)")

        let rerunJob = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8", scorers: Self.sparse,
                                    extra: "max_cost = \(fullCost * 10)" + Self.prices)
        let finished = try await runSAELabel(["run", "--config", rerunJob, "--quiet"])
        #expect(finished.status == 0, "\(finished.stderr)")
        let final = try await status(dir.file("job.sqlite"))
        #expect((final["states"] as? [String: Int]) == (fullStatus["states"] as? [String: Int]))
        let llm = try #require(final["llm"] as? [String: Any])
        #expect(llm["prompt_tokens"] as? Int == fullLLM["prompt_tokens"] as? Int
                && llm["completion_tokens"] as? Int == fullLLM["completion_tokens"] as? Int, "\(llm) vs \(fullLLM)")
    }

    @Test func dryRunEstimatesMoneyAndMaxCostNeedsPrices() async throws {
        let dir = TempDirectory()
        let job = try Demo.job(dir, endpoint: "http://127.0.0.1:9/v1", features: "0..4", scorers: Self.sparse, extra: Self.prices)
        let dry = try await runSAELabel(["run", "--config", job, "--dry-run"])
        #expect(dry.status == 0, "\(dry.stderr)")
        #expect(dry.stdout.contains("cost (estimated"), "\(dry.stdout)")

        let unpriced = try Demo.job(dir, endpoint: "http://127.0.0.1:9/v1", features: "0..4", extra: "max_cost = 1.0")
        let refused = try await runSAELabel(["run", "--config", unpriced, "--dry-run"])
        #expect(refused.status == 2 && refused.stderr.contains("[prices.\"mock\"]"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("job.sqlite")))
    }
}
