import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport
import Testing

/// Label carry-over across SAE versions, on the real binary, the demo data and the mock server: a version with
/// known ground truth (Tools/sae_version_fixture.py shuffles, perturbs and replaces the demo SAE's features).
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct CarryOverTests {
    static let featureCount = 64

    /// The next version of the demo SAE's first 64 features, and which old feature each new one came from.
    func nextVersion(_ dir: TempDirectory) async throws -> (sae: String, truth: [Int?]) {
        let sae = dir.file("sae-v2")
        let made = try await runProcess("/usr/bin/env", ["python3", Repository.root.appendingPathComponent("Tools/sae_version_fixture.py").path,
                                                         Demo.folder.appendingPathComponent("sae").path, sae,
                                                         "--features", String(Self.featureCount), "--replace", "12"])
        guard made.status == 0 else { throw TestFailure("sae_version_fixture.py failed: \(made.stderr)") }
        let truth = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: sae + "/truth.json"))) as? [String: Any]
        let old = try #require(truth?["old_index"] as? [Any])
        return (sae, old.map { $0 as? Int })
    }

    /// The demo job over 64 features, first on the demo SAE; `switchTo` rewrites it for the next version.
    func job(_ dir: TempDirectory, endpoint: String, extra: String = "") throws -> String {
        try Demo.job(dir, endpoint: endpoint, features: "0..\(Self.featureCount)", extra: """
            [export]
            catalog = "\(dir.file("catalog.jsonl"))"
            csv = "\(dir.file("labels.csv"))"
            \(extra)
            """)
    }

    func switchTo(_ sae: String, job: String) throws {
        let text = try String(contentsOfFile: job, encoding: .utf8)
        try text.replacingOccurrences(of: Demo.folder.appendingPathComponent("sae").path, with: sae)
            .write(toFile: job, atomically: true, encoding: .utf8)
    }

    func labelable(_ store: JobStore) throws -> [Int] {
        try store.features(in: [.collected, .explained, .scored, .failed, .pending])
    }

    @Test func groundTruthVersionCarriesOwnLabelsAndExplainsOnlyTheRest() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start([])
        let job = try job(dir, endpoint: mock.baseURL)
        let first = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(first.status == 0, "\(first.stderr)")
        let oldStore = try JobStore(path: dir.file("job.sqlite"))
        let oldPass = try #require(try oldStore.currentPass())
        var oldLabels: [Int: String] = [:]
        for feature in try oldStore.features(in: [.scored]) { oldLabels[feature] = try oldStore.currentExplanation(feature: feature)?.text }
        #expect(oldLabels.count > 20)

        let (sae, truth) = try await nextVersion(dir)
        try switchTo(sae, job: job)
        // --dry-run says how many labels would be carried, and sends and writes nothing.
        let dry = try await runSAELabel(["run", "--config", job, "--new-version", "--dry-run"])
        #expect(dry.status == 0, "\(dry.stderr)")
        let dryLine = try #require(dry.stdout.split(separator: "\n").first { $0.hasPrefix("carry-over: ") }, "\(dry.stdout)")
        let wouldCarry = try #require(Int(dryLine.dropFirst("carry-over: ".count).prefix { $0.isNumber }))
        #expect(try JobStore(path: dir.file("job.sqlite")).inputVersion() == 1)
        try await mock.resetStats()
        let second = try await runSAELabel(["run", "--config", job, "--new-version"])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stdout.contains("carry-over:") || second.stderr.contains("carry-over:"), "\(second.stdout)\n\(second.stderr)")

        let store = try JobStore(path: dir.file("job.sqlite"))
        #expect(try store.currentPass() != oldPass)
        let carried = try store.carriedLabels()
        let byFeature = Dictionary(uniqueKeysWithValues: carried.map { ($0.feature, $0) })
        let dead = try store.features(in: [.dead, .sparse]).count
        #expect(wouldCarry >= carried.count && wouldCarry <= carried.count + dead, "dry-run said \(wouldCarry), the run carried \(carried.count)")
        // Surviving features whose old feature had a label and that are labelable now: each should get that label.
        let labelableNow = Set(try labelable(store))
        let survivors = truth.enumerated().filter { new, old in old.map { oldLabels[$0] != nil } == true && labelableNow.contains(new) }
        #expect(survivors.count > 20)
        let own = survivors.filter { new, old in byFeature[new]?.sourceFeature == old }.count
        #expect(Double(own) >= 0.9 * Double(survivors.count), "\(own) of \(survivors.count) survivors got their own old label")
        #expect(carried.allSatisfy { truth[$0.feature] == $0.sourceFeature }, "a label went to the wrong feature")
        let replaced = truth.indices.filter { truth[$0] == nil }
        let replacedCarried = replaced.filter { byFeature[$0] != nil }.count
        #expect(Double(replacedCarried) <= 0.1 * Double(replaced.count), "\(replacedCarried) of \(replaced.count) replaced features got an old label")

        // Every kept carried label was re-scored in the new pass, on the examples collected from the new SAE.
        let kept = carried.filter { $0.decision == "kept" }
        #expect(!kept.isEmpty)
        for label in kept {
            let explanation = try #require(try store.currentExplanation(feature: label.feature))
            #expect(explanation.text == oldLabels[label.sourceFeature])
            let scores = try store.scores(explanation: explanation)
            #expect(scores.map(\.scorer) == ["simulation"], "feature \(label.feature)")
            #expect(scores.first?.value == label.newScore)
            let heldout = try store.examples(feature: label.feature, split: .heldout)
            #expect(!heldout.isEmpty)
        }
        // Explain calls: at most the features that did not keep a carried label.
        let stats = try await mock.stats()
        let explains = stats.byKind["explain", default: 0]
        #expect(explains <= labelableNow.count - kept.count, "\(explains) explain calls for \(labelableNow.count - kept.count) features not carried")
        #expect(explains >= 1)
        for feature in labelableNow { #expect(try store.feature(feature)?.state == .scored, "feature \(feature)") }

        // Provenance in the catalog and the CSV.
        let catalog = try readCatalog(dir.file("catalog.jsonl"))
        for row in catalog {
            let feature = try #require(row["feature"] as? Int)
            if let label = kept.first(where: { $0.feature == feature }) {
                let from = try #require(row["carried_from"] as? [String: Any], "feature \(feature)")
                #expect(from["feature"] as? Int == label.sourceFeature)
                #expect(abs((from["cosine"] as? Double ?? 0) - label.cosine) < 1e-9)
                #expect(abs((from["previous_score"] as? Double ?? .nan) - (label.previousScore ?? .nan)) < 1e-9)
            } else {
                #expect(row["carried_from"] is NSNull, "feature \(feature)")
            }
        }
        let csv = try String(contentsOfFile: dir.file("labels.csv"), encoding: .utf8)
        #expect(csv.hasPrefix("feature,") && csv.contains("carried_from_feature"))
    }

    /// A new version run over part of the features must not leave the old version's windows on the others: they
    /// go back to pending with no examples (status and the catalog say so), and a later run over them, without
    /// `--new-version`, collects them from the new SAE exactly as a fresh store would and labels them.
    @Test func newVersionOverPartOfTheRangeLeavesNoOldWindowsBehind() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start([])
        let job = try job(dir, endpoint: mock.baseURL)
        let first = try await runSAELabel(["run", "--config", job, "--features", "0..16", "--quiet"])
        #expect(first.status == 0, "\(first.stderr)")
        let (sae, _) = try await nextVersion(dir)
        try switchTo(sae, job: job)

        let second = try await runSAELabel(["run", "--config", job, "--new-version", "--features", "0..8", "--quiet"])
        #expect(second.status == 0, "\(second.stderr)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        for feature in 8..<16 {
            #expect(try store.feature(feature)?.state == .pending, "feature \(feature) kept the old version's state")
            #expect(try store.examples(feature: feature).isEmpty, "feature \(feature) kept the old version's windows")
        }
        let status = try await runSAELabel(["status", "--db", dir.file("job.sqlite"), "--json"])
        let states = try #require((try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])?["states"] as? [String: Int])
        #expect(states["pending"] == 8, "\(status.stdout)")
        for row in try readCatalog(dir.file("catalog.jsonl")) where (row["feature"] as? Int ?? 0) >= 8 {
            #expect(row["status"] as? String == "pending")
            let examples = row["examples"] as? [String: Any]
            #expect((examples?["explain"] as? [Any] ?? []).isEmpty && (examples?["heldout"] as? [Any] ?? []).isEmpty)
        }
        // `saelabel explain` over the whole store now has nothing of the old version to label.
        try await mock.resetStats()
        let explain = try await runSAELabel(["explain", "--db", dir.file("job.sqlite"), "--endpoint", mock.baseURL, "--model", "mock"])
        #expect(explain.status == 0, "\(explain.stderr)")
        #expect(try store.features(in: [.explained, .scored]).allSatisfy { $0 < 8 })

        // The rest of the range later, as a nightly job grows it: collected from the new SAE, then labeled.
        let third = try await runSAELabel(["run", "--config", job, "--features", "0..16", "--quiet"])
        #expect(third.status == 0, "\(third.stderr)")
        // The same job (same SAE and settings) on a fresh store, collect only.
        let fresh = dir.file("fresh.sqlite")
        let freshJob = try dir.write("fresh.toml", try String(contentsOfFile: job, encoding: .utf8)
            .replacingOccurrences(of: dir.file("job.sqlite"), with: fresh))
        let collected = try await runSAELabel(["run", "--config", freshJob, "--stage", "collect", "--features", "8..16", "--quiet"])
        #expect(collected.status == 0, "\(collected.stderr)")
        let freshStore = try JobStore(path: fresh)
        var labeled = 0
        for feature in 8..<16 {
            #expect(try store.examples(feature: feature) == freshStore.examples(feature: feature), "feature \(feature)")
            #expect(try store.feature(feature)?.statistics == freshStore.feature(feature)?.statistics, "feature \(feature)")
            if try store.feature(feature)?.state == .scored { labeled += 1 }
        }
        #expect(labeled == (try freshStore.features(in: [.collected]).count))
    }

    /// Datasets/demo-v2: the demo SAE trained twice as long, its features shipped at new indices.
    static var shippedVersion: URL { Repository.root.appendingPathComponent("Datasets/demo-v2/sae") }
    static var shippedVersionAvailable: Bool {
        FileManager.default.fileExists(atPath: shippedVersion.appendingPathComponent("sae_weights.safetensors").path)
    }

    /// The shipped second version of the demo SAE, features 0..127 of both versions: saelabel's pairs and cosines
    /// are those of the numpy oracle (Tools/carry_over_match.py), every carried label is scored on v2's own
    /// held-out windows (recomputed by the oracle from v2's weights), and the explain requests are exactly the
    /// labelable features that kept no carried label.
    @Test(.enabled(if: shippedVersionAvailable, "Datasets/demo-v2 is missing"))
    func shippedSecondVersionMatchesTheNumpyOracle() async throws {
        let range = "0..128"
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start([])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: range)
        let first = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(first.status == 0, "\(first.stderr)")
        let oldStore = try JobStore(path: dir.file("job.sqlite"))
        var oldLabels: [Int: String] = [:]
        for feature in 0..<128 { oldLabels[feature] = try oldStore.currentExplanation(feature: feature)?.text }

        let hitsBefore = try await PaidCalls.read(store: dir.file("job.sqlite")).explainCacheHits
        try switchTo(Self.shippedVersion.path, job: job)
        try await mock.resetStats()
        let second = try await runSAELabel(["run", "--config", job, "--new-version", "--quiet"])
        #expect(second.status == 0, "\(second.stderr)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        let pass = try #require(try store.currentPass())
        let carried = try store.carriedLabels()
        let labelableNow = Set(try labelable(store))

        // The held-out windows of every carried feature, for the oracle to recompute from v2's weights.
        var windows: [(feature: Int, ordinal: Int, window: ActivationWindow)] = []
        for label in carried {
            for example in try store.examples(feature: label.feature, split: .heldout) {
                windows.append((label.feature, example.ordinal, example.window))
            }
        }
        let windowsFile = try dir.write("windows.json", String(decoding: try JSONSerialization.data(withJSONObject: windows.map {
            ["feature": $0.feature, "sequence": $0.window.sequence, "start": $0.window.start, "length": $0.window.tokens.count]
        }), as: UTF8.self))
        let oracleRun = try await runProcess("/usr/bin/env", [
            "python3", Repository.root.appendingPathComponent("Tools/carry_over_match.py").path,
            Demo.folder.appendingPathComponent("sae").path, Self.shippedVersion.path,
            "--old-features", range, "--new-features", range,
            "--windows", windowsFile, "--activations", Demo.folder.appendingPathComponent("activations.safetensors").path])
        #expect(oracleRun.status == 0, "\(oracleRun.stderr)")
        let oracle = try #require(try JSONSerialization.jsonObject(with: Data(oracleRun.stdout.utf8)) as? [String: Any])
        let pairs = try #require(oracle["pairs"] as? [[String: Any]])

        // Pairs: the oracle's mutual-best matches whose old feature has a label and whose new feature is labelable.
        let expected = pairs.compactMap { pair -> (new: Int, old: Int, cosine: Double)? in
            guard let new = pair["new"] as? Int, let old = pair["old"] as? Int, let cosine = pair["cosine"] as? Double,
                  oldLabels[old] != nil, labelableNow.contains(new) else { return nil }
            return (new, old, cosine)
        }
        #expect(expected.count >= 30, "only \(expected.count) carryable pairs: the shipped v2 is not a retrain of v1")
        #expect(carried.map { [$0.feature, $0.sourceFeature] } == expected.map { [$0.new, $0.old] })
        for (label, pair) in zip(carried, expected) {
            #expect(abs(label.cosine - pair.cosine) <= 1e-5, "feature \(label.feature): \(label.cosine) vs oracle \(pair.cosine)")
        }
        #expect(carried.contains { $0.feature != $0.sourceFeature }, "v2 keeps v1's indices")

        // Every carried label was scored on v2's windows: the windows hold v2's activations, and the simulator
        // (the mock answers mock_activation of each token it is shown) saw exactly their tokens.
        let recomputed = try #require(oracle["window_activations"] as? [[Double]])
        #expect(recomputed.count == windows.count)
        for (entry, values) in zip(windows, recomputed) {
            let stored = entry.window.activations.map(Double.init)
            #expect(stored.count == values.count)
            for (offset, (a, b)) in zip(stored, values).enumerated() {
                // Position 0 is the BOS token the SAE's prepend_bos excludes from collect: stored as 0.
                let expected = entry.window.start + offset == 0 ? 0 : b
                #expect(abs(a - expected) <= 1e-2 * max(1, abs(expected)), "feature \(entry.feature) window \(entry.ordinal): \(stored) vs v2 \(values)")
            }
        }
        for label in carried {
            #expect(label.newScore != nil, "feature \(label.feature)'s carried label was not re-scored")
            guard label.decision == "kept" else { continue }
            let explanation = try #require(try store.currentExplanation(feature: label.feature))
            #expect(explanation.pass == pass && explanation.text == oldLabels[label.sourceFeature])
            let score = try #require(try store.scores(explanation: explanation).first { $0.scorer == "simulation" })
            #expect(score.value == label.newScore)
            let details = try JSONDecoder().decode(SimulationDetails.self, from: Data(score.details.utf8))
            let heldout = windows.filter { $0.feature == label.feature }
            #expect(details.windows.map(\.heldoutOrdinal) == heldout.map(\.ordinal))
            for (simulated, entry) in zip(details.windows, heldout) {
                #expect(simulated.simulated == entry.window.tokens.map { Double(mockActivation($0)) }, "feature \(label.feature)")
            }
        }

        // Explain requests (sent, or answered by the response cache from v1's identical prompt) = features not carried.
        let kept = carried.filter { $0.decision == "kept" }.count
        let sent = try await mock.stats().byKind["explain", default: 0]
        let fromCache = try await PaidCalls.read(store: dir.file("job.sqlite")).explainCacheHits - hitsBefore
        #expect(sent + fromCache == labelableNow.count - kept, "\(sent) sent + \(fromCache) from the cache for \(labelableNow.count - kept) features not carried")
        #expect(sent >= 1)
    }

    @Test func carriesFromAnotherStoreAndSaysWhenAStoreCannot() async throws {
        let earlier = TempDirectory()
        let mock = try await MockLLMServer.start([])
        #expect(try await runSAELabel(["run", "--config", try job(earlier, endpoint: mock.baseURL), "--quiet"]).status == 0)
        let (sae, truth) = try await nextVersion(earlier)

        // A new job over the next version, in its own store, carrying from the earlier job's store.
        let dir = TempDirectory()
        let newJob = try job(dir, endpoint: mock.baseURL, extra: "\n[carry_over]\nfrom = \"\(earlier.file("job.sqlite"))\"\n")
        try switchTo(sae, job: newJob)
        let run = try await runSAELabel(["run", "--config", newJob, "--quiet"])
        #expect(run.status == 0, "\(run.stderr)")
        let carried = try JobStore(path: dir.file("job.sqlite")).carriedLabels()
        #expect(carried.count >= 40)
        #expect(carried.allSatisfy { truth[$0.feature] == $0.sourceFeature && $0.source == earlier.file("job.sqlite") })

        // A store without recorded directions (as one written before carry-over) cannot carry, and says so.
        let old = TempDirectory()
        let oldJob = try job(old, endpoint: mock.baseURL)
        #expect(try await runSAELabel(["run", "--config", oldJob, "--quiet"]).status == 0)
        let wiped = try await runProcess("/usr/bin/env", ["python3", "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('DELETE FROM decoder_direction'); c.commit()", old.file("job.sqlite")])
        #expect(wiped.status == 0, "\(wiped.stderr)")
        try switchTo(sae, job: oldJob)
        let second = try await runSAELabel(["run", "--config", oldJob, "--new-version"])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stdout.contains("carry-over unavailable"), "\(second.stdout)")
        #expect(try JobStore(path: old.file("job.sqlite")).carriedLabels().isEmpty)
    }

    @Test func disabledCarriesNothing() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start([])
        let job = try job(dir, endpoint: mock.baseURL, extra: "\n[carry_over]\nenabled = false\n")
        #expect(try await runSAELabel(["run", "--config", job, "--quiet"]).status == 0)
        let (sae, _) = try await nextVersion(dir)
        try switchTo(sae, job: job)
        try await mock.resetStats()
        let second = try await runSAELabel(["run", "--config", job, "--new-version", "--quiet"])
        #expect(second.status == 0, "\(second.stderr)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        #expect(try store.carriedLabels().isEmpty)
        #expect(try await mock.stats().byKind["explain", default: 0] == (try labelable(store).count))
    }

    @Test func killNineDuringCarryOverThenResumeDuplicatesNothing() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--latency-ms", "40"])
        let job = try job(dir, endpoint: mock.baseURL)
        #expect(try await runSAELabel(["run", "--config", job, "--quiet"]).status == 0)
        let (sae, _) = try await nextVersion(dir)
        try switchTo(sae, job: job)

        // The uninterrupted cost of the carry-over run, in a copy of the store.
        let reference = TempDirectory()
        let referenceMock = try await MockLLMServer.start(["--latency-ms", "40"])
        try FileManager.default.copyItem(atPath: dir.file("job.sqlite"), toPath: reference.file("job.sqlite"))
        var referenceJob = try String(contentsOfFile: job, encoding: .utf8)
        for name in ["job.sqlite", "catalog.jsonl", "labels.csv"] {
            referenceJob = referenceJob.replacingOccurrences(of: dir.file(name), with: reference.file(name))
        }
        referenceJob = referenceJob
            .replacingOccurrences(of: mock.baseURL, with: referenceMock.baseURL)
        let referencePath = try reference.write("job.toml", referenceJob)
        #expect(try await runSAELabel(["run", "--config", referencePath, "--new-version", "--quiet"]).status == 0)
        let need = try await referenceMock.stats().requests

        try await mock.resetStats()
        var kills = 0
        var generator = SplitMix64(state: 20261202)
        for _ in 0..<8 {
            // --new-version until a run got far enough to start the new version (a run killed before that never did).
            let started = try JobStore(path: dir.file("job.sqlite")).inputVersion() > 1
            let process = try startSAELabel(["run", "--config", job, "--quiet"] + (started ? [] : ["--new-version"]))
            try await Task.sleep(nanoseconds: UInt64(Double.random(in: 0.3...1.5, using: &generator) * 1e9))
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                kills += 1
            }
            process.waitUntilExit()
        }
        #expect(kills >= 1)
        // The new version starts with its first committed collect block: a store every kill stopped earlier still
        // holds the old version, and the resuming run says --new-version as the user would.
        let startedAtLast = try JobStore(path: dir.file("job.sqlite")).inputVersion() > 1
        let final = try await runSAELabel(["run", "--config", job, "--quiet"] + (startedAtLast ? [] : ["--new-version"]))
        #expect(final.status == 0, "\(final.stderr)")

        let store = try JobStore(path: dir.file("job.sqlite"))
        let pass = try #require(try store.currentPass())
        let referenceStore = try JobStore(path: reference.file("job.sqlite"))
        #expect(try store.carriedLabels().map(\.feature) == referenceStore.carriedLabels().map(\.feature))
        for feature in try labelable(store) {
            #expect(try store.feature(feature)?.state == .scored, "feature \(feature)")
            let inPass = try store.explanations(feature: feature).filter { $0.pass == pass }
            #expect(inPass.count == 1, "feature \(feature) has \(inPass.count) labels in the new pass")
            #expect(inPass.first?.text == (try referenceStore.currentExplanation(feature: feature)?.text))
        }
        // The client holds each of its `concurrency` (4) permits from sending a request until the answer is stored,
        // so a kill loses at most 4 paid answers; failed attempts (a timeout under load) are repeated by retries.
        let made = try await mock.stats().requests
        let paid = try await PaidCalls.read(store: dir.file("job.sqlite"))
        #expect(paid.answeredTwice.isEmpty, "paid twice for answers the store held: \(paid.answeredTwice)")
        #expect(made >= need)
        #expect(made <= need + kills * 4 + paid.failedAttempts,
                "made \(made) calls for a need of \(need) with \(kills) kills and \(paid.failedAttempts) failed attempts")
    }
}
