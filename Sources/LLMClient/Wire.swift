import Foundation

/// Request bodies (canonical JSON: sorted keys, no escaped slashes, so equal requests give equal
/// bytes and a stable cache key) and response parsing for the OpenAI wire format.
enum Wire {
    static func canonicalJSON(_ object: Any) throws -> Data {
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    }

    /// The chat body in `server`'s dialect: only fields that server documents (SPEC §12).
    static func chatBody(_ r: ChatRequest, server: LLMServer) throws(LLMError) -> Data {
        var body: [String: Any] = [
            "model": r.model,
            "messages": r.messages.map { ["role": $0.role, "content": $0.content] },
        ]
        let reasoning = server.isReasoningModel(r.model)
        if reasoning {
            // Temperature other than 1 is refused; the hidden reasoning is paid out of the same limit.
            body["reasoning_effort"] = "low"
            if let maxTokens = r.maxTokens {
                body["max_completion_tokens"] = maxTokens + LLMServer.reasoningTokenAllowance
            }
        } else {
            body["temperature"] = r.temperature
            if let maxTokens = r.maxTokens {
                body[server.sendsMaxCompletionTokens ? "max_completion_tokens" : "max_tokens"] = maxTokens
            }
        }
        if let seed = r.seed { body["seed"] = seed }
        if let grammar = r.grammar {
            guard server.isLlamaCpp else {
                throw .invalidRequest("a GBNF grammar is a llama.cpp extension; \(server.rawValue) does not take one")
            }
            body["grammar"] = grammar
        }
        switch r.responseFormat {
        case .text:
            break
        case .jsonObject:
            body["response_format"] = ["type": "json_object"]
        case .jsonSchema(let name, let schema):
            guard let parsed = try? JSONSerialization.jsonObject(with: Data(schema.utf8)), parsed is [String: Any] else {
                throw .invalidRequest("the response_format schema is not a JSON object")
            }
            if server == .llamaCppPython {
                body["response_format"] = ["type": "json_object", "schema": parsed]
            } else {
                body["response_format"] = ["type": "json_schema",
                                           "json_schema": ["name": name, "schema": parsed, "strict": true] as [String: Any]]
            }
        }
        do { return try canonicalJSON(body) } catch {
            throw .invalidRequest("cannot encode the chat request as JSON (\(error))")
        }
    }

    static func completionBody(_ r: CompletionRequest) throws(LLMError) -> Data {
        var body: [String: Any] = [
            "model": r.model,
            "prompt": r.prompt,
            "max_tokens": r.maxTokens,
            "echo": r.echo,
            "temperature": r.temperature,
        ]
        if let logprobs = r.logprobs { body["logprobs"] = logprobs }
        do { return try canonicalJSON(body) } catch {
            throw .invalidRequest("cannot encode the completion request as JSON (\(error))")
        }
    }

    struct ParseError: Error { var message: String }

    struct ChatParsed: Sendable { var text: String; var usage: TokenUsage; var finishReason: String? }
    struct CompletionParsed: Sendable {
        var text: String
        var tokens: [String]
        var topLogprobs: [[TopLogprob]]
        var usage: TokenUsage
    }

    private static func root(_ data: Data) throws(ParseError) -> [String: Any] {
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: data) } catch {
            throw ParseError(message: "invalid JSON (\(data.count) bytes)")
        }
        guard let dict = object as? [String: Any] else { throw ParseError(message: "top level is not a JSON object") }
        if dict["error"] != nil && dict["choices"] == nil {
            throw ParseError(message: "the body holds an error object instead of choices")
        }
        return dict
    }

    private static func number(_ value: Any?) -> Double? {
        if let n = value as? NSNumber { return n.doubleValue }
        if let d = value as? Double { return d }
        if let i = value as? Int { return Double(i) }
        return nil
    }

    /// The usage a response body reports (a batch line's body); nil when it is not a JSON object.
    static func usage(ofResponse data: Data) -> TokenUsage? {
        (try? root(data)).map(usage)
    }

    private static func usage(_ root: [String: Any]) -> TokenUsage {
        let u = root["usage"] as? [String: Any] ?? [:]
        let details = u["prompt_tokens_details"] as? [String: Any] ?? [:]
        return TokenUsage(promptTokens: Int(number(u["prompt_tokens"]) ?? 0),
                          completionTokens: Int(number(u["completion_tokens"]) ?? 0),
                          cachedPromptTokens: Int(number(details["cached_tokens"]) ?? 0))
    }

    private static func firstChoice(_ root: [String: Any]) throws(ParseError) -> [String: Any] {
        guard let choices = root["choices"] as? [Any], let first = choices.first as? [String: Any] else {
            throw ParseError(message: "no choices[0]")
        }
        return first
    }

    static func parseChat(_ data: Data) throws(ParseError) -> ChatParsed {
        let r = try root(data)
        let choice = try firstChoice(r)
        guard let message = choice["message"] as? [String: Any], let content = message["content"] as? String else {
            throw ParseError(message: "no choices[0].message.content string")
        }
        return ChatParsed(text: content, usage: usage(r), finishReason: choice["finish_reason"] as? String)
    }

    static func parseCompletion(_ data: Data) throws(ParseError) -> CompletionParsed {
        let r = try root(data)
        let choice = try firstChoice(r)
        guard let text = choice["text"] as? String else { throw ParseError(message: "no choices[0].text string") }
        var tokens: [String] = []
        var top: [[TopLogprob]] = []
        if let logprobs = choice["logprobs"] as? [String: Any] {
            guard let t = logprobs["tokens"] as? [String] else {
                throw ParseError(message: "choices[0].logprobs.tokens is not a list of strings")
            }
            tokens = t
            if let entries = logprobs["top_logprobs"] as? [Any] {
                guard entries.count == tokens.count else {
                    throw ParseError(message: "top_logprobs has \(entries.count) entries for \(tokens.count) tokens")
                }
                for entry in entries {
                    guard let dict = entry as? [String: Any] else { top.append([]); continue }  // null → []
                    var list: [TopLogprob] = []
                    list.reserveCapacity(dict.count)
                    for (token, value) in dict {
                        guard let lp = number(value) else {
                            throw ParseError(message: "a top_logprobs value is not a number")
                        }
                        list.append(TopLogprob(token: token, logprob: lp))
                    }
                    list.sort { $0.logprob != $1.logprob ? $0.logprob > $1.logprob : $0.token < $1.token }
                    top.append(list)
                }
            } else {
                top = Array(repeating: [], count: tokens.count)
            }
        }
        return CompletionParsed(text: text, tokens: tokens, topLogprobs: top, usage: usage(r))
    }
}
