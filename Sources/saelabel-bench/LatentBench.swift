import Foundation
import SAELabelCollect
import SAELabelCore

/// Sparse latent (delphi cache) collect time against the SAE width and the number of non-zeros.
///
///     saelabel-bench latents [--tokens 65536] [--widths 16384 262144] [--per-token 32] [--firing N]
///
/// For each width and each `per-token`, writes a synthetic cache (4 files of width/4 latents; every token has
/// `per-token` random latents firing, so the non-zeros do not grow with the width; with `--firing N` they are
/// drawn among N latents spread over the width, so the latents that fire do not grow with it either) and measures collect's
/// streaming phase (read, bucket, per-feature window state; no selection, no store). Beside the time it prints
/// what the time should follow if collect is O(non-zeros): the non-zeros, the latents that fire, their
/// (latent, window) firings and the windows their slots keep; and the streaming phase's own peak RSS. The
/// least-squares fit at the end, time = a·non-zeros + b·windows kept + c·width, shows what each costs (c ≈ 0
/// if nothing grows with the width itself; run `--firing N` over several widths to see it alone).
func runLatentBenchmark(tokens requestedTokens: Int, widths: [Int], perToken: [Int], mayFire: Int?) {
    let context = 128
    let sequences = max(1, (requestedTokens + context - 1) / context)
    let tokens = sequences * context
    let directory = (NSTemporaryDirectory() as NSString).appendingPathComponent("saelabel-latent-bench-\(getpid())")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    print("latent benchmark: \(tokens) tokens (\(sequences) × \(context)), \(mayFire.map { "\($0) latents" } ?? "every latent") may fire; load average \(loadAverage())")
    print("| width | per token | non-zeros | firing latents | firing windows | windows kept | blocks | stream s | s / first run | ns / non-zero | stream peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    var first: Double?
    var runs: [(nonZeros: Double, kept: Double, width: Double, seconds: Double)] = []
    for width in widths {
        for perTokenCount in perToken {
            let run = (directory as NSString).appendingPathComponent("w\(width)-p\(perTokenCount)")
            let cache = (run as NSString).appendingPathComponent("blocks.6")
            let tokenizer = (directory as NSString).appendingPathComponent("tokenizer.json")
            do {
                try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
                try writeBenchTokenizer(path: tokenizer)
                try writeLatentCache(cache, sequences: sequences, context: context, width: width, perToken: perTokenCount,
                                     mayFire: min(width, mayFire ?? width))
                let options = CollectOptions(latentsDirectory: cache, tokenizerPath: tokenizer)
                let plan = try Collector.plan(options)
                resetPeakRSS()
                let summary = try Collector.streamOnly(options, plan: plan)
                let base = first ?? summary.streamSeconds
                first = base
                let nonZeros = tokens * perTokenCount
                runs.append((Double(nonZeros), Double(summary.keptWindows), Double(width), summary.streamSeconds))
                print(String(format: "| %d | %d | %d | %d | %d | %d | %d | %.2f | %.2f× | %.0f | %.0f MiB |", width, perTokenCount, nonZeros,
                             summary.firingFeatures, summary.activatingWindows, summary.keptWindows, summary.blocks,
                             summary.streamSeconds, summary.streamSeconds / base, summary.streamSeconds * 1e9 / Double(nonZeros),
                             Double(currentPeakRSSKiB() ?? peakRSSKiB()) / 1024))
            } catch {
                print("latent benchmark failed at width \(width), \(perTokenCount) per token: \(error)")
                exit(1)
            }
            try? FileManager.default.removeItem(atPath: run)
        }
    }
    if let fit = leastSquares(runs.map { [$0.nonZeros, $0.kept, $0.width] }, runs.map(\.seconds)) {
        print(String(format: "fit over %d runs: stream s ≈ %.1f ns × non-zeros + %.1f ns × windows kept + %.1f ns × width",
                     runs.count, fit[0] * 1e9, fit[1] * 1e9, fit[2] * 1e9))
        for run in runs {
            print(String(format: "  width %.0f: non-zeros %.2f s + windows kept %.2f s + width %.2f s = %.2f s (measured %.2f s)",
                         run.width, fit[0] * run.nonZeros, fit[1] * run.kept, fit[2] * run.width,
                         fit[0] * run.nonZeros + fit[1] * run.kept + fit[2] * run.width, run.seconds))
        }
    }
    print("load average after: \(loadAverage())")
}

/// Least squares without intercept (normal equations, Gaussian elimination); nil unless there are more runs
/// than columns (with as many, the "fit" passes through every run and says nothing).
func leastSquares(_ rows: [[Double]], _ targets: [Double]) -> [Double]? {
    guard let columns = rows.first?.count, rows.count > columns else { return nil }
    // Columns scaled to unit size so the elimination does not mix 1e6-sized counts with 1e5-sized ones badly.
    let scales = (0..<columns).map { column in max(1e-30, rows.map { abs($0[column]) }.max() ?? 1) }
    var matrix = [[Double]](repeating: [Double](repeating: 0, count: columns + 1), count: columns)
    for (row, target) in zip(rows, targets) {
        for i in 0..<columns {
            for j in 0..<columns { matrix[i][j] += row[i] / scales[i] * row[j] / scales[j] }
            matrix[i][columns] += row[i] / scales[i] * target
        }
    }
    for pivot in 0..<columns {
        guard let best = (pivot..<columns).max(by: { abs(matrix[$0][pivot]) < abs(matrix[$1][pivot]) }),
              abs(matrix[best][pivot]) > 1e-12 else { return nil }
        matrix.swapAt(pivot, best)
        for row in 0..<columns where row != pivot {
            let factor = matrix[row][pivot] / matrix[pivot][pivot]
            for column in pivot...columns { matrix[row][column] -= factor * matrix[pivot][column] }
        }
    }
    return (0..<columns).map { matrix[$0][columns] / matrix[$0][$0] / scales[$0] }
}

/// Resets the process's peak RSS (Linux: writing 5 to clear_refs resets VmHWM), so the next reading is one phase's.
func resetPeakRSS() {
    try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
}

/// VmHWM (KiB) from /proc/self/status: the peak RSS since the last `resetPeakRSS`; nil where there is none.
func currentPeakRSSKiB() -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return nil }
    return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
}

/// A delphi cache: files `<first>_<last>.safetensors` of width/4 latents each (locations [N, 3] I32,
/// activations [N] F32, tokens [n_seq, ctx] I32).
/// Firing latents are drawn among `mayFire` latents spread evenly over the width.
func writeLatentCache(_ directory: String, sequences: Int, context: Int, width: Int, perToken: Int, mayFire: Int) throws {
    var random = BenchRandom(state: 5)
    let tokenIDs = (0..<(sequences * context)).map { $0 % context == 0 ? Int32(0) : Int32(1 + random.next() % 998) }
    let files = 4, span = width / files
    var entries = [[(Int32, Int32, Int32, Float)]](repeating: [], count: files)
    for sequence in 0..<sequences {
        for position in 0..<context {
            for _ in 0..<perToken {
                let latent = Int(random.next() % UInt64(mayFire)) * (width / mayFire)
                let file = min(files - 1, latent / span)
                entries[file].append((Int32(sequence), Int32(position), Int32(latent - file * span), Float(random.next() % 1000 + 1) / 100))
            }
        }
    }
    for file in 0..<files {
        let last = file == files - 1 ? width - 1 : (file + 1) * span - 1
        let list = entries[file]
        let path = (directory as NSString).appendingPathComponent("\(file * span)_\(last).safetensors")
        try writeStreamingSafetensors(path: path, tensors: [
            ("locations", "I32", [list.count, 3], list.count * 12), ("activations", "F32", [list.count], list.count * 4),
            ("tokens", "I32", [sequences, context], sequences * context * 4),
        ]) { index, write in
            switch index {
            case 0: write(list.flatMap { [$0.0, $0.1, $0.2] }.withUnsafeBufferPointer { Data(buffer: $0) })
            case 1: write(floatData(list.map(\.3)))
            default: write(tokenIDs.withUnsafeBufferPointer { Data(buffer: $0) })
            }
        }
    }
}
