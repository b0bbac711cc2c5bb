import Foundation
import GRDB
import SAELabelCore

/// What `saelabel prune` removed.
public struct PruneSummary: Sendable, Equatable {
    public var responsesDropped: Int
    public var responsesKept: Int
    public var rawResponsesCleared: Int
    /// Text windows no example showed any more (left by re-collected and merged-over features).
    public var windowsDropped: Int
    public var bytesBefore: Int64
    public var bytesAfter: Int64
}

extension JobStore {
    /// Drops what finished work no longer needs, then VACUUMs: cached LLM answers whose every call
    /// belongs to work the store already holds (an explanation of the current pass; the scores of a
    /// feature in state `scored`), the raw explainer answers of old passes (their labels stay), and the
    /// text windows no example shows.
    /// Every label and score is kept. Answers of unfinished work (features not yet explained or
    /// scored, failed ones, calls not tied to one feature, answers without a logged call) stay, so a
    /// resumed run still pays nothing twice.
    public func prune() throws(SAELabelError) -> PruneSummary {
        let before = fileBytes()
        var result = (dropped: 0, kept: 0, cleared: 0, windows: 0)
        // A cache that holds the pages the deletes touch, so each is written to the WAL once (as collect's
        // commits), and freed pages left as they are (secure_delete 2 = FAST): Debian builds SQLite with
        // SECURE_DELETE, which writes zeros over every freed page; the VACUUM below rewrites the file anyway,
        // so no deleted answer stays in it.
        try withWriterPragma("secure_delete", 2) { () throws(SAELabelError) in
        try withBlockSizedCache(kib: Self.blockCacheKiB) { () throws(SAELabelError) in result = try write { db -> (Int, Int, Int, Int) in
            let currentPass = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'")
            var explainedNow = Set<Int>()
            if let currentPass {
                explainedNow = Set(try Int.fetchAll(db, sql: "SELECT feature FROM explanation WHERE pass = ?", arguments: [currentPass]))
            }
            let scored = Set(try Int.fetchAll(db, sql: "SELECT id FROM feature WHERE state = 'scored'"))
            var needed = Set<String>()
            var finished = Set<String>()
            let calls = try Row.fetchCursor(db, sql: """
                SELECT DISTINCT c.key, c.tag FROM llm_call c JOIN llm_response r ON r.key = c.key
                """)
            while let row = try calls.next() {
                let key: String = row["key"]
                let tag: String = row["tag"]
                if Self.callIsFinished(tag: tag, explainedNow: explainedNow, scored: scored) {
                    finished.insert(key)
                } else {
                    needed.insert(key)
                }
            }
            let drop = finished.subtracting(needed)
            let total = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM llm_response") ?? 0
            try Self.deleteResponses(db, drop, total: total)
            let kept = total - drop.count  // every key in `drop` came from a row of llm_response (the join above)
            var cleared = 0
            if let currentPass {
                try db.execute(sql: "UPDATE explanation SET raw_response = NULL WHERE pass <> ? AND raw_response IS NOT NULL",
                               arguments: [currentPass])
                cleared = db.changesCount
            }
            return (drop.count, kept, cleared, try TextWindows.dropUnreferenced(db))
        } }
        }
        let (dropped, kept, cleared, windows) = result
        do {
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "VACUUM")
                try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)")
            }
        } catch {
            throw Self.wrap(error)
        }
        return PruneSummary(responsesDropped: dropped, responsesKept: kept, rawResponsesCleared: cleared, windowsDropped: windows,
                            bytesBefore: before, bytesAfter: fileBytes())
    }

    /// Deletes the cached answers under `keys`. Deleting most of the table row by row rewrites nearly every page
    /// of it (then VACUUM writes the rest again): at 16,384 features prune wrote 3.9× the store, and at 131,072 it
    /// did not finish in 8 minutes. When at least half the rows go, the kept ones are set aside, the table is
    /// emptied in one step (SQLite frees its pages without visiting the rows) and they are put back.
    /// Otherwise the keys are deleted in key order, so each page of the table is visited once.
    static func deleteResponses(_ db: Database, _ keys: Set<String>, total: Int) throws {
        guard !keys.isEmpty else { return }
        let ordered = keys.sorted()
        guard keys.count * 2 >= total else {
            let statement = try db.makeStatement(sql: "DELETE FROM llm_response WHERE key = ?")
            for key in ordered { try statement.execute(arguments: [key]) }
            return
        }
        try db.execute(sql: "CREATE TEMP TABLE pruned_key(key TEXT PRIMARY KEY) WITHOUT ROWID")
        defer { try? db.execute(sql: "DROP TABLE IF EXISTS temp.pruned_key") }
        let mark = try db.makeStatement(sql: "INSERT INTO temp.pruned_key(key) VALUES (?)")
        for key in ordered { try mark.execute(arguments: [key]) }
        try db.execute(sql: "CREATE TEMP TABLE kept_response AS SELECT * FROM llm_response WHERE key NOT IN (SELECT key FROM temp.pruned_key)")
        defer { try? db.execute(sql: "DROP TABLE IF EXISTS temp.kept_response") }
        try db.execute(sql: "DELETE FROM llm_response")
        try db.execute(sql: "INSERT INTO llm_response SELECT * FROM temp.kept_response ORDER BY key")
    }

    /// Whether the call with this tag served work the store holds. Tags are "explain:F" and
    /// "<scorer step>:F:…"; anything else (e.g. "simulate:probe") is not tied to one feature.
    static func callIsFinished(tag: String, explainedNow: Set<Int>, scored: Set<Int>) -> Bool {
        let parts = tag.split(separator: ":", maxSplits: 2)
        guard parts.count >= 2, let feature = Int(parts[1]) else { return false }
        return parts[0] == "explain" ? explainedNow.contains(feature) : scored.contains(feature)
    }

    /// Size of the database file with its WAL.
    func fileBytes() -> Int64 {
        [path, path + "-wal"].reduce(Int64(0)) { total, file in
            let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.int64Value ?? 0
            return total + size
        }
    }
}
