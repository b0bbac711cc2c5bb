import COpenBLAS
import Foundation
import SAELabelCore
import SAELabelKernels

/// Streams dense activations through the SAE encoder in batches of whole windows.
///
/// Per batch: the rows are converted to Float32 (b_dec subtracted when the SAE asks for it) and checked for
/// NaN/Inf; then the features' rows are encoded in chunks (`ChunkGeometry`: one `cblas_sgemm` each into
/// `pre[row, token]`, row-major, so each feature's activations over the batch are contiguous and a chunk stays
/// in cache for the per-feature pass that follows it). With `blasThreads` T > 1, T workers take chunks in turn,
/// each running a single-threaded GEMM and then the per-feature pass of its chunk: chunk boundaries never depend
/// on T and every feature's state is its own, so results are identical for any T.
/// Only the selected features' rows are multiplied; TopK needs the k-th value over all features per token,
/// computed inline when the block is every feature and otherwise taken from `kthByToken` (`TopKThresholds`).
struct DenseEncoder {
    let inputs: CollectInputs
    let options: CollectOptions
    let accumulators: FeatureAccumulators
    /// TopK SAEs whose block does not hold every feature: the k-th largest activation of each corpus token.
    var kthByToken: [Float]? = nil

    /// Returns the number of excluded tokens.
    func run(progress: (Int, Int) -> Void) throws(SAELabelError) -> Int {
        guard let sae = inputs.sae else { return 0 }
        openblas_set_num_threads(1)  // parallel over chunks of rows instead (see above)
        let selected = accumulators.features
        let plan = try EncodePlan(sae: sae, selected: selected, featureCount: inputs.featureCount, kthByToken: kthByToken)
        let rows = plan.computed.count
        let threads = max(1, options.blasThreads)
        let chunks = ChunkGeometry(rows: rows, preferredRows: options.encodeChunkRows)
        // The per-feature pass over whole-row outputs goes by selected slots, not by computed rows.
        let slotChunks = ChunkGeometry(rows: selected.count, preferredRows: options.encodeChunkRows)
        let batch = BatchStream.batchSize(options)
        // Whole-row outputs only when a rule needs every row's values first (inline TopK, groupMax).
        let output = UnsafeMutablePointer<Float>.allocate(capacity: plan.needsAllRows ? max(1, rows * batch) : 1)
        let chunkBuffers = UnsafeMutablePointer<Float>.allocate(capacity: plan.needsAllRows ? 1 : threads * chunks.largest * batch)
        let limits = UnsafeMutablePointer<Float>.allocate(capacity: max(1, plan.limitRows * batch))
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: plan.inlineK == nil ? 1 : threads * rows * 8)
        defer { output.deallocate(); chunkBuffers.deallocate(); limits.deallocate(); scratch.deallocate() }
        let geometry = inputs.windowGeometry(window: options.windowSelection.windowLength)

        return try BatchStream(inputs: inputs, options: options).run(progress: progress) { encoded, prepareNext in
            let fill = encoded.fill
            guard rows > 0 else { return }
            let batchView = EncodedBatch(windows: encoded.windows, keep: encoded.keep, columnLimits: limits, stride: batch,
                                         geometry: geometry)
            if !plan.needsAllRows {
                if let table = plan.kthByToken {
                    table.withUnsafeBufferPointer { limits.update(from: $0.baseAddress! + encoded.firstToken, count: fill) }
                }
                let next = WorkCounter(limit: chunks.count)
                onThreads(threads) { worker in
                    prepareNext(worker)  // this worker's share of the next batch's rows
                    let buffer = chunkBuffers + worker * chunks.largest * batch
                    while let chunk = next.take() {
                        let range = chunks.rows(of: chunk)
                        plan.encoder.multiply(rows: range, input: encoded.input, tokens: fill, dIn: inputs.dIn, into: buffer, stride: batch)
                        accumulators.observe(slots: range, batch: batchView, activation: plan.activation) { slot in
                            (buffer + (slot - range.lowerBound) * batch, slot)
                        }
                    }
                }
                return
            }
            let gemms = WorkCounter(limit: chunks.count)
            onThreads(threads) { worker in
                prepareNext(worker)
                while let chunk = gemms.take() {
                    let range = chunks.rows(of: chunk)
                    plan.encoder.multiply(rows: range, input: encoded.input, tokens: fill, dIn: inputs.dIn,
                                          into: output + range.lowerBound * batch, stride: batch)
                }
            }
            if let k = plan.inlineK {
                let blocks = WorkCounter(limit: (fill + 63) / 64)
                onThreads(threads) { worker in
                    while let block = blocks.take() {
                        kthLargest(output: output, rows: rows, columns: (block * 64)..<min(fill, (block + 1) * 64), stride: batch,
                                   bias: plan.bias, scale: plan.scale, k: k, scratch: scratch + worker * rows * 8, into: limits)
                    }
                }
            } else if let groups = plan.groups {
                let next = WorkCounter(limit: groups)
                onThreads(threads) { _ in
                    while let group = next.take() {
                        groupMaximum(output: output, rows: rows, tokens: fill, stride: batch, bias: plan.bias, groups: groups,
                                     groupRange: group..<(group + 1), into: limits)
                    }
                }
            }
            let passes = WorkCounter(limit: slotChunks.count)
            onThreads(threads) { _ in
                while let chunk = passes.take() {
                    let slots = slotChunks.rows(of: chunk)
                    accumulators.observe(slots: slots, batch: batchView, activation: plan.activation) { slot in
                        let row = plan.rowOfSlot[slot]
                        return (output + row * batch, row)
                    }
                }
            }
        }
    }
}

/// How a block's encoder rows are cut into GEMM chunks: an even number of chunks of nearly equal size (they
/// differ by at most one row), as close to `preferredRows` each as an even count allows. Larger chunks mean
/// fewer re-packs of the batch by BLAS (once per chunk); an even count of equal chunks keeps two workers
/// equally loaded whatever the block's width. The geometry depends on the rows alone, never on the thread
/// count, so every feature's GEMM (and so every stored value) is the same for any number of threads.
struct ChunkGeometry: Equatable {
    let rows: Int
    let count: Int

    init(rows: Int, preferredRows: Int) {
        self.rows = max(0, rows)
        guard rows > 1 else {
            count = self.rows
            return
        }
        let pairs = (Double(rows) / Double(2 * max(1, preferredRows))).rounded()
        count = min(rows - rows % 2, 2 * max(1, Int(pairs)))
    }

    /// Rows of chunk `index` (0..<count).
    func rows(of index: Int) -> Range<Int> { (index * rows / count)..<((index + 1) * rows / count) }

    /// Rows of the largest chunk (the size of a worker's output buffer).
    var largest: Int { count == 0 ? 0 : (rows + count - 1) / count }
}

/// What one block multiplies and how its rows become activations.
struct EncodePlan {
    /// Encoder rows multiplied (ascending feature indices); parameters are indexed by position in this list.
    var computed: [Int]
    /// Row (index into `computed`) of each selected slot.
    var rowOfSlot: [Int]
    var encoder: EncoderOperand
    var activation: Activation
    var bias: [Float]
    var scale: [Float]?
    /// TopK over every feature in this block: the k to select per token.
    var inlineK: Int?
    /// groupMax: the number of whole groups in `computed`.
    var groups: Int?
    var kthByToken: [Float]?

    var needsAllRows: Bool { inlineK != nil || groups != nil }
    /// Rows of per-column limits the rule reads (k-th values, or one row per group).
    var limitRows: Int { groups ?? ((inlineK != nil || kthByToken != nil) ? 1 : 0) }

    init(sae: SAEModel, selected: [Int], featureCount: Int, kthByToken: [Float]?) throws(SAELabelError) {
        switch sae.config.architecture {
        case .topk(let k) where kthByToken == nil && !selected.isEmpty:
            computed = Array(0..<featureCount)
            rowOfSlot = selected
            inlineK = k
        case .groupMax(let groupCount) where !selected.isEmpty:
            // Only the groups holding a selected feature: each group's maximum needs all of that group.
            let size = featureCount / max(1, groupCount)
            var touched: [Int] = []
            for feature in selected where touched.last != feature / size { touched.append(feature / size) }
            computed = touched.flatMap { ($0 * size)..<(($0 + 1) * size) }
            var rowOf = [Int](repeating: 0, count: featureCount)
            for (row, feature) in computed.enumerated() { rowOf[feature] = row }
            rowOfSlot = selected.map { rowOf[$0] }
            groups = touched.count
        default:
            computed = selected
            rowOfSlot = Array(selected.indices)
        }
        self.kthByToken = kthByToken
        encoder = try sae.encoderOperand(features: computed)
        bias = try sae.vector(sae.bEnc, features: computed)
        switch sae.config.architecture {
        case .standard:
            activation = .relu(bias: bias)
        case .jumprelu:
            activation = .jumpReLU(bias: bias, threshold: try sae.thresholds(features: computed))
        case .gated:
            // The magnitude path reuses x'·W_enc, scaled by exp(r_mag) (sae_lens/saes/gated_sae.py `encode`).
            guard let rMag = sae.rMag, let bMag = sae.bMag else { throw .badInput(location: sae.path, problem: "gated SAE without r_mag and b_mag") }
            activation = .gated(gateBias: bias, magnitudeScale: try sae.vector(rMag, features: computed).map { Foundation.exp($0) },
                                magnitudeBias: try sae.vector(bMag, features: computed))
        case .topk:
            scale = sae.config.rescaleByDecoderNorm ? try sae.decoderNorms(features: computed) : nil
            activation = .topK(bias: bias, scale: scale)
        case .groupMax(let groupCount):
            activation = .groupMax(bias: bias, groupSize: featureCount / max(1, groupCount))
        }
    }
}

/// The k-th largest activation of every corpus token over all features of a TopK SAE, for blocks that multiply
/// only their own features: one extra pass over the corpus, GEMMs of `ChunkGeometry` chunks of features
/// feeding a running top-k per token (one per worker, merged per token), so no full-width output is ever held.
enum TopKThresholds {
    static func compute(inputs: CollectInputs, options: CollectOptions) throws(SAELabelError) -> [Float]? {
        guard let sae = inputs.sae, case .topk(let k) = sae.config.architecture else { return nil }
        openblas_set_num_threads(1)
        let all = Array(0..<inputs.featureCount)
        let encoder = try sae.encoderOperand(features: all)
        let bias = try sae.vector(sae.bEnc, features: all)
        let scale: [Float]? = sae.config.rescaleByDecoderNorm ? try sae.decoderNorms(features: all) : nil
        let threads = max(1, options.blasThreads)
        let chunks = ChunkGeometry(rows: all.count, preferredRows: options.encodeChunkRows)
        let batch = BatchStream.batchSize(options)
        let heaps = (0..<threads).map { _ in RunningTopK(k: k, columns: batch) }
        let buffers = UnsafeMutablePointer<Float>.allocate(capacity: max(1, threads * chunks.largest * batch))
        let merged = UnsafeMutablePointer<Float>.allocate(capacity: threads * k)
        defer { buffers.deallocate(); merged.deallocate() }
        var table = [Float](repeating: -.infinity, count: inputs.totalTokens)
        _ = try BatchStream(inputs: inputs, options: options).run(progress: { _, _ in }) { encoded, prepareNext in
            let fill = encoded.fill
            for heap in heaps { heap.reset() }
            let next = WorkCounter(limit: chunks.count)
            onThreads(threads) { worker in
                prepareNext(worker)
                let buffer = buffers + worker * chunks.largest * batch
                while let chunk = next.take() {
                    let range = chunks.rows(of: chunk)
                    encoder.multiply(rows: range, input: encoded.input, tokens: fill, dIn: inputs.dIn, into: buffer, stride: batch)
                    heaps[worker].offer(output: buffer, rows: range, stride: batch, columnRange: 0..<fill, bias: bias, scale: scale)
                }
            }
            // The k largest of the union of every worker's k largest are the column's k largest.
            for column in 0..<fill {
                var count = 0
                for heap in heaps { count += heap.values(column, into: merged + count) }
                table[encoded.firstToken + column] = count < k ? -.infinity : select(merged, count: count, rank: k - 1)
            }
        }
        return table
    }
}

/// Runs `body(worker)` for workers 0..<threads at once (the calling thread is one of them) and waits for all.
/// The bodies share buffers by pointer: every caller gives each worker disjoint rows, slots or columns, and
/// nothing outlives the call (concurrentPerform returns after every worker finished).
func onThreads(_ threads: Int, _ body: (Int) -> Void) {
    guard threads > 1 else { return body(0) }
    withoutActuallyEscaping(body) { escapable in
        let shared = SharedWork(body: escapable)
        DispatchQueue.concurrentPerform(iterations: threads) { shared.body($0) }
    }
}

private struct SharedWork: @unchecked Sendable {
    let body: (Int) -> Void
}

/// Hands out 0, 1, 2, … below `limit`, once each, to whichever worker asks first.
final class WorkCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var next = 0
    let limit: Int

    init(limit: Int) { self.limit = limit }

    func take() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard next < limit else { return nil }
        next += 1
        return next - 1
    }
}

/// One batch of encoder input, as `BatchStream` hands it over.
struct InputBatch {
    /// [fill, dIn] rows, normalized, b_dec subtracted, excluded rows zeroed.
    var input: UnsafeMutablePointer<Float>
    var fill: Int
    var windows: UnsafeBufferPointer<BatchWindow>
    var keep: UnsafePointer<Float>
    /// Flat corpus index of the batch's first token (batches cover the corpus in order).
    var firstToken: Int
}

/// Where one batch is prepared: its rows, their keep flags and its windows.
struct BatchBuffers {
    let input: UnsafeMutablePointer<Float>
    let keep: UnsafeMutablePointer<Float>
    /// A window holds at least one token, so a batch holds at most `batch` windows.
    let windows: UnsafeMutablePointer<BatchWindow>

    init(batch: Int, dIn: Int) {
        input = .allocate(capacity: max(1, batch * dIn))
        keep = .allocate(capacity: max(1, batch))
        windows = .allocate(capacity: max(1, batch))
    }

    func deallocate() {
        input.deallocate()
        keep.deallocate()
        windows.deallocate()
    }
}

/// Reads the dense shards in corpus order into batches of whole windows, checks and prepares every row
/// (exclusions, non-finite values, normalization, b_dec), and hands each batch to `encode`.
///
/// Two batches are in flight: while `encode` works on one, the next one's windows are already chosen and its
/// rows are prepared in equal parts, one per worker: `encode` calls `prepareNext(worker)` once from each of its
/// `blasThreads` workers (before its share of the GEMM chunks), so at 2 threads the preparation is split over
/// both cores instead of running on one while the other waits. Parts no worker prepared are prepared after
/// `encode` returns. Either way every batch holds the same rows.
struct BatchStream {
    let inputs: CollectInputs
    let options: CollectOptions

    static func batchSize(_ options: CollectOptions) -> Int {
        max(options.windowSelection.windowLength, options.batchTokens / options.windowSelection.windowLength * options.windowSelection.windowLength)
    }

    /// Returns the number of excluded tokens. An input error found while preparing a batch is thrown after the
    /// batch before it was encoded (nothing is stored while streaming, so the outcome is the same).
    func run(progress: (Int, Int) -> Void,
             encode: (_ batch: InputBatch, _ prepareNext: (_ worker: Int) -> Void) -> Void) throws(SAELabelError) -> Int {
        guard inputs.sae != nil else { return 0 }
        let reader = try BatchReader(inputs: inputs, options: options)
        let batch = Self.batchSize(options)
        let buffers = [BatchBuffers(batch: batch, dIn: inputs.dIn), BatchBuffers(batch: batch, dIn: inputs.dIn)]
        defer { for buffer in buffers { buffer.deallocate() } }
        var current = try reader.plan(into: buffers[0], parts: 1).map { planned throws(SAELabelError) in try reader.finish(planned) }
        var filling = 1
        while let batch = current {
            let upcoming = reader.plan(into: buffers[filling], parts: max(1, options.blasThreads))
            encode(batch) { worker in upcoming?.prepare(part: worker) }
            progress(batch.firstToken + batch.fill, inputs.totalTokens)
            current = try upcoming.map { planned throws(SAELabelError) in try reader.finish(planned) }
            filling = 1 - filling
        }
        progress(inputs.totalTokens, inputs.totalTokens)
        return reader.excludedTokens
    }
}

/// One window of a planned batch: where its rows come from and where they go.
struct PlannedWindow {
    var shard: DenseShard
    /// Sequence within the shard.
    var sequence: Int
    var start: Int
    var length: Int
    /// Its first row in the batch.
    var offset: Int
}

/// A batch whose windows are chosen (`BatchReader.plan`) and whose rows are prepared in `parts` parts of nearly
/// equal token counts, each by one worker (`prepare(part:)`); `BatchReader.finish` prepares any part left and
/// reports the first bad row. Each part writes only its own rows and its own entries of the per-part results.
final class PlannedBatch: @unchecked Sendable {
    let batch: InputBatch
    let windows: [PlannedWindow]
    let parts: Int
    private let reader: BatchReader
    private let prepared: UnsafeMutablePointer<Bool>
    private let excluded: UnsafeMutablePointer<Int>
    /// Per part, the error of its first bad row.
    private let failures: UnsafeMutablePointer<SAELabelError?>

    fileprivate init(batch: InputBatch, windows: [PlannedWindow], parts: Int, reader: BatchReader) {
        self.batch = batch
        self.windows = windows
        self.parts = parts
        self.reader = reader
        prepared = .allocate(capacity: parts)
        prepared.initialize(repeating: false, count: parts)
        excluded = .allocate(capacity: parts)
        excluded.initialize(repeating: 0, count: parts)
        failures = .allocate(capacity: parts)
        failures.initialize(repeating: nil, count: parts)
    }

    deinit {
        prepared.deallocate()
        excluded.deallocate()
        failures.deinitialize(count: parts)
        failures.deallocate()
    }

    /// Prepares the rows of the windows starting in tokens `part · fill / parts ..< (part + 1) · fill / parts`.
    func prepare(part: Int) {
        guard part < parts, !prepared[part] else { return }
        prepared[part] = true
        let low = part * batch.fill / parts, high = (part + 1) * batch.fill / parts
        do throws(SAELabelError) {
            for window in windows where window.offset >= low && window.offset < high {
                excluded[part] += try reader.prepareRows(of: window, into: batch)
            }
        } catch {
            failures[part] = error
        }
    }

    /// Prepares the parts no worker took; returns the excluded tokens, or throws the first bad row's error.
    fileprivate func complete() throws(SAELabelError) -> Int {
        for part in 0..<parts { prepare(part: part) }
        for part in 0..<parts { if let failure = failures[part] { throw failure } }
        return (0..<parts).reduce(0) { $0 + excluded[$1] }
    }
}

/// Prepares the corpus batch by batch, resuming where the previous batch ended (shard, sequence, window).
final class BatchReader: @unchecked Sendable {  // `prepareRows` only reads its stored properties
    private let inputs: CollectInputs
    private let decoderBias: [Float]?
    private let normalization: InputNormalization
    private let exclusion: TokenExclusion
    private let window: Int
    private let batch: Int
    private var shardIndex = 0
    private var sequence = 0
    private var start = 0
    private var order: Int64 = 0
    /// Tokens handed out in batches so far.
    private var done = 0
    /// Pages of finished sequences, dropped once the batch that read them is prepared (the next `plan`).
    private var releases: [(file: MappedFile, offset: Int)] = []
    private var releasesAfterThisBatch: [(file: MappedFile, offset: Int)] = []
    private(set) var excludedTokens = 0

    init(inputs: CollectInputs, options: CollectOptions) throws(SAELabelError) {
        self.inputs = inputs
        if let sae = inputs.sae, sae.config.applyBDecToInput, let bDec = sae.bDec { decoderBias = try bDec.readFloats() } else { decoderBias = nil }
        normalization = inputs.sae?.config.normalization ?? .none
        exclusion = TokenExclusion(options: options, decoder: inputs.decoder)
        window = options.windowSelection.windowLength
        batch = BatchStream.batchSize(options)
    }

    /// Chooses the next batch's whole windows (their rows go to `buffers`, prepared by `PlannedBatch.prepare`);
    /// nil once the corpus is done.
    func plan(into buffers: BatchBuffers, parts: Int) -> PlannedBatch? {
        // The previous batch is prepared: the sequences it finished may leave memory.
        for release in releases { release.file.releaseBefore(release.offset) }
        releases = releasesAfterThisBatch
        releasesAfterThisBatch = []
        var fill = 0
        var planned: [PlannedWindow] = []
        while shardIndex < inputs.dense.count {
            let shard = inputs.dense[shardIndex]
            guard sequence < shard.sequences else {
                shardIndex += 1
                sequence = 0
                start = 0
                continue
            }
            guard start < shard.context else {
                // The rows are copied out; let the kernel drop their pages so a huge shard never stays resident.
                let elementBytes = shard.activations.dtype.byteCount
                releasesAfterThisBatch.append((shard.file.file, shard.activations.byteOffset + (sequence + 1) * shard.context * inputs.dIn * elementBytes))
                sequence += 1
                start = 0
                continue
            }
            let length = min(window, shard.context - start)
            if fill + length > batch { break }
            buffers.windows[planned.count] = BatchWindow(offset: fill, length: length, sequence: shard.firstSequence + sequence,
                                                         start: start, order: order)
            planned.append(PlannedWindow(shard: shard, sequence: sequence, start: start, length: length, offset: fill))
            order += 1
            fill += length
            start += length
        }
        guard fill > 0 else {
            for release in releases + releasesAfterThisBatch { release.file.releaseBefore(release.offset) }
            releases = []
            releasesAfterThisBatch = []
            return nil
        }
        defer { done += fill }
        let batch = InputBatch(input: buffers.input, fill: fill, windows: UnsafeBufferPointer(start: buffers.windows, count: planned.count),
                               keep: buffers.keep, firstToken: done)
        return PlannedBatch(batch: batch, windows: planned, parts: max(1, parts), reader: self)
    }

    /// The planned batch, every part prepared; counts its excluded tokens, or throws its first bad row's error.
    func finish(_ planned: PlannedBatch) throws(SAELabelError) -> InputBatch {
        excludedTokens += try planned.complete()
        return planned.batch
    }

    /// Copies one window's rows into the batch and prepares them; returns how many of its tokens are excluded.
    func prepareRows(of window: PlannedWindow, into batch: InputBatch) throws(SAELabelError) -> Int {
        let dIn = inputs.dIn
        let shard = window.shard
        let firstToken = window.sequence * shard.context + window.start
        let rowsPointer = batch.input + window.offset * dIn
        let keep = UnsafeMutablePointer(mutating: batch.keep)
        var excluded = 0
        shard.file.readFloats(shard.activations, start: firstToken * dIn, count: window.length * dIn, into: rowsPointer)
        for offset in 0..<window.length {
            let row = rowsPointer + offset * dIn
            keep[window.offset + offset] = 1
            let token = shard.file.readInteger(shard.tokens, at: firstToken + offset)
            if exclusion.excludes(token: token, position: window.start + offset) {
                // Never counted, so whatever the row holds (e.g. an Inf on a BOS attention sink) is ignored.
                row.update(repeating: 0, count: dIn)
                keep[window.offset + offset] = 0
                excluded += 1
                continue
            }
            var squares: Float = 0
            for d in 0..<dIn { squares += row[d] * row[d] }
            if !squares.isFinite {
                for d in 0..<dIn where !row[d].isFinite {
                    let global = shard.firstSequence + window.sequence
                    throw .badInput(location: shard.file.location("activations"),
                                    problem: "non-finite value (\(row[d])) at sequence \(window.sequence)\(global != window.sequence ? " (corpus sequence \(global))" : ""), position \(window.start + offset), dimension \(d); fix the activations before collecting")
                }
            }
            if let limit = exclusion.normAbove, squares.squareRoot() > limit {
                keep[window.offset + offset] = 0
                excluded += 1
            }
            normalize(row, dIn: dIn, squares: squares, normalization)
            if let decoderBias {
                for d in 0..<dIn { row[d] -= decoderBias[d] }
            }
        }
        return excluded
    }
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

/// Reads a delphi sparse latent cache: no encode, activations come per (sequence, position, latent).
struct LatentReader {
    let inputs: CollectInputs
    let options: CollectOptions
    let accumulators: FeatureAccumulators

    func run(progress: (Int, Int) -> Void) throws(SAELabelError) -> Int {
        guard let tokenShard = inputs.latents.first else { return 0 }
        let context = tokenShard.tokens.shape[1]
        let excludedTokens = inputs.excludedLatentTokens(TokenExclusion(options: options, decoder: inputs.decoder))
        let window = options.windowSelection.windowLength
        let selected = accumulators.features
        let pointer = UnsafeMutablePointer<Float>.allocate(capacity: window)
        defer { pointer.deallocate() }
        let geometry = inputs.windowGeometry(window: window)
        let windowsPerSequence = (context + window - 1) / window
        var firingOrders: [Int64] = []
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
            // Per latent, only the windows holding one of its entries are visited, and its held-out random
            // windows are drawn against the windows it fired in once they are all known (`finishInactive`), so
            // the time is O(entries), not O(latents × windows), and a latent with no entries is never touched.
            for bucket in 0..<(upper - lower) {
                let slot = lower + bucket
                // In place: a sorted slice per latent would be one allocation per latent.
                sorted[bucketStart[bucket]..<bucketStart[bucket + 1]].sort { flats[$0] < flats[$1] || (flats[$0] == flats[$1] && $0 < $1) }
                var next = bucketStart[bucket]
                let end = bucketStart[bucket + 1]
                guard next < end else { continue }
                firingOrders.removeAll(keepingCapacity: true)
                // Its top heap gets room for the windows its entries lie in (at most those fire), not a run of 4.
                var windows = 0, lastWindow = -1
                for index in next..<end {
                    let flat = flats[sorted[index]]
                    let windowIndex = flat / context * windowsPerSequence + (flat % context) / window
                    if windowIndex != lastWindow { windows += 1; lastWindow = windowIndex }
                }
                accumulators.top.reserve(slot, slots: windows)
                while next < end {
                    let flat = flats[sorted[next]]
                    let sequence = flat / context, start = (flat % context) / window * window
                    let order = sequence * windowsPerSequence + start / window
                    let length = min(window, context - start)
                    let first = sequence * context + start
                    for index in 0..<length { pointer[index] = 0 }
                    while next < end, flats[sorted[next]] < first + length {
                        let entry = sorted[next]
                        if !excludedTokens.contains(flats[entry]) { pointer[flats[entry] - first] = max(0, values[entry]) }
                        next += 1
                    }
                    let peak = peakValue(pointer, length)
                    if peak > 0 {
                        firingOrders.append(Int64(order))
                        accumulators.observeActive(slot, values: pointer, length: length, peak: peak,
                                                   sequence: sequence, start: start, order: Int64(order))
                    }
                }
                firingOrders.withUnsafeBufferPointer { accumulators.finishInactive(slot, firingOrders: $0, geometry: geometry) }
            }
            accumulators.completeInactive(slots: lower..<upper, geometry: geometry)
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
