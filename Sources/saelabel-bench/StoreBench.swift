import Foundation
import SAELabelCore
import SAELabelExport
import SAELabelStore

/// Store size and export throughput at catalog scale on a synthetic store (realistic shapes: default
/// example counts, 32-token windows of English-like tokens, one label and three scores per feature,
/// and the cached LLM answers a finished run leaves: one explain call, 15 simulation calls, two
/// detection and two fuzzing calls per feature).
///
///     saelabel-bench store [--features 131072] [--store PATH] [--screenshot PNG]
///                          [--write-only] [--formats catalog csv neuronpedia html] [--no-prune | --prune-in-place]
///
/// Each export's time is reported against a budget (60 s at 131,072 features) and as a ratio to a
/// plain read of the same rows (every example and score row fetched, nothing written) in the same run.
/// Then `prune` runs on the store and the catalog is exported again, which must give the same bytes
/// (`--prune-in-place` compacts with SQLite's in-place VACUUM instead of replacing the file, to compare the two).
/// With `--store PATH` the store is kept there and reused by later runs (when it holds the features),
/// so a store written once with `--write-only` (minutes at 131k) can have its exports timed alone
/// (`--no-prune` keeps it as written for the next run).
struct StoreBenchSettings {
    var features: Int
    var storePath: String?
    var keep: Bool
    var screenshot: String?
    var writeOnly = false
    var formats: [ExportFormat] = ExportFormat.allCases
    var prune = true
    var pruneInPlace = false
}

func runStoreBenchmark(_ settings: StoreBenchSettings) {
    let features = settings.features, storePath = settings.storePath, keep = settings.keep, screenshot = settings.screenshot
    let folder = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("saelabel-store-bench-\(getpid())")
    try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    defer { if !keep { try? FileManager.default.removeItem(at: folder) } }
    let path = storePath ?? folder.appendingPathComponent("job.sqlite").path
    func f(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
    func mib(_ bytes: Int64) -> String { f(Double(bytes) / 1_048_576) + " MiB" }
    do {
        let started = ContinuousClock.now
        var store = try JobStore(path: path)
        let existing = try store.features(in: [.scored]).count
        if existing != features {
            guard existing == 0 else {
                FileHandle.standardError.write(Data("store bench: \(path) holds \(existing) scored features, not \(features); name another --store\n".utf8))
                return
            }
            try fillSyntheticStore(store, features: features)
        }
        let fillSeconds = seconds(since: started)
        let bytes = fileBytes(path) + fileBytes(path + "-wal")
        if settings.writeOnly {
            report("Store (synthetic, \(features) features) \(existing == features ? "reused" : "written") in \(f(fillSeconds)) s: "
                  + "\(mib(bytes)) = \(f(Double(bytes) / Double(features), 0)) bytes/feature, at \(path)")
            return
        }

        // Read twice: the first read finds the store as the page cache left it (after other work, at
        // times mostly on disk), the second as the exports will find it; the faster is the floor.
        let readStart = ContinuousClock.now
        let (rows, textBytes) = try store.benchReadAllRows()
        let firstReadSeconds = seconds(since: readStart)
        let secondReadStart = ContinuousClock.now
        _ = try store.benchReadAllRows()
        let readSeconds = min(firstReadSeconds, seconds(since: secondReadStart))

        report("Store and exports (synthetic store, \(features) features, \(rows) example and score rows)")
        report("  store \(existing == features ? "reused     " : "written    ")     \(f(fillSeconds)) s")
        report("  store size          \(mib(bytes)) = \(f(Double(bytes) / Double(features), 0)) bytes/feature (with cached LLM answers)")
        report("  plain read of rows  \(f(readSeconds, 2)) s (\(f(Double(textBytes) / 1_048_576)) MiB of JSON text; "
              + "faster of two reads, the first \(f(firstReadSeconds, 2)) s)")
        let budget = 60.0 * Double(features) / 131_072
        func export(_ format: ExportFormat, to out: String) throws -> Double {
            let start = ContinuousClock.now
            let before = StepCost.now()
            let summary = try Exporter.export(store: store, format: format, to: out)
            let t = seconds(since: start)
            report("  export \(format.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)) \(f(t, 2)) s = "
                  + "\(f(Double(summary.features) / t, 0)) features/s; \(f(t / budget, 2)) of the \(f(budget, 0)) s budget; "
                  + "\(f(t / readSeconds, 1))× the plain read; \(mib(directoryBytes(out)))")
            report("         \(StepCost.now().since(before, wall: t))")
            timed.append((format, t, directoryBytes(out)))
            return t
        }
        var timed: [(format: ExportFormat, seconds: Double, bytes: Int64)] = []
        func output(_ format: ExportFormat, _ suffix: String = "") -> String {
            folder.appendingPathComponent("export-\(format.rawValue)\(suffix)" + (format == .catalog ? ".jsonl" : format == .csv ? ".csv" : "")).path
        }
        // A format named twice is exported twice (to tell a slow export from a slow moment of the machine).
        for (position, format) in settings.formats.enumerated() {
            let repeats = settings.formats[..<position].filter { $0 == format }.count
            _ = try export(format, to: output(format, repeats == 0 ? "" : "-\(repeats + 1)"))
        }
        // The hardware floor in the same run: as many bytes as the largest export, written and fsynced
        // as one plain file on the same filesystem, plus the plain read above. An export within ~1.2×
        // of "read + write" is bound by the disk, not by its own work.
        // Both ways a file can reach the disk: through the page cache (which the exports used before
        // they wrote their bulk files direct) and direct, as they do now where the filesystem allows.
        if let largest = timed.map(\.bytes).max(), largest > 1 << 20 {
            let cached = plainWriteSeconds(bytes: largest, in: folder, direct: false)
            let direct = plainWriteSeconds(bytes: largest, in: folder, direct: true)
            report("  plain write + fsync \(mib(largest)): \(f(cached, 2)) s through the page cache, \(f(direct, 2)) s direct")
            let floor = readSeconds + (direct.isFinite ? min(direct, cached) : cached)
            report("  read + write        \(f(floor, 2)) s = \(f(floor / budget, 2)) of the budget (plain read + the faster write)")
            for export in timed where export.bytes > largest / 2 {
                report("  export \(export.format.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)) \(f(export.seconds / floor, 2))× read + write")
            }
        }
        if settings.formats.contains(.html) { measureCatalogInChromium(output(.html), screenshot: screenshot) }
        if keep { report("  kept in             \(folder.path)") }
        guard settings.prune else { return }

        // The catalog to compare with is exported before prune (when it was not among the timed formats).
        if !settings.formats.contains(.catalog) { _ = try export(.catalog, to: output(.catalog)) }
        let kept = try store.benchLabelsAndScores()
        // Prune replaces the store's file: this process keeps no other connection to it meanwhile.
        store.close()
        let pruneStart = ContinuousClock.now
        let pruneCost = StepCost.now()
        let pruned = try JobStore.prune(path: path, inPlace: settings.pruneInPlace)
        let pruneSeconds = seconds(since: pruneStart)
        store = try JobStore(path: path)
        let compaction = switch pruned.compaction {
        case .replaced: "compacted copy replaced the store"
        case .inPlace(let reason): "compacted in place (\(reason))"
        }
        report("  prune               \(f(pruneSeconds, 1)) s: dropped \(pruned.responsesDropped) cached answers "
              + "(\(pruned.responsesKept) kept), cleared \(pruned.rawResponsesCleared) raw answers of old passes, "
              + "\(mib(pruned.bytesBefore)) → \(mib(pruned.bytesAfter)) = \(f(Double(pruned.bytesAfter) / Double(features), 0)) bytes/feature; "
              + compaction)
        report("         \(StepCost.now().since(pruneCost, wall: pruneSeconds))")
        let after = try store.benchLabelsAndScores()
        report("  labels and scores   \(after == kept ? "all kept" : "CHANGED"): \(after.labels) labels, \(after.scores) scores after prune "
              + "(\(kept.labels), \(kept.scores) before; digest \(String(after.digest, radix: 16)), before \(String(kept.digest, radix: 16)))")
        _ = try export(.catalog, to: output(.catalog, "-after-prune"))
        let same = FileManager.default.contentsEqual(atPath: output(.catalog), andPath: output(.catalog, "-after-prune"))
        report("  catalog after prune \(same ? "identical to the one before (byte for byte)" : "DIFFERS from the one before")")
    } catch {
        FileHandle.standardError.write(Data("store bench: \(error)\n".utf8))
    }
}

private let sentences = [
    "The dog chased the ball across the park while the cat watched from the fence .",
    "In 1969 the first humans landed on the Moon , and in 1972 the last mission returned .",
    "def area ( r ) : return math . pi * ( r ** 2 ) if r > 0 else 0",
    "She said bonjour to the baker and bought a croissant et un café au lait .",
    "Prices rose by 3.5 percent in March , the highest since 2008 according to the report .",
    "for i in range ( 10 ) : print ( f \" value { i } \" ) # loop over the first ten numbers",
].map { $0.split(separator: " ").map { " " + $0 } }

private let labels = ["years written as four digits", "closing parentheses in Python code", "nouns for pets",
                      "French words inside English sentences", "the token \"the\" at the start of a noun phrase",
                      "percent signs and numeric rates", "loop headers in code", "commas separating clauses"]

private func syntheticWindow(feature: Int, ordinal: Int, kind: ExampleKind) -> ActivationWindow {
    var tokens: [String] = []
    var s = (feature + ordinal) % sentences.count
    while tokens.count < 32 {
        tokens += sentences[s]
        s = (s + 1) % sentences.count
    }
    tokens = Array(tokens.prefix(32))
    let activations: [Float] = (0..<32).map { i in (i * 7 + feature + ordinal) % 11 > 7 ? Float((i + feature) % 9) + 0.5 : 0 }
    return ActivationWindow(tokens: tokens, activations: activations, kind: kind, sequence: feature * 64 + ordinal, start: 0)
}

/// Collected features, labels, scores and cached answers in blocks of 4,096 features, one transaction
/// each with prepared statements (a transaction per feature made the 131k store take longer than every export).
private func fillSyntheticStore(_ store: JobStore, features: Int) throws {
    try store.setSetting(JobSettingKey.saeName, "synthetic-131k")
    try store.setSetting(JobSettingKey.modelName, "gpt2-small")
    try store.beginPass("bench")
    let encoder = JSONEncoder()
    let model = "Llama-3.1-8B-Instruct"
    func answer(_ content: String) -> Data {
        Data(("{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"model\":\"\(model)\",\"choices\":[{\"index\":0,"
              + "\"message\":{\"role\":\"assistant\",\"content\":\"\(content)\"},\"finish_reason\":\"stop\"}],"
              + "\"usage\":{\"prompt_tokens\":500,\"completion_tokens\":40,\"total_tokens\":540}}").utf8)
    }
    for blockStart in stride(from: 0, to: features, by: 4096) {
        let block = blockStart..<min(features, blockStart + 4096)
        try store.saveCollected(block.map { feature in
            let explain = (0..<20).map { syntheticWindow(feature: feature, ordinal: $0, kind: $0 < 10 ? .top : .quantile) }
            let heldout = (0..<15).map { syntheticWindow(feature: feature, ordinal: 20 + $0, kind: $0 < 5 ? .top : $0 < 10 ? .quantile : .random) }
            let stats = FeatureStatistics(frequency: 0.001 + Double(feature % 97) / 10_000, maxActivation: 8.5, meanActivation: 2.1,
                                          activatingTokens: 1000 + feature % 5000, activatingWindows: 100 + feature % 400,
                                          histogram: (0..<24).map { 400 >> ($0 / 3) })
            return CollectedFeature(index: feature, state: .collected, statistics: stats, explain: explain, heldout: heldout)
        })
        try store.benchSaveLabeled(try block.map { feature in
            let value = Double(feature % 100) / 100
            let simulated = SimulationDetails(rsquared: value * value, absoluteDevExplained: value / 2, failedWindows: 0, retriedWindows: 0,
                                              undefinedReason: nil, windows: (0..<15).map { ordinal in
                SimulationDetails.Window(heldoutOrdinal: ordinal, simulated: (0..<32).map { Double(($0 + ordinal) % 11) })
            })
            var scores = [StoredScore(scorer: "simulation", value: value, model: model, promptHash: "bench",
                                      details: String(decoding: try encoder.encode(simulated), as: UTF8.self))]
            for scorer in ["detection", "fuzzing"] {
                let details = ClassificationDetails(balancedAccuracy: value, f1: value, precision: value, recall: value, truePositives: 16,
                                                    trueNegatives: 18, falsePositives: 2, falseNegatives: 4, failedPrompts: 0)
                scores.append(StoredScore(scorer: scorer, value: value, model: model, promptHash: "bench",
                                          details: String(decoding: try encoder.encode(details), as: UTF8.self)))
            }
            let label = "\(labels[feature % labels.count]) (\(feature))"
            var calls = [BenchLabeledFeature.CachedCall(tag: "explain:\(feature)", key: "explain-\(feature)",
                                                         body: answer("Explanation: \(label)"))]
            for ordinal in 0..<15 {
                let values = (0..<32).map { String(($0 + ordinal) % 11) }.joined(separator: ",")
                calls.append(.init(tag: "simulate:\(feature):\(ordinal)", key: "simulate-\(feature)-\(ordinal)",
                                   body: answer("{\\\"activations\\\": [\(values)]}")))
            }
            for (scorer, step) in [("detection", "detect"), ("fuzzing", "fuzz")] {
                for prompt in 0..<2 {
                    calls.append(.init(tag: "\(step):\(feature):\(prompt)", key: "\(scorer)-\(feature)-\(prompt)",
                                       body: answer("[1, 0, 1, 1, 0, 0, 1, 0, 1, 0]")))
                }
            }
            return BenchLabeledFeature(feature: feature, explanation: label, explainerModel: model, promptHash: "bench",
                                       scores: scores, cachedCalls: calls)
        })
    }
}

/// What a timed step cost: the process's CPU time (all threads), the bytes it made the block device
/// read and write (/proc/self/io), and the machine's steal and I/O-wait time over all cores
/// (/proc/stat), so a slow run can be told apart: own work, waiting for the disk, or a busy host.
private struct StepCost {
    var user = 0.0, system = 0.0, readBytes: Int64 = 0, writeBytes: Int64 = 0, cancelledWriteBytes: Int64 = 0, steal = 0.0, ioWait = 0.0

    static func now() -> StepCost {
        var cost = StepCost()
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        cost.user = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        cost.system = Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
        let io = (try? String(contentsOfFile: "/proc/self/io", encoding: .utf8)) ?? ""
        for line in io.split(separator: "\n") {
            let parts = line.split(separator: ":")
            guard parts.count == 2, let value = Int64(parts[1].trimmingCharacters(in: .whitespaces)) else { continue }
            if parts[0] == "read_bytes" { cost.readBytes = value }
            if parts[0] == "write_bytes" { cost.writeBytes = value }
            if parts[0] == "cancelled_write_bytes" { cost.cancelledWriteBytes = value }
        }
        // cpu  user nice system idle iowait irq softirq steal …, in clock ticks.
        let stat = (try? String(contentsOfFile: "/proc/stat", encoding: .utf8))?.split(separator: "\n").first ?? ""
        let ticks = stat.split(separator: " ").dropFirst().compactMap { Double($0) }
        let hertz = Double(sysconf(Int32(_SC_CLK_TCK)))
        if ticks.count >= 8 {
            cost.ioWait = ticks[4] / hertz
            cost.steal = ticks[7] / hertz
        }
        return cost
    }

    func since(_ start: StepCost, wall: Double) -> String {
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        func mib(_ x: Int64) -> String { String(format: "%.0f", Double(x) / 1_048_576) }
        let cpu = user - start.user + system - start.system
        return "CPU \(f(cpu)) s (user \(f(user - start.user)), system \(f(system - start.system))) in \(f(wall)) s of wall; "
            + "disk read \(mib(readBytes - start.readBytes)) MiB, written \(mib(writeBytes - start.writeBytes)) MiB "
            + "(\(mib(cancelledWriteBytes - start.cancelledWriteBytes)) MiB of it cancelled: files deleted before they reached the disk); "
            + "machine: steal \(f(steal - start.steal)) s, I/O wait \(f(ioWait - start.ioWait)) s (all cores)"
    }
}

private func seconds(since start: ContinuousClock.Instant) -> Double {
    let d = start.duration(to: .now)
    return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}

/// Writes `bytes` of filler in 4 MiB writes to a new file in `folder` (direct: with O_DIRECT, whole
/// 4 KiB blocks), fsyncs and removes it: what writing an export of that size costs this filesystem with
/// no work per byte. NaN when the filesystem refuses.
private func plainWriteSeconds(bytes: Int64, in folder: URL, direct: Bool) -> Double {
    let path = folder.appendingPathComponent("plain-write.bin").path
    guard !direct || directWriteOpenFlag != nil else { return .nan }
    let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | (direct ? directWriteOpenFlag ?? 0 : 0), 0o644)
    guard descriptor >= 0 else { return .nan }
    defer { close(descriptor); unlink(path) }
    let blockBytes = 4 << 20
    var block: UnsafeMutableRawPointer?
    guard posix_memalign(&block, 4096, blockBytes) == 0, let block else { return .nan }
    defer { free(block) }
    memset(block, Int32(UInt8(ascii: "x")), blockBytes)
    let start = ContinuousClock.now
    var left = bytes / 4096 * 4096
    while left > 0 {
        let written = write(descriptor, block, Int(min(left, Int64(blockBytes))))
        guard written > 0 else { return .nan }
        left -= Int64(written)
    }
    guard fsync(descriptor) == 0 else { return .nan }
    return seconds(since: start)
}

func fileBytes(_ path: String) -> Int64 {
    (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value ?? 0
}

private func directoryBytes(_ path: String) -> Int64 {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { return fileBytes(path) }
    let files = FileManager.default.enumerator(atPath: path)?.compactMap { $0 as? String } ?? []
    return files.reduce(Int64(0)) { $0 + fileBytes(path + "/" + $1) }
}

/// Opens the exported catalog from file:// in headless Chromium (real time, no virtual time budget)
/// and reads the timings the page records on <body>: first paint of index rows, all index parts
/// loaded, and how long the last view took (for a search: filter, order and DOM of one keystroke).
private func measureCatalogInChromium(_ catalog: String, screenshot: String?) {
    guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        report("  html in Chromium    skipped: chromium is not installed (Tools/install_deps.sh --browser)")
        return
    }
    let url = URL(fileURLWithPath: catalog + "/index.html").absoluteString
    func browse(_ extra: [String]) -> String {
        let profile = NSTemporaryDirectory() + "saelabel-bench-chromium-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: profile) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: chromium)
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                       "--user-data-dir=\(profile)"] + extra
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return "" }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
    func attribute(_ dom: String, _ name: String) -> Double? {
        guard let range = dom.range(of: " \(name)=\"") else { return nil }
        return Double(dom[range.upperBound...].prefix { $0 != "\"" })
    }
    func ms(_ x: Double?) -> String { x.map { String(format: "%.0f ms", $0) } ?? "not recorded" }
    let plain = browse(["--dump-dom", url])
    let firstPaint = attribute(plain, "data-first-paint-ms")
    let loaded = attribute(plain, "data-loaded-ms")
    report("  html first paint    \(ms(firstPaint)) after navigation (budget 1000 ms: \(firstPaint.map { String(format: "%.2f", $0 / 1000) } ?? "–") of it)")
    report("  html index loaded   \(ms(loaded)) after navigation (all \(attribute(plain, "data-rows").map { String(Int($0)) } ?? "?") rows searchable)")
    for query in ["pets", "q=pets&sort=simulation&dir=desc"] {
        let view = query.contains("=") ? query : "q=\(query)"
        let dom = browse(["--dump-dom", url + "#" + view])
        let render = attribute(dom, "data-render-ms")
        report("  html search         #\(view): \(attribute(dom, "data-rows").map { String(Int($0)) } ?? "?") matches in "
              + "\(render.map { String(format: "%.1f ms", $0) } ?? "not recorded") (budget 100 ms a keystroke: "
              + "\(render.map { String(format: "%.2f", $0 / 100) } ?? "–") of it)")
    }
    if let screenshot {
        _ = browse(["--screenshot=\(screenshot)", "--window-size=1280,900", "--hide-scrollbars", url + "#q=pets&sort=simulation&dir=desc"])
        report("  html screenshot     \(screenshot)")
    }
}

/// Prints and flushes: a 131k run takes minutes per step, and each line is worth seeing when it is
/// printed, even into a file.
private func report(_ line: String) {
    print(line)
    fflush(nil)
}

/// The time a store at an older schema takes to migrate when the current build opens it, against a plain
/// `VACUUM INTO` copy of the same file (every used page read and written once, then synced) in the same run.
/// The store at `path` is migrated in place: run it on a copy.
func runMigrationBenchmark(path: String) {
    func f(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
    func mib(_ bytes: Int64) -> String { f(Double(bytes) / 1_048_576) + " MiB" }
    do {
        let applied = try JobStore.benchAppliedMigrations(store: path)
        let before = fileBytes(path) + fileBytes(path + "-wal")
        report("Migration of \(path) (\(mib(before)); migrations applied: \(applied.last ?? "none"), \(applied.count) in all)")
        let copy = path + ".bench-copy"
        _ = unlink(copy)
        let copyStart = ContinuousClock.now
        let copyCost = StepCost.now()
        try JobStore.benchVacuumCopy(store: path, to: copy)
        let copySeconds = seconds(since: copyStart)
        report("  VACUUM INTO copy    \(f(copySeconds, 2)) s, \(mib(fileBytes(copy)))")
        report("         \(StepCost.now().since(copyCost, wall: copySeconds))")
        _ = unlink(copy)
        let start = ContinuousClock.now
        let cost = StepCost.now()
        let store = try JobStore(path: path)
        let now = try store.appliedMigrations()
        store.close()
        let migrateSeconds = seconds(since: start)
        let after = fileBytes(path) + fileBytes(path + "-wal")
        report("  open + migrate      \(f(migrateSeconds, 2)) s = \(f(migrateSeconds / copySeconds, 2))× the copy; "
              + "\(mib(before)) → \(mib(after)); applied \(now.filter { !applied.contains($0) }.joined(separator: ", "))")
        report("         \(StepCost.now().since(cost, wall: migrateSeconds))")
    } catch {
        FileHandle.standardError.write(Data("migrate bench: \(error)\n".utf8))
    }
}
