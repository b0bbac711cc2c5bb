import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport
import Testing

/// What nightly operators do to a store, on the real binary, the demo data and the mock server:
/// overlapping runs, a growing feature range, bad activation files, a collect killed half-way.
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct NightlyTests {
    @Test func fourConcurrentRunsOnOneStorePayForTheWorkOnce() async throws {
        let concurrency = 4
        let reference = TempDirectory()
        let referenceMock = try await MockLLMServer.start(["--latency-ms", "30"])
        let referenceJob = try Demo.job(reference, endpoint: referenceMock.baseURL, features: "0..16", concurrency: concurrency)
        #expect(try await runSAELabel(["run", "--config", referenceJob, "--quiet"]).status == 0)
        let need = try await referenceMock.requestCount()

        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--latency-ms", "30"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..16", concurrency: concurrency)
        let results = try await withThrowingTaskGroup(of: ProcessResult.self) { group in
            for _ in 0..<4 { group.addTask { try await runSAELabel(["run", "--config", job, "--quiet"]) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.contains { $0.status == 0 })
        for result in results where result.status != 0 {
            // The only other outcome: refused at once because another run holds the store.
            #expect(result.status == 3, "\(result.stderr)")
            #expect(result.stderr.contains("is busy: saelabel pid "), "\(result.stderr)")
        }
        let made = try await mock.requestCount()
        #expect(made >= need && made <= need + concurrency, "made \(made) calls for a need of \(need)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        let labelable = try store.features(in: [.collected, .explained, .scored, .failed, .pending])
        #expect(!labelable.isEmpty)
        for feature in labelable {
            #expect(try store.feature(feature)?.state == .scored, "feature \(feature)")
            #expect(try store.explanations(feature: feature).count == 1, "feature \(feature) has one explanation")
        }
    }

    @Test func aBusyStoreRefusesMutatingCommandsAndAKilledHolderFreesIt() async throws {
        let dir = TempDirectory()
        // Slow answers keep the holder busy (about a minute) while the other commands are refused.
        let mock = try await MockLLMServer.start(["--latency-ms", "1500"])
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8", concurrency: 1)
        let storePath = dir.file("job.sqlite")
        let holder = try startSAELabel(["run", "--config", job, "--quiet"])
        defer { if holder.isRunning { kill(holder.processIdentifier, SIGKILL) } }
        let named = "pid \(holder.processIdentifier) on "
        for _ in 0..<3000 where !lockText(storePath).hasPrefix(named) && holder.isRunning {
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        #expect(lockText(storePath).hasPrefix(named), "lock file: \(lockText(storePath))")
        let demo = Demo.folder.path
        let mutating: [[String]] = [
            ["run", "--config", job, "--quiet"],
            ["collect", "--db", storePath, "--sae", "\(demo)/sae", "--activations", "\(demo)/activations.safetensors",
             "--tokenizer", "\(demo)/tokenizer.json", "--features", "0..8"],
            ["explain", "--db", storePath, "--endpoint", mock.baseURL, "--model", "mock"],
            ["score", "--db", storePath, "--endpoint", mock.baseURL, "--model", "mock"],
            ["merge", "--into", storePath, storePath],
            ["batch", "import", "--db", storePath, dir.file("results.jsonl")],
            ["prune", "--db", storePath],
        ]
        for arguments in mutating {
            let result = try await runSAELabel(arguments)
            let lines = result.stderr.split(separator: "\n")
            #expect(result.status == 3, "\(arguments[0]): \(result.stderr)")
            #expect(lines.count == 1 && lines[0].contains("is busy: saelabel \(named)") && lines[0].contains(" since "),
                    "\(arguments[0]): \(result.stderr)")
        }
        // Read-only commands keep working during the run.
        #expect(try await runSAELabel(["status", "--db", storePath]).status == 0)
        let export = try await runSAELabel(["export", "--db", storePath, "--format", "catalog", "--out", dir.file("during.jsonl")])
        #expect(export.status == 0, "\(export.stderr)")

        #expect(holder.isRunning, "the holder finished before the refusals were checked")
        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        let fastMock = try await MockLLMServer.start(["--latency-ms", "2"])
        let fastJob = try Demo.job(dir, endpoint: fastMock.baseURL, features: "0..8", concurrency: 1)
        let next = try await runSAELabel(["run", "--config", fastJob, "--quiet"])
        #expect(next.status == 0, "a run killed with -9 must not block the next: \(next.stderr)")
        let store = try JobStore(path: storePath)
        #expect(try store.features(in: [.collected, .explained, .pending, .failed]).isEmpty)
    }

    @Test func wideningTheRangeKeepsFinishedFeaturesAndPaysOnlyForNewOnes() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--latency-ms", "2"])
        let narrow = try Demo.job(dir, endpoint: mock.baseURL, features: "0..32")
        #expect(try await runSAELabel(["run", "--config", narrow, "--quiet"]).status == 0)
        let firstCalls = try await mock.requestCount()
        let store = dir.file("job.sqlite")
        let before = try await featureContent(store, below: 32)
        #expect(before.contains("scored"))

        let wide = try Demo.job(dir, endpoint: mock.baseURL, features: "0..64")
        let result = try await runSAELabel(["run", "--config", wide, "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try await featureContent(store, below: 32) == before, "features 0..31 were touched")
        let wideCalls = try await mock.requestCount() - firstCalls

        // What 32..63 alone cost on a fresh store.
        let alone = TempDirectory()
        let aloneMock = try await MockLLMServer.start(["--latency-ms", "2"])
        #expect(try await runSAELabel(["run", "--config", try Demo.job(alone, endpoint: aloneMock.baseURL, features: "32..64"),
                                       "--quiet"]).status == 0)
        let need = try await aloneMock.requestCount()
        #expect(need > 0)
        #expect(wideCalls == need, "widening made \(wideCalls) calls; 32..63 alone need \(need)")
        let states = try await rows(store, "SELECT state, count(*) FROM feature WHERE id >= 32 GROUP BY state")
        #expect(!states.contains("pending") && !states.contains("collected"), "\(states)")
    }

    @Test func nonFiniteActivationsChangeNothingAndTheFixedFileNeedsNoNewVersion() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start(["--latency-ms", "2"])
        let activations = dir.file("activations.safetensors")
        let good = try Data(contentsOf: Demo.folder.appendingPathComponent("activations.safetensors"))
        func job(_ store: String) throws -> String {
            let path = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8", store: store)
            let text = try String(contentsOfFile: path, encoding: .utf8)
                .replacingOccurrences(of: Demo.folder.appendingPathComponent("activations.safetensors").path, with: activations)
                .replacingOccurrences(of: "min_activating_windows = 3", with: "min_activating_windows = 3\nexclude_positions = [0]")
            return try dir.write("\(store).toml", text)
        }
        func badFile() throws {
            try good.write(to: URL(fileURLWithPath: activations))
            try setActivation(activations, sequence: 5, position: 10, dimension: 3, to: .nan)
        }

        // A finished store, then a new version whose activations hold a NaN on an included token.
        try good.write(to: URL(fileURLWithPath: activations))
        let finished = try job("finished.sqlite")
        #expect(try await runSAELabel(["run", "--config", finished, "--quiet"]).status == 0)
        let before = try await dump(dir.file("finished.sqlite"))
        try badFile()
        let refused = try await runSAELabel(["run", "--config", finished, "--new-version", "--quiet"])
        #expect(refused.status == 2)
        #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        for part in [activations, "sequence 5", "position 10"] { #expect(refused.stderr.contains(part), "\(refused.stderr)") }
        #expect(try await dump(dir.file("finished.sqlite")) == before, "the refused run changed the store")

        // A fresh store: the refused run leaves it as empty as a new store, and the fixed file (with an
        // Inf on an excluded position-0 token, which is ignored) then runs without --new-version.
        let fresh = try job("fresh.sqlite")
        #expect(try await runSAELabel(["run", "--config", fresh, "--quiet"]).status == 2)
        let empty = dir.file("empty.sqlite")
        _ = try JobStore(path: empty)
        #expect(try await dump(dir.file("fresh.sqlite")) == dump(empty))
        try good.write(to: URL(fileURLWithPath: activations))
        try setActivation(activations, sequence: 7, position: 0, dimension: 0, to: .infinity)
        let fixed = try await runSAELabel(["run", "--config", fresh, "--quiet"])
        #expect(fixed.status == 0, "\(fixed.stderr)")
        #expect(try await rows(dir.file("fresh.sqlite"), "SELECT count(*) FROM feature WHERE state = 'scored'") != "0")
    }

    @Test func aCollectKilledMidWayResumesWithoutRedoingFinishedBlocks() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start()
        // ~0.05 MiB per block holds a few demo features, so 48 features take many blocks.
        let blocked = try Demo.job(dir, endpoint: mock.baseURL, features: "0..48")
        let text = try String(contentsOfFile: blocked, encoding: .utf8)
            .replacingOccurrences(of: "min_activating_windows = 3", with: "min_activating_windows = 3\nmemory_mb = 0.05")
        let job = try dir.write("blocked.toml", text)
        let store = dir.file("job.sqlite")
        let process = try startSAELabel(["run", "--config", job, "--stage", "collect", "--quiet"])
        var done = 0
        while process.isRunning {
            done = Int(try await rows(store, "SELECT count(*) FROM feature WHERE state != 'pending'")) ?? 0
            if done > 0 { break }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let ids = try await rows(store, "SELECT id FROM feature WHERE state != 'pending'").split(separator: "\n").joined(separator: ",")
        let committed = "SELECT f.id, f.state, f.updated_at, e.id FROM feature f LEFT JOIN example e ON e.feature = f.id WHERE f.id IN (\(ids)) ORDER BY f.id, e.id"
        let atKill = try await rows(store, committed)
        let finishedAtKill = ids.split(separator: ",").count
        #expect(finishedAtKill > 0 && finishedAtKill < 48, "the kill should land between blocks (\(finishedAtKill) of 48 collected)")

        let resumed = try await runSAELabel(["run", "--config", job, "--stage", "collect", "--quiet"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try await rows(store, "SELECT count(*) FROM feature WHERE state = 'pending'") == "0")
        // The blocks committed before the kill are untouched: same rows, same example ids, same timestamps.
        #expect(try await rows(store, committed) == atKill)

        // And the result is the one an uninterrupted single-block collect gives.
        let whole = TempDirectory()
        let wholeJob = try Demo.job(whole, endpoint: mock.baseURL, features: "0..48")
        #expect(try await runSAELabel(["run", "--config", wholeJob, "--stage", "collect", "--quiet"]).status == 0)
        let selection = """
            SELECT f.id, f.state, e.split, e.kind, e.ordinal, w.sequence, w.start, w.tokens
            FROM feature f LEFT JOIN example e ON e.feature = f.id LEFT JOIN text_window w ON w.id = e.text_window
            ORDER BY f.id, e.split, e.ordinal
            """
        #expect(try await rows(store, selection) == rows(whole.file("job.sqlite"), selection))
    }

    @Test func jobFilesWithControlCharactersOrABadMemoryBudgetAreRefusedInOneLine() async throws {
        let dir = TempDirectory()
        let mock = try await MockLLMServer.start()
        let good = try String(contentsOfFile: try Demo.job(dir, endpoint: mock.baseURL, features: "0..4"), encoding: .utf8)
        // A form feed in a table header made toml++ abort the process (found by Fuzz/, see RELIABILITY.md).
        let cases = [("formfeed.toml", good.replacingOccurrences(of: "[explainer]", with: "[\u{0C}\u{0C}explainer]"), "U+000C"),
                     ("hash.toml", good.replacingOccurrences(of: "[explainer]", with: "[# explainer]"), "table header"),
                     ("bracket.toml", good.replacingOccurrences(of: "activations = [", with: "activations = [}"), "does not close"),
                     ("memory.toml", good.replacingOccurrences(of: "window = 16", with: "window = 16\nmemory_mb = 0"), "memory_mb"),
                     ("memory-gb.toml", good.replacingOccurrences(of: "window = 16", with: "window = 16\nmemory_gb = -1"), "memory_gb"),
                     ("memory-both.toml", good.replacingOccurrences(of: "window = 16", with: "window = 16\nmemory_mb = 256\nmemory_gb = 1"),
                      "either memory_mb or memory_gb")]
        for (name, text, mention) in cases {
            let result = try await runSAELabel(["run", "--config", try dir.write(name, text), "--dry-run"])
            #expect(result.status == 2, "\(name): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.contains(mention), "\(name): \(result.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir.file("job.sqlite")))
        // Arrays spread over lines are not mistaken for table headers.
        let activations = Demo.folder.appendingPathComponent("activations.safetensors").path
        let spread = good.replacingOccurrences(of: "activations = [\"\(activations)\"]", with: "activations = [\n  \"\(activations)\",\n]")
        #expect(spread != good)
        let accepted = try await runSAELabel(["run", "--config", try dir.write("spread.toml", spread), "--dry-run"])
        #expect(accepted.status == 0, "\(accepted.stderr)")

        // A tokenizer.json with one absurd id is refused instead of allocating a table that large (found by Fuzz/).
        let tokenizer = try dir.write("tokenizer.json", #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 127777777777777777}, "merges": []}}"#)
        let collect = try await runSAELabel(["collect", "--db", dir.file("tok.sqlite"), "--sae", Demo.folder.appendingPathComponent("sae").path,
                                             "--activations", activations, "--tokenizer", tokenizer])
        #expect(collect.status == 2 && collect.stderr.contains("far beyond"), "\(collect.stderr)")
    }

    @Test func exampleActivationsAreStoredAsRawFloat32() async throws {
        let dir = TempDirectory()
        // A 2-feature identity SAE: feature f's activation on a token is the token's dimension f.
        try writeFloat32Safetensors(dir.file("sae/sae_weights.safetensors"), [
            ("W_enc", [2, 2], [1, 0, 0, 1]), ("b_enc", [2], [0, 0]), ("W_dec", [2, 2], [1, 0, 0, 1]), ("b_dec", [2], [0, 0]),
        ])
        try dir.write("sae/cfg.json", #"{"d_in": 2, "d_sae": 2, "architecture": "standard", "apply_b_dec_to_input": false, "hook_name": "h", "model_name": "m"}"#)
        let values: [Float] = [100_000, 70_000.5, 1.5e6, 3.25, 65_505, 0.001]
        var activations = [Float](repeating: 0, count: 2 * 16 * 2)
        for (index, value) in values.enumerated() { activations[(index * 5 + 1) * 2] = value }
        try writeFloat32Safetensors(dir.file("acts.safetensors"), [("activations", [2, 16, 2], activations)],
                                    tokens: ("tokens", [2, 16], (0..<32).map { 1000 + $0 }))
        let result = try await runSAELabel(["collect", "--db", dir.file("job.sqlite"), "--sae", dir.file("sae"),
                                            "--activations", dir.file("acts.safetensors"),
                                            "--tokenizer", Demo.folder.appendingPathComponent("tokenizer.json").path,
                                            "--window", "4"])
        #expect(result.status == 0, "\(result.stderr)")
        let store = try JobStore(path: dir.file("job.sqlite"))
        let stored = try store.examples(feature: 0).flatMap(\.window.activations).filter { $0 != 0 }
        #expect(Set(stored).isSuperset(of: values), "stored \(stored)")
        #expect(try store.feature(0)?.statistics?.maxActivation == 1.5e6)
    }
}

// MARK: - Helpers

/// The holder line of a store's lock file ("" when absent).
func lockText(_ store: String) -> String {
    (try? String(contentsOfFile: StoreLock.lockPath(store: store), encoding: .utf8)) ?? ""
}

/// Runs `sql` on a store with Python's sqlite3 (the SQLite library itself, not saelabel's code) and returns
/// the rows, one per line, columns separated by tabs; "" when the store or its tables do not exist yet.
func rows(_ store: String, _ sql: String) async throws -> String {
    let script = """
        import sqlite3, sys
        try:
            rows = sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchall()
        except sqlite3.OperationalError:
            rows = []
        print("\\n".join("\\t".join(str(v) for v in row) for row in rows))
        """
    let result = try await runProcess("/usr/bin/env", ["python3", "-c", script, store, sql])
    guard result.status == 0 else { throw TestFailure("sqlite3: \(result.stderr)") }
    return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// Every row of every table of a store, as SQL (sqlite3's iterdump).
func dump(_ store: String) async throws -> String {
    let result = try await runProcess("/usr/bin/env", ["python3", "-c",
        "import sqlite3, sys\nprint('\\n'.join(sqlite3.connect(sys.argv[1]).iterdump()))", store])
    guard result.status == 0 else { throw TestFailure("sqlite3: \(result.stderr)") }
    return result.stdout
}

/// Everything the store holds about features below `limit`: feature rows, examples, labels, scores.
func featureContent(_ store: String, below limit: Int) async throws -> String {
    var parts: [String] = []
    for sql in ["SELECT * FROM feature WHERE id < \(limit) ORDER BY id", """
                SELECT e.*, w.sequence, w.start, w.tokens FROM example e JOIN text_window w ON w.id = e.text_window
                WHERE e.feature < \(limit) ORDER BY e.id
                """,
                "SELECT * FROM explanation WHERE feature < \(limit) ORDER BY id", "SELECT * FROM score WHERE feature < \(limit) ORDER BY id"] {
        parts.append(try await rows(store, sql))
    }
    return parts.joined(separator: "\n--\n")
}

/// Overwrites one element of a safetensors file's `activations` tensor ([n_seq, ctx, d_in], F32 or F16).
func setActivation(_ path: String, sequence: Int, position: Int, dimension: Int, to value: Float) throws {
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    let length = try handle.read(upToCount: 8)!.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
    let header = try JSONSerialization.jsonObject(with: try handle.read(upToCount: length)!) as! [String: Any]
    let tensor = header["activations"] as! [String: Any]
    let shape = tensor["shape"] as! [Int], start = (tensor["data_offsets"] as! [Int])[0]
    let index = (sequence * shape[1] + position) * shape[2] + dimension
    var bytes = Data()
    switch tensor["dtype"] as! String {
    case "F16": withUnsafeBytes(of: Float16(value).bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    case "F32": withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    case let other: throw TestFailure("setActivation: dtype \(other) not handled")
    }
    try handle.seek(toOffset: UInt64(8 + length + start + index * bytes.count))
    handle.write(bytes)
}

/// A safetensors file of float32 tensors (plus an optional I32 token tensor).
func writeFloat32Safetensors(_ path: String, _ tensors: [(String, [Int], [Float])],
                             tokens: (String, [Int], [Int])? = nil) throws {
    var entries: [String] = [], data = Data()
    func add(_ name: String, _ dtype: String, _ shape: [Int], _ bytes: Data) {
        let dims = shape.map(String.init).joined(separator: ",")
        entries.append("\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":[\(dims)],\"data_offsets\":[\(data.count),\(data.count + bytes.count)]}")
        data.append(bytes)
    }
    if let (name, shape, values) = tokens {
        add(name, "I32", shape, values.reduce(into: Data()) { out, v in withUnsafeBytes(of: Int32(v).littleEndian) { out.append(contentsOf: $0) } })
    }
    for (name, shape, values) in tensors {
        add(name, "F32", shape, values.reduce(into: Data()) { out, v in withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } })
    }
    var header = "{\(entries.joined(separator: ","))}"
    while header.utf8.count % 8 != 0 { header += " " }
    var file = Data()
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { file.append(contentsOf: $0) }
    file.append(contentsOf: Array(header.utf8))
    file.append(data)
    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try file.write(to: URL(fileURLWithPath: path))
}
