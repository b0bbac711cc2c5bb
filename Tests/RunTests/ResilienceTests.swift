import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport
import Testing

/// The nightly-job guarantees, exercised on the real binary, the real demo data and the mock server
/// over 127.0.0.1: kill -9 at random moments, injected faults, shards merged.
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct ResilienceTests {
    /// Features that collect did not mark dead or too sparse, i.e. the ones that must get a label.
    func labelable(_ store: JobStore) throws -> [Int] {
        try store.features(in: [.collected, .explained, .scored, .failed, .pending])
    }

    @Test func killNineAtRandomMomentsLosesNothingAndPaysAtMostTheCallsInFlight() async throws {
        let concurrency = 4
        // What one uninterrupted run needs.
        let reference = TempDirectory()
        let referenceMock = try await MockLLMServer.start(["--latency-ms", "60"])
        let referenceJob = try Demo.job(reference, endpoint: referenceMock.baseURL, features: "0..16", concurrency: concurrency)
        let clean = try await runSAELabel(["run", "--config", referenceJob, "--quiet"])
        #expect(clean.status == 0, "\(clean.stderr)")
        let need = try await referenceMock.stats().requests
        #expect(need > 0)

        let dir = TempDirectory()
        // Slow answers keep every one of the 24 runs busy past its random kill moment, however quiet the machine
        // (multi-window simulation needs only about two requests a feature, so fast answers ended the job early).
        let mock = try await MockLLMServer.start(["--latency-ms", "1000"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..16", concurrency: concurrency)
        var generator = SplitMix64(state: 20261125)
        var kills = 0
        for _ in 0..<24 {
            let process = try startSAELabel(["run", "--config", job, "--quiet"])
            let delay = Double.random(in: 0.05...1.2, using: &generator)
            try await Task.sleep(nanoseconds: UInt64(delay * 1e9))
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                kills += 1
            }
            process.waitUntilExit()
        }
        #expect(kills >= 20, "the job finished too quickly to be killed 20 times (\(kills))")
        let final = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(final.status == 0, "\(final.stderr)")

        let store = try JobStore(path: dir.file("job.sqlite"))
        let features = try labelable(store)
        #expect(!features.isEmpty)
        for feature in features {
            #expect(try store.feature(feature)?.state == .scored, "feature \(feature)")
            #expect(try store.explanations(feature: feature).count == 1, "feature \(feature) has one explanation")
            let explanation = try #require(try store.currentExplanation(feature: feature))
            #expect(try store.scores(explanation: explanation).map(\.scorer) == ["simulation"])
        }
        // Each of the client's `concurrency` permits is held from sending a request until its answer is stored, so
        // a kill loses at most `concurrency` paid answers; failed attempts are repeated by retries.
        let made = try await mock.stats().requests
        let paid = try await PaidCalls.read(store: dir.file("job.sqlite"))
        #expect(paid.answeredTwice.isEmpty, "paid twice for answers the store held: \(paid.answeredTwice)")
        #expect(made >= need)
        #expect(made <= need + kills * concurrency + paid.failedAttempts,
                "made \(made) calls for a need of \(need) with \(kills) kills and \(paid.failedAttempts) failed attempts")
        // The same labels as the uninterrupted run.
        let referenceStore = try JobStore(path: reference.file("job.sqlite"))
        for feature in features {
            #expect(try store.currentExplanation(feature: feature)?.text == referenceStore.currentExplanation(feature: feature)?.text)
        }
    }

    @Test func injectedFaultsStillLabelNearlyEverything() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--latency-ms", "10", "--fault-rate-500", "0.10", "--fault-rate-429", "0.05",
                                "--fault-rate-malformed", "0.02", "--fault-rate-hang", "0.01", "--hang-seconds", "8", "--seed", "7"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..48", concurrency: 8, retries: 5)
        let result = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(result.status == 0 || result.status == 1, "\(result.stderr)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        let features = try labelable(store)
        let scored = try store.features(in: [.scored])
        #expect(Double(scored.count) >= 0.99 * Double(features.count), "\(scored.count) of \(features.count) labeled")
        for failure in try store.status().failures {
            #expect(!failure.reason.isEmpty)
        }
        #expect(result.status == (scored.count == features.count ? 0 : 1))
    }

    @Test func fourShardsMergedEqualOneRun() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--latency-ms", "5"])
        let whole = try Demo.job(dir, endpoint: mock.baseURL, features: "0..20", store: "whole.sqlite")
        #expect(try await runSAELabel(["run", "--config", whole, "--quiet"]).status == 0)
        var shards: [String] = []
        for index in 0..<4 {
            let shardDir = TempDirectory()
            let job = try Demo.job(shardDir, endpoint: mock.baseURL, features: "0..20", store: "shard.sqlite")
            let result = try await runSAELabel(["run", "--config", job, "--shard", "\(index)/4", "--quiet"])
            #expect(result.status == 0, "\(result.stderr)")
            let path = dir.file("shard-\(index).sqlite")
            try FileManager.default.copyItem(atPath: shardDir.file("shard.sqlite"), toPath: path)
            shards.append(path)
        }
        let merge = try await runSAELabel(["merge", "--into", dir.file("merged.sqlite")] + shards)
        #expect(merge.status == 0, "\(merge.stderr)")
        for name in ["whole", "merged"] {
            let export = try await runSAELabel(["export", "--db", dir.file("\(name).sqlite"), "--format", "catalog", "--out", dir.file("\(name).jsonl")])
            #expect(export.status == 0, "\(export.stderr)")
        }
        let whole1 = try readCatalog(dir.file("whole.jsonl"))
        let merged = try readCatalog(dir.file("merged.jsonl"))
        #expect(whole1.count == 20)
        #expect(merged.count == whole1.count)
        for (a, b) in zip(whole1, merged) {
            // Labels, states and examples are identical. Statistics and scores may differ in the last float
            // bits: each shard multiplies only its own W_enc columns, and OpenBLAS's Haswell kernels (which
            // `make test` runs on) give a row last bits that depend on the GEMM's row count.
            let differences = catalogDifferences(a, b, path: "feature \(a["feature"] ?? "?")")
            #expect(differences.isEmpty, "\(differences.prefix(5))")
            #expect(a["explanation"] as? String == b["explanation"] as? String)
        }
    }

    @Test func theAPIKeyIsSentButNeverWrittenAnywhere() async throws {
        let dir = TempDirectory()
        let secret = "sk-test-\(UUID().uuidString)"
        let mock = try await MockLLMServer.start(["--latency-ms", "5", "--fault-rate-500", "0.2", "--seed", "3"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..6", extra: "")
        // Point both LLM sections at a custom variable.
        var text = try String(contentsOfFile: job, encoding: .utf8)
        text = text.replacingOccurrences(of: "model = \"mock\"", with: "model = \"mock\"\napi_key_env = \"SAELABEL_TEST_SECRET\"")
        text += "\n[export]\ncatalog = \"\(dir.file("catalog.jsonl"))\"\ncsv = \"\(dir.file("catalog.csv"))\"\nhtml = \"\(dir.file("html"))\"\n"
        try Data(text.utf8).write(to: URL(fileURLWithPath: job))
        let result = try await runSAELabel(["run", "--config", job], environment: ["SAELABEL_TEST_SECRET": secret])
        #expect(result.status == 0 || result.status == 1)
        #expect(try await mock.stats().authSeen.contains("Bearer \(secret)"), "the key was sent")
        #expect(!result.stdout.contains(secret) && !result.stderr.contains(secret))
        let enumerator = FileManager.default.enumerator(atPath: dir.url.path)
        var checked = 0
        while let name = enumerator?.nextObject() as? String {
            let path = dir.file(name)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            #expect(data.range(of: Data(secret.utf8)) == nil, "\(name) holds the key")
            checked += 1
        }
        #expect(checked >= 4)
    }
}

/// The real local LLM (llama.cpp server with SmolLM2, started by `make test`) labels real features.
@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["SAELABEL_LLM_ENDPOINT"] != nil && Demo.available,
                             "set SAELABEL_LLM_ENDPOINT (make test starts the server)"))
struct RealLLMTests {
    @Test func everyFeatureGetsALabelAScoreAndSimulatedValues() async throws {
        let endpoint = ProcessInfo.processInfo.environment["SAELABEL_LLM_ENDPOINT"]!
        let model = ProcessInfo.processInfo.environment["SAELABEL_LLM_MODEL"] ?? "smollm2"
        // make test's server is llama-cpp-python; SAELABEL_LLM_SERVER names another kind.
        let server = ProcessInfo.processInfo.environment["SAELABEL_LLM_SERVER"] ?? "llama-cpp-python"
        let dir = TempDirectory()
        var job = try Demo.job(dir, endpoint: endpoint, features: "0..4", concurrency: 1, model: model, server: server)
        var text = try String(contentsOfFile: job, encoding: .utf8)
        text = text.replacingOccurrences(of: "heldout_top = 2", with: "heldout_top = 1")
            .replacingOccurrences(of: "heldout_random = 2", with: "heldout_random = 1")
            .replacingOccurrences(of: "timeout_seconds = 5", with: "timeout_seconds = 180")
            .replacingOccurrences(of: "[explainer]\n", with: "[explainer]\nstyle = \"highlighted\"\n")
        job = try dir.write("job.toml", text)
        // A second run retries whatever the tiny model fumbled the first time (resume).
        var result = try await runSAELabel(["run", "--config", job, "--quiet"])
        if result.status == 1 { result = try await runSAELabel(["run", "--config", job, "--quiet"]) }
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let export = try await runSAELabel(["export", "--db", dir.file("job.sqlite"), "--format", "catalog", "--out", dir.file("catalog.jsonl")])
        #expect(export.status == 0)
        let catalog = try readCatalog(dir.file("catalog.jsonl"))
        let labeled = catalog.filter { ($0["status"] as? String) != "dead" && ($0["status"] as? String) != "sparse" }
        #expect(!labeled.isEmpty)
        for entry in labeled {
            #expect(entry["status"] as? String == "scored")
            #expect(!((entry["explanation"] as? String) ?? "").isEmpty)
            let scores = entry["scores"] as? [String: Any] ?? [:]
            #expect(scores["simulation"] is Double)
            let heldout = (entry["examples"] as? [String: Any])?["heldout"] as? [[String: Any]] ?? []
            #expect(!heldout.isEmpty)
            for window in heldout {
                let tokens = window["tokens"] as? [Any] ?? []
                let simulated = window["simulated"] as? [Any]
                #expect(simulated?.count == tokens.count, "simulated values stored for every held-out token")
            }
        }
        print("real LLM labels:\n" + labeled.map { "  \($0["feature"] ?? "?"): \($0["explanation"] ?? "") (simulation \((($0["scores"] as? [String: Any])?["simulation"]) ?? "nil"))" }.joined(separator: "\n"))
    }
}
