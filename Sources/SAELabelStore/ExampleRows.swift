import Foundation
import GRDB
import GRDBSQLite
import SAELabelCore

/// Collect's bulk write of `example` rows (≈ 860k rows for 24,576 features), which is what the collect
/// writer thread spends its time on. Rows are buffered and inserted `rowsPerStatement` at a time through one
/// multi-row INSERT, bound with raw `sqlite3_bind_*` calls: the JSON text is written as bytes into one
/// arena and bound without a copy (SQLITE_STATIC), and SQLite runs one statement (one AUTOINCREMENT
/// update, one statement start and savepoint) per 128 rows instead of per row. The stored text is `CompactJSON`'s, byte
/// for byte, whichever way it is written. A row names its window (`TextWindowWriter`), whose tokens are
/// stored once.
final class ExampleRowWriter {
    static let rowsPerStatement = 128
    private static let columns = 6

    private let db: Database
    /// Multi-row INSERT statements by row count, prepared on first use.
    private var inserts: [Int: Statement] = [:]
    private let clear: Statement

    private struct PendingRow {
        var feature: Int
        var split: ExampleSplit
        var kind: ExampleKind
        var ordinal: Int
        var window: Int64
        var activations: Range<Int>
    }
    private var pending: [PendingRow] = []
    /// The pending rows' activation JSON, back to back; bound in place.
    private var arena: [UInt8] = []
    private let windows: TextWindowWriter
    /// The split and kind names as C strings that live as long as the writer, bound without a copy: bound as
    /// SQLITE_TRANSIENT, SQLite allocated and copied them for every row (7 % of the writer thread's profile).
    private let splitNames = CNames<ExampleSplit>()
    private let kindNames = CNames<ExampleKind>()

    init(_ db: Database, knownWindows: [TextWindowPlace: ResolvedWindow] = [:]) throws {
        self.db = db
        clear = try db.makeStatement(sql: "DELETE FROM example WHERE feature = ?")
        windows = try TextWindowWriter(db, known: knownWindows)
        pending.reserveCapacity(Self.rowsPerStatement)
    }

    /// The windows the rows named: those known at the start and those found or inserted since.
    var resolvedWindows: [TextWindowPlace: ResolvedWindow] { windows.known }

    /// Drops `feature`'s stored examples (re-collecting replaces them). Call before `append`ing its rows.
    func removeExamples(of feature: Int) throws {
        if pending.contains(where: { $0.feature == feature }) { try flush() }
        sqlite3_bind_int64(clear.sqliteStatement, 1, Int64(feature))
        try run(clear)
    }

    func append(feature: Int, split: ExampleSplit, ordinal: Int, window: ActivationWindow) throws {
        let windowID = try windows.id(of: window)
        let activationsStart = arena.count
        CompactJSON.appendFloats(window.activations, to: &arena)
        pending.append(PendingRow(feature: feature, split: split, kind: window.kind, ordinal: ordinal, window: windowID,
                                  activations: activationsStart..<arena.count))
        if pending.count == Self.rowsPerStatement { try flush() }
    }

    /// Inserts the buffered rows; call once after the last `append`.
    func flush() throws {
        guard !pending.isEmpty else { return }
        let statement = try insert(rows: pending.count)
        let handle = statement.sqliteStatement
        try arena.withUnsafeBufferPointer { bytes in
            let base = UnsafeRawPointer(bytes.baseAddress!).assumingMemoryBound(to: CChar.self)
            // A failed bind would leave the reused statement holding the previous rows' values: check each.
            func bound(_ code: Int32) throws {
                guard code == SQLITE_OK else {
                    sqlite3_clear_bindings(handle)
                    throw DatabaseError(resultCode: ResultCode(rawValue: code), message: db.lastErrorMessage, sql: statement.sql)
                }
            }
            for (row, values) in pending.enumerated() {
                let first = Int32(row * Self.columns)
                try bound(sqlite3_bind_int64(handle, first + 1, Int64(values.feature)))
                try bound(sqlite3_bind_text(handle, first + 2, splitNames[values.split], -1, nil))
                try bound(sqlite3_bind_text(handle, first + 3, kindNames[values.kind], -1, nil))
                try bound(sqlite3_bind_int64(handle, first + 4, Int64(values.ordinal)))
                try bound(sqlite3_bind_int64(handle, first + 5, values.window))
                // SQLITE_STATIC (a nil destructor): `arena` and the names are neither changed nor freed before the step below.
                try bound(sqlite3_bind_text(handle, first + 6, base + values.activations.lowerBound, Int32(values.activations.count), nil))
            }
            try run(statement)
        }
        pending.removeAll(keepingCapacity: true)
        arena.removeAll(keepingCapacity: true)
    }

    private func insert(rows: Int) throws -> Statement {
        if let statement = inserts[rows] { return statement }
        let row = "(" + Array(repeating: "?", count: Self.columns).joined(separator: ",") + ")"
        let statement = try db.makeStatement(sql: """
            INSERT INTO example(feature, split, kind, ordinal, text_window, activations)
            VALUES \(Array(repeating: row, count: rows).joined(separator: ","))
            """)
        inserts[rows] = statement
        return statement
    }

    /// Steps a statement that returns no rows, then resets it (the bindings are replaced before each use).
    private func run(_ statement: Statement) throws {
        let handle = statement.sqliteStatement
        let code = sqlite3_step(handle)
        let message = code == SQLITE_DONE ? nil : db.lastErrorMessage
        sqlite3_reset(handle)
        guard code == SQLITE_DONE else {
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: message, sql: statement.sql)
        }
    }
}

/// Each name of a closed set (split, kind) as a NUL-terminated copy owned by this object, for binding in place.
private final class CNames<Name: RawRepresentable & CaseIterable & Equatable> where Name.RawValue == String {
    private let names: [Name]
    private let texts: [UnsafeMutablePointer<CChar>]

    init() {
        names = Array(Name.allCases)
        texts = names.map { strdup($0.rawValue)! }
    }

    deinit { texts.forEach { free($0) } }

    subscript(name: Name) -> UnsafePointer<CChar> { UnsafePointer(texts[names.firstIndex(of: name)!]) }
}
