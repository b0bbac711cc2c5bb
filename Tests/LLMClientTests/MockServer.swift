import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import Synchronization
@testable import LLMClient

/// Serialises everything that reads or writes the process environment (client init reads the API
/// key, Process.run copies the environment, setenv changes it): glibc's setenv is not safe against
/// concurrent readers, and Swift Testing runs tests in parallel.
let environmentLock = Mutex(())

func setEnvironment(_ name: String, _ value: String) {
    environmentLock.withLock { _ in _ = setenv(name, value, 1) }
}

func makeClient(_ configuration: LLMClientConfiguration, cache: (any LLMResponseCache)? = nil) -> LLMClient {
    var logger = Logger(label: "saelabel.llm.test")
    logger.logLevel = .critical  // the retry warnings are expected here; keep test output readable
    return environmentLock.withLock { _ in LLMClient(configuration: configuration, cache: cache, logger: logger) }
}

/// Runs Tools/mock_llm_server.py on a free port for the lifetime of one test.
final class MockServer: @unchecked Sendable {  // Process is used only from init/stop
    let process: Process
    let port: Int
    var baseURL: String { "http://127.0.0.1:\(port)/v1" }
    var root: String { "http://127.0.0.1:\(port)" }

    static var repoRoot: URL {
        // <repo>/Tests/LLMClientTests/MockServer.swift → <repo>
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    private init(process: Process, port: Int) {
        self.process = process
        self.port = port
    }

    /// Launches the mock and waits for its `LISTENING <port>` line. The blocking pipe read runs on
    /// a Dispatch thread, not on Swift's small cooperative pool (2 threads on a 2-core machine).
    static func start(_ arguments: [String] = []) async throws -> MockServer {
        let script = repoRoot.appendingPathComponent("Tools/mock_llm_server.py").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", script, "--port", "0"] + arguments
        let out = Pipe()
        p.standardOutput = out
        try environmentLock.withLock { _ in try p.run() }
        let handle = out.fileHandleForReading
        let text = await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
            DispatchQueue.global().async {
                var line = Data()
                while !line.contains(UInt8(ascii: "\n")) {
                    let chunk = handle.availableData
                    if chunk.isEmpty { break }
                    line.append(chunk)
                }
                continuation.resume(returning: String(decoding: line, as: UTF8.self)
                    .trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
        guard text.hasPrefix("LISTENING "), let port = Int(text.dropFirst("LISTENING ".count)) else {
            kill(p.processIdentifier, SIGKILL)
            throw MockError(message: "mock server did not start: \(text)")
        }
        return MockServer(process: p, port: port)
    }

    func stop() {
        if process.isRunning {
            // SIGKILL: the mock's handler threads may be sleeping in a "hang" fault.
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit { stop() }

    private func send(_ path: String, body: Data?) async throws -> Data {
        var request = URLRequest(url: URL(string: root + path)!)
        if let body {
            request.httpMethod = "POST"
            request.httpBody = body
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let (data, _) = try await URLSession.shared.data(for: request)
        return data
    }

    func script(_ faults: [String]) async throws {
        _ = try await send("/_control", body: try JSONSerialization.data(withJSONObject: ["script": faults]))
    }

    func stats() async throws -> Stats {
        let data = try await send("/_stats", body: nil)
        guard let dict = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw MockError(message: "bad /_stats")
        }
        return Stats(requests: dict["requests"] as? Int ?? -1,
                     byOutcome: dict["by_outcome"] as? [String: Int] ?? [:],
                     authSeen: dict["auth_seen"] as? [String] ?? [],
                     connections: dict["connections"] as? Int ?? -1)
    }

    struct Stats: Sendable {
        var requests: Int
        var byOutcome: [String: Int]
        var authSeen: [String]
        var connections: Int
    }
}

struct MockError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The mock's token → activation rule (see Tools/mock_llm_server.py): FNV-1a 32-bit mod 11.
func mockActivation(_ token: String) -> Int {
    var h: UInt32 = 0x811c9dc5
    for b in token.utf8 {
        h ^= UInt32(b)
        h = h &* 0x01000193
    }
    return Int(h % 11)
}

/// In-memory LLMResponseCache, as the job store would implement it.
final class MemoryCache: LLMResponseCache {
    private let state = Mutex<(bodies: [String: Data], records: [LLMCallRecord], stored: [LLMCallRecord])>(([:], [], []))

    func cachedResponse(forKey key: String) -> Data? { state.withLock { $0.bodies[key] } }
    func storeResponse(_ body: Data, forKey key: String, record: LLMCallRecord) {
        state.withLock { $0.bodies[key] = body; $0.stored.append(record) }
    }
    func recordCall(_ record: LLMCallRecord) { state.withLock { $0.records.append(record) } }

    var bodies: [String: Data] { state.withLock { $0.bodies } }
    var records: [LLMCallRecord] { state.withLock { $0.records } }
    var storedRecords: [LLMCallRecord] { state.withLock { $0.stored } }
}

/// Fast-retry configuration for fault tests.
func testConfiguration(_ server: MockServer, timeout: Double = 10, retries: Int = 5) -> LLMClientConfiguration {
    LLMClientConfiguration(baseURL: server.baseURL, apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY",
                           maxInFlight: 8, requestTimeout: timeout, maxRetries: retries,
                           backoffBase: 0.02, backoffMax: 0.1, jitter: 0.2)
}

func explainRequest(_ salt: String = "") -> ChatRequest {
    ChatRequest(model: "mock", messages: [
        ChatMessage(role: "system", content: "You explain neurons."),
        ChatMessage(role: "user", content: "<start>\nthe\t0\n cat\t7\n sat\t2\n cat\t5\n<end>\n\(salt)"),
    ], maxTokens: 40)
}
