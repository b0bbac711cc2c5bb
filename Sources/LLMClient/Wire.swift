import Foundation
import Synchronization

/// Request bodies (canonical JSON: sorted keys, no escaped slashes, so equal requests give equal
/// bytes and a stable cache key) and response parsing for the OpenAI wire format.
enum Wire {
    /// What the request bodies always were: JSONSerialization with sorted keys. Still used for a
    /// response_format schema (any keys, in Foundation's order); `CanonicalJSON` writes the rest.
    static func canonicalJSON(_ object: Any) throws -> Data {
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    }

    /// The chat body in `server`'s dialect: only fields that server documents (SPEC §12). Written by
    /// hand with the keys in the order JSONSerialization sorts them, byte for byte its output (WireTests),
    /// at a fraction of its cost per request.
    static func chatBody(_ r: ChatRequest, server: LLMServer) throws(LLMError) -> Data {
        if r.grammar != nil && !server.isLlamaCpp {
            throw .invalidRequest("a GBNF grammar is a llama.cpp extension; \(server.rawValue) does not take one")
        }
        let reasoning = server.isReasoningModel(r.model)
        var json = CanonicalJSON()
        json.open()
        if let grammar = r.grammar { json.key("grammar"); json.string(grammar) }
        if let maxTokens = r.maxTokens {
            // A reasoning model's hidden reasoning is paid out of the same limit.
            if reasoning {
                json.key("max_completion_tokens"); json.int(maxTokens + LLMServer.reasoningTokenAllowance)
            } else {
                json.key(server.sendsMaxCompletionTokens ? "max_completion_tokens" : "max_tokens"); json.int(maxTokens)
            }
        }
        json.key("messages")
        json.bytes.append(UInt8(ascii: "["))
        for (index, message) in r.messages.enumerated() {
            if index > 0 { json.bytes.append(UInt8(ascii: ",")) }
            json.open()
            json.key("content"); json.string(message.content)
            json.key("role"); json.string(message.role)
            json.close()
        }
        json.bytes.append(UInt8(ascii: "]"))
        json.key("model"); json.string(r.model)
        // Temperature other than 1 is refused by reasoning models.
        if reasoning { json.key("reasoning_effort"); json.string("low") }
        switch r.responseFormat {
        case .text:
            break
        case .jsonObject:
            json.key("response_format"); json.open(); json.key("type"); json.string("json_object"); json.close()
        case .jsonSchema(let name, let schema):
            let schemaJSON = try canonicalSchema(schema)
            json.key("response_format")
            json.open()
            if server == .llamaCppPython {
                json.key("schema"); json.bytes.append(contentsOf: schemaJSON)
                json.key("type"); json.string("json_object")
            } else {
                json.key("json_schema")
                json.open()
                json.key("name"); json.string(name)
                json.key("schema"); json.bytes.append(contentsOf: schemaJSON)
                json.key("strict"); json.bytes.append(contentsOf: "true".utf8)
                json.close()
                json.key("type"); json.string("json_schema")
            }
            json.close()
        }
        if let seed = r.seed { json.key("seed"); json.int(seed) }
        if !reasoning {
            json.key("temperature")
            guard json.double(r.temperature) else {
                throw .invalidRequest("cannot encode the chat request as JSON (temperature \(r.temperature) is not a number)")
            }
        }
        json.close()
        return Data(json.bytes)
    }

    static func completionBody(_ r: CompletionRequest) throws(LLMError) -> Data {
        var json = CanonicalJSON()
        json.open()
        json.key("echo"); json.bytes.append(contentsOf: (r.echo ? "true" : "false").utf8)
        if let logprobs = r.logprobs { json.key("logprobs"); json.int(logprobs) }
        json.key("max_tokens"); json.int(r.maxTokens)
        json.key("model"); json.string(r.model)
        json.key("prompt"); json.string(r.prompt)
        json.key("temperature")
        guard json.double(r.temperature) else {
            throw .invalidRequest("cannot encode the completion request as JSON (temperature \(r.temperature) is not a number)")
        }
        json.close()
        return Data(json.bytes)
    }

    /// A response_format schema, checked and serialized once per distinct text (a stage sends the same
    /// schema with every request).
    private static let schemaCache = Mutex<[String: [UInt8]]>([:])

    static func canonicalSchema(_ schema: String) throws(LLMError) -> [UInt8] {
        if let cached = schemaCache.withLock({ $0[schema] }) { return cached }
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(schema.utf8)), parsed is [String: Any] else {
            throw .invalidRequest("the response_format schema is not a JSON object")
        }
        let bytes: [UInt8]
        do { bytes = Array(try canonicalJSON(parsed)) } catch {
            throw .invalidRequest("cannot encode the response_format schema as JSON (\(error))")
        }
        schemaCache.withLock { cache in
            if cache.count > 64 { cache.removeAll() }
            cache[schema] = bytes
        }
        return bytes
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

/// Compact JSON as JSONSerialization writes it with `.withoutEscapingSlashes`: strings escape `"`, `\`,
/// \b \f \n \r \t and other controls as `\u00xx`; doubles print as `description` without a trailing
/// ".0". Callers write object keys in JSONSerialization's sorted order themselves.
struct CanonicalJSON {
    var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(1024) }

    mutating func open() { bytes.append(UInt8(ascii: "{")) }
    mutating func close() { bytes.append(UInt8(ascii: "}")) }

    /// `"name":`, after a comma unless first in its object.
    mutating func key(_ name: String) {
        if bytes.last != UInt8(ascii: "{") { bytes.append(UInt8(ascii: ",")) }
        string(name)
        bytes.append(UInt8(ascii: ":"))
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    mutating func string(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(UInt8(ascii: "\\")); bytes.append(byte)
            case UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\")); bytes.append(byte)
            case 0x08: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "b"))
            case 0x0C: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "f"))
            case 0x0A: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "n"))
            case 0x0D: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "r"))
            case 0x09: bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "t"))
            case ..<0x20:
                bytes.append(contentsOf: "\\u00".utf8)
                bytes.append(Self.hex[Int(byte >> 4)])
                bytes.append(Self.hex[Int(byte & 0x0F)])
            default:
                // UTF-8 bytes of every other scalar go out as they are.
                bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    mutating func int(_ value: Int) { bytes.append(contentsOf: String(value).utf8) }

    /// False for a non-finite value, which JSON cannot hold.
    mutating func double(_ value: Double) -> Bool {
        guard value.isFinite else { return false }
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        bytes.append(contentsOf: text.utf8)
        return true
    }
}
