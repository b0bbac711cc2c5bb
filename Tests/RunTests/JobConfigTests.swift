import Foundation
import LLMClient
import SAELabelCore
import SAELabelRun
import TestSupport
import Testing

@Suite struct JobConfigTests {
    func validJob(_ dir: TempDirectory, extra: String = "", collect: String = "") throws -> String {
        _ = try dir.write("sae/cfg.json", "{}")
        _ = try dir.write("acts.safetensors", "x")
        _ = try dir.write("tokenizer.json", "{}")
        return try dir.write("job.toml", """
            [job]
            store = "out/job.sqlite"
            seed = 7

            [inputs]
            sae = "sae"
            activations = ["acts.safetensors"]
            tokenizer = "tokenizer.json"

            [collect]
            features = "0..10"
            window = 16
            \(collect)

            [explainer]
            endpoint = "http://127.0.0.1:8081/v1"
            model = "smollm2"

            [simulator]
            endpoint = "http://127.0.0.1:8081/v1"
            model = "smollm2"
            scorers = ["simulation", "detection"]
            \(extra)
            """)
    }

    @Test func readsEveryKeyAndResolvesPathsFromTheJobFile() async throws {
        let dir = TempDirectory()
        let config = try JobConfig.load(path: try validJob(dir, collect: "exclude_positions = [0]\nexclude_norm_above = 250\nblas_threads = 2\nmemory_gb = 1.5"))
        #expect(config.store == dir.file("out/job.sqlite"))
        #expect(config.seed == 7)
        #expect(config.inputs.sae == dir.file("sae"))
        #expect(config.inputs.activations == [dir.file("acts.safetensors")])
        #expect(config.collect.features == .range(0, 10))
        #expect(config.collect.window == 16)
        #expect(config.collect.excludePositions == [0])
        #expect(config.collect.excludeNormAbove == 250)
        #expect(config.collect.blasThreads == 2)
        #expect(config.collect.memoryMiB == 1536)
        #expect(config.explainer.llm.model == "smollm2")
        #expect(config.scoring.scorers == [.simulation, .detection])
        #expect(config.limits.concurrency == 64)
    }

    func expectBadInput(_ path: String, naming fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(sourceLocation: sourceLocation) {
            _ = try JobConfig.load(path: path)
        } throws: { error in
            guard let error = error as? SAELabelError, case .badInput = error else { return false }
            return error.exitCode == 2 && error.description.contains(fragment) && !error.description.contains("\n")
        }
    }

    @Test func unknownKeyIsNamed() async throws {
        let dir = TempDirectory()
        expectBadInput(try validJob(dir, extra: "temprature = 0.5"), naming: "[simulator] temprature")
    }

    /// Scorer and simulator names are typed enums shared with the CLI: an unknown one is refused with the
    /// names the enum holds, so a new case shows up in the message without editing it.
    @Test func unknownScorerOrSimulatorNamesListTheValidOnes() async throws {
        let dir = TempDirectory()
        let scorers = ScorerKind.allCases.map(\.rawValue), modes = SimulatorMode.allCases.map(\.rawValue)
        #expect(scorers == ["simulation", "detection", "fuzzing"] && modes == ["json", "sparse", "logprobs"])
        let text = try String(contentsOfFile: try validJob(dir), encoding: .utf8)
            .replacingOccurrences(of: "scorers = [\"simulation\", \"detection\"]", with: "")
        for (extra, key, valid) in [("scorers = [\"simulation\", \"vibes\"]", "[simulator] scorers", scorers),
                                    ("mode = \"dense\"", "[simulator] mode", modes)] {
            let path = try dir.write("bad.toml", text + "\n" + extra + "\n")
            expectBadInput(path, naming: key)
            expectBadInput(path, naming: "is not one of " + valid.joined(separator: ", "))
        }
        let every = try JobConfig.load(path: try dir.write("all.toml", text + "\nscorers = [\"fuzzing\", \"simulation\"]\nmode = \"json\"\n"))
        #expect(every.scoring.scorers == [.fuzzing, .simulation] && every.scoring.simulator == .json)
    }

    @Test func serverKindIsReadAndCheckedAgainstTheSimulatorMode() async throws {
        let dir = TempDirectory()
        let defaults = try JobConfig.load(path: try validJob(dir))
        #expect(defaults.explainer.llm.server == .openai && defaults.scoring.llm.server == .openai)
        let vllm = try JobConfig.load(path: try validJob(dir, extra: "server = \"vllm\"\nmode = \"logprobs\""))
        #expect(vllm.scoring.llm.server == .vllm && vllm.scoring.simulator == .logprobs)
        #expect(vllm.explainer.llm.server == .openai)
        expectBadInput(try validJob(dir, extra: "server = \"lmstudio\""), naming: "[simulator] server")
        expectBadInput(try validJob(dir, extra: "server = \"ollama\"\nmode = \"logprobs\""), naming: "[simulator] mode")
    }

    @Test func wrongTypeIsNamed() async throws {
        let dir = TempDirectory()
        expectBadInput(try validJob(dir, collect: "explain_top = \"ten\""), naming: "[collect] explain_top")
    }

    @Test func missingInputPathIsNamed() async throws {
        let dir = TempDirectory()
        let path = try validJob(dir)
        try FileManager.default.removeItem(atPath: dir.file("acts.safetensors"))
        expectBadInput(path, naming: dir.file("acts.safetensors"))
    }

    @Test func badRangeAndSyntaxAreNamed() async throws {
        let dir = TempDirectory()
        let job = try validJob(dir)
        let text = try String(contentsOfFile: job, encoding: .utf8).replacingOccurrences(of: "\"0..10\"", with: "\"10..2\"")
        try Data(text.utf8).write(to: URL(fileURLWithPath: job))
        expectBadInput(job, naming: "[collect] features")
        let broken = try dir.write("broken.toml", "[job\nstore = 1")
        expectBadInput(broken, naming: "broken.toml")
    }

    @Test func featureSelectionAndShards() async throws {
        let selection = FeatureSelection(set: try FeatureSelection.parseRange("0..10"), shard: try FeatureSelection.parseShard("1/3"))
        #expect(selection.features(featureCount: 100) == [1, 4, 7])
        #expect(try FeatureSelection.parseRange("5, 1,5") == .list([1, 5]))
        #expect(throws: SAELabelError.self) { try FeatureSelection.parseShard("3/3") }
        #expect(throws: SAELabelError.self) { try FeatureSelection.parseRange("a..b") }
        // The shards of one job cover every feature exactly once.
        var seen: [Int] = []
        for index in 0..<4 {
            seen += FeatureSelection(set: .all, shard: .init(index: index, count: 4)).features(featureCount: 50)
        }
        #expect(seen.sorted() == Array(0..<50))
    }
}
