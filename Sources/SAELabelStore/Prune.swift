import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
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
    /// Whether the compacted store replaced the file or was rewritten in place (and why).
    public var compaction: StoreCompaction
}

extension JobStore {
    /// Prunes the store at `path`, then compacts it: drops what finished work no longer needs (`dropFinishedWork`)
    /// and writes the store again without the freed pages (`compact`), holding the store's run lock throughout.
    /// `inPlace` compacts with SQLite's in-place VACUUM (the bench compares the two). Every connection to the store
    /// this process opens here is closed on return; other stores of this process on the same file must be closed first.
    public static func prune(path: String, inPlace: Bool = false) throws(SAELabelError) -> PruneSummary {
        let store = try JobStore(path: path, exclusive: true)
        removeCompactionLeftovers(store: path)
        let before = store.fileBytes()
        let (dropped, kept, cleared, windows) = try store.dropFinishedWork()
        let compaction = try store.compact(inPlace: inPlace)
        return PruneSummary(responsesDropped: dropped, responsesKept: kept, rawResponsesCleared: cleared, windowsDropped: windows,
                            bytesBefore: before, bytesAfter: store.fileBytes(), compaction: compaction)
    }

    /// Drops what finished work no longer needs: cached LLM answers whose every call
    /// belongs to work the store already holds (an explanation of the current pass; the scores of a
    /// feature in state `scored`), the raw explainer answers of old passes (their labels stay), and the
    /// text windows no example shows.
    /// Every label and score is kept. Answers of unfinished work (features not yet explained or
    /// scored, failed ones, calls not tied to one feature, answers without a logged call) stay, so a
    /// resumed run still pays nothing twice. Returns (answers dropped, kept, raw answers cleared, windows dropped).
    func dropFinishedWork() throws(SAELabelError) -> (Int, Int, Int, Int) {
        var result = (dropped: 0, kept: 0, cleared: 0, windows: 0)
        // A cache that holds the pages the deletes touch, so each is written to the WAL once (as collect's commits).
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
        return result
    }

    /// Deletes the cached answers under `keys`. Deleting most of the table row by row rewrites nearly every page
    /// of it (then compaction writes the rest again): at 16,384 features prune wrote 3.9× the store, and at 131,072 it
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

/// How prune gave the freed pages back to the file system.
public enum StoreCompaction: Sendable, Equatable {
    /// `VACUUM INTO` a new file beside the store, which then replaced it: the pruned store written once.
    case replaced
    /// VACUUM in place: SQLite builds the new content in a temporary database and copies it back through the
    /// WAL, then checkpoints it (≈ 3× the pruned store written). Used when `reason` kept the file from being replaced.
    case inPlace(reason: String)
}

extension JobStore {
    /// Where prune writes the compacted copy of the store at `path` (beside it, so the rename stays on one file system).
    public static func compactionPath(store path: String) -> String { resolvedFile(path) + ".prune-tmp" }

    /// The file behind `path` (symlinks followed), so the compacted copy replaces the file and not a link to it.
    static func resolvedFile(_ path: String) -> String {
        URL(fileURLWithPath: path).resolvingSymlinksInPath().path
    }

    /// Removes what a prune that was killed part-way left beside the store. Only prune writes that file, and
    /// only while it holds the store's run lock, which the caller holds.
    static func removeCompactionLeftovers(store path: String) {
        let temporary = compactionPath(store: path)
        for suffix in ["", "-journal", "-wal", "-shm"] { _ = unlink(temporary + suffix) }
    }

    /// Rewrites the store without its free pages. Every connection of this store is closed on return, so the
    /// store must not be used afterwards (prune opens it for this alone).
    ///
    /// One connection, alone on the file, leaves WAL mode (which folds the log into the file and deletes it and
    /// the shared-memory file, so none is left to be applied to the new file) and locks the file exclusively until
    /// it closes; under that lock `VACUUM INTO` writes the compacted copy once to a fresh file (no journal, no WAL),
    /// which is synced and renamed over the store. A crash before the rename leaves the old store and a leftover
    /// copy (removed by the next prune); after it, the new store. Other commands that open the store meanwhile
    /// wait (SQLite's busy timeout), and one that opened the old file keeps reading it: SQLite refuses writes to
    /// a file that was replaced while open (SQLITE_READONLY_DBMOVED).
    /// When another process has the store open at the start (an export or `status`: they take no run lock),
    /// replacing the file under it is not safe, and the store is compacted in place instead.
    func compact(inPlace: Bool) throws(SAELabelError) -> StoreCompaction {
        if inPlace { return try vacuumInPlace(reason: "asked for") }
        let target = Self.resolvedFile(path)
        let temporary = Self.compactionPath(store: path)
        let folder = (target as NSString).deletingLastPathComponent
        let needed = try read { db -> Int64 in
            let pages = try Int64.fetchOne(db, sql: "PRAGMA page_count") ?? 0
            let free = try Int64.fetchOne(db, sql: "PRAGMA freelist_count") ?? 0
            let size = try Int64.fetchOne(db, sql: "PRAGMA page_size") ?? 4096
            return (pages - free) * size
        }
        let available = Self.freeBytes(folder)
        // A little room over the copy itself for the file system's own blocks.
        guard available >= needed + needed / 50 + (16 << 20) else {
            throw .store("compacting \(path) needs about \(FileSync.mebibytes(needed)) free in \(folder), and \(FileSync.mebibytes(available)) are; "
                         + "the answers prune dropped are already gone from the store (every label and score is kept), so free some "
                         + "space there and run `saelabel prune --db \(path)` again to give the freed pages back to the disk")
        }
        do {
            try pool.close()
            var configuration = Configuration()
            configuration.busyMode = .timeout(2)
            let sole = try DatabaseQueue(path: target, configuration: configuration)
            defer { try? sole.close() }
            let replaced = try sole.inDatabase { db -> Bool in
                // Leaving WAL mode needs every other connection gone: it fails (busy) while another process has the store open.
                let mode: String?
                do {
                    mode = try String.fetchOne(db, sql: "PRAGMA journal_mode = DELETE")
                } catch let error as DatabaseError where error.resultCode == .SQLITE_BUSY || error.resultCode == .SQLITE_LOCKED {
                    return false
                }
                guard mode?.lowercased() == "delete" else { return false }
                // An exclusive lock kept until the connection closes: nothing reads or writes the store while it is
                // copied and replaced, so the copy holds every commit and no reader is left on the old file.
                try db.execute(sql: "PRAGMA locking_mode = EXCLUSIVE")
                do {
                    try db.execute(sql: "BEGIN EXCLUSIVE")
                    try db.execute(sql: "COMMIT")
                } catch let error as DatabaseError where error.resultCode == .SQLITE_BUSY || error.resultCode == .SQLITE_LOCKED {
                    throw SAELabelError.store("another process opened \(path) while prune was compacting it; the answers prune dropped are "
                                              + "gone (every label and score is kept), but the file was not compacted: run `saelabel prune "
                                              + "--db \(path)` again when nothing else uses the store")
                }
                for suffix in ["-wal", "-shm", "-journal"] { _ = unlink(target + suffix) }
                try db.execute(sql: "VACUUM INTO ?", arguments: [temporary])
                // SQLite does not sync the file VACUUM INTO writes.
                try Self.syncFile(temporary)
                var status = stat()
                if stat(target, &status) == 0 { _ = chmod(temporary, status.st_mode & 0o7777) }
                guard rename(temporary, target) == 0 else {
                    throw SAELabelError.store("cannot replace \(target) with its compacted copy: \(String(cString: strerror(errno)))")
                }
                try Self.syncFile(folder)
                return true
            }
            if replaced { return .replaced }
            try sole.writeWithoutTransaction { db in
                try db.execute(sql: "VACUUM")
                try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)")
            }
            return .inPlace(reason: "another process has the store open")
        } catch {
            Self.removeCompactionLeftovers(store: path)
            throw Self.wrap(error)
        }
    }

    /// SQLite's VACUUM on the open store (it stays open).
    private func vacuumInPlace(reason: String) throws(SAELabelError) -> StoreCompaction {
        do {
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "VACUUM")
                try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)")
            }
        } catch {
            throw Self.wrap(error)
        }
        return .inPlace(reason: reason)
    }

    /// Bytes an unprivileged process may still write in `folder`'s file system.
    static func freeBytes(_ folder: String) -> Int64 {
        var status = statvfs()
        guard statvfs(folder, &status) == 0 else { return 0 }
        return Int64(status.f_bavail) * Int64(status.f_frsize)
    }

    /// fsync of a file or folder (a folder's fsync makes a rename in it durable).
    static func syncFile(_ path: String) throws(SAELabelError) {
        if let reason = FileSync.sync(path) { throw .store("cannot sync \(path) to the disk: \(reason); check the disk") }
    }
}
