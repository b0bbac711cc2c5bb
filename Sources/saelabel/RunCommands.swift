import ArgumentParser
import Foundation
import SAELabelCore
import SAELabelCollect
import SAELabelExport
import SAELabelRun
import SAELabelScore
import SAELabelStore

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the whole job from a job file: collect → explain → score (overlapped) → exports.",
        discussion: "Run the same command again after a kill: it resumes. Flags override the job file.")

    @Option(help: ArgumentHelp("The job file (TOML); every key is documented in the README.", valueName: "JOB.toml"))
    var config: String

    @Option(help: "Stop after one stage: collect, explain, score, or all.")
    var stage: Stage = .all

    @OptionGroup var selection: SelectionOptions

    @Flag(help: "Print the features and the estimated LLM calls and tokens, then exit without calling anything.")
    var dryRun = false

    @Flag(help: "Accept changed inputs (new SAE weights or activations): recollect and label in a new pass, keeping the old labels.")
    var newVersion = false

    @Flag(help: "No progress display.")
    var quiet = false

    @Flag(help: "Batch mode: submit batches (or collect finished ones) and exit with status 4 instead of waiting; run again later.")
    var noWait = false

    func run() async throws {
        let jobConfig = try JobConfig.load(path: config)
        let chosen = try selection.selection(default: jobConfig.collect.features)
        var request = JobRequest(config: jobConfig, stage: stage, features: chosen.set, shard: chosen.shard,
                                 dryRun: dryRun, newVersion: newVersion)
        request.noWait = noWait
        if dryRun {
            print(Reporting.dryRun(try JobRunner.dryRun(request)))
            return
        }
        let report = try await JobRunner.run(request, progress: ProgressReporter(enabled: !quiet))
        print(Reporting.summary(report))
        Reporting.writeFailureSummary(report.labeling?.failed ?? [:])
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }
}

struct Collect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream activations through the SAE and store each feature's examples and statistics.")

    @Option(help: ArgumentHelp("The job store (SQLite); created if missing.", valueName: "DB"))
    var db: String

    @Option(help: ArgumentHelp("The SAE: an SAELens folder, a Gemma Scope params.npz or its folder, or a sparsify hookpoint folder (format detected from the files).",
                               valueName: "SAE_PATH"))
    var sae: String?

    @Option(parsing: .upToNextOption, help: ArgumentHelp("Activation safetensors files (tokens + activations), in order.", valueName: "FILE"))
    var activations: [String] = []

    @Option(help: ArgumentHelp("A delphi-style sparse latent cache folder, instead of --sae and --activations.", valueName: "CACHE_DIR"))
    var latents: String?

    @Option(help: ArgumentHelp("Hugging Face tokenizer.json of the model, to store readable tokens.", valueName: "tokenizer.json"))
    var tokenizer: String

    @OptionGroup var selection: SelectionOptions

    @Option(help: "Seed of the example selection: the same seed gives the same explain and held-out sets.")
    var seed: UInt64 = 0

    @Option(help: "Window length in tokens.")
    var window = 32

    @Option(parsing: .upToNextOption, help: ArgumentHelp("Token positions to exclude (e.g. 0 for attention sinks). Special tokens are always excluded.", valueName: "POS"))
    var excludePositions: [Int] = []

    @Option(help: ArgumentHelp("Exclude tokens whose activation vector's L2 norm is above this.", valueName: "NORM"))
    var excludeNormAbove: Float?

    @Option(name: .customLong("memory-mb"), help: ArgumentHelp("Memory budget of collect; features are streamed and committed in blocks that fit it (default: a quarter of the machine's memory, 512 MiB to 8 GiB).", valueName: "MIB"))
    var memoryMB: Double?

    @Option(name: .customLong("memory-gb"), help: ArgumentHelp("The same budget in GiB (give one of the two).", valueName: "GIB"))
    var memoryGB: Double?

    @Flag(help: "Accept changed inputs and recollect every selected feature (a new labeling pass).")
    var newVersion = false

    func run() async throws {
        let memory: Double?
        switch MemoryBudget.mebibytes(mb: memoryMB, gb: memoryGB, mbName: "--memory-mb", gbName: "--memory-gb") {
        case .success(let value): memory = value
        case .failure(let problem): throw SAELabelError.usage(problem)
        }
        if latents == nil && (sae == nil || activations.isEmpty) {
            throw SAELabelError.usage("collect needs --sae and --activations, or --latents")
        }
        guard window > 0 else { throw SAELabelError.usage("--window must be > 0") }
        var options = CollectOptions(saeDirectory: sae, activationFiles: activations, latentsDirectory: latents, tokenizerPath: tokenizer)
        options.selection = try selection.selection()
        options.windowSelection.seed = seed
        options.windowSelection.windowLength = window
        options.excludePositions = excludePositions
        options.excludeNormAbove = excludeNormAbove
        options.memoryBudgetMiB = memory ?? MemoryBudget.defaultMiB
        let plan = try Collector.plan(options)
        let store = try JobStore(path: db, exclusive: true)
        let summary = try Pipeline.collect(options: options, store: store, plan: plan, newVersion: newVersion,
                                           progress: ProgressReporter())
        if let summary {
            print("collected \(summary.collected) features (\(summary.dead) dead, \(summary.sparse) too sparse) from \(summary.tokens) tokens; \(summary.excludedTokens) tokens excluded")
        } else {
            print("nothing to collect: every selected feature is already collected in \(db)")
        }
    }
}

struct Explain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Explain every collected feature with an explainer LLM.")

    @Option(help: ArgumentHelp("The job store.", valueName: "DB"))
    var db: String

    @OptionGroup var llm: LLMOptions
    @OptionGroup var selection: SelectionOptions

    @Option(help: "Prompt style: marked (running text, firing tokens as <<token|N>>; the default), openai (token<TAB>activation records), highlighted (<<token>>), or baseline (no LLM).")
    var style = JobConfig.Explainer().style

    @Option(help: "Longest explanation in tokens.")
    var maxTokens = 60

    func run() async throws {
        // Flags are checked before the store is opened, so bad usage writes nothing.
        guard JobConfig.explainerStyles.contains(style) else {
            throw SAELabelError.usage("--style \(style): use \(JobConfig.explainerStyles.joined(separator: ", "))")
        }
        var explainerConfig = JobConfig.Explainer()
        explainerConfig.style = style
        if style != "baseline" { explainerConfig.llm = try llm.endpointConfig(maxTokens: maxTokens) }
        let prompts = try PromptLibrary.locate(explicit: llm.prompts)
        try Self.requireStore(db)
        if style != "baseline" { try await Pipeline.preflight([Pipeline.EndpointCheck("--endpoint", explainerConfig.llm)], limits: llm.limits) }
        let store = try JobStore(path: db, exclusive: true)
        let progress = ProgressReporter()
        let clients = LLMClients(limits: llm.limits, store: store, progress: progress)
        defer { clients.shutdown() }
        let client = style == "baseline" ? nil : clients.client(for: explainerConfig.llm)
        let explainer = try Pipeline.explainer(explainerConfig, client: client, prompts: prompts)
        let pass = try Pipeline.pass(store: store, explainer: explainer)
        let outcome = try await Pipeline.label(store: store, pass: pass, explainer: explainer, scorers: [],
                                               selection: try selection.selection(), concurrency: llm.concurrency,
                                               progress: progress)
        Reporting.writeFailureSummary(outcome.failed)
        print("explained \(outcome.explained) features; \(outcome.failed.count) failed")
        if !outcome.failed.isEmpty { throw ExitCode(1) }
    }
}

extension Explain {
    /// explain and score work on a collected store; a missing one is a wrong path, not a new job.
    static func requireStore(_ db: String) throws(SAELabelError) {
        guard FileManager.default.fileExists(atPath: db) else {
            throw .badInput(location: db, problem: "no job store here; run `saelabel collect` (or `run`) first")
        }
    }
}

struct Score: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Score every explained feature's label against held-out activations.")

    @Option(help: ArgumentHelp("The job store.", valueName: "DB"))
    var db: String

    @OptionGroup var llm: LLMOptions
    @OptionGroup var selection: SelectionOptions

    @Option(parsing: .upToNextOption, help: "Scorers: simulation (correlation of simulated activations, the label's confidence), detection, fuzzing.")
    var scorer: [ScorerKind] = [.simulation]

    @Option(help: "Simulator: json (any chat model), sparse (any chat model; lists only the active tokens) or logprobs (servers that return prompt logprobs).")
    var simulator: SimulatorMode = .sparse

    @Option(help: ArgumentHelp("Sparse simulator: held-out windows per request (1: one request per window; default \(SparseSimulationScorer.defaultWindowsPerRequest)).", valueName: "N"))
    var windowsPerRequest: Int?

    @Option(help: "Seed for the order of windows in detection and fuzzing prompts.")
    var seed: UInt64 = 0

    func run() async throws {
        // Flags are checked before the store is opened, so bad usage writes nothing.
        // Unknown scorer and simulator names are refused by the parser with the enums' valid names.
        if simulator == .logprobs, scorer.contains(.simulation), let refusal = LogprobSimulationScorer.unsupported(llm.server) {
            throw SAELabelError.usage("--simulator logprobs: \(refusal)")
        }
        if let windowsPerRequest, windowsPerRequest < 1 || simulator != .sparse {
            throw SAELabelError.usage("--windows-per-request \(windowsPerRequest): give a number ≥ 1, with --simulator sparse only")
        }
        var scoring = JobConfig.Scoring()
        scoring.windowsPerRequest = windowsPerRequest ?? scoring.windowsPerRequest
        scoring.llm = try llm.endpointConfig()
        scoring.scorers = scorer
        scoring.simulator = simulator
        let prompts = try PromptLibrary.locate(explicit: llm.prompts)
        try Explain.requireStore(db)
        try await Pipeline.preflight([Pipeline.EndpointCheck("--endpoint", scoring.llm, completions: Pipeline.needsOnlyCompletions(scoring))],
                                     limits: llm.limits)
        let store = try JobStore(path: db, exclusive: true)
        let progress = ProgressReporter()
        let clients = LLMClients(limits: llm.limits, store: store, progress: progress)
        defer { clients.shutdown() }
        let scorers = try Pipeline.scorers(scoring, client: clients.client(for: scoring.llm), prompts: prompts, seed: seed)
        let outcome = try await Pipeline.label(store: store, pass: nil, explainer: nil, scorers: scorers,
                                               selection: try selection.selection(), concurrency: llm.concurrency,
                                               progress: progress)
        Reporting.writeFailureSummary(outcome.failed)
        print("scored \(outcome.scored) features; \(outcome.failed.count) failed")
        if !outcome.failed.isEmpty { throw ExitCode(1) }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show per-stage counts, failures with reasons, and tokens spent.")

    @Option(help: ArgumentHelp("The job store.", valueName: "DB"))
    var db: String

    @Flag(help: "Print JSON for scripts.")
    var json = false

    @Flag(help: "List every failed feature (default: the first 50, and how many more).")
    var all = false

    func run() async throws {
        guard FileManager.default.fileExists(atPath: db) else {
            throw SAELabelError.badInput(location: db, problem: "no job store here")
        }
        let status = try JobStore(path: db).status(maxFailuresListed: all ? nil : 50)
        print(json ? try Reporting.json(status) : Reporting.status(status))
    }
}

struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Export labeled features: catalog (JSONL), csv, neuronpedia, or html.")

    @Option(help: ArgumentHelp("The job store.", valueName: "DB"))
    var db: String

    @Option(help: "catalog (JSONL, one feature per line), csv, neuronpedia (batch files), or html (static catalog).")
    var format: String

    @Option(help: ArgumentHelp("Output file (catalog, csv) or folder (neuronpedia, html).", valueName: "PATH"))
    var out: String

    @Option(help: ArgumentHelp("Only features whose simulation score is at least X.", valueName: "X"))
    var minScore: Double?

    @Option(parsing: .upToNextOption, help: "Only features in these states (scored, explained, collected, dead, sparse, failed, pending).")
    var status: [String] = []

    @OptionGroup var selection: SelectionOptions

    @Option(help: ArgumentHelp("Export this labeling pass instead of the current one (`saelabel passes` lists them).", valueName: "PASS"))
    var pass: String?

    func run() async throws {
        guard FileManager.default.fileExists(atPath: db) else {
            throw SAELabelError.badInput(location: db, problem: "no job store here")
        }
        guard let exportFormat = ExportFormat(rawValue: format) else {
            throw SAELabelError.usage("--format \(format): use catalog, csv, neuronpedia or html")
        }
        var states: [FeatureState]?
        if !status.isEmpty {
            states = try status.map { name throws(SAELabelError) in
                guard let state = FeatureState(rawValue: name) else {
                    throw .usage("--status \(name): use one of \(FeatureState.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return state
            }
        }
        let filter = ExportFilter(minScore: minScore, states: states, selection: try selection.selection(), pass: pass)
        let summary = try Exporter.export(store: try JobStore(path: db), format: exportFormat, to: out, filter: filter)
        let message = "exported \(summary.features) features to \(out == "-" ? "standard output" : out)\n"
        // With the export itself on standard output (or a device), the message goes to stderr.
        let toStandardOutput = out == "-" || out.hasPrefix("/dev/") || out.hasPrefix("/proc/")
        (toStandardOutput ? FileHandle.standardError : FileHandle.standardOutput).write(Data(message.utf8))
    }
}

struct Merge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Merge the stores of sharded runs into one store.")

    @Option(help: ArgumentHelp("The store to merge into (created if missing).", valueName: "DB"))
    var into: String

    @Argument(help: ArgumentHelp("Shard stores, e.g. out/shard-0.sqlite out/shard-1.sqlite.", valueName: "SHARD_DB"))
    var shards: [String]

    func run() async throws {
        guard !shards.isEmpty else { throw SAELabelError.usage("merge needs at least one SHARD_DB") }
        for shard in shards where !FileManager.default.fileExists(atPath: shard) {
            throw SAELabelError.badInput(location: shard, problem: "shard store not found")
        }
        try JobRunner.checkStorePath(into)
        // Shards from different runs are refused before the target store is created or changed.
        let opened = try shards.map { path throws(SAELabelError) in try JobStore(path: path) }
        for shard in opened.dropFirst() { try opened[0].checkMergeable(shard) }
        if FileManager.default.fileExists(atPath: into), let first = opened.first { try JobStore(path: into).checkMergeable(first) }
        let store = try JobStore(path: into, exclusive: true)
        for shard in shards {
            let summary = try store.merge(shardAt: shard)
            print("\(shard): \(summary.features) features, \(summary.explanations) explanations, \(summary.scores) scores merged")
        }
    }
}

struct Passes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the labeling passes of a store, or compare two passes' labels and scores.",
        discussion: "A pass is one explainer over one collect of the inputs; adding a scorer does not start a new pass.")

    @Option(help: ArgumentHelp("The job store.", valueName: "DB"))
    var db: String

    @Option(parsing: .upToNextOption, help: ArgumentHelp("Two pass ids: print one tab-separated row per feature with both labels and scores.", valueName: "PASS"))
    var compare: [String] = []

    @Flag(help: "Print JSON for scripts.")
    var json = false

    func run() async throws {
        guard FileManager.default.fileExists(atPath: db) else {
            throw SAELabelError.badInput(location: db, problem: "no job store here")
        }
        guard compare.isEmpty || compare.count == 2 else {
            throw SAELabelError.usage("--compare takes two pass ids, e.g. --compare 3f2a… 9c1b…")
        }
        let store = try JobStore(path: db)
        if compare.count == 2 {
            print(Reporting.comparison(try store.comparePasses(compare[0], compare[1])), terminator: "")
        } else {
            print(json ? try Reporting.json(try store.passes()) : Reporting.passes(try store.passes()))
        }
    }
}

struct Batch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move batch-mode requests through files that vLLM's run_batch (or OpenAI's Batch API) reads and writes.",
        subcommands: [BatchExport.self, BatchImport.self])
}

struct BatchExport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write the requests a batch-mode run queued as batch input JSONL (custom_id, method, url, body).",
        discussion: "Feed the file to `python -m vllm.entrypoints.openai.run_batch -i requests.jsonl -o results.jsonl --model MODEL`, then `saelabel batch import`.")

    @Option(help: ArgumentHelp("The job store (SQLite).", valueName: "DB"))
    var db: String

    @Option(help: "The stage whose requests to write: explain or score.")
    var stage: BatchStage

    @Option(help: ArgumentHelp("The requests file to write (JSONL).", valueName: "requests.jsonl"))
    var out: String

    func run() async throws {
        try Explain.requireStore(db)
        let store = try JobStore(path: db)
        let count = try BatchMode.export(store: store, stage: stage.rawValue, to: out)
        print("wrote \(count) \(stage.rawValue) requests to \(out)")
    }
}

struct BatchImport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Read a batch output JSONL (vLLM run_batch -o, or an OpenAI batch output file) into the store's response cache.",
        discussion: "Then run the job again: it labels from these answers and sends nothing for them. Failed lines are sent synchronously by that run.")

    @Option(help: ArgumentHelp("The job store (SQLite).", valueName: "DB"))
    var db: String

    @Argument(help: ArgumentHelp("The results file (JSONL).", valueName: "results.jsonl"))
    var results: String

    func run() async throws {
        try Explain.requireStore(db)
        // It writes answers into the cache a run reads: with the run lock a run cannot be sending the same requests meanwhile.
        let store = try JobStore(path: db, exclusive: true)
        let (answered, failed, unknown) = try BatchMode.importResults(store: store, from: results)
        print("imported \(answered) answers; \(failed) failed lines (sent synchronously by the next run); \(unknown) lines matched no queued request")
    }
}

enum BatchStage: String, ExpressibleByArgument, CaseIterable {
    case explain, score
}

struct Prune: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drop cached LLM answers that finished work no longer needs and old passes' raw answers, then compact the store.",
        discussion: """
            Every label and score is kept; answers for unfinished work stay, so a resumed run pays nothing twice. \
            The compacted store is written once beside the store (DB.prune-tmp, needing about the pruned size free there) \
            and replaces it; while another process has the store open it is compacted in place instead.
            """)

    @Option(help: ArgumentHelp("The job store.", valueName: "DB"))
    var db: String

    func run() async throws {
        guard FileManager.default.fileExists(atPath: db) else {
            throw SAELabelError.badInput(location: db, problem: "no job store here")
        }
        let summary = try JobStore.prune(path: db)
        var compaction = ""
        if case .inPlace(let reason) = summary.compaction { compaction = " (compacted in place: \(reason))" }
        print("dropped \(summary.responsesDropped) cached LLM answers (\(summary.responsesKept) kept for unfinished work), "
              + "cleared \(summary.rawResponsesCleared) raw answers of old passes, dropped \(summary.windowsDropped) text windows no example shows; "
              + "\(FileSync.mebibytes(summary.bytesBefore)) → \(FileSync.mebibytes(summary.bytesAfter))\(compaction)")
    }
}
