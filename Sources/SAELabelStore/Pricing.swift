import Foundation
import GRDB
import SAELabelCore

/// One model's prices in the job's currency per million tokens (the job file's `[prices."MODEL"]`).
public struct ModelPrice: Sendable, Equatable, Codable {
    public var input: Double
    /// Prompt tokens the provider's prompt cache answered (`usage.prompt_tokens_details.cached_tokens`).
    public var cachedInput: Double
    public var output: Double
    /// Fraction taken off calls sent through a Batch API (OpenAI: 0.5).
    public var batchDiscount: Double

    public init(input: Double, cachedInput: Double? = nil, output: Double, batchDiscount: Double = 0) {
        self.input = input
        self.cachedInput = cachedInput ?? input
        self.output = output
        self.batchDiscount = batchDiscount
    }

    /// What a call cost: cached prompt tokens at the cached price, the rest of the prompt at the input price.
    public func cost(promptTokens: Int, cachedPromptTokens: Int = 0, completionTokens: Int, batch: Bool = false) -> Double {
        let cached = min(max(cachedPromptTokens, 0), promptTokens)
        let full = Double(promptTokens - cached) * input + Double(cached) * cachedInput + Double(completionTokens) * output
        return full / 1_000_000 * (batch ? 1 - batchDiscount : 1)
    }
}

extension JobStore {
    static let pricesSetting = "prices"

    /// The prices the last run's job file gave (kept in the store so `status` can say what was spent).
    public func prices() throws(SAELabelError) -> [String: ModelPrice] {
        guard let text = try setting(Self.pricesSetting) else { return [:] }
        return (try? JSONDecoder().decode([String: ModelPrice].self, from: Data(text.utf8))) ?? [:]
    }

    public func setPrices(_ prices: [String: ModelPrice]) throws(SAELabelError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        guard let data = try? encoder.encode(prices) else { return }
        try setSetting(Self.pricesSetting, String(decoding: data, as: UTF8.self))
    }

    /// What the answered calls (not cache hits) cost so far, by the given prices; calls to models
    /// without a price count 0.
    public func spent(prices: [String: ModelPrice]) throws(SAELabelError) -> Double {
        try usageByStage().reduce(0) { total, usage in
            total + (prices[usage.model].map { usage.cost(at: $0) } ?? 0)
        }
    }

    /// Answered calls and their tokens per stage (`explain`, `score`), model, and synchronous or batch.
    public func usageByStage() throws(SAELabelError) -> [JobStatus.StageUsage] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT CASE WHEN tag LIKE 'explain%' THEN 'explain' ELSE 'score' END AS stage, model, batch,
                       COUNT(*) AS calls, SUM(prompt_tokens) AS prompt, SUM(cached_prompt_tokens) AS cached,
                       SUM(completion_tokens) AS completion
                FROM llm_call WHERE outcome = 'ok' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
                """).map {
                JobStatus.StageUsage(stage: $0["stage"], model: $0["model"], batch: $0["batch"], calls: $0["calls"],
                                     promptTokens: $0["prompt"], cachedPromptTokens: $0["cached"], completionTokens: $0["completion"])
            }
        }
    }
}
