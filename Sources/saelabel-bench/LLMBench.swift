import Foundation
import LLMClient
import Logging

/// LLM client throughput benchmark against the mock server (Tools/mock_llm_server.py).
///
///     saelabel-bench llm [--requests 1280] [--concurrency 64] [--latency-ms 200]
///                        [--mock PATH/TO/mock_llm_server.py] [--endpoint URL]
///
/// Launches the mock with a fixed per-request latency (unless --endpoint points at a running
/// server), warms up one request per connection (not counted), then keeps `concurrency` requests
/// in flight until `requests` distinct chat requests are done (no cache). Ideal throughput is
/// concurrency / latency; the ratio shows what the client and mock lose to overhead.
func runLLMBenchmark(requests requested: Int, concurrency requestedConcurrency: Int, latencyMs: Double,
                     mockPath: String?, endpoint: String?) async {
    var requests = requested
    var concurrency = requestedConcurrency
    requests = max(1, requests)
    concurrency = max(1, concurrency)
    let inFlight = concurrency

    var mock: Process? = nil
    defer {
        if let mock, mock.isRunning {
            kill(mock.processIdentifier, SIGKILL)
            mock.waitUntilExit()
        }
    }
    let baseURL: String
    if let endpoint {
        baseURL = endpoint
    } else {
        let script = mockPath ?? locateMockServer()
        guard let script else {
            FileHandle.standardError.write(Data("llm bench: cannot find Tools/mock_llm_server.py; pass --mock PATH\n".utf8))
            return
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", script, "--port", "0", "--latency-ms", String(latencyMs)]
        let out = Pipe()
        p.standardOutput = out
        do { try p.run() } catch {
            FileHandle.standardError.write(Data("llm bench: cannot start python3 \(script): \(error)\n".utf8))
            return
        }
        mock = p
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.hasPrefix("LISTENING "), let port = Int(text.dropFirst(10)) else {
            FileHandle.standardError.write(Data("llm bench: mock server did not start (\(text))\n".utf8))
            return
        }
        baseURL = "http://127.0.0.1:\(port)/v1"
    }

    var logger = Logger(label: "saelabel.bench.llm")
    logger.logLevel = .error
    let configuration = LLMClientConfiguration(baseURL: baseURL, maxInFlight: concurrency, requestTimeout: 60,
                                               maxRetries: 2)
    let client = LLMClient(configuration: configuration, cache: nil, logger: logger)
    defer { client.shutdown() }

    @Sendable func request(_ n: Int, _ phase: String) -> ChatRequest {
        ChatRequest(model: "mock", messages: [
            ChatMessage(role: "system", content: "You explain what a neuron in a language model detects."),
            ChatMessage(role: "user", content: "<start>\n the\t0\n import\t9\n numpy\t3\n as\t0\n np\t1\n<end>\n\(phase) \(n)"),
        ], maxTokens: 40)
    }

    // Keeps `concurrency` requests in flight; returns per-request latencies and failures.
    func run(_ count: Int, _ phase: String) async -> (latencies: [Double], failures: Int) {
        await withTaskGroup(of: ([Double], Int).self) { group in
            for worker in 0..<min(inFlight, count) {
                group.addTask {
                    var latencies: [Double] = []
                    var failures = 0
                    for n in stride(from: worker, to: count, by: inFlight) {
                        let start = ContinuousClock.now
                        do { _ = try await client.chat(request(n, phase)) } catch { failures += 1 }
                        let d = start.duration(to: .now)
                        latencies.append(Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18)
                    }
                    return (latencies, failures)
                }
            }
            var all: [Double] = []
            var failures = 0
            for await (l, f) in group {
                all += l
                failures += f
            }
            return (all, failures)
        }
    }

    _ = await run(concurrency, "warmup")
    let sentBefore = client.statistics.requestsSent
    let cpuBefore = processCPUSeconds()
    let start = ContinuousClock.now
    let (latencies, failures) = await run(requests, "bench")
    let wall = start.duration(to: .now)
    let cpu = processCPUSeconds() - cpuBefore
    let wallSeconds = Double(wall.components.seconds) + Double(wall.components.attoseconds) * 1e-18
    let sent = client.statistics.requestsSent - sentBefore

    let sorted = latencies.sorted()
    func percentile(_ p: Double) -> Double {
        sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int((p * Double(sorted.count)).rounded(.up)) - 1)]
    }
    let achieved = Double(requests) / wallSeconds
    let ideal = endpoint == nil ? Double(concurrency) / (latencyMs / 1000) : .nan
    func f(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
    print("LLM client benchmark (\(endpoint == nil ? "mock server, \(f(latencyMs, 0)) ms latency" : baseURL))")
    print("  requests            \(requests) chat, \(concurrency) in flight, \(failures) failed, \(sent) HTTP attempts")
    print("  wall time           \(f(wallSeconds, 2)) s")
    print("  achieved            \(f(achieved)) req/s")
    if endpoint == nil {
        print("  ideal               \(f(ideal)) req/s (concurrency / latency)")
        print("  ratio               \(f(achieved / ideal, 3))")
    }
    print("  client CPU/request  \(f(cpu / Double(requests) * 1e6, 0)) µs (process user+sys CPU / requests; the mock runs in another process)")
    print("  latency p50 / p99   \(f(percentile(0.5) * 1000)) ms / \(f(percentile(0.99) * 1000)) ms")
}

/// Finds Tools/mock_llm_server.py relative to this source file or the working directory.
private func locateMockServer() -> String? {
    let fromSource = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Tools/mock_llm_server.py").path
    for candidate in [fromSource, FileManager.default.currentDirectoryPath + "/Tools/mock_llm_server.py"]
    where FileManager.default.fileExists(atPath: candidate) {
        return candidate
    }
    return nil
}

/// User + system CPU time of this process so far (getrusage RUSAGE_SELF).
private func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
