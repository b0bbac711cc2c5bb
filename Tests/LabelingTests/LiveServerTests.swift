import Foundation
import LLMClient
import SAELabelCore
import SAELabelExplain
import SAELabelScore
import Testing

/// Opt-in checks against a real OpenAI-compatible server (e.g. the local llama.cpp server of SPEC §9):
/// `SAELABEL_LLM_ENDPOINT=http://127.0.0.1:8081/v1 SAELABEL_LLM_MODEL=smollm2 swift test --filter LiveServerTests`.
/// Skipped when the variables are not set.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["SAELABEL_LLM_ENDPOINT"] != nil), .serialized)
struct LiveServerTests {
    let url = ProcessInfo.processInfo.environment["SAELABEL_LLM_ENDPOINT"] ?? ""
    let model = ProcessInfo.processInfo.environment["SAELABEL_LLM_MODEL"] ?? "default"
    /// make test's live server is llama-cpp-python (Tools/llm_server.sh); SAELABEL_LLM_SERVER names another kind.
    let server = LLMServer(rawValue: ProcessInfo.processInfo.environment["SAELABEL_LLM_SERVER"] ?? "") ?? .llamaCppPython

    func client() -> LLMClient {
        LLMClient(configuration: LLMClientConfiguration(baseURL: url, apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY",
                                                        server: server, maxInFlight: 1, requestTimeout: 300, maxRetries: 1))
    }

    @Test func explainersAnswerSomething() async throws {
        let client = client()
        defer { client.shutdown() }
        for style in ExplainerStyle.allCases {
            let explainer = try LLMExplainer(client: client, model: model, prompts: prompts, style: style)
            let result: ExplanationResult
            do {
                result = try await explainer.explain(feature: 0, examples: EndToEndTests.explain)
            } catch {
                print("live \(style.rawValue) explanation failed: \(error)")  // a tiny model may ramble
                continue
            }
            print("live \(style.rawValue) explanation: \(result.text) — raw: \(result.raw ?? "")")
            #expect(!result.text.isEmpty)
        }
    }

    @Test func jsonSimulatorIsHeldToTheSchema() async throws {
        let client = client()
        defer { client.shutdown() }
        let scorer = try JSONSimulationScorer(client: client, model: model, prompts: prompts)
        let heldout = Array(EndToEndTests.heldout.prefix(2))
        let result = try await scorer.score(feature: 0, explanation: "the word \"import\"", heldout: heldout)
        let details = try JSONDecoder().decode(SimulationDetails.self, from: Data(result.details.utf8))
        print("live simulation: r = \(result.value ?? .nan), \(result.details)")
        #expect(details.failedWindows == 0)
    }

    @Test(.enabled(if: LLMServer(rawValue: ProcessInfo.processInfo.environment["SAELABEL_LLM_SERVER"] ?? "llama-cpp-python")?
                      .echoesPromptLogprobs ?? true))
    func logprobAlignmentIsDetected() async throws {
        let client = client()
        defer { client.shutdown() }
        let scorer = try LogprobSimulationScorer(client: client, model: model, prompts: prompts)
        let alignment = try await scorer.alignment()
        print("live logprob alignment: \(alignment)")
    }
}
