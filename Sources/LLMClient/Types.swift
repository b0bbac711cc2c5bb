import Foundation

/// One chat message in OpenAI's `messages` array.
public struct ChatMessage: Codable, Sendable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// How the server is asked to shape a chat answer.
public enum ResponseFormat: Sendable, Equatable {
    case text
    /// Sent as `{"type":"json_object","schema":{...}}` (llama.cpp style; OpenAI's `json_schema`
    /// type returns HTTP 500 on llama.cpp). `schema` is the JSON text of a JSON schema.
    case jsonObject(schema: String?)
}

public struct ChatRequest: Sendable, Equatable {
    public var model: String
    public var messages: [ChatMessage]
    public var temperature: Double = 0
    public var maxTokens: Int?
    public var responseFormat: ResponseFormat = .text
    /// GBNF grammar (llama.cpp extension), sent as top-level `grammar`.
    public var grammar: String? = nil
    public var seed: Int? = nil

    public init(model: String, messages: [ChatMessage], temperature: Double = 0, maxTokens: Int? = nil,
                responseFormat: ResponseFormat = .text, grammar: String? = nil, seed: Int? = nil) {
        self.model = model
        self.messages = messages
        self.temperature = temperature
        self.maxTokens = maxTokens
        self.responseFormat = responseFormat
        self.grammar = grammar
        self.seed = seed
    }
}

public struct CompletionRequest: Sendable, Equatable {
    public var model: String
    public var prompt: String
    public var maxTokens: Int
    public var echo: Bool
    public var logprobs: Int?
    public var temperature: Double = 0

    public init(model: String, prompt: String, maxTokens: Int, echo: Bool = false, logprobs: Int? = nil,
                temperature: Double = 0) {
        self.model = model
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.echo = echo
        self.logprobs = logprobs
        self.temperature = temperature
    }
}

public struct TokenUsage: Sendable, Equatable, Codable {
    public var promptTokens: Int
    public var completionTokens: Int
    public init(promptTokens: Int, completionTokens: Int) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
    }
}

public struct ChatResponse: Sendable, Equatable {
    /// `choices[0].message.content`.
    public var text: String
    public var usage: TokenUsage
    /// True when the answer came from the response cache without touching the network.
    public var fromCache: Bool
    /// The server's response body, byte for byte.
    public var rawBody: Data
    public init(text: String, usage: TokenUsage, fromCache: Bool, rawBody: Data) {
        self.text = text
        self.usage = usage
        self.fromCache = fromCache
        self.rawBody = rawBody
    }
}

public struct TopLogprob: Sendable, Equatable {
    public var token: String
    public var logprob: Double
    public init(token: String, logprob: Double) {
        self.token = token
        self.logprob = logprob
    }
}

public struct CompletionResponse: Sendable, Equatable {
    /// `choices[0].text`.
    public var text: String
    /// `choices[0].logprobs.tokens` (empty when the server sent no logprobs).
    public var tokens: [String]
    /// One entry per token, sorted by logprob descending (ties by token); `[]` where the server
    /// sent `null` (OpenAI does so for the first prompt token).
    public var topLogprobs: [[TopLogprob]]
    public var usage: TokenUsage
    public var fromCache: Bool
    public var rawBody: Data
    public init(text: String, tokens: [String], topLogprobs: [[TopLogprob]], usage: TokenUsage,
                fromCache: Bool, rawBody: Data) {
        self.text = text
        self.tokens = tokens
        self.topLogprobs = topLogprobs
        self.usage = usage
        self.fromCache = fromCache
        self.rawBody = rawBody
    }
}

public struct LLMClientConfiguration: Sendable {
    /// e.g. `http://127.0.0.1:8081/v1`; `/chat/completions` and `/completions` are appended.
    public var baseURL: String
    /// Name of the environment variable holding the API key; read once at client init.
    /// Absent or empty → no Authorization header.
    public var apiKeyEnvironmentVariable: String = "OPENAI_API_KEY"
    /// Maximum number of HTTP requests in flight at once; the rest wait in a queue.
    public var maxInFlight: Int = 64
    /// Optional rate limits (token buckets refilled continuously over a minute).
    public var requestsPerMinute: Int?
    /// Tokens are estimated as request chars/4 + maxTokens, then corrected by the reported usage.
    public var tokensPerMinute: Int?
    /// Seconds, per attempt.
    public var requestTimeout: Double = 120
    /// Retries after the first attempt.
    public var maxRetries: Int = 5
    /// Exponential backoff: base·2^(retry−1), capped at backoffMax, times 1 ± jitter.
    public var backoffBase: Double = 1.0
    public var backoffMax: Double = 10.0
    public var jitter: Double = 0.2

    public init(baseURL: String, apiKeyEnvironmentVariable: String = "OPENAI_API_KEY", maxInFlight: Int = 64,
                requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil, requestTimeout: Double = 120,
                maxRetries: Int = 5, backoffBase: Double = 1.0, backoffMax: Double = 10.0, jitter: Double = 0.2) {
        self.baseURL = baseURL
        self.apiKeyEnvironmentVariable = apiKeyEnvironmentVariable
        self.maxInFlight = maxInFlight
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
        self.requestTimeout = requestTimeout
        self.maxRetries = maxRetries
        self.backoffBase = backoffBase
        self.backoffMax = backoffMax
        self.jitter = jitter
    }
}

public enum LLMError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Non-retryable 4xx, or a retryable status after the retries ran out. `url` is in the body
    /// text of the description only; `body` is the (truncated, key-redacted) response body.
    case http(status: Int, body: String)
    /// Connection refused/reset, DNS, TLS, etc., after the retries ran out.
    case transport(String)
    /// Every attempt hit the per-attempt timeout.
    case timeout(seconds: Double)
    /// The body was not the expected JSON (after the retries ran out).
    case malformedResponse(String)
    case cancelled
    /// The request could not be encoded (e.g. a response-format schema that is not valid JSON);
    /// nothing was sent.
    case invalidRequest(String)

    public var description: String {
        switch self {
        case .http(let status, let body):
            let hint: String
            switch status {
            case 401, 403: hint = "check the API key (environment variable named by --api-key-env, default $OPENAI_API_KEY) and its permissions"
            case 404: hint = "check the endpoint URL (it should end in /v1) and the model name"
            case 400, 422: hint = "the server rejected the request; check the model name and parameters (response_format, grammar, max_tokens)"
            case 408: hint = "the server timed out; lower --concurrency or raise the timeout"
            case 413: hint = "the prompt is too large for the server; use fewer or shorter examples"
            case 429: hint = "rate limited even after retries; lower --concurrency or set a requests/tokens-per-minute limit"
            case 500...599: hint = "the server kept failing; check that it is healthy (its logs) and retry later"
            default: hint = "see the response body"
            }
            let shown = body.isEmpty ? "" : " — response: \(body)"
            return "HTTP \(status) from the LLM server: \(hint)\(shown)"
        case .transport(let message):
            return "cannot reach the LLM server (\(message)): check that it is running and that the endpoint URL is right"
        case .timeout(let seconds):
            return "the LLM server did not answer within \(LLMError.format(seconds)) s on every attempt: check that it is not overloaded, lower --concurrency or raise the timeout"
        case .malformedResponse(let message):
            return "the LLM server's answer was not the expected JSON (\(message)): check that the endpoint is OpenAI-compatible"
        case .cancelled:
            return "the LLM request was cancelled: the run was stopped or its LLM client shut down before the answer came"
        case .invalidRequest(let message):
            return "invalid LLM request (\(message)): nothing was sent; fix the request"
        }
    }

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(format: "%.3g", seconds)
    }
}

/// Response cache, implemented by the job store: content-addressed by `LLMClient.cacheKey`.
public protocol LLMResponseCache: Sendable {
    func cachedResponse(forKey key: String) -> Data?
    /// Called only after a successful (2xx), parseable response.
    func storeResponse(_ body: Data, forKey key: String, record: LLMCallRecord)
    /// Called for every attempt outcome, including failures and cache hits.
    func recordCall(_ record: LLMCallRecord)
}

/// One attempt (or cache hit). Holds no request headers and never the API key.
public struct LLMCallRecord: Sendable, Equatable {
    public var key: String
    /// The URL called (userinfo removed).
    public var endpoint: String
    public var model: String
    public var tag: String
    public var promptTokens: Int
    public var completionTokens: Int
    public var latencySeconds: Double
    /// "ok", "cache_hit", "http_<status>", "timeout", "transport", "malformed", "truncated", "cancelled".
    public var outcome: String
    /// 1-based attempt number; 0 for a cache hit.
    public var attempt: Int

    public init(key: String, endpoint: String, model: String, tag: String, promptTokens: Int, completionTokens: Int,
                latencySeconds: Double, outcome: String, attempt: Int) {
        self.key = key
        self.endpoint = endpoint
        self.model = model
        self.tag = tag
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.latencySeconds = latencySeconds
        self.outcome = outcome
        self.attempt = attempt
    }
}

/// Counters since the client was created.
public struct ClientStatistics: Sendable, Equatable {
    /// HTTP attempts handed to libcurl (first tries and retries).
    public var requestsSent: Int = 0
    /// Attempts that were retries.
    public var retries: Int = 0
    public var cacheHits: Int = 0
    /// Calls that returned a response (network or cache).
    public var succeeded: Int = 0
    /// Calls that threw, by kind: "http", "transport", "timeout", "malformed", "cancelled", "invalid_request".
    public var failuresByKind: [String: Int] = [:]
    /// Failed attempts by outcome (as in LLMCallRecord.outcome), whether or not they were retried.
    public var failedAttemptsByOutcome: [String: Int] = [:]
    public var promptTokens: Int = 0
    public var completionTokens: Int = 0
    public init() {}
}
