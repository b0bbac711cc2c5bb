import Foundation
import Testing
@testable import SAELabelCollect
import SAELabelCore
import SAELabelKernels
import SAELabelStore

/// Threads, feature blocks and sparse inputs change how collect works, never what it stores.
@Suite struct ScaleTests {
    /// Everything collect stored for every feature: statistics and example rows (split, ordinal, window, values).
    func storedContents(_ store: JobStore, features: Int) throws -> [String] {
        var rows: [String] = []
        for feature in 0..<features {
            let record = try #require(try store.feature(feature))
            rows.append("\(feature) \(record.state) \(String(describing: record.statistics))")
            for example in try store.examples(feature: feature) {
                let bits = example.window.activations.map { String($0.bitPattern, radix: 16) }.joined(separator: ",")
                rows.append("\(feature) \(example.split) \(example.ordinal) \(example.window.kind) \(example.window.sequence):\(example.window.start) \(example.window.tokens) [\(bits)]")
            }
        }
        return rows
    }

    /// Windows of 8 tokens, every firing feature collected, small batches and GEMM chunks.
    func smallWindowFixture(sae: TestSAE, corpus: TestCorpus, batchTokens: Int, chunkRows: Int) throws -> (String, CollectOptions) {
        var (directory, options) = try makeFixture(sae: sae, corpus: corpus)
        options.windowSelection.windowLength = 8
        options.batchTokens = batchTokens
        options.windowSelection.minActivatingWindows = 1
        options.encodeChunkRows = chunkRows
        return (directory, options)
    }

    func collectIntoStore(_ options: CollectOptions, directory: String, name: String) throws -> JobStore {
        let store = try JobStore(path: (directory as NSString).appendingPathComponent(name))
        _ = try Collector.run(options, plan: try Collector.plan(options), store: store)
        return store
    }

    /// Collects with one thread and then with two and expects the same stored bytes, examples included.
    func expectOneAndTwoThreadsStoreTheSame(_ options: CollectOptions, directory: String, features: Int) throws {
        var options = options
        options.blasThreads = 1
        let single = try collectIntoStore(options, directory: directory, name: "one.sqlite")
        options.blasThreads = 2
        let double = try collectIntoStore(options, directory: directory, name: "two.sqlite")
        let expected = try storedContents(single, features: features)
        #expect(expected.count > features * 5, "the fixture must store examples")
        #expect(try storedContents(double, features: features) == expected)
    }

    /// At one BLAS thread the per-feature pass runs on a thread of its own beside the GEMMs; it stores the bytes
    /// the GEMM-then-pass loop on one thread stores, for a whole block and for TopK in blocks (whose batches carry
    /// their tokens' k-th values to the pass thread).
    @Test(arguments: ["jumprelu", "topk"])
    func thePassOnItsOwnThreadStoresWhatOneThreadStores(architecture: String) throws {
        let sae = TestSAE.random(dIn: 16, dSAE: 48, architecture: architecture, seed: 23, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 24, ctx: 40, dIn: 16, seed: 24, dtype: "F32")
        var (directory, options) = try smallWindowFixture(sae: sae, corpus: corpus, batchTokens: 64, chunkRows: 5)
        if architecture == "topk" { options.memoryBudgetMiB = Double(Collector.bytesPerFeature(options, dIn: 16) * 16) / 1_048_576 }
        options.blasThreads = 1
        options.passOnOwnThread = false
        let serial = try collectIntoStore(options, directory: directory, name: "serial.sqlite")
        options.passOnOwnThread = true
        let passThread = try collectIntoStore(options, directory: directory, name: "pass-thread.sqlite")
        let expected = try storedContents(serial, features: 48)
        #expect(expected.count > 48 * 5, "the fixture must store examples")
        #expect(try storedContents(passThread, features: 48) == expected)
    }

    /// One and two threads (chunks of 5 features, so both threads take several) store the same bytes, for a
    /// per-row activation and for inline TopK (all rows first, k-th value per token split over threads).
    @Test(arguments: ["jumprelu", "topk"])
    func oneAndTwoThreadsStoreIdenticalExamplesAndStatistics(architecture: String) throws {
        let sae = TestSAE.random(dIn: 16, dSAE: 48, architecture: architecture, seed: 21, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 24, ctx: 40, dIn: 16, seed: 22, dtype: "F32")
        let (directory, options) = try smallWindowFixture(sae: sae, corpus: corpus, batchTokens: 64, chunkRows: 5)
        try expectOneAndTwoThreadsStoreTheSame(options, directory: directory, features: 48)
    }

    /// A TopK SAE collected in blocks of a few features (each block multiplying only its own rows, the k-th value
    /// per token coming from the extra thresholds pass) matches the plain-loop reference like a single block does;
    /// also for a shard (every third feature), whose other features count toward the k-th value alone; and with
    /// two threads, whose pipelined batches each carry their own tokens' k-th values.
    @Test(arguments: [nil, FeatureSelection.Shard(index: 1, count: 3)], [1, 2])
    func topKInBlocksMatchesTheReference(shard: FeatureSelection.Shard?, threads: Int) throws {
        let sae = TestSAE.random(dIn: 12, dSAE: 30, architecture: "topk", seed: 31, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 10, ctx: 24, dIn: 12, seed: 32, dtype: "F32")
        var (directory, options) = try smallWindowFixture(sae: sae, corpus: corpus, batchTokens: 48, chunkRows: 7)
        options.memoryBudgetMiB = Double(Collector.bytesPerFeature(options, dIn: 12) * 8) / 1_048_576  // 6 features a block
        options.selection.shard = shard
        options.blasThreads = threads
        let plan = try Collector.plan(options)
        #expect(Collector.blocks(of: plan.features, options: options, plan: plan).count == (shard == nil ? 5 : 2))
        let store = try collectIntoStore(options, directory: directory, name: "blocks.sqlite")
        let reference = referenceActivations(sae: sae, corpus: corpus) { _, position in position == 0 }
        var firing = 0
        for feature in plan.features {
            let values = reference[feature]
            let fired = values.filter { $0 > 0 }
            firing += fired.count
            let record = try #require(try store.feature(feature))
            #expect(record.statistics?.activatingTokens == fired.count, "feature \(feature)")
            #expect(abs((record.statistics?.maxActivation ?? 0) - (fired.max() ?? 0)) <= 1e-4 * max(1, fired.max() ?? 0))
            guard !fired.isEmpty else { continue }
            let tops = try store.examples(feature: feature).map(\.window).filter { $0.kind == .top }.sorted(by: ranksBefore)
            let expected = referenceWindows(values, nSeq: 10, ctx: 24, window: 8).filter { $0.peak > 0 }.prefix(15)
            #expect(tops.map { [$0.sequence, $0.start] } == expected.map { [$0.sequence, $0.start] }, "feature \(feature)")
        }
        #expect(firing > 10 * 23 * plan.features.count / 30, "about a third of the features fire on each token")
    }

    /// Pipelined blocks (each streamed alone, selected and written on the writer thread while the next streams)
    /// store the same bytes as one block holding every feature. The blocks are cut where the whole block's GEMM
    /// chunks are (36 features in chunks of 6, blocks of 12): OpenBLAS kernels give a row different last bits
    /// depending on the GEMM's row count (Haswell and Prescott do), so only equal GEMMs promise equal bytes.
    @Test func pipelinedBlocksStoreWhatOneBlockStores() throws {
        let sae = TestSAE.random(dIn: 12, dSAE: 36, architecture: "jumprelu", seed: 51, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 16, ctx: 24, dIn: 12, seed: 52, dtype: "F32")
        var (directory, options) = try smallWindowFixture(sae: sae, corpus: corpus, batchTokens: 48, chunkRows: 6)
        options.pipelineBlocks = 1
        let plan = try Collector.plan(options)
        #expect(plan.splitsCheaply && Collector.blocks(of: plan.features, options: options, plan: plan).count == 1)
        let whole = try collectIntoStore(options, directory: directory, name: "whole.sqlite")
        options.pipelineBlocks = 3
        options.pipelineBlockMinimum = 1
        let blocks = Collector.blocks(of: plan.features, options: options, plan: plan)
        #expect(blocks.map(\.count) == [12, 12, 12])
        let wholeChunks = ChunkGeometry(rows: 36, preferredRows: 6)
        #expect((0..<wholeChunks.count).map { wholeChunks.rows(of: $0) }
                == (0..<3).flatMap { block in [0, 1].map { ChunkGeometry(rows: 12, preferredRows: 6).rows(of: $0).shifted(by: block * 12) } })
        let pipelined = try collectIntoStore(options, directory: directory, name: "pipelined.sqlite")
        let expected = try storedContents(whole, features: 36)
        #expect(expected.count > 36 * 5, "the fixture must store examples")
        #expect(try storedContents(pipelined, features: 36) == expected)
    }

    /// A block's rows are cut into an even number of chunks that differ by at most one row and cover every row once,
    /// as near the preferred size as an even count allows; the cut depends on the rows alone.
    @Test(arguments: [(3072, 1024, 4), (3072, 512, 6), (3072, 256, 12), (24576, 1024, 24), (2048, 1024, 2),
                      (1000, 1024, 2), (5120, 1024, 6), (48, 5, 10), (14, 3, 4), (3, 256, 2), (1, 256, 1), (0, 256, 0)])
    func chunksAreAnEvenCountOfNearlyEqualParts(rows: Int, preferred: Int, expectedCount: Int) {
        let chunks = ChunkGeometry(rows: rows, preferredRows: preferred)
        #expect(chunks.count == expectedCount)
        var next = 0
        var sizes: [Int] = []
        for index in 0..<chunks.count {
            let range = chunks.rows(of: index)
            #expect(range.lowerBound == next, "chunk \(index) starts where the previous one ended")
            next = range.upperBound
            sizes.append(range.count)
        }
        #expect(next == rows, "every row is in a chunk")
        if let smallest = sizes.min(), let largest = sizes.max() {
            #expect(largest - smallest <= 1 && largest == chunks.largest && smallest > 0)
        }
    }

    /// Blocks whose widths are not multiples of the preferred chunk (14, 14 and 12 rows cut into 4 chunks of 3–4)
    /// store with two threads the bytes one thread stores.
    @Test func unevenBlockChunksStoreTheSameWithOneAndTwoThreads() throws {
        let sae = TestSAE.random(dIn: 12, dSAE: 40, architecture: "jumprelu", seed: 61, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 16, ctx: 24, dIn: 12, seed: 62, dtype: "F32")
        var (directory, options) = try smallWindowFixture(sae: sae, corpus: corpus, batchTokens: 48, chunkRows: 3)
        options.pipelineBlocks = 3
        options.pipelineBlockMinimum = 1
        let plan = try Collector.plan(options)
        #expect(Collector.blocks(of: plan.features, options: options, plan: plan).map {
            ChunkGeometry(rows: $0.count, preferredRows: 3).count } == [4, 4, 4])
        try expectOneAndTwoThreadsStoreTheSame(options, directory: directory, features: 40)
    }

    /// Skipping a run of inactive windows in one step leaves the random reservoir exactly as window-by-window does.
    @Test func aRunOfInactiveWindowsSkipsToTheSameReservoir() {
        let parameters = SelectionParameters(windowLength: 4, explainTop: 2, explainQuantile: 2, heldoutTop: 1, heldoutQuantile: 1,
                                             heldoutRandom: 5, minActivatingWindows: 1, seed: 9)
        let stepwise = FeatureAccumulators(features: [3, 7], parameters: parameters)
        let runs = FeatureAccumulators(features: [3, 7], parameters: parameters)
        let place = { (order: Int64) in (sequence: Int(order) / 10, start: Int(order) % 10 * 4, length: 4) }
        for slot in 0..<2 {
            var order: Int64 = 0
            for run in [3, 1, 250, 17, 4000, 2] {
                for offset in 0..<run {
                    let window = place(order + Int64(offset))
                    stepwise.observeInactive(slot, length: window.length, sequence: window.sequence, start: window.start,
                                             order: order + Int64(offset))
                }
                runs.observeInactiveRun(slot, firstOrder: order, count: run, place: place)
                order += Int64(run)
            }
        }
        for slot in 0..<2 {
            #expect((0..<5).map { runs.random.kept(slot, $0) } == (0..<5).map { stepwise.random.kept(slot, $0) })
        }
        #expect(runs.randomState[0].seen == 4273 && stepwise.randomState[1].seen == 4273)
        #expect(Set((0..<5).map { runs.random.order(0, $0) }).count == 5, "five distinct windows kept")
    }

    /// Feeding inactive windows only when a feature next fires (`catchUp`) and at the end (`completeInactive`)
    /// leaves every reservoir, heap and statistic exactly as feeding every window as it comes.
    @Test func catchingUpOnInactiveWindowsEqualsWindowByWindow() {
        let parameters = SelectionParameters(windowLength: 4, explainTop: 2, explainQuantile: 2, heldoutTop: 1, heldoutQuantile: 1,
                                             heldoutRandom: 5, minActivatingWindows: 1, seed: 11)
        let geometry = WindowGeometry(window: 4, parts: [(sequences: 30, context: 14), (sequences: 20, context: 8)])
        #expect(geometry.totalWindows == 30 * 4 + 20 * 2)
        #expect(geometry.place(121) == (sequence: 30, start: 4, length: 4) && geometry.place(3) == (sequence: 0, start: 12, length: 2))
        let stepwise = FeatureAccumulators(features: [2, 5, 9], parameters: parameters)
        let lazy = FeatureAccumulators(features: [2, 5, 9], parameters: parameters)
        var random = TestRandom(12)
        var values = [Float](repeating: 0, count: 4)
        for order in 0..<geometry.totalWindows {
            let window = geometry.place(order)
            for slot in 0..<2 {  // slot 2 never fires
                let fires = random.int(slot == 0 ? 3 : 12) == 0
                for index in 0..<4 { values[index] = fires && index < window.length ? random.uniform() + 0.01 : 0 }
                guard fires else {
                    stepwise.observeInactive(slot, length: window.length, sequence: window.sequence, start: window.start, order: order)
                    continue
                }
                let peak = values.max()!
                stepwise.observeActive(slot, values: values, length: window.length, peak: peak, sequence: window.sequence,
                                       start: window.start, order: order)
                lazy.catchUp(slot, to: order, geometry: geometry)
                lazy.observeActive(slot, values: values, length: window.length, peak: peak, sequence: window.sequence,
                                   start: window.start, order: order)
            }
        }
        lazy.completeInactive(slots: 0..<3, geometry: geometry)
        for slot in 0..<2 {
            #expect(lazy.randomState[slot].seen == stepwise.randomState[slot].seen && lazy.activeWindows[slot] == stepwise.activeWindows[slot])
            let filled = [min(stepwise.randomState[slot].seen, 5), min(stepwise.reservoirState[slot].seen, 16), stepwise.topCount[slot]]
            #expect(lazy.topCount[slot] == filled[2] && lazy.reservoirState[slot].seen == stepwise.reservoirState[slot].seen)
            for (index, (kept, all)) in [(lazy.random, stepwise.random), (lazy.top, stepwise.top)].enumerated() {
                let count = filled[index == 0 ? 0 : 2]
                #expect((0..<count).map { kept.kept(slot, $0) } == (0..<count).map { all.kept(slot, $0) }, "slot \(slot)")
                #expect((0..<count).map { kept.values(slot, $0) } == (0..<count).map { all.values(slot, $0) })
            }
            let (lazySlots, lazyReservoir) = lazy.reservoirWindows(slot), (stepwiseSlots, stepwiseReservoir) = stepwise.reservoirWindows(slot)
            #expect(lazyReservoir.count == filled[1] && lazyReservoir == stepwiseReservoir)
            #expect(lazyReservoir.map { lazySlots.values(slot, $0.index) } == stepwiseReservoir.map { stepwiseSlots.values(slot, $0.index) })
        }
        #expect(stepwise.activeWindows[1] > 5 && stepwise.randomState[1].seen > 100, "slot 1 fires now and then")
        #expect(stepwise.reservoirState[0].seen > 16, "slot 0's reservoir replaces windows")
        #expect(!lazy.hasState(2) && lazy.hasState(0), "the feature that never fired was never touched")
    }

    /// A feature that never fires gets no state during collect (nothing allocated or written for it) and is stored
    /// as dead, with zero statistics and no examples, next to features that fire.
    @Test func aNeverFiringFeatureCostsNothingAndIsStoredDead() throws {
        var sae = TestSAE.random(dIn: 8, dSAE: 20, architecture: "standard", seed: 41, dtype: "F32")
        sae.bEnc[7] = -1000
        let corpus = TestCorpus.random(nSeq: 12, ctx: 24, dIn: 8, seed: 42, dtype: "F32")
        var (directory, options) = try smallWindowFixture(sae: sae, corpus: corpus, batchTokens: 48, chunkRows: 4)
        options.windowSelection.heldoutRandom = 3
        let plan = try Collector.plan(options)
        let inputs = try Collector.openChecked(options, plan: plan)
        let (accumulators, _) = try Collector.stream(inputs, options: options, plan: plan, features: plan.features, kthByToken: nil,
                                                     progress: { _, _ in })
        #expect(!accumulators.hasState(7))
        #expect((0..<20).filter { accumulators.hasState($0) }.count == 19, "every other feature fires on this corpus")
        let store = try collectIntoStore(options, directory: directory, name: "dead.sqlite")
        let record = try #require(try store.feature(7))
        #expect(record.state == .dead)
        #expect(record.statistics == FeatureStatistics(frequency: 0, maxActivation: 0, meanActivation: 0, activatingTokens: 0,
                                                       activatingWindows: 0, histogram: [Int](repeating: 0, count: 20)))
        #expect(try store.examples(feature: 7).isEmpty)
        let collected = try (0..<20).filter { try store.feature($0)?.state == .collected }
        #expect(collected.count >= 10)
        #expect(try collected.contains { try store.examples(feature: $0).filter { $0.window.kind == .random }.count == 3 },
                "firing features keep their random windows")
    }

    /// A feature's window slots are reserved as it keeps windows (4, then doubled, at most the capacity), and
    /// growing them keeps every record and its values: the heap still holds the strongest windows.
    @Test func windowSlotsGrowWithTheWindowsAFeatureKeeps() {
        let parameters = SelectionParameters(windowLength: 3, explainTop: 10, explainQuantile: 10, heldoutTop: 5, heldoutQuantile: 5,
                                             heldoutRandom: 5, minActivatingWindows: 1, seed: 13)
        #expect(parameters.topCapacity == 15 && parameters.reservoirCapacity == 60)
        let accumulators = FeatureAccumulators(features: [0, 1, 2], parameters: parameters)
        var random = TestRandom(14)
        var fed: [[Int64: [Float]]] = [[:], [:]]
        for (slot, windows) in [(0, 3), (1, 40)] {
            for order in 0..<windows {
                let values = (0..<3).map { _ in random.uniform() + 0.01 }
                fed[slot][Int64(order)] = values
                accumulators.observeActive(slot, values: values, length: 3, peak: values.max()!, sequence: order, start: 0, order: Int64(order))
            }
        }
        let reserved: [[Int]] = (0..<3).map { slot in [accumulators.top, accumulators.reservoir, accumulators.random].map { $0.reservedSlots(slot) } }
        // Slot 0's 3 windows are all in its top heap, which stands in for its reservoir (`defersToTop`).
        #expect(reserved == [[4, 0, 0], [15, 60, 0], [0, 0, 0]], "top, reservoir, random (no inactive windows fed)")
        for slot in 0..<2 {
            let top = (0..<accumulators.topCount[slot]).map { accumulators.top.kept(slot, $0) }
            let strongest = fed[slot].map { (order: $0.key, peak: $0.value.max()!) }.sorted { $0.peak > $1.peak }.prefix(15)
            #expect(Set(top.map(\.order)) == Set(strongest.map(\.order)), "slot \(slot)")
            for kept in top { #expect(accumulators.top.values(slot, kept.index) == fed[slot][kept.order]) }
            let (slots, reservoir) = accumulators.reservoirWindows(slot)
            for kept in reservoir { #expect(slots.values(slot, kept.index) == fed[slot][kept.order]) }
            #expect(reservoir.count == min(fed[slot].count, 60))
        }
    }

    /// A reader that knows how many windows a feature can keep reserves exactly that many top slots; a feature
    /// that keeps more still grows, keeping every record and its values.
    @Test func reservingTheKnownWindowsHoldsExactlyThem() {
        let parameters = SelectionParameters(windowLength: 3, explainTop: 10, explainQuantile: 10, heldoutTop: 5, heldoutQuantile: 5,
                                             heldoutRandom: 5, minActivatingWindows: 1, seed: 13)
        let accumulators = FeatureAccumulators(features: [0, 1], parameters: parameters)
        accumulators.top.reserve(0, slots: 2)
        accumulators.top.reserve(1, slots: 40)
        #expect(accumulators.top.reservedSlots(0) == 2 && accumulators.top.reservedSlots(1) == 15, "exact, at most the capacity")
        var fed: [Int64: [Float]] = [:]
        for order in 0..<3 {
            let values: [Float] = [Float(order) + 0.5, 0, 0.25]
            fed[Int64(order)] = values
            accumulators.observeActive(0, values: values, length: 3, peak: values.max()!, sequence: order, start: 0, order: Int64(order))
            #expect(accumulators.top.reservedSlots(0) == (order < 2 ? 2 : 4))
        }
        let kept = (0..<accumulators.topCount[0]).map { accumulators.top.kept(0, $0) }
        #expect(Set(kept.map(\.order)) == [0, 1, 2])
        for window in kept { #expect(accumulators.top.values(0, window.index) == fed[window.order]) }
    }

    /// A latent cache is cut into blocks by what each latent's entries can need, so rarely firing latents share
    /// a block the full per-feature state would split; any cut stores the same bytes as one block.
    @Test func latentCacheBlocksFollowTheEntriesAndStoreWhatOneBlockStores() throws {
        let width = 64
        let (directory, cache, tokenizer) = try writeLatentFixture(seed: 61, sequences: 12, context: 20, width: width, span: 16) { _, _, _, random in
            (0..<16).compactMap { latent in  // latents 0–3 of each file fire often
                random.int(latent < 4 ? 3 : 40) == 0 ? (latent, random.uniform() * 4 + 0.01) : nil
            }
        }
        var options = CollectOptions(latentsDirectory: cache, tokenizerPath: tokenizer)
        options.windowSelection.windowLength = 4
        options.windowSelection.minActivatingWindows = 1
        let plan = try Collector.plan(options)
        #expect(plan.latentEntries.count == width && plan.latentEntries[0] > 4 * plan.latentEntries[5])
        // A budget the full state of 16 latents fills: the entries' bound packs more latents into each block.
        options.memoryBudgetMiB = Double(Collector.bytesPerFeature(options, dIn: 0) * 16) / 1_048_576 * 4 / 3
        let blocks = Collector.blocks(of: plan.features, options: options, plan: plan)
        #expect(blocks.count > 1 && blocks.count < 4, "\(blocks.map(\.count))")
        #expect(blocks.flatMap { $0 } == plan.features)
        let budgetBytes = options.memoryBudgetMiB * 1_048_576 * 3 / 4
        for block in blocks {
            #expect(Double(block.reduce(0) { $0 + Collector.latentBytes(options, entries: plan.latentEntries[$1]) }) <= budgetBytes)
        }
        let split = try collectIntoStore(options, directory: directory, name: "split.sqlite")
        options.memoryBudgetMiB = 1024
        #expect(Collector.blocks(of: plan.features, options: options, plan: plan).count == 1)
        let whole = try collectIntoStore(options, directory: directory, name: "whole.sqlite")
        let expected = try storedContents(whole, features: width)
        #expect(expected.count > width * 5, "the fixture must store examples")
        #expect(try storedContents(split, features: width) == expected)
    }

    /// A latent cache's state covers only the latents with entries, so its silent latents cost nothing while
    /// streaming; every latent still gets the record a state for every latent gives (silent ones: never fired),
    /// for the whole cache and for a block cut across its files. Latent 50's only entries lie on BOS tokens
    /// (excluded): it has state and is dead, the same record as a latent without entries.
    @Test func latentsWithoutEntriesHaveNoStateAndTheRecordsAFullStateGives() throws {
        let width = 64
        let firing = [3, 17, 40, 41]
        let (_, cache, tokenizer) = try writeLatentFixture(seed: 71, sequences: 8, context: 20, width: width, span: 32) { first, _, position, random in
            var entries: [(Int, Float)] = []
            for latent in firing where latent >= first && latent < first + 32 && random.int(latent == 17 ? 30 : 4) == 0 {
                entries.append((latent - first, random.uniform() * 4 + 0.01))
            }
            if first == 32 && position == 0 { entries.append((50 - first, 2)) }
            return entries
        }
        var options = CollectOptions(latentsDirectory: cache, tokenizerPath: tokenizer)
        options.windowSelection.windowLength = 4
        options.windowSelection.minActivatingWindows = 12
        let plan = try Collector.plan(options)
        #expect(plan.featureCount == width)
        for block in [plan.features, Array(plan.features[10..<45])] {
            let inputs = try Collector.openChecked(options, plan: plan)
            let (tracked, excluded) = try Collector.stream(inputs, options: options, plan: plan, features: block, kthByToken: nil,
                                                           progress: { _, _ in })
            #expect(tracked.features == (firing + [50]).filter(block.contains))
            let full = FeatureAccumulators(features: block, parameters: options.windowSelection)
            #expect(try LatentReader(inputs: inputs, options: options, accumulators: full).run(progress: { _, _ in }) == excluded)
            let counted = inputs.totalTokens - excluded
            let expected = Collector.records(full, block: block, inputs: inputs, counted: counted)
            #expect(expected.map(\.index) == block)
            #expect(expected.filter { $0.state != .dead }.map(\.index) == firing.filter(block.contains), "latent 17 is sparse, the rest collected")
            #expect(expected.contains { $0.state == .sparse } == block.contains(17))
            #expect(Collector.records(tracked, block: block, inputs: inputs, counted: counted) == expected)
        }
    }

    /// Deferring a feature's reservoir and histogram to its top heap (while the heap holds every window it fired
    /// in) leaves the same reservoir, histogram, heap and statistics as writing them window by window, whether
    /// the feature stays within the heap, settles on the window that overflows it, or goes far beyond.
    @Test(arguments: [1, 6, 15, 16, 17, 90])
    func deferringToTheTopHeapEqualsWritingEveryWindow(windows: Int) throws {
        let parameters = SelectionParameters(windowLength: 5, explainTop: 10, explainQuantile: 10, heldoutTop: 5, heldoutQuantile: 5,
                                             heldoutRandom: 5, minActivatingWindows: 1, seed: 17)
        let deferring = FeatureAccumulators(features: [4, 8], parameters: parameters)
        let writing = FeatureAccumulators(features: [4, 8], parameters: parameters, defersToTop: false)
        #expect(deferring.defersToTop && !writing.defersToTop)
        var random = TestRandom(UInt64(18 + windows))
        for order in 0..<windows {
            // Peaks over several powers of two, so the histogram's range grows while the window-by-window pass runs.
            let scale = Float(1 << random.int(12)) / 64
            let values = (0..<5).map { _ in random.int(3) == 0 ? 0 : random.uniform() * scale + 1e-3 }
            for accumulators in [deferring, writing] {
                accumulators.observeActive(1, values: values, length: 5, peak: values.max()!, sequence: order / 3, start: order % 3 * 5,
                                           order: Int64(order))
            }
        }
        let expected = try #require(writing.histogramCounts(1))
        let deferred = try #require(deferring.histogramCounts(1))
        #expect(deferred.range == expected.range && deferred.counts == expected.counts)
        #expect(expected.counts.reduce(0, +) == UInt32(writing.activeTokens[1]) && writing.activeTokens[1] > 0)
        let (deferredSlots, deferredReservoir) = deferring.reservoirWindows(1), (writtenSlots, writtenReservoir) = writing.reservoirWindows(1)
        #expect(deferredReservoir.count == min(windows, 60) && deferredReservoir.map(\.order) == writtenReservoir.map(\.order))
        #expect(deferredReservoir.map { deferredSlots.values(1, $0.index) } == writtenReservoir.map { writtenSlots.values(1, $0.index) })
        #expect((0..<deferring.topCount[1]).map { deferring.top.kept(1, $0) } == (0..<writing.topCount[1]).map { writing.top.kept(1, $0) })
        #expect(deferring.sums[1] == writing.sums[1] && deferring.maxima[1] == writing.maxima[1])
        #expect(deferring.reservoir.reservedSlots(1) == (windows <= 15 ? 0 : WindowSlots.reservation(for: min(windows, 60), capacity: 60)))
        #expect(deferring.histogramCounts(0) == nil, "slot 0 never fired")
    }

    /// Everything a block's state would give the store for `slot`: statistics, histogram, top windows (heap order,
    /// with values), reservoir windows (with values) and held-out random windows.
    static func snapshot(_ accumulators: FeatureAccumulators, _ slot: Int) -> String {
        func bits(_ values: [Float]) -> String { values.map { String($0.bitPattern, radix: 16) }.joined(separator: ",") }
        var lines = ["\(accumulators.activeTokens[slot]) \(accumulators.sums[slot]) \(accumulators.maxima[slot]) \(accumulators.activeWindows[slot])",
                     String(describing: accumulators.histogramCounts(slot))]
        for record in accumulators.topHeapOrder(slot) {
            lines.append("top \(accumulators.top.kept(slot, record)) [\(bits(accumulators.top.values(slot, record)))]")
        }
        let (reservoirSlots, reservoirWindows) = accumulators.reservoirWindows(slot)
        for window in reservoirWindows { lines.append("reservoir \(window) [\(bits(reservoirSlots.values(slot, window.index)))]") }
        let (_, randomWindows) = accumulators.randomWindows(slot)
        for window in randomWindows { lines.append("random \(window)") }
        return lines.joined(separator: "\n")
    }

    /// A block streamed into the state memory of a finished block (arenas rewound, so its window records and
    /// histograms are cut from chunks that still hold the earlier block's bytes) keeps exactly what the same
    /// block keeps on fresh memory, and after a block of the same shape the memory has not grown.
    @Test func aBlockOnReusedStateMemoryKeepsWhatAFreshBlockKeeps() {
        let parameters = SelectionParameters(windowLength: 4, explainTop: 3, explainQuantile: 3, heldoutTop: 2, heldoutQuantile: 2,
                                             heldoutRandom: 3, minActivatingWindows: 1, seed: 41)
        let geometry = WindowGeometry(window: 4, parts: [(sequences: 40, context: 14)])
        var random = TestRandom(42)
        // Per slot, the windows it fires in (a few, or far more than its top heap holds) and each window's values.
        func block(features: [Int]) -> (FeatureAccumulators?) -> FeatureAccumulators {
            let fires = features.indices.map { slot in
                (0..<geometry.totalWindows).filter { _ in random.int(slot % 3 == 0 ? 12 : 2) == 0 }
            }
            // Token 1 always fires (every window, even the 2-token last one of a sequence, has a peak above 0).
            let values = fires.map { orders in
                orders.map { _ in (0..<4).map { token in token != 1 && random.int(3) == 0 ? 0 : random.uniform() * 8 + 1e-3 } }
            }
            return { earlier in
                let accumulators = FeatureAccumulators(features: features, parameters: parameters, reusing: earlier?.memory)
                for order in 0..<geometry.totalWindows {
                    for slot in features.indices {
                        guard let index = fires[slot].firstIndex(of: order) else { continue }
                        let window = geometry.place(order)
                        let windowValues = values[slot][index]
                        accumulators.catchUp(slot, to: order, geometry: geometry)
                        accumulators.observeActive(slot, values: windowValues, length: window.length,
                                                   peak: windowValues.prefix(window.length).max()!,
                                                   sequence: window.sequence, start: window.start, order: order)
                    }
                }
                accumulators.completeInactive(slots: features.indices, geometry: geometry)
                return accumulators
            }
        }
        let first = block(features: Array(0..<9))(nil)
        let held = first.memory.heldBytes
        let second = block(features: Array(9..<18))
        let fresh = second(nil)
        let reused = second(first)
        #expect(reused.memory === first.memory && fresh.memory !== first.memory)
        #expect(reused.memory.heldBytes == held, "the second block's records fit in the first block's chunks")
        for slot in 0..<9 {
            #expect(Self.snapshot(reused, slot) == Self.snapshot(fresh, slot), "slot \(slot)")
            #expect(reused.activeWindows[slot] > 0)
        }
        #expect((0..<9).contains { reused.activeWindows[$0] > parameters.topCapacity + 4 }, "some slot settles and keeps a reservoir")
    }

    /// Feeds `fires` (window orders per slot, ascending) as the dense pass does (`catchUp` before each firing
    /// window, `completeInactive`) or as the latent reader does (each latent's windows, then `finishInactive`).
    static func fed(_ fires: [[Int64]], parameters: SelectionParameters, geometry: WindowGeometry, dense: Bool) -> FeatureAccumulators {
        let accumulators = FeatureAccumulators(features: fires.indices.map { 3 * $0 + 1 }, parameters: parameters)
        let values: [Float] = [0.5, 0, 1.25, 0.75]
        func observe(_ slot: Int, _ order: Int64) {
            let window = geometry.place(order)
            accumulators.observeActive(slot, values: values, length: window.length, peak: values.prefix(window.length).max()!,
                                       sequence: window.sequence, start: window.start, order: order)
        }
        if dense {
            for order in 0..<geometry.totalWindows {
                for slot in fires.indices where fires[slot].contains(order) {
                    accumulators.catchUp(slot, to: order, geometry: geometry)
                    observe(slot, order)
                }
            }
            accumulators.completeInactive(slots: fires.indices, geometry: geometry)
        } else {
            for slot in fires.indices {
                for order in fires[slot] { observe(slot, order) }
                fires[slot].withUnsafeBufferPointer { accumulators.finishInactive(slot, firingOrders: $0, geometry: geometry) }
            }
            accumulators.completeInactive(slots: fires.indices, geometry: geometry)
        }
        return accumulators
    }

    /// The dense pass and the latent reader keep the same held-out random windows (and the same reservoirs):
    /// drawn against the firing windows when the candidates hold enough non-activating ones, from the random
    /// reservoir when they do not, and all of them when a feature misses fewer windows than it keeps.
    @Test func heldoutRandomWindowsAreTheSameFromTheDenseAndLatentPaths() {
        let parameters = SelectionParameters(windowLength: 4, explainTop: 2, explainQuantile: 2, heldoutTop: 1, heldoutQuantile: 1,
                                             heldoutRandom: 5, minActivatingWindows: 1, seed: 21)
        let geometry = WindowGeometry(window: 4, parts: [(sequences: 30, context: 14), (sequences: 20, context: 8)])
        var random = TestRandom(22)
        let all = Array(0..<geometry.totalWindows)
        let fires: [[Int64]] = [
            all.filter { _ in random.int(40) == 0 },  // rare: drawn
            all.filter { _ in random.int(3) == 0 },
            all.filter { _ in random.int(100) < 97 },  // fires nearly everywhere: the candidates hold too few misses
            all.filter { ![7, 80, 159].contains($0) },  // misses 3 windows, fewer than the 5 it keeps
            [0], [geometry.totalWindows - 1], [],
        ]
        let dense = Self.fed(fires, parameters: parameters, geometry: geometry, dense: true)
        let latent = Self.fed(fires, parameters: parameters, geometry: geometry, dense: false)
        for slot in fires.indices {
            let windows = latent.randomWindows(slot).windows
            #expect(windows == dense.randomWindows(slot).windows, "slot \(slot)")
            #expect(latent.randomWindowsWereDrawn(slot) == dense.randomWindowsWereDrawn(slot))
            #expect(latent.reservoirWindows(slot).windows == dense.reservoirWindows(slot).windows)
            #expect(latent.observedWindows(slot) == dense.observedWindows(slot))
            #expect(windows.allSatisfy { !fires[slot].contains($0.order) && $0.maximum == 0 }, "only non-activating windows")
            #expect(Set(windows.map(\.order)).count == windows.count)
            let missed = Int(geometry.totalWindows) - fires[slot].count
            #expect(windows.count == (fires[slot].isEmpty ? 0 : min(5, missed)), "slot \(slot)")
            for window in windows {
                #expect(geometry.place(window.order) == (sequence: window.sequence, start: window.start, length: window.length))
            }
        }
        #expect(latent.randomWindowsWereDrawn(0) && latent.randomWindowsWereDrawn(1) && latent.randomWindowsWereDrawn(4))
        #expect(!latent.randomWindowsWereDrawn(2) && !latent.randomWindowsWereDrawn(3), "left to the reservoir")
        #expect(latent.randomWindows(3).windows.map(\.order) == [7, 80, 159])
        #expect(!latent.hasState(6) && !dense.hasState(6), "a feature that never fires is never touched")
        #expect(latent.random.reservedSlots(0) == 0 && dense.random.reservedSlots(0) == 5,
                "a latent whose windows are drawn never runs the reservoir")
    }

    /// The held-out random windows are a uniform sample of a feature's non-activating windows, whether the draw
    /// finds them or the reservoir does (a feature missing 6 of 24 windows needs both): over 1,500 seeds every
    /// non-activating window is kept about 5/6 or 5/16 of the time, a firing one never.
    @Test(arguments: [8, 18])
    func heldoutRandomWindowsAreUniform(firing: Int) {
        let geometry = WindowGeometry(window: 4, parts: [(sequences: 6, context: 16)])
        let fires = (0..<Int64(firing)).map { $0 * 24 / Int64(firing) }
        let missed = 24 - firing
        var kept = [Int](repeating: 0, count: 24)
        var drawn = 0
        let runs = 1500
        for seed in 0..<runs {
            let parameters = SelectionParameters(windowLength: 4, explainTop: 1, explainQuantile: 0, heldoutTop: 0, heldoutQuantile: 0,
                                                 heldoutRandom: 5, minActivatingWindows: 1, seed: UInt64(seed))
            let accumulators = Self.fed([fires], parameters: parameters, geometry: geometry, dense: false)
            for window in accumulators.randomWindows(0).windows { kept[Int(window.order)] += 1 }
            if accumulators.randomWindowsWereDrawn(0) { drawn += 1 }
        }
        let expected = Double(runs * 5) / Double(missed)
        for order in 0..<24 {
            if fires.contains(Int64(order)) {
                #expect(kept[order] == 0)
            } else {
                // Binomial spread: ±5 standard deviations.
                let spread = 5 * (expected * (1 - expected / Double(runs))).squareRoot()
                #expect(abs(Double(kept[order]) - expected) < spread, "window \(order): \(kept[order]) of \(runs), expected \(expected)")
            }
        }
        if firing == 18 { #expect(drawn > 100 && drawn < runs - 100, "both the draw and the reservoir chose: \(drawn)") }
    }
}

/// A delphi latent cache of `width` latents in files of `span` over `sequences × context` tokens (token 0, BOS, at
/// each sequence's start), in a new directory with the fixture tokenizer. `entries(first, sequence, position, &random)`
/// gives the (latent offset in the file, value) pairs of the file starting at latent `first` at that token.
func writeLatentFixture(seed: UInt64, sequences: Int, context: Int, width: Int, span: Int,
                        entries: (Int, Int, Int, inout TestRandom) -> [(Int, Float)]) throws -> (directory: String, cache: String, tokenizer: String) {
    let directory = temporaryDirectory()
    let tokenizer = (directory as NSString).appendingPathComponent("tokenizer.json")
    try writeTokenizer(tokenizer)
    let cache = (directory as NSString).appendingPathComponent("latents/blocks.1")
    try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
    var random = TestRandom(seed)
    let tokens = (0..<(sequences * context)).map { $0 % context == 0 ? 0 : 1 + random.int(fixtureVocabulary.count - 1) }
    for first in stride(from: 0, to: width, by: span) {
        var locations: [Int] = [], values: [Float] = []
        for sequence in 0..<sequences {
            for position in 0..<context {
                for (latent, value) in entries(first, sequence, position, &random) {
                    locations += [sequence, position, latent]
                    values.append(value)
                }
            }
        }
        try writeSafetensors((cache as NSString).appendingPathComponent("\(first)_\(first + span - 1).safetensors"), [
            .integers("locations", locations, shape: [values.count, 3]), .floats("activations", values, shape: [values.count]),
            .integers("tokens", tokens, shape: [sequences, context]),
        ])
    }
    return (directory, cache, tokenizer)
}

private extension Range where Bound == Int {
    func shifted(by offset: Int) -> Range<Int> { (lowerBound + offset)..<(upperBound + offset) }
}
