import COpenBLAS
import Foundation
import SAELabelCollect
import SAELabelCore
import SAELabelStore

/// Collect throughput benchmark.
///
///     saelabel-bench collect [--tokens 65536] [--features 24576] [--d-in 768] [--batch 512] [--blas-threads 1]
///                            [--memory-gb G] [--no-store] [--skip-numpy] [--chunk-rows N] [--directory DIR]
///                            [--baselines | --no-baselines] [--keep] [--numpy PATH/TO/bench_numpy_collect.py]
///
/// Synthesizes a standard SAE (d_in × d_sae, float32, b_enc set so ~0.5% of features fire per token) and a float32
/// activation file (both written in chunks, never whole in memory), then measures in one process:
///   1. plain `cblas_sgemm` of the same shapes and thread count (the hardware limit), tokens/s;
///   2. saelabel's collect (all features selected, default example counts), tokens/s, and its ratio to (1):
///      streaming alone, and with the final selection and the store write;
///   3. Tools/bench_numpy_collect.py (numpy encode + per-feature top windows) on the same files, and (2)/(3).
/// Baselines run by default up to 131,072 tokens; peak RSS (getrusage ru_maxrss) is reported against the budget.
struct CollectBenchSettings {
    var tokens: Int
    var features: Int
    var dIn: Int
    var batch: Int
    var blasThreads: Int
    var baselines: Bool?
    var keep: Bool
    var numpyScript: String?
    var memoryGB: Double?
    var store: Bool
    var numpy: Bool
    var chunkRows: Int?
    var directory: String?
    /// Time the sgemm baseline on this fraction of the width and scale it (see `measureSGEMMOnFraction`).
    var sgemmWidthFraction = 1.0
    /// Keep the synthetic inputs in this folder and reuse them when present (see `prepareBenchInputs`).
    var inputs: String?
    var inputsOnly = false
}

func runCollectBenchmark(_ settings: CollectBenchSettings) {
    let features = settings.features, dIn = settings.dIn, batch = settings.batch, blasThreads = settings.blasThreads
    let runBaselines = settings.baselines ?? (settings.tokens <= 131_072)
    let context = 128
    let sequences = (settings.tokens + context - 1) / context
    let tokens = sequences * context
    let directory = settings.inputs
        ?? ((settings.directory ?? NSTemporaryDirectory()) as NSString).appendingPathComponent("saelabel-collect-bench-\(getpid())")
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { if !settings.keep && settings.inputs == nil { try? FileManager.default.removeItem(atPath: directory) } }

    print("collect benchmark: d_in \(dIn), d_sae \(features) (standard, float32), \(tokens) tokens (\(sequences) × \(context)), batch \(batch), \(blasThreads) thread(s)")
    for name in ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"] {
        print("  \(name)=\(ProcessInfo.processInfo.environment[name] ?? "(unset)")")
    }
    print("  \(BLASKernels.description)")
    print("  load average: \(loadAverage())")
    var clock = BenchClock()
    let saeDirectory = (directory as NSString).appendingPathComponent("bench-sae")
    let activationPath = (directory as NSString).appendingPathComponent("activations.safetensors")
    let tokenizerPath = (directory as NSString).appendingPathComponent("tokenizer.json")
    let reused = prepareBenchInputs(directory: directory, reuse: settings.inputs != nil, dIn: dIn, features: features,
                                    sequences: sequences, context: context)
    print(String(format: "  inputs %@ in %.1f s%@", reused ? "reused" : "written", clock.lap(), settings.inputs.map { " (\($0))" } ?? ""))
    if settings.inputsOnly { return }

    var sgemmRates: [Double] = []
    if runBaselines {
        sgemmRates.append(measureSGEMMOnFraction(settings.sgemmWidthFraction, tokens: tokens, dIn: dIn, dSAE: features, batch: batch,
                                                 threads: blasThreads))
        print(String(format: "  plain sgemm: %.0f tokens/s", sgemmRates[0]))
    }

    // saelabel collect.
    var options = CollectOptions(saeDirectory: saeDirectory, activationFiles: [activationPath], tokenizerPath: tokenizerPath)
    options.batchTokens = batch
    options.blasThreads = blasThreads
    if let memoryGB = settings.memoryGB { options.memoryBudgetMiB = memoryGB * 1024 }
    if let chunkRows = settings.chunkRows { options.encodeChunkRows = chunkRows }
    let summary: CollectSummary
    let planSeconds: Double
    let totalSeconds: Double
    let storePath = (directory as NSString).appendingPathComponent("job.sqlite")
    do {
        let store = try JobStore(path: storePath)
        _ = clock.lap()
        let plan = try Collector.plan(options)
        planSeconds = clock.lap()
        summary = settings.store ? try Collector.run(options, plan: plan, store: store) : try Collector.streamOnly(options, plan: plan)
        totalSeconds = clock.lap()
        // Folds the write-ahead log in, so the file's size is the store's.
        store.close()
    } catch {
        print("collect failed: \(error)")
        exit(1)
    }
    let rssMiB = Double(peakRSSKiB()) / 1024
    let streamRate = Double(tokens) / summary.streamSeconds
    // Wall time: selection and writes overlap the next block's streaming.
    let endToEndRate = Double(tokens) / summary.seconds
    print(String(format: "  collect: %d block(s), plan (validate + SHA-256 fingerprints) %.1f s, stream %.1f s, select+decode %.1f s, store write %.1f s (%.1f s CPU) (run %.1f s, collect wall %.1f s)",
                 summary.blocks, planSeconds, summary.streamSeconds, summary.finishSeconds, summary.writeSeconds, summary.writeCPUSeconds,
                 totalSeconds, summary.seconds))
    if settings.store { print(String(format: "  writer thread CPU: select+decode %.2f s, store write %.2f s", summary.finishCPUSeconds, summary.writeCPUSeconds)) }
    if settings.store {
        print("  features: \(summary.collected) collected, \(summary.sparse) sparse, \(summary.dead) dead; \(summary.excludedTokens) tokens excluded (BOS)")
        let storeBytes = fileBytes(storePath) + fileBytes(storePath + "-wal")
        print(String(format: "  store size: %.1f MiB = %.0f bytes/feature", Double(storeBytes) / 1_048_576, Double(storeBytes) / Double(features)))
    }

    var numpyRate: Double? = nil
    if runBaselines {
        sgemmRates.append(measureSGEMMOnFraction(settings.sgemmWidthFraction, tokens: tokens, dIn: dIn, dSAE: features, batch: batch,
                                                 threads: blasThreads))
        print(String(format: "  plain sgemm (again, after collect): %.0f tokens/s", sgemmRates[1]))
        if settings.numpy { numpyRate = runNumpy(script: settings.numpyScript, sae: saeDirectory, activations: activationPath) }
    }

    print("")
    print("| measure | tokens/s | ratio |")
    print("|---|---:|---:|")
    let hardware = sgemmRates.max()
    if let hardware { print(String(format: "| (1) plain cblas_sgemm [%d×%d]·[%d×%d], %d BLAS thread(s) (best of 2) | %.0f | 1.00 |", batch, dIn, dIn, features, blasThreads, hardware)) }
    let ratio1 = hardware.map { String(format: "%.2f of (1)", streamRate / $0) } ?? "–"
    print(String(format: "| (2) saelabel collect: stream (read, encode, select state) | %.0f | %@ |", streamRate, ratio1))
    if settings.store {
        let ratio1e = hardware.map { String(format: "%.2f of (1)", endToEndRate / $0) } ?? "–"
        print(String(format: "| (2') saelabel collect incl. final selection + store write | %.0f | %@ |", endToEndRate, ratio1e))
    }
    if let numpyRate {
        print(String(format: "| (3) numpy collect (Tools/bench_numpy_collect.py) | %.0f | (2)/(3) = %.2f |", numpyRate, streamRate / numpyRate))
    }
    print(String(format: "peak RSS (ru_maxrss): %.0f MiB; memory budget %.0f MiB%@", rssMiB, options.memoryBudgetMiB,
                 runBaselines ? " (includes the sgemm baseline's buffers)" : ""))
    print("  load average after: \(loadAverage())")
}

func loadAverage() -> String {
    (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
}

struct BenchClock {
    var last = DispatchTime.now().uptimeNanoseconds
    mutating func lap() -> Double {
        let now = DispatchTime.now().uptimeNanoseconds
        defer { last = now }
        return Double(now - last) / 1e9
    }
}

func peakRSSKiB() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss
}

/// Fast deterministic pseudo-normal numbers (sum of uniforms), good enough for synthetic activations.
struct BenchRandom {
    var generator: SplitMix64
    init(state: UInt64) { generator = SplitMix64(state: state) }
    mutating func next() -> UInt64 { generator.next() }
    mutating func normal() -> Float {
        let bits = next()
        var sum: Float = 0
        for lane in 0..<4 { sum += Float((bits >> (16 * UInt64(lane))) & 0xFFFF) / 65536 }
        return (sum - 2) * 1.7320508
    }
}

/// Streams a safetensors file: header first, then each tensor's bytes from a chunk producer.
func writeStreamingSafetensors(path: String, tensors: [(name: String, dtype: String, shape: [Int], bytes: Int)],
                               produce: (Int, (Data) -> Void) throws -> Void) throws {
    var offset = 0
    var entries: [String] = []
    for tensor in tensors {
        entries.append("\"\(tensor.name)\":{\"dtype\":\"\(tensor.dtype)\",\"shape\":[\(tensor.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + tensor.bytes)]}")
        offset += tensor.bytes
    }
    var header = "{\(entries.joined(separator: ","))}"
    while header.utf8.count % 8 != 0 { header += " " }
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    guard let handle = FileHandle(forWritingAtPath: path) else { throw SAELabelError.badInput(location: path, problem: "cannot write") }
    defer { try? handle.close() }
    var prefix = Data()
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { prefix.append(contentsOf: $0) }
    prefix.append(contentsOf: Array(header.utf8))
    handle.write(prefix)
    for index in tensors.indices { try produce(index) { handle.write($0) } }
    // A producer that wrote nothing for the last tensors leaves them as a hole of zeros.
    try handle.truncate(atOffset: UInt64(prefix.count + offset))
}

func floatData(_ values: [Float]) -> Data { values.withUnsafeBufferPointer { Data(buffer: $0) } }

/// W_enc columns come from a pool of random rows (so a 1M-wide SAE is written in seconds); W_dec, which a
/// standard SAE's collect never reads, is left as a hole in the file (zeros that take no disk).
func writeBenchSAE(directory: String, dIn: Int, dSAE: Int) throws {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    var random = BenchRandom(state: 42)
    let scale = 1 / Float(dIn).squareRoot()
    let poolRows = 64
    let pool = (0..<(poolRows * dSAE)).map { _ in random.normal() * scale }
    try writeStreamingSafetensors(path: (directory as NSString).appendingPathComponent("sae_weights.safetensors"), tensors: [
        ("W_enc", "F32", [dIn, dSAE], dIn * dSAE * 4), ("b_enc", "F32", [dSAE], dSAE * 4),
        ("b_dec", "F32", [dIn], dIn * 4), ("W_dec", "F32", [dSAE, dIn], dIn * dSAE * 4),
    ]) { index, write in
        switch index {
        case 0:
            for _ in 0..<dIn {
                let row = Int(random.next() % UInt64(poolRows)), shift = Int(random.next() % UInt64(dSAE))
                pool.withUnsafeBufferPointer { buffer in
                    let base = buffer.baseAddress! + row * dSAE
                    write(Data(buffer: UnsafeBufferPointer(start: base + shift, count: dSAE - shift)))
                    write(Data(buffer: UnsafeBufferPointer(start: base, count: shift)))
                }
            }
        case 1:
            write(floatData((0..<dSAE).map { _ in -2.6 + 0.2 * random.normal() }))
        case 2:
            write(floatData((0..<dIn).map { _ in 0.05 * random.normal() }))
        default:
            break  // W_dec: the file is extended to its full size below, as a hole
        }
    }
    let cfg: [String: Any] = ["d_in": dIn, "d_sae": dSAE, "architecture": "standard", "apply_b_dec_to_input": true,
                              "normalize_activations": "none", "dtype": "float32",
                              "metadata": ["model_name": "synthetic", "hook_name": "blocks.6.hook_resid_post"]]
    try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: (directory as NSString).appendingPathComponent("cfg.json")))
}

/// Activations in chunks of 64 sequences: a pool of random rows, each token a pool row plus a small
/// token-dependent offset, so memory stays small at any corpus size.
func writeBenchActivations(path: String, sequences: Int, context: Int, dIn: Int) throws {
    var random = BenchRandom(state: 7)
    let vocabulary = 1000
    let tokenIDs = (0..<(sequences * context)).map { $0 % context == 0 ? 0 : 1 + Int(random.next() % UInt64(vocabulary - 1)) }
    let poolRows = 4096
    let pool = (0..<(poolRows * dIn)).map { _ in random.normal() }
    try writeStreamingSafetensors(path: path, tensors: [
        ("tokens", "I32", [sequences, context], sequences * context * 4),
        ("activations", "F32", [sequences, context, dIn], sequences * context * dIn * 4),
    ]) { index, write in
        if index == 0 {
            write(tokenIDs.map { Int32($0) }.withUnsafeBufferPointer { Data(buffer: $0) })
            return
        }
        let chunk = 64
        var first = 0
        var buffer = [Float](repeating: 0, count: chunk * context * dIn)
        while first < sequences {
            let count = min(chunk, sequences - first)
            for row in 0..<(count * context) {
                let poolRow = Int(random.next() % UInt64(poolRows))
                let token = tokenIDs[first * context + row]
                for d in 0..<dIn {
                    buffer[row * dIn + d] = pool[poolRow * dIn + d] + (d == token % dIn ? 2 : 0)
                }
            }
            write(buffer.withUnsafeBufferPointer { Data(buffer: UnsafeBufferPointer(rebasing: $0[0..<(count * context * dIn)])) })
            first += count
        }
    }
}

func writeBenchTokenizer(path: String) throws {
    var vocab: [String: Int] = [:]
    for id in 1..<1000 { vocab["Ġtok\(id)"] = id }
    let root: [String: Any] = ["added_tokens": [["id": 0, "content": "<|endoftext|>", "special": true]],
                               "model": ["type": "BPE", "vocab": vocab, "merges": [String]()],
                               "decoder": ["type": "ByteLevel"]]
    try JSONSerialization.data(withJSONObject: root).write(to: URL(fileURLWithPath: path))
}

/// Plain `cblas_sgemm` over the same token count: C[batch, d_sae] = X[batch, d_in] · W[d_in, d_sae], with
/// the same BLAS thread count as the collect it is compared with. Wider than 32,768 features, each batch is
/// multiplied by 32,768-column slices of one weight matrix (the same FLOPs without a d_in × d_sae copy in memory).
func measureSGEMM(tokens: Int, dIn: Int, dSAE: Int, batch: Int, threads: Int) -> Double {
    openblas_set_num_threads(Int32(threads))
    var random = BenchRandom(state: 1)
    let width = min(dSAE, 32_768)
    let weights = (0..<(dIn * width)).map { _ in random.normal() }
    let input = (0..<(batch * dIn)).map { _ in random.normal() }
    var output = [Float](repeating: 0, count: batch * width)
    var clock = BenchClock()
    var done = 0
    while done < tokens {
        let rows = min(batch, tokens - done)
        var first = 0
        while first < dSAE {
            let columns = min(width, dSAE - first)
            output.withUnsafeMutableBufferPointer { c in
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(columns), Int32(dIn), 1,
                            input, Int32(dIn), weights, Int32(width), 0, c.baseAddress, Int32(width))
            }
            first += columns
        }
        done += rows
    }
    return Double(tokens) / clock.lap()
}

/// The sgemm baseline timed on `fraction` of the width (rounded to whole 32,768-column slices) and
/// scaled to the full width: `measureSGEMM` multiplies every batch by the same 32,768-column slice once
/// per slice of the width, so its time is linear in the number of slices. For widths whose full
/// baseline would take minutes (1M features: 2.5 TFLOP per 512 tokens), twice per run.
func measureSGEMMOnFraction(_ fraction: Double, tokens: Int, dIn: Int, dSAE: Int, batch: Int, threads: Int) -> Double {
    let slice = 32_768
    guard fraction < 1, dSAE > slice else { return measureSGEMM(tokens: tokens, dIn: dIn, dSAE: dSAE, batch: batch, threads: threads) }
    let slices = (dSAE + slice - 1) / slice
    let timed = min(slices, max(1, Int((Double(slices) * fraction).rounded())))
    let rate = measureSGEMM(tokens: tokens, dIn: dIn, dSAE: timed * slice, batch: batch, threads: threads)
    print("  (sgemm timed on \(timed) of \(slices) slices of 32,768 columns and scaled by \(timed)/\(slices))")
    return rate * Double(timed) / Double(slices)
}

/// Writes the synthetic SAE, activations and tokenizer into `directory`; with `reuse`, keeps the ones
/// already there when their shapes match (writing a 1M-wide W_enc, 9.4 GB, takes minutes here: it is
/// done once, under the shared lock, and the timed runs reuse it). A store of an earlier run is removed.
/// Returns whether the inputs were reused.
func prepareBenchInputs(directory: String, reuse: Bool, dIn: Int, features: Int, sequences: Int, context: Int) -> Bool {
    let saeDirectory = (directory as NSString).appendingPathComponent("bench-sae")
    let activationPath = (directory as NSString).appendingPathComponent("activations.safetensors")
    let tokenizerPath = (directory as NSString).appendingPathComponent("tokenizer.json")
    for leftover in ["job.sqlite", "job.sqlite-wal", "job.sqlite-shm"] {
        try? FileManager.default.removeItem(atPath: (directory as NSString).appendingPathComponent(leftover))
    }
    func size(_ path: String) -> Int { (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? -1 }
    let marker = (directory as NSString).appendingPathComponent("inputs-\(dIn)x\(features)-\(sequences)x\(context)")
    if reuse && FileManager.default.fileExists(atPath: marker) && size(tokenizerPath) > 0 {
        return true
    }
    do {
        try? FileManager.default.removeItem(atPath: marker)
        try writeBenchSAE(directory: saeDirectory, dIn: dIn, dSAE: features)
        try writeBenchActivations(path: activationPath, sequences: sequences, context: context, dIn: dIn)
        try writeBenchTokenizer(path: tokenizerPath)
        // Marks complete inputs of these shapes (a run killed while writing leaves none).
        _ = FileManager.default.createFile(atPath: marker, contents: nil)
    } catch {
        print("cannot write the benchmark inputs: \(error)")
        exit(1)
    }
    return false
}

func runNumpy(script: String?, sae: String, activations: String) -> Double? {
    let candidates = [script, "Tools/bench_numpy_collect.py",
                      URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
                          .appendingPathComponent("../../../Tools/bench_numpy_collect.py").standardizedFileURL.path].compactMap { $0 }
    guard let path = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
        print("  numpy: Tools/bench_numpy_collect.py not found (pass --numpy PATH)")
        return nil
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", path, "--sae", sae, "--activations", activations]
    let pipe = Pipe()
    process.standardOutput = pipe
    do { try process.run() } catch {
        print("  numpy: cannot start python3: \(error)")
        return nil
    }
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let text = String(decoding: output, as: UTF8.self)
    for line in text.split(separator: "\n") { print("  numpy: \(line)") }
    guard process.terminationStatus == 0,
          let last = text.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
          let object = try? JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any],
          let rate = (object["tokens_per_second"] as? NSNumber)?.doubleValue else {
        print("  numpy: failed (status \(process.terminationStatus))")
        return nil
    }
    return rate
}
