import Foundation
import GRDB
import SAELabelCore
import Synchronization

/// One SQLite database per job (WAL mode). Every stage commits per feature, so a kill loses at most
/// the work in flight, and any stage can resume alone from what the store holds.
public final class JobStore: Sendable {
    public let path: String
    let pool: DatabasePool
    /// Held by mutating commands (run, collect, explain, score, merge) for the store's lifetime.
    let lock: StoreLock?

    /// Opens (creating if needed) and migrates the store at `path`. `exclusive` first takes the store's
    /// run lock (see StoreLock) and throws `.storeBusy` at once when another process holds it.
    public init(path: String, exclusive: Bool = false) throws(SAELabelError) {
        self.path = path
        lock = exclusive ? try StoreLock.acquire(store: path) : nil
        do {
            var configuration = Configuration()
            configuration.busyMode = .timeout(30)
            configuration.prepareDatabase { db in
                try db.execute(sql: "PRAGMA foreign_keys = ON")
                try db.execute(sql: "PRAGMA synchronous = NORMAL")
                // Debian builds SQLite with SECURE_DELETE, which overwrites every page a delete frees (FAST mode
                // too, measured): emptying a table wrote it again to the WAL and once more at the checkpoint
                // (prune at 16,384 features: 407 MiB for a 134 MiB answer table, 33 MiB without). Nothing in a
                // store is secret, and prune's compaction writes a new file without the freed pages.
                try db.execute(sql: "PRAGMA secure_delete = OFF")
            }
            pool = try DatabasePool(path: path, configuration: configuration)
            try Schema.migrator.migrate(pool)
            openStores.withLock { stores in
                stores.removeAll { $0.store == nil }
                stores.append(WeakStore(store: self))
            }
        } catch let error as DatabaseError {
            // Not a database, or a path that cannot be created: the user named the wrong thing (exit 2).
            throw .badInput(location: path, problem: "cannot open as a saelabel job store (\(error.message ?? error.description)); check the path")
        } catch {
            throw .store("cannot open \(path): \(error)")
        }
    }

    /// Folds SQLite's write-ahead log into the database file and closes every connection, so that once the
    /// process is gone the store is one self-contained file (a user who copies `job.sqlite` alone copies all
    /// of it). Closing is otherwise left to deinitialization, which does not run for a store some thread still
    /// references when the process exits. GRDB closes its writer before its read-only readers, and a read-only
    /// connection that closes last cannot fold the log in, so one read-write connection is opened and closed
    /// last. Best effort: the process is ending, and a store another process has open keeps its log for it.
    /// Any later use of this store fails.
    public func close() {
        try? pool.close()
        // Only an existing file: opening a path the user has since removed would create an empty store there.
        guard FileManager.default.fileExists(atPath: path) else { return }
        if let last = try? DatabaseQueue(path: path) { try? last.close() }
    }

    /// Closes every store this process opened and still holds (`close()`); the command line calls it just
    /// before it exits.
    public static func closeEveryOpenStore() {
        let stores = openStores.withLock { stores in
            defer { stores.removeAll() }
            return stores.compactMap(\.store)
        }
        for store in stores { store.close() }
    }

    /// The schema migrations applied, oldest first.
    public func appliedMigrations() throws(SAELabelError) -> [String] {
        try read { db in try Schema.migrator.appliedMigrations(db) }
    }

    // MARK: - Access helpers that map GRDB errors to user-facing ones

    func read<T>(_ body: (Database) throws -> T) throws(SAELabelError) -> T {
        do { return try pool.read(body) } catch { throw Self.wrap(error) }
    }

    func write<T>(_ body: (Database) throws -> T) throws(SAELabelError) -> T {
        do { return try pool.write(body) } catch { throw Self.wrap(error) }
    }

    static func wrap(_ error: any Error) -> SAELabelError {
        if let error = error as? SAELabelError { return error }
        if let error = error as? DatabaseError { return .store(error.message ?? error.description) }
        return .store("\(error)")
    }

    // MARK: - Job settings

    public func setting(_ key: String) throws(SAELabelError) -> String? {
        try read { db in try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = ?", arguments: [key]) }
    }

    public func setSetting(_ key: String, _ value: String) throws(SAELabelError) {
        try write { db in try Self.setSetting(db, key, value) }
    }

    static func setSetting(_ db: Database, _ key: String, _ value: String) throws {
        try db.execute(sql: "INSERT INTO job_setting(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       arguments: [key, value])
    }

    public func settings() throws(SAELabelError) -> [String: String] {
        try read { db in
            var result: [String: String] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT key, value FROM job_setting") {
                result[row["key"]] = row["value"]
            }
            return result
        }
    }

    // MARK: - Input fingerprints

    /// Records the inputs on first use; afterwards refuses any input whose content changed, unless
    /// `acceptChanges` (a new labeling version) is set, in which case the new fingerprints replace the old.
    public func verifyInputs(_ inputs: [InputFingerprint], acceptChanges: Bool = false) throws(SAELabelError) {
        try write { db in try Self.reconcileInputs(db, inputs, acceptChanges: acceptChanges, record: true) }
    }

    /// The refusal of `verifyInputs` without writing anything: collect checks first and records the
    /// fingerprints only with its first committed block, so bad input leaves the store as it was.
    public func checkInputs(_ inputs: [InputFingerprint], acceptChanges: Bool = false) throws(SAELabelError) {
        try read { db in try Self.reconcileInputs(db, inputs, acceptChanges: acceptChanges, record: false) }
    }

    static func reconcileInputs(_ db: Database, _ inputs: [InputFingerprint], acceptChanges: Bool, record: Bool) throws {
        for input in inputs {
            let row = try Row.fetchOne(db, sql: "SELECT path, size, sha256, version FROM input_fingerprint WHERE role = ?",
                                       arguments: [input.role])
            if let row {
                let oldHash: String = row["sha256"]
                let oldSize: Int64 = row["size"]
                guard oldHash != input.sha256 else { continue }
                if !acceptChanges {
                    throw SAELabelError.inputChanged(
                        path: input.path,
                        detail: "\(input.role): was \(oldSize) bytes sha256 \(oldHash.prefix(12))…, now \(input.size) bytes sha256 \(input.sha256.prefix(12))…")
                }
                guard record else { continue }
                let version: Int = row["version"]
                try db.execute(sql: "UPDATE input_fingerprint SET path = ?, size = ?, sha256 = ?, version = ? WHERE role = ?",
                               arguments: [input.path, input.size, input.sha256, version + 1, input.role])
            } else if record {
                try db.execute(sql: "INSERT INTO input_fingerprint(role, path, size, sha256) VALUES (?, ?, ?, ?)",
                               arguments: [input.role, input.path, input.size, input.sha256])
            }
        }
    }

    public func fingerprints() throws(SAELabelError) -> [InputFingerprint] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT role, path, size, sha256 FROM input_fingerprint ORDER BY role").map {
                InputFingerprint(role: $0["role"], path: $0["path"], size: $0["size"], sha256: $0["sha256"])
            }
        }
    }
}

/// The stores this process opened, held weakly, for `JobStore.closeEveryOpenStore()`.
private let openStores = Mutex<[WeakStore]>([])

private struct WeakStore: Sendable {
    weak var store: JobStore?
}

/// A content hash of one input file under a role name ("sae_weights", "activations.0", …).
public struct InputFingerprint: Sendable, Equatable, Codable {
    public var role: String
    public var path: String
    public var size: Int64
    public var sha256: String

    public init(role: String, path: String, size: Int64, sha256: String) {
        self.role = role
        self.path = path
        self.size = size
        self.sha256 = sha256
    }

    public static func of(file path: String, role: String) throws(SAELabelError) -> InputFingerprint {
        let attributes: [FileAttributeKey: Any]
        do {
            attributes = try FileManager.default.attributesOfItem(atPath: path)
        } catch {
            throw .badInput(location: path, problem: "input file not found")
        }
        let size = (attributes[.size] as? NSNumber)?.int64Value ?? 0
        return InputFingerprint(role: role, path: path, size: size, sha256: try Hashing.sha256Hex(fileAt: path))
    }
}
