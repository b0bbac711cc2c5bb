import Foundation
import LLMClient
import SAELabelCore
import SAELabelExplain
import SAELabelScore
import TestSupport
import Testing

/// A client that is never called (prompt rendering only).
func idleClient() -> LLMClient {
    LLMClient(configuration: LLMClientConfiguration(baseURL: "http://127.0.0.1:9/v1", apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY"))
}

@Suite struct NormalizationTests {
    @Test func floorNormalizationWithSharedMax() {
        let windows: [[Float]] = [[0, 2, 4], [1, 0], [-3, 3.99]]
        let max = ActivationFormat.maxActivation(windows)
        #expect(max == 4)
        #expect(ActivationFormat.normalize(windows[0], maxActivation: max) == [0, 5, 10])
        #expect(ActivationFormat.normalize(windows[1], maxActivation: max) == [2, 0])
        // negatives are relu'd; 9.975 floors to 9
        #expect(ActivationFormat.normalize(windows[2], maxActivation: max) == [0, 9])
        // all zero / all negative: max 0 → all zeros
        #expect(ActivationFormat.maxActivation([[0, 0], [-1]]) == 0)
        #expect(ActivationFormat.normalize([0, -1, 0], maxActivation: 0) == [0, 0, 0])
        // values above the max (a window not in the max's set) cap at 10
        #expect(ActivationFormat.normalize([8], maxActivation: 4) == [10])
    }

    @Test func recordFormatting() {
        #expect(ActivationFormat.recordLines(tokens: ["a", " b"], values: [3, nil]) == "a\t3\n b\tunknown")
        #expect(ActivationFormat.wrapRecords(["x\t1", "y\t2"]) == "\n<start>\nx\t1\n<end>\n<start>\ny\t2\n<end>\n")
        #expect(ActivationFormat.sparseSummary(tokens: [["a", "b", "c", "d", "e", "f"]], values: [[0, 0, 7, 0, 0, 0]]) == "c\t7")
        // exactly 20% non-zero is not "fewer than 20%"
        #expect(ActivationFormat.sparseSummary(tokens: [["a", "b", "c", "d", "e"]], values: [[0, 0, 7, 0, 0]]) == nil)
    }
}

@Suite struct PromptRenderingTests {
    static let system = "You study single neurons inside a language model and name, in a few words, the pattern each one responds to. Reply with one short phrase and nothing else."
    static let cue = "the main thing this neuron does is find"
    /// The instructions come first (shared by every feature, for prompt caching), the records after them.
    static let intro = "Below are text excerpts, one token per line. After each token, separated by a tab, is how strongly the neuron fired on it, from 0 (not at all) to 10 (its strongest).\nWhat does the neuron respond to? Answer with a single short phrase. Do not list the example tokens; name what they have in common.\n"

    @Test func explainerPromptForKnownInput() throws {
        let client = idleClient()
        defer { client.shutdown() }
        let explainer = try LLMExplainer(client: client, model: "m", prompts: prompts, style: .openai)
        let messages = explainer.messages(for: [window(["a", "b", "c"], [0, 2, 4]), window(["d", "e"], [1, 0])])
        #expect(messages.count == 2)
        #expect(messages[0] == ChatMessage(role: "system", content: Self.system))
        let expected = Self.intro + "\n<start>\na\t0\nb\t5\nc\t10\n<end>\n<start>\nd\t2\ne\t0\n<end>\n\n" + Self.cue
        #expect(messages[1].role == "user")
        #expect(messages[1].content == expected)
    }

    @Test func explainerPromptAddsSparseListAndEscapesLineBreaks() throws {
        let client = idleClient()
        defer { client.shutdown() }
        let explainer = try LLMExplainer(client: client, model: "m", prompts: prompts, style: .openai)
        let tokens = ["x", "\n", "y", "z", "w", "v"]
        let messages = explainer.messages(for: [window(tokens, [0, 5, 0, 0, 0, 0]), window(["q", "r", "s", "t"], [0, 0, 0, 0])])
        let expected = Self.intro
            + "\n<start>\nx\t0\n\\n\t10\ny\t0\nz\t0\nw\t0\nv\t0\n<end>\n<start>\nq\t0\nr\t0\ns\t0\nt\t0\n<end>\n\n"
            + "The same excerpts again, keeping only the tokens where the neuron fired:\n<start>\n\\n\t10\n<end>\n\n"
            + Self.cue
        #expect(messages[1].content == expected)
    }

    /// The default style: one window a line as running text, the firing tokens marked with their
    /// values (floor-normalized over all windows shown, as the records are), leading spaces outside the
    /// marks, line breaks and tabs escaped; the same system message and answer cue as the records.
    @Test func markedStyleIsTheDefaultAndShowsValuesInline() throws {
        let client = idleClient()
        defer { client.shutdown() }
        let marked = try LLMExplainer(client: client, model: "m", prompts: prompts)
        #expect(marked.style == .marked && marked.name == "llm-marked")
        let messages = marked.messages(for: [window(["The", " cat", " sat", "\n", "\t"], [0, 4, 2, 8, 0]),
                                             window([" ", "a|b", " <<x>>"], [1, 0, 3])])
        #expect(messages.count == 2 && messages[0] == ChatMessage(role: "system", content: Self.system))
        let intro = try #require(PromptLibrary.bundled.template("explainer-marked").source.components(separatedBy: "{{#examples}}").first)
        #expect(messages[1].content == intro
            + "The <<cat|5>> <<sat|2>><<\\n|10>>\\t\n<< |1>>a|b <<<<x>>|3>>\n\n" + Self.cue)
        let openai = try LLMExplainer(client: client, model: "m", prompts: prompts, style: .openai)
        #expect(marked.promptHash != openai.promptHash)
        // Each window once, as its own text, and well under the records' length (the bench counts tokens).
        let windows = (0..<20).map { n in window((0..<32).map { " w\($0)" }, (0..<32).map { $0 == n ? 5 : 0 }) }
        let markedText = marked.messages(for: windows)[1].content
        #expect(markedText.components(separatedBy: " w31\n").count == 21)
        #expect(markedText.count * 3 < openai.messages(for: windows)[1].content.count * 2)
    }

    @Test func highlightedStyleAndHashes() throws {
        let client = idleClient()
        defer { client.shutdown() }
        let openai = try LLMExplainer(client: client, model: "m", prompts: prompts, style: .openai)
        let highlighted = try LLMExplainer(client: client, model: "m", prompts: prompts, style: .highlighted)
        #expect(openai.promptHash != highlighted.promptHash)
        #expect(openai.promptHash.count == 16)
        let messages = highlighted.messages(for: [window(["import", " os", "\n"], [5, 1, 0]), window(["a", "b"], [0, 1])])
        #expect(messages.count == 1)  // no explainer-highlighted.system.mustache: no system message
        #expect(messages[0].content == "Tokens marked <<like this>> are where a detector fires. Say in a few words what it fires on.\nExcerpt 1: <<import>> os\n\nExcerpt 2: a<<b>>\n\nWhat does the detector fire on? Answer in a few words.")
        #expect(try LLMExplainer(client: client, model: "m", prompts: prompts, style: .openai, maxTokens: 61).promptHash != openai.promptHash)
    }

    @Test func maxExamplesKeepsTheStrongest() throws {
        let client = idleClient()
        defer { client.shutdown() }
        let explainer = try LLMExplainer(client: client, model: "m", prompts: prompts, maxExamples: 2)
        let windows = [window(["a"], [1]), window(["b"], [3]), window(["c"], [2])]
        #expect(explainer.selectedExamples(windows).map(\.tokens) == [["b"], ["c"]])
    }

    @Test func simulatorPromptHoldsTokensAsJSON() throws {
        let client = idleClient()
        defer { client.shutdown() }
        let scorer = try JSONSimulationScorer(client: client, model: "m", prompts: prompts)
        let messages = scorer.messages(explanation: "cats", tokens: ["the", " \"cat\"", "\n"])
        #expect(messages.first?.role == "system")
        let user = try #require(messages.last?.content)
        #expect(user.hasPrefix("Give the neuron's activation on every token of the list below"))
        #expect(user.contains("\nThe neuron responds to: cats\n"))
        #expect(user.hasSuffix(#"<tokens>["the"," \"cat\"","\n"]</tokens>"#))
        #expect(user.contains("exactly 3 entries"))
    }

    @Test func detectionAndFuzzingPrompts() throws {
        let client = idleClient()
        defer { client.shutdown() }
        var heldout: [ActivationWindow] = []
        for i in 0..<7 {
            let activations: [Float] = i < 4 ? [0, Float(i + 1), 0] : [0, 0, 0]
            heldout.append(window(["w\(i)", " x", " y"], activations, i < 4 ? .top : .random))
        }
        let detection = try DetectionScorer(client: client, model: "m", prompts: prompts, seed: 3)
        let batches = detection.prompts(feature: 1, explanation: "the letter x", heldout: heldout)
        let truths: [[Bool]] = batches.map { $0.truth }
        #expect(truths.map { $0.count } == [5, 2])
        #expect(truths.flatMap { $0 }.filter { $0 }.count == 4)
        let user = batches[0].messages.last?.content ?? ""
        #expect(user.contains("<examples count=5>\n<example 1>"))
        #expect(user.contains("</example>\n<example 2>"))
        // the shuffle is reproducible and depends on the seed
        let again: [[Bool]] = detection.prompts(feature: 1, explanation: "e", heldout: heldout).map { $0.truth }
        #expect(again == truths)
        let fuzzing = try FuzzingScorer(client: client, model: "m", prompts: prompts, seed: 3)
        let texts = fuzzing.prompts(feature: 1, explanation: "e", heldout: heldout).flatMap { batch in
            Self.examples(batch.messages.last!.content)
        }
        #expect(texts.count == 7)
        // activating windows mark the firing token; every window has exactly one marked token here
        #expect(texts.filter { $0.contains("<< x>>") }.count >= 4)
        #expect(texts.allSatisfy { $0.components(separatedBy: "<<").count == 2 })
    }

    static func examples(_ prompt: String) -> [String] {
        var result: [String] = []
        var rest = Substring(prompt)
        while let open = rest.range(of: "<example "), let close = rest[open.upperBound...].range(of: ">"),
              let end = rest[close.upperBound...].range(of: "</example>") {
            result.append(String(rest[close.upperBound..<end.lowerBound]))
            rest = rest[end.upperBound...]
        }
        return result
    }
}

@Suite struct BaselineExplainerTests {
    @Test func deterministicWeightedTokens() async throws {
        let windows = [
            window([" import", " os", "\n", "from"], [4, 1, 0, 2.5]),
            window(["import", " sys", "from", " x"], [4, 0.5, 1, 0]),
            window(["def", "\n"], [0, 3]),
        ]
        let explainer = BaselineExplainer()
        let result = try await explainer.explain(feature: 0, examples: windows)
        // import 8, from 3.5, \n 3, os 1, sys 0.5
        #expect(result == ExplanationResult(text: #"tokens like "import", "from", "\n""#, raw: nil))
        let again = try await explainer.explain(feature: 0, examples: windows.reversed())
        #expect(again == result)
        #expect(explainer.name == "baseline")
        await #expect(throws: SAELabelError.self) {
            try await explainer.explain(feature: 0, examples: [window(["a"], [0])])
        }
    }
}

@Suite struct RetryMessageTests {
    @Test func simulatorRetryShowsTheBadAnswerAndTheProblem() throws {
        let client = idleClient()
        defer { client.shutdown() }
        let scorer = try JSONSimulationScorer(client: client, model: "m", prompts: prompts)
        let tokens = ["a", "b"]
        let first = scorer.messages(explanation: "x", tokens: tokens)
        let bad = #"{"activations":[{"token":"a","activation":1}]}"#
        let problem = try #require(JSONSimulationScorer.parseAnswer(bad, expectedCount: 2).failureDescription)
        let retry = scorer.retryMessages(first: first, answer: bad, problem: problem, tokens: tokens)
        #expect(Array(retry.prefix(first.count)) == first)
        #expect(retry[first.count] == ChatMessage(role: "assistant", content: bad))
        let correction = try #require(retry.last)
        #expect(correction.role == "user")
        #expect(correction.content.contains("the answer has 1 entries but there are 2 tokens"))
        #expect(correction.content.hasSuffix(#"<tokens>["a","b"]</tokens>"#))  // the mock's simulate contract
    }
}

extension Result where Failure: CustomStringConvertible {
    var failureDescription: String? {
        if case .failure(let error) = self { return error.description }
        return nil
    }
}

@Suite struct BundledPromptTests {
    /// The templates built into the binary (Sources/SAELabelCore/BundledPrompts.swift) are Prompts/ byte for
    /// byte; after editing a template, `make prompts` regenerates them.
    @Test func theBuiltInTemplatesMatchPromptsFolder() throws {
        let folder = Repository.root.appendingPathComponent("Prompts")
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".mustache") }
        let names = files.map { String($0.dropLast(".mustache".count)) }.sorted()
        #expect(!names.isEmpty)
        #expect(PromptLibrary.bundledNames == names, "run `make prompts` after adding or removing a template")
        for name in names {
            let file = try String(contentsOf: folder.appendingPathComponent("\(name).mustache"), encoding: .utf8)
            #expect(try PromptLibrary.bundled.template(name).source == file, "\(name): run `make prompts`")
            #expect(try prompts.template(name).hash == PromptLibrary.bundled.template(name).hash)
        }
        #expect(PromptLibrary.bundled.contains("explainer.system") && !PromptLibrary.bundled.contains("explainer-highlighted.system"))
        #expect(throws: SAELabelError.self) { try PromptLibrary.bundled.template("no-such-template") }
    }

    @Test func anExplicitFolderOverridesTheBuiltInTemplates() throws {
        if (ProcessInfo.processInfo.environment["SAELABEL_PROMPTS"] ?? "").isEmpty {
            #expect(try PromptLibrary.locate().directory == nil, "no folder set: the built-in templates")
        }
        let folder = Repository.root.appendingPathComponent("Prompts").path
        #expect(try PromptLibrary.locate(explicit: folder).directory == folder)
        #expect(throws: SAELabelError.self) { try PromptLibrary.locate(explicit: folder + "/missing") }
    }
}

@Suite struct SimulatorHashTests {
    @Test func theSchemaVariantIsPartOfTheSimulatorsPromptHash() throws {
        func scorer(_ server: LLMServer) throws -> JSONSimulationScorer {
            let client = LLMClient(configuration: LLMClientConfiguration(baseURL: "http://127.0.0.1:9/v1",
                                                                         apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY",
                                                                         server: server))
            return try JSONSimulationScorer(client: client, model: "m", prompts: prompts)
        }
        #expect(try scorer(.llamaCppPython).promptHash == scorer(.llamaServer).promptHash)
        #expect(try scorer(.openai).promptHash == scorer(.vllm).promptHash)
        #expect(try scorer(.openai).promptHash != scorer(.llamaCppPython).promptHash)
    }
}
