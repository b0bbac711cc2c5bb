import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport
import Testing

/// Whole jobs through the real binary against mocks that behave as each server documents
/// (Tools/mock_llm_server.py --dialect): every feature is labeled and scored, and no request is refused.
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct ServerDialectTests {
    struct Server: Sendable, CustomTestStringConvertible {
        var dialect: String
        var model: String
        var mockOptions: [String] = []
        var testDescription: String { "\(dialect) / \(model)" }
    }

    static let servers = [
        Server(dialect: "openai", model: "gpt-4.1-mini"),  // classic chat model
        Server(dialect: "openai", model: "gpt-5-mini"),    // reasoning models
        Server(dialect: "openai", model: "o4-mini"),
        Server(dialect: "vllm", model: "Qwen/Qwen2.5-7B-Instruct"),
        Server(dialect: "ollama", model: "llama3.2"),
        Server(dialect: "llama-server", model: "smollm2", mockOptions: ["--slots", "2", "--latency-ms", "5"]),  // -np 2
        Server(dialect: "llama-cpp-python", model: "smollm2"),
    ]

    /// Features that collect did not mark dead or too sparse, i.e. the ones that must get a label.
    func labelable(_ store: JobStore) throws -> [Int] {
        try store.features(in: [.collected, .explained, .scored, .failed, .pending])
    }

    @Test(arguments: servers)
    func everyFeatureIsLabeledAndScoredWithNoRequestRefused(_ server: Server) async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--dialect", server.dialect] + server.mockOptions)
        defer { mock.stop() }
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8",
                               scorers: #"["simulation", "detection", "fuzzing"]"#, model: server.model, server: server.dialect)
        let result = try await runSAELabel(["run", "--config", job, "--quiet"])
        let stats = try await mock.stats()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(stats.refused.isEmpty, "refused: \(stats.refused)")
        #expect(stats.ignored.isEmpty, "fields the server ignores: \(stats.ignored)")
        #expect(stats.byKind["explain", default: 0] > 0 && stats.byKind["simulate", default: 0] > 0
                && stats.byKind["detect", default: 0] > 0, "\(stats.byKind)")

        let store = try JobStore(path: dir.file("job.sqlite"))
        let features = try labelable(store)
        #expect(!features.isEmpty)
        for feature in features {
            #expect(try store.feature(feature)?.state == .scored, "feature \(feature)")
            let explanation = try #require(try store.currentExplanation(feature: feature))
            #expect(explanation.text.hasPrefix("the token"), "feature \(feature): \(explanation.text)")
            let scores = try store.scores(explanation: explanation)
            #expect(Set(scores.map(\.scorer)) == ["simulation", "detection", "fuzzing"])
            // The schema held: no simulated window failed or needed a retry.
            let simulation = try #require(scores.first { $0.scorer == "simulation" })
            let details = try JSONDecoder().decode(SimulationDetails.self, from: Data(simulation.details.utf8))
            #expect(details.failedWindows == 0 && details.retriedWindows == 0, "feature \(feature): \(simulation.details)")
        }
    }

    @Test func explainAndScoreTakeTheServerKindAsAFlag() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--dialect", "openai"])
        defer { mock.stop() }
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..4")
        let collect = try await runSAELabel(["run", "--config", job, "--stage", "collect", "--quiet"])
        #expect(collect.status == 0, "\(collect.stderr)")
        let db = dir.file("job.sqlite")
        let flags = ["--db", db, "--endpoint", mock.baseURL, "--model", "o4-mini", "--server", "openai", "--concurrency", "4"]
        let explain = try await runSAELabel(["explain"] + flags)
        #expect(explain.status == 0, "\(explain.stdout) \(explain.stderr)")
        let score = try await runSAELabel(["score"] + flags + ["--scorer", "simulation", "detection"])
        #expect(score.status == 0, "\(score.stdout) \(score.stderr)")
        let stats = try await mock.stats()
        #expect(stats.refused.isEmpty, "\(stats.refused)")
        #expect(stats.byKind["explain", default: 0] > 0 && stats.byKind["simulate", default: 0] > 0, "\(stats.byKind)")
        let store = try JobStore(path: db)
        for feature in try labelable(store) {
            #expect(try store.feature(feature)?.state == .scored, "feature \(feature)")
        }
    }

    @Test func theLogprobSimulatorRunsOnVLLM() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--dialect", "vllm"])
        defer { mock.stop() }
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..6", model: "Qwen/Qwen2.5-7B-Instruct",
                               server: "vllm")
        let text = try String(contentsOfFile: job, encoding: .utf8)
            .replacingOccurrences(of: #"scorers = ["simulation"]"#, with: "scorers = [\"simulation\"]\nmode = \"logprobs\"")
        try Data(text.utf8).write(to: URL(fileURLWithPath: job))
        let result = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        let stats = try await mock.stats()
        #expect(stats.refused.isEmpty && stats.ignored.isEmpty, "\(stats.refused) \(stats.ignored)")
        #expect(stats.byKind["logprobs", default: 0] > 0 && stats.byKind["simulate", default: 0] == 0, "\(stats.byKind)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        for feature in try labelable(store) {
            #expect(try store.feature(feature)?.state == .scored, "feature \(feature)")
        }
    }

    @Test func theLogprobSimulatorRefusesServersWithoutPromptLogprobsBeforeAnyCall() async throws {
        let mock = try await MockLLMServer.start(["--dialect", "openai"])
        defer { mock.stop() }
        for server in ["openai", "ollama", "llama-server"] {
            let dir = TempDirectory()
            let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..4", model: "gpt-4.1-mini", server: server)
            let text = try String(contentsOfFile: job, encoding: .utf8)
                .replacingOccurrences(of: #"scorers = ["simulation"]"#, with: "scorers = [\"simulation\"]\nmode = \"logprobs\"")
            try Data(text.utf8).write(to: URL(fileURLWithPath: job))
            let run = try await runSAELabel(["run", "--config", job])
            #expect(run.status == 2, "\(server): \(run.stderr)")
            #expect(run.stderr.split(separator: "\n").count == 1, "\(server): \(run.stderr)")
            #expect(run.stderr.contains("vllm") && run.stderr.contains("llama-cpp-python") && run.stderr.contains(server))
            #expect(!FileManager.default.fileExists(atPath: dir.file("job.sqlite")), "nothing written")

            let score = try await runSAELabel(["score", "--db", dir.file("s.sqlite"), "--endpoint", mock.baseURL,
                                               "--model", "m", "--server", server, "--simulator", "logprobs"])
            #expect(score.status == 2, "\(server): \(score.stderr)")
            #expect(score.stderr.split(separator: "\n").count == 1)
            #expect(!FileManager.default.fileExists(atPath: dir.file("s.sqlite")), "nothing written")
        }
        #expect(try await mock.stats().requests == 0)
        let unknown = try await runSAELabel(["score", "--db", "/nonexistent/x.sqlite", "--endpoint", mock.baseURL,
                                             "--model", "m", "--server", "lmstudio"])
        #expect(unknown.status == 2 && unknown.stderr.contains("lmstudio"), "\(unknown.stderr)")
    }

    @Test func speakingOpenAIToLlamaCppPythonFailsWithAHint() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--dialect", "llama-cpp-python"])
        defer { mock.stop() }
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..2", retries: 0, model: "smollm2")
        let result = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(result.status == 1, "\(result.stderr)")
        let status = try await runSAELabel(["status", "--db", dir.file("job.sqlite")])
        // The failure reason tells the user which setting fixes it.
        #expect(status.stdout.contains("llama-cpp-python"), "\(status.stdout)")
    }
}
