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
    /// JSON mode without a schema, `{"type":"json_object"}` (OpenAI wants the word "json" in the messages).
    case jsonObject
    /// Structured output held to a JSON schema (`schema` is its JSON text; `name` matches `[A-Za-z0-9_-]{1,64}`).
    /// How it goes on the wire depends on the server (`LLMServer`): OpenAI's
    /// `{"type":"json_schema","json_schema":{"name","schema","strict":true}}` for most, llama-cpp-python's
    /// `{"type":"json_object","schema":…}` for that server, whose `json_schema` answers HTTP 500.
    case jsonSchema(name: String, schema: String)
}

/// The kind of OpenAI-compatible server a client talks to: it decides which request fields are sent
/// (each server is sent only what its documentation names). Shared by the job file and the CLI.
public enum LLMServer: String, Sendable, CaseIterable {
    /// OpenAI's API and servers that follow its published spec (OpenRouter, Azure OpenAI, …): structured
    /// output as `json_schema` (strict), `max_completion_tokens`; reasoning models get no temperature
    /// and room for reasoning tokens.
    case openai
    /// vLLM's OpenAI-compatible server: `json_schema`, `max_completion_tokens`, echo + logprobs on completions.
    case vllm
    /// Ollama's `/v1` endpoint: `json_schema`, `max_tokens` (it does not document `max_completion_tokens`).
    case ollama
    /// llama.cpp's own `llama-server`: `json_schema`, `max_tokens`; its completions do not echo prompt logprobs.
    case llamaServer = "llama-server"
    /// llama-cpp-python's server: `json_object` + `schema` (its `json_schema` answers HTTP 500), `max_tokens`.
    case llamaCppPython = "llama-cpp-python"

    public static let names = allCases.map(\.rawValue).joined(separator: ", ")

    /// Servers whose `/completions` return logprobs for the echoed prompt (the logprob simulator needs them).
    public var echoesPromptLogprobs: Bool { self == .vllm || self == .llamaCppPython }

    /// Servers built on llama.cpp, which take a GBNF `grammar` and pin array items with `prefixItems`.
    public var isLlamaCpp: Bool { self == .llamaServer || self == .llamaCppPython }

    /// Whether the request's token limit is sent as `max_completion_tokens` (OpenAI's current name) or `max_tokens`.
    var sendsMaxCompletionTokens: Bool { self == .openai || self == .vllm }

    /// OpenAI's reasoning models (gpt-5*, o1*, o3*, o4*; a provider prefix such as `openai/` is ignored):
    /// they refuse temperatures other than 1 and logprobs, and spend hidden reasoning tokens out of
    /// `max_completion_tokens`.
    public func isReasoningModel(_ model: String) -> Bool {
        guard self == .openai else { return false }
        let name = (model.split(separator: "/").last.map(String.init) ?? model).lowercased()
        return name.hasPrefix("gpt-5") || ["o1", "o3", "o4"].contains { name == $0 || name.hasPrefix($0 + "-") }
    }

    /// Tokens added to a reasoning model's `max_completion_tokens` for its hidden reasoning (only the
    /// tokens used are billed), with `reasoning_effort` "low".
    public static let reasoningTokenAllowance = 4096
}

public struct ChatRequest: Sendable, Equatable {
    public var model: String
    public var messages: [ChatMessage]
    public var temperature: Double = 0
    public var maxTokens: Int?
    public var responseFormat: ResponseFormat = .text
    /// GBNF grammar (llama.cpp extension), sent as top-level `grammar`; refused for other servers.
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
    /// The part of `promptTokens` the server's prompt cache answered
    /// (`usage.prompt_tokens_details.cached_tokens`; 0 when not reported). Providers bill it cheaper.
    public var cachedPromptTokens: Int = 0
    public init(promptTokens: Int, completionTokens: Int, cachedPromptTokens: Int = 0) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedPromptTokens = cachedPromptTokens
    }
}

extension TokenUsage {
    /// The usage a chat or completions response body reports, e.g. a batch output line's body (nil when
    /// the body is not a JSON object; zeros when it reports none).
    public init?(responseBody: Data) {
        guard let usage = Wire.usage(ofResponse: responseBody) else { return nil }
        self = usage
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
    /// `choices[0].finish_reason`: "length" when the token limit cut the answer off.
    public var finishReason: String?
    public init(text: String, usage: TokenUsage, fromCache: Bool, rawBody: Data, finishReason: String? = nil) {
        self.text = text
        self.usage = usage
        self.fromCache = fromCache
        self.rawBody = rawBody
        self.finishReason = finishReason
    }

    /// True when the token limit ended the answer before any text (a reasoning model can spend the whole
    /// limit on hidden reasoning).
    public var cutOffBeforeAnyText: Bool {
        finishReason == "length" && text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
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

/// A spending limit (`[limits] max_cost`): asked before each request goes out, told what it cost.
public protocol LLMBudget: Sendable {
    /// Reserves the most a request to `model` with a body of `promptBytes` bytes and at most
    /// `maxTokens` answer tokens can cost (a prompt has no more tokens than bytes); nil refuses it.
    func reserve(model: String, promptBytes: Int, maxTokens: Int?) -> Double?
    /// Replaces the reservation by the call's cost from its usage (nil: the server answered nothing billable).
    func settle(reservation: Double, model: String, usage: TokenUsage?)
}

public struct LLMClientConfiguration: Sendable {
    /// e.g. `http://127.0.0.1:8081/v1`; `/chat/completions` and `/completions` are appended.
    public var baseURL: String
    /// Name of the environment variable holding the API key; read once at client init.
    /// Absent or empty → no Authorization header.
    public var apiKeyEnvironmentVariable: String = "OPENAI_API_KEY"
    /// Which request dialect to speak.
    public var server: LLMServer = .openai
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
    /// A spending limit asked before every request sent (not before cache hits).
    public var budget: (any LLMBudget)?

    public init(baseURL: String, apiKeyEnvironmentVariable: String = "OPENAI_API_KEY", server: LLMServer = .openai,
                maxInFlight: Int = 64,
                requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil, requestTimeout: Double = 120,
                maxRetries: Int = 5, backoffBase: Double = 1.0, backoffMax: Double = 10.0, jitter: Double = 0.2) {
        self.baseURL = baseURL
        self.apiKeyEnvironmentVariable = apiKeyEnvironmentVariable
        self.server = server
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
    /// `[limits] max_cost` would be exceeded by this request; nothing was sent.
    case budgetExhausted
    /// Batch mode: the request was queued for a provider batch instead of being sent; nothing was paid.
    case deferred

    public var description: String {
        switch self {
        case .http(let status, let body):
            let hint: String
            switch status {
            case 401, 403: hint = "check the API key (environment variable named by --api-key-env, default $OPENAI_API_KEY) and its permissions"
            case 404: hint = "check the endpoint URL (it should end in /v1) and the model name"
            case 400, 422: hint = "the server rejected the request; check the model name and parameters (response_format, max_tokens) and that the server kind (job key `server`, flag --server) names this server"
            case 408: hint = "the server timed out; lower --concurrency or raise the timeout"
            case 413: hint = "the prompt is too large for the server; use fewer or shorter examples"
            case 429: hint = "rate limited even after retries; lower --concurrency or set a requests/tokens-per-minute limit"
            case 500...599: hint = "the server kept failing; check that it is healthy (its logs) and retry later (llama-cpp-python answers structured output with 500 unless the job sets server = \"llama-cpp-python\")"
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
        case .budgetExhausted:
            return "the next LLM request could exceed [limits] max_cost: nothing was sent; raise max_cost and run again to continue"
        case .deferred:
            return "the LLM request waits for a batch; run again to collect its answer"
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
    /// Prompt tokens served from the server's prompt cache (part of `promptTokens`).
    public var cachedPromptTokens: Int = 0
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
    public var cachedPromptTokens: Int = 0
    public init() {}
}
