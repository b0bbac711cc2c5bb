import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Synchronization

/// Helpers every test target shares: temporary folders, the repository root, running processes
/// without blocking Swift's cooperative thread pool, and the mock OpenAI-compatible server.

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A fresh folder per test, removed at deinit.
public final class TempDirectory: @unchecked Sendable {
    public let url: URL
    public var path: String { url.path }

    public init() {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("saelabel-test-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    /// The path of `name` inside the folder.
    public func file(_ name: String) -> String { url.appendingPathComponent(name).path }

    /// Writes `text` to `name` (creating folders) and returns its path.
    @discardableResult
    public func write(_ name: String, _ text: String) throws -> String {
        let file = url.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: file)
        return file.path
    }

    deinit { try? FileManager.default.removeItem(at: url) }
}

public enum Repository {
    /// The checkout holding the tests.
    public static let root: URL = {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
        }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
    }()
}

/// Serialises what reads or writes the process environment (spawning a child copies it, setenv
/// changes it): glibc's setenv is not safe against concurrent readers, and tests run in parallel.
public let environmentLock = Mutex(())

public struct ProcessResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// Runs a program to completion on a GCD thread, so a test waiting for a child process never
/// blocks the cooperative pool (2 threads on a 2-core machine) that every other test needs.
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                       currentDirectory: String? = nil) async throws -> ProcessResult {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            do {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: executable)
                process.arguments = arguments
                if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
                let out = Pipe()
                let err = Pipe()
                process.standardOutput = out
                process.standardError = err
                try environmentLock.withLock { _ in
                    var env = ProcessInfo.processInfo.environment
                    for (key, value) in environment { env[key] = value }
                    process.environment = env
                    try process.run()
                }
                // Drain stderr on its own thread so a chatty child never blocks on a full pipe.
                let errData = Mutex(Data())
                let errDone = DispatchSemaphore(value: 0)
                DispatchQueue.global().async {
                    let data = err.fileHandleForReading.readDataToEndOfFile()
                    errData.withLock { $0 = data }
                    errDone.signal()
                }
                let outData = out.fileHandleForReading.readDataToEndOfFile()
                errDone.wait()
                process.waitUntilExit()
                continuation.resume(returning: ProcessResult(
                    status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                    stderr: String(decoding: errData.withLock { $0 }, as: UTF8.self)))
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }
}

/// Runs Tools/mock_llm_server.py on a free port of 127.0.0.1 for the lifetime of one test.
public final class MockLLMServer: @unchecked Sendable {  // the Process is touched only in start and stop
    private let process: Process
    public let port: Int
    public var baseURL: String { "http://127.0.0.1:\(port)/v1" }
    public var root: String { "http://127.0.0.1:\(port)" }

    private init(process: Process, port: Int) {
        self.process = process
        self.port = port
    }

    /// Starts the mock with extra command-line options (latency, fault rates, seed, `--dialect`).
    public static func start(_ arguments: [String] = []) async throws -> MockLLMServer {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Repository.root.appendingPathComponent("Tools/mock_llm_server.py").path,
                             "--port", "0"] + arguments
        let out = Pipe()
        process.standardOutput = out
        try environmentLock.withLock { _ in try process.run() }
        let line = await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
            DispatchQueue.global().async {
                var buffer = Data()
                while !buffer.contains(UInt8(ascii: "\n")) {
                    let chunk = out.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    buffer.append(chunk)
                }
                continuation.resume(returning: String(decoding: buffer, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
        guard line.hasPrefix("LISTENING "), let port = Int(line.dropFirst("LISTENING ".count)) else {
            kill(process.processIdentifier, SIGKILL)
            throw TestFailure("mock server did not start: \(line)")
        }
        return MockLLMServer(process: process, port: port)
    }

    public func stop() {
        guard process.isRunning else { return }
        // SIGKILL: handler threads may be sleeping in a "hang" fault.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { stop() }

    private func send(_ path: String, body: Any?) async throws -> Data {
        var request = URLRequest(url: URL(string: root + path)!)
        if let body {
            request.httpMethod = "POST"
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        return try await URLSession.shared.data(for: request).0
    }

    /// Replaces the mock's fault script (see the header of Tools/mock_llm_server.py).
    public func script(_ faults: [String]) async throws {
        _ = try await send("/_control", body: ["script": faults])
    }

    public struct Stats: Sendable {
        /// /v1 requests received.
        public var requests: Int
        public var byOutcome: [String: Int]
        /// Distinct Authorization header values seen.
        public var authSeen: [String]
        public var connections: Int
        /// Most /v1 requests the mock was serving at once.
        public var maxInFlight: Int
        /// One line per request the mock's dialect refused (`--dialect`).
        public var refused: [String] = []
        /// Request fields the dialect's server would have ignored.
        public var ignored: [String] = []
        /// Endpoint checks (a one-token request), not counted in `requests`.
        public var checks: Int = 0
        /// Requests per kind (explain, simulate, detect, logprobs, chat, completion, check).
        public var byKind: [String: Int] = [:]
        /// Batch API: files uploaded, batches created, polls, and request lines over all created batches
        /// (all and distinct custom_ids: equal when no request was submitted twice).
        public var uploads = 0
        public var batchesCreated = 0
        public var batchPolls = 0
        public var batchCustomIDs = 0
        public var batchCustomIDsDistinct = 0
    }

    public func stats() async throws -> Stats {
        let data = try await send("/_stats", body: nil)
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TestFailure("bad /_stats answer")
        }
        return Stats(requests: object["requests"] as? Int ?? -1, byOutcome: object["by_outcome"] as? [String: Int] ?? [:],
                     authSeen: object["auth_seen"] as? [String] ?? [], connections: object["connections"] as? Int ?? -1,
                     maxInFlight: object["max_in_flight"] as? Int ?? -1, refused: object["refused"] as? [String] ?? [],
                     ignored: object["ignored"] as? [String] ?? [], checks: object["checks"] as? Int ?? -1,
                     byKind: object["by_kind"] as? [String: Int] ?? [:], uploads: object["uploads"] as? Int ?? -1,
                     batchesCreated: object["batches_created"] as? Int ?? -1, batchPolls: object["batch_polls"] as? Int ?? -1,
                     batchCustomIDs: object["batch_custom_ids"] as? Int ?? -1,
                     batchCustomIDsDistinct: object["batch_custom_ids_distinct"] as? Int ?? -1)
    }

    /// Zeroes the counters (not the fault script).
    public func resetStats() async throws {
        _ = try await send("/_reset_stats", body: [String: Int]())
    }

    public func requestCount() async throws -> Int {
        try await stats().requests
    }
}

/// The mock's token → activation rule, reimplemented: FNV-1a 32-bit over the UTF-8 bytes, modulo 11.
public func mockActivation(_ token: String) -> Int {
    var hash: UInt32 = 0x811c9dc5
    for byte in token.utf8 {
        hash ^= UInt32(byte)
        hash = hash &* 0x01000193
    }
    return Int(hash % 11)
}
