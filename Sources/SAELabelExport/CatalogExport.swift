import Foundation
import SAELabelCore
import SAELabelStore

/// CONTRACT.md's catalog: one JSON object per line per feature.
enum CatalogExport {
    static func run(store: JobStore, job: JobInfo, session: OutputSession, filter: ExportFilter) throws(SAELabelError) -> ExportSummary {
        let writer = try session.fileWriter()
        var count = 0
        var line = JSONBytes(scriptSafe: false)
        try Exporter.forEachRow(store: store, filter: filter, includeExamples: true) { row throws(SAELabelError) in
            line.removeAll()
            try write(row, job: job, into: &line)
            line.bytes.append(UInt8(ascii: "\n"))
            try writer.write(line.bytes)
            count += 1
        }
        try writer.close()
        return ExportSummary(features: count, files: [session.target.path])
    }

    static func write(_ row: ExportRow, job: JobInfo, into out: inout JSONBytes) throws(SAELabelError) {
        let record = row.feature.record
        let details = row.details()
        out.raw("{")
        out.key("sae"); out.text(job.sae)
        out.key("hook"); out.text(job.hook)
        out.key("feature"); out.int(row.index)
        out.key("status"); out.string(row.state.rawValue)
        out.key("explanation"); out.text(row.label)
        out.key("explainer_model"); out.text(row.explainerModel)
        out.key("scores"); row.writeScores(&out)
        out.key("frequency"); out.number(row.frequency)
        out.key("max_activation"); out.float(row.maxActivation)
        out.key("examples"); try row.writeExamples(details, &out)
        out.key("carried_from"); row.writeCarriedFrom(&out)
        // Additions beyond the contract.
        out.key("prompt_hash"); out.text(row.feature.explanation?.promptHash)
        out.key("score_details"); row.writeScoreDetails(details, &out)
        row.writeStatistics(&out)
        if let note = record.note { out.key("note"); out.string(note) }
        if record.state == .failed {
            out.key("failed_stage"); out.text(record.failedStage)
            out.key("failure_reason"); out.text(record.failureReason)
        }
        out.raw("}")
    }
}
