import Foundation
import SAELabelCore
@testable import SAELabelRun
import SAELabelStore
import TestSupport
import Testing

/// Issue 11 on the real binary: exports never destroy what the user has, a failure is never a score,
/// exit codes follow CONTRACT.md, endpoints are checked before any work, passes behave as documented.
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct SafetyTests {
    /// Lines a command wrote to stderr.
    func stderrLines(_ result: ProcessResult) -> [Substring] {
        result.stderr.split(separator: "\n", omittingEmptySubsequences: true)
    }

    /// A store with the demo's features collected (no LLM needed).
    func collectedStore(_ dir: TempDirectory, features: String = "0..4", endpoint: String = "http://127.0.0.1:9/v1",
                        extra: String = "") async throws -> String {
        let job = try Demo.job(dir, endpoint: endpoint, features: features, extra: extra)
        let result = try await runSAELabel(["run", "--config", job, "--stage", "collect", "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        return job
    }

    func listing(_ path: String) -> [String] {
        ((try? FileManager.default.subpathsOfDirectory(atPath: path)) ?? []).sorted()
    }

    /// A user who copies `job.sqlite` alone after a command (the nightly job's backup, an scp to another
    /// machine) must copy everything: no committed row may be left behind in SQLite's `-wal` file.
    @Test func theStoreFileAloneHoldsEverythingOnceACommandHasExited() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8")
        let db = dir.file("job.sqlite")
        let copyDir = TempDirectory()
        let copy = copyDir.file("job.sqlite")
        let commands: [[String]] = [
            ["run", "--config", job, "--stage", "collect", "--quiet"],
            ["run", "--config", job, "--quiet"],
            ["status", "--db", db],
            ["export", "--db", db, "--format", "catalog", "--out", dir.file("catalog.jsonl")],
        ]
        for command in commands {
            let result = try await runSAELabel(command)
            #expect(result.status == 0, "\(command): \(result.stderr)")
            let log = (try? FileManager.default.attributesOfItem(atPath: db + "-wal")[.size] as? Int) ?? 0
            #expect(log == 0, "\(command[0]) left \(log) bytes in job.sqlite-wal")
        }
        try FileManager.default.copyItem(atPath: db, toPath: copy)
        let fromCopy = try await runSAELabel(["export", "--db", copy, "--format", "catalog", "--out", "-"])
        #expect(fromCopy.status == 0, "\(fromCopy.stderr)")
        let labeled = try fromCopy.stdout.split(separator: "\n").filter { line in
            let entry = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return !((entry?["explanation"] as? String) ?? "").isEmpty
        }
        #expect(!labeled.isEmpty, "the copied store holds no label")
        #expect(fromCopy.stdout == (try String(contentsOfFile: dir.file("catalog.jsonl"), encoding: .utf8)))
    }

    @Test func exportsAimedAtTheStoreOrAUsersFolderRefuseAndDestroyNothing() async throws {
        let dir = TempDirectory()
        _ = try await collectedStore(dir)
        let db = dir.file("job.sqlite")
        let note = try dir.write("notes.txt", "mine")
        // Whether the collect process's last connection checkpointed SQLite's -wal/-shm away before it exited is
        // timing (its writer thread may still hold the store at exit); open and close the store once so the
        // listing below compares only what the exports do.
        _ = try JobStore(path: db).features(in: [.collected])
        let before = listing(dir.path)

        for format in ["html", "neuronpedia"] {
            let result = try await runSAELabel(["export", "--db", db, "--format", format, "--out", dir.path])
            #expect(result.status == 2, "\(format): \(result.stdout) \(result.stderr)")
            #expect(stderrLines(result).count == 1, "\(result.stderr)")
        }
        for (format, path) in [("catalog", db), ("csv", Demo.folder.appendingPathComponent("tokenizer.json").path),
                               ("html", Demo.folder.path)] {
            let result = try await runSAELabel(["export", "--db", db, "--format", format, "--out", path])
            #expect(result.status == 2, "\(format) → \(path): \(result.stderr)")
            #expect(stderrLines(result).count == 1)
        }
        // A folder holding a user's file is not ours to replace.
        let mine = try dir.write("site/mine.txt", "keep me")
        let refused = try await runSAELabel(["export", "--db", db, "--format", "html", "--out", dir.file("site")])
        #expect(refused.status == 2)
        #expect(try String(contentsOfFile: mine, encoding: .utf8) == "keep me")

        // Our own export is recognized and replaced; a file a user added to it is not thrown away.
        let fresh = dir.file("fresh")
        for _ in 0..<2 {
            let result = try await runSAELabel(["export", "--db", db, "--format", "html", "--out", fresh])
            #expect(result.status == 0, "\(result.stderr)")
        }
        #expect(FileManager.default.fileExists(atPath: fresh + "/index.html"))
        #expect(FileManager.default.fileExists(atPath: fresh + "/.saelabel-export.json"))
        let added = try dir.write("fresh/added.txt", "user data")
        let again = try await runSAELabel(["export", "--db", db, "--format", "html", "--out", fresh])
        #expect(again.status == 2)
        #expect(try String(contentsOfFile: added, encoding: .utf8) == "user data")
        let neuronpedia = try await runSAELabel(["export", "--db", db, "--format", "neuronpedia", "--out", fresh])
        #expect(neuronpedia.status == 2, "an html export is not a neuronpedia one")

        // The store and the user's file survived everything, and nothing was left behind.
        #expect(try String(contentsOfFile: note, encoding: .utf8) == "mine")
        #expect(try JobStore(path: db).features(in: [.collected, .dead, .sparse]).count == 4)
        let after = listing(dir.path).filter { !$0.hasPrefix("fresh") && !$0.hasPrefix("site") }
        #expect(after == before, "\(Set(after).symmetricDifference(before))")
        #expect(!after.contains { $0.contains(".tmp") })
    }

    @Test func jobFileExportIntoTheStoreFolderStopsBeforeAnythingRuns() async throws {
        let dir = TempDirectory()
        let job = try Demo.job(dir, endpoint: "http://127.0.0.1:9/v1", features: "0..4",
                               extra: "\n[export]\nhtml = \"\(dir.path)\"\n")
        for arguments in [["run", "--config", job, "--stage", "collect", "--dry-run"], ["run", "--config", job, "--stage", "collect"]] {
            let result = try await runSAELabel(arguments)
            #expect(result.status == 2, "\(arguments): \(result.stdout) \(result.stderr)")
            #expect(stderrLines(result).count == 1)
            #expect(result.stderr.contains("[export] html"))
        }
        #expect(!FileManager.default.fileExists(atPath: dir.file("job.sqlite")), "nothing was written")
        #expect(FileManager.default.fileExists(atPath: job))
    }

    @Test func relativeNamesStandardOutputAndDevicesWork() async throws {
        let dir = TempDirectory()
        _ = try await collectedStore(dir)
        let db = dir.file("job.sqlite")

        let relative = try await runProcess(SAELabelBinary.path, ["export", "--db", db, "--format", "csv", "--out", "x"],
                                            currentDirectory: dir.path)
        #expect(relative.status == 0, "\(relative.stderr)")
        let csv = try String(contentsOfFile: dir.file("x"), encoding: .utf8)
        #expect(csv.hasPrefix("feature,status,label,simulation,detection,fuzzing,frequency,max_activation,explainer_model,failure_reason,sae,hook,carried_from_feature,carried_cosine,carried_previous_score\r\n"))
        #expect(csv.split(separator: "\r\n").count == 5)

        let stdout = try await runSAELabel(["export", "--db", db, "--format", "catalog", "--out", "-"])
        #expect(stdout.status == 0, "\(stdout.stderr)")
        let lines = stdout.stdout.split(separator: "\n")
        #expect(lines.count == 4)
        for line in lines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["feature"] is Int)
        }
        #expect(stdout.stderr.contains("exported 4 features"))

        let device = try await runSAELabel(["export", "--db", db, "--format", "csv", "--out", "/dev/stdout"])
        #expect(device.status == 0, "\(device.stderr)")
        #expect(device.stdout.hasPrefix("feature,status,"))
        let type = try FileManager.default.attributesOfItem(atPath: "/dev/stdout")[.type] as? FileAttributeType
        #expect(type == .typeSymbolicLink, "/dev/stdout is still a symlink")

        // A FIFO is written through and stays a FIFO.
        let fifo = dir.file("pipe")
        #expect(mkfifo(fifo, 0o600) == 0)
        async let reader = runProcess("/bin/cat", [fifo])
        let toFifo = try await runSAELabel(["export", "--db", db, "--format", "csv", "--out", fifo])
        #expect(toFifo.status == 0, "\(toFifo.stderr)")
        #expect(try await reader.stdout.hasPrefix("feature,status,"))
        #expect(try await runProcess("/usr/bin/test", ["-p", fifo]).status == 0, "still a FIFO")

        // Failed exports leave nothing behind and say why on one line.
        let before = listing(dir.path)
        for arguments in [["--format", "html", "--out", dir.file("x")], ["--format", "html", "--out", "-"],
                          ["--format", "csv", "--out", dir.file("y"), "--pass", "nosuchpass"]] {
            let result = try await runSAELabel(["export", "--db", db] + arguments)
            #expect(result.status == 2, "\(arguments): \(result.stderr)")
            #expect(stderrLines(result).count == 1)
        }
        #expect(listing(dir.path) == before)
    }

    @Test func anAllUnusableSimulatorGivesNullScoresFailedFeaturesAndExitOneThenRetries() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..4", retries: 0)
        try await mock.script(Array(repeating: "wrong_length", count: 500))
        let first = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(first.status == 1, "\(first.stdout)\n\(first.stderr)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        let labelable = try store.features(in: [.collected, .explained, .scored, .failed])
        #expect(!labelable.isEmpty)
        #expect(try store.features(in: [.failed]) == labelable)
        // One stderr line per cause, not per attempt.
        #expect(stderrLines(first).count == 1, "\(first.stderr)")
        #expect(first.stderr.contains("held-out windows unusable after the retry"))

        let catalog = dir.file("catalog.jsonl")
        #expect(try await runSAELabel(["export", "--db", dir.file("job.sqlite"), "--format", "catalog", "--out", catalog]).status == 0)
        for object in try readCatalog(catalog) where labelable.contains(object["feature"] as? Int ?? -1) {
            let scores = object["scores"] as? [String: Any]
            #expect(scores?["simulation"] is NSNull, "\(object["feature"] ?? "?")")
            #expect(object["status"] as? String == "failed")
            #expect((object["failure_reason"] as? String)?.contains("simulation") == true)
        }
        let status = try await runSAELabel(["status", "--db", dir.file("job.sqlite"), "--json"])
        let json = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        #expect((json?["states"] as? [String: Int])?["failed"] == labelable.count)
        #expect(json?["simulation_scores"] == nil || json?["simulation_scores"] is NSNull)

        // The next run asks the server again for the unusable windows and scores them.
        try await mock.script([])
        let second = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(try store.features(in: [.scored]) == labelable)
        #expect(try await runSAELabel(["export", "--db", dir.file("job.sqlite"), "--format", "catalog", "--out", catalog]).status == 0)
        for object in try readCatalog(catalog) where labelable.contains(object["feature"] as? Int ?? -1) {
            #expect((object["scores"] as? [String: Any])?["simulation"] is Double)
        }
    }

    @Test func preflightStopsWrongModelWrongKeyAndStoppedServerBeforeCollect() async throws {
        let mock = try await MockLLMServer.start(["--models", "mock", "--api-key", "right-key"])
        let stopped = try await MockLLMServer.start()
        let stoppedURL = stopped.baseURL
        stopped.stop()
        let cases: [(endpoint: String, model: String, key: String, says: String)] = [
            (mock.baseURL, "no-such-model", "right-key", "not found"),
            (mock.baseURL, "mock", "wrong-key", "refused the API key"),
            (stoppedURL, "mock", "right-key", "no answer from the server"),
        ]
        for check in cases {
            let dir = TempDirectory()
            let job = try Demo.job(dir, endpoint: check.endpoint, features: "0..4")
            try String(contentsOfFile: job, encoding: .utf8).replacingOccurrences(of: "model = \"mock\"", with: "model = \"\(check.model)\"")
                .write(toFile: job, atomically: true, encoding: .utf8)
            let result = try await runSAELabel(["run", "--config", job, "--quiet"], environment: ["OPENAI_API_KEY": check.key])
            #expect(result.status == 2, "\(check.says): \(result.stderr)")
            #expect(stderrLines(result).count == 1, "\(result.stderr)")
            #expect(result.stderr.contains(check.says), "\(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir.file("job.sqlite")), "stopped before collect")
        }
        #expect(try await mock.stats().requests == 0, "no work request was sent")
        // The right model and key pass the check and the job runs.
        let dir = TempDirectory()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..2")
        let good = try await runSAELabel(["run", "--config", job, "--quiet"], environment: ["OPENAI_API_KEY": "right-key"])
        #expect(good.status == 0, "\(good.stderr)")
        #expect(try await mock.stats().checks == 3, "one check per run that reached the server")
    }

    /// Parses the total of `--dry-run`'s "LLM calls: … = N" line.
    func predictedCalls(_ output: String) throws -> Int {
        let line = try #require(output.split(separator: "\n").first { $0.hasPrefix("LLM calls:") })
        let total = try #require(line.split(separator: "=").last?.split(separator: " ").first)
        return try #require(Int(total))
    }

    @Test func dryRunPredictsTheCallsAndAddingAScorerMakesNoExplainCall() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start()
        let job = try await collectedStore(dir, features: "0..8", endpoint: mock.baseURL)

        let dry = try await runSAELabel(["run", "--config", job, "--dry-run"])
        #expect(dry.status == 0, "\(dry.stderr)")
        let predicted = try predictedCalls(dry.stdout)
        let run = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(run.status == 0, "\(run.stderr)")
        var stats = try await mock.stats()
        #expect(stats.requests + stats.checks == predicted, "predicted \(predicted), made \(stats.requests) + \(stats.checks) checks")
        #expect(stats.byKind["explain", default: 0] > 0)

        // Add detection: the existing labels are scored with it, nothing is explained again.
        try String(contentsOfFile: job, encoding: .utf8)
            .replacingOccurrences(of: "scorers = [\"simulation\"]", with: "scorers = [\"simulation\", \"detection\"]")
            .write(toFile: job, atomically: true, encoding: .utf8)
        let dryAgain = try await runSAELabel(["run", "--config", job, "--dry-run"])
        let predictedAgain = try predictedCalls(dryAgain.stdout)
        #expect(dryAgain.stdout.contains("0 explain"))
        try await mock.resetStats()
        let added = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(added.status == 0, "\(added.stderr)")
        stats = try await mock.stats()
        #expect(stats.byKind["explain", default: 0] == 0)
        #expect(stats.byKind["simulate", default: 0] == 0)
        #expect(stats.byKind["detect", default: 0] > 0)
        #expect(stats.requests + stats.checks == predictedAgain)

        let store = try JobStore(path: dir.file("job.sqlite"))
        for feature in try store.features(in: [.scored]) {
            #expect(try store.explanations(feature: feature).count == 1)
            let explanation = try #require(try store.currentExplanation(feature: feature))
            #expect(try store.scores(explanation: explanation).map(\.scorer) == ["detection", "simulation"])
        }
        let passes = try await runSAELabel(["passes", "--db", dir.file("job.sqlite"), "--json"])
        let list = try JSONSerialization.jsonObject(with: Data(passes.stdout.utf8)) as? [[String: Any]]
        #expect(list?.count == 1, "adding a scorer keeps the pass")
        let scoredCount = try store.features(in: [.scored]).count
        #expect((list?.first?["scores"] as? [String: Int])?["detection"] == scoredCount)
    }

    @Test func newVersionStartsAPassAndExportPassAndCompareShowBoth() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..4")
        #expect(try await runSAELabel(["run", "--config", job, "--quiet"]).status == 0)
        let store = try JobStore(path: dir.file("job.sqlite"))
        let first = try #require(try store.currentPass())
        let again = try await runSAELabel(["run", "--config", job, "--quiet", "--new-version"])
        #expect(again.status == 0, "\(again.stderr)")
        let second = try #require(try store.currentPass())
        #expect(second != first)
        for feature in try store.features(in: [.scored]) {
            #expect(try store.explanations(feature: feature).map(\.pass) == [first, second])
        }
        let old = dir.file("old.jsonl")
        #expect(try await runSAELabel(["export", "--db", dir.file("job.sqlite"), "--format", "catalog", "--out", old, "--pass", first]).status == 0)
        for object in try readCatalog(old) {
            let heldout = ((object["examples"] as? [String: Any])?["heldout"] as? [[String: Any]]) ?? []
            #expect(heldout.allSatisfy { $0["simulated"] is NSNull }, "no old simulated values over new windows")
        }
        let compare = try await runSAELabel(["passes", "--db", dir.file("job.sqlite"), "--compare", first, second])
        #expect(compare.status == 0, "\(compare.stderr)")
        let labeled = try store.features(in: [.scored]).count
        #expect(compare.stdout.split(separator: "\n").count == 2 + labeled)
    }

    @Test func explainAndScoreShareOneClientAndTheExplainCommandKeepsThePass() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--latency-ms", "150"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..12", concurrency: 2)
        let run = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(run.status == 0, "\(run.stderr)")
        let stats = try await mock.stats()
        #expect(stats.byKind["explain", default: 0] > 0 && stats.byKind["simulate", default: 0] > 0)
        #expect(stats.maxInFlight <= 2, "explain and score share one client's limit of 2 (saw \(stats.maxInFlight))")

        // `saelabel explain` with the job's explainer derives the same pass: nothing flips, nothing is paid again.
        let store = try JobStore(path: dir.file("job.sqlite"))
        let pass = try store.currentPass()
        try await mock.resetStats()
        let explain = try await runSAELabel(["explain", "--db", dir.file("job.sqlite"), "--endpoint", mock.baseURL, "--model", "mock"])
        #expect(explain.status == 0, "\(explain.stderr)")
        #expect(try store.currentPass() == pass)
        #expect(try await mock.stats().requests == 0)
        #expect(try store.features(in: [.collected, .explained]).isEmpty, "scored features stay scored")

        // `score --scorer fuzzing` on a scored store adds fuzzing scores to the existing labels.
        let fuzz = try await runSAELabel(["score", "--db", dir.file("job.sqlite"), "--endpoint", mock.baseURL, "--model", "mock",
                                          "--scorer", "fuzzing"])
        #expect(fuzz.status == 0, "\(fuzz.stderr)")
        let after = try await mock.stats()
        #expect(after.byKind["detect", default: 0] > 0 && after.byKind["explain", default: 0] == 0)
        for feature in try store.features(in: [.scored]) {
            let explanation = try #require(try store.currentExplanation(feature: feature))
            #expect(try store.scores(explanation: explanation).map(\.scorer) == ["fuzzing", "simulation"])
        }
    }

    @Test func mergeRefusesShardsOfDifferentSettings() async throws {
        let a = TempDirectory()
        let b = TempDirectory()
        _ = try await collectedStore(a)
        let job = try Demo.job(b, endpoint: "http://127.0.0.1:9/v1", features: "4..8")
        try String(contentsOfFile: job, encoding: .utf8).replacingOccurrences(of: "seed = 3", with: "seed = 4")
            .write(toFile: job, atomically: true, encoding: .utf8)
        #expect(try await runSAELabel(["run", "--config", job, "--stage", "collect", "--quiet"]).status == 0)
        let merged = a.file("merged.sqlite")
        let result = try await runSAELabel(["merge", "--into", merged, a.file("job.sqlite"), b.file("job.sqlite")])
        #expect(result.status == 2, "\(result.stdout) \(result.stderr)")
        #expect(stderrLines(result).count == 1)
        #expect(result.stderr.contains("collect settings"))
        #expect(!FileManager.default.fileExists(atPath: merged), "nothing written")
    }

    @Test func exitCodesVersionAndBaselineWithoutEndpoint() async throws {
        let dir = TempDirectory()
        let notAStore = try dir.write("hello.txt", "not a database, just text that is long enough to be read as a header....")
        let status = try await runSAELabel(["status", "--db", notAStore])
        #expect(status.status == 2, "\(status.stderr)")
        #expect(stderrLines(status).count == 1)

        let job = try Demo.job(dir, endpoint: "http://127.0.0.1:9/v1", features: "0..2")
        try String(contentsOfFile: job, encoding: .utf8)
            .replacingOccurrences(of: "store = \"\(dir.file("job.sqlite"))\"", with: "store = \"\(notAStore)/job.sqlite\"")
            .write(toFile: job, atomically: true, encoding: .utf8)
        for extra in [[], ["--dry-run"]] {
            let result = try await runSAELabel(["run", "--config", job, "--stage", "collect"] + extra)
            #expect(result.status == 2, "\(extra): \(result.stderr)")
            #expect(stderrLines(result).count == 1)
        }

        let version = try await runSAELabel(["--version"])
        #expect(version.status == 0)
        #expect(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == SAELabelVersion.current)

        let labeled = TempDirectory()
        _ = try await collectedStore(labeled, extra: "\n[export]\nneuronpedia_model_id = \"gpt2-small\"\nneuronpedia_layer = \"6-res-jb\"\n")
        let baseline = try await runSAELabel(["explain", "--db", labeled.file("job.sqlite"), "--style", "baseline"])
        #expect(baseline.status == 0, "\(baseline.stderr)")
        let statusText = try await runSAELabel(["status", "--db", labeled.file("job.sqlite")])
        #expect(statusText.stdout.contains("models: explainer baseline"))

        // Neuronpedia's modelId and layer come from the job file.
        let neuronpedia = labeled.file("np")
        let export = try await runSAELabel(["export", "--db", labeled.file("job.sqlite"), "--format", "neuronpedia", "--out", neuronpedia])
        #expect(export.status == 0, "\(export.stderr)")
        let rows = try String(contentsOfFile: neuronpedia + "/batch-0.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(!rows.isEmpty)
        for row in rows {
            let object = try JSONSerialization.jsonObject(with: Data(row.utf8)) as? [String: Any]
            #expect(object?["modelId"] as? String == "gpt2-small" && object?["layer"] as? String == "6-res-jb")
        }
    }

    /// The unset-key warning is for endpoints off this machine only (tested without sending anything off it).
    @Test func keyWarningIsOnlyForEndpointsOffThisMachine() {
        for url in ["http://127.0.0.1:8081/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1", "http://127.0.1.1/v1"] {
            #expect(Pipeline.isLoopback(url), "\(url)")
        }
        for url in ["https://api.openai.com/v1", "http://10.0.0.5:8000/v1", "http://gpu-box.internal/v1", "not a url"] {
            #expect(!Pipeline.isLoopback(url), "\(url)")
        }
    }

    @Test func progressLinesArePerStageStopWhenTheStageEndsAndShareOneTimestampStyle() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--latency-ms", "30"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8", concurrency: 2)
        let result = try await runSAELabel(["run", "--config", job], environment: ["SAELABEL_PROGRESS_INTERVAL": "0.05"])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stderr.split(separator: "\n").map(String.init)
        #expect(lines.count > 3)
        let stamp = try Regex("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z progress (collect|explain|score) ")
        for line in lines { #expect(line.contains(stamp), "\(line)") }
        for stage in ["collect", "explain", "score"] {
            let mine = lines.filter { $0.contains(" progress \(stage) ") }
            #expect(mine.filter { $0.contains("done in") }.count == 1, "\(stage): \(mine)")
            #expect(mine.last?.contains("done in") == true, "no \(stage) line after its stage ended")
        }
        // Each stage counts its own tokens: collect none, explain and score their own.
        let finals = lines.filter { $0.contains("done in") }
        #expect(finals.first { $0.contains(" collect ") }?.hasSuffix("tokens 0 in / 0 out") == true)
        let explainTokens = finals.first { $0.contains(" explain ") }?.split(separator: "tokens").last
        let scoreTokens = finals.first { $0.contains(" score ") }?.split(separator: "tokens").last
        #expect(explainTokens != nil && scoreTokens != nil && explainTokens != scoreTokens)
    }
}
