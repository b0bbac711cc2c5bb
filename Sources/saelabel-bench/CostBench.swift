import ArgumentParser
import Foundation
import LLMClient
import SAELabelCollect
import SAELabelCore
import SAELabelRun
import SAELabelStore

/// `saelabel-bench cost`: tokens in and out per labeled and scored feature, and money per 1,000 features,
/// for saelabel's defaults against OpenAI's neuron-explainer and EleutherAI's delphi defaults, all counted
/// with the demo's tokenizer on the demo features' own windows.
///
/// saelabel's requests are the ones its explainer and scorers really send (`RequestPreview`: built as a
/// run builds them, recorded instead of sent), so a changed prompt or a new simulator mode is counted as
/// it goes out. The anchors' prompts are built by their own code, read from git snapshots at run time, by
/// Tools/cost_anchors.py, which also counts every contender's tokens (one tokenizer, one rule).
/// Answers are modeled from the true activations (the answer a perfect model writes in each format).
struct CostBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cost",
        abstract: "Tokens and USD per labeled and scored feature: saelabel's defaults against neuron-explainer's and delphi's.")

    @Option(help: ArgumentHelp("The demo dataset folder (sae, activations.safetensors, tokenizer.json).", valueName: "DIR"))
    var demo = "Datasets/demo"

    @Option(help: ArgumentHelp("Demo features to count (collected with saelabel's default [collect] settings).", valueName: "RANGE"))
    var features = "0..24"

    @Option(help: "The label every contender explains and simulates (one label, so only the formats differ).")
    var label = "the word \"the\" at the start of a noun phrase"

    @Option(help: ArgumentHelp("Git dir of openai/automated-interpretability (the fetch tool's mirror).", valueName: "GITDIR"))
    var openaiGit = "/work/.mirror/openai+automated-interpretability/repo"

    @Option(help: ArgumentHelp("Git dir of EleutherAI/delphi.", valueName: "GITDIR"))
    var delphiGit = "/work/.mirror/EleutherAI+delphi/repo"

    @Option(help: ArgumentHelp("Path of Tools/cost_anchors.py.", valueName: "PATH"))
    var script = "Tools/cost_anchors.py"

    func run() async throws {
        try await runCostBenchmark(self)
    }
}

/// The stated price list: gpt-4.1-mini, USD per million tokens; the Batch API takes half off.
let costBenchPrice = ModelPrice(input: 0.40, cachedInput: 0.10, output: 1.60, batchDiscount: 0.5)

/// OpenAI's automatic prompt caching: prompts of 1,024 tokens or more, cached in 128-token steps.
func providerCachedTokens(prompt: Int, sharedPrefix: Int) -> Int {
    guard prompt >= 1024, sharedPrefix >= 1024 else { return 0 }
    return sharedPrefix / 128 * 128
}

func runCostBenchmark(_ options: CostBench) async throws {
    let started = Date()
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("saelabel-cost-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: folder) }

    // The demo features, collected with saelabel's default selection (window, explain and held-out counts).
    var config = JobConfig()
    config.store = folder + "/cost.sqlite"
    config.inputs.sae = options.demo + "/sae"
    config.inputs.activations = [options.demo + "/activations.safetensors"]
    config.inputs.tokenizer = options.demo + "/tokenizer.json"
    let selection = FeatureSelection(set: try FeatureSelection.parseRange(options.features, flag: "--features"), shard: nil)
    let collectOptions = Pipeline.collectOptions(config, selection: selection)
    let store = try JobStore(path: config.store, exclusive: true)
    _ = try Pipeline.collect(options: collectOptions, store: store, plan: try Collector.plan(collectOptions), newVersion: false,
                             progress: ProgressReporter(enabled: false))
    let collected = try store.features(in: [.collected])
    guard !collected.isEmpty else { throw ValidationError("no demo feature in \(options.features) has enough activating windows") }

    // saelabel's variants: its defaults, each lever set back to its earlier default alone (the records
    // explainer; a request per 8 windows), and the dense JSON simulator for comparison.
    let defaults = (explainer: JobConfig.Explainer(), scoring: JobConfig.Scoring())
    var records = defaults.explainer
    records.style = "openai"
    var eightPerRequest = defaults.scoring
    eightPerRequest.windowsPerRequest = 8
    var dense = defaults.scoring
    dense.simulator = .json
    // The multi-window answer's form is the simulator's own; the two earlier forms are modeled on the
    // same requests (their prompts differ only in the system text's answer example, ≈ 10 tokens).
    let variants: [(name: String, explainer: JobConfig.Explainer, scoring: JobConfig.Scoring, answers: SparseAnswerForm)] = [
        ("defaults (\(defaults.explainer.style) explainer, \(defaults.scoring.simulator.rawValue) simulator, "
            + "\(defaults.scoring.windowsPerRequest) windows a request)", defaults.explainer, defaults.scoring, .positional),
        ("openai-style explainer (token<TAB>N records), otherwise defaults", records, defaults.scoring, .positional),
        ("8 windows a simulator request, otherwise defaults", defaults.explainer, eightPerRequest, .positional),
        ("window-keyed answers ({\"window\": k, \"activations\": [{\"index\", \"activation\"}]}), otherwise defaults",
         defaults.explainer, defaults.scoring, .windowKeyed),
        ("positional windows of {\"index\", \"activation\"} objects, otherwise defaults",
         defaults.explainer, defaults.scoring, .positionalObjects),
        ("dense JSON simulator, otherwise defaults", defaults.explainer, dense, .positional),
    ]
    var featureRows: [[String: Any]] = []
    for feature in collected {
        let explain = try store.examples(feature: feature, split: .explain).map(\.window)
        let heldout = try store.examples(feature: feature, split: .heldout).map(\.window)
        var saelabel: [[String: Any]] = []
        for variant in variants {
            let explainRequests = try await RequestPreview.explain(variant.explainer, prompts: .bundled, feature: feature, examples: explain)
            let requests = try await RequestPreview.score(variant.scoring, prompts: .bundled, seed: 0, feature: feature,
                                                          explanation: options.label, heldout: heldout)
            saelabel.append(["name": variant.name,
                             "explain": explainRequests.map { String(decoding: $0.body, as: UTF8.self) },
                             "score": requests.map { String(decoding: $0.body, as: UTF8.self) },
                             "score_answers": IdealAnswers.simulation(variant.scoring.simulator, heldout: heldout,
                                                                       requests: requests.count, form: variant.answers)])
        }
        func windows(_ list: [ActivationWindow]) -> [[String: Any]] {
            list.map { ["tokens": $0.tokens, "activations": $0.activations.map(Double.init), "kind": $0.kind.rawValue] }
        }
        featureRows.append(["feature": feature, "explain": windows(explain), "heldout": windows(heldout), "saelabel": saelabel])
    }
    let input = folder + "/features.json"
    try JSONSerialization.data(withJSONObject: ["label": options.label, "features": featureRows]).write(to: URL(fileURLWithPath: input))

    let counts = try runAnchorScript(options, input: input)
    printCostReport(counts, options: options, collected: collected.count, seconds: Date().timeIntervalSince(started))
}

/// Runs Tools/cost_anchors.py and decodes what it counted.
func runAnchorScript(_ options: CostBench, input: String) throws -> AnchorCounts {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", options.script, "--input", input, "--tokenizer", options.demo + "/tokenizer.json",
                         "--openai-git", options.openaiGit, "--delphi-git", options.delphiGit]
    let out = Pipe()
    process.standardOutput = out
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw ValidationError("\(options.script) failed (exit \(process.terminationStatus)); are the anchors fetched at --openai-git and --delphi-git?")
    }
    return try JSONDecoder().decode(AnchorCounts.self, from: data)
}

/// What Tools/cost_anchors.py writes: per contender and stage, averages per feature, and per request its
/// prompt tokens and the prefix it shares with an earlier request.
struct AnchorCounts: Decodable {
    struct Stage: Decodable {
        var requests: Double
        var promptTokens: Double
        var answerTokens: Double
        var prefixes: [[Int]]

        enum CodingKeys: String, CodingKey {
            case requests, prefixes
            case promptTokens = "prompt_tokens"
            case answerTokens = "answer_tokens"
        }

        /// Prompt tokens per feature a warm provider cache would serve (OpenAI's rule).
        func cachedTokens(features: Int) -> Double {
            Double(prefixes.reduce(0) { $0 + providerCachedTokens(prompt: $1[0], sharedPrefix: $1[1]) }) / Double(max(1, features))
        }
    }

    var features: Int
    var heldoutWindows: Double
    var openaiCommit: String
    var delphiCommit: String
    var contenders: [String: [String: Stage]]

    enum CodingKeys: String, CodingKey {
        case features, contenders
        case heldoutWindows = "heldout_windows"
        case openaiCommit = "openai_commit"
        case delphiCommit = "delphi_commit"
    }
}

/// Money for one contender per feature at the stated price list.
struct ContenderCost {
    var name: String
    var explainIn: Double, explainOut: Double, scoreIn: Double, scoreOut: Double, cached: Double

    var tokensIn: Double { explainIn + scoreIn }
    var tokensOut: Double { explainOut + scoreOut }

    /// USD per 1,000 features: synchronous without caching, with automatic prompt caching, and through the Batch API.
    var plain: Double { costBenchPrice.cost(promptTokens: Int(tokensIn.rounded()), completionTokens: Int(tokensOut.rounded())) * 1000 }
    var withCache: Double {
        costBenchPrice.cost(promptTokens: Int(tokensIn.rounded()), cachedPromptTokens: Int(cached.rounded()),
                            completionTokens: Int(tokensOut.rounded())) * 1000
    }
    var batch: Double {
        costBenchPrice.cost(promptTokens: Int(tokensIn.rounded()), completionTokens: Int(tokensOut.rounded()), batch: true) * 1000
    }
}

func printCostReport(_ counts: AnchorCounts, options: CostBench, collected: Int, seconds: Double) {
    let costs = counts.contenders.keys.sorted().map { name -> ContenderCost in
        let stages = counts.contenders[name] ?? [:]
        let explain = stages["explain"], score = stages["score"]
        return ContenderCost(name: name, explainIn: explain?.promptTokens ?? 0, explainOut: explain?.answerTokens ?? 0,
                             scoreIn: score?.promptTokens ?? 0, scoreOut: score?.answerTokens ?? 0,
                             cached: (explain?.cachedTokens(features: counts.features) ?? 0) + (score?.cachedTokens(features: counts.features) ?? 0))
    }
    print("saelabel-bench cost: demo features \(options.features) (\(collected) labelable with the default [collect]),")
    print(String(format: "  %.1f held-out windows", counts.heldoutWindows)
          + " of \(JobConfig.Collect().window) tokens scored per feature by every contender; label \"\(options.label)\"")
    print("  tokenizer: \(options.demo)/tokenizer.json; answers modeled from the true activations")
    print("  anchors: openai/automated-interpretability \(counts.openaiCommit.prefix(12)), EleutherAI/delphi \(counts.delphiCommit.prefix(12))")
    print("  price: gpt-4.1-mini, USD per 1M tokens: input 0.40, cached input 0.10, output 1.60; Batch API half")
    print("")
    print("| per labeled + scored feature | requests | explain in / out | score in / out | total in / out | cacheable in | USD / 1,000 features | with prompt caching | batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cost in costs {
        let stages = counts.contenders[cost.name] ?? [:]
        let requests = stages.values.reduce(0) { $0 + $1.requests }
        print("| \(cost.name) | " + String(format: "%.1f | %.0f / %.0f | %.0f / %.0f | %.0f / %.0f | %.0f | %.3f | %.3f | %.3f |", requests,
                                              cost.explainIn, cost.explainOut, cost.scoreIn, cost.scoreOut, cost.tokensIn,
                                              cost.tokensOut, cost.cached, cost.plain, cost.withCache, cost.batch))
    }
    // The aim compares with the anchors' default configurations (their rows say "defaults").
    let anchors = costs.filter { !$0.name.hasPrefix("saelabel") && $0.name.contains("defaults") }
    if let cheapest = anchors.min(by: { $0.withCache < $1.withCache }),
       let saelabel = costs.first(where: { $0.name.hasPrefix("saelabel, defaults") }) {
        print("")
        print("cheaper anchor default (with automatic prompt caching): \(cheapest.name) at "
              + String(format: "%.3f USD per 1,000 features", cheapest.withCache))
        print(String(format: "saelabel defaults / cheaper anchor: %.2f synchronous, %.2f batch (aim: ≤ 0.50)",
                     saelabel.withCache / cheapest.withCache, saelabel.batch / cheapest.withCache))
    }
    if let requests = counts.contenders.first(where: { $0.key.hasPrefix("saelabel, defaults") })?.value["score"]?.requests {
        print(requests < counts.heldoutWindows
              ? String(format: "saelabel's default simulator sends %.1f requests for %.1f windows (several windows per request)", requests, counts.heldoutWindows)
              : "saelabel's default simulator sends one request per window")
    }
    print(String(format: "(%.1f s)", seconds))
}

/// How a several-window sparse answer is written: the simulator's own form (by position, pairs), and
/// the two earlier ones, so the bench shows what each saves.
enum SparseAnswerForm {
    /// `{"windows": [[[3, 7]], []]}`: the simulator's answer.
    case positional
    /// `{"windows": [[{"index": 3, "activation": 7}], []]}`: by position, entries named.
    case positionalObjects
    /// `{"windows": [{"window": 0, "activations": [{"index": 3, "activation": 7}]}, …]}`: the form before 2026-12-03's last change.
    case windowKeyed
}

/// The answers a perfect simulator writes, from the true activations (normalized 0–10 over the feature's
/// held-out windows, floor), in each mode's format, as models print JSON (", " and ": ").
enum IdealAnswers {
    static func simulation(_ mode: SimulatorMode, heldout: [ActivationWindow], requests: Int,
                           form: SparseAnswerForm = .positional) -> [String] {
        let maximum = ActivationFormat.maxActivation(heldout.map(\.activations))
        let values = heldout.map { ActivationFormat.normalize($0.activations, maxActivation: maximum) }
        switch mode {
        case .json:
            return zip(heldout, values).map { window, values in
                let entries = zip(window.tokens, values).map { "{\"token\": \(jsonString($0)), \"activation\": \($1)}" }
                return "{\"activations\": [" + entries.joined(separator: ", ") + "]}"
            }
        case .sparse where requests == heldout.count:
            return values.map { "{\"activations\": [" + activeEntries($0) + "]}" }
        case .sparse:
            // Several windows per request (split evenly), each window's active tokens in `form`.
            let perRequest = max(1, (heldout.count + max(requests, 1) - 1) / max(requests, 1))
            return stride(from: 0, to: values.count, by: perRequest).map { start in
                let windows = values[start..<min(start + perRequest, values.count)].enumerated().map { offset, window in
                    switch form {
                    case .positional: return "[" + activePairs(window) + "]"
                    case .positionalObjects: return "[" + activeEntries(window) + "]"
                    case .windowKeyed: return "{\"window\": \(offset), \"activations\": [" + activeEntries(window) + "]}"
                    }
                }
                return "{\"windows\": [" + windows.joined(separator: ", ") + "]}"
            }
        case .logprobs:
            return Array(repeating: "", count: requests)
        }
    }

    /// `[i, v]` for every token with a value above 0.
    static func activePairs(_ values: [Int]) -> String {
        values.enumerated().filter { $0.element > 0 }.map { "[\($0.offset), \($0.element)]" }.joined(separator: ", ")
    }

    /// `{"index": i, "activation": v}` for every token with a value above 0.
    static func activeEntries(_ values: [Int]) -> String {
        values.enumerated().filter { $0.element > 0 }.map { "{\"index\": \($0.offset), \"activation\": \($0.element)}" }
            .joined(separator: ", ")
    }

    static func jsonString(_ text: String) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: [text], options: [.fragmentsAllowed]) else { return "\"\"" }
        return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
    }
}
