import Foundation
import Synchronization

/// One request as the client would have sent it: the endpoint path and the body, byte for byte.
public struct RecordedRequest: Sendable, Equatable {
    public var path: String
    public var body: Data
    public var tag: String
}

/// Takes every request of the work it runs instead of sending it, the way a batch-mode round queues
/// them: the work carries on to its next request (each feature step's first round), and nothing goes
/// to the network. Used to show and count exactly what the explainer and scorers send (prompt-caching
/// checks, `saelabel-bench cost`) without re-rendering their templates elsewhere.
public final class RequestRecorder: LLMBatchQueue {
    private let recorded = Mutex<[RecordedRequest]>([])

    public init() {}

    public func enqueue(key: String, path: String, body: Data, tag: String) -> Bool {
        recorded.withLock { $0.append(RecordedRequest(path: path, body: body, tag: tag)) }
        return true
    }

    /// A client that records into this recorder; `server` picks the request dialect as in a real run.
    public func client(server: LLMServer) -> LLMClient {
        var configuration = LLMClientConfiguration(baseURL: "http://127.0.0.1:9/v1", apiKeyEnvironmentVariable: "SAELABEL_RECORDER_NO_KEY")
        configuration.server = server
        return LLMClient(configuration: configuration, batchQueue: self)
    }

    /// Runs `work` so that its requests are recorded, and returns them in the order they were made.
    /// The error the work ends with once its requests are taken (it waits for answers that never come)
    /// is expected and dropped.
    public func record(_ work: () async throws -> Void) async -> [RecordedRequest] {
        let start = recorded.withLock { $0.count }
        _ = try? await BatchDeferral.$mark.withValue(DeferralMark()) { try await work() }
        return recorded.withLock { Array($0[start...]) }
    }
}
