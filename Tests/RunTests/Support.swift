import Foundation
import TestSupport

enum SAELabelBinary {
    /// The `saelabel` executable built beside the tests (`swift build` puts products in one folder).
    static var path: String {
        if let explicit = ProcessInfo.processInfo.environment["SAELABEL_BIN"] { return explicit }
        let bundleFolder = Bundle.main.bundleURL.deletingLastPathComponent()
        let candidates = [bundleFolder.appendingPathComponent("saelabel").path,
                          Repository.root.appendingPathComponent(".build/debug/saelabel").path]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[1]
    }
}

/// Runs the real `saelabel` binary, as a user or a cron job would.
func runSAELabel(_ arguments: [String], environment: [String: String] = [:]) async throws -> ProcessResult {
    try await runProcess(SAELabelBinary.path, arguments, environment: environment)
}

/// Starts `saelabel` without waiting, for the crash test.
func startSAELabel(_ arguments: [String]) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: SAELabelBinary.path)
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try environmentLock.withLock { _ in try process.run() }
    return process
}


/// Reads a catalog JSONL export into one dictionary per line.
func readCatalog(_ path: String) throws -> [[String: Any]] {
    let text = try String(contentsOfFile: path, encoding: .utf8)
    return try text.split(separator: "\n").map {
        try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] ?? [:]
    }
}

/// Paths where two parsed JSON values differ; numbers within a relative 1e-5 count as equal.
func catalogDifferences(_ a: Any?, _ b: Any?, path: String) -> [String] {
    switch (a, b) {
    case let (x as [String: Any], y as [String: Any]):
        return Set(x.keys).union(y.keys).sorted().flatMap { catalogDifferences(x[$0], y[$0], path: "\(path).\($0)") }
    case let (x as [Any], y as [Any]):
        guard x.count == y.count else { return ["\(path): \(x.count) vs \(y.count) elements"] }
        return zip(x, y).enumerated().flatMap { catalogDifferences($1.0, $1.1, path: "\(path)[\($0)]") }
    case let (x as String, y as String):
        return x == y ? [] : ["\(path): \(x) vs \(y)"]
    case let (x as NSNumber, y as NSNumber):
        let (u, v) = (x.doubleValue, y.doubleValue)
        return abs(u - v) <= 1e-5 * max(abs(u), abs(v), 1e-12) ? [] : ["\(path): \(u) vs \(v)"]
    case (is NSNull, is NSNull), (nil, nil):
        return []
    default:
        return ["\(path): \(String(describing: a)) vs \(String(describing: b))"]
    }
}
