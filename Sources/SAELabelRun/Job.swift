import Foundation
import LLMClient
import SAELabelCollect
import SAELabelCore
import SAELabelStore

/// `saelabel run`: the job file plus the flags that override it.
public struct JobRequest: Sendable {
    public var config: JobConfig
    public var stage: Stage = .all
    public var selection: FeatureSelection
    public var dryRun = false
    public var newVersion = false

    public init(config: JobConfig, stage: Stage = .all, features: FeatureSelection.Set?, shard: FeatureSelection.Shard?,
                dryRun: Bool = false, newVersion: Bool = false) {
        self.config = config
        self.stage = stage
        self.selection = FeatureSelection(set: features ?? config.collect.features, shard: shard)
        self.dryRun = dryRun
        self.newVersion = newVersion
    }
}

public enum JobRunner {
    /// Runs the job; the report's exit code is 1 when some features failed.
    public static func run(_ request: JobRequest, progress: ProgressReporter) async throws(SAELabelError) -> RunReport {
        let started = Date()
        let config = request.config
        let options = Pipeline.collectOptions(config, selection: request.selection)
        // Every input is validated before the store is touched: bad input writes nothing.
        let plan = try Collector.plan(options)
        let prompts = try PromptLibrary.locate(explicit: config.promptsDirectory)
        let wantsExplain = request.stage == .all || request.stage == .explain
        let wantsScore = request.stage == .all || request.stage == .score
        if wantsExplain && config.explainer.style != "baseline" && (config.explainer.llm.endpoint.isEmpty || config.explainer.llm.model.isEmpty) {
            throw .badInput(location: "\(config.path): [explainer]", problem: "endpoint and model are required (or style = \"baseline\")")
        }
        if wantsScore && (config.scoring.llm.endpoint.isEmpty || config.scoring.llm.model.isEmpty) {
            throw .badInput(location: "\(config.path): [simulator]", problem: "endpoint and model are required")
        }
        try FileManager.default.createParentDirectory(of: config.store)
        let store = try JobStore(path: config.store, exclusive: true)

        var report = RunReport(collect: nil, labeling: nil, status: try store.status(), scoreValues: [], wallSeconds: 0, exports: [])
        if request.stage == .all || request.stage == .collect {
            report.collect = try Pipeline.collect(options: options, store: store, plan: plan, newVersion: request.newVersion,
                                                  progress: progress)
        } else {
            try store.verifyInputs(plan.fingerprints, acceptChanges: request.newVersion)
            try Pipeline.verifySelectionSettings(options, store: store, acceptChanges: request.newVersion)
        }

        if wantsExplain || wantsScore {
            let explainClient = wantsExplain && config.explainer.style != "baseline"
                ? Pipeline.client(config.explainer.llm, limits: config.limits, store: store, progress: progress) : nil
            let scoringConfigured = !config.scoring.llm.endpoint.isEmpty && !config.scoring.llm.model.isEmpty
            let scoreClient = scoringConfigured ? Pipeline.client(config.scoring.llm, limits: config.limits, store: store, progress: progress) : nil
            defer {
                explainClient?.shutdown()
                scoreClient?.shutdown()
            }
            let explainer = try Pipeline.explainer(config.explainer, client: explainClient, prompts: prompts)
            // The pass key always covers the scorers configured for the job, so `--stage explain`
            // followed by `--stage score` stays in one pass.
            let passScorers = try scoreClient.map { client throws(SAELabelError) in
                try Pipeline.scorers(config.scoring, client: client, prompts: prompts, seed: config.seed)
            } ?? []
            let pass = try Pipeline.passKey(store: store, explainer: explainer, scorers: passScorers)
            report.labeling = try await Pipeline.label(store: store, pass: pass, explainer: wantsExplain ? explainer : nil,
                                                       scorers: wantsScore ? passScorers : [], selection: request.selection,
                                                       concurrency: config.limits.concurrency, progress: progress)
        }

        report.exports = try Pipeline.exports(config, store: store)
        report.status = try store.status()
        report.scoreValues = try Pipeline.simulationScores(store: store, selection: request.selection)
        report.wallSeconds = Date().timeIntervalSince(started)
        return report
    }

    /// `--dry-run`: the features and the estimated LLM calls and tokens, without calling anything or
    /// creating the store.
    public static func dryRun(_ request: JobRequest) throws(SAELabelError) -> DryRunEstimate {
        let config = request.config
        let plan = try Collector.plan(Pipeline.collectOptions(config, selection: request.selection))
        var toExplain = plan.features.count
        var toScore = plan.features.count
        if FileManager.default.fileExists(atPath: config.store) {
            let store = try JobStore(path: config.store)
            let selected = Set(plan.features)
            let done = try store.features(in: [.explained, .scored, .dead, .sparse], selection: request.selection).filter(selected.contains)
            let scored = try store.features(in: [.scored, .dead, .sparse], selection: request.selection).filter(selected.contains)
            toExplain -= done.count
            toScore -= scored.count
        }
        return DryRunEstimate(config: config, stage: request.stage, features: plan.features, toExplain: toExplain, toScore: toScore)
    }
}

/// Rough call and token counts for `--dry-run`. Token counts assume ~3 tokens per `token<TAB>N` line
/// and ~12 completion tokens per simulated token in the JSON answer; they are estimates, said as such.
public struct DryRunEstimate: Sendable {
    public var features: [Int]
    public var explainCalls: Int
    public var scoreCalls: Int
    public var promptTokens: Int
    public var completionTokens: Int

    init(config: JobConfig, stage: Stage, features: [Int], toExplain: Int, toScore: Int) {
        self.features = features
        let c = config.collect
        let explainWindows = c.explainTop + c.explainQuantile
        let heldout = c.heldoutTop + c.heldoutQuantile + c.heldoutRandom
        let doExplain = stage == .all || stage == .explain
        let doScore = stage == .all || stage == .score
        explainCalls = doExplain && config.explainer.style != "baseline" ? max(0, toExplain) : 0
        var calls = 0
        var prompt = explainCalls * (300 + explainWindows * c.window * 3)
        var completion = explainCalls * (config.explainer.llm.maxTokens ?? 60)
        if doScore {
            let pending = max(0, toScore)
            for scorer in config.scoring.scorers {
                switch scorer {
                case "simulation":
                    calls += pending * heldout
                    prompt += pending * heldout * (250 + c.window * 4)
                    completion += pending * heldout * c.window * 12
                default:
                    let prompts = (heldout + 4) / 5
                    calls += pending * prompts
                    prompt += pending * prompts * (250 + 5 * c.window * 2)
                    completion += pending * prompts * 12
                }
            }
        }
        scoreCalls = calls
        promptTokens = prompt
        completionTokens = completion
    }
}

extension FileManager {
    func createParentDirectory(of path: String) throws(SAELabelError) {
        let parent = URL(fileURLWithPath: path).deletingLastPathComponent()
        do {
            try createDirectory(at: parent, withIntermediateDirectories: true)
        } catch {
            throw .store("cannot create \(parent.path): \(error.localizedDescription)")
        }
    }
}
