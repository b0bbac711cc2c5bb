import Foundation
import SAELabelCore
import SAELabelStore

/// One row per feature, RFC 4180 (CRLF line ends, fields quoted when they hold `"`, `,`, CR, LF or tab).
enum CSVExport {
    static let header = ["feature", "status", "label", "simulation", "detection", "fuzzing",
                         "frequency", "max_activation", "explainer_model"]

    static func run(store: JobStore, job: JobInfo, path: String, filter: ExportFilter) throws(SAELabelError) -> ExportSummary {
        try AtomicOutput.checkParent(of: path)
        let temporary = AtomicOutput.temporaryPath(for: path)
        let writer = try OutputWriter(path: temporary)
        var count = 0
        do {
            try writer.write(line(header))
            try Exporter.forEachRow(store: store, filter: filter, includeExamples: false) { row throws(SAELabelError) in
                try writer.write(line([
                    String(row.index), row.state.rawValue, row.label ?? "",
                    number(row.score("simulation")), number(row.score("detection")), number(row.score("fuzzing")),
                    number(row.frequency), row.maxActivation.map { $0.isFinite ? String($0) : "" } ?? "",
                    row.explainerModel ?? "",
                ]))
                count += 1
            }
            try writer.close()
        } catch {
            AtomicOutput.discard(temporary)
            throw error
        }
        try AtomicOutput.commit(temporary, to: path)
        return ExportSummary(features: count, files: [path])
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
