import Foundation
import SAELabelCore
import SAELabelStore
@testable import SAELabelExport

/// The catalog and html exports as they were written before the single-pass reader: a query per
/// feature through the store's public API, every example and score detail decoded with Foundation,
/// and a value tree printed into a String. Slow, and independent of the fast path on purpose: the
/// exports must give exactly these bytes.
enum ReferenceExport {
    indirect enum Value {
        case null
        case int(Int)
        case double(Double)
        case float(Float)
        case string(String)
        case array([Value])
        case object([(String, Value)])

        static func number(_ value: Double?) -> Value { value.map(Value.double) ?? .null }
        static func text(_ value: String?) -> Value { value.map(Value.string) ?? .null }

        func write(into out: inout String, scriptSafe: Bool) {
            switch self {
            case .null: out += "null"
            case .int(let value): out += String(value)
            case .double(let value): out += value.isFinite ? String(value) : "null"
            case .float(let value): out += value.isFinite ? String(value) : "null"
            case .string(let value): Self.appendString(value, to: &out, scriptSafe: scriptSafe)
            case .array(let values):
                out += "["
                for (i, value) in values.enumerated() {
                    if i > 0 { out += "," }
                    value.write(into: &out, scriptSafe: scriptSafe)
                }
                out += "]"
            case .object(let members):
                out += "{"
                for (i, (key, value)) in members.enumerated() {
                    if i > 0 { out += "," }
                    Self.appendString(key, to: &out, scriptSafe: scriptSafe)
                    out += ":"
                    value.write(into: &out, scriptSafe: scriptSafe)
                }
                out += "}"
            }
        }

        static func appendString(_ value: String, to out: inout String, scriptSafe: Bool) {
            out += "\""
            for scalar in value.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                case "<" where scriptSafe, ">" where scriptSafe, "&" where scriptSafe, "\u{2028}", "\u{2029}":
                    out += String(format: "\\u%04x", scalar.value)
                default:
                    if scalar.value < 0x20 { out += String(format: "\\u%04x", scalar.value) } else { out.unicodeScalars.append(scalar) }
                }
            }
            out += "\""
        }
    }

    struct Row {
        var record: FeatureRecord
        var explanation: StoredExplanation?
        var scores: [StoredScore]
        var examples: [StoredExample]
        var carried: CarriedLabel?
        var simulation: SimulationDetails?
        var classification: [String: ClassificationDetails] = [:]

        func score(_ scorer: String) -> Double? { scores.first { $0.scorer == scorer }?.value }
    }

    /// The rows an export of the current pass (or `pass`, without carried labels) with this filter holds.
    static func rows(_ store: JobStore, filter: ExportFilter = .all) throws -> [Row] {
        let current = try store.currentPass() ?? "default"
        let pass = filter.pass ?? current
        let showSimulated = try filter.pass.map { try store.passSharesExamples($0) } ?? true
        let carried = pass == current ? try store.carriedLabels().filter { $0.decision != "reexplained" } : []
        var records: [FeatureRecord] = []
        try store.forEachFeature(selection: filter.selection) { records.append($0) }
        var rows: [Row] = []
        for record in records {
            if let states = filter.states, !states.contains(record.state) { continue }
            let explanation = try store.explanations(feature: record.index).first { $0.pass == pass }
            let scores = try explanation.map { try store.scores(explanation: $0) } ?? []
            var row = Row(record: record, explanation: explanation, scores: scores, examples: try store.examples(feature: record.index),
                          carried: explanation == nil ? nil : carried.first { $0.feature == record.index })
            let decoder = JSONDecoder()
            for score in scores {
                let data = Data(score.details.utf8)
                if score.scorer == "simulation" {
                    row.simulation = try? decoder.decode(SimulationDetails.self, from: data)
                } else {
                    row.classification[score.scorer] = try? decoder.decode(ClassificationDetails.self, from: data)
                }
            }
            if !showSimulated { row.simulation?.windows = [] }
            if let minScore = filter.minScore {
                guard let simulation = row.score("simulation"), simulation >= minScore else { continue }
            }
            rows.append(row)
        }
        return rows
    }

    static func catalog(_ store: JobStore, filter: ExportFilter = .all) throws -> String {
        let job = JobInfo(try store.settings())
        return try rows(store, filter: filter).map { row in
            var line = ""
            catalogObject(row, job: job).write(into: &line, scriptSafe: false)
            return line + "\n"
        }.joined()
    }

    /// data/features-0000.js and data/index-0000.js of a catalog of at most 1,000 features.
    static func htmlData(_ store: JobStore, filter: ExportFilter = .all) throws -> (features: String, index: String) {
        let rows = try rows(store, filter: filter)
        func file(_ call: String, _ values: [Value]) -> String {
            let items = values.map { value in
                var text = ""
                value.write(into: &text, scriptSafe: true)
                return text
            }
            return "window.\(call)(0, [\n" + items.joined(separator: ",\n") + "\n]);\n"
        }
        return (file("__catalog_chunk", rows.map(htmlDetail)), file("__catalog_index", rows.map { summary($0, chunk: 0) }))
    }

    static func scoresValue(_ row: Row) -> Value {
        .object(["simulation", "detection", "fuzzing"].map { ($0, .number(row.score($0))) })
    }

    static func scoreDetails(_ row: Row) -> Value {
        var members: [(String, Value)] = []
        for scorer in ["simulation", "detection", "fuzzing"] {
            guard let stored = row.scores.first(where: { $0.scorer == scorer }) else { continue }
            var detail: [(String, Value)] = [("model", .string(stored.model)), ("prompt_hash", .string(stored.promptHash))]
            if scorer == "simulation", let simulation = row.simulation {
                detail += [("rsquared", .number(simulation.rsquared)),
                           ("absolute_dev_explained", .number(simulation.absoluteDevExplained)),
                           ("failed_windows", .int(simulation.failedWindows)),
                           ("retried_windows", .int(simulation.retriedWindows)),
                           ("undefined_reason", .text(simulation.undefinedReason))]
            } else if let details = row.classification[scorer] {
                detail += [("balanced_accuracy", .double(details.balancedAccuracy)), ("f1", .double(details.f1)),
                           ("precision", .double(details.precision)), ("recall", .double(details.recall)),
                           ("true_positives", .int(details.truePositives)), ("true_negatives", .int(details.trueNegatives)),
                           ("false_positives", .int(details.falsePositives)), ("false_negatives", .int(details.falseNegatives)),
                           ("failed_prompts", .int(details.failedPrompts))]
            }
            members.append((scorer, .object(detail)))
        }
        return .object(members)
    }

    static func examples(_ row: Row) -> Value {
        func window(_ example: StoredExample, heldout: Bool) -> Value {
            var members: [(String, Value)] = [
                ("tokens", .array(example.window.tokens.map(Value.string))),
                ("activations", .array(example.window.activations.map(Value.float))),
                ("kind", .string(example.window.kind.rawValue)),
            ]
            if heldout {
                let simulated = row.simulation?.windows.first { $0.heldoutOrdinal == example.ordinal }?.simulated
                members.append(("simulated", simulated.map { .array($0.map(Value.double)) } ?? .null))
            }
            members += [("sequence", .int(example.window.sequence)), ("start", .int(example.window.start))]
            return .object(members)
        }
        return .object([("explain", .array(row.examples.filter { $0.split == .explain }.map { window($0, heldout: false) })),
                        ("heldout", .array(row.examples.filter { $0.split == .heldout }.map { window($0, heldout: true) }))])
    }

    static func carriedFrom(_ row: Row) -> Value {
        guard let carried = row.carried else { return .null }
        return .object([("feature", .int(carried.sourceFeature)), ("cosine", .number(carried.cosine)),
                        ("previous_score", .number(carried.previousScore))])
    }

    static func statistics(_ record: FeatureRecord) -> [(String, Value)] {
        guard let statistics = record.statistics else { return [] }
        return [("mean_activation", .float(statistics.meanActivation)),
                ("activating_tokens", .int(statistics.activatingTokens)),
                ("activating_windows", .int(statistics.activatingWindows)),
                ("histogram", .array(statistics.histogram.map(Value.int)))]
    }

    static func catalogObject(_ row: Row, job: JobInfo) -> Value {
        let record = row.record
        var members: [(String, Value)] = [
            ("sae", .text(job.sae)), ("hook", .text(job.hook)), ("feature", .int(record.index)),
            ("status", .string(record.state.rawValue)), ("explanation", .text(row.explanation?.text)),
            ("explainer_model", .text(row.explanation?.explainerModel)), ("scores", scoresValue(row)),
            ("frequency", .number(record.statistics?.frequency)),
            ("max_activation", record.statistics.map { .float($0.maxActivation) } ?? .null),
            ("examples", examples(row)), ("carried_from", carriedFrom(row)),
            ("prompt_hash", .text(row.explanation?.promptHash)), ("score_details", scoreDetails(row)),
        ]
        members += statistics(record)
        if let note = record.note { members.append(("note", .string(note))) }
        if record.state == .failed {
            members += [("failed_stage", .text(record.failedStage)), ("failure_reason", .text(record.failureReason))]
        }
        return .object(members)
    }

    static func summary(_ row: Row, chunk: Int) -> Value {
        .array([.int(row.record.index), .string(row.record.state.rawValue), .text(row.explanation?.text),
                .number(row.score("simulation")), .number(row.score("detection")), .number(row.score("fuzzing")),
                .number(row.record.statistics?.frequency), row.record.statistics.map { .float($0.maxActivation) } ?? .null,
                .int(chunk)])
    }

    static func htmlDetail(_ row: Row) -> Value {
        let record = row.record
        var members: [(String, Value)] = [
            ("feature", .int(record.index)), ("status", .string(record.state.rawValue)),
            ("explanation", .text(row.explanation?.text)), ("explainer_model", .text(row.explanation?.explainerModel)),
            ("scores", scoresValue(row)), ("score_details", scoreDetails(row)),
            ("frequency", .number(record.statistics?.frequency)),
            ("max_activation", record.statistics.map { .float($0.maxActivation) } ?? .null),
            ("examples", examples(row)), ("carried_from", carriedFrom(row)),
        ]
        members += statistics(record)
        if let note = record.note { members.append(("note", .string(note))) }
        if let stage = record.failedStage { members.append(("failed_stage", .string(stage))) }
        if let reason = record.failureReason { members.append(("failure_reason", .string(reason))) }
        return .object(members)
    }
}
