import COpenBLAS
import Foundation
import SAELabelCore

/// Streams dense activations through the SAE encoder in batches of whole windows.
///
/// Per batch: the rows are converted to Float32 (b_dec subtracted when the SAE asks for it), checked for
/// NaN/Inf, and encoded by one `cblas_sgemm` into `pre[feature, token]`: row-major `[features, batch]`, so each
/// feature's activations over the batch are contiguous for the per-window pass. Only the selected features'
/// encoder columns are multiplied, except for topk, whose k largest are taken over all features.
struct DenseEncoder {
    let inputs: CollectInputs
    let options: CollectOptions
    let accumulators: FeatureAccumulators

    /// Returns the number of excluded tokens.
    func run(progress: (Int, Int) -> Void) throws(SAELabelError) -> Int {
        openblas_set_num_threads(Int32(max(1, options.blasThreads)))
        guard let sae = inputs.sae else { return 0 }
        let dIn = inputs.dIn
        let selected = accumulators.features
        let computed: [Int]
        let rowOfSlot: [Int]
        var topK: Int?
        var groupCount: Int?
        if case .topk(let k) = sae.config.architecture, !selected.isEmpty {
            computed = Array(0..<inputs.featureCount)
            rowOfSlot = selected
            topK = k
        } else if case .groupMax(let groups) = sae.config.architecture, !selected.isEmpty {
            computed = Array(0..<inputs.featureCount)
            rowOfSlot = selected
            groupCount = groups
        } else {
            computed = selected
            rowOfSlot = Array(selected.indices)
        }
        let isJumpReLU = sae.config.architecture == .jumprelu
        let isGated = sae.config.architecture == .gated
        let weights = try sae.gatherEncoder(features: computed)
        let bias = try sae.vector(sae.bEnc, features: computed)
        let thresholds = try isJumpReLU ? sae.thresholds(features: computed) : []
        // Gated: the magnitude path reuses x'·W_enc, scaled by exp(r_mag) (sae_lens/saes/gated_sae.py `encode`).
        var magnitudeScale: [Float] = [], magnitudeBias: [Float] = []
        if isGated, let rMag = sae.rMag, let bMag = sae.bMag {
            magnitudeScale = try sae.vector(rMag, features: computed).map { Foundation.exp($0) }
            magnitudeBias = try sae.vector(bMag, features: computed)
        }
        let decoderNorms: [Float]? = try topK != nil && sae.config.rescaleByDecoderNorm ? sae.decoderNorms(features: computed) : nil
        var decoderBias: [Float]?
        if sae.config.applyBDecToInput, let bDec = sae.bDec { decoderBias = try bDec.readFloats() }
        let normalization = sae.config.normalization
        let exclusion = TokenExclusion(options: options, decoder: inputs.decoder)
        let window = options.windowLength
        let batch = max(window, options.batchTokens / window * window)
        let rows = computed.count

        let input = UnsafeMutablePointer<Float>.allocate(capacity: batch * dIn)
        let output = UnsafeMutablePointer<Float>.allocate(capacity: max(1, rows * batch))
        let kth = UnsafeMutablePointer<Float>.allocate(capacity: batch)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: topK == nil ? 1 : rows * 8)
        let groupMaxima = UnsafeMutablePointer<Float>.allocate(capacity: (groupCount ?? 0) * batch + 1)
        defer { input.deallocate(); output.deallocate(); kth.deallocate(); scratch.deallocate(); groupMaxima.deallocate() }

        struct BatchWindow { var offset: Int; var length: Int; var sequence: Int; var start: Int; var order: Int64 }
        var windows: [BatchWindow] = []
        windows.reserveCapacity(batch / window + 1)
        var excludedInBatch: [Int] = []
        var fill = 0
        var excludedTotal = 0
        var done = 0
        var order: Int64 = 0

        func flush() {
            defer {
                done += fill
                fill = 0
                windows.removeAll(keepingCapacity: true)
                excludedInBatch.removeAll(keepingCapacity: true)
                progress(done, inputs.totalTokens)
            }
            guard fill > 0, rows > 0 else { return }
            weights.withUnsafeBufferPointer { w in
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(fill), Int32(dIn),
                            1, w.baseAddress, Int32(dIn), input, Int32(dIn), 0, output, Int32(batch))
            }
            if let k = topK { kthLargest(output: output, rows: rows, tokens: fill, stride: batch, bias: bias, scale: decoderNorms,
                                         k: k, scratch: scratch, into: kth) }
            if let groups = groupCount {
                groupMaximum(output: output, rows: rows, tokens: fill, stride: batch, bias: bias, groups: groups, into: groupMaxima)
            }
            for (slot, row) in rowOfSlot.enumerated() {
                let values = output + row * batch
                let b = bias[row]
                if let groups = groupCount {
                    let maxima = groupMaxima + (row / (rows / groups)) * batch
                    for index in 0..<fill {
                        let v = values[index] + b
                        values[index] = (v >= maxima[index] && v > 0) ? v : 0
                    }
                } else if topK != nil {
                    let s = decoderNorms?[row] ?? 1
                    for index in 0..<fill {
                        let v = (values[index] + b) * s
                        values[index] = (v >= kth[index] && v > 0) ? v : 0
                    }
                } else if isGated {
                    let scale = magnitudeScale[row], magnitude = magnitudeBias[row]
                    for index in 0..<fill {
                        let p = values[index]
                        let m = p * scale + magnitude
                        values[index] = (p + b > 0 && m > 0) ? m : 0
                    }
                } else if isJumpReLU {
                    let t = thresholds[row]
                    for index in 0..<fill {
                        let v = values[index] + b
                        values[index] = (v > t && v > 0) ? v : 0
                    }
                } else {
                    for index in 0..<fill {
                        let v = values[index] + b
                        values[index] = v > 0 ? v : 0
                    }
                }
                for index in excludedInBatch { values[index] = 0 }
                for w in windows {
                    let pointer = values + w.offset
                    let peak = peakValue(pointer, w.length)
                    if peak > 0 {
                        accumulators.observeActive(slot, values: pointer, length: w.length, peak: peak,
                                                   sequence: w.sequence, start: w.start, order: w.order)
                    } else {
                        accumulators.observeInactive(slot, length: w.length, sequence: w.sequence, start: w.start, order: w.order)
                    }
                }
            }
        }

        for shard in inputs.dense {
            let context = shard.context
            let elementBytes = shard.activations.dtype.byteCount
            for sequence in 0..<shard.sequences {
                var start = 0
                while start < context {
                    let length = min(window, context - start)
                    if fill + length > batch { flush() }
                    let firstToken = sequence * context + start
                    let rowsPointer = input + fill * dIn
                    shard.file.readFloats(shard.activations, start: firstToken * dIn, count: length * dIn, into: rowsPointer)
                    for offset in 0..<length {
                        let row = rowsPointer + offset * dIn
                        let token = shard.file.readInteger(shard.tokens, at: firstToken + offset)
                        if exclusion.excludes(token: token, position: start + offset) {
                            // Never counted, so whatever the row holds (e.g. an Inf on a BOS attention sink) is ignored.
                            row.update(repeating: 0, count: dIn)
                            excludedInBatch.append(fill + offset)
                            excludedTotal += 1
                            continue
                        }
                        var squares: Float = 0
                        for d in 0..<dIn { squares += row[d] * row[d] }
                        if !squares.isFinite {
                            for d in 0..<dIn where !row[d].isFinite {
                                let global = shard.firstSequence + sequence
                                throw .badInput(location: shard.file.location("activations"),
                                                problem: "non-finite value (\(row[d])) at sequence \(sequence)\(global != sequence ? " (corpus sequence \(global))" : ""), position \(start + offset), dimension \(d); fix the activations before collecting")
                            }
                        }
                        if let limit = exclusion.normAbove, squares.squareRoot() > limit {
                            excludedInBatch.append(fill + offset)
                            excludedTotal += 1
                        }
                        normalize(row, dIn: dIn, squares: squares, normalization)
                        if let decoderBias {
                            for d in 0..<dIn { row[d] -= decoderBias[d] }
                        }
                    }
                    windows.append(BatchWindow(offset: fill, length: length, sequence: shard.firstSequence + sequence,
                                               start: start, order: order))
                    order += 1
                    fill += length
                    start += length
                }
                // The rows are copied out; let the kernel drop their pages so a huge shard never stays resident.
                shard.file.file.releaseBefore(shard.activations.byteOffset + (sequence + 1) * context * dIn * elementBytes)
            }
        }
        flush()
        return excludedTotal
    }
}

/// Maximum of `count` non-negative values (SIMD for whole groups of 8).
@inline(__always)
func peakValue(_ values: UnsafeMutablePointer<Float>, _ count: Int) -> Float {
    var index = 0
    var peak: Float = 0
    if count >= 8 {
        let raw = UnsafeRawPointer(values)
        var lanes = SIMD8<Float>(repeating: 0)
        while index + 8 <= count {
            lanes = pointwiseMax(lanes, raw.loadUnaligned(fromByteOffset: index * 4, as: SIMD8<Float>.self))
            index += 8
        }
        peak = lanes.max()
    }
    while index < count {
        peak = max(peak, values[index])
        index += 1
    }
    return peak
}

/// Applies the SAE's input normalization to one activation vector in place (`squares` = ‖row‖²), as SAELens's
/// `run_time_activation_norm_fn_in` (sae_lens/saes/sae.py) does before b_dec is subtracted.
@inline(__always)
func normalize(_ row: UnsafeMutablePointer<Float>, dIn: Int, squares: Float, _ normalization: InputNormalization) {
    switch normalization {
    case .none:
        return
    case .scale(let factor):
        for d in 0..<dIn { row[d] *= factor }
    case .constantNormRescale:
        guard squares > 0 else { return }
        let factor = Float(dIn).squareRoot() / squares.squareRoot()
        for d in 0..<dIn { row[d] *= factor }
    case .layerNorm:
        var mean: Float = 0
        for d in 0..<dIn { mean += row[d] }
        mean /= Float(dIn)
        var variance: Float = 0
        for d in 0..<dIn {
            row[d] -= mean
            variance += row[d] * row[d]
        }
        let std = (variance / Float(max(1, dIn - 1))).squareRoot()  // torch.std: Bessel's correction
        let inverse = 1 / (std + 1e-5)
        for d in 0..<dIn { row[d] *= inverse }
    }
}

/// For each of `groups` equal, consecutive groups of features and each token, the largest `pre + bias`
/// (sparsify's groupmax activation keeps only each group's maximum, sparsify/fused_encoder.py).
func groupMaximum(output: UnsafeMutablePointer<Float>, rows: Int, tokens: Int, stride: Int, bias: [Float], groups: Int,
                  into maxima: UnsafeMutablePointer<Float>) {
    let size = rows / groups
    for group in 0..<groups {
        let target = maxima + group * stride
        for index in 0..<tokens { target[index] = -.infinity }
        for row in (group * size)..<((group + 1) * size) {
            let source = output + row * stride
            let b = bias[row]
            for index in 0..<tokens { target[index] = max(target[index], source[index] + b) }
        }
    }
}

/// For each token (column), the k-th largest of `(pre + bias)·scale` over all `rows` features.
func kthLargest(output: UnsafeMutablePointer<Float>, rows: Int, tokens: Int, stride: Int, bias: [Float], scale: [Float]? = nil,
                k: Int, scratch: UnsafeMutablePointer<Float>, into result: UnsafeMutablePointer<Float>) {
    var first = 0
    while first < tokens {
        let block = min(8, tokens - first)
        for row in 0..<rows {
            let source = output + row * stride + first
            let b = bias[row]
            if let scale {
                let s = scale[row]
                for column in 0..<block { scratch[column * rows + row] = (source[column] + b) * s }
            } else {
                for column in 0..<block { scratch[column * rows + row] = source[column] + b }
            }
        }
        for column in 0..<block {
            result[first + column] = select(scratch + column * rows, count: rows, rank: k - 1)
        }
        first += block
    }
}

/// The element that would be at `rank` if `values[0..<count]` were sorted descending (reorders the buffer).
func select(_ values: UnsafeMutablePointer<Float>, count: Int, rank: Int) -> Float {
    var lower = 0, upper = count - 1
    while lower < upper {
        let pivot = values[(lower + upper) / 2]
        var i = lower, j = upper
        while i <= j {
            while values[i] > pivot { i += 1 }
            while values[j] < pivot { j -= 1 }
            if i <= j {
                let saved = values[i]; values[i] = values[j]; values[j] = saved
                i += 1; j -= 1
            }
        }
        if rank <= j { upper = j } else if rank >= i { lower = i } else { return values[rank] }
    }
    return values[rank]
}

/// Reads a delphi sparse latent cache: no encode, activations come per (sequence, position, latent).
struct LatentReader {
    let inputs: CollectInputs
    let options: CollectOptions
    let accumulators: FeatureAccumulators

    func run(progress: (Int, Int) -> Void) throws(SAELabelError) -> Int {
        guard let tokenShard = inputs.latents.first else { return 0 }
        let sequences = tokenShard.tokens.shape[0], context = tokenShard.tokens.shape[1]
        let excludedTokens = inputs.excludedLatentTokens(TokenExclusion(options: options, decoder: inputs.decoder))
        let window = options.windowLength
        let selected = accumulators.features
        var valuesBuffer = [Float](repeating: 0, count: window)
        for (shardIndex, shard) in inputs.latents.enumerated() {
            defer { progress(inputs.totalTokens * (shardIndex + 1) / inputs.latents.count, inputs.totalTokens) }
            let lower = selected.partitionIndex { $0 >= shard.first }
            let upper = selected.partitionIndex { $0 > shard.last }
            guard lower < upper else { continue }
            let count = shard.locations.shape[0]
            let span = shard.last - shard.first + 1
            // Bucket the entries of the selected latents (counting sort), keeping (flat token index, value).
            var slotOfLatent = [Int](repeating: -1, count: span)
            for slot in lower..<upper { slotOfLatent[selected[slot] - shard.first] = slot - lower }
            let values = shard.file.readFloats(shard.activations)
            var flats = [Int](repeating: 0, count: count)
            var buckets = [Int](repeating: -1, count: count)
            var bucketCounts = [Int](repeating: 0, count: upper - lower)
            let locations = shard.file.readIntegers(shard.locations, start: 0, count: count * 3)
            for entry in 0..<count {
                let (flat, latent) = try shard.entry(entry, locations: locations, values: values, tokens: tokenShard.tokens.shape,
                                                     excluded: excludedTokens)
                flats[entry] = flat
                let bucket = slotOfLatent[latent]
                if bucket >= 0 {
                    buckets[entry] = bucket
                    bucketCounts[bucket] += 1
                }
            }
            var bucketStart = [Int](repeating: 0, count: upper - lower + 1)
            for bucket in 0..<(upper - lower) { bucketStart[bucket + 1] = bucketStart[bucket] + bucketCounts[bucket] }
            var cursor = bucketStart
            var sorted = [Int](repeating: 0, count: bucketStart.last ?? 0)
            for entry in 0..<count where buckets[entry] >= 0 {
                sorted[cursor[buckets[entry]]] = entry
                cursor[buckets[entry]] += 1
            }
            for bucket in 0..<(upper - lower) {
                let slot = lower + bucket
                let entries = sorted[bucketStart[bucket]..<bucketStart[bucket + 1]].sorted { flats[$0] < flats[$1] || (flats[$0] == flats[$1] && $0 < $1) }
                var next = 0
                var order: Int64 = 0
                valuesBuffer.withUnsafeMutableBufferPointer { buffer in
                    let pointer = buffer.baseAddress!
                    for sequence in 0..<sequences {
                        var start = 0
                        while start < context {
                            let length = min(window, context - start)
                            let first = sequence * context + start
                            if next < entries.count, flats[entries[next]] < first + length {
                                for index in 0..<length { pointer[index] = 0 }
                                while next < entries.count, flats[entries[next]] < first + length {
                                    let entry = entries[next]
                                    if !excludedTokens.contains(flats[entry]) { pointer[flats[entry] - first] = max(0, values[entry]) }
                                    next += 1
                                }
                                let peak = peakValue(pointer, length)
                                if peak > 0 {
                                    accumulators.observeActive(slot, values: pointer, length: length, peak: peak,
                                                               sequence: sequence, start: start, order: order)
                                } else {
                                    accumulators.observeInactive(slot, length: length, sequence: sequence, start: start, order: order)
                                }
                            } else {
                                accumulators.observeInactive(slot, length: length, sequence: sequence, start: start, order: order)
                            }
                            order += 1
                            start += length
                        }
                    }
                }
            }
        }
        return excludedTokens.count
    }
}

private extension Array where Element == Int {
    /// First index whose element satisfies `predicate` (the array is sorted and `predicate` monotone).
    func partitionIndex(where predicate: (Int) -> Bool) -> Int {
        var low = 0, high = count
        while low < high {
            let middle = (low + high) / 2
            if predicate(self[middle]) { high = middle } else { low = middle + 1 }
        }
        return low
    }
}
