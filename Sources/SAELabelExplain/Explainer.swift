import Foundation
import LLMClient
import SAELabelCore
import SAELabelStore

/// Writes a short natural-language label for one feature from its explain-split windows.
public protocol Explainer: Sendable {
    /// "llm-marked", "llm-openai", "llm-highlighted", "baseline", …
    var name: String { get }
    /// The model that writes the labels, as stored with each explanation.
    var model: String { get }
    /// Hash of everything that shapes the request besides the examples (templates, style, settings).
    var promptHash: String { get }
    func explain(feature: Int, examples: [ActivationWindow]) async throws(SAELabelError) -> ExplanationResult
}

public struct ExplanationResult: Sendable, Equatable {
    /// The cleaned label, never empty.
    public var text: String
    /// The model's answer before cleaning (nil for explainers without an LLM).
    public var raw: String?

    public init(text: String, raw: String?) {
        self.text = text
        self.raw = raw
    }
}

public enum ExplainStep {
    /// Explains one feature from the store's explain split and stores the label for the current pass.
    /// A feature that already has an explanation in the current pass is left alone (resume).
    /// Throws on any failure; the caller marks the feature failed.
    public static func run(feature: Int, store: JobStore, explainer: any Explainer) async throws(SAELabelError) {
        if try store.currentExplanation(feature: feature) != nil { return }
        let examples = try store.examples(feature: feature, split: .explain).map(\.window)
        guard !examples.isEmpty else {
            throw .feature(index: feature, stage: "explain", reason: "no explain examples in the store; run collect first")
        }
        let result = try await explainer.explain(feature: feature, examples: examples)
        try store.saveExplanation(feature: feature, text: result.text, explainerModel: explainer.model,
                                  promptHash: explainer.promptHash, rawResponse: result.raw)
    }
}
