import Foundation
import LLMClient
import SAELabelCollect
import SAELabelCore
import SAELabelExplain
import SAELabelScore
import SAELabelStore
import TOMLKit

/// The job file (`saelabel run --config JOB.toml`). Every key is documented in the README; unknown keys,
/// wrong types and missing input paths are refused with one line naming the key or path.
public struct JobConfig: Sendable, Equatable {
    public struct Inputs: Sendable, Equatable {
        public init() {}

        public var sae: String?
        public var activations: [String] = []
        public var latents: String?
        public var tokenizer: String = ""
    }

    public struct Collect: Sendable, Equatable {
        public init() {}

        public var features: FeatureSelection.Set = .all
        public var window = 32
        public var explainTop = 10
        public var explainQuantile = 10
        public var heldoutTop = 5
        public var heldoutQuantile = 5
        public var heldoutRandom = 5
        public var minActivatingWindows = 10
        public var excludeSpecialTokens = true
        public var excludePositions: [Int] = []
        public var excludeNormAbove: Double?
        public var batchTokens = 512
        public var blasThreads = 1
        /// Collect's memory budget (`[collect] memory_mb` or `memory_gb`); see CollectOptions.memoryBudgetMiB.
        public var memoryMiB: Double = MemoryBudget.defaultMiB
    }

    public struct Endpoint: Sendable, Equatable {
        public init() {}

        public var endpoint: String = ""
        public var model: String = ""
        public var apiKeyEnv = "OPENAI_API_KEY"
        public var maxTokens: Int?
        /// Which server's dialect to speak (`server` key, `--server` flag).
        public var server: LLMServer = .openai
    }

    public struct Explainer: Sendable, Equatable {
        public init() {}

        public var llm = Endpoint()
        /// `marked` (running text, firing tokens as <<token|N>>; the default), `openai` (token<TAB>N
        /// records), `highlighted` (<<token>>), or `baseline` (no LLM).
        public var style = ExplainerStyle.defaultStyle.rawValue
        /// Send this stage's requests through the provider's Batch API (`batch` key).
        public var batch = false
    }

    public struct Scoring: Sendable, Equatable {
        public init() {}

        public var llm = Endpoint()
        /// The scorers to run, in order (`scorers` key, `--scorer`).
        public var scorers: [ScorerKind] = [.simulation]
        /// How the simulation scorer asks for activations (`mode` key, `--simulator`).
        public var simulator: SimulatorMode = .sparse
        /// Held-out windows one sparse simulation request carries (`windows_per_request`; 1: a request per window).
        public var windowsPerRequest = SparseSimulationScorer.defaultWindowsPerRequest
        /// Send this stage's requests through the provider's Batch API (`batch` key).
        public var batch = false
    }

    public struct Limits: Sendable, Equatable {
        public init() {}

        public var concurrency = 64
        public var requestsPerMinute: Int?
        public var tokensPerMinute: Int?
        public var timeoutSeconds = 120.0
        public var maxRetries = 5
        /// Stop cleanly (exit 1, resumable) before the next calls could spend more than this, in the
        /// currency of `[prices]`.
        public var maxCost: Double?
        /// How often a waiting run polls a submitted batch (`batch_poll_seconds`).
        public var batchPollSeconds = 60.0
    }

    /// `[carry_over]`: labels of an earlier SAE version go to the new version's matching features (CarryOver.swift).
    public struct CarryOver: Sendable, Equatable {
        public init() {}

        public var enabled = true
        /// Another store to carry from, instead of this store's previous version.
        public var from: String?
        /// A carried label whose new score is lower than its old one by more than this is re-explained.
        public var maxScoreDrop = 0.1
        /// Decoder-direction cosine a match needs (see README for the data behind the default).
        public var minCosine = CarryOverDefaults.minCosine
    }

    public struct Export: Sendable, Equatable {
        public init() {}

        public var catalog: String?
        public var csv: String?
        public var neuronpedia: String?
        public var html: String?
        /// Neuronpedia's `modelId` and `layer` (source id, e.g. "6-res-jb") for the neuronpedia export;
        /// when unset they come from the SAE's metadata (see NeuronpediaExport).
        public var neuronpediaModelId: String?
        public var neuronpediaLayer: String?
    }

    /// The values the job file and the command line accept, in one place.
    public static let explainerStyles = ExplainerStyle.allCases.map(\.rawValue) + ["baseline"]

    public var path: String = ""
    /// `[prices."MODEL"]`: input, cached_input, output per million tokens, batch_discount.
    public var prices: [String: ModelPrice] = [:]
    public var store = ""
    public var seed: UInt64 = 0
    public var promptsDirectory: String?
    public var inputs = Inputs()
    public var collect = Collect()
    public var explainer = Explainer()
    public var scoring = Scoring()
    public var limits = Limits()
    public var export = Export()
    public var carryOver = CarryOver()

    public init() {}

    /// Reads and checks a job file. Relative paths are taken from the job file's folder.
    public static func load(path: String) throws(SAELabelError) -> JobConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .badInput(location: path, problem: "job file not found or unreadable")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw .badInput(location: path, problem: "job file is not UTF-8 text")
        }
        try rejectControlCharacters(text, path: path)
        try rejectMalformedTableHeaders(text, path: path)
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw .badInput(location: "\(path):\(error.source.begin.line)", problem: "not valid TOML: \(error.description)")
        } catch {
            throw .badInput(location: path, problem: "not valid TOML: \(error)")
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var config = try JobConfigReader(file: path, base: base).read(table)
        config.path = path
        return config
    }

    /// toml++ also aborts when a table header's key starts with a character no key can start with, e.g.
    /// `[#x]` (found by fuzzing): such headers are refused first. The scan follows strings, comments and
    /// bracket depth, so a `[` that opens an array value is not taken for a header.
    static func rejectMalformedTableHeaders(_ text: String, path: String) throws(SAELabelError) {
        let chars = Array(text.unicodeScalars)
        func startsKey(_ c: Unicode.Scalar) -> Bool {
            ("A"..."Z").contains(c) || ("a"..."z").contains(c) || ("0"..."9").contains(c) || c == "_" || c == "-"
                || c == "\"" || c == "'"
        }
        var index = 0, line = 1, depth = 0, lineStart = true
        var openers: [Unicode.Scalar] = []
        while index < chars.count {
            let c = chars[index]
            switch c {
            case "\n":
                line += 1
                lineStart = true
                index += 1
                continue
            case " ", "\t", "\r":
                index += 1
                continue
            case "#":
                while index < chars.count, chars[index] != "\n" { index += 1 }
                continue
            case "\"", "'":
                let triple = index + 2 < chars.count && chars[index + 1] == c && chars[index + 2] == c
                index += triple ? 3 : 1
                while index < chars.count {
                    if c == "\"", chars[index] == "\\" { index += 2; continue }
                    if chars[index] == "\n" {
                        if !triple { break }
                        line += 1
                    }
                    if chars[index] == c, !triple || (index + 2 < chars.count && chars[index + 1] == c && chars[index + 2] == c) {
                        index += triple ? 3 : 1
                        break
                    }
                    index += 1
                }
            case "[" where lineStart && depth == 0:
                var next = index + 1
                if next < chars.count, chars[next] == "[" { next += 1 }
                while next < chars.count, chars[next] == " " || chars[next] == "\t" { next += 1 }
                if next < chars.count, !startsKey(chars[next]), chars[next] != "]" {
                    throw .badInput(location: "\(path):\(line)", problem: "a table header must start with a name, as in [collect]")
                }
                while index < chars.count, chars[index] != "\n" { index += 1 }
                continue
            case "[", "{":
                openers.append(c)
                depth += 1
                index += 1
            case "]", "}":
                // A closing bracket that does not match its opener (`[}`) also trips a toml++ assertion.
                guard openers.popLast() == (c == "]" ? "[" : "{") else {
                    throw .badInput(location: "\(path):\(line)", problem: "'\(c)' does not close an open \(c == "]" ? "[" : "{"); check the brackets")
                }
                depth = max(0, depth - 1)
                index += 1
            default:
                index += 1
            }
            lineStart = false
        }
    }

    /// TOML allows no raw control character but tab, LF and CR (in CRLF) anywhere; they are refused here
    /// because toml++ (under TOMLKit) aborts the process on some of them, e.g. a form feed in a table
    /// header (found by fuzzing, RELIABILITY.md).
    static func rejectControlCharacters(_ text: String, path: String) throws(SAELabelError) {
        var line = 1, column = 0
        for scalar in text.unicodeScalars {
            column += 1
            if scalar == "\n" {
                line += 1
                column = 0
                continue
            }
            let value = scalar.value
            if (value < 0x20 && scalar != "\t" && scalar != "\r") || value == 0x7F {
                throw .badInput(location: "\(path):\(line):\(column)",
                                problem: String(format: "control character U+%04X is not allowed in TOML; remove it", value))
            }
        }
    }
}

/// Walks the TOML tables with the list of known keys, so every mistake names its key.
struct JobConfigReader {
    let file: String
    let base: String

    func read(_ root: TOMLTable) throws(SAELabelError) -> JobConfig {
        var config = JobConfig()
        try allow(root, "", ["job", "inputs", "collect", "explainer", "simulator", "limits", "export", "prices", "carry_over"])

        let job = try table(root, "job")
        try allow(job, "job", ["store", "seed", "prompts_dir"])
        guard let store = try string(job, "job", "store") else {
            throw .badInput(location: "\(file): [job] store", problem: "missing; set the path of the job's SQLite store, e.g. store = \"out/job.sqlite\"")
        }
        config.store = resolve(store)
        if let seed = try int(job, "job", "seed") {
            guard seed >= 0 else { throw .badInput(location: "\(file): [job] seed", problem: "must be ≥ 0") }
            config.seed = UInt64(seed)
        }
        config.promptsDirectory = try string(job, "job", "prompts_dir").map(resolve)

        let inputs = try table(root, "inputs")
        try allow(inputs, "inputs", ["sae", "activations", "latents", "tokenizer"])
        config.inputs.sae = try string(inputs, "inputs", "sae").map(resolve)
        config.inputs.activations = try (stringArray(inputs, "inputs", "activations") ?? []).map(resolve)
        config.inputs.latents = try string(inputs, "inputs", "latents").map(resolve)
        guard let tokenizer = try string(inputs, "inputs", "tokenizer") else {
            throw .badInput(location: "\(file): [inputs] tokenizer", problem: "missing; name the model's Hugging Face tokenizer.json")
        }
        config.inputs.tokenizer = resolve(tokenizer)
        if config.inputs.latents == nil {
            guard config.inputs.sae != nil else {
                throw .badInput(location: "\(file): [inputs] sae", problem: "missing; name the SAE (SAELens folder, Gemma Scope params.npz, sparsify hookpoint), or set latents for a delphi latent cache")
            }
            guard !config.inputs.activations.isEmpty else {
                throw .badInput(location: "\(file): [inputs] activations", problem: "missing; list the activation safetensors files")
            }
        }
        if let sae = config.inputs.sae, let hint = SAEFormats.missingPathHint(sae) {
            throw .badInput(location: "\(file): [inputs] sae", problem: "\(sae): \(hint)")
        }
        for (key, value) in [("sae", config.inputs.sae), ("latents", config.inputs.latents), ("tokenizer", config.inputs.tokenizer)] {
            if let value { try mustExist(value, key: "[inputs] \(key)") }
        }
        for value in config.inputs.activations { try mustExist(value, key: "[inputs] activations") }

        let collect = try table(root, "collect")
        try allow(collect, "collect", ["features", "window", "explain_top", "explain_quantile", "heldout_top", "heldout_quantile",
                                       "heldout_random", "min_activating_windows", "exclude_special_tokens", "exclude_positions",
                                       "exclude_norm_above", "batch_tokens", "blas_threads", "memory_mb", "memory_gb"])
        if let features = try string(collect, "collect", "features") {
            do {
                config.collect.features = try FeatureSelection.parseRange(features, flag: "[collect] features")
            } catch {
                throw .badInput(location: "\(file): [collect] features", problem: error.description)
            }
        }
        let c = config.collect
        config.collect.window = try positive(collect, "window") ?? c.window
        config.collect.explainTop = try nonNegative(collect, "explain_top") ?? c.explainTop
        config.collect.explainQuantile = try nonNegative(collect, "explain_quantile") ?? c.explainQuantile
        config.collect.heldoutTop = try nonNegative(collect, "heldout_top") ?? c.heldoutTop
        config.collect.heldoutQuantile = try nonNegative(collect, "heldout_quantile") ?? c.heldoutQuantile
        config.collect.heldoutRandom = try nonNegative(collect, "heldout_random") ?? c.heldoutRandom
        config.collect.minActivatingWindows = try nonNegative(collect, "min_activating_windows") ?? c.minActivatingWindows
        config.collect.excludeSpecialTokens = try bool(collect, "collect", "exclude_special_tokens") ?? c.excludeSpecialTokens
        config.collect.excludePositions = try intArray(collect, "collect", "exclude_positions") ?? []
        config.collect.excludeNormAbove = try double(collect, "collect", "exclude_norm_above")
        config.collect.batchTokens = try positive(collect, "batch_tokens") ?? c.batchTokens
        config.collect.blasThreads = try positive(collect, "blas_threads") ?? c.blasThreads
        switch MemoryBudget.mebibytes(mb: try double(collect, "collect", "memory_mb"), gb: try double(collect, "collect", "memory_gb"),
                                      mbName: "memory_mb", gbName: "memory_gb") {
        case .success(let memory): config.collect.memoryMiB = memory ?? c.memoryMiB
        case .failure(let problem): throw .badInput(location: "\(file): [collect]", problem: problem)
        }

        let explainer = try table(root, "explainer")
        try allow(explainer, "explainer", ["endpoint", "model", "api_key_env", "max_tokens", "server", "style", "batch"])
        config.explainer.llm = try endpoint(explainer, "explainer")
        if let style = try string(explainer, "explainer", "style") {
            guard JobConfig.explainerStyles.contains(style) else {
                throw .badInput(location: "\(file): [explainer] style", problem: "'\(style)' is not one of \(JobConfig.explainerStyles.joined(separator: ", "))")
            }
            config.explainer.style = style
        }

        config.explainer.batch = try bool(explainer, "explainer", "batch") ?? false

        let simulator = try table(root, "simulator")
        try allow(simulator, "simulator", ["endpoint", "model", "api_key_env", "max_tokens", "server", "scorers", "mode", "batch",
                                               "windows_per_request"])
        config.scoring.llm = try endpoint(simulator, "simulator")
        if let scorers = try stringArray(simulator, "simulator", "scorers") {
            config.scoring.scorers = try scorers.map { name throws(SAELabelError) in try choice(name, "simulator", "scorers") }
        }
        if let mode = try string(simulator, "simulator", "mode") {
            config.scoring.simulator = try choice(mode, "simulator", "mode")
        }
        if config.scoring.simulator == .logprobs, config.scoring.scorers.contains(.simulation),
           let refusal = LogprobSimulationScorer.unsupported(config.scoring.llm.server) {
            throw .badInput(location: "\(file): [simulator] mode", problem: refusal)
        }

        config.scoring.batch = try bool(simulator, "simulator", "batch") ?? false
        if let windows = try positive(simulator, "windows_per_request", section: "simulator") {
            guard config.scoring.simulator == .sparse else {
                throw .badInput(location: location("simulator", "windows_per_request"),
                                problem: "applies to mode = \"sparse\" only; remove it or set mode = \"sparse\"")
            }
            config.scoring.windowsPerRequest = windows
        }

        let limits = try table(root, "limits")
        try allow(limits, "limits", ["concurrency", "requests_per_minute", "tokens_per_minute", "timeout_seconds", "max_retries", "max_cost", "batch_poll_seconds"])
        config.limits.concurrency = try positive(limits, "concurrency", section: "limits") ?? config.limits.concurrency
        config.limits.requestsPerMinute = try positive(limits, "requests_per_minute", section: "limits")
        config.limits.tokensPerMinute = try positive(limits, "tokens_per_minute", section: "limits")
        config.limits.timeoutSeconds = try double(limits, "limits", "timeout_seconds") ?? config.limits.timeoutSeconds
        config.limits.maxRetries = try nonNegative(limits, "max_retries", section: "limits") ?? config.limits.maxRetries
        config.limits.maxCost = try double(limits, "limits", "max_cost")
        if let maxCost = config.limits.maxCost, !(maxCost >= 0) {
            throw .badInput(location: location("limits", "max_cost"), problem: "must be ≥ 0, got \(maxCost)")
        }

        let prices = try table(root, "prices")
        for model in prices.keys.sorted() {
            let section = "prices.\"\(model)\""
            guard let entry = prices[model]?.table else {
                throw .badInput(location: location("", section), problem: "expected a table like [prices.\"gpt-4.1-mini\"] input = 0.4, output = 1.6")
            }
            try allow(entry, section, ["input", "cached_input", "output", "batch_discount"])
            var price: [String: Double] = [:]
            for key in ["input", "cached_input", "output", "batch_discount"] {
                guard let value = try double(entry, section, key) else { continue }
                guard value >= 0, key != "batch_discount" || value <= 1 else {
                    throw .badInput(location: location(section, key), problem: key == "batch_discount"
                                    ? "must be a fraction from 0 to 1 (0.5 = half price), got \(value)" : "must be ≥ 0, got \(value)")
                }
                price[key] = value
            }
            guard let input = price["input"], let output = price["output"] else {
                throw .badInput(location: location("", section), problem: "needs input and output (per million tokens)")
            }
            config.prices[model] = ModelPrice(input: input, cachedInput: price["cached_input"], output: output,
                                              batchDiscount: price["batch_discount"] ?? 0)
        }
        if config.limits.maxCost != nil {
            for model in Set([config.explainer.llm.model, config.scoring.llm.model]) where !model.isEmpty && config.prices[model] == nil {
                throw .badInput(location: location("limits", "max_cost"), problem: "needs a price for model '\(model)': add [prices.\"\(model)\"] input = …, output = …")
            }
        }
        if let poll = try double(limits, "limits", "batch_poll_seconds") {
            guard poll > 0 else { throw .badInput(location: "\(file): [limits] batch_poll_seconds", problem: "must be above 0, e.g. 60") }
            config.limits.batchPollSeconds = poll
        }

        let export = try table(root, "export")
        try allow(export, "export", ["catalog", "csv", "neuronpedia", "html", "neuronpedia_model_id", "neuronpedia_layer"])
        config.export.neuronpediaModelId = try string(export, "export", "neuronpedia_model_id")
        config.export.neuronpediaLayer = try string(export, "export", "neuronpedia_layer")
        config.export.catalog = try string(export, "export", "catalog").map(resolve)
        config.export.csv = try string(export, "export", "csv").map(resolve)
        config.export.neuronpedia = try string(export, "export", "neuronpedia").map(resolve)
        config.export.html = try string(export, "export", "html").map(resolve)

        let carry = try table(root, "carry_over")
        try allow(carry, "carry_over", ["enabled", "from", "max_score_drop", "min_cosine"])
        config.carryOver.enabled = try bool(carry, "carry_over", "enabled") ?? config.carryOver.enabled
        config.carryOver.from = try string(carry, "carry_over", "from").map(resolve)
        config.carryOver.maxScoreDrop = try double(carry, "carry_over", "max_score_drop") ?? config.carryOver.maxScoreDrop
        config.carryOver.minCosine = try double(carry, "carry_over", "min_cosine") ?? config.carryOver.minCosine
        guard config.carryOver.maxScoreDrop >= 0, (-1...1).contains(config.carryOver.minCosine) else {
            throw .badInput(location: location("carry_over", "max_score_drop"),
                            problem: "max_score_drop must be ≥ 0 and min_cosine within [-1, 1]")
        }
        return config
    }

    // MARK: - Typed accessors

    private func location(_ section: String, _ key: String) -> String {
        section.isEmpty ? "\(file): \(key)" : "\(file): [\(section)] \(key)"
    }

    private func allow(_ table: TOMLTable, _ section: String, _ known: [String]) throws(SAELabelError) {
        for key in table.keys.sorted() where !known.contains(key) {
            throw .badInput(location: location(section, key), problem: "unknown key; known keys here: \(known.joined(separator: ", "))")
        }
    }

    /// A name of a closed set (scorer, simulator mode); an unknown one is refused with the valid names.
    private func choice<Choice: NamedChoice>(_ name: String, _ section: String, _ key: String) throws(SAELabelError) -> Choice {
        guard let value = Choice(rawValue: name) else { throw .badInput(location: location(section, key), problem: Choice.unknown(name)) }
        return value
    }

    private func table(_ root: TOMLTable, _ name: String) throws(SAELabelError) -> TOMLTable {
        guard let value = root[name] else { return TOMLTable() }
        guard let table = value.table else {
            throw .badInput(location: location("", name), problem: "expected a table [\(name)]")
        }
        return table
    }

    private func typeError(_ section: String, _ key: String, _ expected: String, _ value: any TOMLValueConvertible) -> SAELabelError {
        .badInput(location: location(section, key), problem: "expected \(expected), got \(value.type)")
    }

    private func string(_ table: TOMLTable, _ section: String, _ key: String) throws(SAELabelError) -> String? {
        guard let value = table[key] else { return nil }
        guard let string = value.string else { throw typeError(section, key, "a string", value) }
        return string
    }

    private func int(_ table: TOMLTable, _ section: String, _ key: String) throws(SAELabelError) -> Int? {
        guard let value = table[key] else { return nil }
        guard value.type == .int, let int = value.int else { throw typeError(section, key, "an integer", value) }
        return int
    }

    private func double(_ table: TOMLTable, _ section: String, _ key: String) throws(SAELabelError) -> Double? {
        guard let value = table[key] else { return nil }
        if value.type == .int, let int = value.int { return Double(int) }
        guard value.type == .double, let double = value.double else { throw typeError(section, key, "a number", value) }
        return double
    }

    private func bool(_ table: TOMLTable, _ section: String, _ key: String) throws(SAELabelError) -> Bool? {
        guard let value = table[key] else { return nil }
        guard value.type == .bool, let bool = value.bool else { throw typeError(section, key, "true or false", value) }
        return bool
    }

    private func stringArray(_ table: TOMLTable, _ section: String, _ key: String) throws(SAELabelError) -> [String]? {
        guard let value = table[key] else { return nil }
        if let single = value.string { return [single] }
        guard let array = value.array else { throw typeError(section, key, "an array of strings", value) }
        var result: [String] = []
        for element in array {
            guard let string = element.string else { throw typeError(section, key, "an array of strings", value) }
            result.append(string)
        }
        return result
    }

    private func intArray(_ table: TOMLTable, _ section: String, _ key: String) throws(SAELabelError) -> [Int]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw typeError(section, key, "an array of integers", value) }
        var result: [Int] = []
        for element in array {
            guard element.type == .int, let int = element.int else { throw typeError(section, key, "an array of integers", value) }
            result.append(int)
        }
        return result
    }

    private func positive(_ table: TOMLTable, _ key: String, section: String = "collect") throws(SAELabelError) -> Int? {
        guard let value = try int(table, section, key) else { return nil }
        guard value > 0 else { throw .badInput(location: location(section, key), problem: "must be > 0, got \(value)") }
        return value
    }

    private func nonNegative(_ table: TOMLTable, _ key: String, section: String = "collect") throws(SAELabelError) -> Int? {
        guard let value = try int(table, section, key) else { return nil }
        guard value >= 0 else { throw .badInput(location: location(section, key), problem: "must be ≥ 0, got \(value)") }
        return value
    }

    private func endpoint(_ table: TOMLTable, _ section: String) throws(SAELabelError) -> JobConfig.Endpoint {
        var endpoint = JobConfig.Endpoint()
        endpoint.endpoint = try string(table, section, "endpoint") ?? ""
        endpoint.model = try string(table, section, "model") ?? ""
        endpoint.apiKeyEnv = try string(table, section, "api_key_env") ?? endpoint.apiKeyEnv
        endpoint.maxTokens = try positive(table, "max_tokens", section: section)
        if let server = try string(table, section, "server") {
            guard let kind = LLMServer(rawValue: server) else {
                throw .badInput(location: location(section, "server"), problem: "'\(server)' is not one of \(LLMServer.names)")
            }
            endpoint.server = kind
        }
        if !endpoint.endpoint.isEmpty {
            guard let url = URL(string: endpoint.endpoint), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
                throw .badInput(location: location(section, "endpoint"), problem: "'\(endpoint.endpoint)' is not an http(s) URL like http://127.0.0.1:8081/v1")
            }
        }
        return endpoint
    }

    private func resolve(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        if path.hasPrefix("~/") { return NSString(string: path).expandingTildeInPath }
        return URL(fileURLWithPath: base).appendingPathComponent(path).standardized.path
    }

    private func mustExist(_ path: String, key: String) throws(SAELabelError) {
        guard FileManager.default.fileExists(atPath: path) else {
            throw .badInput(location: "\(file): \(key)", problem: "\(path) does not exist")
        }
    }
}
