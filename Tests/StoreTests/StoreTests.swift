import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport
import Testing

func window(_ tokens: [String], _ activations: [Float], kind: ExampleKind = .top, sequence: Int = 0) -> ActivationWindow {
    ActivationWindow(tokens: tokens, activations: activations, kind: kind, sequence: sequence, start: 0)
}

func collected(_ index: Int, state: FeatureState = .collected) -> CollectedFeature {
    CollectedFeature(index: index, state: state,
                     statistics: FeatureStatistics(frequency: 0.01, maxActivation: 3, meanActivation: 1.5, activatingTokens: 4,
                                                   activatingWindows: 2, histogram: [1, 2, 1]),
                     explain: state == .dead ? [] : [window(["a", "b"], [0, 3])],
                     heldout: state == .dead ? [] : [window(["c", "d"], [1, 0], kind: .quantile, sequence: 1),
                                                     window(["e", "f"], [0, 0], kind: .random, sequence: 2)])
}

@Suite struct StoreTests {
    @Test func schemaMigratesFromEmpty() throws {
        let dir = TempDirectory()
        let store = try JobStore(path: dir.file("job.sqlite"))
        let migrations = ["v1", "v2-labeling-passes", "v3-batch-requests", "v3-carry-over", "v2-llm-call-cached-tokens",
                          "v5-batch-call-accounting", "v6-text-windows"]
        #expect(try store.appliedMigrations() == migrations)
        #expect(try store.status().features == 0)
        // Reopening an existing store applies nothing twice.
        let again = try JobStore(path: dir.file("job.sqlite"))
        #expect(try again.appliedMigrations() == migrations)
    }

    @Test func notAStoreIsRefusedClearly() throws {
        let dir = TempDirectory()
        let path = dir.file("junk.sqlite")
        try Data("this is not sqlite, just text that is long enough to look like a header".utf8).write(to: URL(fileURLWithPath: path))
        #expect {
            _ = try JobStore(path: path)
        } throws: { error in
            // Naming a file that is not a store is bad input (exit 2), not a store failure.
            guard let error = error as? SAELabelError, case .badInput(let location, _) = error else { return false }
            return location == path && error.exitCode == 2
        }
    }

    @Test func changedInputIsRefusedWithClearMessage() throws {
        let dir = TempDirectory()
        let input = dir.file("weights.safetensors")
        try Data("version one".utf8).write(to: URL(fileURLWithPath: input))
        let store = try JobStore(path: dir.file("job.sqlite"))
        try store.verifyInputs([try InputFingerprint.of(file: input, role: "sae_weights")])
        // Same content: accepted again.
        try store.verifyInputs([try InputFingerprint.of(file: input, role: "sae_weights")])

        try Data("version two!".utf8).write(to: URL(fileURLWithPath: input))
        let changed = try InputFingerprint.of(file: input, role: "sae_weights")
        #expect {
            try store.verifyInputs([changed])
        } throws: { error in
            guard let error = error as? SAELabelError, case .inputChanged(let path, _) = error else { return false }
            return path == input && error.exitCode == 2 && error.description.contains("--new-version")
        }
        // Nothing was overwritten by the refused call.
        #expect(try store.fingerprints().first?.sha256 != changed.sha256)
        // A new version is accepted on request.
        try store.verifyInputs([changed], acceptChanges: true)
        #expect(try store.fingerprints().first?.sha256 == changed.sha256)
    }

    @Test func statusListsEveryFailureOnRequestAndCountsTheRest() throws {
        let dir = TempDirectory()
        let store = try JobStore(path: dir.file("job.sqlite"))
        try store.saveCollected((0..<60).map { collected($0) })
        try store.beginPass("p1")
        for feature in 0..<60 { try store.markFailed(feature: feature, stage: "explain", reason: "reason \(feature)") }
        let first = try store.status()
        #expect(first.failures.count == 50 && first.failuresNotListed == 10)
        let all = try store.status(maxFailuresListed: nil)
        #expect(all.failures.map(\.feature) == Array(0..<60) && all.failuresNotListed == 0)
        #expect(all.models.isEmpty && all.simulationScores == nil)

        try store.requeueFailed()
        var explanations: [StoredExplanation] = []
        for feature in 0..<4 {
            explanations.append(try store.saveExplanation(feature: feature, text: "l\(feature)", explainerModel: "e1", promptHash: "h", rawResponse: nil))
        }
        for (explanation, value) in zip(explanations, [-0.1, 0.1, 0.5, 0.9]) {
            try store.saveScore(explanation: explanation, score: StoredScore(scorer: "simulation", value: value, model: "s1", promptHash: "p", details: "{}"),
                                completesFeature: true)
        }
        let scored = try store.status()
        #expect(scored.models == ["explainer e1", "simulation s1"])
        let distribution = try #require(scored.simulationScores)
        #expect(distribution.count == 4 && abs(distribution.mean - 0.35) < 1e-12 && abs(distribution.median - 0.3) < 1e-12)
        #expect(distribution.bins.map(\.count) == [1, 1, 0, 1, 0, 1])
    }

    @Test func statusCountsAreRight() throws {
        let dir = TempDirectory()
        let store = try JobStore(path: dir.file("job.sqlite"))
        try store.registerFeatures(Array(0..<6))
        try store.saveCollected([collected(0), collected(1), collected(2), collected(3, state: .dead)])
        try store.beginPass("p1")
        let explanation = try store.saveExplanation(feature: 0, text: "commas", explainerModel: "m", promptHash: "h", rawResponse: nil)
        try store.saveExplanation(feature: 1, text: "dots", explainerModel: "m", promptHash: "h", rawResponse: nil)
        try store.saveScore(explanation: explanation,
                            score: StoredScore(scorer: "simulation", value: 0.5, model: "m", promptHash: "s", details: "{}"),
                            completesFeature: true)
        try store.markFailed(feature: 2, stage: "explain", reason: "HTTP 500 after 5 retries")
        try store.recordLLMCall(key: "k1", endpoint: "e", model: "m", tag: "explain:0", promptTokens: 100, completionTokens: 10,
                                latencySeconds: 0.1, outcome: "ok", attempt: 1)
        try store.recordLLMCall(key: "k2", endpoint: "e", model: "m", tag: "explain:2", promptTokens: 0, completionTokens: 0,
                                latencySeconds: 0.1, outcome: "http_500", attempt: 1)
        try store.recordLLMCall(key: "k1", endpoint: "e", model: "m", tag: "explain:0", promptTokens: 100, completionTokens: 10,
                                latencySeconds: 0, outcome: "cache_hit", attempt: 0)

        let status = try store.status()
        #expect(status.features == 6)
        #expect(status.states["scored"] == 1)
        #expect(status.states["explained"] == 1)
        #expect(status.states["failed"] == 1)
        #expect(status.states["dead"] == 1)
        #expect(status.states["pending"] == 2)
        #expect(status.states["collected"] == 0)
        #expect(status.explanations == 2)
        #expect(status.scores == ["simulation": 1])
        #expect(status.failures == [JobStatus.Failure(feature: 2, stage: "explain", reason: "HTTP 500 after 5 retries", attempts: 1)])
        #expect(status.llm.calls == 2)
        #expect(status.llm.cacheHits == 1)
        #expect(status.llm.failedAttempts == 1)
        #expect(status.llm.promptTokens == 100)
        #expect(status.llm.completionTokens == 10)
        #expect(status.meanSimulationScore == 0.5)
    }

    @Test func examplesRoundTripWithNastyTokens() throws {
        let dir = TempDirectory()
        let store = try JobStore(path: dir.file("job.sqlite"))
        var feature = collected(7)
        feature.explain = [window(["\"q\"", "\t", "\n", "é日本🙂", "<script>alert(1)</script>", "\u{01}\\\u{7F}\r", "\u{2028}"],
                                  [0, 1.5, 0, 2.25, -0.5, 1e-7, 3.4e38])]
        try store.saveCollected(feature)
        let explain = try store.examples(feature: 7, split: .explain)
        #expect(explain.map(\.window) == feature.explain)
        #expect(try store.examples(feature: 7, split: .heldout).map(\.window) == feature.heldout)
    }

    @Test func oneExplanationPerFeatureAndPass() throws {
        let dir = TempDirectory()
        let store = try JobStore(path: dir.file("job.sqlite"))
        try store.saveCollected(collected(0))
        try store.beginPass("p1")
        let first = try store.saveExplanation(feature: 0, text: "first", explainerModel: "m", promptHash: "h", rawResponse: nil)
        let second = try store.saveExplanation(feature: 0, text: "second", explainerModel: "m", promptHash: "h", rawResponse: nil)
        #expect(first == second)
        #expect(try store.currentExplanation(feature: 0)?.text == "first")

        // A new pass sends the feature back to collected and keeps the old label.
        try store.beginPass("p2")
        #expect(try store.feature(0)?.state == .collected)
        #expect(try store.currentExplanation(feature: 0) == nil)
        try store.saveExplanation(feature: 0, text: "new", explainerModel: "m2", promptHash: "h2", rawResponse: nil)
        #expect(try store.explanations(feature: 0).map(\.text) == ["first", "new"])
        // Returning to the first pass finds its label again.
        try store.beginPass("p1")
        #expect(try store.feature(0)?.state == .explained)
        #expect(try store.currentExplanation(feature: 0)?.text == "first")
    }

    @Test func failedFeaturesAreRequeued() throws {
        let dir = TempDirectory()
        let store = try JobStore(path: dir.file("job.sqlite"))
        try store.saveCollected([collected(0), collected(1)])
        try store.markFailed(feature: 0, stage: "explain", reason: "x")
        try store.markFailed(feature: 1, stage: "score", reason: "y")
        try store.requeueFailed()
        #expect(try store.feature(0)?.state == .collected)
        #expect(try store.feature(1)?.state == .explained)
        #expect(try store.feature(0)?.attempts == 1)
    }

    @Test func mergeJoinsShardsAndIsIdempotent() throws {
        let dir = TempDirectory()
        var shards: [String] = []
        for shard in 0..<2 {
            let path = dir.file("shard-\(shard).sqlite")
            let store = try JobStore(path: path)
            try store.verifyInputs([InputFingerprint(role: "sae_weights", path: "w", size: 1, sha256: "abc")])
            try store.beginPass("p")
            for feature in stride(from: shard, to: 6, by: 2) {
                try store.saveCollected(collected(feature))
                let explanation = try store.saveExplanation(feature: feature, text: "f\(feature)", explainerModel: "m", promptHash: "h", rawResponse: nil)
                try store.saveScore(explanation: explanation,
                                    score: StoredScore(scorer: "simulation", value: Double(feature) / 10, model: "m", promptHash: "s", details: "{}"),
                                    completesFeature: true)
            }
            try store.storeLLMResponse(key: "key\(shard)", body: Data("{}".utf8))
            try store.recordLLMCall(key: "key\(shard)", endpoint: "e", model: "m", tag: "t", promptTokens: 5, completionTokens: 1,
                                    latencySeconds: 0.1, outcome: "ok", attempt: 1)
            shards.append(path)
        }
        let merged = try JobStore(path: dir.file("merged.sqlite"))
        for shard in shards { _ = try merged.merge(shardAt: shard) }
        for shard in shards { _ = try merged.merge(shardAt: shard) }
        let status = try merged.status()
        #expect(status.features == 6)
        #expect(status.states["scored"] == 6)
        #expect(status.explanations == 6)
        #expect(status.scores == ["simulation": 6])
        #expect(status.llm.calls == 2)
        #expect(try merged.currentExplanation(feature: 5)?.text == "f5")
        #expect(try merged.examples(feature: 3).count == 3)
        #expect(merged.cachedLLMResponse(key: "key1") != nil)

        // A shard run on other inputs is refused.
        let other = try JobStore(path: dir.file("other.sqlite"))
        try other.verifyInputs([InputFingerprint(role: "sae_weights", path: "w", size: 1, sha256: "zzz")])
        #expect(throws: SAELabelError.self) { _ = try merged.merge(shardAt: other.path) }
    }
}
