import Foundation
import LLMClient
import Logging
import SAELabelCollect
import SAELabelCore
import SAELabelExplain
import SAELabelExport
import SAELabelScore
import SAELabelStore
import Synchronization

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
    /// LLM requests of this run (nil when no stage called an LLM).
    public var llm: ClientStatistics?
    /// Batch mode: provider batches still running, and requests waiting in the store for an offline batch.
    public var batchesWaiting = 0
    public var batchRequestsQueued = 0
    /// Batch mode: the store's batch requests by state (queued, submitted, answered, failed).
    public var batchRequests: [String: Int] = [:]
    /// Labels carried over from an earlier SAE version (nil when carry-over did not run).
    public var carryOver: CarryOverReport?

    /// 1 when the spending limit stopped the run (queued batch requests wait for a rerun with a higher
    /// limit); else 4 when batch mode left work waiting (open batches, or requests to export); else 1 when
    /// features failed.
    public var exitCode: Int32 {
        if labeling?.stoppedByBudget == true { return 1 }
        if batchesWaiting > 0 || batchRequestsQueued > 0 { return 4 }
        return status.states[FeatureState.failed.rawValue, default: 0] > 0 ? 1 : 0
    }
}

/// The whole nightly job: collect → explain → score (overlapped) → exports. Every step reads and
/// writes the store, so running the same command again continues where the last one stopped.
public enum Pipeline {
    public static func collectOptions(_ config: JobConfig, selection: FeatureSelection) -> CollectOptions {
        var options = CollectOptions(saeDirectory: config.inputs.sae, activationFiles: config.inputs.activations,
                                     latentsDirectory: config.inputs.latents, tokenizerPath: config.inputs.tokenizer)
        options.selection = selection
        options.windowSelection.seed = config.seed
        options.windowSelection.windowLength = config.collect.window
        options.windowSelection.explainTop = config.collect.explainTop
        options.windowSelection.explainQuantile = config.collect.explainQuantile
        options.windowSelection.heldoutTop = config.collect.heldoutTop
        options.windowSelection.heldoutQuantile = config.collect.heldoutQuantile
        options.windowSelection.heldoutRandom = config.collect.heldoutRandom
        options.windowSelection.minActivatingWindows = config.collect.minActivatingWindows
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
            // A new version is a new labeling pass even when the files are byte-identical. Its first commit
            // returns every stored feature to pending (their windows are the old version's); this run collects
            // the selected ones, and later runs over other ranges collect the rest.
            first.bumpInputVersion = true
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
        let kept = options.windowSelection
        return "seed=\(kept.seed) window=\(kept.windowLength) explain=\(kept.explainTop)+\(kept.explainQuantile) "
            + "heldout=\(kept.heldoutTop)+\(kept.heldoutQuantile)+\(kept.heldoutRandom) "
            + "min_windows=\(kept.minActivatingWindows) special=\(options.excludeSpecialTokens) "
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

    public static func client(_ endpoint: JobConfig.Endpoint, limits: JobConfig.Limits, store: JobStore?,
                              progress: ProgressReporter? = nil, batchQueue: (any LLMBatchQueue)? = nil,
                              budget: SpendingLimit? = nil) -> LLMClient {
        var configuration = LLMClientConfiguration(baseURL: endpoint.endpoint, apiKeyEnvironmentVariable: endpoint.apiKeyEnv)
        configuration.server = endpoint.server
        configuration.maxInFlight = limits.concurrency
        configuration.requestsPerMinute = limits.requestsPerMinute
        configuration.tokensPerMinute = limits.tokensPerMinute
        configuration.requestTimeout = limits.timeoutSeconds
        configuration.maxRetries = limits.maxRetries
        configuration.budget = budget
        // Each failed attempt is counted in the store and summarized once at the end, not logged per attempt.
        var logger = Logger(label: "saelabel.llm")
        logger.logLevel = ProcessInfo.processInfo.environment["SAELABEL_LLM_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        return LLMClient(configuration: configuration, cache: store.map { StoreResponseCache(store: $0, progress: progress) },
                         batchQueue: batchQueue, logger: logger)
    }

    /// Checks every endpoint the job will call, once, before collect or any paid call: the server
    /// answers, takes the key and serves the model. Stops with one line (exit 2) on the first problem.
    /// Warns when no API key is set for an endpoint that is not on this machine.
    /// Runs before the store is opened, with clients of its own (no response cache), so a failed check writes nothing.
    public static func preflight(_ endpoints: [EndpointCheck], limits: JobConfig.Limits) async throws(SAELabelError) {
        guard !endpoints.isEmpty else { return }
        let clients = LLMClients(limits: limits, store: nil)
        defer { clients.shutdown() }
        var checked = Set<String>()
        for check in endpoints {
            let (section, endpoint) = (check.section, check.endpoint)
            guard checked.insert(check.key).inserted else { continue }
            let client = clients.client(for: endpoint)
            if !client.hasAPIKey, !isLoopback(endpoint.endpoint) {
                FileHandle.standardError.write(Data("saelabel: warning: $\(endpoint.apiKeyEnv) is not set; requests to \(endpoint.endpoint) go without an API key\n".utf8))
            }
            do {
                try await client.preflight(model: endpoint.model, completions: check.completions)
            } catch {
                throw .badInput(location: "\(section) endpoint \(endpoint.endpoint)", problem: preflightProblem(error, endpoint: endpoint))
            }
        }
    }

    /// One endpoint the preflight checks: `section` names it in messages (`[explainer]`, `--endpoint`).
    public struct EndpointCheck: Sendable {
        public var section: String
        public var endpoint: JobConfig.Endpoint
        /// Checked with a /completions request (the logprob simulator) instead of /chat/completions.
        public var completions: Bool

        public init(_ section: String, _ endpoint: JobConfig.Endpoint, completions: Bool = false) {
            self.section = section
            self.endpoint = endpoint
            self.completions = completions
        }

        /// Checks with equal keys are sent once.
        var key: String { [endpoint.endpoint, endpoint.model, endpoint.apiKeyEnv, completions ? "completions" : "chat"].joined(separator: "\u{0}") }
    }

    static func preflightProblem(_ error: LLMError, endpoint: JobConfig.Endpoint) -> String {
        switch error {
        case .http(let status, _) where status == 401 || status == 403:
            return "the server refused the API key (HTTP \(status)); set $\(endpoint.apiKeyEnv) to a valid key (or name another variable with api_key_env / --api-key-env)"
        case .http(404, _):
            return "model \"\(endpoint.model)\" not found (HTTP 404); check the model name and that the URL ends in /v1"
        case .transport, .timeout:
            return "no answer from the server; start it or fix the URL (\(error.description.prefix(200)))"
        default:
            return "the check request failed: \(error.description.prefix(300))"
        }
    }

    static func isLoopback(_ url: String) -> Bool {
        guard let host = URL(string: url)?.host?.lowercased() else { return false }
        return host == "localhost" || host == "::1" || host == "[::1]" || host.hasPrefix("127.")
    }

    public static func explainer(_ config: JobConfig.Explainer, client: LLMClient?, prompts: PromptLibrary)
        throws(SAELabelError) -> any Explainer {
        if config.style == "baseline" { return BaselineExplainer() }
        guard let client, !config.llm.model.isEmpty else {
            throw .usage("the explainer needs an endpoint and a model: set [explainer] endpoint and model, or pass --endpoint and --model")
        }
        let style = ExplainerStyle(rawValue: config.style) ?? .defaultStyle
        return try LLMExplainer(client: client, model: config.llm.model, prompts: prompts, style: style,
                                maxTokens: config.llm.maxTokens ?? 60)
    }

    public static func scorers(_ config: JobConfig.Scoring, client: LLMClient, prompts: PromptLibrary, seed: UInt64)
        throws(SAELabelError) -> [any Scorer] {
        guard !config.llm.model.isEmpty else {
            throw .usage("scoring needs a simulator endpoint and model: set [simulator] endpoint and model, or pass --endpoint and --model")
        }
        var result: [any Scorer] = []
        for kind in config.scorers {
            switch (kind, config.simulator) {
            case (.simulation, .logprobs):
                result.append(try LogprobSimulationScorer(client: client, model: config.llm.model, prompts: prompts))
            case (.simulation, .sparse):
                result.append(try SparseSimulationScorer(client: client, model: config.llm.model, prompts: prompts,
                                                         windowsPerRequest: config.windowsPerRequest))
            case (.simulation, .json):
                result.append(try JSONSimulationScorer(client: client, model: config.llm.model, prompts: prompts))
            case (.detection, _):
                result.append(try DetectionScorer(client: client, model: config.llm.model, prompts: prompts, seed: seed))
            case (.fuzzing, _):
                result.append(try FuzzingScorer(client: client, model: config.llm.model, prompts: prompts, seed: seed))
            }
        }
        return result
    }

    /// The logprob simulator alone talks only to /completions, so the endpoint is checked there.
    public static func needsOnlyCompletions(_ config: JobConfig.Scoring) -> Bool {
        config.scorers == [.simulation] && config.simulator == .logprobs
    }

    /// The labeling pass `explainer` writes into, given the store's inputs and collect settings
    /// (`LabelingPass` says what makes its identity; scorers are not part of it).
    public static func pass(store: JobStore, explainer: any Explainer) throws(SAELabelError) -> LabelingPass {
        try store.passIdentity(explainer: explainer.name, model: explainer.model, promptHash: explainer.promptHash)
    }

    /// Runs explain and/or score on what the store holds. With `pass`, the store moves to that labeling
    /// pass first; without it, scoring continues the store's current pass.
    public static func label(store: JobStore, pass: LabelingPass?, explainer: (any Explainer)?, scorers: [any Scorer],
                             selection: FeatureSelection, concurrency: Int, progress: ProgressReporter,
                             budget: SpendingLimit? = nil)
        async throws(SAELabelError) -> LabelingRun.Outcome {
        if let pass {
            try store.beginPass(pass)
        } else if try store.currentPass() == nil {
            throw .usage("nothing is explained in \(store.path) yet; run `saelabel explain` first")
        }
        var run = LabelingRun(store: store, explainer: explainer, scorers: scorers, selection: selection,
                              concurrency: concurrency, progress: progress)
        run.budget = budget
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

    /// The exports named in the job file, with the paths no export may overwrite (the store, the
    /// job file and every input).
    static func exportTargets(_ config: JobConfig) -> (targets: [(ExportFormat, String)], protected: [String]) {
        let all: [(ExportFormat, String?)] = [(.catalog, config.export.catalog), (.csv, config.export.csv),
                                              (.neuronpedia, config.export.neuronpedia), (.html, config.export.html)]
        let inputs = [config.inputs.sae, config.inputs.latents, config.inputs.tokenizer].compactMap { $0 } + config.inputs.activations
        let store = [config.store, config.store + "-wal", config.store + "-shm"]
        return (all.compactMap { format, path in path.map { (format, $0) } }, store + [config.path] + inputs)
    }

    /// Checks the job file's export paths before anything runs (also in `--dry-run`).
    public static func checkExports(_ config: JobConfig) throws(SAELabelError) {
        let (targets, protected) = exportTargets(config)
        for (format, path) in targets {
            do {
                _ = try OutputTarget.check(path, format: format, protected: protected)
            } catch {
                throw .badInput(location: "\(config.path): [export] \(format.rawValue)", problem: error.description)
            }
        }
    }

    /// Writes the exports named in the job file.
    public static func exports(_ config: JobConfig, store: JobStore) throws(SAELabelError) -> [String] {
        var written: [String] = []
        let (targets, protected) = exportTargets(config)
        for (format, path) in targets {
            _ = try Exporter.export(store: store, format: format, to: path, filter: ExportFilter(), protected: protected)
            written.append(path)
        }
        return written
    }
}

/// One LLM client per endpoint (URL and key variable), shared by every stage of a job, so explain and
/// score on one server share its in-flight and rate limits.
public final class LLMClients: Sendable {
    private let clients = Mutex<[String: LLMClient]>([:])
    private let limits: JobConfig.Limits
    private let store: JobStore?
    private let progress: ProgressReporter?
    private let batchQueue: (any LLMBatchQueue)?
    private let budget: SpendingLimit?

    public init(limits: JobConfig.Limits, store: JobStore?, progress: ProgressReporter? = nil,
                batchQueue: (any LLMBatchQueue)? = nil, budget: SpendingLimit? = nil) {
        self.limits = limits
        self.store = store
        self.progress = progress
        self.batchQueue = batchQueue
        self.budget = budget
    }

    public func client(for endpoint: JobConfig.Endpoint) -> LLMClient {
        var base = endpoint.endpoint
        while base.hasSuffix("/") { base.removeLast() }
        let key = base + "\u{0}" + endpoint.apiKeyEnv + "\u{0}" + endpoint.server.rawValue
        return clients.withLock { clients in
            if let existing = clients[key] { return existing }
            let client = Pipeline.client(endpoint, limits: limits, store: store, progress: progress,
                                         batchQueue: batchQueue, budget: budget)
            clients[key] = client
            return client
        }
    }

    /// What this job's clients did (cache hits are this run's, not the store's history).
    public func statistics() -> ClientStatistics {
        clients.withLock { Array($0.values) }.reduce(into: ClientStatistics()) { total, client in
            let part = client.statistics
            total.requestsSent += part.requestsSent
            total.retries += part.retries
            total.cacheHits += part.cacheHits
            total.succeeded += part.succeeded
            total.promptTokens += part.promptTokens
            total.completionTokens += part.completionTokens
            total.cachedPromptTokens += part.cachedPromptTokens
            total.failuresByKind.merge(part.failuresByKind, uniquingKeysWith: +)
            total.failedAttemptsByOutcome.merge(part.failedAttemptsByOutcome, uniquingKeysWith: +)
        }
    }

    /// Stops every client's driver; calls still waiting fail with a clear error.
    public func shutdown() {
        for client in clients.withLock({ Array($0.values) }) { client.shutdown() }
    }
}
