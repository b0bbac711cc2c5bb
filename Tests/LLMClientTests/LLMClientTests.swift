import Foundation
import TestSupport
import Testing
@testable import LLMClient

@Suite("cache keys and request encoding")
struct EncodingTests {
    @Test("cache keys depend on the path and the body, not on the host")
    func cacheKeys() {
        let body = Data(#"{"model":"m"}"#.utf8)
        let key = LLMClient.cacheKey(baseURL: "http://a:1/v1", path: "/chat/completions", body: body)
        #expect(key.count == 64)
        #expect(key == LLMClient.cacheKey(baseURL: "http://b:2/v1", path: "/chat/completions", body: body))
        #expect(key != LLMClient.cacheKey(baseURL: "http://a:1/v1", path: "/completions", body: body))
        #expect(key != LLMClient.cacheKey(baseURL: "http://a:1/v1", path: "/chat/completions", body: Data(#"{"model":"n"}"#.utf8)))
        // Python: hashlib.sha256(b'saelabel-llm-cache-v1\n/chat/completions\n{"model":"m"}').hexdigest()
        #expect(key == "57cc95607359a87f4452405a2ec10ce004b6e70d6b4d5ebc4ad91d64bc1dece6")
        #expect(LLMClient.hexDigits([0x00, 0x0f, 0xa5, 0xff]) == "000fa5ff")
    }

    @Test("request bodies are canonical JSON, so equal requests share a cache key")
    func canonicalBodies() throws {
        let schema = #"{"type":"object","properties":{"b":{"type":"integer"},"a":{"type":"string"}}}"#
        let r1 = ChatRequest(model: "m", messages: [ChatMessage(role: "user", content: "hi/there")], maxTokens: 5,
                             responseFormat: .jsonSchema(name: "s", schema: schema), seed: 3)
        // llama-cpp-python's dialect is byte for byte the body saelabel always sent it, so the demo's
        // cached answers stay valid.
        let b1 = try Wire.chatBody(r1, server: .llamaCppPython)
        let b2 = try Wire.chatBody(r1, server: .llamaCppPython)
        #expect(b1 == b2)
        let text = String(decoding: b1, as: UTF8.self)
        #expect(text == #"{"max_tokens":5,"messages":[{"content":"hi/there","role":"user"}],"model":"m","# +
                #""response_format":{"schema":{"properties":{"a":{"type":"string"},"b":{"type":"integer"}},"type":"object"},"# +
                #""type":"json_object"},"seed":3,"temperature":0}"#)
        var r2 = r1
        r2.temperature = 0.5
        let k1 = LLMClient.cacheKey(baseURL: "http://a/v1", path: "/chat/completions", body: b1)
        #expect(k1 == LLMClient.cacheKey(baseURL: "http://b:9/v1", path: "/chat/completions", body: b1))
        #expect(k1 != LLMClient.cacheKey(baseURL: "http://a/v1", path: "/chat/completions", body: try Wire.chatBody(r2, server: .llamaCppPython)))
        #expect(k1 != LLMClient.cacheKey(baseURL: "http://a/v1", path: "/completions", body: b1))
        #expect(k1.count == 64)
    }

    @Test("an invalid schema is rejected before anything is sent")
    func invalidSchema() {
        let r = ChatRequest(model: "m", messages: [], responseFormat: .jsonSchema(name: "s", schema: "{nope"))
        for server in LLMServer.allCases {
            #expect(throws: LLMError.self) { try Wire.chatBody(r, server: server) }
        }
    }

    /// The top-level fields and the response_format each server is sent.
    func wire(_ request: ChatRequest, _ server: LLMServer) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Wire.chatBody(request, server: server)) as? [String: Any])
    }

    @Test("each server gets structured output and the token limit in the form it documents")
    func dialects() throws {
        let schema = #"{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"],"additionalProperties":false}"#
        let request = ChatRequest(model: "gpt-4.1-mini", messages: [ChatMessage(role: "user", content: "hi")], temperature: 0,
                                  maxTokens: 50, responseFormat: .jsonSchema(name: "answer", schema: schema))
        for server in [LLMServer.openai, .vllm, .ollama, .llamaServer] {
            let body = try wire(request, server)
            let format = try #require(body["response_format"] as? [String: Any])
            #expect(format["type"] as? String == "json_schema", "\(server)")
            let jsonSchema = try #require(format["json_schema"] as? [String: Any])
            #expect(jsonSchema["name"] as? String == "answer" && jsonSchema["strict"] as? Bool == true)
            #expect((jsonSchema["schema"] as? [String: Any])?["required"] as? [String] == ["a"])
            #expect(body["temperature"] as? Double == 0)
        }
        let python = try wire(request, .llamaCppPython)
        let format = try #require(python["response_format"] as? [String: Any])
        #expect(format["type"] as? String == "json_object" && format["schema"] is [String: Any] && format["json_schema"] == nil)
        // OpenAI and vLLM name the limit max_completion_tokens; Ollama and llama.cpp document max_tokens.
        for (server, field) in [(LLMServer.openai, "max_completion_tokens"), (.vllm, "max_completion_tokens"),
                                (.ollama, "max_tokens"), (.llamaServer, "max_tokens"), (.llamaCppPython, "max_tokens")] {
            let body = try wire(request, server)
            #expect(body[field] as? Int == 50, "\(server)")
            #expect(Set(body.keys) == ["model", "messages", "temperature", field, "response_format"], "\(server): \(body.keys.sorted())")
        }
        var grammar = request
        grammar.grammar = "root ::= \"a\""
        #expect(throws: LLMError.self) { try Wire.chatBody(grammar, server: .openai) }
        #expect(try wire(grammar, .llamaServer)["grammar"] as? String == "root ::= \"a\"")
    }

    @Test("reasoning models get no temperature, reasoning_effort and room for reasoning tokens")
    func reasoningModels() throws {
        for model in ["gpt-5-mini", "gpt-5", "o4-mini", "o3", "openai/o1-2024-12-17"] {
            let request = ChatRequest(model: model, messages: [ChatMessage(role: "user", content: "hi")], temperature: 0, maxTokens: 60)
            #expect(LLMServer.openai.isReasoningModel(model), "\(model)")
            let body = try wire(request, .openai)
            #expect(body["temperature"] == nil && body["max_tokens"] == nil, "\(model)")
            #expect(body["max_completion_tokens"] as? Int == 60 + LLMServer.reasoningTokenAllowance)
            #expect(body["reasoning_effort"] as? String == "low")
        }
        for model in ["gpt-4.1-mini", "gpt-4o", "o-series-lookalike", "ollama3"] {
            #expect(!LLMServer.openai.isReasoningModel(model), "\(model)")
        }
        // Only OpenAI's own API gets the reasoning treatment.
        #expect(!LLMServer.vllm.isReasoningModel("o3"))
    }

    @Test("Retry-After parses delta-seconds and HTTP dates")
    func retryAfter() {
        #expect(LLMClient.parseRetryAfter("2") == 2)
        #expect(LLMClient.parseRetryAfter(" 1.5 ") == 1.5)
        let now = Date(timeIntervalSince1970: 1_445_412_480)  // Wed, 21 Oct 2015 07:28:00 GMT
        let seconds = LLMClient.parseRetryAfter("Wed, 21 Oct 2015 07:28:30 GMT", now: now)
        #expect(seconds.map { abs($0 - 30) < 0.001 } == true)
        #expect(LLMClient.parseRetryAfter("soon") == nil)
    }

    @Test("rate limiter: a burst of 10 s allowance, then the per-minute rate")
    func rateLimiter() async throws {
        let requests = try #require(RateLimiter(requestsPerMinute: 120, tokensPerMinute: nil))  // 2/s, burst 20
        var start = ContinuousClock.now
        for _ in 0..<20 { try await requests.acquire(tokens: 1) }
        #expect(start.duration(to: .now) < .seconds(0.5))
        try await requests.acquire(tokens: 1)
        try await requests.acquire(tokens: 1)
        #expect(start.duration(to: .now) >= .seconds(0.9))

        let tokens = try #require(RateLimiter(requestsPerMinute: nil, tokensPerMinute: 600))  // 10/s, burst 100
        start = ContinuousClock.now
        try await tokens.acquire(tokens: 500)  // larger than the bucket: runs when the bucket is full
        #expect(start.duration(to: .now) < .seconds(0.5))
        tokens.correct(by: -395)  // the call used 105 tokens, not 500: level 100 - 500 + 395 = -5
        try await tokens.acquire(tokens: 5)  // needs 10 tokens of refill ≈ 1 s
        #expect(start.duration(to: .now) >= .seconds(0.9))
        #expect(RateLimiter(requestsPerMinute: nil, tokensPerMinute: nil) == nil)
    }

    @Test("URLs lose their userinfo before they are shown")
    func userinfo() {
        #expect(LLMClient.withoutUserinfo("http://u:pw@host:1/v1/x") == "http://host:1/v1/x")
        #expect(LLMClient.withoutUserinfo("http://host/v1/a@b") == "http://host/v1/a@b")
    }
}

@Suite("LLMClient against the mock server")
struct ClientTests {
    @Test("explain, simulate and logprobs answers parse; usage is read")
    func happyPaths() async throws {
        let server = try await MockServer.start()
        defer { server.stop() }
        let client = makeClient(testConfiguration(server))
        defer { client.shutdown() }

        let explain = try await client.chat(explainRequest())
        #expect(explain.text == #"the token "cat""#)
        #expect(explain.usage.promptTokens > 0 && explain.usage.completionTokens == 3)
        #expect(!explain.fromCache)

        let tokens = ["The", " cat", " sat", "\n", "日本"]
        let tokenJSON = String(decoding: try JSONSerialization.data(withJSONObject: tokens), as: UTF8.self)
        let sim = try await client.chat(ChatRequest(
            model: "mock", messages: [ChatMessage(role: "user", content: "Simulate <tokens>\(tokenJSON)</tokens>")],
            responseFormat: .jsonSchema(name: "sim", schema: #"{"type":"object"}"#)))
        let obj = try JSONSerialization.jsonObject(with: Data(sim.text.utf8)) as? [String: Any]
        let entries = obj?["activations"] as? [[String: Any]] ?? []
        #expect(entries.map { $0["token"] as? String ?? "" } == tokens)
        #expect(entries.map { $0["activation"] as? Int ?? -1 } == tokens.map(mockActivation))

        let prompt = "few shot\n<start>\nThe\tunknown\n cat\tunknown\n<end>\n"
        let lp = try await client.complete(CompletionRequest(model: "mock", prompt: prompt, maxTokens: 1, echo: true,
                                                             logprobs: 11))
        #expect(lp.tokens.joined() == lp.text)
        #expect(lp.tokens.count == lp.topLogprobs.count)
        #expect(lp.topLogprobs[0].isEmpty)  // OpenAI sends null for the first token
        let unknownPositions = lp.tokens.indices.filter { lp.tokens[$0] == "unknown" }
        #expect(unknownPositions.count == 2)
        for (position, word) in zip(unknownPositions, ["The", "cat"]) {
            let top = lp.topLogprobs[position]
            #expect(top.count == 11)
            #expect(zip(top, top.dropFirst()).allSatisfy { $0.logprob >= $1.logprob })
            #expect(top.first?.token == String(mockActivation(word)))
        }
        #expect(client.statistics.requestsSent == 3)
        #expect(try await server.stats().authSeen.isEmpty)  // no key configured → no header
    }

    @Test("HTTP 500 then ok: retried and succeeds")
    func retries500() async throws {
        let server = try await MockServer.start()
        defer { server.stop() }
        try await server.script(["500", "503"])
        let cache = MemoryCache()
        let client = makeClient(testConfiguration(server), cache: cache)
        defer { client.shutdown() }
        let r = try await client.chat(explainRequest())
        #expect(r.text == #"the token "cat""#)
        #expect(try await server.stats().requests == 3)
        #expect(client.statistics.retries == 2)
        #expect(cache.records.map(\.outcome) == ["http_500", "http_503", "ok"])
        #expect(cache.records.map(\.attempt) == [1, 2, 3])
    }

    @Test("HTTP 429 with Retry-After: the client waits at least that long")
    func retryAfterHonoured() async throws {
        let server = try await MockServer.start()
        defer { server.stop() }
        try await server.script(["429:1"])
        let client = makeClient(testConfiguration(server))
        defer { client.shutdown() }
        let start = ContinuousClock.now
        _ = try await client.chat(explainRequest())
        let elapsed = start.duration(to: .now)
        #expect(elapsed >= .seconds(1))
        #expect(try await server.stats().requests == 2)
    }

    @Test("HTTP 400 is not retried and throws a typed error")
    func noRetryOn400() async throws {
        let server = try await MockServer.start()
        defer { server.stop() }
        try await server.script(["400"])
        let client = makeClient(testConfiguration(server))
        defer { client.shutdown() }
        do {
            _ = try await client.chat(explainRequest())
            Issue.record("expected an error")
        } catch {
            guard case .http(let status, let body) = error else { Issue.record("got \(error)"); return }
            #expect(status == 400)
            #expect(body.contains("mock fault 400"))
            #expect(error.description.hasPrefix("HTTP 400"))
        }
        #expect(try await server.stats().requests == 1)
        #expect(client.statistics.failuresByKind["http"] == 1)
    }

    @Test("the OpenAI-strict mock refuses what OpenAI refuses, so a job with no refusal means something")
    func openAIStrictMockRefuses() async throws {
        let server = try await MockServer.start(["--dialect", "openai"])
        defer { server.stop() }
        func status(_ request: ChatRequest, _ kind: LLMServer) async -> (Int?, String) {
            var configuration = testConfiguration(server, retries: 0)
            configuration.server = kind
            let client = makeClient(configuration)
            defer { client.shutdown() }
            do {
                _ = try await client.chat(request)
                return (200, "")
            } catch {
                if case .http(let status, let body) = error { return (status, body) }
                return (nil, error.description)
            }
        }
        let simulate = [ChatMessage(role: "user", content: "Simulate <tokens>[\"a\"]</tokens>")]
        let schema = #"{"type":"object","properties":{"activations":{"type":"array","items":{"type":"integer"}}},"#
            + #""required":["activations"],"additionalProperties":false}"#
        // llama-cpp-python's dialect (json_object + schema) is what OpenAI answered with unknown_parameter.
        let old = await status(ChatRequest(model: "gpt-4.1-mini", messages: simulate, maxTokens: 9,
                                           responseFormat: .jsonSchema(name: "s", schema: schema)), .llamaCppPython)
        #expect(old.0 == 400 && old.1.contains("unknown_parameter") && old.1.contains("response_format.schema"), "\(old)")
        #expect(await status(ChatRequest(model: "gpt-4.1-mini", messages: simulate, maxTokens: 9,
                                         responseFormat: .jsonSchema(name: "s", schema: schema)), .openai).0 == 200)
        // Strict mode: an open object is refused.
        let open = #"{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}"#
        #expect(await status(ChatRequest(model: "gpt-4.1-mini", messages: simulate,
                                         responseFormat: .jsonSchema(name: "s", schema: open)), .openai).0 == 400)
        // json_object needs the word "json" in the messages.
        #expect(await status(ChatRequest(model: "gpt-4.1-mini", messages: simulate, responseFormat: .jsonObject), .openai).0 == 400)
        let json = [ChatMessage(role: "user", content: "Answer in JSON: <tokens>[\"a\"]</tokens>")]
        #expect(await status(ChatRequest(model: "gpt-4.1-mini", messages: json, responseFormat: .jsonObject), .openai).0 == 200)
        // Reasoning models refuse max_tokens and a temperature other than 1 (the Ollama dialect sends both).
        let reasoning = ChatRequest(model: "o4-mini", messages: json, temperature: 0, maxTokens: 20)
        #expect(await status(reasoning, .ollama).0 == 400)
        #expect(await status(reasoning, .openai).0 == 200)
        // Completions with echo and logprobs are gone.
        let client = makeClient(testConfiguration(server, retries: 0))
        defer { client.shutdown() }
        await #expect(throws: LLMError.self) {
            _ = try await client.complete(CompletionRequest(model: "gpt-3.5-turbo-instruct", prompt: "a b", maxTokens: 1,
                                                            echo: true, logprobs: 5))
        }
        #expect(try await server.stats().refused.count == 5)
    }

    @Test("connection reset, malformed and truncated bodies are retried")
    func resetMalformedTruncated() async throws {
        let server = try await MockServer.start()
        defer { server.stop() }
        try await server.script(["reset", "malformed", "truncated"])
        let cache = MemoryCache()
        let client = makeClient(testConfiguration(server), cache: cache)
        defer { client.shutdown() }
        let r = try await client.chat(explainRequest())
        #expect(r.text == #"the token "cat""#)
        #expect(cache.records.map(\.outcome) == ["transport", "malformed", "truncated", "ok"])
        #expect(try await server.stats().requests == 4)
        // Only the good body was stored.
        #expect(cache.bodies.count == 1)
        #expect(cache.storedRecords.map(\.outcome) == ["ok"])
    }

    @Test("a hanging server times out per attempt, then the retry succeeds")
    func hangTimesOut() async throws {
        let server = try await MockServer.start(["--hang-seconds", "60"])
        defer { server.stop() }
        try await server.script(["hang"])
        let cache = MemoryCache()
        let client = makeClient(testConfiguration(server, timeout: 0.5), cache: cache)
        defer { client.shutdown() }
        let start = ContinuousClock.now
        _ = try await client.chat(explainRequest())
        // Far below the hang, with room for a loaded machine: the attempt was cut off, not waited out.
        #expect(start.duration(to: .now) < .seconds(30))
        #expect(cache.records.map(\.outcome) == ["timeout", "ok"])
    }

    @Test("retries exhausted: typed errors with clear messages")
    func retriesExhausted() async throws {
        let server = try await MockServer.start(["--hang-seconds", "3"])
        defer { server.stop() }
        let client = makeClient(testConfiguration(server, timeout: 0.3, retries: 2))
        defer { client.shutdown() }

        try await server.script(["500", "500", "500", "ok"])
        do {
            _ = try await client.chat(explainRequest())
            Issue.record("expected an error")
        } catch {
            #expect(error == .http(status: 500, body: #"{"error": {"message": "mock fault 500"}}"#))
            #expect(error.description.contains("HTTP 500"))
            #expect(error.description.contains("server"))
        }
        #expect(try await server.stats().requests == 3)  // 1 + 2 retries

        try await server.script(["hang", "hang", "hang"])
        do {
            _ = try await client.chat(explainRequest("other"))
            Issue.record("expected an error")
        } catch {
            #expect(error == .timeout(seconds: 0.3))
        }

        try await server.script(["malformed", "malformed", "malformed"])
        do {
            _ = try await client.chat(explainRequest("third"))
            Issue.record("expected an error")
        } catch {
            guard case .malformedResponse(let message) = error else { Issue.record("got \(error)"); return }
            #expect(message.contains("invalid JSON"))
        }
        #expect(client.statistics.failuresByKind == ["http": 1, "timeout": 1, "malformed": 1])
    }

    @Test("connection refused: transport error after retries")
    func transportError() async throws {
        // Bind-then-stop a mock to get a port that nothing listens on.
        let dead = try await MockServer.start()
        let port = dead.port
        dead.stop()
        var config = LLMClientConfiguration(baseURL: "http://127.0.0.1:\(port)/v1",
                                            apiKeyEnvironmentVariable: "SAELABEL_TEST_NO_SUCH_KEY")
        config.maxRetries = 1
        config.backoffBase = 0.01
        let client = makeClient(config)
        defer { client.shutdown() }
        do {
            _ = try await client.chat(explainRequest())
            Issue.record("expected an error")
        } catch {
            guard case .transport = error else { Issue.record("got \(error)"); return }
            #expect(error.description.contains("cannot reach"))
            #expect(error.description.contains("127.0.0.1:\(port)"))
        }
        #expect(client.statistics.requestsSent == 2)
    }

    @Test("response cache: hits never touch the network, also after a restart")
    func cache() async throws {
        let server = try await MockServer.start()
        defer { server.stop() }
        let cache = MemoryCache()
        var client: LLMClient? = makeClient(testConfiguration(server), cache: cache)
        let first = try await client!.chat(explainRequest())
        let second = try await client!.chat(explainRequest())
        #expect(!first.fromCache && second.fromCache)
        #expect(first.text == second.text && first.usage == second.usage && first.rawBody == second.rawBody)
        #expect(try await server.stats().requests == 1)
        #expect(client!.statistics.cacheHits == 1)

        // "Crash": drop the client, make a new one with the same cache.
        client = nil
        let restarted = makeClient(testConfiguration(server), cache: cache)
        defer { restarted.shutdown() }
        let third = try await restarted.chat(explainRequest())
        #expect(third.fromCache && third.text == first.text)
        let lp = CompletionRequest(model: "mock", prompt: "a\tunknown\n", maxTokens: 1, echo: true, logprobs: 5)
        let c1 = try await restarted.complete(lp)
        let c2 = try await restarted.complete(lp)
        #expect(!c1.fromCache && c2.fromCache && c1.topLogprobs == c2.topLogprobs)
        #expect(try await server.stats().requests == 2)
        #expect(cache.records.map(\.outcome) == ["ok", "cache_hit", "cache_hit", "ok", "cache_hit"])
    }

    @Test("64 concurrent requests overlap, and connections are reused")
    func concurrency() async throws {
        let server = try await MockServer.start(["--latency-ms", "200"])
        defer { server.stop() }
        var config = testConfiguration(server)
        config.maxInFlight = 64
        let client = makeClient(config)
        defer { client.shutdown() }
        for round in 0..<2 {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<64 {
                    group.addTask {
                        let r = try await client.chat(explainRequest("round \(round) request \(i)"))
                        #expect(r.text == #"the token "cat""#)
                    }
                }
                try await group.waitForAll()
            }
        }
        let stats = try await server.stats()
        // Serial calls would never overlap; the mock saw many of them inside their 200 ms at once.
        #expect(stats.maxInFlight >= 16, "at most \(stats.maxInFlight) requests overlapped")
        #expect(stats.requests == 128)
        #expect(stats.connections <= 80, "keep-alive: \(stats.connections) connections for 128 requests")
    }

    @Test("random faults under concurrency: every call still succeeds, exactly once per key")
    func randomFaults() async throws {
        let server = try await MockServer.start([
            "--latency-ms", "20", "--fault-rate-500", "0.1", "--fault-rate-429", "0.03",
            "--fault-rate-malformed", "0.05", "--fault-rate-reset", "0.05", "--seed", "7",
        ])
        defer { server.stop() }
        let cache = MemoryCache()
        var config = testConfiguration(server, retries: 10)
        config.maxInFlight = 16
        let client = makeClient(config, cache: cache)
        defer { client.shutdown() }
        let texts = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<200 {
                group.addTask { try await client.chat(explainRequest("stress \(i)")).text }
            }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(texts.count == 200 && texts.allSatisfy { $0 == #"the token "cat""# })
        let stats = try await server.stats()
        // libcurl itself re-sends a request once on a fresh connection when a *reused* keep-alive
        // connection closes before any response byte (the mock's `reset`), so the server may count
        // a few more requests than the client's attempts.
        #expect(stats.requests >= client.statistics.requestsSent)
        #expect(stats.requests > 200)  // some faults happened and were retried
        #expect(cache.bodies.count == 200 && cache.storedRecords.count == 200)
        #expect(cache.records.filter { $0.outcome == "ok" }.count == 200)
    }

    @Test("maxInFlight bounds the requests in flight")
    func maxInFlight() async throws {
        let server = try await MockServer.start(["--latency-ms", "200"])
        defer { server.stop() }
        var config = testConfiguration(server)
        config.maxInFlight = 4
        let client = makeClient(config)
        defer { client.shutdown() }
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<12 {
                group.addTask { _ = try await client.chat(explainRequest("\(i)")) }
            }
            try await group.waitForAll()
        }
        #expect(start.duration(to: .now) >= .seconds(0.6))  // 3 waves of 4 × 200 ms
    }

    @Test("cancelling the calling task aborts the request")
    func cancellation() async throws {
        let server = try await MockServer.start(["--hang-seconds", "60"])
        defer { server.stop() }
        try await server.script(["hang"])
        let client = makeClient(testConfiguration(server, timeout: 120))
        defer { client.shutdown() }
        let start = ContinuousClock.now
        let task = Task { () async throws(LLMError) -> ChatResponse in try await client.chat(explainRequest()) }
        try await Task.sleep(for: .milliseconds(300))
        task.cancel()
        let result = await task.result
        #expect(throws: LLMError.cancelled) { try result.get() }
        // Far below the 60 s hang: the transfer was aborted, not waited out.
        #expect(start.duration(to: .now) < .seconds(30))
    }

    @Test("after shutdown, calls fail with .cancelled")
    func afterShutdown() async throws {
        let server = try await MockServer.start()
        defer { server.stop() }
        let client = makeClient(testConfiguration(server))
        client.shutdown()
        client.shutdown()
        await #expect(throws: LLMError.cancelled) { try await client.chat(explainRequest()) }
    }

    @Test("shutdown fails every queued and running request at once with a clear error")
    func shutdownFailsEveryPendingRequest() async throws {
        // Answers take 120 s, far beyond the bound below, so a loaded full-suite run (whose other tests can hold
        // the cooperative threads for seconds) cannot make a caller that waited for its answer look like one that did not.
        let server = try await MockServer.start(["--latency-ms", "120000"])
        defer { server.stop() }
        var config = testConfiguration(server, timeout: 300)
        config.maxInFlight = 2
        let client = makeClient(config)
        let start = ContinuousClock.now
        let outcomes = try await withThrowingTaskGroup(of: LLMError?.self) { group in
            for i in 0..<12 {
                group.addTask {
                    do throws(LLMError) { _ = try await client.chat(explainRequest("stop-\(i)")); return nil } catch { return error }
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            client.shutdown()
            var outcomes: [LLMError?] = []
            for try await outcome in group { outcomes.append(outcome) }
            return outcomes
        }
        #expect(outcomes.count == 12)
        #expect(outcomes.allSatisfy { $0 == .cancelled }, "\(outcomes)")
        #expect(LLMError.cancelled.description.contains("shut down"))
        // Far below the 120 s answers: every caller was failed by the stop, none waited for its answer.
        #expect(start.duration(to: .now) < .seconds(90))
    }

    @Test("preflight tells a wrong key, a wrong model and a stopped server apart")
    func preflightChecks() async throws {
        let server = try await MockServer.start(["--api-key", "k-right", "--models", "m1"])
        defer { server.stop() }
        let variable = "SAELABEL_TEST_PREFLIGHT_\(UInt32.random(in: 0...UInt32.max))"
        setEnvironment(variable, "k-right")
        var config = testConfiguration(server)
        config.apiKeyEnvironmentVariable = variable
        let client = makeClient(config)
        defer { client.shutdown() }
        #expect(client.hasAPIKey)
        try await client.preflight(model: "m1")
        try await client.preflight(model: "m1", completions: true)  // the logprob simulator's base models
        do {
            try await client.preflight(model: "m2")
            Issue.record("a model the server does not serve passed the check")
        } catch {
            guard case .http(404, _) = error else { Issue.record("expected 404, got \(error)"); return }
        }
        let keyless = makeClient(testConfiguration(server))
        defer { keyless.shutdown() }
        #expect(!keyless.hasAPIKey)
        do {
            try await keyless.preflight(model: "m1")
            Issue.record("a missing key passed the check")
        } catch {
            guard case .http(401, _) = error else { Issue.record("expected 401, got \(error)"); return }
        }
        let stats = try await server.stats()
        #expect(stats.requests == 0, "checks are not work requests")
        #expect(stats.checks == 4)
        server.stop()
        do {
            try await client.preflight(model: "m1")
            Issue.record("a stopped server passed the check")
        } catch {
            guard case .transport = error else { Issue.record("expected a transport error, got \(error)"); return }
        }
    }

    @Test("the API key is sent but appears in no error, record or cached body")
    func apiKeyNeverLeaks() async throws {
        let secret = "sk-test-SECRET-\(UInt64.random(in: 0...UInt64.max))"
        let variable = "SAELABEL_TEST_KEY_\(UInt32.random(in: 0...UInt32.max))"
        setEnvironment(variable, secret)
        let server = try await MockServer.start(["--hang-seconds", "2"])
        defer { server.stop() }
        let cache = MemoryCache()
        var config = testConfiguration(server, timeout: 0.3, retries: 1)
        config.apiKeyEnvironmentVariable = variable
        let client = makeClient(config, cache: cache)
        defer { client.shutdown() }

        var errors: [LLMError] = []
        for (i, script) in [["401"], ["500", "500"], ["hang", "hang"], ["malformed", "truncated"], ["reset", "reset"]]
            .enumerated() {
            try await server.script(script)
            do { _ = try await client.chat(explainRequest("case \(i)")) } catch { errors.append(error) }
        }
        #expect(errors.count == 5)
        _ = try await client.chat(explainRequest("ok"))
        _ = try await client.complete(CompletionRequest(model: "mock", prompt: "x y", maxTokens: 1))

        for e in errors {
            #expect(!e.description.contains(secret))
            #expect(!"\(e)".contains(secret) && !String(reflecting: e).contains(secret))
        }
        #expect(cache.records.count >= 11)
        for r in cache.records + cache.storedRecords {
            #expect(!String(reflecting: r).contains(secret))
        }
        #expect(cache.bodies.count == 2)
        for body in cache.bodies.values {
            #expect(body.range(of: Data(secret.utf8)) == nil)
        }
        #expect(try await server.stats().authSeen == ["Bearer \(secret)"])
    }
}

/// The hand-written request bodies are byte for byte what JSONSerialization wrote (sorted keys, no escaped
/// slashes), so every cache key stays what it was.
@Suite struct CanonicalBodyTests {
    /// The body as Wire built it before: a dictionary serialized by JSONSerialization.
    static func legacyChatBody(_ r: ChatRequest, server: LLMServer) throws -> Data {
        var body: [String: Any] = ["model": r.model, "messages": r.messages.map { ["role": $0.role, "content": $0.content] }]
        if server.isReasoningModel(r.model) {
            body["reasoning_effort"] = "low"
            if let maxTokens = r.maxTokens { body["max_completion_tokens"] = maxTokens + LLMServer.reasoningTokenAllowance }
        } else {
            body["temperature"] = r.temperature
            if let maxTokens = r.maxTokens { body[server.sendsMaxCompletionTokens ? "max_completion_tokens" : "max_tokens"] = maxTokens }
        }
        if let seed = r.seed { body["seed"] = seed }
        if let grammar = r.grammar { body["grammar"] = grammar }
        switch r.responseFormat {
        case .text: break
        case .jsonObject: body["response_format"] = ["type": "json_object"]
        case .jsonSchema(let name, let schema):
            let parsed = try JSONSerialization.jsonObject(with: Data(schema.utf8))
            body["response_format"] = server == .llamaCppPython
                ? ["type": "json_object", "schema": parsed]
                : ["type": "json_schema", "json_schema": ["name": name, "schema": parsed, "strict": true] as [String: Any]]
        }
        return try Wire.canonicalJSON(body)
    }

    static let texts = ["", "plain", "hi/there \"quoted\" back\\slash", "tab\tnew\nline\r\u{8}\u{c}\u{0}\u{b}\u{1f}\u{7f}",
                        "café 日本 🚀 \u{2028}\u{2029} e\u{301}", "<script>&amp;</script>", "{\"json\": [1, 2]}"]

    @Test func chatBodiesMatchJSONSerialization() throws {
        let schema = #"{"type":"object","properties":{"b":{"type":"integer"},"A":{"type":"string"},"item10":{},"item9":{},"_x":{}},"required":["b"],"additionalProperties":false,"n":1.5}"#
        let formats: [ResponseFormat] = [.text, .jsonObject, .jsonSchema(name: "answer", schema: schema)]
        var checked = 0
        for server in LLMServer.allCases {
            for model in ["smollm2", "gpt-4.1-mini", "o3-mini", "gpt-5"] {
                for (index, text) in Self.texts.enumerated() {
                    for format in formats {
                        let request = ChatRequest(model: model + text.prefix(index % 2), messages: [
                            ChatMessage(role: "system", content: text), ChatMessage(role: "user", content: "say: " + text),
                        ], temperature: [0, 0.7, 1, 1e-5, 123.25][index % 5], maxTokens: index % 3 == 0 ? nil : 40 * index,
                           responseFormat: format, grammar: server.isLlamaCpp && index % 2 == 1 ? "root ::= \"a\" | \"b/c\"\n" : nil,
                           seed: index % 2 == 0 ? index : nil)
                        let written = try Wire.chatBody(request, server: server)
                        let legacy = try Self.legacyChatBody(request, server: server)
                        #expect(written == legacy, "\(server) \(model) \(format): \(String(decoding: written, as: UTF8.self)) vs \(String(decoding: legacy, as: UTF8.self))")
                        checked += 1
                    }
                }
            }
        }
        #expect(checked == LLMServer.allCases.count * 4 * Self.texts.count * 3)
        #expect(throws: LLMError.self) { try Wire.chatBody(ChatRequest(model: "m", messages: [], temperature: .nan), server: .openai) }
    }

    @Test func completionBodiesMatchJSONSerialization() throws {
        for (index, text) in Self.texts.enumerated() {
            let request = CompletionRequest(model: "m/" + text, prompt: text, maxTokens: index, echo: index % 2 == 0,
                                            logprobs: index % 3 == 0 ? nil : index, temperature: [0, 0.5, 2][index % 3])
            var body: [String: Any] = ["model": request.model, "prompt": request.prompt, "max_tokens": request.maxTokens,
                                       "echo": request.echo, "temperature": request.temperature]
            if let logprobs = request.logprobs { body["logprobs"] = logprobs }
            #expect(try Wire.completionBody(request) == Wire.canonicalJSON(body))
        }
    }
}
