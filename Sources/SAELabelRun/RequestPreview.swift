import Foundation
import LLMClient
import SAELabelCore
import SAELabelExplain
import SAELabelScore

/// The requests a job's explainer and scorers send for one feature, byte for byte, taken from the
/// explainer and scorers themselves (built as a run builds them) instead of being sent. A new prompt or
/// simulator mode is therefore shown and counted as it will really go out.
public enum RequestPreview {
    /// The explain request for these explain-split windows (none for the baseline explainer).
    public static func explain(_ config: JobConfig.Explainer, prompts: PromptLibrary, feature: Int,
                               examples: [ActivationWindow]) async throws(SAELabelError) -> [RecordedRequest] {
        let recorder = RequestRecorder()
        let client = recorder.client(server: config.llm.server)
        defer { client.shutdown() }
        var endpoint = config
        if endpoint.llm.model.isEmpty { endpoint.llm.model = "preview" }
        let explainer = try Pipeline.explainer(endpoint, client: client, prompts: prompts)
        return await recorder.record { _ = try await explainer.explain(feature: feature, examples: examples) }
    }

    /// Every scorer's first-round requests for this explanation and these held-out windows (retries of
    /// bad answers need an answer first and are not included), in the scorers' order.
    public static func score(_ config: JobConfig.Scoring, prompts: PromptLibrary, seed: UInt64, feature: Int,
                             explanation: String, heldout: [ActivationWindow]) async throws(SAELabelError) -> [RecordedRequest] {
        let recorder = RequestRecorder()
        let client = recorder.client(server: config.llm.server)
        defer { client.shutdown() }
        var scoring = config
        if scoring.llm.model.isEmpty { scoring.llm.model = "preview" }
        var requests: [RecordedRequest] = []
        for scorer in try Pipeline.scorers(scoring, client: client, prompts: prompts, seed: seed) {
            requests += await recorder.record { _ = try await scorer.score(feature: feature, explanation: explanation, heldout: heldout) }
        }
        return requests
    }

    /// The prompt text of a recorded request: each chat message's content after its role, one per line
    /// block, or a completions request's prompt. This is what a provider's prompt cache sees, in order.
    public static func promptText(_ request: RecordedRequest) -> String {
        guard let object = try? JSONSerialization.jsonObject(with: request.body) as? [String: Any] else { return "" }
        if let messages = object["messages"] as? [[String: Any]] {
            return messages.map { "<\($0["role"] as? String ?? "")>\n\($0["content"] as? String ?? "")\n" }.joined()
        }
        return object["prompt"] as? String ?? ""
    }
}
