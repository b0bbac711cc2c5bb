import Foundation
import SAELabelCore
import SAELabelStore

/// CONTRACT.md's catalog: one JSON object per line per feature.
enum CatalogExport {
    static func run(store: JobStore, job: JobInfo, session: OutputSession, filter: ExportFilter) throws(SAELabelError) -> ExportSummary {
        let writer = try session.fileWriter()
        var count = 0
        var line = ""
        try Exporter.forEachRow(store: store, filter: filter, includeExamples: true) { row throws(SAELabelError) in
            line.removeAll(keepingCapacity: true)
            object(row, job: job).write(into: &line, scriptSafe: false)
            line += "\n"
            try writer.write(line)
            count += 1
        }
        try writer.close()
        return ExportSummary(features: count, files: [session.target.path])
    }

    /// The statistics beyond the contract's frequency and max, shared with the HTML catalog's data.
    static func statisticsMembers(_ record: FeatureRecord) -> [(String, JSONValue)] {
        guard let statistics = record.statistics else { return [] }
        return [("mean_activation", .float(statistics.meanActivation)),
                ("activating_tokens", .int(statistics.activatingTokens)),
                ("activating_windows", .int(statistics.activatingWindows)),
                ("histogram", .array(statistics.histogram.map(JSONValue.int)))]
    }

    static func object(_ row: ExportRow, job: JobInfo) -> JSONValue {
        let record = row.feature.record
        var members: [(String, JSONValue)] = [
            ("sae", .text(job.sae)),
            ("hook", .text(job.hook)),
            ("feature", .int(row.index)),
            ("status", .string(row.state.rawValue)),
            ("explanation", .text(row.label)),
            ("explainer_model", .text(row.explainerModel)),
            ("scores", row.scoresJSON),
            ("frequency", .number(row.frequency)),
            ("max_activation", row.maxActivation.map(JSONValue.float) ?? .null),
            ("examples", row.examplesJSON),
            ("carried_from", row.carriedFromJSON),
            // Additions beyond the contract.
            ("prompt_hash", .text(row.feature.explanation?.promptHash)),
            ("score_details", row.scoreDetailsJSON),
        ]
        members += statisticsMembers(record)
        if let note = record.note { members.append(("note", .string(note))) }
        if record.state == .failed {
            members += [("failed_stage", .text(record.failedStage)), ("failure_reason", .text(record.failureReason))]
        }
        return .object(members)
    }
}
