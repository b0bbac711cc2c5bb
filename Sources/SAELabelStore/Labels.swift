import Foundation
import GRDB
import SAELabelCore

public struct StoredExplanation: Sendable, Equatable {
    public var id: Int64
    public var feature: Int
    public var pass: String
    public var text: String
    public var explainerModel: String
    public var promptHash: String
}

public struct StoredScore: Sendable, Equatable {
    public var scorer: String
    public var value: Double?
    public var model: String
    public var promptHash: String
    /// JSON object: secondary metrics and per-window simulated values.
    public var details: String

    public init(scorer: String, value: Double?, model: String, promptHash: String, details: String) {
        self.scorer = scorer
        self.value = value
        self.model = model
        self.promptHash = promptHash
        self.details = details
    }
}

extension JobStore {
    /// The labeling pass new explanations belong to. Changing it (a new explainer, prompt or SAE
    /// version) starts a new pass: labeled features go back to `collected`, old labels stay for comparison.
    public func currentPass() throws(SAELabelError) -> String? {
        try setting("current_pass")
    }

    public func beginPass(_ pass: String) throws(SAELabelError) {
        try write { db in
            let old = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'")
            guard old != pass else { return }
            try db.execute(sql: "INSERT INTO job_setting(key, value) VALUES ('current_pass', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           arguments: [pass])
            // Features already labeled under this pass keep their state; everything else restarts from collected.
            try db.execute(sql: """
                UPDATE feature SET state = 'collected', failed_stage = NULL, failure_reason = NULL
                WHERE (state IN ('explained', 'scored') OR (state = 'failed' AND failed_stage IN ('explain', 'score')))
                  AND id NOT IN (SELECT feature FROM explanation WHERE pass = ?)
                """, arguments: [pass])
            try db.execute(sql: """
                UPDATE feature SET state = 'explained' WHERE state IN ('collected', 'scored')
                  AND id IN (SELECT feature FROM explanation WHERE pass = ?)
                """, arguments: [pass])
        }
    }

    /// Stores the explanation for the current pass and moves the feature to `explained`, atomically.
    /// A second save for the same feature and pass is ignored: a feature never has two current explanations.
    @discardableResult
    public func saveExplanation(feature: Int, text: String, explainerModel: String, promptHash: String,
                                rawResponse: String?) throws(SAELabelError) -> StoredExplanation {
        try write { db in
            let pass = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") ?? "default"
            try db.execute(sql: """
                INSERT OR IGNORE INTO explanation(feature, pass, text, explainer_model, prompt_hash, raw_response, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: [feature, pass, text, explainerModel, promptHash, rawResponse, Date()])
            try db.execute(sql: "UPDATE feature SET state = 'explained', failed_stage = NULL, failure_reason = NULL, updated_at = ? WHERE id = ?",
                           arguments: [Date(), feature])
            return try Self.explanation(db, feature: feature, pass: pass)!
        }
    }

    public func currentExplanation(feature: Int) throws(SAELabelError) -> StoredExplanation? {
        try read { db in
            let pass = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") ?? "default"
            return try Self.explanation(db, feature: feature, pass: pass)
        }
    }

    /// Every explanation of a feature over all passes, oldest first.
    public func explanations(feature: Int) throws(SAELabelError) -> [StoredExplanation] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM explanation WHERE feature = ? ORDER BY id", arguments: [feature]).map(Self.explanation)
        }
    }

    static func explanation(_ db: Database, feature: Int, pass: String) throws -> StoredExplanation? {
        try Row.fetchOne(db, sql: "SELECT * FROM explanation WHERE feature = ? AND pass = ?", arguments: [feature, pass]).map(explanation)
    }

    static func explanation(_ row: Row) -> StoredExplanation {
        StoredExplanation(id: row["id"], feature: row["feature"], pass: row["pass"], text: row["text"],
                          explainerModel: row["explainer_model"], promptHash: row["prompt_hash"])
    }

    /// Stores one scorer's result for an explanation. When `completesFeature`, the feature moves to `scored`
    /// in the same transaction. A second save for the same explanation and scorer is ignored.
    public func saveScore(explanation: StoredExplanation, score: StoredScore, completesFeature: Bool) throws(SAELabelError) {
        try write { db in
            try db.execute(sql: """
                INSERT OR IGNORE INTO score(explanation, feature, scorer, value, model, prompt_hash, details, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [explanation.id, explanation.feature, score.scorer, score.value, score.model,
                                 score.promptHash, score.details, Date()])
            if completesFeature {
                try db.execute(sql: "UPDATE feature SET state = 'scored', failed_stage = NULL, failure_reason = NULL, updated_at = ? WHERE id = ?",
                               arguments: [Date(), explanation.feature])
            }
        }
    }

    public func scores(explanation: StoredExplanation) throws(SAELabelError) -> [StoredScore] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM score WHERE explanation = ? ORDER BY scorer", arguments: [explanation.id]).map(Self.score)
        }
    }

    /// One `score` row as stored.
    static func score(_ row: Row) -> StoredScore {
        StoredScore(scorer: row["scorer"], value: row["value"], model: row["model"], promptHash: row["prompt_hash"],
                    details: row["details"])
    }
}
