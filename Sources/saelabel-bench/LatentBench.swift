import Foundation
import SAELabelCollect
import SAELabelCore

/// Sparse latent (delphi cache) collect time against the SAE width at a fixed number of non-zeros.
///
///     saelabel-bench latents [--tokens 65536] [--widths 16384,262144] [--per-token 32]
///
/// For each width, writes a synthetic cache (4 files of width/4 latents; every token has `per-token` random
/// latents firing, so the non-zeros do not grow with the width) and measures collect's streaming phase
/// (read, bucket, per-feature window state; no selection, no store). O(non-zeros) means the time stays
/// nearly flat as the width grows; O(features × windows) would grow with it.
func runLatentBenchmark(tokens requestedTokens: Int, widths: [Int], perToken: Int) {
    let context = 128
    let sequences = max(1, (requestedTokens + context - 1) / context)
    let tokens = sequences * context
    let directory = (NSTemporaryDirectory() as NSString).appendingPathComponent("saelabel-latent-bench-\(getpid())")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    print("latent benchmark: \(tokens) tokens (\(sequences) × \(context)), \(perToken) latents firing per token; load average \(loadAverage())")
    print("| width | non-zeros | blocks | stream s | s / s at first width | peak RSS so far |")
    print("|---:|---:|---:|---:|---:|---:|")
    var first: Double?
    for width in widths {
        let cache = (directory as NSString).appendingPathComponent("w\(width)/blocks.6")
        let tokenizer = (directory as NSString).appendingPathComponent("tokenizer.json")
        do {
            try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
            try writeBenchTokenizer(path: tokenizer)
            try writeLatentCache(cache, sequences: sequences, context: context, width: width, perToken: perToken)
            let options = CollectOptions(latentsDirectory: cache, tokenizerPath: tokenizer)
            let plan = try Collector.plan(options)
            let summary = try Collector.streamOnly(options, plan: plan)
            let base = first ?? summary.streamSeconds
            first = base
            print(String(format: "| %d | %d | %d | %.2f | %.2f× | %.0f MiB |", width, tokens * perToken, summary.blocks, summary.streamSeconds,
                         summary.streamSeconds / base, Double(peakRSSKiB()) / 1024))
        } catch {
            print("latent benchmark failed at width \(width): \(error)")
            exit(1)
        }
        try? FileManager.default.removeItem(atPath: (directory as NSString).appendingPathComponent("w\(width)"))
    }
}

/// A delphi cache: files `<first>_<last>.safetensors` of width/4 latents each (locations [N, 3] I32,
/// activations [N] F32, tokens [n_seq, ctx] I32).
func writeLatentCache(_ directory: String, sequences: Int, context: Int, width: Int, perToken: Int) throws {
    var random = BenchRandom(state: 5)
    let tokenIDs = (0..<(sequences * context)).map { $0 % context == 0 ? Int32(0) : Int32(1 + random.next() % 998) }
    let files = 4, span = width / files
    var entries = [[(Int32, Int32, Int32, Float)]](repeating: [], count: files)
    for sequence in 0..<sequences {
        for position in 0..<context {
            for _ in 0..<perToken {
                let latent = Int(random.next() % UInt64(width))
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
