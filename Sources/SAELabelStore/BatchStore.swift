import Foundation
import GRDB
import SAELabelCore

/// One request of a batch-mode stage, as the store keeps it until its answer is in the response cache.
public struct BatchRequestRecord: Sendable, Equatable {
    /// The response-cache key, used as the batch line's `custom_id`.
    public var key: String
    public var stage: String
    /// The endpoint path under the base URL, e.g. "/chat/completions".
    public var path: String
    public var body: Data

    public init(key: String, stage: String, path: String, body: Data) {
        self.key = key
        self.stage = stage
        self.path = path
        self.body = body
    }
}

/// Batch mode's bookkeeping: the requests (queued → submitted → answered, or failed once and then sent
/// synchronously) and the provider batches they went out in.
extension JobStore {
    /// Queues a request unless the store already knows it. Returns false when the request must go out
    /// synchronously: its batch line failed before (one batch try per request, then the normal client retries).
    public func enqueueBatchRequest(key: String, stage: String, path: String, body: Data, tag: String) -> Bool {
        let state: String? = try? write { db in
            try db.execute(sql: """
                INSERT OR IGNORE INTO batch_request(key, stage, path, body, state, created_at, tag) VALUES (?, ?, ?, ?, 'queued', ?, ?)
                """, arguments: [key, stage, path, body, Date(), tag])
            return try String.fetchOne(db, sql: "SELECT state FROM batch_request WHERE key = ?", arguments: [key])
        }
        // An answered request whose answer is not cached (cannot happen unless the cache was cleared): send it.
        return state == "queued" || state == "submitted"
    }

    /// Requests waiting to be submitted, oldest first (optionally of one stage).
    public func queuedBatchRequests(stage: String? = nil) throws(SAELabelError) -> [BatchRequestRecord] {
        try batchRequests(state: "queued", stage: stage)
    }

    /// Requests sent in batches that have not been read back yet (what an open batch may still cost).
    public func submittedBatchRequests(batch: String? = nil) throws(SAELabelError) -> [BatchRequestRecord] {
        try batchRequests(state: "submitted", batch: batch)
    }

    /// Requests in one state, optionally of one stage or one batch, oldest first.
    private func batchRequests(state: String, stage: String? = nil, batch: String? = nil) throws(SAELabelError) -> [BatchRequestRecord] {
        try read { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT key, stage, path, body FROM batch_request
                WHERE state = ? AND (? IS NULL OR stage = ?) AND (? IS NULL OR batch_id = ?)
                ORDER BY created_at, key
                """, arguments: [state, stage, stage, batch, batch])
            return rows.map { BatchRequestRecord(key: $0["key"], stage: $0["stage"], path: $0["path"], body: $0["body"]) }
        }
    }

    /// Records a created batch and marks its requests submitted, in one transaction.
    public func recordBatch(id: String, stage: String, inputFileID: String, status: String, keys: [String]) throws(SAELabelError) {
        try write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO llm_batch(id, stage, input_file_id, status, done, created_at) VALUES (?, ?, ?, ?, 0, ?)",
                           arguments: [id, stage, inputFileID, status, Date()])
            for key in keys {
                try db.execute(sql: "UPDATE batch_request SET state = 'submitted', batch_id = ? WHERE key = ?", arguments: [id, key])
            }
        }
    }

    /// Batches not yet read back: (id, stage).
    public func openBatches() throws(SAELabelError) -> [(id: String, stage: String)] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT id, stage FROM llm_batch WHERE done = 0 ORDER BY created_at").map { ($0["id"], $0["stage"]) }
        }
    }

    public func updateBatchStatus(id: String, status: String) throws(SAELabelError) {
        try write { db in try db.execute(sql: "UPDATE llm_batch SET status = ? WHERE id = ?", arguments: [status, id]) }
    }

    /// Closes a finished batch: answers go into the response cache (same key as a synchronous call) and into
    /// the call log with their usage, as batch calls; failed lines are marked so their requests go out
    /// synchronously, and lines the batch never answered count as failed.
    public func closeBatch(id: String, status: String, answers: [String: Data], failures: [String: String],
                           usage: [String: BatchCallUsage] = [:]) throws(SAELabelError) {
        try write { db in
            let keys = try String.fetchAll(db, sql: "SELECT key FROM batch_request WHERE batch_id = ? AND state = 'submitted'", arguments: [id])
            for key in keys {
                if let body = answers[key] {
                    try Self.answerBatchRequest(db, key: key, body: body, usage: usage[key], source: "batch \(id)")
                } else {
                    let reason = failures[key] ?? "no answer in the \(status) batch"
                    try db.execute(sql: "UPDATE batch_request SET state = 'failed', error = ? WHERE key = ?", arguments: [reason, key])
                }
            }
            try db.execute(sql: "UPDATE llm_batch SET status = ?, done = 1 WHERE id = ?", arguments: [status, id])
        }
    }

    /// Answers from a file the user ran offline (vLLM's run_batch): cached and marked answered; failed
    /// lines are marked so the next run sends them synchronously. Returns (answered, failed, unknown ids).
    public func importBatchAnswers(answers: [String: Data], failures: [String: String],
                                   usage: [String: BatchCallUsage] = [:]) throws(SAELabelError) -> (Int, Int, Int) {
        try write { db in
            var answered = 0, failed = 0, unknown = 0
            for (key, body) in answers {
                guard try Bool.fetchOne(db, sql: "SELECT 1 FROM batch_request WHERE key = ?", arguments: [key]) != nil else {
                    unknown += 1
                    continue
                }
                try Self.answerBatchRequest(db, key: key, body: body, usage: usage[key], source: "batch import")
                answered += 1
            }
            for (key, reason) in failures where answers[key] == nil {
                try db.execute(sql: "UPDATE batch_request SET state = 'failed', error = ? WHERE key = ? AND state != 'answered'",
                               arguments: [reason, key])
                if db.changesCount > 0 { failed += 1 } else { unknown += 1 }
            }
            return (answered, failed, unknown)
        }
    }

    /// One answered batch line: its answer goes into the response cache and, when it reports usage, a
    /// call row (outcome ok, marked batch) goes into the log with the request's model and tag, so status,
    /// the summary and max_cost count it like a synchronous call, at the batch price.
    private static func answerBatchRequest(_ db: Database, key: String, body: Data, usage: BatchCallUsage?, source: String) throws {
        try db.execute(sql: "INSERT OR IGNORE INTO llm_response(key, body, created_at) VALUES (?, ?, ?)", arguments: [key, body, Date()])
        try db.execute(sql: "UPDATE batch_request SET state = 'answered' WHERE key = ?", arguments: [key])
        guard let usage, let row = try Row.fetchOne(db, sql: "SELECT stage, tag, body FROM batch_request WHERE key = ?", arguments: [key]) else {
            return
        }
        let request = try? JSONSerialization.jsonObject(with: row["body"] as Data) as? [String: Any]
        let model = request?["model"] as? String ?? ""
        let tag = (row["tag"] as String?) ?? (row["stage"] as String)
        try db.execute(sql: """
            INSERT INTO llm_call(key, endpoint, model, tag, prompt_tokens, completion_tokens, cached_prompt_tokens, latency_ms,
                                 outcome, attempt, created_at, batch)
            VALUES (?, ?, ?, ?, ?, ?, ?, 0, 'ok', 1, ?, 1)
            """, arguments: [key, source, model, tag, usage.promptTokens, usage.completionTokens, usage.cachedPromptTokens, Date()])
    }

    /// Request counts by state (for status and the summary).
    public func batchRequestCounts() throws(SAELabelError) -> [String: Int] {
        try read { db in
            Dictionary(uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM batch_request GROUP BY state")
                .map { ($0["state"] as String, $0["n"] as Int) })
        }
    }
}

/// The tokens a batch line's answer reports (its `usage`), as logged for it.
public struct BatchCallUsage: Sendable, Equatable {
    public var promptTokens: Int
    public var cachedPromptTokens: Int
    public var completionTokens: Int

    public init(promptTokens: Int, cachedPromptTokens: Int, completionTokens: Int) {
        self.promptTokens = promptTokens
        self.cachedPromptTokens = cachedPromptTokens
        self.completionTokens = completionTokens
    }
}
