import Foundation
import SAELabelCore
import SAELabelStore

/// Neuronpedia explanation rows (SPEC §7): `path/batch-0.jsonl`, `batch-1.jsonl`, … of 1,024 rows each,
/// one row per feature that has an explanation.
///
/// - `modelId` is the `model_name` setting.
/// - `layer` is the Neuronpedia source id: the `neuronpedia_id` setting when present (either `6-res-jb`
///   or `gpt2-small/6-res-jb`, in which case the part before `/` overrides `modelId`); otherwise it is
///   derived from the hook name as `<layer>-<kind>` (`blocks.6.hook_resid_pre` → `6-res`,
///   `blocks.3.hook_mlp_out` → `3-mlp`, `blocks.3.attn.hook_z` → `3-att`). Neuronpedia appends the SAE set
///   (`6-res-jb`), which the hook cannot tell, so set `neuronpedia_id` for an upload.
/// - `index` is the feature index as a string, as Neuronpedia stores it.
enum NeuronpediaExport {
    static let batchSize = 1024
    static let typeName = "oai_token-act-pair"
    static let scoreTypeNames = ["simulation": "oai_simulation", "detection": "eleuther_recall", "fuzzing": "eleuther_fuzz"]

    static func run(store: JobStore, job: JobInfo, session: OutputSession, filter: ExportFilter) throws(SAELabelError) -> ExportSummary {
        let (modelId, layer) = source(job)
        var count = 0
        var files: [String] = []
        var writer: OutputWriter?
        do {
            var line = JSONBytes(scriptSafe: false, capacity: 1024)
            try Exporter.forEachRow(store: store, filter: filter, includeExamples: false) { row throws(SAELabelError) in
                guard let explanation = row.feature.explanation else { return }
                if count % batchSize == 0 {
                    try writer?.close()
                    let name = "batch-\(count / batchSize).jsonl"
                    writer = try session.writer(for: name)
                    files.append(session.finalPath(name))
                }
                let scores: [JSONValue] = row.feature.scores.compactMap { score in
                    guard let value = score.value, value.isFinite else { return nil }
                    return .object([("value", .double(value)),
                                    ("explanationScoreTypeName", .string(scoreTypeNames[score.scorer] ?? score.scorer)),
                                    ("explanationScoreModelName", .string(score.model))])
                }
                let object = JSONValue.object([
                    ("modelId", .text(modelId)),
                    ("layer", .text(layer)),
                    ("index", .string(String(row.index))),
                    ("description", .string(explanation.text)),
                    ("explanationModelName", .string(explanation.explainerModel)),
                    ("typeName", .string(typeName)),
                    ("scores", .array(scores)),
                ])
                line.removeAll()
                object.write(into: &line)
                line.bytes.append(UInt8(ascii: "\n"))
                try writer!.write(line.bytes)
                count += 1
            }
            try writer?.close()
        }
        return ExportSummary(features: count, files: files)
    }

    /// (modelId, layer) per the rules above; the job file's `neuronpedia_model_id`/`neuronpedia_layer` win.
    static func source(_ job: JobInfo) -> (String?, String?) {
        let (model, layer) = derivedSource(job)
        return (job.neuronpediaModelId ?? model, job.neuronpediaLayer ?? layer)
    }

    static func derivedSource(_ job: JobInfo) -> (String?, String?) {
        if let id = job.neuronpediaId, !id.isEmpty {
            if let slash = id.lastIndex(of: "/") {
                return (String(id[..<slash]), String(id[id.index(after: slash)...]))
            }
            return (job.model, id)
        }
        return (job.model, job.hook.flatMap(layer(fromHook:)))
    }

    static func layer(fromHook hook: String) -> String? {
        let parts = hook.split(separator: ".")
        guard let number = parts.lazy.compactMap({ Int($0) }).first else { return nil }
        let lower = hook.lowercased()
        let kind: String
        if lower.contains("resid") { kind = "res" }
        else if lower.contains("mlp") { kind = "mlp" }
        else if lower.contains("attn") || lower.hasSuffix("hook_z") { kind = "att" }
        else { kind = String(parts.last ?? "").replacingOccurrences(of: "hook_", with: "") }
        return "\(number)-\(kind)"
    }
}
