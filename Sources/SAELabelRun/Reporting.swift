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
        lines.append("LLM: \(status.llm.calls) calls, \(status.llm.cacheHits) answered from the store's cache, \(status.llm.promptTokens) tokens in / \(status.llm.completionTokens) out")
        if !status.failures.isEmpty {
            lines.append("failed:")
            for failure in status.failures.prefix(20) {
                lines.append("  feature \(failure.feature) (\(failure.stage), \(failure.attempts) attempt\(failure.attempts == 1 ? "" : "s")): \(failure.reason)")
            }
            if status.failures.count > 20 { lines.append("  … see `saelabel status --db \(status.path)`") }
        }
        for path in report.exports { lines.append("wrote \(path)") }
        lines.append(String(format: "wall time %.1f s", report.wallSeconds))
        return lines.joined(separator: "\n")
    }

    static func stateLine(_ status: JobStatus) -> String {
        let order: [FeatureState] = [.scored, .explained, .collected, .pending, .dead, .sparse, .failed]
        return "features: \(status.features) — " + order.map { "\($0.rawValue) \(status.states[$0.rawValue, default: 0])" }.joined(separator: ", ")
    }

    /// Mean, median and a count per 0.2-wide bin of the scores.
    public static func distribution(_ values: [Double]) -> String {
        let sorted = values.sorted()
        let mean = values.reduce(0, +) / Double(values.count)
        let median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        let edges: [Double] = [-1, 0, 0.2, 0.4, 0.6, 0.8, 1.0001]
        var bins: [String] = []
        for index in 0..<(edges.count - 1) {
            let count = values.filter { $0 >= edges[index] && $0 < edges[index + 1] }.count
            let label = index == 0 ? "<0" : String(format: "%.1f–%.1f", edges[index], min(edges[index + 1], 1))
            bins.append("\(label): \(count)")
        }
        return String(format: "mean %.3f, median %.3f; ", mean, median) + bins.joined(separator: ", ")
    }

    public static func status(_ status: JobStatus) -> String {
        var lines = ["store: \(status.path)", "pass: \(status.currentPass ?? "none yet")", stateLine(status)]
        lines.append("explanations (current pass): \(status.explanations)")
        if !status.scores.isEmpty {
            lines.append("scores: " + status.scores.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        if let mean = status.meanSimulationScore { lines.append(String(format: "mean simulation score: %.3f", mean)) }
        lines.append("LLM: \(status.llm.calls) calls (\(status.llm.failedAttempts) failed attempts), \(status.llm.cacheHits) cache hits, \(status.llm.promptTokens) tokens in / \(status.llm.completionTokens) out")
        if !status.failures.isEmpty {
            lines.append("failed features:")
            for failure in status.failures {
                lines.append("  \(failure.feature)\t\(failure.stage)\tattempts \(failure.attempts)\t\(failure.reason)")
            }
        }
        return lines.joined(separator: "\n")
    }

    public static func json(_ status: JobStatus) throws(SAELabelError) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        do {
            return String(decoding: try encoder.encode(status), as: UTF8.self)
        } catch {
            throw .store("cannot encode the status: \(error)")
        }
    }

    public static func dryRun(_ estimate: DryRunEstimate) -> String {
        var lines: [String] = []
        let preview = estimate.features.prefix(20).map(String.init).joined(separator: ", ")
        lines.append("features: \(estimate.features.count) [\(preview)\(estimate.features.count > 20 ? ", …" : "")]")
        lines.append("LLM calls (estimated): \(estimate.explainCalls) explain + \(estimate.scoreCalls) score = \(estimate.explainCalls + estimate.scoreCalls)")
        lines.append("tokens (estimated): \(estimate.promptTokens) in / \(estimate.completionTokens) out")
        lines.append("nothing was called or written (--dry-run)")
        return lines.joined(separator: "\n")
    }
}
