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
/// each running a single-threaded GEMM and then the per-feature pass of its chunk, while the calling thread reads
/// the next batches (`encodePipelined`): chunk boundaries never depend on T, every feature's state is its own and
/// each chunk sees the batches in order, so results are identical for any T.
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
        // One buffer per worker; with a pass thread, the ring of chunks the GEMM made and the pass has not yet read.
        let passThread = threads == 1 && options.passOnOwnThread && ProcessInfo.processInfo.activeProcessorCount > 1
        let chunkBufferCount = passThread ? PassPipeline.depth : threads
        let chunkBuffers = UnsafeMutablePointer<Float>.allocate(capacity: plan.needsAllRows ? 1 : chunkBufferCount * chunks.largest * batch)
        let limits = UnsafeMutablePointer<Float>.allocate(capacity: max(1, plan.limitRows * batch))
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: plan.inlineK == nil ? 1 : threads * rows * 8)
        defer { output.deallocate(); chunkBuffers.deallocate(); limits.deallocate(); scratch.deallocate() }
        let geometry = inputs.windowGeometry(window: options.windowSelection.windowLength)

        /// One chunk of one batch: its GEMM into chunk buffer `buffer`.
        func multiplyChunk(_ chunk: Int, of encoded: InputBatch, buffer: Int) {
            plan.encoder.multiply(rows: chunks.rows(of: chunk), input: encoded.input, tokens: encoded.fill, dIn: inputs.dIn,
                                  into: chunkBuffers + buffer * chunks.largest * batch, stride: batch)
        }
        /// The per-feature pass over one chunk's GEMM output in chunk buffer `buffer`.
        func passChunk(_ chunk: Int, of encoded: InputBatch, columnLimits: UnsafeMutablePointer<Float>, buffer: Int) {
            let output = chunkBuffers + buffer * chunks.largest * batch
            let range = chunks.rows(of: chunk)
            let batchView = EncodedBatch(windows: encoded.windows, keep: encoded.keep, columnLimits: columnLimits, stride: batch,
                                         geometry: geometry)
            accumulators.observe(slots: range, batch: batchView, activation: plan.activation) { slot in
                (output + (slot - range.lowerBound) * batch, slot)
            }
        }
        /// One chunk of one batch: its GEMM into the worker's buffer, then its features' pass while it is in cache.
        func encodeChunk(_ chunk: Int, of encoded: InputBatch, columnLimits: UnsafeMutablePointer<Float>, worker: Int) {
            multiplyChunk(chunk, of: encoded, buffer: worker)
            passChunk(chunk, of: encoded, columnLimits: columnLimits, buffer: worker)
        }
        /// TopK in blocks: the batch's tokens' k-th values, which every chunk of the batch reads.
        func stageLimits(of encoded: InputBatch, into columnLimits: UnsafeMutablePointer<Float>) {
            guard let table = plan.kthByToken else { return }
            table.withUnsafeBufferPointer { columnLimits.update(from: $0.baseAddress! + encoded.firstToken, count: encoded.fill) }
        }
        // Nil when no worker thread could be started: then the same chunks on this thread, below.
        if !plan.needsAllRows && rows > 0 && passThread,
           let excluded = try encodeWithPassThread(chunks: chunks.count, progress: progress, stageLimits: stageLimits,
                                                   multiplyChunk: multiplyChunk, passChunk: passChunk) {
            return excluded
        }
        if !plan.needsAllRows && rows > 0 && threads > 1,
           let excluded = try encodePipelined(threads: threads, chunks: chunks.count, progress: progress, stageLimits: stageLimits,
                                              encodeChunk: encodeChunk) {
            return excluded
        }

        return try BatchStream(inputs: inputs, options: options).run(progress: progress) { encoded in
            let fill = encoded.fill
            guard rows > 0 else { return }
            let batchView = EncodedBatch(windows: encoded.windows, keep: encoded.keep, columnLimits: limits, stride: batch,
                                         geometry: geometry)
            if !plan.needsAllRows {
                stageLimits(of: encoded, into: limits)
                for chunk in 0..<chunks.count { encodeChunk(chunk, of: encoded, columnLimits: limits, worker: 0) }
                return
            }
            let gemms = WorkCounter(limit: chunks.count)
            onThreads(threads) { _ in
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

extension DenseEncoder {
    /// The chunk path on `threads` workers without a barrier per batch: the reader (this thread) prepares batches
    /// ahead into rotating buffers while the workers take (batch, chunk) items from a `ChunkSchedule`. With a
    /// barrier after every batch, a worker done with its chunks waited for the other's last chunk and both waited
    /// while the reader prepared the next batch alone (≈ 7.5 % of two cores idle, BENCHMARKS.md).
    /// Returns the number of excluded tokens, or nil, having read nothing, when no worker thread could be started.
    private func encodePipelined(threads: Int, chunks: Int, progress: (Int, Int) -> Void,
                                 stageLimits: (InputBatch, UnsafeMutablePointer<Float>) -> Void,
                                 encodeChunk: (Int, InputBatch, UnsafeMutablePointer<Float>, Int) -> Void) throws(SAELabelError) -> Int? {
        // Batches in memory (4 at two threads, as measured): room for the workers to run ahead of a slow chunk while
        // the reader fills the next; more would only hold more input.
        let slots = threads + 2
        let batch = BatchStream.batchSize(options)
        let schedule = ChunkSchedule(chunks: chunks, slots: slots)
        // Written by the reader before `submit` and read by workers after `take`: the schedule's lock orders them.
        let staged = UnsafeMutablePointer<InputBatch?>.allocate(capacity: slots)
        staged.initialize(repeating: nil, count: slots)
        let limits = UnsafeMutablePointer<Float>.allocate(capacity: slots * batch)
        defer { staged.deinitialize(count: slots); staged.deallocate(); limits.deallocate() }
        return try onWorkerThreads(threads, { worker in
            while let (number, chunk) = schedule.take() {
                let slot = number % slots
                encodeChunk(chunk, staged[slot]!, limits + slot * batch, worker)
                schedule.finish(batch: number, chunk: chunk)
            }
        }, caller: { () throws(SAELabelError) -> Int in
            // Batches handed over before a failure are finished first (`awaitIdle`): their buffers stay valid.
            defer { schedule.close() }
            return try BatchStream(inputs: inputs, options: options)
                .run(slots: slots, awaitSlot: schedule.awaitSlot(for:), awaitIdle: schedule.awaitIdle, progress: progress) { encoded in
                    staged[encoded.slot] = encoded
                    stageLimits(encoded, limits + encoded.slot * batch)
                    schedule.submit()
                }
        })
    }
}

extension DenseEncoder {
    /// One BLAS thread: this thread reads the batches and runs every chunk's GEMM, and a thread of its own runs the
    /// per-feature pass over each chunk's output, in the order the GEMMs made them, while the next GEMM runs. The
    /// pass was ≈ 10 % of one thread's stream, done between GEMMs on a machine whose other core mostly waited for
    /// the block writer. Same chunks, same order, same values as doing both on one thread.
    /// Returns the number of excluded tokens, or nil, having read nothing, when the pass thread could not be started.
    private func encodeWithPassThread(chunks: Int, progress: (Int, Int) -> Void,
                                      stageLimits: (InputBatch, UnsafeMutablePointer<Float>) -> Void,
                                      multiplyChunk: (Int, InputBatch, Int) -> Void,
                                      passChunk: (Int, InputBatch, UnsafeMutablePointer<Float>, Int) -> Void) throws(SAELabelError) -> Int? {
        let batch = BatchStream.batchSize(options)
        let pipeline = PassPipeline(chunks: chunks, slots: PassPipeline.batchSlots)
        let slots = PassPipeline.batchSlots
        // Written by this thread before `submit` and read by the pass thread after `take`: the pipeline's lock orders them.
        let staged = UnsafeMutablePointer<InputBatch?>.allocate(capacity: slots)
        staged.initialize(repeating: nil, count: slots)
        let limits = UnsafeMutablePointer<Float>.allocate(capacity: slots * batch)
        defer { staged.deinitialize(count: slots); staged.deallocate(); limits.deallocate() }
        return try onWorkerThreads(1, { _ in
            while let item = pipeline.take() {
                let slot = item.batch % slots
                passChunk(item.chunk, staged[slot]!, limits + slot * batch, item.buffer)
                pipeline.finish()
            }
        }, caller: { () throws(SAELabelError) -> Int in
            defer { pipeline.close() }
            return try BatchStream(inputs: inputs, options: options)
                .run(slots: slots, awaitSlot: pipeline.awaitSlot(for:), awaitIdle: pipeline.awaitIdle, progress: progress) { encoded in
                    staged[encoded.slot] = encoded
                    stageLimits(encoded, limits + encoded.slot * batch)
                    for chunk in 0..<chunks {
                        multiplyChunk(chunk, encoded, pipeline.awaitBuffer())
                        pipeline.submit()
                    }
                }
        })
    }
}

/// The hand-over from the GEMM thread to the pass thread (`DenseEncoder.encodeWithPassThread`): items (a batch's
/// chunk) are made and passed in one order, batch by batch and chunk by chunk, so counters say everything: item i
/// is batch i / chunks, chunk i % chunks, in chunk buffer i % depth; a buffer is free once the item before it in
/// the ring is passed, and a batch slot once every chunk of the batch that held it is.
final class PassPipeline: @unchecked Sendable {  // every field is read and written under `condition`
    /// Chunk buffers in the ring: room for the GEMM to run ahead of a slow pass (a firing-heavy chunk).
    static let depth = 4
    /// Batches in memory: the one read, the one multiplied, the one passed.
    static let batchSlots = 3

    private let condition = NSCondition()
    private let chunks: Int
    private let slots: Int
    private var made = 0
    private var taken = 0
    private var passed = 0
    private var closed = false

    init(chunks: Int, slots: Int) {
        self.chunks = chunks
        self.slots = slots
    }

    /// The chunk buffer for the next item, once the item that last used it is passed.
    func awaitBuffer() -> Int {
        condition.lock()
        defer { condition.unlock() }
        while made - passed >= Self.depth { condition.wait() }
        return made % Self.depth
    }

    /// The next item's GEMM is done.
    func submit() {
        condition.lock()
        made += 1
        condition.broadcast()
        condition.unlock()
    }

    /// Returns once batch `number`'s slot no longer holds a batch the pass still reads.
    func awaitSlot(for number: Int) {
        condition.lock()
        defer { condition.unlock() }
        while passed < (number - slots + 1) * chunks { condition.wait() }
    }

    /// Returns once every item made so far is passed.
    func awaitIdle() {
        condition.lock()
        defer { condition.unlock() }
        while passed < made { condition.wait() }
    }

    /// No item follows: `take` returns nil once every item is taken.
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    /// The next item for the (one) pass thread, in the order they were made; nil once closed and none is left.
    func take() -> (batch: Int, chunk: Int, buffer: Int)? {
        condition.lock()
        defer { condition.unlock() }
        while taken == made {
            if closed { return nil }
            condition.wait()
        }
        let item = taken
        taken += 1
        return (item / chunks, item % chunks, item % Self.depth)
    }

    func finish() {
        condition.lock()
        passed += 1
        condition.broadcast()
        condition.unlock()
    }
}

/// Which (batch, chunk) item a worker does next when batches are pipelined (`DenseEncoder.encodePipelined`).
/// A chunk's features see the batches in corpus order, one at a time, with the same GEMM shapes as without
/// the pipeline, so every value and every kept window is the same; within that, the earliest batch goes first,
/// so slots free up in order.
final class ChunkSchedule: @unchecked Sendable {  // every field is read and written under `condition`
    private let condition = NSCondition()
    private let slots: Int
    private let chunks: Int
    /// Per chunk, the batch it does next, and whether a worker holds it.
    private var nextBatch: [Int]
    private var working: [Bool]
    /// Per slot, the chunks that have not yet finished the batch it holds.
    private var unfinished: [Int]
    private var submitted = 0
    private var closed = false

    init(chunks: Int, slots: Int) {
        self.chunks = chunks
        self.slots = slots
        nextBatch = [Int](repeating: 0, count: chunks)
        working = [Bool](repeating: false, count: chunks)
        unfinished = [Int](repeating: 0, count: slots)
    }

    /// Returns once batch `number`'s slot no longer holds an unfinished batch.
    func awaitSlot(for number: Int) {
        condition.lock()
        defer { condition.unlock() }
        while unfinished[number % slots] > 0 { condition.wait() }
    }

    /// Returns once every batch submitted so far is finished.
    func awaitIdle() {
        condition.lock()
        defer { condition.unlock() }
        while unfinished.contains(where: { $0 > 0 }) { condition.wait() }
    }

    /// The next batch (number `submitted`) is staged in its slot.
    func submit() {
        condition.lock()
        unfinished[submitted % slots] = chunks
        submitted += 1
        condition.broadcast()
        condition.unlock()
    }

    /// No batch follows: workers return once every chunk has done every batch.
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    /// The next item, earliest batch first; nil once `close` was called and none is left.
    func take() -> (batch: Int, chunk: Int)? {
        condition.lock()
        defer { condition.unlock() }
        while true {
            var best = -1, remaining = false
            for chunk in 0..<chunks {
                let next = nextBatch[chunk]
                if working[chunk] {
                    remaining = remaining || next + 1 < submitted
                } else if next < submitted {
                    remaining = true
                    if best < 0 || next < nextBatch[best] { best = chunk }
                }
            }
            if best >= 0 {
                working[best] = true
                return (nextBatch[best], best)
            }
            if closed && !remaining { return nil }
            condition.wait()
        }
    }

    func finish(batch number: Int, chunk: Int) {
        condition.lock()
        working[chunk] = false
        nextBatch[chunk] = number + 1
        unfinished[number % slots] -= 1
        condition.broadcast()
        condition.unlock()
    }
}

/// Runs `body(worker)` for workers 0..<threads on threads of their own while `caller` runs on this one, and
/// joins the workers before returning (`caller` must make them return, e.g. by `ChunkSchedule.close`).
/// Not `concurrentPerform`: it may run fewer iterations at once than asked, and these wait on each other.
/// Joined pthreads, not `Thread`: a `Thread` keeps its closure after the body returns, past this call.
/// Returns nil, without running `caller`, when not even one thread could be started.
func onWorkerThreads<Result>(_ threads: Int, _ body: (Int) -> Void,
                             caller: () throws(SAELabelError) -> Result) throws(SAELabelError) -> Result? {
    let outcome: Swift.Result<Result, SAELabelError>? = withoutActuallyEscaping(body) { escapable in
        var started: [pthread_t] = []
        for worker in 0..<threads {
            let start = Unmanaged.passRetained(WorkerStart(body: escapable, worker: worker)).toOpaque()
            var thread = pthread_t()
            let status = pthread_create(&thread, nil, { raw in
                guard let raw else { return nil }
                let start = Unmanaged<WorkerStart>.fromOpaque(raw).takeRetainedValue()
                start.body(start.worker)
                return nil
            }, start)
            guard status == 0 else {
                Unmanaged<WorkerStart>.fromOpaque(start).release()
                break  // fewer workers: the schedule hands their share to the others
            }
            started.append(thread)
        }
        guard !started.isEmpty else { return nil }
        let outcome: Swift.Result<Result, SAELabelError>
        do throws(SAELabelError) { outcome = .success(try caller()) } catch { outcome = .failure(error) }
        for thread in started { pthread_join(thread, nil) }
        return outcome
    }
    return try outcome?.get()
}

private final class WorkerStart {
    let body: (Int) -> Void
    let worker: Int

    init(body: @escaping (Int) -> Void, worker: Int) {
        self.body = body
        self.worker = worker
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
///
/// Each block's features are multiplied exactly as `DenseEncoder` multiplies that block (the block's own operand
/// and chunks), so a feature's value here and in its block is bit for bit the same: OpenBLAS kernels give a row
/// different last bits depending on the GEMM's row count (the Haswell and Prescott kernels do; SkylakeX does not),
/// and a block's value one ulp below the k-th value computed here would drop the token's k-th feature.
enum TopKThresholds {
    /// Features multiplied with one operand, cut into chunks as a block of them would be; `blocked` marks the rows
    /// not offered to the heaps (the whole width's rows that a block multiplies itself).
    private struct Segment {
        let operand: EncoderOperand
        let chunks: ChunkGeometry
        let bias: [Float]
        let scale: [Float]?
        var blocked: [Bool]? = nil

        /// The chunk's rows to offer, as runs of consecutive rows.
        func offered(_ range: Range<Int>) -> [Range<Int>] {
            guard let blocked else { return [range] }
            var runs: [Range<Int>] = [], start: Int? = nil
            for row in range {
                if blocked[row] {
                    if let first = start { runs.append(first..<row); start = nil }
                } else if start == nil {
                    start = row
                }
            }
            if let first = start { runs.append(first..<range.upperBound) }
            return runs
        }
    }

    static func compute(inputs: CollectInputs, options: CollectOptions, blocks: [[Int]]) throws(SAELabelError) -> [Float]? {
        guard let sae = inputs.sae, case .topk(let k) = sae.config.architecture else { return nil }
        openblas_set_num_threads(1)
        let all = Array(0..<inputs.featureCount)
        let bias = try sae.vector(sae.bEnc, features: all)
        let scale: [Float]? = sae.config.rescaleByDecoderNorm ? try sae.decoderNorms(features: all) : nil
        var segments = try blocks.filter { !$0.isEmpty }.map { features throws(SAELabelError) in
            Segment(operand: try sae.encoderOperand(features: features),
                    chunks: ChunkGeometry(rows: features.count, preferredRows: options.encodeChunkRows),
                    bias: features.map { bias[$0] }, scale: scale.map { scale in features.map { scale[$0] } })
        }
        // Each chunk's GEMM and the runs of its rows offered to the heaps (the same for every batch).
        func items(of segment: Int) -> [(segment: Int, rows: Range<Int>, offered: [Range<Int>])] {
            (0..<segments[segment].chunks.count).map { chunk in
                let rows = segments[segment].chunks.rows(of: chunk)
                return (segment, rows, segments[segment].offered(rows))
            }
        }
        var work = segments.indices.flatMap(items(of:))
        // Features no block holds count toward the k-th value alone, so any GEMM shape will do: chunks of the whole
        // width (read in place when the file allows), those holding at least one such feature, offering only those.
        // (Runs of their own would be GEMMs of a few rows each when a shard takes every n-th feature.)
        var blocked = [Bool](repeating: false, count: all.count)
        for block in blocks { for feature in block { blocked[feature] = true } }
        if blocked.contains(false) {
            let rest = Segment(operand: try sae.encoderOperand(features: all),
                               chunks: ChunkGeometry(rows: all.count, preferredRows: options.encodeChunkRows),
                               bias: bias, scale: scale, blocked: blocked)
            segments.append(rest)
            work += items(of: segments.count - 1).filter { !$0.offered.isEmpty }
        }
        let largest = segments.map(\.chunks.largest).max() ?? 0
        let threads = max(1, options.blasThreads)
        let batch = BatchStream.batchSize(options)
        let heaps = (0..<threads).map { _ in RunningTopK(k: k, columns: batch) }
        let buffers = UnsafeMutablePointer<Float>.allocate(capacity: max(1, threads * largest * batch))
        let merged = UnsafeMutablePointer<Float>.allocate(capacity: threads * k)
        defer { buffers.deallocate(); merged.deallocate() }
        var table = [Float](repeating: -.infinity, count: inputs.totalTokens)
        _ = try BatchStream(inputs: inputs, options: options).run(progress: { _, _ in }) { encoded in
            let fill = encoded.fill
            for heap in heaps { heap.reset() }
            let next = WorkCounter(limit: work.count)
            onThreads(threads) { worker in
                let buffer = buffers + worker * largest * batch
                while let item = next.take() {
                    let segment = segments[work[item].segment], range = work[item].rows
                    segment.operand.multiply(rows: range, input: encoded.input, tokens: fill, dIn: inputs.dIn, into: buffer, stride: batch)
                    for rows in work[item].offered {
                        heaps[worker].offer(output: buffer + (rows.lowerBound - range.lowerBound) * batch, rows: rows, stride: batch,
                                            columnRange: 0..<fill, bias: segment.bias, scale: segment.scale)
                    }
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
    /// The batch's number (0, 1, …) and the buffers it lies in (`number % slots`).
    var number: Int
    var slot: Int
}

/// Reads the dense shards in corpus order into batches of whole windows, checks and prepares every row
/// (exclusions, non-finite values, normalization, b_dec), and hands each batch to `encode`.
struct BatchStream {
    let inputs: CollectInputs
    let options: CollectOptions

    static func batchSize(_ options: CollectOptions) -> Int {
        max(options.windowSelection.windowLength, options.batchTokens / options.windowSelection.windowLength * options.windowSelection.windowLength)
    }

    /// Returns the number of excluded tokens. `encode` gets each batch in order. With `slots` > 1 the batches
    /// rotate through that many sets of buffers, so `encode` may hand a batch to other threads and return at
    /// once: before batch n is written into slot n % slots, `awaitSlot(n)` must return only when batch
    /// n − slots is no longer read, and before the buffers are freed (on return or throw) `awaitIdle()` must
    /// return only when no batch is read any more.
    func run(slots: Int = 1, awaitSlot: (Int) -> Void = { _ in }, awaitIdle: () -> Void = {}, progress: (Int, Int) -> Void,
             encode: (InputBatch) -> Void) throws(SAELabelError) -> Int {
        guard let sae = inputs.sae else { return 0 }
        let dIn = inputs.dIn
        var decoderBias: [Float]?
        if sae.config.applyBDecToInput, let bDec = sae.bDec { decoderBias = try bDec.readFloats() }
        let normalization = sae.config.normalization
        let exclusion = TokenExclusion(options: options, decoder: inputs.decoder)
        let window = options.windowSelection.windowLength
        let batch = Self.batchSize(options)
        let slots = max(1, slots)
        let inputBuffers = UnsafeMutablePointer<Float>.allocate(capacity: slots * batch * dIn)
        let keepBuffers = UnsafeMutablePointer<Float>.allocate(capacity: slots * batch)
        let windowBuffers = UnsafeMutablePointer<BatchWindow>.allocate(capacity: slots * batch)  // a window holds at least one token
        defer {
            awaitIdle()
            inputBuffers.deallocate(); keepBuffers.deallocate(); windowBuffers.deallocate()
        }
        var number = 0
        var input = inputBuffers, keep = keepBuffers, windows = windowBuffers
        var slotReady = false
        var windowCount = 0
        var fill = 0
        var excludedTotal = 0
        var done = 0
        var order: Int64 = 0

        func flush() {
            defer {
                done += fill
                fill = 0
                windowCount = 0
                progress(done, inputs.totalTokens)
            }
            guard fill > 0 else { return }
            encode(InputBatch(input: input, fill: fill, windows: UnsafeBufferPointer(start: windows, count: windowCount),
                              keep: keep, firstToken: done, number: number, slot: number % slots))
            number += 1
            let slot = number % slots
            input = inputBuffers + slot * batch * dIn
            keep = keepBuffers + slot * batch
            windows = windowBuffers + slot * batch
            slotReady = false
        }

        for shard in inputs.dense {
            let context = shard.context
            let elementBytes = shard.activations.dtype.byteCount
            for sequence in 0..<shard.sequences {
                var start = 0
                while start < context {
                    let length = min(window, context - start)
                    if fill + length > batch { flush() }
                    if !slotReady {
                        awaitSlot(number)
                        slotReady = true
                    }
                    let firstToken = sequence * context + start
                    let rowsPointer = input + fill * dIn
                    shard.file.readFloats(shard.activations, start: firstToken * dIn, count: length * dIn, into: rowsPointer)
                    for offset in 0..<length {
                        let row = rowsPointer + offset * dIn
                        keep[fill + offset] = 1
                        let token = shard.file.readInteger(shard.tokens, at: firstToken + offset)
                        if exclusion.excludes(token: token, position: start + offset) {
                            // Never counted, so whatever the row holds (e.g. an Inf on a BOS attention sink) is ignored.
                            row.update(repeating: 0, count: dIn)
                            keep[fill + offset] = 0
                            excludedTotal += 1
                            continue
                        }
                        let squares = squaredNorm(row, count: dIn)
                        if !squares.isFinite {
                            for d in 0..<dIn where !row[d].isFinite {
                                let global = shard.firstSequence + sequence
                                throw .badInput(location: shard.file.location("activations"),
                                                problem: "non-finite value (\(row[d])) at sequence \(sequence)\(global != sequence ? " (corpus sequence \(global))" : ""), position \(start + offset), dimension \(d); fix the activations before collecting")
                            }
                        }
                        if let limit = exclusion.normAbove, squares.squareRoot() > limit {
                            keep[fill + offset] = 0
                            excludedTotal += 1
                        }
                        normalize(row, dIn: dIn, squares: squares, normalization)
                        if let decoderBias {
                            for d in 0..<dIn { row[d] -= decoderBias[d] }
                        }
                    }
                    windows[windowCount] = BatchWindow(offset: fill, length: length, sequence: shard.firstSequence + sequence,
                                                       start: start, order: order)
                    windowCount += 1
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

/// ‖row‖², sixteen values a step in four running sums combined in a fixed order: one running sum is a chain of
/// dependent adds (one per value, four cycles each), which made it most of a batch's preparation time.
@inline(__always)
func squaredNorm(_ row: UnsafePointer<Float>, count: Int) -> Float {
    let raw = UnsafeRawPointer(row)
    var low = SIMD8<Float>(repeating: 0), high = SIMD8<Float>(repeating: 0)
    var d = 0
    while d + 16 <= count {
        let first = raw.loadUnaligned(fromByteOffset: d * 4, as: SIMD8<Float>.self)
        let second = raw.loadUnaligned(fromByteOffset: (d + 8) * 4, as: SIMD8<Float>.self)
        low += first * first
        high += second * second
        d += 16
    }
    let lanes = low + high
    var total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    while d < count {
        total += row[d] * row[d]
        d += 1
    }
    return total
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
            // Latent (offset in the file) → bucket + 1, 0 for latents without state: calloc's zero pages are
            // written only at the selected latents, so a wide file costs pages for those, not for its width.
            guard let bucketOfLatent = calloc(span, MemoryLayout<Int32>.stride)?.bindMemory(to: Int32.self, capacity: span) else {
                fatalError("out of memory mapping \(span) latents")
            }
            defer { free(bucketOfLatent) }
            for slot in lower..<upper { bucketOfLatent[selected[slot] - shard.first] = Int32(slot - lower + 1) }
            let values = shard.file.readFloats(shard.activations)
            let locations = shard.file.readIntegers(shard.locations, start: 0, count: count * 3)
            // Each entry's sort key: its flat token index above, its entry index below, so sorting a latent's keys
            // orders its entries by token (entry order on ties) with plain integer compares.
            let entryBits = Int.bitWidth - max(1, count).leadingZeroBitCount
            guard inputs.totalTokens < Int.max >> entryBits else {
                throw .badInput(location: shard.file.path, problem: "\(count) entries over \(inputs.totalTokens) tokens is more than collect can index; split the cache into smaller files")
            }
            let entryMask = (1 << entryBits) - 1
            var keys = [Int](repeating: 0, count: count)
            var buckets = [Int32](repeating: -1, count: count)
            var bucketCounts = [Int](repeating: 0, count: upper - lower)
            for entry in 0..<count {
                let (flat, latent) = try shard.entry(entry, locations: locations, values: values, tokens: tokenShard.tokens.shape,
                                                     excluded: excludedTokens)
                keys[entry] = flat << entryBits | entry
                let bucket = bucketOfLatent[latent] - 1
                if bucket >= 0 {
                    buckets[entry] = bucket
                    bucketCounts[Int(bucket)] += 1
                }
            }
            var bucketStart = [Int](repeating: 0, count: upper - lower + 1)
            for bucket in 0..<(upper - lower) { bucketStart[bucket + 1] = bucketStart[bucket] + bucketCounts[bucket] }
            var cursor = bucketStart
            var sorted = [Int](repeating: 0, count: bucketStart.last ?? 0)
            for entry in 0..<count where buckets[entry] >= 0 {
                let bucket = Int(buckets[entry])
                sorted[cursor[bucket]] = keys[entry]
                cursor[bucket] += 1
            }
            // Per latent, only the windows holding one of its entries are visited, and its held-out random
            // windows are drawn against the windows it fired in once they are all known (`finishInactive`), so
            // the time is O(entries), not O(latents × windows); latents without entries have no slot here at all
            // (`Collector.stream`), so nothing below grows with the cache's width.
            for bucket in 0..<(upper - lower) {
                let slot = lower + bucket
                var next = bucketStart[bucket]
                let end = bucketStart[bucket + 1]
                guard next < end else { continue }
                sorted[next..<end].sort()  // in place: a sorted slice per latent would be one allocation per latent
                firingOrders.removeAll(keepingCapacity: true)
                // Its top heap gets room for the windows its entries lie in (at most those fire), not a run of 4.
                var windows = 0, lastWindow = -1
                for index in next..<end {
                    let flat = sorted[index] >> entryBits
                    let windowIndex = flat / context * windowsPerSequence + (flat % context) / window
                    if windowIndex != lastWindow { windows += 1; lastWindow = windowIndex }
                }
                accumulators.top.reserve(slot, slots: windows)
                while next < end {
                    let flat = sorted[next] >> entryBits
                    let sequence = flat / context, start = (flat % context) / window * window
                    let order = sequence * windowsPerSequence + start / window
                    let length = min(window, context - start)
                    let first = sequence * context + start
                    for index in 0..<length { pointer[index] = 0 }
                    while next < end, sorted[next] >> entryBits < first + length {
                        let token = sorted[next] >> entryBits
                        if !excludedTokens.contains(token) { pointer[token - first] = max(0, values[sorted[next] & entryMask]) }
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
