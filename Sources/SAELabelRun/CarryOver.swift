import Foundation
import SAELabelCollect
import SAELabelCore
import SAELabelExplain
import SAELabelScore
import SAELabelStore

public enum CarryOverDefaults {
    /// Decoder cosine a match needs. Unrelated directions in d_in ≥ 500 sit below 0.2 (the best of 256 random
    /// unit vectors in 576 dimensions reaches ~0.15); the demo SAE trained twice as long (Datasets/demo-v2) keeps
    /// 254 of 256 shipped features at 0.71–0.99 (median 0.92) (README, "Label carry-over").
    public static let minCosine = 0.7
}

/// What carry-over did in this store's current pass (cumulative over resumed runs).
public struct CarryOverReport: Sendable, Equatable {
    /// Why no label was carried, when none could be.
    public var note: String?
    /// New features matched one-to-one to a labeled feature of the earlier version.
    public var matched = 0
    /// Carried labels kept (re-scored, no worse than allowed), plus those still awaiting their score.
    public var carried = 0
    /// Carried labels that scored worse by more than `max_score_drop` and were explained afresh.
    public var reexplained = 0
    /// Explain calls not sent thanks to the carried labels.
    public var explainCallsSaved = 0
    public var minCosine = 0.0
    public var medianCosine: Double?
}

/// Label carry-over (SPEC §14): a new SAE version's features take the labels of the earlier version's features
/// with the same decoder direction, are re-scored on the new windows, and are re-explained only when the
/// carried label fails there.
public enum CarryOver {
    static let thisStore = "this store"

    /// Records the decoder directions of the SAE version the store collects, so a later version can match
    /// against them even after the SAE file is replaced by its retrain.
    public static func recordDirections(_ config: JobConfig, store: JobStore, features: [Int]) throws(SAELabelError) {
        let version = try store.inputVersion()
        let recorded = try store.featuresWithDecoderDirections(version: version)
        let missing = features.filter { !recorded.contains($0) }
        guard !missing.isEmpty, let sae = config.inputs.sae,
              let directions = try SAEDecoder.directions(saePath: sae, features: missing) else { return }
        try store.recordDecoderDirections(version: version, DecoderDirections(features: missing, width: directions.width, rows: directions.rows))
    }

    /// Where labels come from: another store (`from`) or this store's previous version. Nil with a note when
    /// carry-over cannot run.
    struct Source {
        var name: String
        var pass: String
        var directions: DecoderDirections
        var labels: [Int: CarrySourceLabel]
    }

    static func source(_ config: JobConfig, store: JobStore?, scorer: String, newVersion: Int) throws(SAELabelError) -> (Source?, String?) {
        let origin: JobStore
        let name: String
        let version: Int?
        if let from = config.carryOver.from {
            guard FileManager.default.fileExists(atPath: from) else {
                throw .badInput(location: "\(config.path): [carry_over] from", problem: "no store at \(from); name the .sqlite of the earlier version's job")
            }
            origin = try JobStore(path: from)
            name = from
            version = try origin.previousDecoderVersion(before: Int.max)
        } else {
            guard newVersion > 1, let store else { return (nil, nil) }
            origin = store
            name = thisStore
            version = try store.previousDecoderVersion(before: newVersion)
        }
        guard let version, let directions = try origin.decoderDirections(version: version) else {
            return (nil, "carry-over unavailable: \(name) has no decoder directions of an earlier SAE version (stores labeled before carry-over existed lack them); every feature is explained afresh")
        }
        guard let pass = try origin.labelingPass(inputVersion: version) else {
            return (nil, "carry-over unavailable: \(name) has no labels for its SAE version \(version)")
        }
        let labels = try origin.carrySourceLabels(pass: pass, scorer: scorer)
        return (Source(name: name, pass: pass, directions: directions, labels: labels), nil)
    }

    /// One-to-one matches by mutual best decoder cosine at or above `minCosine`: (new feature, old feature, cosine).
    public static func match(new: DecoderDirections, old: DecoderDirections, minCosine: Double) -> [(new: Int, old: Int, cosine: Double)] {
        guard new.width == old.width else { return [] }
        let nearest = SAEDecoder.nearest(new: new.rows, old: old.rows, width: new.width)
        var result: [(new: Int, old: Int, cosine: Double)] = []
        for (slot, oldSlot) in nearest.oldForNew.enumerated() where oldSlot >= 0 && nearest.newForOld[oldSlot] == slot {
            let cosine = Double(nearest.cosineForNew[slot])
            if cosine >= minCosine { result.append((new.features[slot], old.features[oldSlot], cosine)) }
        }
        return result
    }

    /// `--dry-run`: the new features that would receive a carried label (matched to a labeled feature of the
    /// earlier version), read from the SAE file and the store(s) without writing anything.
    static func preview(_ config: JobConfig, store: JobStore?, features: [Int], newVersion: Bool) throws(SAELabelError) -> (features: Set<Int>, note: String?) {
        guard config.carryOver.enabled, let sae = config.inputs.sae else { return ([], nil) }
        // Before a --new-version run, the store's current version is the one labels come from.
        let version = try (store?.inputVersion() ?? 1) + (newVersion ? 1 : 0)
        let scorer = decidingScorer(config) ?? "simulation"
        let (source, note) = try self.source(config, store: store, scorer: scorer, newVersion: version)
        guard let source else { return ([], note) }
        guard let read = try SAEDecoder.directions(saePath: sae, features: features) else {
            return ([], "carry-over unavailable: the SAE's decoder (W_dec) could not be read")
        }
        let new = DecoderDirections(features: features, width: read.width, rows: read.rows)
        let matches = match(new: new, old: source.directions, minCosine: config.carryOver.minCosine)
        return (Set(matches.filter { source.labels[$0.old] != nil }.map(\.new)), nil)
    }

    /// The scorer whose score decides whether a carried label still holds: simulation when the job runs it.
    static func decidingScorer(_ config: JobConfig) -> String? {
        (config.scoring.scorers.contains(.simulation) ? .simulation : config.scoring.scorers.first)?.rawValue
    }

    /// Carries labels into the store's current pass (idempotent: a resumed run carries nothing twice).
    static func carry(_ config: JobConfig, store: JobStore) throws(SAELabelError) -> String? {
        let version = try store.inputVersion()
        let (source, note) = try source(config, store: store, scorer: decidingScorer(config) ?? "simulation", newVersion: version)
        guard let source else { return note }
        guard let new = try store.decoderDirections(version: version) else {
            return "carry-over unavailable: the SAE's decoder (W_dec) could not be read, so its features cannot be matched"
        }
        guard new.width == source.directions.width else {
            return "carry-over unavailable: \(source.name)'s SAE has decoder rows of width \(source.directions.width), this one \(new.width)"
        }
        let items = match(new: new, old: source.directions, minCosine: config.carryOver.minCosine).compactMap { pair -> (CarriedLabel, CarrySourceLabel)? in
            guard let label = source.labels[pair.old] else { return nil }
            return (CarriedLabel(feature: pair.new, source: source.name, sourcePass: source.pass, sourceFeature: pair.old,
                                 cosine: pair.cosine, previousScore: label.score), label)
        }
        try store.carry(items)
        return nil
    }

    /// Carry, label (explain the rest, score everything), then re-explain carried labels that lost more than
    /// `max_score_drop`; returns the labeling outcome of both rounds and the carry-over report.
    /// Starts the pass and carries matched labels into it (once per feature); the note says why nothing
    /// could be carried, if so. The labeling that follows re-scores carried labels and explains the rest.
    static func prepare(_ config: JobConfig, store: JobStore, pass: LabelingPass) throws(SAELabelError) -> String? {
        try store.beginPass(pass)
        return try carry(config, store: store)
    }

    /// After carried labels are scored: those whose score fell by more than `max_score_drop` go back to be
    /// explained afresh. Returns them (empty: nothing more to label).
    static func settle(_ config: JobConfig, store: JobStore, scorers: [any Scorer]) throws(SAELabelError) -> [Int] {
        guard let scorer = decidingScorer(config), scorers.contains(where: { $0.name == scorer }) else { return [] }
        return try store.settleCarriedLabels(scorer: scorer, maxDrop: config.carryOver.maxScoreDrop)
    }

    /// Matched / carried / re-explained counts of the current pass, for the summary.
    static func report(_ config: JobConfig, store: JobStore, note: String?, explainer: any Explainer) throws(SAELabelError) -> CarryOverReport {
        var report = CarryOverReport(note: note)
        report.minCosine = config.carryOver.minCosine
        let carried = try store.carriedLabels()
        report.matched = carried.count
        report.reexplained = carried.filter { $0.decision == "reexplained" }.count
        report.carried = report.matched - report.reexplained
        report.explainCallsSaved = explainer is BaselineExplainer ? 0 : report.carried
        let cosines = carried.map(\.cosine).sorted()
        report.medianCosine = cosines.isEmpty ? nil : cosines[cosines.count / 2]
        return report
    }
}
