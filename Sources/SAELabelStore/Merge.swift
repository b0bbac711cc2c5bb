import Foundation
import GRDB
import SAELabelCore

extension JobStore {
    public struct MergeSummary: Sendable, Equatable {
        public var features: Int
        public var explanations: Int
        public var scores: Int
    }

    /// Shards of one job share the pass identity, the input version and the collect settings (seed,
    /// windows, exclusions); a store that lacks one of them (nothing collected or explained yet) agrees.
    public func checkMergeable(_ shard: JobStore) throws(SAELabelError) {
        let shardSettings = try shard.settings()
        let ownSettings = try settings()
        for key in ["collect_settings", "current_pass", "input_version"] {
            if let own = ownSettings[key], let theirs = shardSettings[key], own != theirs {
                throw .badInput(location: shard.path, problem: "its \(key.replacingOccurrences(of: "_", with: " ")) (\(theirs)) differs from \(path)'s (\(own)); shards must be runs of one job")
            }
        }
    }

    /// Joins a shard's store into this one (`saelabel merge`). Shards of one job hold disjoint features;
    /// a feature present in both keeps the row that is further along. Merging the same shard twice
    /// changes nothing. The shards must have been run on the same inputs.
    public func merge(shardAt shardPath: String) throws(SAELabelError) -> MergeSummary {
        guard FileManager.default.fileExists(atPath: shardPath) else {
            throw .badInput(location: shardPath, problem: "shard store not found")
        }
        // Opening it through JobStore migrates an older shard to the current schema first.
        let shard = try JobStore(path: shardPath)
        let shardPrints = try shard.fingerprints()
        let ownPrints = try fingerprints()
        for print in shardPrints {
            if let own = ownPrints.first(where: { $0.role == print.role }), own.sha256 != print.sha256 {
                throw .badInput(location: shardPath, problem: "was run on a different \(print.role) (\(print.path)) than \(path); shards must share inputs")
            }
        }
        try checkMergeable(shard)
        do {
            return try pool.writeWithoutTransaction { db in
                try db.execute(sql: "ATTACH DATABASE ? AS shard", arguments: [shardPath])
                defer { try? db.execute(sql: "DETACH DATABASE shard") }
                var summary = MergeSummary(features: 0, explanations: 0, scores: 0)
                try db.inTransaction {
                    try db.execute(sql: "INSERT OR IGNORE INTO main.job_setting SELECT key, value FROM shard.job_setting")
                    try db.execute(sql: "INSERT OR IGNORE INTO main.input_fingerprint SELECT * FROM shard.input_fingerprint")
                    try db.execute(sql: "INSERT OR IGNORE INTO main.labeling_pass SELECT * FROM shard.labeling_pass")
                    // Progress order of states; the merged row is the one further along.
                    let rank = """
                        CASE %@ WHEN 'scored' THEN 6 WHEN 'explained' THEN 5 WHEN 'dead' THEN 4 WHEN 'sparse' THEN 4
                        WHEN 'failed' THEN 3 WHEN 'collected' THEN 2 ELSE 1 END
                        """
                    let newer = """
                        SELECT s.id FROM shard.feature s LEFT JOIN main.feature m ON m.id = s.id
                        WHERE m.id IS NULL OR (\(String(format: rank, "s.state")) > \(String(format: rank, "m.state")))
                        """
                    let ids = try Int.fetchAll(db, sql: newer)
                    summary.features = ids.count
                    let examples = try ExampleCopier(from: "shard", db)
                    for id in ids {
                        try db.execute(sql: "DELETE FROM main.example WHERE feature = ?", arguments: [id])
                        // UPDATE, not REPLACE: replacing would cascade-delete this feature's explanations in main.
                        let columns = "state, failed_stage, failure_reason, attempts, note, frequency, max_activation, mean_activation, activating_tokens, activating_windows, histogram, updated_at"
                        try db.execute(sql: "INSERT OR IGNORE INTO main.feature(id, state, updated_at) SELECT id, state, updated_at FROM shard.feature WHERE id = ?",
                                       arguments: [id])
                        try db.execute(sql: "UPDATE main.feature SET (\(columns)) = (SELECT \(columns) FROM shard.feature WHERE id = ?) WHERE id = ?",
                                       arguments: [id, id])
                        try examples.copy(feature: id)
                    }
                    let before = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM main.explanation") ?? 0
                    try db.execute(sql: """
                        INSERT OR IGNORE INTO main.explanation(feature, pass, text, explainer_model, prompt_hash, raw_response, created_at)
                        SELECT feature, pass, text, explainer_model, prompt_hash, raw_response, created_at FROM shard.explanation
                        """)
                    summary.explanations = (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM main.explanation") ?? 0) - before
                    let scoresBefore = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM main.score") ?? 0
                    try db.execute(sql: """
                        INSERT OR IGNORE INTO main.score(explanation, feature, scorer, value, model, prompt_hash, details, created_at)
                        SELECT me.id, ss.feature, ss.scorer, ss.value, ss.model, ss.prompt_hash, ss.details, ss.created_at
                        FROM shard.score ss
                        JOIN shard.explanation se ON se.id = ss.explanation
                        JOIN main.explanation me ON me.feature = se.feature AND me.pass = se.pass
                        """)
                    summary.scores = (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM main.score") ?? 0) - scoresBefore
                    try db.execute(sql: "INSERT OR IGNORE INTO main.llm_response SELECT * FROM shard.llm_response")
                    try db.execute(sql: """
                        INSERT INTO main.llm_call(key, endpoint, model, tag, prompt_tokens, completion_tokens, cached_prompt_tokens,
                                                  latency_ms, outcome, attempt, created_at, batch)
                        SELECT key, endpoint, model, tag, prompt_tokens, completion_tokens, cached_prompt_tokens,
                               latency_ms, outcome, attempt, created_at, batch
                        FROM shard.llm_call c WHERE NOT EXISTS (
                            SELECT 1 FROM main.llm_call m WHERE m.key = c.key AND m.tag = c.tag AND m.attempt = c.attempt
                              AND m.created_at = c.created_at AND m.outcome = c.outcome)
                        """)
                    return .commit
                }
                return summary
            }
        } catch {
            throw Self.wrap(error)
        }
    }
}
