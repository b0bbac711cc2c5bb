import Crypto
import Foundation
import Logging
import Synchronization

/// Client for OpenAI-compatible servers (`/chat/completions`, `/completions`).
///
/// Requests run on libcurl's multi interface, driven by one dedicated thread that keeps
/// connections alive for reuse; at most `maxInFlight` transfers run at once and the rest queue.
/// Each call: response-cache lookup (a hit never touches the network) → rate limit → attempt →
/// retry with exponential backoff and jitter (honouring Retry-After) on 408/409/429/5xx,
/// connection errors, timeouts and malformed or truncated bodies. The API key is sent only in the
/// Authorization header and is redacted from every error, log line and call record.
public final class LLMClient: Sendable {
    let configuration: LLMClientConfiguration
    private let cache: (any LLMResponseCache)?
    let logger: Logger
    let driver: CurlDriver
    private let limiter: RateLimiter?
    /// Held from sending a request until its answer is stored, so a kill loses at most `maxInFlight` paid answers.
    private let permits: InFlightPermits
    let apiKey: String?
    let baseURL: String
    private let stats = Mutex(ClientStatistics())
    /// Where requests of batch-mode stages go instead of the network (nil: every request is sent).
    private let batchQueue: (any LLMBatchQueue)?

    private static let retryAfterCap = 60.0

    public init(configuration: LLMClientConfiguration, cache: (any LLMResponseCache)? = nil,
                batchQueue: (any LLMBatchQueue)? = nil, logger: Logger = Logger(label: "saelabel.llm")) {
        self.configuration = configuration
        self.batchQueue = batchQueue
        self.cache = cache
        self.logger = logger
        var base = configuration.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        self.baseURL = base
        let key = ProcessInfo.processInfo.environment[configuration.apiKeyEnvironmentVariable]
        self.apiKey = (key?.isEmpty ?? true) ? nil : key
        self.driver = CurlDriver(maxInFlight: configuration.maxInFlight)
        self.permits = InFlightPermits(count: configuration.maxInFlight)
        self.limiter = RateLimiter(requestsPerMinute: configuration.requestsPerMinute,
                                   tokensPerMinute: configuration.tokensPerMinute)
    }

    deinit { driver.shutdown() }

    /// Stops the driver thread; calls still waiting fail with `.cancelled`. Idempotent.
    public func shutdown() { driver.shutdown() }

    public var statistics: ClientStatistics { stats.withLock { $0 } }

    /// The kind of server this client speaks to (decides the request dialect).
    public var server: LLMServer { configuration.server }

    /// Whether an API key was found in the configured environment variable.
    public var hasAPIKey: Bool { apiKey != nil }

    /// Checks, once and before any paid work, that the server answers, accepts the key and serves
    /// `model`: one chat request for a single token, sent past the response cache and the rate limit.
    /// Connection errors and 5xx/429 get one more try; any other non-2xx status fails at once.
    /// With `completions`, the request goes to /completions instead (a base model for the logprob
    /// simulator may have no chat template).
    public func preflight(model: String, completions: Bool = false) async throws(LLMError) {
        let body = completions
            ? try Wire.completionBody(CompletionRequest(model: model, prompt: "OK", maxTokens: 1))
            : try Wire.chatBody(ChatRequest(model: model, messages: [ChatMessage(role: "user", content: "Reply with OK.")], maxTokens: 1),
                             server: configuration.server)
        var headers = ["Content-Type: application/json", "Accept: application/json", "Expect:", "User-Agent: saelabel"]
        if let apiKey { headers.append("Authorization: Bearer \(apiKey)") }
        let timeoutMs = max(1, Int((min(configuration.requestTimeout, 30) * 1000).rounded()))
        let url = baseURL + (completions ? "/completions" : "/chat/completions")
        let http = HTTPAttempt(url: url, body: body, headers: headers, timeoutMilliseconds: timeoutMs,
                               connectTimeoutMilliseconds: min(timeoutMs, 10_000))
        for attempt in 1...2 {
            guard case .finished(let result) = await driver.execute(http) else { throw .cancelled }
            let retryable: Bool
            let error: LLMError
            if result.curlCode == 0 && (200..<300).contains(result.status) {
                return
            } else if result.curlCode == 0 {
                error = .http(status: result.status, body: redact(Self.snippet(result.body)))
                retryable = result.status == 429 || result.status >= 500
            } else if result.curlCode == 28 {
                error = .timeout(seconds: Double(timeoutMs) / 1000)
                retryable = true
            } else {
                error = .transport(redact("\(result.curlMessage) calling \(Self.withoutUserinfo(url))"))
                retryable = !Self.permanentCurlCodes.contains(result.curlCode)
            }
            if !retryable || attempt == 2 { throw error }
            do { try await Task.sleep(for: .seconds(1)) } catch { throw .cancelled }
        }
    }

    /// SHA-256 hex of a version tag, the endpoint path (e.g. "/chat/completions") and the
    /// canonical request body (which holds the model and every sampling parameter).
    /// `baseURL` is deliberately not hashed: the same call to the same model on a restarted server
    /// (new port) or another shard's host must hit the cache, so a finished call is never paid twice.
    public static func cacheKey(baseURL: String, path: String, body: Data) -> String {
        var hasher = SHA256()
        hasher.update(data: Data("saelabel-llm-cache-v1\n\(path)\n".utf8))
        hasher.update(data: body)
        return hexDigits(hasher.finalize())
    }

    private static let hexTable: [UInt8] = Array("0123456789abcdef".utf8)

    /// Lowercase hex in one pass through a lookup table (`String(format:)` per byte cost more than the hash).
    static func hexDigits<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in bytes {
            out.append(hexTable[Int(byte >> 4)])
            out.append(hexTable[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public func chat(_ request: ChatRequest, tag: String = "") async throws(LLMError) -> ChatResponse {
        let body = try Wire.chatBody(request, server: configuration.server)
        let estimate = body.count / 4 + (request.maxTokens ?? 256)
        let (parsed, raw, fromCache) = try await perform(path: "/chat/completions", body: body, model: request.model,
                                                         tag: tag, estimatedTokens: estimate,
                                                         maxTokens: request.maxTokens) { data throws(Wire.ParseError) in
            let p = try Wire.parseChat(data)
            return (p, p.usage)
        }
        return ChatResponse(text: parsed.text, usage: parsed.usage, fromCache: fromCache, rawBody: raw,
                            finishReason: parsed.finishReason)
    }

    public func complete(_ request: CompletionRequest, tag: String = "") async throws(LLMError) -> CompletionResponse {
        let body = try Wire.completionBody(request)
        let estimate = body.count / 4 + request.maxTokens
        let (parsed, raw, fromCache) = try await perform(path: "/completions", body: body, model: request.model,
                                                         tag: tag, estimatedTokens: estimate,
                                                         maxTokens: request.maxTokens) { data throws(Wire.ParseError) in
            let p = try Wire.parseCompletion(data)
            return (p, p.usage)
        }
        return CompletionResponse(text: parsed.text, tokens: parsed.tokens, topLogprobs: parsed.topLogprobs,
                                  usage: parsed.usage, fromCache: fromCache, rawBody: raw)
    }

    // MARK: - one call with cache, rate limit and retries

    private enum AttemptFailure {
        case http(Int, String)
        case transport(String)
        case timeout
        case malformed(String, outcome: String)

        var outcome: String {
            switch self {
            case .http(let status, _): return "http_\(status)"
            case .transport: return "transport"
            case .timeout: return "timeout"
            case .malformed(_, let outcome): return outcome
            }
        }
    }

    private func perform<T: Sendable>(
        path: String, body: Data, model: String, tag: String, estimatedTokens: Int, maxTokens: Int?,
        parse: (Data) throws(Wire.ParseError) -> (T, TokenUsage)
    ) async throws(LLMError) -> (T, Data, Bool) {
        let key = Self.cacheKey(baseURL: baseURL, path: path, body: body)
        let url = baseURL + path
        let shownURL = Self.withoutUserinfo(url)
        func record(_ outcome: String, attempt: Int, usage: TokenUsage = .init(promptTokens: 0, completionTokens: 0),
                    latency: Double = 0) -> LLMCallRecord {
            var record = LLMCallRecord(key: key, endpoint: shownURL, model: model, tag: tag, promptTokens: usage.promptTokens,
                                       completionTokens: usage.completionTokens, latencySeconds: latency, outcome: outcome,
                                       attempt: attempt)
            record.cachedPromptTokens = usage.cachedPromptTokens
            return record
        }
        func fail(_ error: LLMError, kind: String) -> LLMError {
            stats.withLock { $0.failuresByKind[kind, default: 0] += 1 }
            return error
        }

        if let cache, let data = cache.cachedResponse(forKey: key) {
            do {
                let (value, usage) = try parse(data)
                cache.recordCall(record("cache_hit", attempt: 0, usage: usage))
                stats.withLock { $0.cacheHits += 1; $0.succeeded += 1 }
                logger.trace("LLM cache hit", metadata: ["key": "\(key)", "tag": "\(tag)"])
                return (value, data, true)
            } catch {
                logger.warning("ignoring an unparseable cached LLM response; asking the server again",
                               metadata: ["key": "\(key)", "error": "\(redact(error.message))"])
            }
        }

        // Batch mode: the request waits for a batch (or has one under way) instead of going out now;
        // its answer lands in the cache under this same key, where the next round finds it.
        if let batchQueue, let mark = BatchDeferral.mark, batchQueue.enqueue(key: key, path: path, body: body, tag: tag) {
            mark.set()
            throw fail(.deferred, kind: "deferred")
        }

        var headers = ["Content-Type: application/json", "Accept: application/json", "Expect:",
                       "User-Agent: saelabel"]
        if let apiKey { headers.append("Authorization: Bearer \(apiKey)") }
        let timeoutMs = max(1, Int((configuration.requestTimeout * 1000).rounded()))
        let http = HTTPAttempt(url: url, body: body, headers: headers, timeoutMilliseconds: timeoutMs,
                               connectTimeoutMilliseconds: min(timeoutMs, 30_000))

        var attempt = 0
        while true {
            attempt += 1
            if Task.isCancelled { throw fail(.cancelled, kind: "cancelled") }
            if let limiter {
                do { try await limiter.acquire(tokens: estimatedTokens) } catch { throw fail(error, kind: "cancelled") }
            }
            var reservation = 0.0
            if let budget = configuration.budget {
                guard let reserved = budget.reserve(model: model, promptBytes: body.count, maxTokens: maxTokens) else {
                    throw fail(.budgetExhausted, kind: "budget")
                }
                reservation = reserved
            }
            var billed: TokenUsage?
            defer { configuration.budget?.settle(reservation: reservation, model: model, usage: billed) }
            guard await permits.acquire() else { throw fail(.cancelled, kind: "cancelled") }
            var holdsPermit = true
            defer { if holdsPermit { permits.release() } }
            stats.withLock { $0.requestsSent += 1; if attempt > 1 { $0.retries += 1 } }
            logger.trace("LLM request", metadata: ["url": "\(shownURL)", "attempt": "\(attempt)", "tag": "\(tag)"])

            guard case .finished(let result) = await driver.execute(http) else {
                cache?.recordCall(record("cancelled", attempt: attempt))
                throw fail(.cancelled, kind: "cancelled")
            }

            // Classify the attempt.
            let failure: AttemptFailure
            if result.curlCode == 0 && (200..<300).contains(result.status) {
                do {
                    let (value, usage) = try parse(result.body)
                    billed = usage
                    limiter?.correct(by: usage.promptTokens + usage.completionTokens - estimatedTokens)
                    let rec = record("ok", attempt: attempt, usage: usage, latency: result.elapsedSeconds)
                    if let cache {
                        if let apiKey, result.body.range(of: Data(apiKey.utf8)) != nil {
                            logger.warning("not caching an LLM response that contains the API key",
                                           metadata: ["url": "\(shownURL)"])
                        } else {
                            cache.storeResponse(result.body, forKey: key, record: rec)
                        }
                        cache.recordCall(rec)
                    }
                    stats.withLock {
                        $0.succeeded += 1
                        $0.promptTokens += usage.promptTokens
                        $0.completionTokens += usage.completionTokens
                        $0.cachedPromptTokens += usage.cachedPromptTokens
                    }
                    return (value, result.body, false)
                } catch {
                    failure = .malformed(error.message + ": " + Self.snippet(result.body), outcome: "malformed")
                }
            } else if result.curlCode == 0 {
                failure = .http(result.status, Self.snippet(result.body))
            } else if result.curlCode == 28 {  // CURLE_OPERATION_TIMEDOUT
                failure = .timeout
            } else if result.curlCode == 18 {  // CURLE_PARTIAL_FILE: body shorter than Content-Length
                failure = .malformed("truncated body (\(result.body.count) bytes): \(result.curlMessage)", outcome: "truncated")
            } else {
                failure = .transport("\(result.curlMessage) [curl \(result.curlCode)]")
            }

            cache?.recordCall(record(failure.outcome, attempt: attempt, latency: result.elapsedSeconds))
            stats.withLock { $0.failedAttemptsByOutcome[failure.outcome, default: 0] += 1 }
            permits.release()  // not through the backoff below
            holdsPermit = false

            let retryable: Bool
            switch failure {
            case .http(let status, _): retryable = status == 408 || status == 409 || status == 429 || status >= 500
            case .transport: retryable = !Self.permanentCurlCodes.contains(result.curlCode)
            case .timeout, .malformed: retryable = true
            }
            if !retryable || attempt > configuration.maxRetries {
                let error: LLMError
                let kind: String
                switch failure {
                case .http(let status, let text):
                    error = .http(status: status, body: redact(text)); kind = "http"
                case .transport(let message):
                    error = .transport(redact("\(message) calling \(shownURL)")); kind = "transport"
                case .timeout:
                    error = .timeout(seconds: configuration.requestTimeout); kind = "timeout"
                case .malformed(let message, _):
                    error = .malformedResponse(redact("\(message) from \(shownURL)")); kind = "malformed"
                }
                logger.error("LLM call failed",
                             metadata: ["url": "\(shownURL)", "attempts": "\(attempt)", "tag": "\(tag)",
                                        "error": "\(error.description)"])
                throw fail(error, kind: kind)
            }

            let delay: Double
            if let header = result.retryAfter, let seconds = Self.parseRetryAfter(header) {
                delay = min(max(seconds, 0), Self.retryAfterCap)
            } else {
                delay = backoff(retry: attempt)
            }
            logger.warning("LLM attempt failed; retrying",
                           metadata: ["url": "\(shownURL)", "outcome": "\(failure.outcome)", "attempt": "\(attempt)",
                                      "delay_s": "\(String(format: "%.2f", delay))", "tag": "\(tag)"])
            if delay > 0 {
                do { try await Task.sleep(for: .seconds(delay)) } catch { throw fail(.cancelled, kind: "cancelled") }
            }
        }
    }

    /// base·2^(retry−1) capped at backoffMax, times a uniform factor in [1−jitter, 1+jitter].
    func backoff(retry: Int) -> Double {
        let c = configuration
        let raw = min(c.backoffMax, c.backoffBase * pow(2, Double(max(0, retry - 1))))
        let j = max(0, min(1, c.jitter))
        return max(0, raw * (j > 0 ? Double.random(in: (1 - j)...(1 + j)) : 1))
    }

    /// libcurl failures that another attempt cannot fix (bad URL, unsupported protocol, TLS trust).
    private static let permanentCurlCodes: Set<Int> = [1, 3, 4, 43, 48, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 83, 90, 91]

    func redact(_ text: String) -> String {
        guard let apiKey else { return text }
        return text.replacingOccurrences(of: apiKey, with: "[REDACTED]")
    }

    static func snippet(_ body: Data, limit: Int = 300) -> String {
        let text = String(decoding: body.prefix(limit), as: UTF8.self)
            .replacingOccurrences(of: "\n", with: " ")
        return body.count > limit ? text + "…" : text
    }

    static func withoutUserinfo(_ url: String) -> String {
        guard let scheme = url.range(of: "://") else { return url }
        let rest = url[scheme.upperBound...]
        let hostEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        guard let at = rest[..<hostEnd].lastIndex(of: "@") else { return url }
        return String(url[..<scheme.upperBound]) + String(rest[rest.index(after: at)...])
    }

    /// Retry-After as delta-seconds or an HTTP date (RFC 9110); nil when unparseable.
    static func parseRetryAfter(_ value: String, now: Date = Date()) -> Double? {
        let v = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Double(v), seconds.isFinite { return seconds }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        for format in ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEEE, dd-MMM-yy HH:mm:ss zzz", "EEE MMM d HH:mm:ss yyyy"] {
            formatter.dateFormat = format
            if let date = formatter.date(from: v) { return max(0, date.timeIntervalSince(now)) }
        }
        return nil
    }
}
