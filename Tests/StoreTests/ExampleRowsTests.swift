import Foundation
import GRDB
import SAELabelCore
@testable import SAELabelStore
import TestSupport
import Testing

/// Collect's bulk insert (multi-row statements bound in place) stores each example's text exactly as the
/// per-row JSON writers print it, in order, and re-collecting replaces a feature's earlier rows.
@Suite struct ExampleRowsTests {
    /// Activation text as the store has always written it: shortest decimal, 0 for zero and non-finite values.
    func expectedActivations(_ values: [Float]) -> String {
        "[" + values.map { $0 == 0 || !$0.isFinite ? "0" : "\($0)" }.joined(separator: ",") + "]"
    }

    func feature(_ index: Int, explain: Int, heldout: Int, salt: Float) -> CollectedFeature {
        // Windows 0 and 1 share a place: the first repeats, the second changes its tokens (the token text
        // cache must only be reused for equal tokens).
        func window(_ number: Int, split: Int) -> ActivationWindow {
            let place = number % 5
            let tokens = number == 1 ? ["other", "\"q\""] : ["é日本🙂", "\n", "w\(place)", "<b>"]
            let activations: [Float] = [0, salt * Float(number + 1), -0.0, 1e-7 * Float(split + 1), Float.infinity]
            return ActivationWindow(tokens: tokens, activations: activations, kind: number % 3 == 0 ? .top : .random,
                                    sequence: place == 1 ? 0 : place, start: 0)
        }
        return CollectedFeature(index: index, state: .collected,
                                statistics: FeatureStatistics(frequency: 0.5, maxActivation: 2, meanActivation: 1,
                                                              activatingTokens: 3, activatingWindows: 2, histogram: [1]),
                                explain: (0..<explain).map { window($0, split: 0) },
                                heldout: (0..<heldout).map { window($0, split: 1) })
    }

    func storedRows(_ path: String) throws -> [String] {
        let queue = try DatabaseQueue(path: path)
        return try queue.read { db in
            try Row.fetchAll(db, sql: """
                SELECT e.*, w.sequence, w.start, w.tokens FROM example e JOIN text_window w ON w.id = e.text_window
                ORDER BY e.feature, e.split, e.ordinal
                """).map { row in
                let feature: Int = row["feature"], split: String = row["split"], ordinal: Int = row["ordinal"]
                let kind: String = row["kind"], sequence: Int = row["sequence"], start: Int = row["start"]
                let tokens: String = row["tokens"], activations: String = row["activations"]
                return "\(feature) \(split) \(ordinal) \(kind) \(sequence):\(start) \(tokens) \(activations)"
            }
        }
    }

    func expectedRows(_ features: [CollectedFeature]) -> [String] {
        features.sorted { $0.index < $1.index }.flatMap { feature in
            [(ExampleSplit.explain, feature.explain), (.heldout, feature.heldout)].flatMap { split, windows in
                windows.enumerated().map { ordinal, window in
                    "\(feature.index) \(split.rawValue) \(ordinal) \(window.kind.rawValue) \(window.sequence):\(window.start) "
                        + "\(CompactJSON.strings(window.tokens)) \(expectedActivations(window.activations))"
                }
            }
        }
    }

    @Test func bulkRowsHoldThePerRowTextAndReplaceEarlierRows() throws {
        let dir = TempDirectory()
        let path = dir.file("job.sqlite")
        let store = try JobStore(path: path)
        // 45 + 30 rows cross several 32-row statements and end on a partial one; feature 3 comes twice in one
        // call (the second replaces the first, whose rows may still be buffered).
        let first = [feature(3, explain: 45, heldout: 30, salt: 1.5), feature(1, explain: 2, heldout: 1, salt: 0.25),
                     feature(3, explain: 33, heldout: 2, salt: 3.75)]
        try store.saveCollected(first)
        let afterFirst = [first[1], first[2]]
        #expect(try storedRows(path) == expectedRows(afterFirst))
        #expect(try store.examples(feature: 3, split: .explain).map(\.window.tokens) == first[2].explain.map(\.tokens))

        // A later call re-collecting feature 1 with more windows replaces its rows, leaving feature 3's.
        let again = feature(1, explain: 40, heldout: 0, salt: 0.5)
        try store.saveCollected([again])
        #expect(try storedRows(path) == expectedRows([again, first[2]]))
    }

    /// A collect commit raises the writer's page cache to hold its block, and gives the memory back after.
    @Test func aCollectCommitGivesItsPageCacheBack() throws {
        let dir = TempDirectory()
        let store = try JobStore(path: dir.file("job.sqlite"))
        func writerCacheSize() throws -> Int? {
            try store.pool.writeWithoutTransaction { try Int.fetchOne($0, sql: "PRAGMA cache_size") }
        }
        let before = try writerCacheSize()
        #expect(before != -JobStore.blockCacheKiB)
        var commit = CollectCommit()
        commit.features = [feature(2, explain: 3, heldout: 1, salt: 1)]
        try store.commitCollect(commit)
        #expect(try writerCacheSize() == before)
        #expect(try store.examples(feature: 2).count == 4)
    }
}
