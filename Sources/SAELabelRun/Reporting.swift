import Foundation
import SAELabelCore
import SAELabelStore

/// Text the commands print: the end-of-run summary, `status`, and `--dry-run`.
public enum Reporting {
    public static func summary(_ report: RunReport) -> String {
        var lines: [String] = []
        let status = report.status
        if let collect = report.collect {
            lines.append("collect: \(collect.collected) features from \(collect.tokens) tokens (\(collect.excludedTokens) excluded); \(collect.dead) dead, \(collect.sparse) too sparse")
        }
        if let labeling = report.labeling {
            lines.append("this run: \(labeling.explained) explained, \(labeling.scored) scored, \(labeling.failed.count) failed")
        }
        lines.append(stateLine(status))
        if !report.scoreValues.isEmpty {
            lines.append("simulation scores (\(report.scoreValues.count) features): " + distribution(report.scoreValues))
        }
        if let carry = report.carryOver {
            if let note = carry.note {
                lines.append(note)
            } else if carry.matched > 0 {
                let median = carry.medianCosine.map { String(format: "%.3f", $0) } ?? "-"
                lines.append("carry-over: \(carry.matched) matched (decoder cosine ≥ \(carry.minCosine), median \(median)), \(carry.carried) carried and re-scored, \(carry.reexplained) re-explained; \(carry.explainCallsSaved) explain calls saved")
            }
        }
        if let llm = report.llm {
            lines.append("LLM this run: \(llm.requestsSent) requests sent (\(llm.retries) retries), \(llm.cacheHits) answered from the store's cache, \(llm.promptTokens) tokens in / \(llm.completionTokens) out")
        }
        lines.append("LLM (store total, all runs): \(status.llm.calls) calls, \(status.llm.cacheHits) answered from the store's cache, \(status.llm.promptTokens) tokens in / \(status.llm.completionTokens) out")
        lines += spending(status)
        if report.labeling?.stoppedByBudget == true {
            lines.append("stopped: the next calls could exceed [limits] max_cost; raise it and run again to continue (nothing is paid twice)")
        }
        if !status.failures.isEmpty {
            lines.append("failed:")
            for failure in status.failures.prefix(20) {
                lines.append("  feature \(failure.feature) (\(failure.stage), \(failure.attempts) attempt\(failure.attempts == 1 ? "" : "s")): \(failure.reason)")
            }
            if status.failures.count > 20 { lines.append("  … see `saelabel status --db \(status.path)`") }
        }
        if !report.batchRequests.isEmpty {
            let counts = ["answered", "failed", "submitted", "queued"].map { "\(report.batchRequests[$0, default: 0]) \($0)" }
            lines.append("batch requests (store total): " + counts.joined(separator: ", ") + " (failed lines are sent synchronously)")
        }
        if report.batchesWaiting > 0 {
            lines.append("batch: \(report.batchesWaiting) batch\(report.batchesWaiting == 1 ? "" : "es") still running; run the same command again later to collect the answers (exit 4)")
        }
        if report.batchRequestsQueued > 0 {
            lines.append("batch: \(report.batchRequestsQueued) requests wait for an offline batch: `saelabel batch export --db \(status.path) --stage explain|score --out requests.jsonl`, run vLLM's run_batch on it, `saelabel batch import --db \(status.path) results.jsonl`, then run again (exit 4)")
        }
        for path in report.exports { lines.append("wrote \(path)") }
        lines.append(String(format: "wall time %.1f s", report.wallSeconds))
        return lines.joined(separator: "\n")
    }

    /// Tokens (with the prompt-cached part) and money per stage and model, then the total and the
    /// cost per labeled feature; money only for models the job file prices.
    static func spending(_ status: JobStatus) -> [String] {
        var lines = status.usageByStage.map { usage in
            let cost = usage.cost.map { String(format: ", cost %.4f", $0) } ?? ""
            return "  \(usage.stage) (\(usage.model)\(usage.batch ? ", batch" : "")): \(usage.calls) calls, \(usage.promptTokens) tokens in "
                + "(\(usage.cachedPromptTokens) prompt-cached) / \(usage.completionTokens) out\(cost)"
        }
        if let cost = status.cost {
            let perFeature = status.costPerLabeledFeature.map { String(format: ", %.5f per labeled feature", $0) } ?? ""
            lines.append(String(format: "cost: %.4f spent", cost) + perFeature + " (at the job file's [prices])")
        }
        return lines
    }

    static func stateLine(_ status: JobStatus) -> String {
        let order: [FeatureState] = [.scored, .explained, .collected, .pending, .dead, .sparse, .failed]
        return "features: \(status.features) — " + order.map { "\($0.rawValue) \(status.states[$0.rawValue, default: 0])" }.joined(separator: ", ")
    }

    /// Mean, median and a count per 0.2-wide bin of the scores.
    public static func distribution(_ values: [Double]) -> String {
        ScoreDistribution(values).map(distribution) ?? "none"
    }

    static func distribution(_ d: ScoreDistribution) -> String {
        String(format: "mean %.3f, median %.3f; ", d.mean, d.median) + d.bins.map { "\($0.label): \($0.count)" }.joined(separator: ", ")
    }

    /// Failures of this run on stderr: one line per cause with a count and example features, instead
    /// of one line per attempt.
    public static func failureSummary(_ failed: [Int: String], examples: Int = 5) -> [String] {
        // Reasons that differ only in their numbers ("5 of 5 windows", "3 of 3 windows") are one cause.
        var byCause: [String: (example: String, features: [Int])] = [:]
        for (feature, reason) in failed.sorted(by: { $0.key < $1.key }) {
            let cause = reason.replacingOccurrences(of: "[0-9]+", with: "#", options: .regularExpression)
            byCause[cause, default: (reason, [])].features.append(feature)
        }
        let causes = byCause.values.sorted { $0.features.count != $1.features.count ? $0.features.count > $1.features.count : $0.example < $1.example }
        return causes.map { cause, features in
            let sorted = features.sorted()
            let shown = sorted.prefix(examples).map(String.init).joined(separator: ", ") + (sorted.count > examples ? ", …" : "")
            return "\(sorted.count) feature\(sorted.count == 1 ? "" : "s") failed (e.g. \(shown)): \(cause)"
        }
    }

    public static func writeFailureSummary(_ failed: [Int: String]) {
        let lines = failureSummary(failed)
        guard !lines.isEmpty else { return }
        FileHandle.standardError.write(Data(lines.map { "saelabel: \($0)\n" }.joined().utf8))
    }

    public static func passes(_ passes: [LabelingPass]) -> String {
        guard !passes.isEmpty else { return "no labeling pass yet" }
        let formatter = ISO8601DateFormatter()
        var lines: [String] = []
        for pass in passes {
            lines.append("pass \(pass.id)\(pass.isCurrent ? " (current)" : "")  created \(pass.createdAt.map(formatter.string) ?? "?")")
            lines.append("  explainer: \(pass.explainer) \(pass.explainerModel) prompt \(pass.explainerPromptHash)")
            lines.append("  scorers: " + (pass.scorerModels.isEmpty ? "none yet" : pass.scorerModels.joined(separator: ", ")))
            var counts = "  explanations \(pass.explanations)"
            for (scorer, count) in pass.scores.sorted(by: { $0.key < $1.key }) { counts += ", \(scorer) scores \(count)" }
            if let mean = pass.meanSimulation { counts += String(format: ", mean simulation %.3f", mean) }
            lines.append(counts)
            if !pass.inputs.isEmpty { lines.append("  inputs: \(pass.inputs) (version \(pass.inputVersion))") }
            if !pass.collectSettings.isEmpty { lines.append("  collect: \(pass.collectSettings)") }
        }
        return lines.joined(separator: "\n")
    }

    /// Tab-separated, one row per feature labeled in either pass.
    public static func comparison(_ comparison: PassComparison) -> String {
        let scorers = ["simulation", "detection", "fuzzing"]
        func clean(_ text: String?) -> String {
            (text ?? "").replacingOccurrences(of: "\t", with: " ").replacingOccurrences(of: "\n", with: " ")
        }
        func number(_ scores: [String: Double?], _ scorer: String) -> String {
            guard let stored = scores[scorer] else { return "" }
            return stored.map { String(format: "%.4f", $0) } ?? "null"
        }
        var header = ["feature", "label_a", "label_b"]
        for scorer in scorers { header += ["\(scorer)_a", "\(scorer)_b"] }
        var lines = ["# a = \(comparison.a), b = \(comparison.b)", header.joined(separator: "\t")]
        for row in comparison.rows {
            var fields = [String(row.feature), clean(row.labelA), clean(row.labelB)]
            for scorer in scorers { fields += [number(row.scoresA, scorer), number(row.scoresB, scorer)] }
            lines.append(fields.joined(separator: "\t"))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    public static func status(_ status: JobStatus) -> String {
        var lines = ["store: \(status.path)", "pass: \(status.currentPass ?? "none yet")", stateLine(status)]
        lines.append("explanations (current pass): \(status.explanations)")
        if !status.scores.isEmpty {
            lines.append("scores: " + status.scores.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        if !status.models.isEmpty { lines.append("models: " + status.models.joined(separator: ", ")) }
        if let scores = status.simulationScores {
            lines.append("simulation scores (\(scores.count) features): " + distribution(scores))
        }
        lines.append("LLM: \(status.llm.calls) calls (\(status.llm.failedAttempts) failed attempts), \(status.llm.cacheHits) cache hits, \(status.llm.promptTokens) tokens in / \(status.llm.completionTokens) out")
        lines += spending(status)
        if !status.failures.isEmpty {
            lines.append("failed features:")
            for failure in status.failures {
                lines.append("  \(failure.feature)\t\(failure.stage)\tattempts \(failure.attempts)\t\(failure.reason)")
            }
            if status.failuresNotListed > 0 {
                lines.append("  … and \(status.failuresNotListed) more (`saelabel status --db \(status.path) --all` lists every one)")
            }
        }
        return lines.joined(separator: "\n")
    }

    public static func json<T: Encodable>(_ status: T) throws(SAELabelError) -> String {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        do {
            return String(decoding: try encoder.encode(status), as: UTF8.self)
        } catch {
            throw .store("cannot encode the JSON: \(error)")
        }
    }

    public static func dryRun(_ estimate: DryRunEstimate) -> String {
        var lines: [String] = []
        let preview = estimate.features.prefix(20).map(String.init).joined(separator: ", ")
        lines.append("features: \(estimate.features.count) [\(preview)\(estimate.features.count > 20 ? ", …" : "")]")
        let bound = estimate.exact ? "" : " (at most: dead and sparse features are known only after collect)"
        lines.append("LLM calls: \(estimate.explainCalls) explain + \(estimate.scoreCalls) score + \(estimate.preflightCalls) endpoint check\(estimate.preflightCalls == 1 ? "" : "s") = \(estimate.totalCalls)\(bound)")
        lines.append("tokens (estimated): \(estimate.promptTokens) in / \(estimate.completionTokens) out")
        if let cost = estimate.cost {
            let batch = estimate.batchPriced ? ", batch stages at the batch discount" : ""
            lines.append("cost (estimated, at the job file's [prices]\(batch), no prompt caching): " + String(format: "%.4f", cost))
        }
        if estimate.carriedLabels > 0 {
            lines.append("carry-over: \(estimate.carriedLabels) features would take the matching earlier label (re-scored, not explained: \(estimate.carriedLabels) explain calls saved); up to \(estimate.carriedLabels) more explain calls if their scores drop by more than max_score_drop")
        }
        if let note = estimate.carryNote { lines.append(note) }
        lines.append("nothing was called or written (--dry-run)")
        return lines.joined(separator: "\n")
    }
}
