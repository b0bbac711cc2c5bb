import Foundation
import GRDB
import TestSupport
import Testing
import SAELabelCore
@testable import SAELabelStore
import SAELabelExport

/// A store of the schema before "v6-text-windows" (tokens in every `example` row) migrates with every row kept
/// and exports the same bytes as the store the current code writes with the same content.
@Suite struct TextWindowMigrationTests {
    static let previousMigration = "v5-batch-call-accounting"

    /// Every example as the previous schema held it, by id.
    static let legacyRows = "SELECT id, feature, split, kind, ordinal, sequence, start, tokens, activations FROM example ORDER BY id"
    static let migratedRows = """
        SELECT e.id, e.feature, e.split, e.kind, e.ordinal, w.sequence, w.start, w.tokens, e.activations
        FROM example e JOIN text_window w ON w.id = e.text_window ORDER BY e.id
        """

    func rows(_ path: String, _ sql: String) throws -> [[DatabaseValue]] {
        try DatabaseQueue(path: path).read { db in try Row.fetchAll(db, sql: sql).map { Array($0.databaseValues) } }
    }

    func exports(_ store: JobStore, _ directory: TempDirectory, _ name: String) throws -> [Data] {
        try [(ExportFormat.catalog, "jsonl"), (.csv, "csv")].map { format, suffix in
            let path = directory.file("\(name).\(suffix)")
            _ = try Exporter.export(store: store, format: format, to: path)
            return try Data(contentsOf: URL(fileURLWithPath: path))
        }
    }

    /// Writes `source`'s content into a new store at `path` migrated only up to the previous schema, with each
    /// example's window place and tokens back in its row, as the previous version wrote them.
    func writePreviousSchemaStore(copying source: String, to path: String) throws {
        let queue = try DatabaseQueue(path: path)
        try Schema.migrator.migrate(queue, upTo: Self.previousMigration)
        try queue.writeWithoutTransaction { db in
            try db.execute(sql: "ATTACH DATABASE ? AS current", arguments: [source])
            try db.inTransaction {
                let tables = try String.fetchAll(db, sql: """
                    SELECT name FROM main.sqlite_master WHERE type = 'table'
                      AND name NOT IN ('example', 'grdb_migrations', 'sqlite_sequence') ORDER BY rowid
                    """)
                for table in tables { try db.execute(sql: "INSERT INTO main.\(table) SELECT * FROM current.\(table)") }
                try db.execute(sql: """
                    INSERT INTO main.example(id, feature, split, kind, ordinal, sequence, start, tokens, activations)
                    SELECT e.id, e.feature, e.split, e.kind, e.ordinal, w.sequence, w.start, w.tokens, e.activations
                    FROM current.example e JOIN current.text_window w ON w.id = e.text_window
                    """)
                return .commit
            }
            try db.execute(sql: "DETACH DATABASE current")
        }
        try queue.close()
    }

    @Test func aPreviousSchemaStoreMigratesWithEveryRowAndExportsTheSameBytes() throws {
        let fixture = try NastyStore()
        // Feature 5 shows two of feature 0's windows and, at one of their places, other tokens (a window whose
        // place alone would not tell it apart).
        let tokens = ["x", " \"y\"", " 日本"]
        try fixture.store.saveCollected([CollectedFeature(
            index: 5, state: .collected,
            statistics: FeatureStatistics(frequency: 0.1, maxActivation: 2, meanActivation: 1, activatingTokens: 3,
                                          activatingWindows: 2, histogram: [1]),
            explain: try fixture.store.examples(feature: 0, split: .explain).map(\.window),
            heldout: [ActivationWindow(tokens: tokens, activations: [0, 2, 1], kind: .random, sequence: 1, start: 3)])])
        let expected = try exports(fixture.store, fixture.directory, "current")

        let path = fixture.directory.file("previous.sqlite")
        try writePreviousSchemaStore(copying: fixture.store.path, to: path)
        let before = try rows(path, Self.legacyRows)
        #expect(before.count == 12)
        #expect(try rows(path, "SELECT COUNT(DISTINCT sequence || ':' || start) FROM example") == [[9.databaseValue]])

        let migrated = try JobStore(path: path)
        #expect(try migrated.appliedMigrations().last == "v6-text-windows")
        #expect(try rows(path, Self.migratedRows) == before)
        // Nine places, one with two token lists: ten windows for twelve examples.
        #expect(try rows(path, "SELECT COUNT(*) FROM text_window") == [[10.databaseValue]])
        #expect(try exports(migrated, fixture.directory, "migrated") == expected)
        #expect(try migrated.examples(feature: 5, split: .heldout).map(\.window.tokens) == [tokens])
    }
}
