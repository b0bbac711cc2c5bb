import Foundation
import LLMClient
import SAELabelCollect
import SAELabelCore
import SAELabelExplain
import SAELabelScore
import SAELabelStore

/// `saelabel run`: the job file plus the flags that override it.
public struct JobRequest: Sendable {
    public var config: JobConfig
    public var stage: Stage = .all
    public var selection: FeatureSelection
    public var dryRun = false
    public var newVersion = false
    /// Batch mode: submit (or collect what is finished) and exit instead of waiting for open batches.
    public var noWait = false

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
        // Every input, endpoint and output path is checked before the store is touched: bad input writes nothing.
        let plan = try Collector.plan(options)
        let prompts = try PromptLibrary.locate(explicit: config.promptsDirectory)
        let endpoints = try checkEndpoints(request)
        try Pipeline.checkExports(config)
        try checkStorePath(config.store)
        // An offline batch stage (vLLM's run_batch) needs no server.
        try await Pipeline.preflight(endpoints.filter { !BatchMode.isOffline(config, stage: $0.section == "[explainer]" ? "explain" : "score") },
                                     limits: config.limits)
        try FileManager.default.createParentDirectory(of: config.store)
        let store = try JobStore(path: config.store, exclusive: true)
        if let id = config.export.neuronpediaModelId { try store.setSetting(JobSettingKey.neuronpediaModelId, id) }
        if let layer = config.export.neuronpediaLayer { try store.setSetting(JobSettingKey.neuronpediaLayer, layer) }

        var report = RunReport(collect: nil, labeling: nil, status: try store.status(), scoreValues: [], wallSeconds: 0, exports: [])
        if request.stage == .all || request.stage == .collect {
            report.collect = try Pipeline.collect(options: options, store: store, plan: plan, newVersion: request.newVersion,
                                                  progress: progress)
            try CarryOver.recordDirections(config, store: store, features: plan.features)
        } else {
            try store.verifyInputs(plan.fingerprints, acceptChanges: request.newVersion)
            try Pipeline.verifySelectionSettings(options, store: store, acceptChanges: request.newVersion)
        }

        if !config.prices.isEmpty { try store.setPrices(config.prices) }
        if request.stage != .collect {
            // Batches submitted by an earlier run and not read back yet count at the most they can cost.
            let budget = try config.limits.maxCost.map { limit throws(SAELabelError) in
                SpendingLimit(limit: limit, prices: config.prices, spent: try store.spent(prices: config.prices)
                                + BatchMode.mostCost(try store.submittedBatchRequests(), prices: config.prices))
            }
            let batchStages = BatchMode.stages(config)
            let clients = LLMClients(limits: config.limits, store: store, progress: progress,
                                     batchQueue: batchStages.isEmpty ? nil : StoreBatchQueue(store: store, stages: batchStages),
                                     budget: budget)
            defer { clients.shutdown() }
            let (explainer, scorers) = try labelers(request, clients: clients, prompts: prompts)
            let pass = try explainer.map { explainer throws(SAELabelError) in try Pipeline.pass(store: store, explainer: explainer) }
            let wantsExplain = request.stage == .all || request.stage == .explain
            let batches = BatchSubmitter(store: store, config: config, clients: clients, budget: budget)
            // Carry-over (a new SAE version): matched labels enter the pass first and are re-scored by the
            // labeling below; those whose score fell too far are explained afresh in the same round.
            var carryNote: String?
            let carrying = config.carryOver.enabled && wantsExplain && explainer != nil && pass != nil
            if carrying, let pass { carryNote = try CarryOver.prepare(config, store: store, pass: pass) }
            // Batch mode runs rounds: collect finished batches, label from the cache, submit what was queued.
            var outcome = LabelingRun.Outcome()
            while true {
                if !batchStages.isEmpty {
                    report.batchesWaiting = try await batches.collect(wait: !request.noWait)
                    if report.batchesWaiting > 0 { break }
                }
                var round = try await Pipeline.label(store: store, pass: pass, explainer: wantsExplain ? explainer : nil,
                                                     scorers: scorers, selection: request.selection,
                                                     concurrency: config.limits.concurrency, progress: progress,
                                                     budget: budget)
                if carrying, round.deferred == 0, !round.stoppedByBudget, !(try CarryOver.settle(config, store: store, scorers: scorers)).isEmpty {
                    let again = try await Pipeline.label(store: store, pass: pass, explainer: explainer, scorers: scorers,
                                                         selection: request.selection, concurrency: config.limits.concurrency,
                                                         progress: progress, budget: budget)
                    round.explained += again.explained
                    round.scored += again.scored
                    round.failed.merge(again.failed) { first, _ in first }
                    round.deferred = again.deferred
                    round.stoppedByBudget = again.stoppedByBudget
                }
                outcome.explained += round.explained
                outcome.scored += round.scored
                outcome.failed = round.failed
                outcome.deferred = round.deferred
                outcome.stoppedByBudget = round.stoppedByBudget
                // A budget stop ends the run; what it queued for a batch waits in the store for the next run.
                guard round.deferred > 0, !round.stoppedByBudget else { break }
                let submitted = try await batches.submitQueued()
                report.batchesWaiting = submitted.created
                report.batchRequestsQueued = try store.queuedBatchRequests().count
                if submitted.stoppedByBudget {
                    outcome.stoppedByBudget = true
                    break
                }
                if report.batchesWaiting == 0 || request.noWait { break }
            }
            report.labeling = outcome
            if !batchStages.isEmpty { report.batchRequests = try store.batchRequestCounts() }
            if carrying, let explainer { report.carryOver = try CarryOver.report(config, store: store, note: carryNote, explainer: explainer) }
            report.llm = clients.statistics()
        }

        report.exports = try Pipeline.exports(config, store: store)
        report.status = try store.status()
        report.scoreValues = try Pipeline.simulationScores(store: store, selection: request.selection)
        report.wallSeconds = Date().timeIntervalSince(started)
        return report
    }

    /// The endpoints the requested stages call (checked by preflight); throws when one is missing.
    static func checkEndpoints(_ request: JobRequest) throws(SAELabelError) -> [Pipeline.EndpointCheck] {
        let config = request.config
        let wantsExplain = request.stage == .all || request.stage == .explain
        let wantsScore = request.stage == .all || request.stage == .score
        var endpoints: [Pipeline.EndpointCheck] = []
        if wantsExplain && config.explainer.style != "baseline" {
            guard !config.explainer.llm.endpoint.isEmpty, !config.explainer.llm.model.isEmpty else {
                throw .badInput(location: "\(config.path): [explainer]", problem: "endpoint and model are required (or style = \"baseline\")")
            }
            endpoints.append(Pipeline.EndpointCheck("[explainer]", config.explainer.llm))
        }
        if wantsScore && !config.scoring.scorers.isEmpty {
            guard !config.scoring.llm.endpoint.isEmpty, !config.scoring.llm.model.isEmpty else {
                throw .badInput(location: "\(config.path): [simulator]", problem: "endpoint and model are required")
            }
            endpoints.append(Pipeline.EndpointCheck("[simulator]", config.scoring.llm,
                                                    completions: Pipeline.needsOnlyCompletions(config.scoring)))
        }
        return endpoints
    }

    /// The explainer that names the pass (when one is configured) and the scorers the stage runs.
    static func labelers(_ request: JobRequest, clients: LLMClients, prompts: PromptLibrary)
        throws(SAELabelError) -> (explainer: (any Explainer)?, scorers: [any Scorer]) {
        let config = request.config
        var explainer: (any Explainer)?
        if config.explainer.style == "baseline" {
            explainer = try Pipeline.explainer(config.explainer, client: nil, prompts: prompts)
        } else if !config.explainer.llm.endpoint.isEmpty && !config.explainer.llm.model.isEmpty {
            explainer = try Pipeline.explainer(config.explainer, client: clients.client(for: config.explainer.llm), prompts: prompts)
        }
        var scorers: [any Scorer] = []
        if request.stage == .all || request.stage == .score, !config.scoring.scorers.isEmpty {
            scorers = try Pipeline.scorers(config.scoring, client: clients.client(for: config.scoring.llm), prompts: prompts,
                                           seed: config.seed)
        }
        return (explainer, scorers)
    }

    /// A store path whose folder cannot be created, or that is a folder, is bad input (exit 2).
    public static func checkStorePath(_ path: String) throws(SAELabelError) {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            if isDirectory.boolValue { throw .badInput(location: path, problem: "the job store path is a folder; name a .sqlite file") }
            return
        }
        var ancestor = (URL(fileURLWithPath: path).standardizedFileURL.path as NSString).deletingLastPathComponent
        while !FileManager.default.fileExists(atPath: ancestor, isDirectory: &isDirectory) {
            ancestor = (ancestor as NSString).deletingLastPathComponent
        }
        guard isDirectory.boolValue, access(ancestor, W_OK) == 0 else {
            throw .badInput(location: path, problem: "cannot create the job store: \(ancestor) is not a writable folder")
        }
    }

    /// `--dry-run`: the features and the LLM calls the run would send, without calling anything or
    /// creating the store. Once the features are collected the count is exact (the run sends exactly
    /// these calls, plus retries of failed or unusable answers, minus answers an interrupted run left
    /// in the response cache); before collect it is an upper bound, since dead and sparse features are
    /// only known after collect.
    public static func dryRun(_ request: JobRequest) throws(SAELabelError) -> DryRunEstimate {
        let config = request.config
        let plan = try Collector.plan(Pipeline.collectOptions(config, selection: request.selection))
        let prompts = try PromptLibrary.locate(explicit: config.promptsDirectory)
        let endpoints = try checkEndpoints(request)
        try Pipeline.checkExports(config)
        try checkStorePath(config.store)
        let store = FileManager.default.fileExists(atPath: config.store) ? try JobStore(path: config.store) : nil
        let clients = LLMClients(limits: config.limits, store: nil)
        defer { clients.shutdown() }
        let (explainer, allScorers) = try labelers(request, clients: clients, prompts: prompts)
        let wantsExplain = request.stage == .all || request.stage == .explain
        let wantsScore = request.stage == .all || request.stage == .score
        let explainCallsPerFeature = explainer.map { $0 is BaselineExplainer ? 0 : 1 } ?? 0
        let scorers = wantsScore ? allScorers : []
        let pass = try store.flatMap { store throws(SAELabelError) in
            try explainer.map { explainer throws(SAELabelError) in try Pipeline.pass(store: store, explainer: explainer) }
        }
        let c = config.collect
        let configuredHeldout = Array(repeating: ActivationWindow(tokens: Array(repeating: "", count: c.window), activations: [], kind: .top,
                                                                 sequence: 0, start: 0),
                                      count: c.heldoutTop + c.heldoutQuantile + c.heldoutRandom)
        var estimate = DryRunEstimate(config: config, features: plan.features)
        var carryable: (features: Set<Int>, note: String?) = ([], nil)
        if wantsExplain, explainer != nil {
            carryable = try CarryOver.preview(config, store: store, features: plan.features, newVersion: request.newVersion)
        }
        estimate.carryNote = carryable.note
        let alreadyCarried = Set(try store?.carriedLabels().map(\.feature) ?? [])
        estimate.preflightCalls = Set(endpoints.map(\.key)).count
        let collecting = request.stage == .all || request.stage == .collect
        for feature in plan.features {
            let record = try store?.feature(feature)
            let state = record?.state ?? .pending
            let uncollected = state == .pending || (state == .failed && record?.failedStage == "collect")
                || (request.newVersion && collecting)
            if uncollected {
                guard collecting else { continue }
                estimate.exact = false
                if carryable.features.contains(feature) {
                    estimate.carriedLabels += 1
                } else if wantsExplain { estimate.explainCalls += explainCallsPerFeature }
                estimate.scoreCalls += scorers.reduce(0) { $0 + $1.plannedCalls(heldout: configuredHeldout) }
                continue
            }
            guard let store, state != .dead, state != .sparse else { continue }
            let explanation: StoredExplanation?
            if let pass {
                explanation = try store.explanation(feature: feature, pass: pass.id)
            } else {
                explanation = try store.currentExplanation(feature: feature)
            }
            if explanation == nil {
                guard wantsExplain else { continue }
                if carryable.features.contains(feature), !alreadyCarried.contains(feature) {
                    estimate.carriedLabels += 1
                } else {
                    estimate.explainCalls += explainCallsPerFeature
                }
            }
            guard !scorers.isEmpty else { continue }
            let stored = try explanation.map { explanation throws(SAELabelError) in try store.scores(explanation: explanation) } ?? []
            let heldout = try store.examples(feature: feature, split: .heldout).map(\.window)
            for scorer in scorers where !stored.contains(where: { $0.scorer == scorer.name && $0.model == scorer.model && $0.promptHash == scorer.promptHash }) {
                estimate.scoreCalls += scorer.plannedCalls(heldout: heldout)
            }
        }
        estimate.estimateTokens(config: config)
        return estimate
    }
}

/// What `--dry-run` predicts: the LLM calls the run sends (exact once collected; an upper bound
/// before), and rough token counts (~3 tokens per `token<TAB>N` line, every score call counted as a
/// JSON simulation of ~12 completion tokens per window token), said as estimates.
public struct DryRunEstimate: Sendable {
    public var features: [Int]
    public var explainCalls = 0
    public var scoreCalls = 0
    /// One check request per endpoint and model, sent before collect (see `Pipeline.preflight`).
    public var preflightCalls = 0
    /// Features that would get a carried label from the earlier SAE version instead of an explain call (each is
    /// still scored; one that scores worse by more than `max_score_drop` is explained after all).
    public var carriedLabels = 0
    public var carryNote: String?
    /// False when some features are not collected yet, so their calls are an upper bound.
    public var exact = true
    public var promptTokens = 0
    public var completionTokens = 0
    /// Money at the job file's prices; nil when a model the run calls has no price.
    public var cost: Double?
    /// Some stage of `cost` goes through batches, priced at the batch discount.
    public var batchPriced = false

    init(config: JobConfig, features: [Int]) {
        self.features = features
    }

    public var totalCalls: Int { explainCalls + scoreCalls + preflightCalls }

    mutating func estimateTokens(config: JobConfig) {
        let c = config.collect
        let explainWindows = c.explainTop + c.explainQuantile
        // A sparse simulation request carries up to `windows_per_request` of a feature's held-out windows.
        let heldoutWindows = c.heldoutTop + c.heldoutQuantile + c.heldoutRandom
        let windowsPerCall = config.scoring.simulator == .sparse ? max(1, min(config.scoring.windowsPerRequest, heldoutWindows)) : 1
        let explainPrompt = explainCalls * (300 + explainWindows * c.window * 3)
        let scorePrompt = scoreCalls * (250 + windowsPerCall * c.window * 4)
        let explainCompletion = explainCalls * (config.explainer.llm.maxTokens ?? 60)
        // The sparse simulator lists only the active tokens: on the demo (SmolLM2, 16-token windows) it answered
        // 27 tokens per window against the dense one's 218, so 2 per window token instead of 12 (README, "What a run costs").
        let scoreCompletion = scoreCalls * windowsPerCall * c.window * (config.scoring.simulator == .sparse ? 2 : 12)
        promptTokens = explainPrompt + scorePrompt
        completionTokens = explainCompletion + scoreCompletion
        let explainPrice = explainCalls == 0 ? ModelPrice(input: 0, output: 0) : config.prices[config.explainer.llm.model]
        let scorePrice = scoreCalls == 0 ? ModelPrice(input: 0, output: 0) : config.prices[config.scoring.llm.model]
        // Batch stages are billed at their model's batch discount.
        let stages = BatchMode.stages(config)
        if !config.prices.isEmpty, let explainPrice, let scorePrice {
            cost = explainPrice.cost(promptTokens: explainPrompt, completionTokens: explainCompletion, batch: stages.contains("explain"))
                + scorePrice.cost(promptTokens: scorePrompt, completionTokens: scoreCompletion, batch: stages.contains("score"))
            batchPriced = !stages.isEmpty
        }
    }
}

extension FileManager {
    func createParentDirectory(of path: String) throws(SAELabelError) {
        let parent = URL(fileURLWithPath: path).deletingLastPathComponent()
        do {
            try createDirectory(at: parent, withIntermediateDirectories: true)
        } catch {
            throw .badInput(location: path, problem: "cannot create the folder \(parent.path): \(error.localizedDescription)")
        }
    }
}
