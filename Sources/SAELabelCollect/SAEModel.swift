import COpenBLAS
import Foundation
import SAELabelCore

/// Activation functions saelabel can apply (SPEC §2, §10).
enum SAEArchitecture: Sendable, Equatable {
    /// relu(pre).
    case standard
    /// relu(pre)·(pre > threshold).
    case jumprelu
    /// Keep the k largest of pre, then relu.
    case topk(Int)
    /// sparsify's groupmax: the features form this many equal groups; each keeps only its largest, then relu.
    case groupMax(Int)
    /// (x'·W_enc + b_gate > 0) · relu(x'·(W_enc ⊙ exp(r_mag)) + b_mag) (SAELens sae_lens/saes/gated_sae.py).
    case gated
}

/// What is done to an activation vector before `b_dec` is subtracted (SAELens `normalize_activations`,
/// `run_time_activation_norm_fn_in` in sae_lens/saes/sae.py).
enum InputNormalization: Sendable, Equatable {
    case none
    /// `expected_average_only_in`: x · scaling_factor (the factor is in activation_scaler.json beside cfg.json).
    case scale(Float)
    /// `constant_norm_rescale`: x · √d_in / ‖x‖, per token.
    case constantNormRescale
    /// `layer_norm`: (x − mean) / (std + 1e-5), per token, std with Bessel's correction (torch.std's default).
    case layerNorm
}

/// Where an SAE came from, detected from what is on disk.
enum SAEFormat: String, Sendable {
    case saelens = "SAELens"
    case gemmaScope = "Gemma Scope"
    case sparsify = "sparsify"
}

/// The format-independent description collect needs.
struct SAEConfig: Sendable {
    var dIn: Int
    var dSAE: Int
    var architecture: SAEArchitecture
    var applyBDecToInput: Bool
    var normalization: InputNormalization = .none
    /// TopK SAEs with `rescale_acts_by_decoder_norm` rank and report pre·‖W_dec[f]‖ (SAELens topk_sae.py `encode`).
    var rescaleByDecoderNorm = false
    var hookName: String
    var modelName: String
    var neuronpediaID: String?
}

/// One float tensor of an SAE file, read as Float32 wherever it is stored.
struct SAETensor: @unchecked Sendable {
    enum Source {
        case safetensors(SafetensorsFile, TensorInfo)
        case npz(NpzArchive, String)
    }

    var source: Source
    var shape: [Int]
    var location: String
    /// A 2-D tensor stored column by column (npy `fortran_order: True`): storage rows are logical columns.
    var columnMajor = false

    var elementCount: Int { shape.reduce(1, *) }

    func readFloats() throws(SAELabelError) -> [Float] {
        switch source {
        case .safetensors(let file, let info): return file.readFloats(info)
        case .npz(let archive, let name): return try archive.readFloats(name)
        }
    }

    /// Streams the tensor in storage order as rows of `rowLength` Float32 values (several rows per call).
    func streamRows(rowLength: Int,
                    _ body: (_ firstRow: Int, _ rows: Int, _ values: UnsafePointer<Float>) throws(SAELabelError) -> Void) throws(SAELabelError) {
        switch source {
        case .npz(let archive, let name):
            try archive.streamRows(name, rowLength: rowLength, body)
        case .safetensors(let file, let info):
            let rowsPerChunk = max(1, (1 << 20) / max(1, rowLength))
            let totalRows = info.elementCount / max(1, rowLength)
            let buffer = UnsafeMutablePointer<Float>.allocate(capacity: rowsPerChunk * rowLength)
            defer { buffer.deallocate() }
            var row = 0
            while row < totalRows {
                let rows = min(rowsPerChunk, totalRows - row)
                file.readFloats(info, start: row * rowLength, count: rows * rowLength, into: buffer)
                try body(row, rows, buffer)
                file.release(info, start: row * rowLength, count: rows * rowLength)
                row += rows
            }
        }
    }

    /// The tensor's float32 values in the memory-mapped file, when it is stored as aligned float32 (read in place).
    func mappedFloat32() -> UnsafePointer<Float>? {
        guard case .safetensors(let file, let info) = source, info.dtype == .f32, let base = file.file.base,
              info.byteOffset % MemoryLayout<Float>.alignment == 0 else { return nil }
        return (base + info.byteOffset).assumingMemoryBound(to: Float.self)
    }

    /// Reads storage row `row` of `rowLength` values directly (memory-mapped sources only).
    func readRow(_ row: Int, rowLength: Int, into destination: UnsafeMutablePointer<Float>) -> Bool {
        guard case .safetensors(let file, let info) = source else { return false }
        file.readFloats(info, start: row * rowLength, count: rowLength, into: destination)
        return true
    }
}

/// A loaded SAE encoder: the config plus its encoder tensors, shape-checked (the decoder is checked, not loaded,
/// unless the activation needs its norms).
struct SAEModel: @unchecked Sendable {
    var config: SAEConfig
    var format: SAEFormat
    /// The folder (or npz file) the user named; its last component names the SAE.
    var path: String
    /// Files whose fingerprints guard a resumed job, with their roles.
    var files: [(path: String, role: String)]
    /// The encoder matrix, logically [d_in, d_sae]. `featureMajor`: stored as [d_sae, d_in] (sparsify's
    /// `encoder.weight`, or a Fortran-ordered npy W_enc), so one feature's weights are contiguous.
    var encoder: SAETensor
    var featureMajor = false
    /// b_enc, or b_gate for gated SAEs.
    var bEnc: SAETensor
    /// Subtracted from the input when `config.applyBDecToInput`.
    var bDec: SAETensor?
    var threshold: SAETensor?
    /// The checkpoint stores `log_threshold` instead of `threshold`.
    var thresholdIsLog = false
    /// Gated SAEs: r_mag and b_mag.
    var rMag: SAETensor?
    var bMag: SAETensor?
    /// [d_sae, d_out] decoder, loaded only for `rescaleByDecoderNorm`.
    var decoder: SAETensor?

    /// Opens whatever SAE `path` holds (SAELens folder, Gemma Scope params.npz or its folder, sparsify hookpoint).
    static func open(path: String) throws(SAELabelError) -> SAEModel {
        try SAEFormats.open(path: path)
    }

    /// Encoder columns for `features`, gathered into a contiguous row-major `[features.count, d_in]` matrix
    /// (row r = W_enc[:, features[r]]), so one GEMM computes exactly the features that are needed.
    /// The encoder is streamed once; only the gathered copy is held.
    func gatherEncoder(features: [Int]) throws(SAELabelError) -> [Float] {
        let dIn = config.dIn, dSAE = config.dSAE
        var gathered = [Float](repeating: 0, count: features.count * dIn)
        try gathered.withUnsafeMutableBufferPointer { (buffer: inout UnsafeMutableBufferPointer<Float>) throws(SAELabelError) in
            let out = buffer.baseAddress!
            if featureMajor {
                // Direct reads when the file is mapped; otherwise one streaming pass keeping the selected rows.
                var direct = true
                for (r, feature) in features.enumerated() where direct {
                    direct = encoder.readRow(feature, rowLength: dIn, into: out + r * dIn)
                }
                if direct { return }
                var slotOf = [Int32](repeating: -1, count: dSAE)
                for (r, feature) in features.enumerated() { slotOf[feature] = Int32(r) }
                try encoder.streamRows(rowLength: dIn) { first, rows, values in
                    for offset in 0..<rows where slotOf[first + offset] >= 0 {
                        (out + Int(slotOf[first + offset]) * dIn).update(from: values + offset * dIn, count: dIn)
                    }
                }
            } else {
                try encoder.streamRows(rowLength: dSAE) { first, rows, values in
                    for offset in 0..<rows {
                        let input = first + offset
                        let row = values + offset * dSAE
                        for (r, feature) in features.enumerated() { out[r * dIn + input] = row[feature] }
                    }
                }
            }
        }
        return gathered
    }

    /// The encoder rows of `features` as one GEMM reads them: straight from the memory-mapped file when they are a
    /// contiguous run of float32 features (no copy at all), else gathered for these features only.
    func encoderOperand(features: [Int]) throws(SAELabelError) -> EncoderOperand {
        let contiguous = features.isEmpty || features.last! - features[0] == features.count - 1
        if contiguous, let mapped = encoder.mappedFloat32(), encoder.shape.count == 2 {
            let first = features.first ?? 0
            if featureMajor {
                return EncoderOperand(base: mapped + first * config.dIn, leading: config.dIn, transposed: false, owned: nil)
            }
            if !encoder.columnMajor {
                return EncoderOperand(base: mapped + first, leading: config.dSAE, transposed: true, owned: nil)
            }
        }
        let gathered = try gatherEncoder(features: features)
        let owned = UnsafeMutablePointer<Float>.allocate(capacity: max(1, gathered.count))
        gathered.withUnsafeBufferPointer { owned.initialize(from: $0.baseAddress!, count: gathered.count) }
        return EncoderOperand(base: owned, leading: config.dIn, transposed: false, owned: owned)
    }

    func vector(_ tensor: SAETensor, features: [Int]) throws(SAELabelError) -> [Float] {
        let all = try tensor.readFloats()
        return features.map { all[$0] }
    }

    func thresholds(features: [Int]) throws(SAELabelError) -> [Float] {
        guard let threshold else { return [] }
        if threshold.elementCount == 1, config.dSAE != 1 {  // one global threshold (BatchTopK checkpoint)
            let global = try threshold.readFloats()[0]
            return [Float](repeating: global, count: features.count)
        }
        let values = try vector(threshold, features: features)
        return thresholdIsLog ? values.map { Foundation.exp($0) } : values
    }

    /// ‖W_dec[f]‖ for `features` (1 for all when the SAE does not rescale).
    func decoderNorms(features: [Int]) throws(SAELabelError) -> [Float] {
        guard config.rescaleByDecoderNorm, let decoder, decoder.shape.count == 2 else {
            return [Float](repeating: 1, count: features.count)
        }
        let width = decoder.shape[1]
        var norms = [Float](repeating: 0, count: config.dSAE)
        try decoder.streamRows(rowLength: width) { first, rows, values in
            for offset in 0..<rows {
                var sum: Float = 0
                for d in 0..<width { sum += values[offset * width + d] * values[offset * width + d] }
                norms[first + offset] = sum.squareRoot()
            }
        }
        return features.map { norms[$0] }
    }
}

/// Encoder rows as the GEMM operand A of `pre[rows, tokens] = A · inputᵀ`: row r starts at `base + r·leading`, or,
/// `transposed` (stored [d_in, n], SAELens `W_enc`), is column r of a matrix with leading dimension `leading`.
final class EncoderOperand: @unchecked Sendable {
    let base: UnsafePointer<Float>
    let leading: Int
    let transposed: Bool
    /// A gathered copy this operand owns (nil when it reads the mapped file in place).
    let owned: UnsafeMutablePointer<Float>?

    init(base: UnsafePointer<Float>, leading: Int, transposed: Bool, owned: UnsafeMutablePointer<Float>?) {
        self.base = base
        self.leading = leading
        self.transposed = transposed
        self.owned = owned
    }

    deinit { owned?.deallocate() }

    var readsInPlace: Bool { owned == nil }

    /// `output[r - rows.lowerBound, t] = Σ_d A[r, d]·input[t, d]` for `tokens` rows of `input` ([tokens, dIn]).
    func multiply(rows: Range<Int>, input: UnsafePointer<Float>, tokens: Int, dIn: Int,
                  into output: UnsafeMutablePointer<Float>, stride: Int) {
        guard !rows.isEmpty, tokens > 0 else { return }
        let first = transposed ? base + rows.lowerBound : base + rows.lowerBound * leading
        cblas_sgemm(CblasRowMajor, transposed ? CblasTrans : CblasNoTrans, CblasTrans, Int32(rows.count), Int32(tokens), Int32(dIn),
                    1, first, Int32(leading), input, Int32(dIn), 0, output, Int32(stride))
    }
}

/// Decoder directions, the identity of a feature across SAE versions (label carry-over, SPEC §14).
public enum SAEDecoder {
    /// The unit-length `W_dec` rows of `features`, row-major `[features.count, width]`; nil when the SAE has
    /// no decoder saelabel can read (no `W_dec`, or one stored column-major).
    public static func directions(saePath: String, features: [Int]) throws(SAELabelError) -> (width: Int, rows: [Float])? {
        let model = try SAEModel.open(path: saePath)
        guard let decoder = model.decoder, decoder.shape.count == 2, !decoder.columnMajor else { return nil }
        let width = decoder.shape[1]
        var slotOf = [Int32](repeating: -1, count: model.config.dSAE)
        for (slot, feature) in features.enumerated() where feature >= 0 && feature < slotOf.count { slotOf[feature] = Int32(slot) }
        var rows = [Float](repeating: 0, count: features.count * width)
        try decoder.streamRows(rowLength: width) { first, count, values in
            for offset in 0..<count where slotOf[first + offset] >= 0 {
                let slot = Int(slotOf[first + offset])
                var norm: Float = 0
                for d in 0..<width { norm += values[offset * width + d] * values[offset * width + d] }
                let scale = norm > 0 ? 1 / norm.squareRoot() : 0
                for d in 0..<width { rows[slot * width + d] = values[offset * width + d] * scale }
            }
        }
        return (width, rows)
    }
}

extension SAEDecoder {
    /// Each new row's most similar old row and each old row's most similar new row, by cosine of unit rows
    /// (`new` `[n, width]`, `old` `[m, width]`), computed by one GEMM per block of new rows so memory stays
    /// at `block × m` floats even for wide SAEs.
    public static func nearest(new: [Float], old: [Float], width: Int)
        -> (oldForNew: [Int], cosineForNew: [Float], newForOld: [Int]) {
        let n = width > 0 ? new.count / width : 0, m = width > 0 ? old.count / width : 0
        var oldForNew = [Int](repeating: -1, count: n), cosineForNew = [Float](repeating: -.infinity, count: n)
        var newForOld = [Int](repeating: -1, count: m), cosineForOld = [Float](repeating: -.infinity, count: m)
        guard n > 0, m > 0 else { return (oldForNew, cosineForNew, newForOld) }
        let block = max(1, min(n, (1 << 24) / m))
        var products = [Float](repeating: 0, count: block * m)
        for first in stride(from: 0, to: n, by: block) {
            let rows = min(block, n - first)
            new.withUnsafeBufferPointer { a in
                old.withUnsafeBufferPointer { b in
                    products.withUnsafeMutableBufferPointer { c in
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(m), Int32(width),
                                    1, a.baseAddress! + first * width, Int32(width), b.baseAddress, Int32(width), 0, c.baseAddress, Int32(m))
                    }
                }
            }
            for r in 0..<rows {
                for j in 0..<m {
                    let cosine = products[r * m + j]
                    if cosine > cosineForNew[first + r] { cosineForNew[first + r] = cosine; oldForNew[first + r] = j }
                    if cosine > cosineForOld[j] { cosineForOld[j] = cosine; newForOld[j] = first + r }
                }
            }
        }
        return (oldForNew, cosineForNew, newForOld)
    }
}
