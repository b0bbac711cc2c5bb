import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport
import Testing

@Suite struct PruneTests {
    /// Every label and score of every feature, in a comparable form.
    func labelsAndScores(_ store: JobStore, features: [Int]) throws -> [String] {
        var rows: [String] = []
        for feature in features {
            for explanation in try store.explanations(feature: feature) {
                rows.append("\(feature) \(explanation.pass) \(explanation.text) \(explanation.explainerModel)")
                for score in try store.scores(explanation: explanation) {
                    rows.append("  \(score.scorer) \(String(describing: score.value)) \(score.model) \(score.details)")
                }
            }
        }
        return rows
    }

    func cache(_ store: JobStore, key: String, tags: [String], bytes: Int = 64) throws {
        try store.storeLLMResponse(key: key, body: Data(repeating: UInt8(ascii: "x"), count: bytes))
        for tag in tags {
            try store.recordLLMCall(key: key, endpoint: "http://127.0.0.1:1/v1", model: "m", tag: tag, promptTokens: 1,
                                    completionTokens: 1, latencySeconds: 0.1, outcome: "ok", attempt: 1)
        }
    }

    /// `pendingAnswers` extra answers of unfinished work: 0 drops most of the table (set aside, emptied, put back),
    /// 200 drops under half of it (deleted key by key); both must keep exactly the same answers, byte for byte.
    @Test(arguments: [0, 200])
    func pruneDropsOnlyAnswersOfFinishedWorkAndKeepsEveryLabelAndScore(pendingAnswers: Int) throws {
        let dir = TempDirectory()
        let path = dir.file("job.sqlite")
        let store = try JobStore(path: path)
        try store.saveCollected([collected(0), collected(1), collected(2), collected(3)])
        // An old pass labeled feature 0 and kept its raw answer.
        try store.beginPass("old")
        let old = try store.saveExplanation(feature: 0, text: "old label", explainerModel: "m0", promptHash: "h0",
                                            rawResponse: String(repeating: "raw ", count: 2_000))
        try store.saveScore(explanation: old, score: StoredScore(scorer: "simulation", value: 0.5, model: "m0", promptHash: "s0",
                                                                 details: "{}"), completesFeature: true)
        // The current pass: 0 scored, 1 explained only, 2 not explained yet, 3 failed while scoring.
        try store.beginPass("now")
        let e0 = try store.saveExplanation(feature: 0, text: "label 0", explainerModel: "m", promptHash: "h", rawResponse: "r0")
        try store.saveScore(explanation: e0, score: StoredScore(scorer: "simulation", value: 0.7, model: "m", promptHash: "s",
                                                                details: "{\"a\":1}"), completesFeature: true)
        try store.saveExplanation(feature: 1, text: "label 1", explainerModel: "m", promptHash: "h", rawResponse: "r1")
        try store.saveExplanation(feature: 3, text: "label 3", explainerModel: "m", promptHash: "h", rawResponse: "r3")
        try store.markFailed(feature: 3, stage: "score", reason: "timeout")

        // Finished work: many large answers, so the file must shrink.
        try cache(store, key: "explain-0", tags: ["explain:0"], bytes: 20_000)
        for ordinal in 0..<100 { try cache(store, key: "simulate-0-\(ordinal)", tags: ["simulate:0:\(ordinal)"], bytes: 20_000) }
        try cache(store, key: "explain-1", tags: ["explain:1"])
        // Unfinished work and calls not tied to one feature stay.
        try cache(store, key: "simulate-1", tags: ["simulate:1:0", "simulate:1:0:retry"])
        try cache(store, key: "explain-2", tags: ["explain:2"])
        try cache(store, key: "detect-3", tags: ["detect:3:0"])
        try cache(store, key: "probe", tags: ["simulate:probe"])
        try cache(store, key: "shared", tags: ["explain:0", "explain:2"])
        try store.storeLLMResponse(key: "unlogged", body: Data("?".utf8))
        for ordinal in 0..<pendingAnswers {
            try store.storeLLMResponse(key: "pending-\(ordinal)", body: Data("answer \(ordinal)".utf8))
            try store.recordLLMCall(key: "pending-\(ordinal)", endpoint: "http://127.0.0.1:1/v1", model: "m",
                                    tag: "simulate:1:\(ordinal)", promptTokens: 1, completionTokens: 1, latencySeconds: 0.1,
                                    outcome: "ok", attempt: 1)
        }

        let features = [0, 1, 2, 3]
        let before = try labelsAndScores(store, features: features)
        let states = try features.map { try store.feature($0)?.state }
        store.close()
        let summary = try JobStore.prune(path: path)
        #expect(summary.compaction == .replaced)

        let reopened = try JobStore(path: path)
        #expect(try labelsAndScores(reopened, features: features) == before)
        #expect(try features.map { try reopened.feature($0)?.state } == states)
        #expect(summary.responsesDropped == 102)
        #expect(summary.rawResponsesCleared == 1)
        for key in ["simulate-1", "explain-2", "detect-3", "probe", "shared", "unlogged"] {
            #expect(reopened.cachedLLMResponse(key: key) != nil, "\(key) is needed by unfinished work")
        }
        for key in ["explain-0", "simulate-0-0", "simulate-0-99", "explain-1"] {
            #expect(reopened.cachedLLMResponse(key: key) == nil, "\(key) served finished work")
        }
        #expect(summary.responsesKept == 6 + pendingAnswers)
        #expect(reopened.cachedLLMResponse(key: "unlogged") == Data("?".utf8))
        for ordinal in [0, pendingAnswers / 2, pendingAnswers - 1] where pendingAnswers > 0 {
            #expect(reopened.cachedLLMResponse(key: "pending-\(ordinal)") == Data("answer \(ordinal)".utf8))
        }
        let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber).int64Value
        #expect(summary.bytesAfter < summary.bytesBefore)
        #expect(size < 1_000_000, "the 2 MB of dropped answers are gone from the file after VACUUM (\(size) bytes)")
    }

    /// Replacing the file under another connection would leave that connection on the old file (and SQLite's
    /// log files shared by name between the two), so prune compacts in place while one is open. Here the other
    /// connection is this process's own store; SQLite tells connections of one process apart as it does processes.
    @Test func aStoreOpenElsewhereIsCompactedInPlaceAndStaysReadable() throws {
        let dir = TempDirectory()
        let path = dir.file("job.sqlite")
        let store = try JobStore(path: path)
        try store.saveCollected([collected(0), collected(1)])
        try store.beginPass("now")
        let e0 = try store.saveExplanation(feature: 0, text: "label 0", explainerModel: "m", promptHash: "h", rawResponse: "r0")
        try store.saveScore(explanation: e0, score: StoredScore(scorer: "simulation", value: 0.7, model: "m", promptHash: "s",
                                                                details: "{}"), completesFeature: true)
        for ordinal in 0..<50 { try cache(store, key: "simulate-0-\(ordinal)", tags: ["simulate:0:\(ordinal)"], bytes: 20_000) }
        let before = try labelsAndScores(store, features: [0, 1])

        let summary = try JobStore.prune(path: path)
        #expect(summary.compaction == .inPlace(reason: "another process has the store open"))
        #expect(summary.responsesDropped == 50)
        #expect(summary.bytesAfter < summary.bytesBefore)
        // The connection that stayed open reads the compacted store, and so does a new one.
        #expect(try labelsAndScores(store, features: [0, 1]) == before)
        #expect(try labelsAndScores(try JobStore(path: path), features: [0, 1]) == before)
        #expect(!FileManager.default.fileExists(atPath: JobStore.compactionPath(store: path)))
    }
}
