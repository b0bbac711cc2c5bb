import Foundation
import GRDB
import SAELabelCore

/// Everything the exports need about one feature, read in one snapshot.
public struct ExportFeature: Sendable, Equatable {
    public var record: FeatureRecord
    /// The chosen pass's explanation, if any.
    public var explanation: StoredExplanation?
    /// The scores of that explanation, ordered by scorer.
    public var scores: [StoredScore]
    /// Explain then held-out windows, by ordinal, as stored; empty unless asked for.
    public var examples: [ExportExample]
    /// Where the label came from when it was carried over from an earlier SAE version (and kept).
    public var carriedFrom: CarriedLabel? = nil
}

/// One `example` row with its token and activation arrays left as the stored JSON text, so an
/// export that writes the same JSON need not decode and re-encode ~35 windows per feature.
public struct ExportExample: Sendable, Equatable {
    public var split: ExampleSplit
    public var ordinal: Int
    public var kind: ExampleKind
    public var sequence: Int
    public var start: Int
    /// JSON array of strings.
    public var tokensJSON: String
    /// JSON array of numbers.
    public var activationsJSON: String
}

extension JobStore {
    /// Streams features in index order with the chosen pass's explanation, scores and (optionally)
    /// examples, all inside one read transaction, so exports see one consistent snapshot and memory
    /// stays flat. Each table is read once, in feature order, alongside the feature table (a merge,
    /// not a query per feature). `states` nil means every state.
    public func forEachExportFeature(selection: FeatureSelection = .all, states: [FeatureState]? = nil,
                                     pass chosenPass: String? = nil, includeExamples: Bool = true,
                                     _ body: (ExportFeature) throws -> Void) throws(SAELabelError) {
        if let states, states.isEmpty { return }
        try read { db in
            let pass = try chosenPass ?? String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") ?? "default"
            var featureConditions = Self.selectionConditions(selection, column: "id")
            var featureArguments = StatementArguments()
            if let states {
                featureConditions.append("state IN (\(states.map { _ in "?" }.joined(separator: ",")))")
                featureArguments += StatementArguments(states.map(\.rawValue))
            }
            let features = try Row.fetchCursor(db, sql: "SELECT * FROM feature" + Self.whereClause(featureConditions) + " ORDER BY id",
                                               arguments: featureArguments)

            let explanations = try FeatureOrderedRows(db, sql: """
                SELECT * FROM explanation
                """ + Self.whereClause(["pass = ?"] + Self.selectionConditions(selection, column: "feature")) + " ORDER BY feature",
                arguments: [pass], Self.explanation)
            // Scores follow their explanation: the feature comes from it, so the pass decides.
            let scores = try FeatureOrderedRows(db, sql: """
                SELECT e.feature AS owner, s.scorer, s.value, s.model, s.prompt_hash, s.details
                FROM explanation e JOIN score s ON s.explanation = e.id
                """ + Self.whereClause(["e.pass = ?"] + Self.selectionConditions(selection, column: "e.feature"))
                + " ORDER BY e.feature, s.scorer", arguments: [pass], featureColumn: "owner", Self.score)
            let examples = try includeExamples ? FeatureOrderedRows(db, sql: """
                SELECT \(TextWindows.exampleColumns) FROM \(TextWindows.examplesJoined)
                """ + Self.whereClause(Self.selectionConditions(selection, column: "e.feature")) + " ORDER BY e.feature, e.split, e.ordinal",
                arguments: [], Self.exportExample) : nil
            let carried = try FeatureOrderedRows(db, sql: """
                SELECT * FROM carried_label
                """ + Self.whereClause(["pass = ?", "decision != 'reexplained'"] + Self.selectionConditions(selection, column: "feature"))
                + " ORDER BY feature", arguments: [pass], Self.carriedLabel)

            while let row = try features.next() {
                let record = Self.featureRecord(row)
                let explanation = try explanations.take(record.index).first
                let featureScores = try scores.take(record.index)
                let featureExamples = try examples?.take(record.index) ?? []
                let carriedLabel = try carried.take(record.index).first
                try body(ExportFeature(record: record, explanation: explanation, scores: explanation == nil ? [] : featureScores,
                                       examples: featureExamples, carriedFrom: explanation == nil ? nil : carriedLabel))
            }
        }
    }

    /// SQL conditions on `column` for the selection: a range or literal list (integers, so safe to
    /// inline) and the shard, so the merged tables skip unselected features inside SQLite.
    static func selectionConditions(_ selection: FeatureSelection, column: String) -> [String] {
        var conditions: [String] = []
        switch selection.set {
        case .all: break
        case .range(let lower, let upper): conditions.append("\(column) >= \(lower) AND \(column) < \(upper)")
        case .list(let values): conditions.append("\(column) IN (\(values.map(String.init).joined(separator: ",")))")
        }
        if let shard = selection.shard {
            conditions.append("\(column) % \(shard.count) = \(shard.index)")
        }
        return conditions
    }

    static func whereClause(_ conditions: [String]) -> String {
        conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
    }

    /// A row of `TextWindows.exampleColumns`, read by position: by name, GRDB looks each column up in a
    /// dictionary, nine lookups per example (~4.6 million examples at 131k features).
    static func exportExample(_ row: Row) -> ExportExample {
        ExportExample(split: ExampleSplit(rawValue: row[1]) ?? .explain, ordinal: row[3],
                      kind: ExampleKind(rawValue: row[2]) ?? .top, sequence: row[4], start: row[5],
                      tokensJSON: row[6], activationsJSON: row[7])
    }
}

/// The rows of one table in feature order, consumed alongside the feature table: `take(f)` skips
/// rows of features before `f` (not selected, e.g. by state) and returns those of `f`.
private final class FeatureOrderedRows<Value> {
    private let cursor: RowCursor
    private let featureColumn: String
    /// The position of `featureColumn`, found in the first row (read by position from then on).
    private var featureIndex: Int?
    private let decode: (Row) throws -> Value
    /// The first row not yet taken, decoded (cursor rows are reused, so values are copied out at once).
    private var next: (feature: Int, value: Value)?
    private var exhausted = false

    init(_ db: Database, sql: String, arguments: StatementArguments, featureColumn: String = "feature",
         _ decode: @escaping (Row) throws -> Value) throws {
        cursor = try Row.fetchCursor(db, sql: sql, arguments: arguments)
        self.featureColumn = featureColumn
        self.decode = decode
    }

    func take(_ feature: Int) throws -> [Value] {
        var values: [Value] = []
        while true {
            if next == nil {
                if exhausted { return values }
                guard let row = try cursor.next() else {
                    exhausted = true
                    return values
                }
                if featureIndex == nil { featureIndex = Array(row.columnNames).firstIndex(of: featureColumn) }
                next = (featureIndex.map { row[$0] } ?? row[featureColumn], try decode(row))
            }
            guard let (rowFeature, value) = next else { return values }
            if rowFeature > feature { return values }
            if rowFeature == feature { values.append(value) }
            next = nil
        }
    }
}
