import Foundation
import LLMClient
import SAELabelCore
import SAELabelExplain
import SAELabelRun
import SAELabelScore
import Testing

/// Prompt caching (issue 16.3): every request puts the part shared by all features first, byte for byte
/// the same, and the feature's own part last. The requests are the ones the explainer and scorers
/// really send (RequestPreview records them instead of sending), for two features with different
/// windows and labels.
@Suite struct PromptOrderTests {
    /// Feature `n`'s windows: different tokens and values per feature, three activating and two random.
    static func windows(feature n: Int) -> [ActivationWindow] {
        (0..<5).map { index in
            let tokens = (0..<8).map { " w\(n)_\(index)_\($0)" }
            let activations: [Float] = (0..<8).map { index < 3 && $0 == (index + n) % 8 ? Float(n + index + 1) : 0 }
            return ActivationWindow(tokens: tokens, activations: activations, kind: index < 3 ? .top : .random, sequence: index, start: 0)
        }
    }

    static let labels = ["the names of rivers in Europe", "closing brackets in code"]

    /// The longest common prefix of two texts, in bytes (decoded back; a split character ends it early).
    static func commonPrefix(_ a: String, _ b: String) -> String {
        let x = Array(a.utf8), y = Array(b.utf8)
        var count = 0
        while count < min(x.count, y.count), x[count] == y[count] { count += 1 }
        return String(decoding: x[..<count], as: UTF8.self)
    }

    /// The template's text before its first tag: fixed text every request of every feature starts with.
    static func leadingText(_ name: String) throws -> String {
        let source = try PromptLibrary.bundled.template(name).source
        return String(source[..<(source.range(of: "{{")?.lowerBound ?? source.endIndex)])
    }

    /// The system message a recorded chat request carries, if any.
    static func systemMessage(_ request: RecordedRequest) -> String? {
        let body = try? JSONSerialization.jsonObject(with: request.body) as? [String: Any]
        let messages = body?["messages"] as? [[String: Any]] ?? []
        return messages.first.flatMap { $0["role"] as? String == "system" ? $0["content"] as? String : nil }
    }

    /// Checks two features' first requests: same number, and each pair shares a prefix holding the whole
    /// system message sent, the user template's leading text (when named) and every instruction named.
    func expectSharedPrefix(_ first: [RecordedRequest], _ second: [RecordedRequest], template: String?, instructions: [String],
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(!first.isEmpty && first.count == second.count, "\(first.count) vs \(second.count) requests", sourceLocation: sourceLocation)
        for (a, b) in zip(first, second) {
            let required = try [Self.systemMessage(a), template.map(Self.leadingText)].compactMap { $0 } + instructions
            let textA = RequestPreview.promptText(a), textB = RequestPreview.promptText(b)
            #expect(textA != textB, sourceLocation: sourceLocation)
            let prefix = Self.commonPrefix(textA, textB)
            for part in required where !part.isEmpty {
                #expect(prefix.contains(part), "\(template ?? "sparse simulator"): the shared prefix lacks \"\(part)\"; it is:\n\(prefix)",
                        sourceLocation: sourceLocation)
            }
        }
    }

    @Test(arguments: ExplainerStyle.allCases)
    func explainRequestsShareTheInstructionsFirst(_ style: ExplainerStyle) async throws {
        var config = JobConfig.Explainer()
        config.style = style.rawValue
        let requests = try await [0, 1].asyncMap { feature in
            try await RequestPreview.explain(config, prompts: .bundled, feature: feature, examples: Self.windows(feature: feature))
        }
        let instructions: [String]
        switch style {
        case .openai, .marked:
            instructions = ["What does the neuron respond to? Answer with a single short phrase. Do not list the example tokens"]
        case .highlighted:
            instructions = ["Tokens marked <<like this>> are where a detector fires. Say in a few words what it fires on."]
        }
        try expectSharedPrefix(requests[0], requests[1], template: style.templateName, instructions: instructions)
    }

    @Test(arguments: [(ScorerKind.simulation, SimulatorMode.json), (.simulation, .sparse), (.detection, .sparse), (.fuzzing, .sparse)])
    func scoreRequestsShareTheInstructionsFirst(_ scorer: ScorerKind, _ mode: SimulatorMode) async throws {
        var config = JobConfig.Scoring()
        config.scorers = [scorer]
        config.simulator = mode
        let requests = try await [0, 1].asyncMap { feature in
            try await RequestPreview.score(config, prompts: .bundled, seed: 0, feature: feature, explanation: Self.labels[feature],
                                           heldout: Self.windows(feature: feature))
        }
        let (template, instructions): (String?, [String])
        switch (scorer, mode) {
        case (.simulation, .json):
            template = "simulator"
            instructions = ["Give the neuron's activation on every token of the list below, in order, as JSON"]
        case (.simulation, _):
            // The sparse simulator's templates belong to its own work (one or several windows a request):
            // here only its system message, all of its instructions, must be shared.
            template = nil
            instructions = ["Reply with JSON only"]
        case (.detection, _):
            template = "detection"
            instructions = ["decide whether it contains something the neuron would fire on", "1 if the excerpt contains it, 0 if not."]
        case (.fuzzing, _):
            template = "fuzzing"
            instructions = ["Decide whether the marked tokens are the ones the neuron fires on", "1 if the marking is right, 0 if not."]
        }
        try expectSharedPrefix(requests[0], requests[1], template: template, instructions: instructions)
        // Windows of one feature share its label too: each simulation request after the first repeats the
        // first one's prefix up to and including the explanation.
        if scorer == .simulation, requests[0].count > 1 {
            let prefix = Self.commonPrefix(RequestPreview.promptText(requests[0][0]), RequestPreview.promptText(requests[0][1]))
            #expect(prefix.contains(Self.labels[0]), "\(prefix)")
        }
    }

    /// The logprob simulator is a completions prompt (its first call probes the server, so its text is
    /// taken from the scorer directly): the few-shot block comes first, the explanation and window last.
    @Test func logprobPromptKeepsItsFewShotBlockFirst() throws {
        let client = RequestRecorder().client(server: .vllm)
        defer { client.shutdown() }
        let scorer = try LogprobSimulationScorer(client: client, model: "m", prompts: .bundled)
        let prompts = (0..<2).map { scorer.prompt(explanation: Self.labels[$0], tokens: Self.windows(feature: $0)[0].tokens) }
        let prefix = Self.commonPrefix(prompts[0], prompts[1])
        #expect(prefix.contains(try Self.leadingText("simulator-logprobs")) && prefix.contains("Neuron A responds to: the names of months"))
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}
