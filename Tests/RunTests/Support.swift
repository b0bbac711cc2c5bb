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
        // Within 1e-5, relative for numbers above 1 and absolute below (Python's math.isclose with rel_tol and
        // abs_tol 1e-5, as Tools/compare_catalogs.py): a correlation near 0 differs by 3e-8 when activations differ
        // in their last bits, which is 1e-5 of 0.003.
        return abs(u - v) <= 1e-5 * max(abs(u), abs(v), 1) ? [] : ["\(path): \(u) vs \(v)"]
    case (is NSNull, is NSNull), (nil, nil):
        return []
    default:
        return ["\(path): \(String(describing: a)) vs \(String(describing: b))"]
    }
}

/// What a store's call log says was paid for: per request (response-cache key), how many server answers reached
/// the store, and how many attempts failed (a retry repeats each). A kill -9 may lose answers the store never
/// got; no run may pay again for an answer the store already holds (each key answered once).
struct PaidCalls {
    var answersPerKey: [String: Int]
    var failedAttempts: Int
    /// Explain requests the response cache answered (no server call).
    var explainCacheHits: Int

    var answeredTwice: [String] { answersPerKey.filter { $0.value > 1 }.map(\.key).sorted() }

    static func read(store: String) async throws -> PaidCalls {
        let query = try await runProcess("/usr/bin/env", ["python3", "-c", """
            import json, sqlite3, sys
            db = sqlite3.connect(sys.argv[1])
            answered = dict(db.execute("SELECT key, COUNT(*) FROM llm_call WHERE outcome = 'ok' GROUP BY key"))
            failed = db.execute("SELECT COUNT(*) FROM llm_call WHERE outcome NOT IN ('ok', 'cache_hit')").fetchone()[0]
            hits = db.execute("SELECT COUNT(*) FROM llm_call WHERE outcome = 'cache_hit' AND tag LIKE 'explain%'").fetchone()[0]
            print(json.dumps({"answered": answered, "failed": failed, "explain_hits": hits}))
            """, store])
        guard query.status == 0,
              let object = try JSONSerialization.jsonObject(with: Data(query.stdout.utf8)) as? [String: Any],
              let answered = object["answered"] as? [String: Int], let failed = object["failed"] as? Int,
              let hits = object["explain_hits"] as? Int
        else { throw TestFailure("reading the call log of \(store) failed: \(query.stderr)") }
        return PaidCalls(answersPerKey: answered, failedAttempts: failed, explainCacheHits: hits)
    }
}
