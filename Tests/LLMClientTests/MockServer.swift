import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import Synchronization
import TestSupport
@testable import LLMClient

func setEnvironment(_ name: String, _ value: String) {
    environmentLock.withLock { _ in _ = setenv(name, value, 1) }
}

func makeClient(_ configuration: LLMClientConfiguration, cache: (any LLMResponseCache)? = nil) -> LLMClient {
    var logger = Logger(label: "saelabel.llm.test")
    logger.logLevel = .critical  // the retry warnings are expected here; keep test output readable
    return environmentLock.withLock { _ in LLMClient(configuration: configuration, cache: cache, logger: logger) }
}

/// The shared mock server launcher (TestSupport) under the name these tests use.
typealias MockServer = MockLLMServer

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
