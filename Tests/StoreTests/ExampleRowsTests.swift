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
        // Feature 3's rows cross a statement boundary (a full statement and a partial one); it comes twice in one
        // call (the second replaces the first, whose rows may still be buffered). Its windows show a place with
        // three different token lists (window numbers 0, 1 and 6).
        let perStatement = ExampleRowWriter.rowsPerStatement
        let first = [feature(3, explain: perStatement + 13, heldout: 30, salt: 1.5), feature(1, explain: 2, heldout: 1, salt: 0.25),
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

    /// A collect commit raises the writer's page cache to hold its block and turns its foreign-key checks off,
    /// and gives both back after: later writes (which may delete features) check and cascade again.
    @Test func aCollectCommitGivesItsPageCacheAndForeignKeysBack() throws {
        let dir = TempDirectory()
        let store = try JobStore(path: dir.file("job.sqlite"))
        func writerPragma(_ name: String) throws -> Int? {
            try store.pool.writeWithoutTransaction { try Int.fetchOne($0, sql: "PRAGMA \(name)") }
        }
        let before = try writerPragma("cache_size")
        #expect(before != -JobStore.blockCacheKiB)
        #expect(try writerPragma("foreign_keys") == 1)
        var commit = CollectCommit()
        commit.features = [feature(2, explain: 3, heldout: 1, salt: 1)]
        try store.commitCollect(commit)
        #expect(try writerPragma("cache_size") == before)
        #expect(try writerPragma("foreign_keys") == 1)
        #expect(try store.examples(feature: 2).count == 4)
        // The commit left no example without its feature.
        let orphans = try store.pool.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM pragma_foreign_key_check('example')") }
        #expect(orphans == 0)
    }

    /// `appendFloats` writes exactly `Float.description` (0 for zero and non-finite values), whatever the value:
    /// its longest forms, powers of ten, both sides of each switch between decimal and exponential form,
    /// subnormals, and random bit patterns, in windows of several lengths.
    @Test func floatTextIsFloatDescription() {
        var values: [Float] = [.greatestFiniteMagnitude, .leastNormalMagnitude, .leastNormalMagnitude.nextDown, .leastNonzeroMagnitude,
                               .ulpOfOne, 1, 16_777_216, 16_777_215, 16_777_218, 1e-4, 1e-5, 0.00012345678, 123_456.79, .nan,
                               .infinity, -0.0]
        for exponent in -45...38 {
            let power = Float("1e\(exponent)")!
            values += [power, power.nextUp, power.nextDown]
        }
        for bits in stride(from: UInt32(1), through: 0x007F_FFFF, by: 4099) { values.append(Float(bitPattern: bits)) }
        var generator = SplitMix64(state: 17)
        for _ in 0..<200_000 { values.append(Float(bitPattern: UInt32(truncatingIfNeeded: generator.next()))) }
        values += values.map { -$0 }
        var start = 0, length = 1
        while start < values.count {
            let window = Array(values[start..<min(values.count, start + length)])
            var bytes: [UInt8] = [7]
            CompactJSON.appendFloats(window, to: &bytes)
            #expect(bytes == [7] + Array(expectedActivations(window).utf8), "values \(window)")
            start += length
            length = length % 97 + 1
        }
    }
}
