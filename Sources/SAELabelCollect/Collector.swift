import COpenBLAS
import Foundation
import SAELabelCore
import SAELabelKernels
import SAELabelStore

/// What to collect and how (see SPEC §2–§3). Defaults follow the project's brief.
public struct CollectOptions: Sendable {
    /// SAE_PATH: an SAELens folder, a Gemma Scope params.npz (or its folder) or a sparsify hookpoint folder;
    /// nil when `latentsDirectory` is set.
    public var saeDirectory: String?
    /// Dense activation shards (`tokens` [n_seq, ctx], `activations` [n_seq, ctx, d_in]), in corpus order.
    public var activationFiles: [String]
    /// A delphi sparse latent cache directory (`<start>_<end>.safetensors`), instead of SAE + activations.
    public var latentsDirectory: String?
    public var tokenizerPath: String
    /// Which features are collected.
    public var selection: FeatureSelection = .all
    /// Which windows each of them keeps: window length, example counts, minimum activating windows, seed.
    public var windowSelection = SelectionParameters()
    /// Skip tokenizer special tokens (added_tokens with special=true: BOS, EOS, …), which are often attention sinks.
    public var excludeSpecialTokens = true
    /// Skip these positions of every sequence (e.g. [0]).
    public var excludePositions: [Int] = []
    /// Skip tokens whose activation vector has an L2 norm above this (dense activations only).
    public var excludeNormAbove: Float? = nil
    /// Tokens encoded per GEMM (rounded down to whole windows).
    public var batchTokens = 512
    /// Threads for the encode (`[collect] blas_threads`): each runs single-threaded GEMMs over chunks of features
    /// and the per-feature pass of its chunks; with more than one, a reader thread prepares batches ahead
    /// (`DenseEncoder.encodePipelined`). 1 by default: one thread runs the GEMMs and, on a machine with another
    /// core, a second runs the per-feature pass beside them (≈ a tenth of a core), which leaves most of a core to
    /// the block writer and to whatever else shares the machine; two threads streamed 1.65× as fast as one on a
    /// 2-core VM (BENCHMARKS.md).
    public var blasThreads = 1
    /// At one BLAS thread, run the per-feature pass on a thread of its own beside the GEMMs (when the machine has
    /// another core): `DenseEncoder.encodeWithPassThread`. Off only to compare the two paths.
    var passOnOwnThread = true
    /// Collect's memory budget (MiB): features are streamed and committed in blocks sized so the process stays
    /// within it however many features are selected (see `Collector.blocks`).
    public var memoryBudgetMiB: Double = MemoryBudget.defaultMiB
    /// Preferred features per GEMM chunk; each block's rows are cut into an even number of equal chunks near this
    /// size (`ChunkGeometry`). Large enough that BLAS packing the batch once per chunk costs little, small enough
    /// that a chunk's outputs ([chunk, batch] floats) are still in cache for the per-feature pass. 1024 (a 3,072-feature
    /// block in 4 chunks of 768) streamed faster than 256 at 1 BLAS thread and no slower at 2 (BENCHMARKS.md).
    public var encodeChunkRows = 1024
    /// Blocks a large selection is cut into even when the memory budget would hold it whole: block i's selection
    /// and store write run on the writer thread while block i+1 streams, so only the last block's write is
    /// exposed instead of the whole write. Blocks smaller than `pipelineBlockMinimum` features are not worth
    /// their own pass over the activations. Not applied where a split costs more than a re-read of the
    /// activations (`CollectPlan.splitsCheaply`).
    public var pipelineBlocks = 8
    public var pipelineBlockMinimum = 2048

    public init(saeDirectory: String? = nil, activationFiles: [String] = [], latentsDirectory: String? = nil,
                tokenizerPath: String, selection: FeatureSelection = .all, windowSelection: SelectionParameters = SelectionParameters(),
                excludeSpecialTokens: Bool = true, excludePositions: [Int] = [], excludeNormAbove: Float? = nil, batchTokens: Int = 512) {
        self.saeDirectory = saeDirectory
        self.activationFiles = activationFiles
        self.latentsDirectory = latentsDirectory
        self.tokenizerPath = tokenizerPath
        self.selection = selection
        self.windowSelection = windowSelection
        self.excludeSpecialTokens = excludeSpecialTokens
        self.excludePositions = excludePositions
        self.excludeNormAbove = excludeNormAbove
        self.batchTokens = batchTokens
    }
}

/// Everything `plan` validated, before any store write.
public struct CollectPlan: Sendable {
    /// d_sae.
    public var featureCount: Int
    /// The selected features, ascending.
    public var features: [Int]
    public var dIn: Int
    public var totalTokens: Int
    public var saeName: String
    public var hookName: String
    public var modelName: String
    /// Roles "sae_weights", "sae_cfg", "activations.0"…, "tokenizer", "latents.<file>".
    public var fingerprints: [InputFingerprint]
    /// Set when the SAE cfg names a Neuronpedia id.
    public var neuronpediaID: String?
    /// Splitting the features into blocks costs only a re-read of dense activations: false for a TopK SAE
    /// (blocks need an extra pass for each token's k-th value) and for a latent cache (each block re-reads its files).
    public var splitsCheaply = false
    /// For a latent cache, each latent's entries (non-zeros), indexed by latent: a latent fires in at most that
    /// many windows, so blocks are sized by the state its entries can need (`latentBytes`). Empty otherwise.
    public var latentEntries: [Int] = []
}

public struct CollectSummary: Sendable, Equatable {
    /// Tokens counted (excluded tokens are not counted).
    public var tokens: Int
    public var excludedTokens: Int
    public var collected: Int
    public var dead: Int
    public var sparse: Int
    /// Seconds spent streaming (read + encode + per-feature state), finishing the selection (incl. token
    /// decoding), and writing the store.
    public var streamSeconds: Double = 0
    public var finishSeconds: Double = 0
    public var writeSeconds: Double = 0
    /// CPU time the writer thread spent on the store write (the part of `writeSeconds` not spent waiting for a
    /// core or the disk), for benchmarks on a shared machine.
    public var writeCPUSeconds: Double = 0
    /// CPU time the writer thread spent on the final selection (the part of `finishSeconds` it ran).
    public var finishCPUSeconds: Double = 0
    /// Blocks of features streamed and committed (`Collector.blocks`).
    public var blocks = 0
    /// Filled by `streamOnly` alone: features that fired, their (feature, window) firings, and the windows their
    /// slots hold at the end (top, reservoir, random held-out), so a benchmark can relate time to them.
    public var firingFeatures = 0
    public var activatingWindows = 0
    public var keptWindows = 0
    /// Wall time of the whole run (selection and writes overlap the next block's streaming).
    public var seconds: Double = 0
}

/// Where a window lies in the corpus.
struct WindowPlace: Hashable {
    var sequence: Int
    var start: Int
    var length: Int
}

/// One streamed block's final selection and commit, done off the streaming thread.
struct BlockWork: @unchecked Sendable {  // the inputs are this block's own (opened for it) and only read
    var inputs: CollectInputs
    /// The block's features, ascending; `accumulators` holds state for all of them or (a latent cache) a subset.
    var block: [Int]
    var accumulators: FeatureAccumulators
    var counted: Int
    var commit: CollectCommit
    var store: JobStore
}

/// Runs one `BlockWork` at a time on a background thread; `wait` joins it, adds its counts and times to the
/// summary and rethrows its error (so a failed commit stops the run before the next block is handed over).
final class BlockWriter: @unchecked Sendable {
    private let queue = DispatchQueue(label: "saelabel.collect.writer")
    private let done = DispatchSemaphore(value: 0)
    private var running = false
    /// Written by the background job before it signals `done`, read after `wait` receives the signal.
    private var outcome: Result<(collected: Int, dead: Int, sparse: Int, finish: Double, finishCPU: Double, write: Double,
                                 writeCPU: Double), SAELabelError>?

    func start(_ work: BlockWork) {
        running = true
        queue.async {
            let finishStart = DispatchTime.now().uptimeNanoseconds
            let finishCPUStart = Self.threadCPUSeconds()
            var commit = work.commit
            commit.features = Collector.records(work.accumulators, block: work.block, inputs: work.inputs, counted: work.counted,
                                                stored: commit.storedWindows)
            let writeStart = DispatchTime.now().uptimeNanoseconds
            let writeCPUStart = Self.threadCPUSeconds()
            do throws(SAELabelError) {
                try work.store.commitCollect(commit)
                let records = commit.features
                self.outcome = .success((records.count { $0.state == .collected }, records.count { $0.state == .dead },
                                         records.count { $0.state == .sparse }, Double(writeStart - finishStart) / 1e9,
                                         writeCPUStart - finishCPUStart, Collector.seconds(since: writeStart), Self.threadCPUSeconds() - writeCPUStart))
            } catch {
                self.outcome = .failure(error)
            }
            self.done.signal()
        }
    }

    func wait(into summary: inout CollectSummary) throws(SAELabelError) {
        guard running else { return }
        done.wait()
        running = false
        let result = outcome!
        outcome = nil
        let counts = try result.get()
        summary.collected += counts.collected
        summary.dead += counts.dead
        summary.sparse += counts.sparse
        summary.finishSeconds += counts.finish
        summary.finishCPUSeconds += counts.finishCPU
        summary.writeSeconds += counts.write
        summary.writeCPUSeconds += counts.writeCPU
    }

    static func threadCPUSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

/// One dense activation shard.
struct DenseShard {
    var file: SafetensorsFile
    var tokens: TensorInfo
    var activations: TensorInfo
    var sequences: Int
    var context: Int
    var firstSequence: Int
}

/// One file of a delphi latent cache, holding latents `first...last`.
struct LatentShard {
    var file: SafetensorsFile
    var first: Int
    var last: Int
    var locations: TensorInfo
    var activations: TensorInfo
    var tokens: TensorInfo
}

extension LatentShard {
    /// Entry `entry`'s flat token index and latent offset in this file. Refuses a location outside the corpus
    /// or the file's latent range, and a non-finite value on an included token; excluded tokens are never
    /// counted, so their values are not looked at.
    func entry(_ entry: Int, locations: [Int], values: [Float], tokens shape: [Int],
               excluded: ExcludedTokens) throws(SAELabelError) -> (flat: Int, latent: Int) {
        let sequences = shape[0], context = shape[1], span = last - first + 1
        let sequence = locations[entry * 3], position = locations[entry * 3 + 1], latent = locations[entry * 3 + 2]
        guard sequence >= 0, sequence < sequences, position >= 0, position < context, latent >= 0, latent < span else {
            throw .badInput(location: file.location("locations"),
                            problem: "entry \(entry) = (\(sequence), \(position), \(latent)) is outside tokens \([sequences, context]) or latents 0..<\(span)")
        }
        let flat = sequence * context + position
        guard values[entry].isFinite || excluded.contains(flat) else {
            throw .badInput(location: file.location("activations"),
                            problem: "non-finite value (\(values[entry])) at sequence \(sequence), position \(position) (latent \(first + latent), entry \(entry)); fix the latent cache before collecting")
        }
        return (flat, latent)
    }
}

/// The flat token indices of a latent cache's corpus left out of collect, as a mask by token: the reader looks one
/// up per cache entry, where a hashed set cost more than the rest of the entry's work.
struct ExcludedTokens {
    private var mask: [Bool]
    /// How many tokens are left out.
    private(set) var count = 0

    init(tokens: Int) { mask = [Bool](repeating: false, count: tokens) }

    mutating func insert(_ flat: Int) {
        if !mask[flat] { count += 1 }
        mask[flat] = true
    }

    func contains(_ flat: Int) -> Bool { mask[flat] }
}

/// The opened, validated inputs.
struct CollectInputs {
    var sae: SAEModel?
    var dense: [DenseShard] = []
    var latents: [LatentShard] = []
    var decoder: TokenDecoder
    var featureCount: Int
    var dIn: Int
    var totalTokens: Int
    var saeName: String
    var hookName: String
    var modelName: String

    static func open(_ options: CollectOptions) throws(SAELabelError) -> CollectInputs {
        let kept = options.windowSelection
        guard kept.windowLength >= 1 else { throw .usage("window length must be at least 1 token") }
        for (name, value) in [("explain top", kept.explainTop), ("explain quantile", kept.explainQuantile),
                              ("held-out top", kept.heldoutTop), ("held-out quantile", kept.heldoutQuantile),
                              ("held-out random", kept.heldoutRandom), ("minimum activating windows", kept.minActivatingWindows)]
            where value < 0 {
            throw .usage("\(name) count must not be negative")
        }
        let decoder = try TokenDecoder(path: options.tokenizerPath)
        if let latentsDirectory = options.latentsDirectory {
            guard options.saeDirectory == nil, options.activationFiles.isEmpty else {
                throw .usage("give either --latents, or --sae with --activations, not both")
            }
            guard options.excludeNormAbove == nil else {
                throw .usage("excluding tokens by activation norm needs dense activations; a latent cache holds none")
            }
            return try openLatents(directory: latentsDirectory, decoder: decoder)
        }
        guard let saeDirectory = options.saeDirectory else { throw .usage("give --sae SAE_PATH with --activations FILE…, or --latents CACHE_DIR") }
        guard !options.activationFiles.isEmpty else { throw .usage("give at least one --activations FILE") }
        let sae = try SAEModel.open(path: saeDirectory)
        var shards: [DenseShard] = []
        var sequences = 0
        var tokens = 0
        for path in options.activationFiles {
            let file = try SafetensorsFile(path: path)
            let tokenInfo = try file.tensor("tokens", rank: 2, floating: false)
            let activationInfo = try file.tensor("activations", rank: 3, floating: true)
            guard activationInfo.shape[2] == sae.config.dIn else {
                throw .badInput(location: file.location("activations"),
                                problem: "d_in \(activationInfo.shape[2]) does not match the SAE's d_in \(sae.config.dIn) (\(sae.files[0].path))")
            }
            guard Array(activationInfo.shape[0..<2]) == tokenInfo.shape else {
                throw .badInput(location: file.location("activations"),
                                problem: "shape \(activationInfo.shape) does not match tokens \(tokenInfo.shape); expected [n_seq, ctx, d_in] with the same n_seq and ctx")
            }
            shards.append(DenseShard(file: file, tokens: tokenInfo, activations: activationInfo, sequences: tokenInfo.shape[0],
                                     context: tokenInfo.shape[1], firstSequence: sequences))
            sequences += tokenInfo.shape[0]
            tokens += tokenInfo.elementCount
        }
        let name = sae.config.neuronpediaID ?? (sae.format == .gemmaScope ? sae.path : URL(fileURLWithPath: sae.path).standardizedFileURL.lastPathComponent)
        return CollectInputs(sae: sae, dense: shards, decoder: decoder, featureCount: sae.config.dSAE, dIn: sae.config.dIn,
                             totalTokens: tokens, saeName: name, hookName: sae.config.hookName, modelName: sae.config.modelName)
    }

    static func openLatents(directory: String, decoder: TokenDecoder) throws(SAELabelError) -> CollectInputs {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw .badInput(location: directory, problem: "cannot list the latent cache directory")
        }
        var shards: [LatentShard] = []
        for name in names.sorted() where name.hasSuffix(".safetensors") {
            let path = (directory as NSString).appendingPathComponent(name)
            let stem = name.dropLast(".safetensors".count).split(separator: "_")
            guard stem.count == 2, let first = Int(stem[0]), let last = Int(stem[1]), first >= 0, last >= first else {
                throw .badInput(location: path, problem: "latent cache files must be named <start>_<end>.safetensors (end inclusive)")
            }
            let file = try SafetensorsFile(path: path)
            let locations = try file.tensor("locations", rank: 2, floating: false)
            guard locations.shape[1] == 3 else {
                throw .badInput(location: file.location("locations"), problem: "shape \(locations.shape), expected [N, 3] (sequence, position, latent)")
            }
            let activations = try file.tensor("activations", rank: 1, floating: true)
            guard activations.shape[0] == locations.shape[0] else {
                throw .badInput(location: file.location("activations"), problem: "\(activations.shape[0]) values for \(locations.shape[0]) locations")
            }
            let tokens = try file.tensor("tokens", rank: 2, floating: false)
            if let previous = shards.last {
                guard tokens.shape == previous.tokens.shape else {
                    throw .badInput(location: file.location("tokens"), problem: "shape \(tokens.shape) differs from \(previous.tokens.shape) in \(previous.file.path)")
                }
            }
            shards.append(LatentShard(file: file, first: first, last: last, locations: locations, activations: activations, tokens: tokens))
        }
        guard let firstShard = shards.first else {
            throw .badInput(location: directory, problem: "no <start>_<end>.safetensors files; is this a delphi latent cache directory?")
        }
        shards.sort { $0.first < $1.first }
        for (previous, next) in zip(shards, shards.dropFirst()) where next.first <= previous.last {
            throw .badInput(location: next.file.path, problem: "latent range overlaps \(previous.file.path)")
        }
        let hook = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
        return CollectInputs(sae: nil, latents: shards, decoder: decoder, featureCount: shards.map(\.last).max()! + 1, dIn: 0,
                             totalTokens: firstShard.tokens.elementCount, saeName: hook, hookName: hook, modelName: "")
    }

    /// Token id tensors in corpus order, each with its file and context length.
    var tokenTensors: [(file: SafetensorsFile, info: TensorInfo)] {
        if !dense.isEmpty { return dense.map { ($0.file, $0.tokens) } }
        return latents.first.map { [($0.file, $0.tokens)] } ?? []
    }

    func checkTokenCoverage() throws(SAELabelError) {
        for (file, info) in tokenTensors {
            let context = info.shape[1]
            for index in 0..<info.elementCount {
                let id = file.readInteger(info, at: index)
                if !decoder.contains(id) {
                    throw .badInput(location: file.location("tokens"),
                                    problem: "token id \(id) (sequence \(index / max(1, context)), position \(index % max(1, context))) is not in the tokenizer \(decoder.path) (\(decoder.vocabularySize) ids); is it the model's tokenizer?")
                }
            }
        }
    }

    /// The tokens the exclusion leaves out of a latent cache's corpus.
    func excludedLatentTokens(_ exclusion: TokenExclusion) -> ExcludedTokens {
        guard let shard = latents.first else { return ExcludedTokens(tokens: 0) }
        let context = max(1, shard.tokens.shape[1])
        var excluded = ExcludedTokens(tokens: shard.tokens.elementCount)
        for flat in 0..<shard.tokens.elementCount where exclusion.excludes(token: shard.file.readInteger(shard.tokens, at: flat),
                                                                            position: flat % context) {
            excluded.insert(flat)
        }
        return excluded
    }

    /// Checks that every latent cache entry lies inside the corpus and holds a finite value, except on excluded
    /// tokens, and returns each latent's number of entries (empty without a latent cache).
    func checkLatentEntries(exclusion: TokenExclusion) throws(SAELabelError) -> [Int] {
        guard let first = latents.first else { return [] }
        let excluded = excludedLatentTokens(exclusion)
        var entries = [Int](repeating: 0, count: featureCount)
        for shard in latents {
            let values = shard.file.readFloats(shard.activations)
            let locations = shard.file.readIntegers(shard.locations, start: 0, count: shard.locations.shape[0] * 3)
            for entry in values.indices {
                let latent = try shard.entry(entry, locations: locations, values: values, tokens: first.tokens.shape, excluded: excluded).latent
                entries[shard.first + latent] += 1
            }
        }
        return entries
    }

    /// The corpus's windows in order: the dense shards one after another, or the latent cache's token matrix.
    func windowGeometry(window: Int) -> WindowGeometry {
        if !dense.isEmpty { return WindowGeometry(window: window, parts: dense.map { ($0.sequences, $0.context) }) }
        return WindowGeometry(window: window, parts: latents.prefix(1).map { ($0.tokens.shape[0], $0.tokens.shape[1]) })
    }

    /// Decoded token strings of a window of global sequence `sequence`.
    func windowTokens(sequence: Int, start: Int, length: Int) -> [String] {
        if let shard = dense.last(where: { $0.firstSequence <= sequence }) {
            let base = (sequence - shard.firstSequence) * shard.context + start
            return decoder.decodeWindow(shard.file.readIntegers(shard.tokens, start: base, count: length))
        }
        guard let shard = latents.first else { return [] }
        let base = sequence * shard.tokens.shape[1] + start
        return decoder.decodeWindow(shard.file.readIntegers(shard.tokens, start: base, count: length))
    }
}

public enum Collector {
    /// Opens and validates every input (shapes, d_in, tokens vs activations, tokenizer coverage) and fingerprints
    /// the files. Touches no store.
    public static func plan(_ options: CollectOptions) throws(SAELabelError) -> CollectPlan {
        let inputs = try CollectInputs.open(options)
        let missing = options.selection.outOfRange(featureCount: inputs.featureCount)
        if let first = missing.first {
            throw .usage("--features: feature \(first) does not exist; the SAE has \(inputs.featureCount) features (0..\(inputs.featureCount))")
        }
        try inputs.checkTokenCoverage()
        // Dense activations are checked while streaming (the first block sees every token before any write);
        // a latent cache is read per block of latents, so its values are all checked here.
        let latentEntries = try inputs.checkLatentEntries(exclusion: TokenExclusion(options: options, decoder: inputs.decoder))
        var fingerprints: [InputFingerprint] = []
        if let sae = inputs.sae {
            for file in sae.files { fingerprints.append(try InputFingerprint.of(file: file.path, role: file.role)) }
            for (index, shard) in inputs.dense.enumerated() {
                fingerprints.append(try InputFingerprint.of(file: shard.file.path, role: "activations.\(index)"))
            }
        }
        for shard in inputs.latents {
            fingerprints.append(try InputFingerprint.of(file: shard.file.path, role: "latents.\((shard.file.path as NSString).lastPathComponent)"))
        }
        fingerprints.append(try InputFingerprint.of(file: options.tokenizerPath, role: "tokenizer"))
        return CollectPlan(featureCount: inputs.featureCount, features: options.selection.features(featureCount: inputs.featureCount),
                           dIn: inputs.dIn, totalTokens: inputs.totalTokens, saeName: inputs.saeName, hookName: inputs.hookName,
                           modelName: inputs.modelName, fingerprints: fingerprints, neuronpediaID: inputs.sae?.config.neuronpediaID,
                           splitsCheaply: inputs.sae.map { if case .topk = $0.config.architecture { false } else { true } } ?? false,
                           latentEntries: latentEntries)
    }

    /// Estimated bytes one feature of a block holds at once: its window slots and statistics while streaming
    /// (twice: the previous block's are finished while this one streams), its encoder column and GEMM rows,
    /// and its finished record (token strings ~24 bytes each) before the write.
    public static func bytesPerFeature(_ options: CollectOptions, dIn: Int) -> Int {
        let batch = max(options.windowSelection.windowLength, options.batchTokens)
        return 2 * FeatureAccumulators.stateBytes(options.windowSelection, activeWindows: .max) + dIn * 4 + batch * 4
            + recordBytes(options, storedWindows: .max)
    }

    /// Estimated bytes one latent of a latent cache with `entries` entries holds at once: it fires in at most
    /// `entries` windows, so its state (twice, as in `bytesPerFeature`) and finished record are bounded by them,
    /// plus its entries as read (value, location, token index, bucket, order: 40 bytes each). A latent without
    /// entries has no streaming state (`stream`), only its never-fired record.
    public static func latentBytes(_ options: CollectOptions, entries: Int) -> Int {
        let p = options.windowSelection
        guard entries > 0 else { return neverFiredRecordBytes }
        return 2 * FeatureAccumulators.stateBytes(p, activeWindows: entries) + recordBytes(options, storedWindows: entries + p.heldoutRandom)
            + entries * 40
    }

    /// A never-fired record (`FeatureAccumulators.neverFired`): the record, its histogram's 20 counts and the note.
    static let neverFiredRecordBytes = MemoryLayout<CollectedFeature>.stride + 32 + FeatureAccumulators.histogramBins * 8 + 64

    /// A finished record's example windows (values and ~24-byte token strings), at most `storedWindows` of them.
    static func recordBytes(_ options: CollectOptions, storedWindows: Int) -> Int {
        let p = options.windowSelection
        let stored = p.explainTop + p.explainQuantile + p.heldoutTop + p.heldoutQuantile + p.heldoutRandom
        return min(stored, storedWindows) * options.windowSelection.windowLength * (4 + 24)
    }

    /// `features` cut into the blocks collect streams and commits one at a time: at most
    /// `¾ · memoryBudgetMiB / bytesPerFeature` features each (at least one); the last quarter is left for what
    /// does not grow with the block (code, tokenizer, batch buffers, SQLite's cache, at most an eighth of the budget while
    /// a block commits, the TopK thresholds, the stored windows' memo: at most a sixteenth).
    /// Where splitting is cheap, a large selection is cut into at least `pipelineBlocks` blocks of at least
    /// `pipelineBlockMinimum` features, so the writer overlaps the stream.
    /// A latent cache is cut by what each latent's entries can need (`latentBytes`), so a wide cache of rarely
    /// firing latents is one block (one read of its files) where the full per-feature state would need several.
    public static func blocks(of features: [Int], options: CollectOptions, plan: CollectPlan) -> [[Int]] {
        let budget = options.memoryBudgetMiB * 1_048_576 * 3 / 4
        if !plan.latentEntries.isEmpty {
            var blocks: [[Int]] = [], block: [Int] = [], used = 0.0
            for feature in features {
                let bytes = Double(latentBytes(options, entries: plan.latentEntries[feature]))
                if !block.isEmpty && used + bytes > budget {
                    blocks.append(block)
                    block = []
                    used = 0
                }
                block.append(feature)
                used += bytes
            }
            return block.isEmpty ? blocks : blocks + [block]
        }
        var size = max(1, Int(min(Double(Int.max / 2), budget / Double(bytesPerFeature(options, dIn: plan.dIn)))))
        if plan.splitsCheaply && options.pipelineBlocks > 1 {
            let pipelined = (features.count + options.pipelineBlocks - 1) / options.pipelineBlocks
            size = min(size, max(max(1, options.pipelineBlockMinimum), pipelined))
        }
        return stride(from: 0, to: features.count, by: size).map { Array(features[$0..<min($0 + size, features.count)]) }
    }

    /// Collects `features` (the plan's by default) block by block (`blocks`): each block streams the corpus
    /// once and is committed in one transaction with the job settings, so a kill loses at most the block in
    /// flight and a resumed run, which collects only what is still pending, skips committed blocks.
    /// `first` (input fingerprints, settings, pending rows) is committed with the first block, after its
    /// stream checked every included activation: input errors found while streaming leave the store unchanged.
    public static func run(_ options: CollectOptions, plan: CollectPlan, store: JobStore, features: [Int]? = nil,
                           first: CollectCommit = CollectCommit(),
                           progress: @Sendable (Int, Int) -> Void = { _, _ in }) throws(SAELabelError) -> CollectSummary {
        let featureBlocks = blocks(of: features ?? plan.features, options: options, plan: plan)
        var summary = CollectSummary(tokens: 0, excludedTokens: 0, collected: 0, dead: 0, sparse: 0)
        guard !featureBlocks.isEmpty else {
            try store.commitCollect(first)
            return summary
        }
        let runStart = DispatchTime.now().uptimeNanoseconds
        let kthByToken = try topKThresholds(options, plan: plan, blocks: featureBlocks)
        summary.streamSeconds += seconds(since: runStart)
        // Block i's final selection and commit run on another thread while block i+1 streams (two blocks'
        // window state at once, which `bytesPerFeature` counts); commits stay in block order.
        let writer = BlockWriter()
        let storedWindows = StoredWindows(capacityTokens: storedWindowTokens(options))
        // Two sets of state memory alternate: block i streams into the memory of block i − 2, whose commit
        // finished before block i − 1's started (`writer.wait`).
        var previous: FeatureAccumulators?
        var spare: FeatureStateMemory?
        do throws(SAELabelError) {
            for (index, block) in featureBlocks.enumerated() {
                let streamStart = DispatchTime.now().uptimeNanoseconds
                let total = featureBlocks.count * plan.totalTokens
                let inputs = try openChecked(options, plan: plan)
                let (accumulators, excluded) = try stream(inputs, options: options, plan: plan, features: block, kthByToken: kthByToken,
                                                          reusing: spare, progress: { done, _ in
                    progress(index * plan.totalTokens + done, total)
                })
                summary.streamSeconds += seconds(since: streamStart)
                try writer.wait(into: &summary)
                spare = previous?.memory
                previous = accumulators
                let counted = inputs.totalTokens - excluded
                var commit = index == 0 ? first : CollectCommit()
                // The commit's page cache comes out of the budget's last quarter (see `blocks`): an eighth of it.
                commit.pageCacheKiB = min(JobStore.blockCacheKiB, Int(options.memoryBudgetMiB * 1024 / 8))
                commit.storedWindows = storedWindows
                commit.settings[JobSettingKey.saeName] = plan.saeName
                commit.settings[JobSettingKey.hookName] = plan.hookName
                commit.settings[JobSettingKey.modelName] = plan.modelName
                if let id = plan.neuronpediaID { commit.settings[JobSettingKey.neuronpediaId] = id }
                commit.settings[JobSettingKey.featureCount] = String(plan.featureCount)
                commit.settings[JobSettingKey.tokensCounted] = String(counted)
                commit.settings[JobSettingKey.tokensExcluded] = String(excluded)
                commit.settings[JobSettingKey.seed] = String(options.windowSelection.seed)
                summary.tokens = counted
                summary.excludedTokens = excluded
                summary.blocks += 1
                writer.start(BlockWork(inputs: inputs, block: block, accumulators: accumulators, counted: counted, commit: commit,
                                       store: store))
            }
        } catch {
            // A failed stream never leaves a commit running behind the caller's back (it may close the store).
            try? writer.wait(into: &summary)
            throw error
        }
        try writer.wait(into: &summary)
        summary.seconds = seconds(since: runStart)
        return summary
    }

    static func seconds(since start: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }

    /// The inputs, opened again for one block and checked against the plan.
    static func openChecked(_ options: CollectOptions, plan: CollectPlan) throws(SAELabelError) -> CollectInputs {
        let inputs = try CollectInputs.open(options)
        guard inputs.featureCount == plan.featureCount, inputs.totalTokens == plan.totalTokens else {
            throw .inputChanged(path: options.saeDirectory ?? options.latentsDirectory ?? "", detail: "shapes differ from the plan")
        }
        return inputs
    }

    /// The run's window memo (`StoredWindows`) holds at most a sixteenth of the memory budget, at ~32 bytes per
    /// token (its string, the array slot, the entry's share); it comes out of the budget's last quarter (`blocks`).
    static func storedWindowTokens(_ options: CollectOptions) -> Int {
        Int(options.memoryBudgetMiB * 1_048_576 / 16 / 32)
    }

    /// The stored records of every feature of `block` (ascending), in its order; a window chosen by several
    /// features is decoded once, and a window an earlier block stored (`stored`) not at all. A feature
    /// `accumulators` holds no state for (a latent without entries) never fired.
    static func records(_ accumulators: FeatureAccumulators, block: [Int], inputs: CollectInputs, counted: Int,
                        stored: StoredWindows? = nil) -> [CollectedFeature] {
        var decoded: [WindowPlace: [String]] = [:]
        let tracked = accumulators.features
        var slot = 0
        return block.map { feature in
            guard slot < tracked.count, tracked[slot] == feature else {
                return FeatureAccumulators.neverFired(feature, countedTokens: counted)
            }
            defer { slot += 1 }
            return accumulators.finish(slot, countedTokens: counted) { sequence, start, length in
                if let tokens = stored?.tokens(sequence: sequence, start: start, length: length) { return tokens }
                let place = WindowPlace(sequence: sequence, start: start, length: length)
                if let tokens = decoded[place] { return tokens }
                let tokens = inputs.windowTokens(sequence: sequence, start: start, length: length)
                decoded[place] = tokens
                return tokens
            }
        }
    }

    /// Streams every block of the plan's features (read, encode, per-feature state) and stops there: no final
    /// selection, no store. For benchmarks that measure the streaming phase and its memory alone.
    public static func streamOnly(_ options: CollectOptions, plan: CollectPlan) throws(SAELabelError) -> CollectSummary {
        let featureBlocks = blocks(of: plan.features, options: options, plan: plan)
        var summary = CollectSummary(tokens: 0, excludedTokens: 0, collected: 0, dead: 0, sparse: 0)
        let start = DispatchTime.now().uptimeNanoseconds
        var censusNanoseconds: UInt64 = 0
        let kthByToken = try topKThresholds(options, plan: plan, blocks: featureBlocks)
        var spare: FeatureStateMemory?
        for block in featureBlocks {
            let inputs = try openChecked(options, plan: plan)
            let (accumulators, excluded) = try stream(inputs, options: options, plan: plan, features: block, kthByToken: kthByToken,
                                                      reusing: spare, progress: { _, _ in })
            defer { spare = accumulators.memory }  // nothing reads this block's state after the census
            // The census reads every slot (O(features with state)); it is not part of the streaming time.
            let censusStart = DispatchTime.now().uptimeNanoseconds
            for slot in accumulators.features.indices where accumulators.activeWindows[slot] > 0 {
                summary.firingFeatures += 1
                summary.activatingWindows += accumulators.activeWindows[slot]
                summary.keptWindows += accumulators.keptWindowCount(slot)
            }
            censusNanoseconds += DispatchTime.now().uptimeNanoseconds - censusStart
            summary.tokens = inputs.totalTokens - excluded
            summary.excludedTokens = excluded
            summary.blocks += 1
        }
        summary.streamSeconds = Double(DispatchTime.now().uptimeNanoseconds - start - censusNanoseconds) / 1e9
        return summary
    }

    /// The collection without the store: the features' records, tokens counted, tokens excluded.
    static func collect(_ options: CollectOptions, plan: CollectPlan,
                        progress: @Sendable (Int, Int) -> Void) throws(SAELabelError) -> ([CollectedFeature], Int, Int) {
        let kthByToken = try topKThresholds(options, plan: plan, blocks: [plan.features])
        let inputs = try openChecked(options, plan: plan)
        let (accumulators, excluded) = try stream(inputs, options: options, plan: plan, features: plan.features, kthByToken: kthByToken,
                                                  progress: progress)
        let counted = inputs.totalTokens - excluded
        return (records(accumulators, block: plan.features, inputs: inputs, counted: counted), counted, excluded)
    }

    /// One pass over the inputs filling `features`' streaming state; returns it with the number of excluded tokens.
    /// A latent cache's state covers only the latents with entries (`plan.latentEntries`): a wide cache's silent
    /// latents cost nothing while streaming, not even a zero page, and `records` stores them as never fired.
    /// `reusing`: the state memory of a finished block (see `FeatureAccumulators.init`).
    static func stream(_ inputs: CollectInputs, options: CollectOptions, plan: CollectPlan, features: [Int], kthByToken: [Float]?,
                       reusing: FeatureStateMemory? = nil,
                       progress: (Int, Int) -> Void) throws(SAELabelError) -> (FeatureAccumulators, Int) {
        if inputs.sae == nil {
            let withEntries = plan.latentEntries.isEmpty ? features : features.filter { plan.latentEntries[$0] > 0 }
            let accumulators = FeatureAccumulators(features: withEntries, parameters: options.windowSelection, reusing: reusing)
            return (accumulators, try LatentReader(inputs: inputs, options: options, accumulators: accumulators).run(progress: progress))
        }
        let accumulators = FeatureAccumulators(features: features, parameters: options.windowSelection, reusing: reusing)
        let excluded = try DenseEncoder(inputs: inputs, options: options, accumulators: accumulators, kthByToken: kthByToken)
            .run(progress: progress)
        // Slots are independent: the encode's workers split the last catch-up too.
        let geometry = inputs.windowGeometry(window: options.windowSelection.windowLength)
        let threads = max(1, options.blasThreads)
        onThreads(threads) { worker in
            let slots = (worker * features.count / threads)..<((worker + 1) * features.count / threads)
            accumulators.completeInactive(slots: slots, geometry: geometry)
        }
        return (accumulators, excluded)
    }

    /// A TopK SAE whose blocks do not each hold every feature needs each token's k-th largest activation
    /// before any block can keep its own features' top k (one extra pass over the corpus); nil otherwise.
    static func topKThresholds(_ options: CollectOptions, plan: CollectPlan, blocks: [[Int]]) throws(SAELabelError) -> [Float]? {
        guard options.latentsDirectory == nil, !(blocks.count == 1 && blocks[0].count == plan.featureCount) else { return nil }
        let inputs = try CollectInputs.open(options)
        guard case .topk = inputs.sae?.config.architecture else { return nil }
        return try TopKThresholds.compute(inputs: inputs, options: options, blocks: blocks)
    }
}

/// Decides which tokens are left out (special tokens, positions, large-norm vectors).
struct TokenExclusion {
    var special: Set<Int>
    var positions: Set<Int>
    var normAbove: Float?

    init(options: CollectOptions, decoder: TokenDecoder) {
        special = options.excludeSpecialTokens ? decoder.specialTokenIDs : []
        positions = Set(options.excludePositions)
        normAbove = options.excludeNormAbove
    }

    @inline(__always)
    func excludes(token: Int, position: Int) -> Bool {
        (!special.isEmpty && special.contains(token)) || (!positions.isEmpty && positions.contains(position))
    }
}
