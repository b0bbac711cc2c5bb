import Foundation
@testable import SAELabelCollect
import SAELabelCore
import SAELabelStore

/// A tensor to write into a safetensors file.
struct TestTensor {
    var name: String
    var dtype: String
    var shape: [Int]
    var bytes: Data

    static func floats(_ name: String, _ values: [Float], shape: [Int], dtype: String = "F32") -> TestTensor {
        var data = Data()
        for value in values {
            switch dtype {
            case "F16": withUnsafeBytes(of: Float16(value).bitPattern.littleEndian) { data.append(contentsOf: $0) }
            case "BF16": withUnsafeBytes(of: UInt16(value.bitPattern >> 16).littleEndian) { data.append(contentsOf: $0) }
            default: withUnsafeBytes(of: value.bitPattern.littleEndian) { data.append(contentsOf: $0) }
            }
        }
        return TestTensor(name: name, dtype: dtype, shape: shape, bytes: data)
    }

    static func integers(_ name: String, _ values: [Int], shape: [Int], dtype: String = "I32") -> TestTensor {
        var data = Data()
        for value in values {
            switch dtype {
            case "U16": withUnsafeBytes(of: UInt16(value).littleEndian) { data.append(contentsOf: $0) }
            case "U32": withUnsafeBytes(of: UInt32(value).littleEndian) { data.append(contentsOf: $0) }
            case "I64": withUnsafeBytes(of: Int64(value).littleEndian) { data.append(contentsOf: $0) }
            default: withUnsafeBytes(of: Int32(value).littleEndian) { data.append(contentsOf: $0) }
            }
        }
        return TestTensor(name: name, dtype: dtype, shape: shape, bytes: data)
    }
}

/// Rounds a value the way storing it in `dtype` does, so reference computations see what the file holds.
func stored(_ value: Float, _ dtype: String) -> Float {
    switch dtype {
    case "F16": return Float(Float16(value))
    case "BF16": return Float(bitPattern: value.bitPattern & 0xFFFF_0000)
    default: return value
    }
}

/// A minimal safetensors writer: 8-byte little-endian header length, JSON header, data.
func writeSafetensors(_ path: String, _ tensors: [TestTensor], headerOverride: String? = nil) throws {
    var entries: [String] = []
    var offset = 0
    for tensor in tensors {
        let shape = tensor.shape.map(String.init).joined(separator: ",")
        entries.append("\"\(tensor.name)\":{\"dtype\":\"\(tensor.dtype)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + tensor.bytes.count)]}")
        offset += tensor.bytes.count
    }
    var header = headerOverride ?? "{\"__metadata__\":{\"format\":\"pt\"},\(entries.joined(separator: ","))}"
    while header.utf8.count % 8 != 0 { header += " " }
    var data = Data()
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { data.append(contentsOf: $0) }
    data.append(contentsOf: Array(header.utf8))
    for tensor in tensors { data.append(tensor.bytes) }
    try data.write(to: URL(fileURLWithPath: path))
}

/// A fresh temporary directory.
func temporaryDirectory() -> String {
    let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("collect-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Deterministic test numbers.
struct TestRandom {
    var generator: SplitMix64
    init(_ seed: UInt64) { generator = SplitMix64(state: seed) }
    mutating func uniform() -> Float { Float(generator.unit()) }
    mutating func normal() -> Float {
        let u = generator.unit(), v = generator.unit()
        return Float((-2 * Foundation.log(u)).squareRoot() * Foundation.cos(2 * Double.pi * v))
    }
    mutating func int(_ bound: Int) -> Int { Int(generator.next() % UInt64(bound)) }
}

/// Byte-level vocabulary used by the fixtures. Id 0 is the special `<|endoftext|>` (BOS).
let fixtureVocabulary: [String] = {
    var tokens = ["<|endoftext|>", "Ġthe", "Ġcat", "Ġsat", "Ċ", "Ã", "©", "ðŁĺ", "Ģ", "hello", "Ġworld"]
    while tokens.count < 40 { tokens.append("w\(tokens.count)") }
    return tokens
}()

func writeTokenizer(_ path: String, vocabulary: [String] = fixtureVocabulary) throws {
    var vocab: [String: Int] = [:]
    for (id, token) in vocabulary.enumerated() where id > 0 { vocab[token] = id }
    let root: [String: Any] = [
        "version": "1.0",
        "added_tokens": [["id": 0, "content": vocabulary[0], "special": true]],
        "model": ["type": "BPE", "vocab": vocab, "merges": [String]()],
        "decoder": ["type": "ByteLevel"],
    ]
    try JSONSerialization.data(withJSONObject: root).write(to: URL(fileURLWithPath: path))
}

/// An SAE with known weights, written as an SAELens directory.
struct TestSAE {
    var dIn: Int
    var dSAE: Int
    var wEnc: [Float]  // [dIn, dSAE]
    var bEnc: [Float]
    var bDec: [Float]
    var threshold: [Float]
    var architecture: String  // "standard", "jumprelu", "topk"
    var k: Int = 0
    var applyBDec = true

    static func random(dIn: Int, dSAE: Int, architecture: String, seed: UInt64, dtype: String) -> TestSAE {
        var random = TestRandom(seed)
        let scale = 1 / Float(dIn).squareRoot()
        return TestSAE(dIn: dIn, dSAE: dSAE,
                       wEnc: (0..<(dIn * dSAE)).map { _ in stored(random.normal() * scale, dtype) },
                       bEnc: (0..<dSAE).map { _ in stored(-0.6 + 0.3 * random.normal(), dtype) },
                       bDec: (0..<dIn).map { _ in stored(0.1 * random.normal(), dtype) },
                       threshold: (0..<dSAE).map { _ in stored(0.2 + 0.1 * random.uniform(), dtype) },
                       architecture: architecture, k: max(1, dSAE / 3))
    }

    func write(to directory: String, dtype: String = "F32", cfg: [String: Any]? = nil) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var tensors = [TestTensor.floats("W_enc", wEnc, shape: [dIn, dSAE], dtype: dtype),
                       TestTensor.floats("b_enc", bEnc, shape: [dSAE], dtype: dtype),
                       TestTensor.floats("W_dec", [Float](repeating: 0, count: dIn * dSAE), shape: [dSAE, dIn], dtype: dtype),
                       TestTensor.floats("b_dec", bDec, shape: [dIn], dtype: dtype)]
        if architecture == "jumprelu" { tensors.append(.floats("threshold", threshold, shape: [dSAE], dtype: dtype)) }
        try writeSafetensors((directory as NSString).appendingPathComponent("sae_weights.safetensors"), tensors)
        var config: [String: Any] = cfg ?? [
            "d_in": dIn, "d_sae": dSAE, "dtype": "float32", "architecture": architecture,
            "apply_b_dec_to_input": applyBDec, "normalize_activations": "none",
            "metadata": ["model_name": "test-model", "hook_name": "blocks.1.hook_resid_post", "context_size": 16],
        ]
        if cfg == nil, architecture == "topk" { config["k"] = k }
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: (directory as NSString).appendingPathComponent("cfg.json")))
    }

    /// Reference encode with plain loops (Double accumulation).
    func encode(_ x: [Float]) -> [Float] {
        var pre = [Double](repeating: 0, count: dSAE)
        for f in 0..<dSAE {
            var sum = Double(bEnc[f])
            for i in 0..<dIn { sum += Double(x[i] - (applyBDec ? bDec[i] : 0)) * Double(wEnc[i * dSAE + f]) }
            pre[f] = sum
        }
        switch architecture {
        case "jumprelu":
            return (0..<dSAE).map { pre[$0] > Double(threshold[$0]) && pre[$0] > 0 ? Float(pre[$0]) : 0 }
        case "topk":
            let kth = pre.sorted(by: >)[k - 1]
            return pre.map { $0 >= kth && $0 > 0 ? Float($0) : 0 }
        default:
            return pre.map { $0 > 0 ? Float($0) : 0 }
        }
    }
}

/// A dense corpus: tokens [nSeq, ctx] and activations [nSeq, ctx, dIn].
struct TestCorpus {
    var nSeq: Int
    var ctx: Int
    var dIn: Int
    var tokens: [Int]
    var activations: [Float]

    static func random(nSeq: Int, ctx: Int, dIn: Int, seed: UInt64, dtype: String, bos: Bool = true) -> TestCorpus {
        var random = TestRandom(seed)
        var tokens: [Int] = []
        for _ in 0..<nSeq {
            for position in 0..<ctx { tokens.append(bos && position == 0 ? 0 : 1 + random.int(fixtureVocabulary.count - 1)) }
        }
        let activations = (0..<(nSeq * ctx * dIn)).map { _ in stored(random.normal(), dtype) }
        return TestCorpus(nSeq: nSeq, ctx: ctx, dIn: dIn, tokens: tokens, activations: activations)
    }

    func row(_ sequence: Int, _ position: Int) -> [Float] {
        let base = (sequence * ctx + position) * dIn
        return Array(activations[base..<(base + dIn)])
    }

    func write(_ path: String, dtype: String = "F32", sequences: Range<Int>? = nil) throws {
        let range = sequences ?? 0..<nSeq
        let tokenSlice = Array(tokens[(range.lowerBound * ctx)..<(range.upperBound * ctx)])
        let activationSlice = Array(activations[(range.lowerBound * ctx * dIn)..<(range.upperBound * ctx * dIn)])
        try writeSafetensors(path, [.integers("tokens", tokenSlice, shape: [range.count, ctx]),
                                    .floats("activations", activationSlice, shape: [range.count, ctx, dIn], dtype: dtype)])
    }
}

/// Reference per-feature activations [feature][sequence * ctx + position] (excluded tokens zeroed).
func referenceActivations(sae: TestSAE, corpus: TestCorpus, excluded: (Int, Int) -> Bool) -> [[Float]] {
    var result = [[Float]](repeating: [Float](repeating: 0, count: corpus.nSeq * corpus.ctx), count: sae.dSAE)
    for sequence in 0..<corpus.nSeq {
        for position in 0..<corpus.ctx where !excluded(sequence, position) {
            let encoded = sae.encode(corpus.row(sequence, position))
            for f in 0..<sae.dSAE { result[f][sequence * corpus.ctx + position] = encoded[f] }
        }
    }
    return result
}

struct ReferenceWindow: Equatable {
    var sequence: Int
    var start: Int
    var peak: Float
}

/// Brute force: every window's max, ranked descending, earliest first on ties.
func referenceWindows(_ values: [Float], nSeq: Int, ctx: Int, window: Int) -> [ReferenceWindow] {
    var windows: [ReferenceWindow] = []
    for sequence in 0..<nSeq {
        for start in stride(from: 0, to: ctx, by: window) {
            let slice = values[(sequence * ctx + start)..<(sequence * ctx + min(ctx, start + window))]
            windows.append(ReferenceWindow(sequence: sequence, start: start, peak: slice.max() ?? 0))
        }
    }
    return windows.enumerated().sorted { $0.element.peak > $1.element.peak || ($0.element.peak == $1.element.peak && $0.offset < $1.offset) }.map(\.element)
}

/// A store at a fresh temporary path.
func temporaryStore(in directory: String) throws -> JobStore {
    try JobStore(path: (directory as NSString).appendingPathComponent("job.sqlite"))
}

func featureRowCount(_ store: JobStore) throws -> Int {
    try store.features(in: FeatureState.allCases).count
}
