import Foundation
import LLMClient
import SAELabelStore

/// Lets the LLM client keep its content-addressed response cache and call log in the job store,
/// so a resumed job answers finished calls from disk instead of paying for them again.
struct StoreResponseCache: LLMResponseCache {
    let store: JobStore
    let progress: ProgressReporter?

    func cachedResponse(forKey key: String) -> Data? {
        store.cachedLLMResponse(key: key)
    }

    func storeResponse(_ body: Data, forKey key: String, record: LLMCallRecord) {
        // The client logs the call itself through recordCall; a failed write here only costs a repeat call later.
        try? store.storeLLMResponse(key: key, body: body)
    }

    func recordCall(_ record: LLMCallRecord) {
        if record.outcome == "ok" {
            progress?.addTokens(stage: record.tag.hasPrefix("explain") ? "explain" : "score",
                                prompt: record.promptTokens, completion: record.completionTokens)
        }
        try? store.recordLLMCall(key: record.key, endpoint: record.endpoint, model: record.model, tag: record.tag,
                                 promptTokens: record.promptTokens, completionTokens: record.completionTokens,
                                 cachedPromptTokens: record.cachedPromptTokens,
                                 latencySeconds: record.latencySeconds, outcome: record.outcome, attempt: record.attempt)
    }
}
