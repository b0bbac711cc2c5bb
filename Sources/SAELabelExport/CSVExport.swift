import Foundation
import SAELabelCore
import SAELabelStore

/// One row per feature, RFC 4180 (CRLF line ends, fields quoted when they hold `"`, `,`, CR, LF or tab).
enum CSVExport {
    static let header = ["feature", "status", "label", "simulation", "detection", "fuzzing",
                         "frequency", "max_activation", "explainer_model", "failure_reason", "sae", "hook",
                         "carried_from_feature", "carried_cosine", "carried_previous_score"]

    static func run(store: JobStore, job: JobInfo, session: OutputSession, filter: ExportFilter) throws(SAELabelError) -> ExportSummary {
        let writer = try session.fileWriter()
        var count = 0
        try writer.write(line(header))
        try Exporter.forEachRow(store: store, filter: filter, includeExamples: false) { row throws(SAELabelError) in
            try writer.write(line([
                String(row.index), row.state.rawValue, row.label ?? "",
                number(row.score("simulation")), number(row.score("detection")), number(row.score("fuzzing")),
                number(row.frequency), row.maxActivation.map { $0.isFinite ? String($0) : "" } ?? "",
                row.explainerModel ?? "",
                row.state == .failed ? (row.feature.record.failureReason ?? "") : "",
                job.sae ?? "", job.hook ?? "",
                row.feature.carriedFrom.map { String($0.sourceFeature) } ?? "",
                number(row.feature.carriedFrom?.cosine), number(row.feature.carriedFrom?.previousScore),
            ]))
            count += 1
        }
        try writer.close()
        return ExportSummary(features: count, files: [session.target.path])
    }

    static func number(_ value: Double?) -> String {
        guard let value, value.isFinite else { return "" }
        return String(value)
    }

    static func line(_ fields: [String]) -> String {
        fields.map(field).joined(separator: ",") + "\r\n"
    }

    static func field(_ value: String) -> String {
        let needsQuotes = value.unicodeScalars.contains { $0 == "\"" || $0 == "," || $0 == "\n" || $0 == "\r" || $0 == "\t" }
        guard needsQuotes else { return value }
        return "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
