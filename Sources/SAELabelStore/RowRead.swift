import Foundation
import GRDB
import SAELabelCore

extension JobStore {
    /// Fetches every example and score row's text and returns how many rows and text bytes there were: the floor under
    /// any export's cost, which `saelabel-bench store` compares exports against.
    public func benchReadAllRows() throws(SAELabelError) -> (rows: Int, bytes: Int) {
        try read { db in
            var rows = 0
            var characters = 0
            let examples = try Row.fetchCursor(db, sql: """
                SELECT \(TextWindows.exampleColumns) FROM \(TextWindows.examplesJoined) ORDER BY e.feature, e.split, e.ordinal
                """)
            while let row = try examples.next() {
                characters += (row["tokens"] as String).utf8.count + (row["activations"] as String).utf8.count
                rows += 1
            }
            let scores = try Row.fetchCursor(db, sql: "SELECT feature, details FROM score ORDER BY feature")
            while let row = try scores.next() {
                characters += (row["details"] as String).utf8.count
                rows += 1
            }
            return (rows, characters)
        }
    }
}

/// One labeled and scored feature as a finished run leaves it, for `JobStore.benchSaveLabeled`.
public struct BenchLabeledFeature: Sendable {
    public struct CachedCall: Sendable {
        /// The call tag the stage logs ("explain:F", "simulate:F:ordinal", …), which `prune` reads.
        public var tag: String
        public var key: String
        public var body: Data
        public init(tag: String, key: String, body: Data) { self.tag = tag; self.key = key; self.body = body }
    }

    public var feature: Int
    public var explanation: String
    public var explainerModel: String
    public var promptHash: String
    public var scores: [StoredScore]
    public var cachedCalls: [CachedCall]

    public init(feature: Int, explanation: String, explainerModel: String, promptHash: String, scores: [StoredScore],
                cachedCalls: [CachedCall]) {
        self.feature = feature
        self.explanation = explanation
        self.explainerModel = explainerModel
        self.promptHash = promptHash
        self.scores = scores
        self.cachedCalls = cachedCalls
    }
}

extension JobStore {
    /// Saves many labeled features of the current pass in one transaction with prepared statements:
    /// the label, its scores (the feature becomes `scored`) and the cached LLM answers with their call
    /// log, as the stages would have left them. Only for building synthetic stores: the stages save
    /// one feature per transaction so a kill loses only the work in flight.
    public func benchSaveLabeled(_ features: [BenchLabeledFeature]) throws(SAELabelError) {
        try write { db in
            let pass = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") ?? "default"
            let now = Date()
            let explanation = try db.cachedStatement(sql: """
                INSERT INTO explanation(feature, pass, text, explainer_model, prompt_hash, raw_response, created_at)
                VALUES (?, ?, ?, ?, ?, NULL, ?)
                """)
            let score = try db.cachedStatement(sql: """
                INSERT INTO score(explanation, feature, scorer, value, model, prompt_hash, details, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """)
            let state = try db.cachedStatement(sql: "UPDATE feature SET state = 'scored', updated_at = ? WHERE id = ?")
            let response = try db.cachedStatement(sql: "INSERT OR IGNORE INTO llm_response(key, body, created_at) VALUES (?, ?, ?)")
            let call = try db.cachedStatement(sql: """
                INSERT INTO llm_call(key, endpoint, model, tag, prompt_tokens, completion_tokens, latency_ms, outcome, attempt, created_at)
                VALUES (?, 'http://127.0.0.1:8080/v1', ?, ?, 500, 40, 900, 'ok', 1, ?)
                """)
            for feature in features {
                try explanation.execute(arguments: [feature.feature, pass, feature.explanation, feature.explainerModel, feature.promptHash, now])
                let id = db.lastInsertedRowID
                for s in feature.scores {
                    try score.execute(arguments: [id, feature.feature, s.scorer, s.value, s.model, s.promptHash, s.details, now])
                }
                try state.execute(arguments: [now, feature.feature])
                for c in feature.cachedCalls {
                    try response.execute(arguments: [c.key, c.body, now])
                    try call.execute(arguments: [c.key, feature.explainerModel, c.tag, now])
                }
            }
        }
    }
}

extension JobStore {
    /// Every label and score of every pass as counts and a 64-bit FNV-1a over their columns in id
    /// order (the raw explainer answers left out: prune clears those of old passes by design), for
    /// `saelabel-bench store` to show that prune kept them all.
    public func benchLabelsAndScores() throws(SAELabelError) -> (labels: Int, scores: Int, digest: UInt64) {
        try read { db in
            var digest: UInt64 = 0xcbf2_9ce4_8422_2325
            func add(_ sql: String) throws -> Int {
                let rows = try Row.fetchCursor(db, sql: sql)
                var count = 0
                while let row = try rows.next() {
                    for byte in row.description.utf8 { digest = (digest ^ UInt64(byte)) &* 0x100_0000_01b3 }
                    count += 1
                }
                return count
            }
            let labels = try add("SELECT id, feature, pass, text, explainer_model, prompt_hash, created_at FROM explanation ORDER BY id")
            let scores = try add("SELECT * FROM score ORDER BY id")
            return (labels, scores, digest)
        }
    }
}

extension JobStore {
    /// The migrations a store file has had applied, read without opening it as a job store (which would apply
    /// the rest), for `saelabel-bench migrate`.
    public static func benchAppliedMigrations(store path: String) throws(SAELabelError) -> [String] {
        do {
            let queue = try DatabaseQueue(path: path)
            defer { try? queue.close() }
            return try queue.read { db in try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations") }
        } catch {
            throw wrap(error)
        }
    }

    /// `VACUUM INTO copy` of a store file without opening it as a job store, then an fsync of the copy: a plain
    /// rewrite of every used page, the yardstick `saelabel-bench migrate` times the migration against.
    public static func benchVacuumCopy(store path: String, to copy: String) throws(SAELabelError) {
        do {
            let queue = try DatabaseQueue(path: path)
            defer { try? queue.close() }
            try queue.writeWithoutTransaction { db in try db.execute(sql: "VACUUM INTO ?", arguments: [copy]) }
        } catch {
            throw wrap(error)
        }
        try syncFile(copy)
    }
}
