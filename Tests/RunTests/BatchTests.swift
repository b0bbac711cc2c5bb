import Foundation
@testable import SAELabelRun
import SAELabelStore
import TestSupport
import Testing

/// Batch mode through the real binary against the mock's Batch API (/v1/files, /v1/batches).
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct BatchTests {
    static let features = "0..8"

    func labelable(_ store: JobStore) throws -> [Int] {
        try store.features(in: [.collected, .explained, .scored, .failed, .pending])
    }

    /// The same labels as a synchronous run: every labelable feature scored with one explanation.
    func expectEveryFeatureScored(_ path: String) throws {
        let store = try JobStore(path: path)
        let features = try labelable(store)
        #expect(!features.isEmpty)
        for feature in features {
            #expect(try store.feature(feature)?.state == .scored, "feature \(feature)")
            let explanation = try #require(try store.currentExplanation(feature: feature))
            #expect(try store.scores(explanation: explanation).map(\.scorer) == ["simulation"])
        }
    }

    @Test func aRunKilledWhileWaitingResumesPollingAndSubmitsNothingTwice() async throws {
        let dir = TempDirectory()
        // A batch takes 20 s: the kill must land while the first one is still running, and under a loaded
        // parallel test run noticing the first poll has taken longer than 6 s.
        let mock = try await MockLLMServer.start(["--batch-delay", "20"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: Self.features, extra: "batch_poll_seconds = 0.2", batch: true)
        let process = try startSAELabel(["run", "--config", job, "--quiet"])
        // Kill once the first batch is recorded and being polled (the poll follows the store write).
        var polled = false
        for _ in 0..<1200 where !polled {
            try await Task.sleep(nanoseconds: 50_000_000)
            polled = try await mock.stats().batchPolls > 0
        }
        #expect(polled, "the run never polled a batch")
        #expect(process.isRunning, "the run finished before the 20 s batch could have")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let before = try await mock.stats()
        #expect(before.batchesCreated == 1)

        let resumed = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let after = try await mock.stats()
        // Explain, then simulation: two batches in all, one upload each, and not one request line twice.
        #expect(after.batchesCreated == 2)
        #expect(after.uploads == after.batchesCreated)
        #expect(after.batchCustomIDs == after.batchCustomIDsDistinct)
        #expect(after.requests == 0, "every work request went through a batch")
        try expectEveryFeatureScored(dir.file("job.sqlite"))
    }

    @Test func noWaitSubmitsAndExitsThreeAndLaterRunsCollect() async throws {
        let dir = TempDirectory()
        // OpenAI's strict dialect (every batch line's body is checked as the synchronous endpoint checks it) and a key.
        let mock = try await MockLLMServer.start(["--dialect", "openai", "--api-key", "batch-key"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: Self.features, model: "gpt-4.1-mini", batch: true)
        let key = ["OPENAI_API_KEY": "batch-key"]
        let first = try await runSAELabel(["run", "--config", job, "--quiet", "--no-wait"], environment: key)
        #expect(first.status == 4, "\(first.stderr)")
        #expect(first.stdout.contains("still running"))
        #expect(try await mock.stats().batchesCreated == 1)
        var runs = 1
        var last = first
        while last.status == 4 && runs < 8 {
            last = try await runSAELabel(["run", "--config", job, "--quiet", "--no-wait"], environment: key)
            runs += 1
        }
        #expect(last.status == 0, "\(last.stderr)")
        let stats = try await mock.stats()
        #expect(stats.requests == 0)
        #expect(stats.refused.isEmpty, "\(stats.refused)")
        #expect(stats.batchCustomIDs == stats.batchCustomIDsDistinct)
        try expectEveryFeatureScored(dir.file("job.sqlite"))
    }

    /// Both chat simulators queue every held-out window of a feature in the same round, so all simulation
    /// requests go out in one batch (one round per window would make a batch per window).
    @Test(arguments: ["json", "sparse"]) func eachChatSimulatorBatchesEveryWindowInOneRound(mode: String) async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: Self.features, scorers: "[\"simulation\"]\nmode = \"\(mode)\"",
                               extra: "batch_poll_seconds = 0.1", batch: true)
        let result = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        let stats = try await mock.stats()
        #expect(stats.batchesCreated == 2, "one explain batch, one simulation batch")
        #expect(stats.requests == 0, "every work request went through a batch")
        try expectEveryFeatureScored(dir.file("job.sqlite"))
    }

    @Test func expiredAndPartlyFailedBatchesEndWithEveryFeatureLabeled() async throws {
        let dir = TempDirectory()
        // Batches expire after answering half their lines; of those, every 3rd fails and every 5th is missing.
        let mock = try await MockLLMServer.start(["--batch-expire", "--batch-fail-every", "3", "--batch-drop-every", "5"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: Self.features, extra: "batch_poll_seconds = 0.1", batch: true)
        let result = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        let stats = try await mock.stats()
        #expect(stats.requests > 0, "failed and unanswered lines went out synchronously")
        #expect(stats.batchCustomIDs == stats.batchCustomIDsDistinct, "no line was batched twice")
        try expectEveryFeatureScored(dir.file("job.sqlite"))
        // The store knows which lines failed and why.
        let store = try JobStore(path: dir.file("job.sqlite"))
        #expect(try store.batchRequestCounts()["failed", default: 0] > 0)
    }

    @Test func exportRunBatchImportLabelsWithoutAServer() async throws {
        let dir = TempDirectory()
        let answering = try await MockLLMServer.start(["--dialect", "vllm"])
        // The job names a vLLM server that is not running: offline batch stages need none.
        let job = try Demo.job(dir, endpoint: "http://127.0.0.1:9/v1", features: Self.features, server: "vllm", batch: true)
        let db = dir.file("job.sqlite")
        var run = try await runSAELabel(["run", "--config", job, "--quiet"])
        var rounds = 0
        while run.status == 4 && rounds < 6 {
            #expect(run.stdout.contains("batch export"))
            rounds += 1
            var exported = 0
            for stage in ["explain", "score"] {
                let requests = dir.file("requests-\(rounds)-\(stage).jsonl")
                let results = dir.file("results-\(rounds)-\(stage).jsonl")
                let export = try await runSAELabel(["batch", "export", "--db", db, "--stage", stage, "--out", requests])
                #expect(export.status == 0, "\(export.stderr)")
                let lines = try String(contentsOfFile: requests, encoding: .utf8).split(separator: "\n")
                guard !lines.isEmpty else { continue }
                exported += lines.count
                let standIn = try await runProcess("/usr/bin/env", ["python3", Repository.root.appendingPathComponent("Tools/run_batch_standin.py").path,
                                                                    "-i", requests, "-o", results, "--server", answering.root])
                #expect(standIn.status == 0, "\(standIn.stderr)")
                let imported = try await runSAELabel(["batch", "import", "--db", db, results])
                #expect(imported.status == 0, "\(imported.stderr)")
                #expect(imported.stdout.contains("imported \(lines.count) answers"), "\(imported.stdout)")
            }
            #expect(exported > 0, "a run that exits 4 left requests to export")
            run = try await runSAELabel(["run", "--config", job, "--quiet"])
        }
        #expect(run.status == 0, "\(run.stderr)")
        #expect(rounds >= 2, "explain, then score")
        try expectEveryFeatureScored(db)
    }

    @Test func importRefusesAFileWithoutBatchLines() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..2")
        _ = try await runSAELabel(["run", "--config", job, "--quiet", "--stage", "collect"])
        let bad = try dir.write("bad.jsonl", "{\"not\": \"a batch line\"}\n")
        let result = try await runSAELabel(["batch", "import", "--db", dir.file("job.sqlite"), bad])
        #expect(result.status == 2)
        #expect(result.stderr.contains("no batch output lines"))
    }

    @Test func requestFilesAreSplitByLinesAndBytesOneEndpointEach() throws {
        let body = Data(#"{"model":"m","messages":[]}"#.utf8)
        let chat = (0..<5).map { BatchRequestRecord(key: "k\($0)", stage: "score", path: "/chat/completions", body: body) }
        let completion = BatchRequestRecord(key: "c", stage: "score", path: "/completions", body: body)
        let byLines = BatchMode.files(chat + [completion], maxLines: 2, maxBytes: 1 << 20)
        #expect(byLines.map(\.keys) == [["k0", "k1"], ["k2", "k3"], ["k4"], ["c"]])
        let oneLine = BatchMode.inputLine(chat[0]).count
        let byBytes = BatchMode.files(chat, maxLines: 100, maxBytes: 2 * oneLine + 1)
        #expect(byBytes.map(\.keys.count) == [2, 2, 1])
        #expect(byBytes.allSatisfy { $0.data.count <= 2 * oneLine + 1 })
        // Each line is what OpenAI's Batch API and vLLM's run_batch read.
        let line = try #require(try JSONSerialization.jsonObject(with: BatchMode.inputLine(chat[0])) as? [String: Any])
        #expect(line["custom_id"] as? String == "k0")
        #expect(line["method"] as? String == "POST")
        #expect(line["url"] as? String == "/v1/chat/completions")
        #expect((line["body"] as? [String: Any])?["model"] as? String == "m")
    }
}
