import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import LLMClient
import SAELabelCore
import SAELabelStore

/// The repository root: <repo>/Tests/LabelingTests/Support.swift → <repo>.
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let prompts = PromptLibrary(directory: repoRoot.appendingPathComponent("Prompts").path)

struct TestFailure: Error, CustomStringConvertible {
    var description: String
}

/// Runs `Tools/mock_llm_server.py --port 0` for one test and stops it when released.
final class MockLLMServer: @unchecked Sendable {  // the Process is touched only in init and stop
    private let process: Process
    let port: Int
    var baseURL: String { "http://127.0.0.1:\(port)/v1" }

    init() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", repoRoot.appendingPathComponent("Tools/mock_llm_server.py").path, "--port", "0"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        self.process = process
        var buffer = Data()
        while !buffer.contains(UInt8(ascii: "\n")) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            buffer.append(chunk)
        }
        let line = String(decoding: buffer, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard line.hasPrefix("LISTENING "), let port = Int(line.dropFirst("LISTENING ".count)) else {
            process.terminate()
            throw TestFailure(description: "mock server did not start: \(line)")
        }
        self.port = port
    }

    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    deinit { stop() }

    private func post(_ path: String, _ object: Any?) async throws -> Data {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
        if let object {
            request.httpMethod = "POST"
            request.httpBody = try JSONSerialization.data(withJSONObject: object)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        return try await URLSession.shared.data(for: request).0
    }

    /// Replaces the mock's fault script (see the header of Tools/mock_llm_server.py).
    func script(_ faults: [String]) async throws {
        _ = try await post("/_control", ["script": faults])
    }

    /// Requests the mock has answered so far.
    func requestCount() async throws -> Int {
        let data = try await post("/_stats", nil)
        return (try JSONSerialization.jsonObject(with: data) as? [String: Any])?["requests"] as? Int ?? -1
    }

    func client(retries: Int = 2) -> LLMClient {
        LLMClient(configuration: LLMClientConfiguration(
            baseURL: baseURL, apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY", maxInFlight: 4,
            requestTimeout: 10, maxRetries: retries, backoffBase: 0.02, backoffMax: 0.1, jitter: 0.2))
    }
}

/// The mock's activation rule, reimplemented: FNV-1a 32-bit over the UTF-8 bytes, modulo 11.
func mockActivation(_ token: String) -> Int {
    var hash: UInt32 = 0x811c9dc5
    for byte in token.utf8 {
        hash ^= UInt32(byte)
        hash = hash &* 0x01000193
    }
    return Int(hash % 11)
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
