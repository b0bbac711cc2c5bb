import Foundation
import GRDB
import SAELabelCore

/// A labeling pass: the labels one explainer wrote over one collect of the inputs.
///
/// Its identity is derived here and nowhere else, from every input fingerprint, the collect settings,
/// the input version (`--new-version` bumps it) and the explainer (name/style, model, prompt hash).
/// Scorers are not part of it: each score row keeps its scorer, model and prompt hash, so adding a
/// scorer scores the pass's existing labels and changing the simulator re-scores them, without
/// re-explaining anything.
public struct LabelingPass: Sendable, Equatable, Codable {
    public var id: String
    public var explainer: String
    public var explainerModel: String
    public var explainerPromptHash: String
    public var collectSettings: String
    /// `role=sha256-prefix` of every input, sorted by role.
    public var inputs: String
    public var inputVersion: Int
    public var createdAt: Date?

    /// Filled by `passes()`.
    public var explanations = 0
    /// Scorer → stored scores (computed or not).
    public var scores: [String: Int] = [:]
    /// "scorer model" pairs that scored this pass.
    public var scorerModels: [String] = []
    public var meanSimulation: Double?
    public var isCurrent = false
}

public struct PassComparison: Sendable, Equatable {
    public struct Row: Sendable, Equatable {
        public var feature: Int
        public var labelA: String?
        public var labelB: String?
        public var scoresA: [String: Double?]
        public var scoresB: [String: Double?]
    }
    public var a: String
    public var b: String
    public var rows: [Row]
}

extension JobStore {
    /// The identity of the pass an explainer would write into, given what the store now holds.
    public func passIdentity(explainer: String, model: String, promptHash: String) throws(SAELabelError) -> LabelingPass {
        let prints = try fingerprints().sorted { $0.role < $1.role }
        let settings = try settings()
        let collect = settings["collect_settings"] ?? ""
        let version = Int(settings["input_version"] ?? "") ?? 1
        let inputs = prints.map { "\($0.role)=\($0.sha256.prefix(12))" }.joined(separator: " ")
        var parts = ["pass-v2", collect, "input_version=\(version)", explainer, model, promptHash]
        parts += prints.map { "\($0.role)=\($0.sha256)" }
        let id = String(Hashing.sha256Hex(parts.joined(separator: "\u{0}")).prefix(16))
        return LabelingPass(id: id, explainer: explainer, explainerModel: model, explainerPromptHash: promptHash,
                            collectSettings: collect, inputs: inputs, inputVersion: version, createdAt: nil)
    }

    /// `--new-version`: the next pass is a new one even when the input files are byte-identical.
    public func bumpInputVersion() throws(SAELabelError) {
        try write { db in try Self.bumpInputVersion(db) }
    }

    static func bumpInputVersion(_ db: Database) throws {
        let current = Int(try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'input_version'") ?? "") ?? 1
        try db.execute(sql: "INSERT INTO job_setting(key, value) VALUES ('input_version', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       arguments: [String(current + 1)])
    }

    /// Records the pass (once) and makes it current.
    public func beginPass(_ pass: LabelingPass) throws(SAELabelError) {
        try write { db in
            try db.execute(sql: """
                INSERT OR IGNORE INTO labeling_pass(id, explainer, explainer_model, explainer_prompt_hash, collect_settings,
                                                    inputs, input_version, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [pass.id, pass.explainer, pass.explainerModel, pass.explainerPromptHash, pass.collectSettings,
                                 pass.inputs, pass.inputVersion, Date()])
        }
        try beginPass(pass.id)
    }

    /// A feature's explanation in `pass`, if it has one.
    public func explanation(feature: Int, pass: String) throws(SAELabelError) -> StoredExplanation? {
        try read { db in try Self.explanation(db, feature: feature, pass: pass) }
    }

    /// Whether `id` was labeled over the examples the store holds now (same inputs, input version and
    /// collect settings as the current pass). Simulated values of another pass belong to other windows.
    public func passSharesExamples(_ id: String) throws(SAELabelError) -> Bool {
        try read { db in
            guard let current = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") else { return false }
            if current == id { return true }
            let sql = "SELECT inputs || ' | ' || collect_settings || ' | ' || input_version FROM labeling_pass WHERE id = ?"
            guard let mine = try String.fetchOne(db, sql: sql, arguments: [id]),
                  let now = try String.fetchOne(db, sql: sql, arguments: [current]) else { return false }
            return mine == now
        }
    }

    public func passExists(_ id: String) throws(SAELabelError) -> Bool {
        try read { db in
            try Bool.fetchOne(db, sql: """
                SELECT EXISTS (SELECT 1 FROM labeling_pass WHERE id = ?) OR EXISTS (SELECT 1 FROM explanation WHERE pass = ?)
                """, arguments: [id, id]) ?? false
        }
    }

    /// Every pass, oldest first, with its counts. Passes written before passes were recorded appear
    /// with what their explanations tell.
    public func passes() throws(SAELabelError) -> [LabelingPass] {
        try read { db in
            let current = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'")
            var result: [LabelingPass] = try Row.fetchAll(db, sql: "SELECT * FROM labeling_pass ORDER BY created_at, id").map {
                LabelingPass(id: $0["id"], explainer: $0["explainer"], explainerModel: $0["explainer_model"],
                             explainerPromptHash: $0["explainer_prompt_hash"], collectSettings: $0["collect_settings"],
                             inputs: $0["inputs"], inputVersion: $0["input_version"], createdAt: $0["created_at"])
            }
            let known = Set(result.map(\.id))
            for row in try Row.fetchAll(db, sql: """
                SELECT pass, MIN(explainer_model) AS model, MIN(prompt_hash) AS hash, MIN(created_at) AS created
                FROM explanation GROUP BY pass ORDER BY created
                """) where !known.contains(row["pass"]) {
                result.append(LabelingPass(id: row["pass"], explainer: "?", explainerModel: row["model"], explainerPromptHash: row["hash"],
                                           collectSettings: "", inputs: "", inputVersion: 0, createdAt: row["created"]))
            }
            for index in result.indices {
                let id = result[index].id
                result[index].isCurrent = id == current
                result[index].explanations = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM explanation WHERE pass = ?", arguments: [id]) ?? 0
                for row in try Row.fetchAll(db, sql: """
                    SELECT s.scorer, s.model, COUNT(*) AS n FROM score s JOIN explanation e ON e.id = s.explanation
                    WHERE e.pass = ? GROUP BY s.scorer, s.model ORDER BY s.scorer, s.model
                    """, arguments: [id]) {
                    let scorer: String = row["scorer"]
                    result[index].scores[scorer, default: 0] += row["n"] as Int
                    result[index].scorerModels.append("\(scorer) \(row["model"] as String)")
                }
                result[index].meanSimulation = try Double.fetchOne(db, sql: """
                    SELECT AVG(s.value) FROM score s JOIN explanation e ON e.id = s.explanation
                    WHERE e.pass = ? AND s.scorer = 'simulation' AND s.value IS NOT NULL
                    """, arguments: [id])
            }
            return result
        }
    }

    /// Labels and scores of two passes side by side, one row per feature labeled in either.
    public func comparePasses(_ a: String, _ b: String) throws(SAELabelError) -> PassComparison {
        for id in [a, b] {
            guard try passExists(id) else {
                throw .usage("no pass \(id) in \(path); `saelabel passes --db \(path)` lists them")
            }
        }
        return try read { db in
            func labels(_ pass: String) throws -> [Int: (String, [String: Double?])] {
                var result: [Int: (String, [String: Double?])] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT id, feature, text FROM explanation WHERE pass = ?", arguments: [pass]) {
                    var scores: [String: Double?] = [:]
                    for score in try Row.fetchAll(db, sql: "SELECT scorer, value FROM score WHERE explanation = ?",
                                                  arguments: [row["id"] as Int64]) {
                        scores[score["scorer"] as String] = score["value"] as Double?
                    }
                    result[row["feature"]] = (row["text"], scores)
                }
                return result
            }
            let left = try labels(a)
            let right = try labels(b)
            let features = Set(left.keys).union(right.keys).sorted()
            let rows = features.map { feature in
                PassComparison.Row(feature: feature, labelA: left[feature]?.0, labelB: right[feature]?.0,
                                   scoresA: left[feature]?.1 ?? [:], scoresB: right[feature]?.1 ?? [:])
            }
            return PassComparison(a: a, b: b, rows: rows)
        }
    }

    /// Features of the selection in a labeled state whose current explanation lacks a score row from
    /// one of `scorers` (name, model, prompt hash), so adding a scorer scores only what it has not seen.
    public func featuresMissingScores(_ scorers: [(name: String, model: String, promptHash: String)],
                                      selection: FeatureSelection) throws(SAELabelError) -> [Int] {
        guard !scorers.isEmpty else { return [] }
        let candidates = try features(in: [.scored], selection: selection)
        guard !candidates.isEmpty else { return [] }
        return try read { db in
            let pass = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") ?? "default"
            let statement = try db.cachedStatement(sql: """
                SELECT s.scorer, s.model, s.prompt_hash FROM score s JOIN explanation e ON e.id = s.explanation
                WHERE e.feature = ? AND e.pass = ?
                """)
            var missing: [Int] = []
            for feature in candidates {
                let rows = try Row.fetchAll(statement, arguments: [feature, pass])
                let have = Set(rows.map { "\($0["scorer"] as String)\u{0}\($0["model"] as String)\u{0}\($0["prompt_hash"] as String)" })
                if scorers.contains(where: { !have.contains("\($0.name)\u{0}\($0.model)\u{0}\($0.promptHash)") }) {
                    missing.append(feature)
                }
            }
            return missing
        }
    }

    /// Removes a score row made by another model or prompt, so the scorer can score the label again.
    public func removeStaleScore(explanation: StoredExplanation, scorer: String) throws(SAELabelError) {
        try write { db in
            try db.execute(sql: "DELETE FROM score WHERE explanation = ? AND scorer = ?", arguments: [explanation.id, scorer])
        }
    }

    /// Drops the cached answers of the calls with these tags (answers a scorer could not use).
    public func forgetLLMResponses(tags: [String]) throws(SAELabelError) {
        guard !tags.isEmpty else { return }
        try write { db in
            for tag in tags {
                try db.execute(sql: "DELETE FROM llm_response WHERE key IN (SELECT key FROM llm_call WHERE tag = ?)", arguments: [tag])
            }
        }
    }
}
