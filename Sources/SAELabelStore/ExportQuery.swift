import Foundation
import GRDB
import SAELabelCore

/// Everything the exports need about one feature, read in one snapshot.
public struct ExportFeature: Sendable, Equatable {
    public var record: FeatureRecord
    /// The current pass's explanation, if any.
    public var explanation: StoredExplanation?
    /// The scores of that explanation, ordered by scorer.
    public var scores: [StoredScore]
    /// Explain then held-out windows, by ordinal; empty unless asked for.
    public var examples: [StoredExample]
    /// Where the label came from when it was carried over from an earlier SAE version (and kept).
    public var carriedFrom: CarriedLabel? = nil
}

extension JobStore {
    /// Streams features in index order with their current explanation, scores and (optionally) examples,
    /// all inside one read transaction, so exports see one consistent snapshot and memory stays flat.
    /// `states` nil means every state.
    public func forEachExportFeature(selection: FeatureSelection = .all, states: [FeatureState]? = nil,
                                     pass chosenPass: String? = nil, includeExamples: Bool = true,
                                     _ body: (ExportFeature) throws -> Void) throws(SAELabelError) {
        try read { db in
            let pass = try chosenPass ?? String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") ?? "default"
            var sql = "SELECT * FROM feature"
            var conditions: [String] = []
            var arguments = StatementArguments()
            if let states {
                if states.isEmpty { return }
                conditions.append("state IN (\(states.map { _ in "?" }.joined(separator: ",")))")
                arguments += StatementArguments(states.map(\.rawValue))
            }
            if case .range(let lower, let upper) = selection.set {
                conditions.append("id >= ? AND id < ?")
                arguments += [lower, upper]
            }
            if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
            sql += " ORDER BY id"
            let listed: Set<Int>? = if case .list(let values) = selection.set { Set(values) } else { nil }

            let explanationStatement = try db.cachedStatement(sql: "SELECT * FROM explanation WHERE feature = ? AND pass = ?")
            let scoreStatement = try db.cachedStatement(sql: "SELECT * FROM score WHERE explanation = ? ORDER BY scorer")
            let exampleStatement = try db.cachedStatement(sql: """
                SELECT split, kind, ordinal, sequence, start, tokens, activations FROM example
                WHERE feature = ? ORDER BY split, ordinal
                """)
            let carriedStatement = try db.cachedStatement(sql: "SELECT * FROM carried_label WHERE feature = ? AND pass = ? AND decision != 'reexplained'")
            let decoder = JSONDecoder()

            let cursor = try Row.fetchCursor(db, sql: sql, arguments: arguments)
            while let row = try cursor.next() {
                let record = Self.featureRecord(row)
                if let listed, !listed.contains(record.index) { continue }
                if let shard = selection.shard, record.index % shard.count != shard.index { continue }

                let explanation = try Row.fetchOne(explanationStatement, arguments: [record.index, pass]).map(Self.explanation)
                var scores: [StoredScore] = []
                if let explanation {
                    scores = try Row.fetchAll(scoreStatement, arguments: [explanation.id]).map(Self.score)
                }
                var examples: [StoredExample] = []
                if includeExamples {
                    examples = try Row.fetchAll(exampleStatement, arguments: [record.index]).map {
                        try Self.example($0, decoder: decoder)
                    }
                }
                let carried = try explanation.flatMap { _ in try Row.fetchOne(carriedStatement, arguments: [record.index, pass]).map(Self.carriedLabel) }
                try body(ExportFeature(record: record, explanation: explanation, scores: scores, examples: examples, carriedFrom: carried))
            }
        }
    }
}
