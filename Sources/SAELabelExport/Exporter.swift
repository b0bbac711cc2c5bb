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
            var row = ExportRow(feature)
            if !showSimulated { row.simulation?.windows = [] }
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

/// One feature as the exports see it: the stored rows plus decoded score details.
struct ExportRow {
    static let scorers = ["simulation", "detection", "fuzzing"]

    var feature: ExportFeature
    var simulation: SimulationDetails?
    var classification: [String: ClassificationDetails] = [:]

    init(_ feature: ExportFeature) {
        self.feature = feature
        let decoder = JSONDecoder()
        for score in feature.scores {
            let data = Data(score.details.utf8)
            if score.scorer == "simulation" {
                simulation = try? decoder.decode(SimulationDetails.self, from: data)
            } else {
                classification[score.scorer] = try? decoder.decode(ClassificationDetails.self, from: data)
            }
        }
    }

    var index: Int { feature.record.index }
    var state: FeatureState { feature.record.state }
    var label: String? { feature.explanation?.text }
    var explainerModel: String? { feature.explanation?.explainerModel }
    var frequency: Double? { feature.record.statistics?.frequency }
    var maxActivation: Float? { feature.record.statistics?.maxActivation }

    /// CONTRACT's `carried_from`: `{"feature", "cosine", "previous_score"}` of a carried label, else null.
    var carriedFromJSON: JSONValue {
        guard let carried = feature.carriedFrom else { return .null }
        return .object([("feature", .int(carried.sourceFeature)), ("cosine", .number(carried.cosine)),
                        ("previous_score", .number(carried.previousScore))])
    }

    func storedScore(_ scorer: String) -> StoredScore? { feature.scores.first { $0.scorer == scorer } }
    func score(_ scorer: String) -> Double? { storedScore(scorer)?.value }

    func windows(_ split: ExampleSplit) -> [StoredExample] { feature.examples.filter { $0.split == split } }

    /// Simulated values for the held-out window with this ordinal, when simulated.
    func simulated(heldoutOrdinal: Int) -> [Double]? {
        simulation?.windows.first { $0.heldoutOrdinal == heldoutOrdinal }?.simulated
    }

    // MARK: JSON pieces shared by catalog and html

    var scoresJSON: JSONValue {
        .object(Self.scorers.map { ($0, .number(score($0))) })
    }

    var scoreDetailsJSON: JSONValue {
        var members: [(String, JSONValue)] = []
        for scorer in Self.scorers {
            guard let stored = storedScore(scorer) else { continue }
            var detail: [(String, JSONValue)] = [("model", .string(stored.model)), ("prompt_hash", .string(stored.promptHash))]
            if scorer == "simulation", let simulation {
                detail += [("rsquared", .number(simulation.rsquared)),
                           ("absolute_dev_explained", .number(simulation.absoluteDevExplained)),
                           ("failed_windows", .int(simulation.failedWindows)),
                           ("retried_windows", .int(simulation.retriedWindows)),
                           ("undefined_reason", .text(simulation.undefinedReason))]
            } else if let details = classification[scorer] {
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

    var examplesJSON: JSONValue {
        func window(_ example: StoredExample, heldout: Bool) -> JSONValue {
            var members: [(String, JSONValue)] = [
                ("tokens", .array(example.window.tokens.map(JSONValue.string))),
                ("activations", .array(example.window.activations.map(JSONValue.float))),
                ("kind", .string(example.window.kind.rawValue)),
            ]
            if heldout {
                members.append(("simulated", simulated(heldoutOrdinal: example.ordinal).map { .array($0.map(JSONValue.double)) } ?? .null))
            }
            members += [("sequence", .int(example.window.sequence)), ("start", .int(example.window.start))]
            return .object(members)
        }
        return .object([("explain", .array(windows(.explain).map { window($0, heldout: false) })),
                        ("heldout", .array(windows(.heldout).map { window($0, heldout: true) }))])
    }
}
