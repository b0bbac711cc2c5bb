import Foundation
import GRDB
import SAELabelCore

/// What `saelabel status` reports.
public struct JobStatus: Sendable, Equatable, Codable {
    public struct Failure: Sendable, Equatable, Codable {
        public var feature: Int
        public var stage: String
        public var reason: String
        public var attempts: Int

        public init(feature: Int, stage: String, reason: String, attempts: Int) {
            self.feature = feature
            self.stage = stage
            self.reason = reason
            self.attempts = attempts
        }
    }

    public struct LLMUsage: Sendable, Equatable, Codable {
        /// Calls that reached a server and got an answer (successful or not).
        public var calls: Int
        public var cacheHits: Int
        public var failedAttempts: Int
        public var promptTokens: Int
        public var completionTokens: Int
        /// Prompt tokens the servers' prompt caches answered (part of promptTokens).
        public var cachedPromptTokens: Int = 0
    }

    /// Answered calls of one stage (`explain` or `score`) to one model, and what they cost at the
    /// job file's prices (nil without a price for the model).
    public struct StageUsage: Sendable, Equatable, Codable {
        public var stage: String
        public var model: String
        /// Calls answered through a provider's Batch API (billed at the model's batch discount).
        public var batch: Bool = false
        public var calls: Int
        public var promptTokens: Int
        public var cachedPromptTokens: Int
        public var completionTokens: Int
        public var cost: Double?

        /// What these calls cost at `price` (cached prompt tokens at the cached rate, batch calls discounted).
        public func cost(at price: ModelPrice) -> Double {
            price.cost(promptTokens: promptTokens, cachedPromptTokens: cachedPromptTokens, completionTokens: completionTokens,
                       batch: batch)
        }
    }

    public var path: String
    public var currentPass: String?
    public var features: Int
    /// Count per state; every state is present (0 when none).
    public var states: [String: Int]
    public var explanations: Int
    public var scores: [String: Int]
    public var failures: [Failure]
    /// Failed features beyond those listed.
    public var failuresNotListed: Int = 0
    public var llm: LLMUsage
    public var meanSimulationScore: Double?
    /// Models of the current pass: "explainer MODEL" and "SCORER MODEL".
    public var models: [String] = []
    /// The current pass's simulation scores (computed ones; failures are not scores).
    public var simulationScores: ScoreDistribution?
    /// Tokens and money per stage and model (money when the job file priced the model).
    public var usageByStage: [StageUsage] = []
    /// Money spent on every priced call, and per labeled (explained) feature of the current pass.
    public var cost: Double?
    public var costPerLabeledFeature: Double?
}

/// Count, mean, median and a count per bin of a set of scores.
public struct ScoreDistribution: Sendable, Equatable, Codable {
    public struct Bin: Sendable, Equatable, Codable {
        public var label: String
        public var count: Int
    }
    public var count: Int
    public var mean: Double
    public var median: Double
    public var bins: [Bin]

    /// nil for no values. Bins: below 0, then 0.2 wide up to 1.
    public init?(_ values: [Double]) {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        count = values.count
        mean = values.reduce(0, +) / Double(values.count)
        median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        let edges: [Double] = [-1, 0, 0.2, 0.4, 0.6, 0.8, 1.0001]
        bins = (0..<(edges.count - 1)).map { index in
            let label = index == 0 ? "<0" : String(format: "%.1f–%.1f", edges[index], min(edges[index + 1], 1))
            return Bin(label: label, count: values.filter { $0 >= edges[index] && $0 < edges[index + 1] }.count)
        }
    }
}

extension JobStore {
    /// `maxFailuresListed` nil lists every failed feature.
    public func status(maxFailuresListed: Int? = 50) throws(SAELabelError) -> JobStatus {
        var status: JobStatus = try read { db in
            var states: [String: Int] = [:]
            for state in FeatureState.allCases { states[state.rawValue] = 0 }
            for row in try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM feature GROUP BY state") {
                states[row["state"]] = row["n"]
            }
            let total = states.values.reduce(0, +)
            let pass = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'")
            let explanations = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM explanation WHERE pass = ?", arguments: [pass ?? "default"]) ?? 0
            var scores: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT s.scorer, COUNT(*) AS n FROM score s JOIN explanation e ON e.id = s.explanation
                WHERE e.pass = ? GROUP BY s.scorer
                """, arguments: [pass ?? "default"]) {
                scores[row["scorer"]] = row["n"]
            }
            let failures = try Row.fetchAll(db, sql: """
                SELECT id, failed_stage, failure_reason, attempts FROM feature WHERE state = 'failed' ORDER BY id LIMIT ?
                """, arguments: [maxFailuresListed ?? -1]).map {
                JobStatus.Failure(feature: $0["id"], stage: $0["failed_stage"] ?? "?", reason: $0["failure_reason"] ?? "", attempts: $0["attempts"])
            }
            let usageRow = try Row.fetchOne(db, sql: """
                SELECT SUM(CASE WHEN outcome NOT IN ('cache_hit', 'transport', 'timeout') THEN 1 ELSE 0 END) AS calls,
                       SUM(CASE WHEN outcome = 'cache_hit' THEN 1 ELSE 0 END) AS hits,
                       SUM(CASE WHEN outcome NOT IN ('ok', 'cache_hit') THEN 1 ELSE 0 END) AS failed,
                       SUM(CASE WHEN outcome = 'ok' THEN prompt_tokens ELSE 0 END) AS prompt,
                       SUM(CASE WHEN outcome = 'ok' THEN completion_tokens ELSE 0 END) AS completion,
                       SUM(CASE WHEN outcome = 'ok' THEN cached_prompt_tokens ELSE 0 END) AS cached
                FROM llm_call
                """)
            let usage = JobStatus.LLMUsage(calls: usageRow?["calls"] ?? 0, cacheHits: usageRow?["hits"] ?? 0,
                                           failedAttempts: usageRow?["failed"] ?? 0, promptTokens: usageRow?["prompt"] ?? 0,
                                           completionTokens: usageRow?["completion"] ?? 0,
                                           cachedPromptTokens: usageRow?["cached"] ?? 0)
            let mean = try Double.fetchOne(db, sql: """
                SELECT AVG(s.value) FROM score s JOIN explanation e ON e.id = s.explanation
                WHERE e.pass = ? AND s.scorer = 'simulation' AND s.value IS NOT NULL
                """, arguments: [pass ?? "default"])
            var models = try String.fetchAll(db, sql: "SELECT DISTINCT explainer_model FROM explanation WHERE pass = ? ORDER BY 1",
                                             arguments: [pass ?? "default"]).map { "explainer \($0)" }
            models += try Row.fetchAll(db, sql: """
                SELECT DISTINCT s.scorer, s.model FROM score s JOIN explanation e ON e.id = s.explanation
                WHERE e.pass = ? ORDER BY 1, 2
                """, arguments: [pass ?? "default"]).map { "\($0["scorer"] as String) \($0["model"] as String)" }
            let values = try Double.fetchAll(db, sql: """
                SELECT s.value FROM score s JOIN explanation e ON e.id = s.explanation
                WHERE e.pass = ? AND s.scorer = 'simulation' AND s.value IS NOT NULL
                """, arguments: [pass ?? "default"])
            var status = JobStatus(path: path, currentPass: pass, features: total, states: states, explanations: explanations,
                                   scores: scores, failures: failures, llm: usage, meanSimulationScore: mean)
            status.failuresNotListed = max(0, states[FeatureState.failed.rawValue, default: 0] - failures.count)
            status.models = models
            status.simulationScores = ScoreDistribution(values)
            return status
        }
        status.usageByStage = try usageByStage()
        let prices = try prices()
        if !prices.isEmpty {
            for index in status.usageByStage.indices {
                let usage = status.usageByStage[index]
                status.usageByStage[index].cost = prices[usage.model].map { usage.cost(at: $0) }
            }
            let total = status.usageByStage.compactMap(\.cost).reduce(0, +)
            status.cost = total
            status.costPerLabeledFeature = status.explanations > 0 ? total / Double(status.explanations) : nil
        }
        return status
    }
}
