import Foundation
import GRDB
import SAELabelCore
@testable import SAELabelStore
import TestSupport
import Testing

/// Each text window's tokens are stored once (`text_window`): examples that show one window share its row,
/// merge remaps a shard's window ids, prune drops the windows no example shows.
@Suite struct TextWindowTests {
    static let statistics = FeatureStatistics(frequency: 0.1, maxActivation: 2, meanActivation: 1, activatingTokens: 3,
                                              activatingWindows: 2, histogram: [1])

    func feature(_ index: Int, _ windows: [ActivationWindow]) -> CollectedFeature {
        CollectedFeature(index: index, state: .collected, statistics: Self.statistics, explain: windows, heldout: [])
    }

    func textWindow(_ tokens: [String], sequence: Int, start: Int = 0) -> ActivationWindow {
        ActivationWindow(tokens: tokens, activations: tokens.indices.map { Float($0) }, kind: .top, sequence: sequence, start: start)
    }

    func windowCount(_ path: String) throws -> Int {
        try DatabaseQueue(path: path).read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM text_window") ?? -1 }
    }

    func examples(_ store: JobStore, _ features: [Int]) throws -> [[StoredExample]] {
        try features.map { try store.examples(feature: $0) }
    }

    @Test func examplesShowingOneWindowShareItsRowAcrossCommits() throws {
        let dir = TempDirectory()
        let path = dir.file("job.sqlite")
        let store = try JobStore(path: path)
        let a = textWindow(["a", " b"], sequence: 0), b = textWindow(["c"], sequence: 1)
        // Same place as `a`, other tokens: a window of its own.
        let c = textWindow(["other"], sequence: 0)
        try store.saveCollected([feature(0, [a, b]), feature(1, [b, a, c])])
        // A later commit (a new writer) finds the windows already stored.
        try store.saveCollected([feature(2, [a, c])])
        #expect(try windowCount(path) == 3)
        #expect(try store.examples(feature: 1).map(\.window) == [b, a, c])
        #expect(try store.examples(feature: 2).map(\.window) == [a, c])
    }

    @Test func mergeRemapsShardWindowsAndStoresOverlappingOnesOnce() throws {
        let dir = TempDirectory()
        let shared = textWindow(["the", " cat"], sequence: 4, start: 8)
        let features = [0: [shared, textWindow(["x"], sequence: 1)],
                        1: [textWindow(["y"], sequence: 2), shared],
                        2: [shared, textWindow(["z"], sequence: 1), textWindow(["w"], sequence: 1)],
                        3: [textWindow(["v"], sequence: 9)]]
        var shards: [String] = []
        for (shard, indices) in [[0, 2], [1, 3]].enumerated() {
            let path = dir.file("shard-\(shard).sqlite")
            let store = try JobStore(path: path)
            try store.verifyInputs([InputFingerprint(role: "sae_weights", path: "w", size: 1, sha256: "abc")])
            try store.saveCollected(indices.map { feature($0, features[$0]!) })
            shards.append(path)
        }
        let mergedPath = dir.file("merged.sqlite")
        let merged = try JobStore(path: mergedPath)
        // The merged store numbers its windows from its own earlier rows, so the shards' ids do not carry over.
        try merged.saveCollected([feature(7, [textWindow(["own"], sequence: 5), textWindow(["own2"], sequence: 6)])])
        for shard in shards + shards { _ = try merged.merge(shardAt: shard) }

        for (index, windows) in features {
            #expect(try merged.examples(feature: index).map(\.window) == windows, "feature \(index)")
        }
        // shared, x, y, z, w, v and the two of feature 7.
        #expect(try windowCount(mergedPath) == 8)
    }

    @Test func pruneDropsOnlyWindowsNoExampleShows() throws {
        let dir = TempDirectory()
        let path = dir.file("job.sqlite")
        let store = try JobStore(path: path)
        let a = textWindow(["a"], sequence: 0), b = textWindow(["b"], sequence: 1), c = textWindow(["c"], sequence: 2)
        try store.saveCollected([feature(0, [a, b]), feature(1, [a])])
        // Re-collecting feature 0 leaves `b` shown by no example; `a` is still feature 1's.
        try store.saveCollected([feature(0, [c])])
        #expect(try windowCount(path) == 3)
        let before = try examples(store, [0, 1])
        store.close()
        let summary = try JobStore.prune(path: path)
        #expect(summary.windowsDropped == 1)
        #expect(try windowCount(path) == 2)
        #expect(try examples(try JobStore(path: path), [0, 1]) == before)
        #expect(try JobStore.prune(path: path).windowsDropped == 0)
    }

    @Test func aNewInputVersionDropsEveryWindowWithTheExamples() throws {
        let dir = TempDirectory()
        let path = dir.file("job.sqlite")
        let store = try JobStore(path: path)
        try store.saveCollected([feature(0, [textWindow(["a"], sequence: 0)])])
        var commit = CollectCommit()
        commit.bumpInputVersion = true
        commit.features = [feature(1, [textWindow(["b"], sequence: 3)])]
        try store.commitCollect(commit)
        #expect(try store.examples(feature: 0).isEmpty)
        #expect(try windowCount(path) == 1)
    }

    func commit(_ store: JobStore, _ features: [CollectedFeature], windows: StoredWindows, bump: Bool = false) throws(SAELabelError) {
        var commit = CollectCommit()
        commit.features = features
        commit.storedWindows = windows
        commit.bumpInputVersion = bump
        try store.commitCollect(commit)
    }

    /// A later block reuses the rows of windows earlier blocks committed; a commit that rolls back adds none of
    /// its windows to the memo, so no later example names a row that was never stored.
    @Test func laterCommitsReuseCommittedWindowsAndNeverARolledBackOne() throws {
        let dir = TempDirectory()
        let path = dir.file("job.sqlite")
        let store = try JobStore(path: path)
        let windows = StoredWindows(capacityTokens: 100)
        let a = textWindow(["a", " b"], sequence: 0), b = textWindow(["c"], sequence: 1, start: 4)
        try commit(store, [feature(0, [a, b])], windows: windows)
        #expect(windows.count == 2 && windows.tokenCount == 3)
        #expect(windows.tokens(sequence: 1, start: 4, length: 1) == ["c"])
        #expect(windows.tokens(sequence: 1, start: 4, length: 2) == nil, "another length is another window")

        // Feature 99's example rows are refused, after feature 1's new window row was inserted: all rolls back.
        try DatabaseQueue(path: path).write { db in
            try db.execute(sql: """
                CREATE TRIGGER refuse_99 BEFORE INSERT ON example WHEN NEW.feature = 99
                BEGIN SELECT RAISE(ABORT, 'injected fault'); END
                """)
        }
        let fresh = textWindow(["new"], sequence: 2, start: 8)
        #expect(throws: SAELabelError.self) { try commit(store, [feature(1, [fresh, a]), feature(99, [b])], windows: windows) }
        #expect(windows.count == 2 && windows.tokens(sequence: 2, start: 8, length: 1) == nil)
        #expect(try windowCount(path) == 2)

        try commit(store, [feature(2, [fresh, a]), feature(3, [b, a])], windows: windows)
        #expect(try store.examples(feature: 2).map(\.window) == [fresh, a])
        #expect(try store.examples(feature: 3).map(\.window) == [b, a])
        #expect(try windowCount(path) == 3)
        #expect(windows.count == 3)
    }

    /// A new version's commit deletes every window row: windows the memo knew are stored again, not named by a
    /// deleted id.
    @Test func aNewVersionsCommitStoresKnownWindowsAgain() throws {
        let dir = TempDirectory()
        let path = dir.file("job.sqlite")
        let store = try JobStore(path: path)
        let windows = StoredWindows(capacityTokens: 100)
        let a = textWindow(["a"], sequence: 0)
        try commit(store, [feature(0, [a])], windows: windows)
        try commit(store, [feature(1, [a])], windows: windows, bump: true)
        #expect(try store.examples(feature: 1).map(\.window) == [a])
        #expect(try windowCount(path) == 1)
        try commit(store, [feature(2, [a])], windows: windows)
        #expect(try store.examples(feature: 2).map(\.window) == [a])
        #expect(try windowCount(path) == 1)
    }

    /// Past its capacity (in tokens) the memo empties; later commits look windows up again and store the same.
    @Test func aFullMemoEmptiesAndLaterCommitsStillFindTheirWindows() throws {
        let dir = TempDirectory()
        let path = dir.file("job.sqlite")
        let store = try JobStore(path: path)
        let windows = StoredWindows(capacityTokens: 3)
        let a = textWindow(["a", " b"], sequence: 0), b = textWindow(["c"], sequence: 1), c = textWindow(["d"], sequence: 2)
        try commit(store, [feature(0, [a, b])], windows: windows)
        #expect(windows.count == 2 && windows.tokenCount == 3)
        try commit(store, [feature(1, [c, a])], windows: windows)
        #expect(windows.count == 0 && windows.tokenCount == 0)
        try commit(store, [feature(2, [b, c, a])], windows: windows)
        #expect(try store.examples(feature: 2).map(\.window) == [b, c, a])
        #expect(try windowCount(path) == 3)
    }
}
