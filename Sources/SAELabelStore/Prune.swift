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
        let (dropped, kept, cleared, windows) = try write { db -> (Int, Int, Int, Int) in
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
            let statement = try db.makeStatement(sql: "DELETE FROM llm_response WHERE key = ?")
            for key in drop { try statement.execute(arguments: [key]) }
            let kept = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM llm_response") ?? 0
            var cleared = 0
            if let currentPass {
                try db.execute(sql: "UPDATE explanation SET raw_response = NULL WHERE pass <> ? AND raw_response IS NOT NULL",
                               arguments: [currentPass])
                cleared = db.changesCount
            }
            return (drop.count, kept, cleared, try TextWindows.dropUnreferenced(db))
        }
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
