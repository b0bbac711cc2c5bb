import Foundation
import Synchronization

/// Takes the requests of batch-mode stages instead of the network. `enqueue` returns false when the
/// request must be sent now after all (e.g. its batch line failed once, so it is retried synchronously).
public protocol LLMBatchQueue: Sendable {
    func enqueue(key: String, path: String, body: Data, tag: String) -> Bool
}

/// Set by whoever runs one unit of work (a feature's step) in batch mode: the client marks it when a
/// request of that work was queued for a batch, so the work is put off, not failed.
public final class DeferralMark: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public func set() { flag.store(true, ordering: .relaxed) }
    public var isSet: Bool { flag.load(ordering: .relaxed) }
}

public enum BatchDeferral {
    /// Only work that runs under a mark may be deferred; every other call goes out as usual.
    @TaskLocal public static var mark: DeferralMark?
}

/// `GET /v1/batches/{id}` as OpenAI's spec describes the Batch object (the fields saelabel reads).
public struct BatchInfo: Sendable, Decodable, Equatable {
    public struct RequestCounts: Sendable, Decodable, Equatable {
        public var total: Int
        public var completed: Int
        public var failed: Int
    }
    public var id: String
    /// validating, failed, in_progress, finalizing, completed, expired, cancelling, cancelled.
    public var status: String
    public var outputFileID: String?
    public var errorFileID: String?
    public var requestCounts: RequestCounts?

    enum CodingKeys: String, CodingKey {
        case id, status
        case outputFileID = "output_file_id"
        case errorFileID = "error_file_id"
        case requestCounts = "request_counts"
    }

    /// No further change will come: the output and error files (if any) are final.
    public var isFinished: Bool { ["completed", "failed", "expired", "cancelled"].contains(status) }
}

/// One line of a batch output or error file (OpenAI's Batch API and vLLM's run_batch write the same shape).
public struct BatchOutputLine: Sendable {
    public var customID: String
    /// The HTTP status of the answer (nil when the line has no response, e.g. an expired request).
    public var statusCode: Int?
    /// The response body as the synchronous endpoint would have returned it.
    public var body: Data?
    /// The line's error (code and message) when it has no usable answer.
    public var error: String?

    /// Parses one JSONL line; nil when it is not a batch output line.
    public static func parse(_ line: Data) -> BatchOutputLine? {
        guard let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any],
              let customID = object["custom_id"] as? String else { return nil }
        var result = BatchOutputLine(customID: customID)
        if let response = object["response"] as? [String: Any] {
            result.statusCode = (response["status_code"] as? NSNumber)?.intValue
            if let body = response["body"], !(body is NSNull) {
                result.body = try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])
            }
        }
        if let error = object["error"] as? [String: Any] {
            result.error = [error["code"] as? String, error["message"] as? String].compactMap { $0 }.joined(separator: ": ")
        } else if let error = object["error"] as? String {  // vLLM's run_batch writes the error as text
            result.error = error
        } else if let code = result.statusCode, !(200..<300).contains(code) {
            let message = (result.body.flatMap { try? JSONSerialization.jsonObject(with: $0) } as? [String: Any])?["error"]
                .flatMap { ($0 as? [String: Any])?["message"] as? String }
            result.error = "HTTP \(code)" + (message.map { ": \($0)" } ?? "")
        }
        return result
    }

    public init(customID: String, statusCode: Int? = nil, body: Data? = nil, error: String? = nil) {
        self.customID = customID
        self.statusCode = statusCode
        self.body = body
        self.error = error
    }

    /// A usable answer: status 2xx with a body and no error.
    public var answer: Data? {
        guard error == nil, let statusCode, (200..<300).contains(statusCode) else { return nil }
        return body
    }
}

/// OpenAI's Batch API on the client's base URL (`…/v1`): upload a JSONL file, create a batch, poll it,
/// read its files. Same transport, key handling and retries (5xx, 429, connection errors) as chat calls.
extension LLMClient {
    /// Lines per batch file and bytes per file, as OpenAI limits them (50,000 requests, 200 MB).
    public static let batchMaxLines = 50_000
    public static let batchMaxBytes = 200 * 1_000_000

    /// `POST /files` (multipart, purpose=batch): returns the file id.
    public func uploadBatchFile(_ jsonl: Data, filename: String) async throws(LLMError) -> String {
        let boundary = "saelabel-" + UUID().uuidString
        var body = Data()
        func part(_ text: String) { body.append(Data(text.utf8)) }
        part("--\(boundary)\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n")
        part("--\(boundary)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\(filename)\"\r\n")
        part("Content-Type: application/jsonl\r\n\r\n")
        body.append(jsonl)
        part("\r\n--\(boundary)--\r\n")
        let data = try await batchAPICall("/files", body: body, contentType: "multipart/form-data; boundary=\(boundary)")
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let id = object["id"] as? String else {
            throw .malformedResponse("the file upload answer has no id: " + Self.snippet(data))
        }
        return id
    }

    /// `POST /batches`: one batch over an uploaded file for `endpoint` (e.g. "/v1/chat/completions").
    public func createBatch(inputFileID: String, endpoint: String, metadata: [String: String]) async throws(LLMError) -> BatchInfo {
        let request: [String: Any] = ["input_file_id": inputFileID, "endpoint": endpoint, "completion_window": "24h",
                                      "metadata": metadata]
        let body = (try? JSONSerialization.data(withJSONObject: request, options: [.sortedKeys])) ?? Data()
        return try decodeBatch(await batchAPICall("/batches", body: body, contentType: "application/json"))
    }

    /// `GET /batches/{id}`.
    public func batch(id: String) async throws(LLMError) -> BatchInfo {
        try decodeBatch(await batchAPICall("/batches/\(id)", body: nil, contentType: nil))
    }

    /// `GET /files/{id}/content`: the file's bytes (JSONL for batch output and error files).
    public func fileContent(id: String) async throws(LLMError) -> Data {
        try await batchAPICall("/files/\(id)/content", body: nil, contentType: nil)
    }

    private func decodeBatch(_ data: Data) throws(LLMError) -> BatchInfo {
        do {
            return try JSONDecoder().decode(BatchInfo.self, from: data)
        } catch {
            throw .malformedResponse("not a Batch object: " + Self.snippet(data))
        }
    }

    /// One Batch API request (GET when `body` is nil) with the client's retries; returns the 2xx body.
    private func batchAPICall(_ path: String, body: Data?, contentType: String?) async throws(LLMError) -> Data {
        var headers = ["Accept: application/json", "Expect:", "User-Agent: saelabel"]
        if let contentType { headers.append("Content-Type: \(contentType)") }
        if let apiKey { headers.append("Authorization: Bearer \(apiKey)") }
        let timeoutMs = max(1, Int((max(configuration.requestTimeout, 300) * 1000).rounded()))
        let url = baseURL + path
        let http = HTTPAttempt(url: url, body: body ?? Data(), headers: headers, timeoutMilliseconds: timeoutMs,
                               connectTimeoutMilliseconds: 30_000, get: body == nil)
        var attempt = 0
        while true {
            attempt += 1
            guard case .finished(let result) = await driver.execute(http) else { throw .cancelled }
            let error: LLMError
            let retryable: Bool
            if result.curlCode == 0 && (200..<300).contains(result.status) {
                return result.body
            } else if result.curlCode == 0 {
                error = .http(status: result.status, body: redact(Self.snippet(result.body)))
                retryable = result.status == 408 || result.status == 429 || result.status >= 500
            } else if result.curlCode == 28 {
                error = .timeout(seconds: Double(timeoutMs) / 1000)
                retryable = true
            } else {
                error = .transport(redact("\(result.curlMessage) calling \(Self.withoutUserinfo(url))"))
                retryable = true
            }
            if !retryable || attempt > configuration.maxRetries { throw error }
            do { try await Task.sleep(for: .seconds(backoff(retry: attempt))) } catch { throw .cancelled }
        }
    }
}
