import Foundation
import LLMClient
import SAELabelCore

public enum ExplainerStyle: String, Sendable, CaseIterable {
    /// OpenAI's `token<TAB>N` records (SPEC §4), template `explainer`.
    case openai
    /// delphi's `<<token>>` highlights, template `explainer-highlighted`.
    case highlighted
    /// The default: each window as running text with the firing tokens marked `<<token|N>>` (SPEC §4's
    /// values on delphi's highlights), template `explainer-marked`; about a third of `openai`'s prompt tokens.
    case marked

    /// The style of a job that names none (`[explainer] style`, `explain --style`).
    public static let defaultStyle = ExplainerStyle.marked

    public var templateName: String {
        switch self {
        case .openai: return "explainer"
        case .highlighted: return "explainer-highlighted"
        case .marked: return "explainer-marked"
        }
    }

    /// The optional system template: the records and marked styles share one; highlighted has none.
    public var systemTemplateName: String {
        switch self {
        case .openai, .marked: return "explainer.system"
        case .highlighted: return "explainer-highlighted.system"
        }
    }
}

/// Asks a chat model for a label. Messages: an optional system message from the style's system
/// template (sent only when the file exists) and the user message from
/// the style's template. The highlighted style ships without a system message and with a short
/// question: the small local model of SPEC §9 labels best from short contexts with the firing
/// token marked (it still labels poorly; the parser strips its "The detector fires on" preamble).
public struct LLMExplainer: Explainer {
    public let name: String
    public let model: String
    public let promptHash: String
    public let style: ExplainerStyle
    public let maxTokens: Int
    /// At most this many windows (the strongest first) go into the prompt; nil = all of them.
    public let maxExamples: Int?
    private let client: LLMClient
    private let system: PromptTemplate?
    private let user: PromptTemplate

    public init(client: LLMClient, model: String, prompts: PromptLibrary, style: ExplainerStyle = .defaultStyle,
                maxTokens: Int = 60, maxExamples: Int? = nil) throws(SAELabelError) {
        self.client = client
        self.model = model
        self.style = style
        self.maxTokens = maxTokens
        self.maxExamples = maxExamples
        self.name = "llm-\(style.rawValue)"
        self.user = try prompts.template(style.templateName)
        self.system = try prompts.optionalTemplate(style.systemTemplateName)
        var parts = [name, "max_tokens=\(maxTokens)", "max_examples=\(maxExamples.map(String.init) ?? "all")",
                     user.source]
        if let system { parts.append(system.source) }
        self.promptHash = String(Hashing.sha256Hex(parts.joined(separator: "\u{0}")).prefix(16))
    }

    /// The windows that go into the prompt: all, or the `maxExamples` strongest (ties keep store order).
    public func selectedExamples(_ examples: [ActivationWindow]) -> [ActivationWindow] {
        guard let maxExamples, examples.count > maxExamples else { return examples }
        let ranked = examples.enumerated().sorted { a, b in
            a.element.maxActivation != b.element.maxActivation
                ? a.element.maxActivation > b.element.maxActivation : a.offset < b.offset
        }
        return ranked.prefix(max(0, maxExamples)).sorted { $0.offset < $1.offset }.map(\.element)
    }

    /// The exact messages sent for these windows.
    public func messages(for examples: [ActivationWindow]) -> [ChatMessage] {
        let windows = selectedExamples(examples)
        let context: [String: Any]
        switch style {
        case .openai:
            context = Self.recordContext(windows)
        case .marked:
            context = Self.markedContext(windows)
        case .highlighted:
            let items: [[String: Any]] = windows.enumerated().map { index, window in
                ["index": index + 1,
                 "text": ActivationFormat.highlighted(tokens: window.tokens, activations: window.activations)]
            }
            context = ["examples": items, "count": windows.count]
        }
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: "system", content: Self.trimmed(system.render(context)))) }
        messages.append(ChatMessage(role: "user", content: Self.trimmed(user.render(context))))
        return messages
    }

    /// SPEC §4: values normalized with the max over all the windows shown (floor), records as
    /// `token<TAB>N`, wrapped in `<start>`/`<end>`, plus the sparse list when < 20% are non-zero.
    static func recordContext(_ windows: [ActivationWindow]) -> [String: Any] {
        let maxActivation = ActivationFormat.maxActivation(windows.map(\.activations))
        let tokens = windows.map { $0.tokens.map(ActivationFormat.escapedToken) }
        let values = windows.map { ActivationFormat.normalize($0.activations, maxActivation: maxActivation) }
        let records = zip(tokens, values).map { ActivationFormat.recordLines(tokens: $0, values: $1.map { Optional($0) }) }
        let sparse = ActivationFormat.sparseSummary(tokens: tokens, values: values)
        return ["records": ActivationFormat.wrapRecords(records), "hasSparse": sparse != nil, "sparse": sparse ?? "",
                "count": windows.count]
    }

    /// The marked style: values normalized as for the records (max over all the windows shown, floor),
    /// one window a line with its firing tokens as `<<token|N>>`. The records' sparse repeat is left out:
    /// every firing token already stands out with its value.
    static func markedContext(_ windows: [ActivationWindow]) -> [String: Any] {
        let maxActivation = ActivationFormat.maxActivation(windows.map(\.activations))
        let items: [[String: Any]] = windows.enumerated().map { index, window in
            ["index": index + 1,
             "text": ActivationFormat.marked(tokens: window.tokens,
                                             values: ActivationFormat.normalize(window.activations, maxActivation: maxActivation))]
        }
        return ["examples": items, "count": windows.count]
    }

    /// Drops trailing whitespace and the final newline Mustache leaves, keeping inner layout.
    static func trimmed(_ text: String) -> String {
        var result = text
        while let last = result.last, last == "\n" || last == " " { result.removeLast() }
        return result
    }

    public func explain(feature: Int, examples: [ActivationWindow]) async throws(SAELabelError) -> ExplanationResult {
        let request = ChatRequest(model: model, messages: messages(for: examples), temperature: 0, maxTokens: maxTokens)
        let response: ChatResponse
        do {
            response = try await client.chat(request, tag: "explain:\(feature)")
        } catch {
            throw .llm(error.description)
        }
        if response.cutOffBeforeAnyText {
            throw .feature(index: feature, stage: "explain",
                           reason: "the token limit (max_tokens = \(maxTokens)) ended the answer before any text; raise max_tokens")
        }
        guard let text = ExplanationParser.parse(response.text) else {
            let shown = response.text.count > 120 ? String(response.text.prefix(120)) + "…" : response.text
            throw .feature(index: feature, stage: "explain",
                           reason: "the explainer's answer is not a usable label: \"\(shown)\"")
        }
        return ExplanationResult(text: text, raw: response.text)
    }
}
