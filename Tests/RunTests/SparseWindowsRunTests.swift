import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport
import Testing

/// The several-window sparse simulator (the default) through the real binary against the mock:
/// the same scores as a request per window, in each server dialect; a failure is a failure; and
/// nothing is paid twice.
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct SparseWindowsRunTests {
    static let features = "0..8"

    /// Every scored feature's simulation score and details, by feature.
    func simulation(_ db: String) throws -> [Int: StoredScore] {
        let store = try JobStore(path: db)
        var scores: [Int: StoredScore] = [:]
        for feature in try store.features(in: [.scored]) {
            let explanation = try #require(try store.currentExplanation(feature: feature))
            scores[feature] = try store.scores(explanation: explanation).first { $0.scorer == "simulation" }
        }
        return scores
    }

    func details(_ score: StoredScore?) throws -> SimulationDetails {
        try JSONDecoder().decode(SimulationDetails.self, from: Data(try #require(score).details.utf8))
    }

    /// The mock answers both shapes with the same active tokens, so the scores must be equal; the
    /// default sends one simulation request per feature instead of one per held-out window, and the
    /// strict OpenAI dialect and llama-cpp-python's accept every request.
    @Test(arguments: ["llama-cpp-python", "openai"])
    func severalWindowsARequestScoreAsOneWindowARequest(_ dialect: String) async throws {
        let mock = try await MockLLMServer.start(["--dialect", dialect])
        defer { mock.stop() }
        let model = dialect == "openai" ? "gpt-4.1-mini" : "smollm2"
        var scores: [String: [Int: StoredScore]] = [:]
        var simulateRequests: [String: Int] = [:]
        var windows = 0
        for (name, scorers) in [("one", "[\"simulation\"]\nwindows_per_request = 1"), ("several", "[\"simulation\"]")] {
            let dir = TempDirectory()
            let job = try Demo.job(dir, endpoint: mock.baseURL, features: Self.features, scorers: scorers, model: model, server: dialect)
            let before = try await mock.stats().byKind["simulate", default: 0]
            let result = try await runSAELabel(["run", "--config", job, "--quiet"])
            #expect(result.status == 0, "\(name): \(result.stderr)")
            simulateRequests[name] = try await mock.stats().byKind["simulate", default: 0] - before
            scores[name] = try simulation(dir.file("job.sqlite"))
            if name == "one" {
                windows = try scores[name, default: [:]].values.reduce(0) { $0 + (try details($1).windows.count) }
            }
        }
        #expect(try await mock.stats().refused.isEmpty)
        let one = scores["one", default: [:]], several = scores["several", default: [:]]
        #expect(one.count >= 5 && Set(one.keys) == Set(several.keys))
        for (feature, score) in one {
            #expect(score.value == several[feature]?.value, "feature \(feature)")
            #expect(try details(score).windows == (try details(several[feature])).windows, "feature \(feature)")
            #expect(score.promptHash != several[feature]?.promptHash)
        }
        #expect(simulateRequests["one"] == windows && windows > one.count)
        #expect(simulateRequests["several"] == several.count)
    }

    /// Every answer one window short (positions mean nothing): the retry is short too, so every feature fails
    /// with the reason (exit 1, no score stored). The next run asks again (the bad answers were
    /// forgotten) and scores them all; a run after that sends nothing.
    @Test func aWindowMissingAfterTheRetryFailsTheFeatureAndTheNextRunScoresIt() async throws {
        let mock = try await MockLLMServer.start(["--dialect", "openai"])
        defer { mock.stop() }
        let dir = TempDirectory()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: Self.features, model: "gpt-4.1-mini", server: "openai")
        for stage in ["collect", "explain"] {
            let result = try await runSAELabel(["run", "--config", job, "--quiet", "--stage", stage])
            #expect(result.status == 0, "\(stage): \(result.stderr)")
        }
        #expect(try await mock.stats().byKind["explain", default: 0] >= 5)

        try await mock.script(Array(repeating: "wrong_length", count: 200))
        let failing = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(failing.status == 1, "\(failing.stdout)\n\(failing.stderr)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        let failed = try store.features(in: [.failed])
        #expect(failed.count >= 5)
        for feature in failed {
            let reason = try #require(try store.feature(feature)?.failureReason)
            #expect(reason.contains("unusable after the retry") && reason.contains("windows but") && reason.contains("were asked, in order"), "\(reason)")
            #expect(try store.currentExplanation(feature: feature).map { try store.scores(explanation: $0) }?.isEmpty == true)
        }
        #expect(try await mock.stats().byKind["simulate"] == 2 * failed.count, "a first request and one retry per feature")

        try await mock.script([])
        let before = try await mock.stats()
        let again = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(again.status == 0, "\(again.stderr)")
        let after = try await mock.stats()
        #expect(after.byKind["simulate", default: 0] - before.byKind["simulate", default: 0] == failed.count)
        #expect(try simulation(dir.file("job.sqlite")).count == failed.count)

        let resumed = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try await mock.stats().requests == after.requests, "a finished run pays for nothing again")
    }

    @Test func windowsPerRequestIsCheckedAndPlannedByDryRun() async throws {
        let dir = TempDirectory()
        for (setting, problem) in [("windows_per_request = 0", "must be > 0"),
                                   ("mode = \"json\"\nwindows_per_request = 4", "applies to mode = \"sparse\" only")] {
            let job = try Demo.job(dir, endpoint: "http://127.0.0.1:9/v1", features: "0..2", scorers: "[\"simulation\"]\n\(setting)")
            let result = try await runSAELabel(["run", "--config", job, "--dry-run"])
            #expect(result.status == 2 && result.stderr.contains("windows_per_request") && result.stderr.contains(problem), "\(result.stderr)")
        }
        // Five held-out windows a feature: one request each by default, three with two windows a request.
        for (setting, calls) in [("", 1), ("windows_per_request = 2", 3)] {
            let job = try Demo.job(dir, endpoint: "http://127.0.0.1:9/v1", features: "0..1", scorers: "[\"simulation\"]\n\(setting)")
            let result = try await runSAELabel(["run", "--config", job, "--dry-run"])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.contains("+ \(calls) score"), "\(result.stdout)")
        }
    }
}
