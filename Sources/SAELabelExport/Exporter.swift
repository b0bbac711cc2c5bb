import Foundation
import SAELabelCore
import SAELabelStore

public enum ExportFormat: String, Sendable, CaseIterable {
    case catalog, csv, neuronpedia, html
}

/// Which features an export includes.
public struct ExportFilter: Sendable, Equatable {
    /// Keep features whose simulation score is at least this; features without one are dropped when set.
    public var minScore: Double?
    /// Keep features in these states; nil keeps every state.
    public var states: [FeatureState]?
    public var selection: FeatureSelection
    /// The labeling pass whose labels and scores are exported; nil is the current pass.
    public var pass: String?

    public init(minScore: Double? = nil, states: [FeatureState]? = nil, selection: FeatureSelection = .all, pass: String? = nil) {
        self.minScore = minScore
        self.states = states
        self.selection = selection
        self.pass = pass
    }

    public static let all = ExportFilter()
}

public struct ExportSummary: Sendable, Equatable {
    /// Features (for neuronpedia: explanation rows) written.
    public var features: Int
    /// Files written, under their final names.
    public var files: [String]

    public init(features: Int, files: [String]) {
        self.features = features
        self.files = files
    }
}

public enum Exporter {
    /// Writes the store's features in `format` to `path` (a file for catalog and csv, `-` for standard
    /// output, a folder for neuronpedia and html), as `OutputTarget` describes: the path is checked
    /// first (never the store, an input file or a folder holding them or other files), and the
    /// output appears complete or not at all. `protected` adds paths beyond the store and its recorded inputs.
    public static func export(store: JobStore, format: ExportFormat, to path: String,
                              filter: ExportFilter = .all, protected: [String] = []) throws(SAELabelError) -> ExportSummary {
        if let minScore = filter.minScore, !minScore.isFinite {
            throw .usage("--min-score \(minScore): expected a number")
        }
        if let pass = filter.pass, try !store.passExists(pass) {
            throw .usage("--pass \(pass): no such pass in \(store.path); `saelabel passes --db \(store.path)` lists them")
        }
        let target = try OutputTarget.check(path, format: format, protected: try protectedPaths(store) + protected)
        let job = JobInfo(try store.settings())
        let session = try OutputSession(target, format: format)
        return try session.run { () throws(SAELabelError) -> ExportSummary in
            switch format {
            case .catalog: return try CatalogExport.run(store: store, job: job, session: session, filter: filter)
            case .csv: return try CSVExport.run(store: store, job: job, session: session, filter: filter)
            case .neuronpedia: return try NeuronpediaExport.run(store: store, job: job, session: session, filter: filter)
            case .html: return try HTMLExport.run(store: store, job: job, session: session, filter: filter)
            }
        }
    }

    /// The store (with its WAL files) and every input file it recorded: no export may overwrite them.
    public static func protectedPaths(_ store: JobStore) throws(SAELabelError) -> [String] {
        [store.path, store.path + "-wal", store.path + "-shm"] + (try store.fingerprints().map(\.path))
    }

    /// Streams the filtered features as export rows.
    static func forEachRow(store: JobStore, filter: ExportFilter, includeExamples: Bool,
                           _ body: (ExportRow) throws(SAELabelError) -> Void) throws(SAELabelError) {
        // An older pass labeled other windows: its simulated values are not shown over today's examples.
        let showSimulated = try filter.pass.map { pass throws(SAELabelError) in try store.passSharesExamples(pass) } ?? true
        try store.forEachExportFeature(selection: filter.selection, states: filter.states, pass: filter.pass,
                                       includeExamples: includeExamples) { feature in
            let row = ExportRow(feature: feature, showSimulated: showSimulated)
            if let minScore = filter.minScore {
                guard let simulation = row.score("simulation"), simulation >= minScore else { return }
            }
            try body(row)
        }
    }
}

/// Job-level facts from the store's settings.
struct JobInfo {
    var sae: String?
    var hook: String?
    var model: String?
    var neuronpediaId: String?
    var neuronpediaModelId: String?
    var neuronpediaLayer: String?

    init(_ settings: [String: String]) {
        sae = settings[JobSettingKey.saeName]
        hook = settings[JobSettingKey.hookName]
        model = settings[JobSettingKey.modelName]
        neuronpediaId = settings[JobSettingKey.neuronpediaId]
        neuronpediaModelId = settings[JobSettingKey.neuronpediaModelId]
        neuronpediaLayer = settings[JobSettingKey.neuronpediaLayer]
    }
}

/// One feature as the exports see it: the stored rows; score details are read only by the
/// exports that print them (`details()`).
struct ExportRow {
    static let scorers = ["simulation", "detection", "fuzzing"]

    var feature: ExportFeature
    /// False when the exported pass labeled other windows than today's: no simulated values are shown.
    var showSimulated = true

    var index: Int { feature.record.index }
    var state: FeatureState { feature.record.state }
    var label: String? { feature.explanation?.text }
    var explainerModel: String? { feature.explanation?.explainerModel }
    var frequency: Double? { feature.record.statistics?.frequency }
    var maxActivation: Float? { feature.record.statistics?.maxActivation }

    func storedScore(_ scorer: String) -> StoredScore? { feature.scores.first { $0.scorer == scorer } }
    func score(_ scorer: String) -> Double? { storedScore(scorer)?.value }

    func details() -> PrintedDetails {
        var details = PrintedDetails()
        for score in feature.scores {
            if score.scorer == "simulation" {
                details.simulation = PrintedSimulation(score.details)
                if !showSimulated { details.simulation?.windows = [] }
            } else {
                details.classification[score.scorer] = PrintedClassification(score.details)
            }
        }
        return details
    }

    // MARK: JSON pieces shared by catalog and html

    func writeScores(_ out: inout JSONBytes) {
        out.raw("{")
        out.key("simulation"); out.number(score("simulation"))
        out.key("detection"); out.number(score("detection"))
        out.key("fuzzing"); out.number(score("fuzzing"))
        out.raw("}")
    }

    /// CONTRACT's `carried_from`: `{"feature", "cosine", "previous_score"}` of a carried label, else null.
    func writeCarriedFrom(_ out: inout JSONBytes) {
        guard let carried = feature.carriedFrom else { return out.null() }
        out.raw("{")
        out.key("feature"); out.int(carried.sourceFeature)
        out.key("cosine"); out.double(carried.cosine)
        out.key("previous_score"); out.number(carried.previousScore)
        out.raw("}")
    }

    func writeScoreDetails(_ details: PrintedDetails, _ out: inout JSONBytes) {
        out.raw("{")
        for scorer in Self.scorers {
            guard let stored = storedScore(scorer) else { continue }
            out.separator()
            out.string(scorer)
            out.raw(":{")
            out.key("model"); out.string(stored.model)
            out.key("prompt_hash"); out.string(stored.promptHash)
            if scorer == "simulation", let simulation = details.simulation {
                out.key("rsquared"); out.printed(simulation.rsquared)
                out.key("absolute_dev_explained"); out.printed(simulation.absoluteDevExplained)
                out.key("failed_windows"); out.int(simulation.failedWindows)
                out.key("retried_windows"); out.int(simulation.retriedWindows)
                out.key("undefined_reason"); out.text(simulation.undefinedReason)
            } else if let classification = details.classification[scorer] {
                out.key("balanced_accuracy"); out.append(classification.balancedAccuracy)
                out.key("f1"); out.append(classification.f1)
                out.key("precision"); out.append(classification.precision)
                out.key("recall"); out.append(classification.recall)
                out.key("true_positives"); out.int(classification.truePositives)
                out.key("true_negatives"); out.int(classification.trueNegatives)
                out.key("false_positives"); out.int(classification.falsePositives)
                out.key("false_negatives"); out.int(classification.falseNegatives)
                out.key("failed_prompts"); out.int(classification.failedPrompts)
            }
            out.raw("}")
        }
        out.raw("}")
    }

    /// `{"explain": [window…], "heldout": [window…]}`; the stored token and activation arrays are copied
    /// through StoredJSON (decoded with Foundation only when it does not recognise them).
    func writeExamples(_ details: PrintedDetails, _ out: inout JSONBytes) throws(SAELabelError) {
        out.raw("{")
        for split in ExampleSplit.allCases {
            out.key(split == .explain ? "explain" : "heldout")
            out.raw("[")
            for example in feature.examples where example.split == split {
                out.separator()
                out.raw("{")
                out.key("tokens")
                if !StoredJSON.appendStringArray(example.tokensJSON, to: &out) {
                    out.raw("[")
                    for token in try decode([String].self, example.tokensJSON, what: "tokens") { out.separator(); out.string(token) }
                    out.raw("]")
                }
                out.key("activations")
                if !StoredJSON.appendNumberArray(example.activationsJSON, kind: .float, to: &out) {
                    out.raw("[")
                    for value in try decode([Float].self, example.activationsJSON, what: "activations") { out.separator(); out.float(value) }
                    out.raw("]")
                }
                out.key("kind"); out.string(example.kind.rawValue)
                if split == .heldout {
                    out.key("simulated")
                    out.printed(details.simulation?.windows.first { $0.ordinal == example.ordinal }?.simulated)
                }
                out.key("sequence"); out.int(example.sequence)
                out.key("start"); out.int(example.start)
                out.raw("}")
            }
            out.raw("]")
        }
        out.raw("}")
    }

    /// The statistics beyond the contract's frequency and max, shared by the catalog and the html data.
    func writeStatistics(_ out: inout JSONBytes) {
        guard let statistics = feature.record.statistics else { return }
        out.key("mean_activation"); out.float(statistics.meanActivation)
        out.key("activating_tokens"); out.int(statistics.activatingTokens)
        out.key("activating_windows"); out.int(statistics.activatingWindows)
        out.key("histogram")
        out.raw("[")
        for count in statistics.histogram { out.separator(); out.int(count) }
        out.raw("]")
    }

    private func decode<T: Decodable>(_ type: T.Type, _ text: String, what: String) throws(SAELabelError) -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(text.utf8))
        } catch {
            throw .store("feature \(index): the stored example \(what) are not readable JSON (\(error)); the store is damaged")
        }
    }
}
