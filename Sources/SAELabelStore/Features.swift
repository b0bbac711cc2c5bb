import Foundation
import GRDB
import SAELabelCore

/// One example window as stored.
public struct StoredExample: Sendable, Equatable {
    public var split: ExampleSplit
    public var ordinal: Int
    public var window: ActivationWindow
}

/// The feature row as stored.
public struct FeatureRecord: Sendable, Equatable {
    public var index: Int
    public var state: FeatureState
    public var failedStage: String?
    public var failureReason: String?
    public var attempts: Int
    public var note: String?
    public var statistics: FeatureStatistics?
}

extension JobStore {
    /// Adds `pending` rows for features not yet in the store; existing rows are left as they are.
    public func registerFeatures(_ indices: [Int]) throws(SAELabelError) {
        try write { db in
            let now = Date()
            for index in indices {
                try db.execute(sql: "INSERT OR IGNORE INTO feature(id, state, updated_at) VALUES (?, 'pending', ?)",
                               arguments: [index, now])
            }
        }
    }

    /// Stores one feature's statistics and examples and moves it to its collected state, atomically.
    /// Re-collecting a feature replaces its examples (the explain/held-out split is reproducible from the seed).
    public func saveCollected(_ feature: CollectedFeature) throws(SAELabelError) {
        try saveCollected([feature])
    }

    /// Stores several features in one transaction.
    public func saveCollected(_ features: [CollectedFeature]) throws(SAELabelError) {
        try write { db in _ = try Self.saveCollected(db, features) }
    }

    /// Writes one block of collect in one transaction: with the first block, the run's input fingerprints,
    /// settings and pending rows; with every block, its features' examples and states and the job settings.
    /// Nothing of a collect run reaches the store before its first block streamed the whole corpus (which
    /// checks every included activation), so a bad input found while streaming leaves the store unchanged.
    /// The foreign keys are off for the commit: its only child rows are examples, each written right after
    /// its feature row is upserted in the same transaction, and checking it cost a `feature` lookup per example.
    /// With `commit.storedWindows`, the windows this commit stored are added to it once the transaction committed.
    public func commitCollect(_ commit: CollectCommit) throws(SAELabelError) {
        var resolved: [TextWindowPlace: ResolvedWindow] = [:]
        try withBlockSizedCache(kib: commit.pageCacheKiB) { () throws(SAELabelError) in
            try withWriterPragma("foreign_keys", 0) { () throws(SAELabelError) in
                try write { db in
                    try Self.reconcileInputs(db, commit.inputs, acceptChanges: commit.acceptChangedInputs, record: true)
                    for (key, value) in commit.settings.sorted(by: { $0.key < $1.key }) { try Self.setSetting(db, key, value) }
                    let now = Date()
                    if commit.bumpInputVersion {
                        try Self.bumpInputVersion(db)
                        try Self.forgetCollectedExamples(db, now: now)
                    }
                    for index in commit.register {
                        try db.execute(sql: "INSERT OR IGNORE INTO feature(id, state, updated_at) VALUES (?, 'pending', ?)", arguments: [index, now])
                    }
                    // A new version's commit has just deleted every window row: none is known any more.
                    let known = commit.bumpInputVersion ? [:] : commit.storedWindows?.known ?? [:]
                    resolved = try Self.saveCollected(db, commit.features, knownWindows: known)
                }
            }
        }
        commit.storedWindows?.adopt(resolved)
    }

    /// Runs `body` (one block's commit) with a writer page cache that holds the whole block (≈ 50 MB for 3,072
    /// features × 35 example rows), so the commit writes each page to the WAL once, then gives the memory back.
    /// With SQLite's default 2 MB cache the pager spilled part-way and wrote and re-read most pages: 907k
    /// `pwrite` and 193k `pread` calls for 24,576 features instead of 296k and 99k (`strace -c`).
    /// `kib` caps it: collect passes a share of its memory budget, so a small budget is not exceeded by the cache.
    func withBlockSizedCache(kib: Int, _ body: () throws(SAELabelError) -> Void) throws(SAELabelError) {
        try withWriterPragma("cache_size", -max(2048, kib), body)
    }

    /// Runs `body` with the integer `PRAGMA name = value` on the pool's writer connection, then restores the
    /// previous value (the writer connection is reused by later writes).
    func withWriterPragma(_ name: String, _ value: Int, _ body: () throws(SAELabelError) -> Void) throws(SAELabelError) {
        let previous: Int?
        do {
            previous = try pool.writeWithoutTransaction { db in
                let previous = try Int.fetchOne(db, sql: "PRAGMA \(name)")
                try db.execute(sql: "PRAGMA \(name) = \(value)")
                return previous
            }
        } catch { throw Self.wrap(error) }
        defer { if let previous { try? pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA \(name) = \(previous)") } } }
        try body()
    }

    public static let blockCacheKiB = 128 * 1024

    /// A new input version: every feature's windows and statistics describe the previous SAE version, so all of
    /// them go back to `pending` with no examples, not only the features this run collects. Otherwise a feature
    /// outside this run's range would keep the old version's windows and a later run (or `saelabel explain`)
    /// would label them as the new version's. Labels and scores of earlier passes stay (carry-over reads them).
    static func forgetCollectedExamples(_ db: Database, now: Date) throws {
        try db.execute(sql: "DELETE FROM example")
        try db.execute(sql: "DELETE FROM text_window")
        try db.execute(sql: """
            UPDATE feature SET state = 'pending', note = NULL, frequency = NULL, max_activation = NULL,
                mean_activation = NULL, activating_tokens = NULL, activating_windows = NULL, histogram = NULL,
                failed_stage = NULL, failure_reason = NULL, attempts = 0, updated_at = ?
            """, arguments: [now])
    }

    /// The feature rows go through one prepared upsert; the example rows, ~35 per feature, through
    /// `ExampleRowWriter`'s multi-row inserts (see there for why).
    /// `knownWindows` are windows already stored (their rows are not looked up again); returns them with the
    /// windows this call stored or found.
    @discardableResult
    static func saveCollected(_ db: Database, _ features: [CollectedFeature],
                              knownWindows: [TextWindowPlace: ResolvedWindow] = [:]) throws -> [TextWindowPlace: ResolvedWindow] {
        // Formatted once: converting a Date per row was most of the upsert's argument cost.
        let now = Date().databaseValue
        let upsert = try db.cachedStatement(sql: """
            INSERT INTO feature(id, state, note, frequency, max_activation, mean_activation, activating_tokens,
                                activating_windows, histogram, updated_at, failed_stage, failure_reason)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)
            ON CONFLICT(id) DO UPDATE SET state = excluded.state, note = excluded.note,
                frequency = excluded.frequency, max_activation = excluded.max_activation,
                mean_activation = excluded.mean_activation, activating_tokens = excluded.activating_tokens,
                activating_windows = excluded.activating_windows, histogram = excluded.histogram,
                updated_at = excluded.updated_at, failed_stage = NULL, failure_reason = NULL
            """)
        let examples = try ExampleRowWriter(db, knownWindows: knownWindows)
        for feature in features {
            let stats = feature.statistics
            try upsert.execute(arguments: [feature.index, feature.state.rawValue, feature.note, stats.frequency,
                                           Double(stats.maxActivation), Double(stats.meanActivation), stats.activatingTokens,
                                           stats.activatingWindows, CompactJSON.integers(stats.histogram), now])
            try examples.removeExamples(of: feature.index)
            for (split, windows) in [(ExampleSplit.explain, feature.explain), (.heldout, feature.heldout)] {
                for (ordinal, window) in windows.enumerated() {
                    try examples.append(feature: feature.index, split: split, ordinal: ordinal, window: window)
                }
            }
        }
        try examples.flush()
        return examples.resolvedWindows
    }

    public func examples(feature: Int, split: ExampleSplit? = nil) throws(SAELabelError) -> [StoredExample] {
        try read { db in
            var sql = "SELECT \(TextWindows.exampleColumns) FROM \(TextWindows.examplesJoined) WHERE e.feature = ?"
            var arguments: StatementArguments = [feature]
            if let split {
                sql += " AND e.split = ?"
                arguments += [split.rawValue]
            }
            sql += " ORDER BY e.split, e.ordinal"
            let decoder = JSONDecoder()
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map { try Self.example($0, decoder: decoder) }
        }
    }

    /// One `example` row as stored.
    static func example(_ row: Row, decoder: JSONDecoder) throws -> StoredExample {
        let tokensText: String = row["tokens"]
        let activationsText: String = row["activations"]
        let window = ActivationWindow(
            tokens: try decoder.decode([String].self, from: Data(tokensText.utf8)),
            activations: try decoder.decode([Float].self, from: Data(activationsText.utf8)),
            kind: ExampleKind(rawValue: row["kind"]) ?? .top,
            sequence: row["sequence"], start: row["start"])
        return StoredExample(split: ExampleSplit(rawValue: row["split"]) ?? .explain, ordinal: row["ordinal"], window: window)
    }

    /// Feature indices in `state` (ascending), optionally restricted to a selection.
    public func features(in states: [FeatureState], selection: FeatureSelection = .all) throws(SAELabelError) -> [Int] {
        let placeholders = states.map { _ in "?" }.joined(separator: ",")
        let ids = try read { db in
            try Int.fetchAll(db, sql: "SELECT id FROM feature WHERE state IN (\(placeholders)) ORDER BY id",
                             arguments: StatementArguments(states.map(\.rawValue)))
        }
        return ids.filter(selection.contains)
    }

    public func feature(_ index: Int) throws(SAELabelError) -> FeatureRecord? {
        try read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM feature WHERE id = ?", arguments: [index]).map(Self.featureRecord)
        }
    }

    /// Every feature row, in index order, for exports; `body` is called per row so memory stays flat.
    public func forEachFeature(selection: FeatureSelection = .all, _ body: (FeatureRecord) throws -> Void) throws(SAELabelError) {
        try read { db in
            let cursor = try Row.fetchCursor(db, sql: "SELECT * FROM feature ORDER BY id")
            while let row = try cursor.next() {
                let record = Self.featureRecord(row)
                if selection.contains(record.index) { try body(record) }
            }
        }
    }

    /// A compact JSON array of integers as CompactJSON writes it (`[3,0,-1]`), read without Foundation:
    /// a JSONDecoder per feature cost the 131k exports ~2 s. Nil for any other text (the caller decodes it).
    static func integers(_ text: String) -> [Int]? {
        var text = text
        return text.withUTF8 { bytes -> [Int]? in
            guard bytes.count >= 2, bytes.first == UInt8(ascii: "["), bytes.last == UInt8(ascii: "]") else { return nil }
            var values: [Int] = []
            var value = 0, digits = 0, negative = false
            func finishNumber() -> Bool {
                guard digits > 0 else { return false }
                values.append(negative ? -value : value)
                value = 0; digits = 0; negative = false
                return true
            }
            if bytes.count == 2 { return values }
            for byte in bytes[1..<bytes.count - 1] {
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"):
                    // No leading zeros, and at most 18 digits so the value cannot overflow.
                    guard !(digits == 1 && value == 0), digits < 18 else { return nil }
                    value = value * 10 + Int(byte - UInt8(ascii: "0"))
                    digits += 1
                case UInt8(ascii: "-") where digits == 0 && !negative:
                    negative = true
                case UInt8(ascii: ","):
                    guard finishNumber() else { return nil }
                default:
                    return nil
                }
            }
            return finishNumber() ? values : nil
        }
    }

    static func featureRecord(_ row: Row) -> FeatureRecord {
        var statistics: FeatureStatistics?
        if let frequency: Double = row["frequency"] {
            let histogramText: String = row["histogram"] ?? "[]"
            statistics = FeatureStatistics(
                frequency: frequency,
                maxActivation: Float(row["max_activation"] as Double? ?? 0),
                meanActivation: Float(row["mean_activation"] as Double? ?? 0),
                activatingTokens: row["activating_tokens"] ?? 0,
                activatingWindows: row["activating_windows"] ?? 0,
                histogram: Self.integers(histogramText) ?? (try? JSONDecoder().decode([Int].self, from: Data(histogramText.utf8))) ?? [])
        }
        return FeatureRecord(index: row["id"], state: FeatureState(rawValue: row["state"]) ?? .pending,
                             failedStage: row["failed_stage"], failureReason: row["failure_reason"],
                             attempts: row["attempts"], note: row["note"], statistics: statistics)
    }

    /// Marks a feature failed at `stage`; `attempts` counts failures so a later run can retry it.
    public func markFailed(feature: Int, stage: String, reason: String) throws(SAELabelError) {
        try write { db in
            try db.execute(sql: """
                UPDATE feature SET state = 'failed', failed_stage = ?, failure_reason = ?, attempts = attempts + 1, updated_at = ?
                WHERE id = ?
                """, arguments: [stage, reason, Date(), feature])
        }
    }

    /// Failed features go back to the state before their failed stage so the next run retries them.
    public func requeueFailed() throws(SAELabelError) {
        try write { db in
            try db.execute(sql: "UPDATE feature SET state = 'collected' WHERE state = 'failed' AND failed_stage = 'explain'")
            try db.execute(sql: "UPDATE feature SET state = 'explained' WHERE state = 'failed' AND failed_stage = 'score'")
            try db.execute(sql: "UPDATE feature SET state = 'pending' WHERE state = 'failed' AND failed_stage = 'collect'")
        }
    }

    public func setState(feature: Int, _ state: FeatureState) throws(SAELabelError) {
        try write { db in
            try db.execute(sql: "UPDATE feature SET state = ?, updated_at = ? WHERE id = ?", arguments: [state.rawValue, Date(), feature])
        }
    }
}

/// One committed block of a collect run (see `JobStore.commitCollect`).
public struct CollectCommit: Sendable {
    /// Fingerprints to record (first block only); changed ones replace the old when `acceptChangedInputs`.
    public var inputs: [InputFingerprint] = []
    public var acceptChangedInputs = false
    public var settings: [String: String] = [:]
    /// Features to add as `pending` rows when absent.
    public var register: [Int] = []
    /// A new version: the input version (part of the pass identity) goes up with the first commit, and every
    /// feature's old examples are dropped with it (all return to `pending`), so a refused or killed run leaves the
    /// old version, its pass and its examples untouched.
    public var bumpInputVersion = false
    public var features: [CollectedFeature] = []
    /// The most page cache (KiB) the commit may hold the block in (`JobStore.withBlockSizedCache`).
    public var pageCacheKiB = JobStore.blockCacheKiB
    /// The windows the run's earlier commits stored; this commit reuses their rows and adds its own.
    public var storedWindows: StoredWindows?

    public init() {}
}
