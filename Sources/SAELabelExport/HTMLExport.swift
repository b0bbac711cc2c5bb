import Foundation
import SAELabelCore
import SAELabelStore

/// A static catalog opened from disk with no server:
///
///     path/index.html, path/app.js, path/style.css
///     path/data/meta.js            window.__catalog_meta({...})          job facts and chunk counts
///     path/data/index-0000.js      window.__catalog_index(0, [[...]])    10,000 summary rows a file
///     path/data/features-0000.js   window.__catalog_chunk(0, [{...}])    1,000 full features a file
///     path/data/orders.js          window.__catalog_orders({...})        prebuilt sort orders
///
/// Data files are JSONP-style script calls so they load from file:// without fetch; the index loads
/// the summary rows and the orders, and a feature's detail chunk is loaded only when it is opened.
/// All data is JSON with `<`, `>`, `&`, U+2028 and U+2029 escaped, and the page builds its DOM with
/// textContent only.
enum HTMLExport {
    static let detailChunkSize = 1000
    static let indexChunkSize = 10000

    /// The numeric index columns whose order the export writes, by the page's column key and the
    /// position of the value in an index row. Sorting 131k rows with a comparator took the page
    /// ~30 ms of a 100 ms keystroke; with the order prebuilt the first sort is a lookup.
    static let orderedColumns: [(key: String, position: Int)] = [
        ("simulation", 3), ("detection", 4), ("fuzzing", 5), ("frequency", 6), ("max", 7),
    ]

    static func run(store: JobStore, job: JobInfo, session: OutputSession, filter: ExportFilter) throws(SAELabelError) -> ExportSummary {
        var files: [String] = []
        func relative(_ name: String) -> String { session.finalPath(name) }

        var count = 0
        var detailWriter: OutputWriter?
        var indexWriter: OutputWriter?
        var statusCounts: [String: Int] = [:]
        // Per column of `orderedColumns`, each row's value as the page will read it (nil prints as null).
        var orderValues: [[Double?]] = Array(repeating: [], count: orderedColumns.count)
        do {
            for (name, contents) in [("index.html", HTMLAssets.indexHTML), ("app.js", HTMLAssets.appJS), ("style.css", HTMLAssets.styleCSS)] {
                let writer = try session.writer(for: name)
                try writer.write(contents)
                try writer.close()
                files.append(relative(name))
            }

            var text = JSONBytes(scriptSafe: true)
            try Exporter.forEachRow(store: store, filter: filter, includeExamples: true) { row throws(SAELabelError) in
                let detailChunk = count / detailChunkSize
                if count % detailChunkSize == 0 {
                    if let detailWriter { try finish(detailWriter) }
                    let name = String(format: "data/features-%04d.js", detailChunk)
                    // Feature chunks are read one at a time when a feature is opened, not right after
                    // the export: they bypass the page cache; the index and the shell stay in it.
                    detailWriter = try session.writer(for: name, writePath: .direct)
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

                text.removeAll()
                try writeDetail(row, into: &text)
                try detailWriter!.write(text.bytes)
                text.removeAll()
                writeSummary(row, chunk: detailChunk, into: &text)
                try indexWriter!.write(text.bytes)
                statusCounts[row.state.rawValue, default: 0] += 1
                for (column, value) in summaryNumbers(row).enumerated() { orderValues[column].append(value) }
                count += 1
            }
            if let detailWriter { try finish(detailWriter) }
            if let indexWriter { try finish(indexWriter) }

            let ordersWriter = try session.writer(for: "data/orders.js")
            text.removeAll()
            text.raw("window.__catalog_orders({")
            for (column, values) in zip(orderedColumns, orderValues) {
                text.separator(); text.string(column.key); text.raw(":")
                writeDescendingOrder(values, into: &text)
            }
            text.raw("});\n")
            try ordersWriter.write(text.bytes)
            try ordersWriter.close()
            files.append(relative("data/orders.js"))

            let meta = JSONValue.object([
                ("sae", .text(job.sae)), ("hook", .text(job.hook)), ("model", .text(job.model)),
                ("features", .int(count)),
                ("statuses", .object(statusCounts.sorted { $0.key < $1.key }.map { ($0.key, .int($0.value)) })),
                ("indexChunks", .int((count + indexChunkSize - 1) / indexChunkSize)),
                ("orders", .array(orderedColumns.map { .string($0.key) })),
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

    /// The values of `orderedColumns` in one index row, as the row prints them (non-finite prints as null).
    static func summaryNumbers(_ row: ExportRow) -> [Double?] {
        func finite(_ value: Double?) -> Double? { value.flatMap { $0.isFinite ? $0 : nil } }
        return [finite(row.score("simulation")), finite(row.score("detection")), finite(row.score("fuzzing")),
                finite(row.frequency), finite(row.maxActivation.map(Double.init))]
    }

    /// Row positions by value, highest first, nulls last, ties by position (= feature order): the order
    /// the page's comparator gives for a descending sort. The page derives the ascending one from it.
    /// Float values compare the same as the decimals they print as, which the page reads.
    static func writeDescendingOrder(_ values: [Double?], into out: inout JSONBytes) {
        let order = values.indices.sorted { a, b in
            switch (values[a], values[b]) {
            case let (x?, y?): return x > y || (x == y && a < b)
            case (.some, nil): return true
            case (nil, .some): return false
            case (nil, nil): return a < b
            }
        }
        out.raw("[")
        for position in order { out.separator(); out.int(position) }
        out.raw("]")
    }

    /// Index row: [feature, status, label, simulation, detection, fuzzing, frequency, max_activation, chunk].
    static func writeSummary(_ row: ExportRow, chunk: Int, into out: inout JSONBytes) {
        out.raw("[")
        out.int(row.index)
        out.raw(","); out.string(row.state.rawValue)
        out.raw(","); out.text(row.label)
        out.raw(","); out.number(row.score("simulation"))
        out.raw(","); out.number(row.score("detection"))
        out.raw(","); out.number(row.score("fuzzing"))
        out.raw(","); out.number(row.frequency)
        out.raw(","); out.float(row.maxActivation)
        out.raw(","); out.int(chunk)
        out.raw("]")
    }

    static func writeDetail(_ row: ExportRow, into out: inout JSONBytes) throws(SAELabelError) {
        let record = row.feature.record
        let details = row.details()
        out.raw("{")
        out.key("feature"); out.int(row.index)
        out.key("status"); out.string(row.state.rawValue)
        out.key("explanation"); out.text(row.label)
        out.key("explainer_model"); out.text(row.explainerModel)
        out.key("scores"); row.writeScores(&out)
        out.key("score_details"); row.writeScoreDetails(details, &out)
        out.key("frequency"); out.number(row.frequency)
        out.key("max_activation"); out.float(row.maxActivation)
        out.key("examples"); try row.writeExamples(details, &out)
        out.key("carried_from"); row.writeCarriedFrom(&out)
        row.writeStatistics(&out)
        if let note = record.note { out.key("note"); out.string(note) }
        if let stage = record.failedStage { out.key("failed_stage"); out.string(stage) }
        if let reason = record.failureReason { out.key("failure_reason"); out.string(reason) }
        out.raw("}")
    }
}
