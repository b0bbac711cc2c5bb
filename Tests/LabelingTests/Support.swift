import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import LLMClient
import SAELabelCore
import SAELabelStore
import TestSupport

let prompts = PromptLibrary(directory: Repository.root.appendingPathComponent("Prompts").path)

extension MockLLMServer {
    /// A client with quick retries, for fault tests.
    func client(retries: Int = 2, server: LLMServer = .openai, cache: (any LLMResponseCache)? = nil) -> LLMClient {
        LLMClient(configuration: LLMClientConfiguration(
            baseURL: baseURL, apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY", server: server, maxInFlight: 4,
            requestTimeout: 10, maxRetries: retries, backoffBase: 0.02, backoffMax: 0.1, jitter: 0.2), cache: cache)
    }
}

/// Pearson r written out directly (independent of ScoreMath).
func pearson(_ x: [Double], _ y: [Double]) -> Double {
    let n = Double(x.count)
    let mx = x.reduce(0, +) / n, my = y.reduce(0, +) / n
    var sxy = 0.0, sxx = 0.0, syy = 0.0
    for i in x.indices {
        sxy += (x[i] - mx) * (y[i] - my)
        sxx += (x[i] - mx) * (x[i] - mx)
        syy += (y[i] - my) * (y[i] - my)
    }
    return sxy / (sxx * syy).squareRoot()
}

func window(_ tokens: [String], _ activations: [Float], _ kind: ExampleKind = .top, sequence: Int = 0) -> ActivationWindow {
    ActivationWindow(tokens: tokens, activations: activations, kind: kind, sequence: sequence, start: 0)
}

/// A fresh job store in a temporary directory holding one collected feature.
func makeStore(feature: Int, explain: [ActivationWindow], heldout: [ActivationWindow]) throws -> (JobStore, URL) {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("saelabel-labeling-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let store = try JobStore(path: directory.appendingPathComponent("job.sqlite").path)
    try store.registerFeatures([feature])
    let statistics = FeatureStatistics(frequency: 0.01, maxActivation: 5, meanActivation: 1, activatingTokens: 10,
                                       activatingWindows: 5, histogram: [1, 2, 3])
    try store.saveCollected(CollectedFeature(index: feature, state: .collected, statistics: statistics,
                                             explain: explain, heldout: heldout))
    return (store, directory)
}
