import ArgumentParser
import SAELabelCollect
import SAELabelExport

/// `saelabel-bench`: the benchmarks of BENCHMARKS.md. They report ratios measured within one run;
/// they assert nothing (tests do that).
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "saelabel-bench",
        abstract: "Benchmarks: collect throughput against sgemm and numpy, delphi-cache collect against width, LLM client throughput against the mock server, store and exports, cost per feature against the anchors.",
        subcommands: [CollectBench.self, LatentBench.self, LLMBench.self, StoreBench.self, MigrationBench.self, CostBench.self])
}

struct CollectBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collect",
        abstract: "Collect throughput vs plain cblas_sgemm and a numpy collect in the same run; peak memory.")

    @Option(help: "Tokens of synthetic activations (rounded up to whole 128-token sequences).")
    var tokens = 65_536

    @Option(help: "SAE width (d_sae); every feature is selected.")
    var features = 24_576

    @Option(name: .customLong("d-in"), help: "Activation width (d_in).")
    var dIn = 768

    @Option(help: "Tokens per sgemm batch.")
    var batch = 512

    @Option(name: .customLong("blas-threads"), help: "OpenBLAS threads for both the sgemm baseline and collect.")
    var blasThreads = 1

    @Flag(inversion: .prefixedNo, help: "Run the sgemm and numpy baselines (default: only up to 131,072 tokens).")
    var baselines: Bool?

    @Flag(help: "Keep the synthetic files in the temporary folder.")
    var keep = false

    @Option(help: ArgumentHelp("Path of Tools/bench_numpy_collect.py.", valueName: "PATH"))
    var numpy: String?

    @Option(name: .customLong("memory-gb"), help: "Collect's memory budget in GiB (default: the machine's default).")
    var memoryGB: Double?

    @Flag(name: .customLong("no-store"), help: "Measure the streaming phase only: no final selection, no store write.")
    var noStore = false

    @Flag(name: .customLong("skip-numpy"), help: "Run the sgemm baseline but not the numpy one.")
    var skipNumpy = false

    @Option(name: .customLong("chunk-rows"), help: "Preferred features per GEMM chunk (CollectOptions.encodeChunkRows; each block is cut into an even number of equal chunks near it).")
    var chunkRows: Int?

    @Option(help: ArgumentHelp("Folder for the synthetic files (default: the temporary folder).", valueName: "DIR"))
    var directory: String?

    @Option(name: .customLong("sgemm-width-fraction"),
            help: "Time the sgemm baseline on this fraction of the width (whole 32,768-column slices) and scale it to the full width.")
    var sgemmWidthFraction = 1.0

    @Option(help: ArgumentHelp("Keep the synthetic inputs in this folder and reuse them when their shapes match.", valueName: "DIR"))
    var inputs: String?

    @Flag(name: .customLong("inputs-only"), help: "Write the inputs (with --inputs, to keep them) and stop.")
    var inputsOnly = false

    func validate() throws {
        guard sgemmWidthFraction > 0 && sgemmWidthFraction <= 1 else {
            throw ValidationError("--sgemm-width-fraction \(sgemmWidthFraction): expected a fraction in (0, 1]")
        }
        if inputsOnly && inputs == nil { throw ValidationError("--inputs-only needs --inputs DIR (inputs are kept there)") }
    }

    func run() {
        // The same kernels `saelabel` would run on (its `main` relaunches the same way).
        BLASKernels.relaunchOnFasterKernelsIfNeeded()
        var settings = CollectBenchSettings(tokens: tokens, features: features, dIn: dIn, batch: batch, blasThreads: blasThreads,
                                            baselines: baselines, keep: keep, numpyScript: numpy, memoryGB: memoryGB,
                                            store: !noStore, numpy: !skipNumpy, chunkRows: chunkRows, directory: directory)
        settings.sgemmWidthFraction = sgemmWidthFraction
        settings.inputs = inputs
        settings.inputsOnly = inputsOnly
        runCollectBenchmark(settings)
    }
}

struct LatentBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "latents",
        abstract: "Sparse latent (delphi cache) collect time against the SAE width at a fixed number of non-zeros.")

    @Option(help: "Tokens of the synthetic corpus (rounded up to whole 128-token sequences).")
    var tokens = 65_536

    @Option(parsing: .upToNextOption, help: "SAE widths to measure.")
    var widths: [Int] = [16_384, 262_144]

    @Option(name: .customLong("per-token"), parsing: .upToNextOption,
            help: "Latents firing on every token (several values: a sweep of the non-zeros at each width).")
    var perToken: [Int] = [32]

    @Option(help: "Latents that may fire (spread evenly over the width); all of them by default.")
    var firing: Int?

    func run() {
        runLatentBenchmark(tokens: tokens, widths: widths.map { max(4, $0) }, perToken: perToken.map { max(1, $0) },
                           mayFire: firing.map { max(1, $0) })
    }
}

struct LLMBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llm",
        abstract: "LLM client throughput at N in flight against the mock server, as a ratio to N / latency.")

    @Option(help: "Chat requests to send (all distinct, no cache).")
    var requests = 1280

    @Option(help: "Requests in flight.")
    var concurrency = 64

    @Option(name: .customLong("latency-ms"), help: "The mock's latency per request in milliseconds.")
    var latencyMs = 200.0

    @Option(help: ArgumentHelp("Path of Tools/mock_llm_server.py.", valueName: "PATH"))
    var mock: String?

    @Option(help: ArgumentHelp("Use a running OpenAI-compatible server instead of launching the mock.", valueName: "URL"))
    var endpoint: String?

    func run() async {
        await runLLMBenchmark(requests: requests, concurrency: concurrency, latencyMs: latencyMs, mockPath: mock, endpoint: endpoint)
    }
}

struct MigrationBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Time the schema migrations of a store written by an older build, against a VACUUM INTO copy of it.")

    @Option(help: ArgumentHelp("A store at an older schema; it is migrated in place (use a copy).", valueName: "PATH"))
    var store: String

    func run() { runMigrationBenchmark(path: store) }
}

struct StoreBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Store size per feature and catalog/CSV/Neuronpedia/HTML export time on a synthetic labeled store.")

    @Option(help: "Features in the synthetic store (every one labeled and scored).")
    var features = 131_072

    @Option(help: ArgumentHelp("Keep the synthetic store here and reuse it in later runs (written when absent).", valueName: "PATH"))
    var store: String?

    @Flag(help: "Keep the exports (and the store, unless --store) in the temporary folder.")
    var keep = false

    @Option(help: ArgumentHelp("Save a screenshot of the html catalog (a search, sorted by simulation) here.", valueName: "PNG"))
    var screenshot: String?

    @Flag(name: .customLong("write-only"), help: "Write the store (with --store, to keep it) and stop: no exports are timed.")
    var writeOnly = false

    @Option(parsing: .upToNextOption, help: "Exports to time (catalog csv neuronpedia html; default all).")
    var formats: [String] = ExportFormat.allCases.map(\.rawValue)

    @Flag(name: .customLong("no-prune"), help: "Leave the store as it is: no prune and no catalog export after it.")
    var noPrune = false

    @Flag(name: .customLong("prune-in-place"), help: "Compact the pruned store with SQLite's in-place VACUUM instead of replacing the file.")
    var pruneInPlace = false

    func validate() throws {
        if let bad = formats.first(where: { ExportFormat(rawValue: $0) == nil }) {
            throw ValidationError("--formats \(bad): expected catalog, csv, neuronpedia or html")
        }
    }

    func run() {
        runStoreBenchmark(StoreBenchSettings(features: max(1, features), storePath: store, keep: keep, screenshot: screenshot,
                                             writeOnly: writeOnly, formats: formats.compactMap(ExportFormat.init(rawValue:)),
                                             prune: !noPrune, pruneInPlace: pruneInPlace))
    }
}
