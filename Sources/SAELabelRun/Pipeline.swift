import Foundation
import LLMClient
import Logging
import SAELabelCollect
import SAELabelCore
import SAELabelExplain
import SAELabelExport
import SAELabelScore
import SAELabelStore

public enum Stage: String, Sendable, CaseIterable {
    case collect, explain, score, all
}

/// What `run` did, for the summary and the exit status.
public struct RunReport: Sendable {
    public var collect: CollectSummary?
    public var labeling: LabelingRun.Outcome?
    public var status: JobStatus
    public var scoreValues: [Double]
    public var wallSeconds: Double
    public var exports: [String]

    public var exitCode: Int32 { status.states[FeatureState.failed.rawValue, default: 0] > 0 ? 1 : 0 }
}

/// The whole nightly job: collect → explain → score (overlapped) → exports. Every step reads and
/// writes the store, so running the same command again continues where the last one stopped.
public enum Pipeline {
    public static func collectOptions(_ config: JobConfig, selection: FeatureSelection) -> CollectOptions {
        var options = CollectOptions(saeDirectory: config.inputs.sae, activationFiles: config.inputs.activations,
                                     latentsDirectory: config.inputs.latents, tokenizerPath: config.inputs.tokenizer)
        options.selection = selection
        options.seed = config.seed
        options.windowLength = config.collect.window
        options.explainTop = config.collect.explainTop
        options.explainQuantile = config.collect.explainQuantile
        options.heldoutTop = config.collect.heldoutTop
        options.heldoutQuantile = config.collect.heldoutQuantile
        options.heldoutRandom = config.collect.heldoutRandom
        options.minActivatingWindows = config.collect.minActivatingWindows
        options.excludeSpecialTokens = config.collect.excludeSpecialTokens
        options.excludePositions = config.collect.excludePositions
        options.excludeNormAbove = config.collect.excludeNormAbove.map { Float($0) }
        options.batchTokens = config.collect.batchTokens
        options.blasThreads = config.collect.blasThreads
        options.memoryBudgetMiB = config.collect.memoryMiB
        return options
    }

    /// Validates every input and checks the fingerprints and settings against the store without writing, then
    /// collects the selected features that are still pending (new ones, or all of them with `newVersion`) in
    /// committed blocks. Features already collected, explained or scored are never touched. The fingerprints,
    /// settings and pending rows are written with the first block, after its stream checked the whole corpus,
    /// so bad input (even found only while streaming) leaves the store as it was.
    public static func collect(options: CollectOptions, store: JobStore, plan: CollectPlan, newVersion: Bool,
                               progress: ProgressReporter) throws(SAELabelError) -> CollectSummary? {
        try store.checkInputs(plan.fingerprints, acceptChanges: newVersion)
        let settings = try checkSelectionSettings(options, store: store, acceptChanges: newVersion)
        var first = CollectCommit()
        first.inputs = plan.fingerprints
        first.acceptChangedInputs = newVersion
        first.settings = [collectSettingsKey: settings]
        first.register = plan.features
        let pending: [Int]
        if newVersion {
            // New inputs: every selected feature is collected again and relabeled in a new pass.
            first.resetToPending = plan.features
            pending = plan.features
        } else {
            let known = Set(try store.features(in: FeatureState.allCases.filter { $0 != .pending }))
            pending = plan.features.filter { !known.contains($0) }
        }
        guard !pending.isEmpty else {
            try store.commitCollect(first)
            return nil
        }
        let blocks = Collector.blocks(of: pending, options: options, plan: plan)
        progress.begin(stage: "collect", total: blocks.count * plan.totalTokens)
        let summary = try Collector.run(options, plan: plan, store: store, features: pending, first: first) { done, _ in
            progress.setDone(stage: "collect", done: done)
        }
        progress.finish()
        return summary
    }

    /// The settings that decide which examples a feature gets. Changing them on a resumed store would
    /// silently mix old and new selections, so they are checked like the input files.
    static func selectionSettings(_ options: CollectOptions) -> String {
        let exclusion = options.excludeNormAbove.map { "\($0)" } ?? "none"
        return "seed=\(options.seed) window=\(options.windowLength) explain=\(options.explainTop)+\(options.explainQuantile) "
            + "heldout=\(options.heldoutTop)+\(options.heldoutQuantile)+\(options.heldoutRandom) "
            + "min_windows=\(options.minActivatingWindows) special=\(options.excludeSpecialTokens) "
            + "positions=\(options.excludePositions) norm_above=\(exclusion)"
    }

    static let collectSettingsKey = "collect_settings"

    static func verifySelectionSettings(_ options: CollectOptions, store: JobStore, acceptChanges: Bool) throws(SAELabelError) {
        try store.setSetting(collectSettingsKey, try checkSelectionSettings(options, store: store, acceptChanges: acceptChanges))
    }

    /// The current settings text, or `.inputChanged` when the store recorded other settings (read-only).
    static func checkSelectionSettings(_ options: CollectOptions, store: JobStore, acceptChanges: Bool) throws(SAELabelError) -> String {
        let current = selectionSettings(options)
        if let recorded = try store.setting(collectSettingsKey), recorded != current, !acceptChanges {
            throw .inputChanged(path: "[collect] settings", detail: "were \(recorded), now \(current)")
        }
        return current
    }

    public static func client(_ endpoint: JobConfig.Endpoint, limits: JobConfig.Limits, store: JobStore,
                              progress: ProgressReporter? = nil) -> LLMClient {
        var configuration = LLMClientConfiguration(baseURL: endpoint.endpoint, apiKeyEnvironmentVariable: endpoint.apiKeyEnv)
        configuration.maxInFlight = limits.concurrency
        configuration.requestsPerMinute = limits.requestsPerMinute
        configuration.tokensPerMinute = limits.tokensPerMinute
        configuration.requestTimeout = limits.timeoutSeconds
        configuration.maxRetries = limits.maxRetries
        return LLMClient(configuration: configuration, cache: StoreResponseCache(store: store, progress: progress),
                         logger: Logger(label: "saelabel.llm"))
    }

    public static func explainer(_ config: JobConfig.Explainer, client: LLMClient?, prompts: PromptLibrary)
        throws(SAELabelError) -> any Explainer {
        if config.style == "baseline" { return BaselineExplainer() }
        guard let client, !config.llm.model.isEmpty else {
            throw .usage("the explainer needs an endpoint and a model: set [explainer] endpoint and model, or pass --endpoint and --model")
        }
        let style = ExplainerStyle(rawValue: config.style) ?? .openai
        return try LLMExplainer(client: client, model: config.llm.model, prompts: prompts, style: style,
                                maxTokens: config.llm.maxTokens ?? 60)
    }

    public static func scorers(_ config: JobConfig.Scoring, client: LLMClient, prompts: PromptLibrary, seed: UInt64)
        throws(SAELabelError) -> [any Scorer] {
        guard !config.llm.model.isEmpty else {
            throw .usage("scoring needs a simulator endpoint and model: set [simulator] endpoint and model, or pass --endpoint and --model")
        }
        var result: [any Scorer] = []
        for name in config.scorers {
            switch name {
            case "simulation":
                if config.simulator == "logprobs" {
                    result.append(try LogprobSimulationScorer(client: client, model: config.llm.model, prompts: prompts))
                } else {
                    result.append(try JSONSimulationScorer(client: client, model: config.llm.model, prompts: prompts))
                }
            case "detection":
                result.append(try DetectionScorer(client: client, model: config.llm.model, prompts: prompts, seed: seed))
            case "fuzzing":
                result.append(try FuzzingScorer(client: client, model: config.llm.model, prompts: prompts, seed: seed))
            default:
                throw .usage("unknown scorer '\(name)'; use simulation, detection or fuzzing")
            }
        }
        return result
    }

    /// A labeling pass is one (inputs, explainer, scorers, prompts) combination; changing any of them
    /// starts a new pass over the same store and keeps the old labels.
    public static func passKey(store: JobStore, explainer: (any Explainer)?, scorers: [any Scorer]) throws(SAELabelError) -> String {
        var parts = try store.fingerprints().filter { $0.role.hasPrefix("sae") || $0.role.hasPrefix("latents") }.map(\.sha256)
        if let explainer { parts += [explainer.name, explainer.model, explainer.promptHash] }
        for scorer in scorers { parts += [scorer.name, scorer.model, scorer.promptHash] }
        return String(Hashing.sha256Hex(parts.joined(separator: "|")).prefix(16))
    }

    /// Runs explain and/or score on what the store holds. With `pass`, the store moves to that labeling
    /// pass first; without it, scoring continues the store's current pass.
    public static func label(store: JobStore, pass: String?, explainer: (any Explainer)?, scorers: [any Scorer],
                             selection: FeatureSelection, concurrency: Int, progress: ProgressReporter)
        async throws(SAELabelError) -> LabelingRun.Outcome {
        if let pass {
            try store.beginPass(pass)
        } else if try store.currentPass() == nil {
            throw .usage("nothing is explained in \(store.path) yet; run `saelabel explain` first")
        }
        let run = LabelingRun(store: store, explainer: explainer, scorers: scorers, selection: selection,
                              concurrency: concurrency, progress: progress)
        return try await run.run()
    }

    /// Simulation scores of the current pass, for the summary's distribution.
    public static func simulationScores(store: JobStore, selection: FeatureSelection) throws(SAELabelError) -> [Double] {
        var values: [Double] = []
        for feature in try store.features(in: [.scored], selection: selection) {
            guard let explanation = try store.currentExplanation(feature: feature) else { continue }
            if let value = try store.scores(explanation: explanation).first(where: { $0.scorer == "simulation" })?.value {
                values.append(value)
            }
        }
        return values
    }

    /// The exports named in the job file.
    public static func exports(_ config: JobConfig, store: JobStore) throws(SAELabelError) -> [String] {
        var written: [String] = []
        let targets: [(ExportFormat, String?)] = [(.catalog, config.export.catalog), (.csv, config.export.csv),
                                                  (.neuronpedia, config.export.neuronpedia), (.html, config.export.html)]
        for (format, path) in targets {
            guard let path else { continue }
            _ = try Exporter.export(store: store, format: format, to: path, filter: ExportFilter())
            written.append(path)
        }
        return written
    }
}
