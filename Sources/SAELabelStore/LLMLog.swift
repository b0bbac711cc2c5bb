import Foundation
import GRDB
import SAELabelCore

/// The LLM response cache and call log. The client (module LLMClient) reaches them through an adapter
/// in SAELabelRun, so the store does not depend on the client.
extension JobStore {
    public func cachedLLMResponse(key: String) -> Data? {
        try? read { db in try Data.fetchOne(db, sql: "SELECT body FROM llm_response WHERE key = ?", arguments: [key]) }
    }

    public func storeLLMResponse(key: String, body: Data) throws(SAELabelError) {
        try write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO llm_response(key, body, created_at) VALUES (?, ?, ?)",
                           arguments: [key, body, Date()])
        }
    }

    public func recordLLMCall(key: String, endpoint: String, model: String, tag: String, promptTokens: Int,
                              completionTokens: Int, cachedPromptTokens: Int = 0, latencySeconds: Double, outcome: String,
                              attempt: Int) throws(SAELabelError) {
        try write { db in
            try db.execute(sql: """
                INSERT INTO llm_call(key, endpoint, model, tag, prompt_tokens, completion_tokens, cached_prompt_tokens, latency_ms,
                                     outcome, attempt, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [key, endpoint, model, tag, promptTokens, completionTokens, cachedPromptTokens, latencySeconds * 1000,
                                 outcome, attempt, Date()])
        }
    }
}
