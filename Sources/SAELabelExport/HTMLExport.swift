import Foundation
import SAELabelCore
import SAELabelStore

/// A static catalog opened from disk with no server:
///
///     path/index.html, path/app.js, path/style.css
///     path/data/meta.js            window.__catalog_meta({...})          job facts and chunk counts
///     path/data/index-0000.js      window.__catalog_index(0, [[...]])    10,000 summary rows a file
///     path/data/features-0000.js   window.__catalog_chunk(0, [{...}])    1,000 full features a file
///
/// Data files are JSONP-style script calls so they load from file:// without fetch; the index loads
/// the summary rows and a feature's detail chunk is loaded only when it is opened. All data is JSON
/// with `<`, `>`, `&`, U+2028 and U+2029 escaped, and the page builds its DOM with textContent only.
enum HTMLExport {
    static let detailChunkSize = 1000
    static let indexChunkSize = 10000

    static func run(store: JobStore, job: JobInfo, session: OutputSession, filter: ExportFilter) throws(SAELabelError) -> ExportSummary {
        var files: [String] = []
        func relative(_ name: String) -> String { session.finalPath(name) }

        var count = 0
        var detailWriter: OutputWriter?
        var indexWriter: OutputWriter?
        var statusCounts: [String: Int] = [:]
        do {
            for (name, contents) in [("index.html", HTMLAssets.indexHTML), ("app.js", HTMLAssets.appJS), ("style.css", HTMLAssets.styleCSS)] {
                let writer = try session.writer(for: name)
                try writer.write(contents)
                try writer.close()
                files.append(relative(name))
            }

            var text = ""
            try Exporter.forEachRow(store: store, filter: filter, includeExamples: true) { row throws(SAELabelError) in
                let detailChunk = count / detailChunkSize
                if count % detailChunkSize == 0 {
                    if let detailWriter { try finish(detailWriter) }
                    let name = String(format: "data/features-%04d.js", detailChunk)
                    detailWriter = try session.writer(for: name)
                    try detailWriter!.write("window.__catalog_chunk(\(detailChunk), [\n")
                    files.append(relative(name))
                } else {
                    try detailWriter!.write(",\n")
                }
                if count % indexChunkSize == 0 {
                    if let indexWriter { try finish(indexWriter) }
                    let name = String(format: "data/index-%04d.js", count / indexChunkSize)
                    indexWriter = try session.writer(for: name)
                    try indexWriter!.write("window.__catalog_index(\(count / indexChunkSize), [\n")
                    files.append(relative(name))
                } else {
                    try indexWriter!.write(",\n")
                }

                text.removeAll(keepingCapacity: true)
                detail(row).write(into: &text, scriptSafe: true)
                try detailWriter!.write(text)
                text.removeAll(keepingCapacity: true)
                summary(row, chunk: detailChunk).write(into: &text, scriptSafe: true)
                try indexWriter!.write(text)
                statusCounts[row.state.rawValue, default: 0] += 1
                count += 1
            }
            if let detailWriter { try finish(detailWriter) }
            if let indexWriter { try finish(indexWriter) }

            let meta = JSONValue.object([
                ("sae", .text(job.sae)), ("hook", .text(job.hook)), ("model", .text(job.model)),
                ("features", .int(count)),
                ("statuses", .object(statusCounts.sorted { $0.key < $1.key }.map { ($0.key, .int($0.value)) })),
                ("indexChunks", .int((count + indexChunkSize - 1) / indexChunkSize)),
                ("detailChunkSize", .int(detailChunkSize)),
                ("generated", .string(ISO8601DateFormatter().string(from: Date()))),
            ])
            let metaWriter = try session.writer(for: "data/meta.js")
            try metaWriter.write("window.__catalog_meta(" + meta.serialized(scriptSafe: true) + ");\n")
            try metaWriter.close()
            files.append(relative("data/meta.js"))
        }
        return ExportSummary(features: count, files: files)
    }

    private static func finish(_ writer: OutputWriter) throws(SAELabelError) {
        try writer.write("\n]);\n")
        try writer.close()
    }

    /// Index row: [feature, status, label, simulation, detection, fuzzing, frequency, max_activation, chunk].
    static func summary(_ row: ExportRow, chunk: Int) -> JSONValue {
        .array([.int(row.index), .string(row.state.rawValue), .text(row.label),
                .number(row.score("simulation")), .number(row.score("detection")), .number(row.score("fuzzing")),
                .number(row.frequency), row.maxActivation.map(JSONValue.float) ?? .null, .int(chunk)])
    }

    static func detail(_ row: ExportRow) -> JSONValue {
        let record = row.feature.record
        var members: [(String, JSONValue)] = [
            ("feature", .int(row.index)),
            ("status", .string(row.state.rawValue)),
            ("explanation", .text(row.label)),
            ("explainer_model", .text(row.explainerModel)),
            ("scores", row.scoresJSON),
            ("score_details", row.scoreDetailsJSON),
            ("frequency", .number(row.frequency)),
            ("max_activation", row.maxActivation.map(JSONValue.float) ?? .null),
            ("examples", row.examplesJSON),
            ("carried_from", row.carriedFromJSON),
        ]
        members += CatalogExport.statisticsMembers(record)
        if let note = record.note { members.append(("note", .string(note))) }
        if let stage = record.failedStage { members.append(("failed_stage", .string(stage))) }
        if let reason = record.failureReason { members.append(("failure_reason", .string(reason))) }
        return .object(members)
    }
}
