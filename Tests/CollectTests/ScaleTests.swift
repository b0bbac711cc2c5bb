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
        options.windowLength = 8
        options.batchTokens = batchTokens
        options.minActivatingWindows = 1
        options.encodeChunkRows = chunkRows
        return (directory, options)
    }

    func collectIntoStore(_ options: CollectOptions, directory: String, name: String) throws -> JobStore {
        let store = try JobStore(path: (directory as NSString).appendingPathComponent(name))
        _ = try Collector.run(options, plan: try Collector.plan(options), store: store)
        return store
    }

    /// One and two threads (chunks of 5 features, so both threads take several) store the same bytes, for a
    /// per-row activation and for inline TopK (all rows first, k-th value per token split over threads).
    @Test(arguments: ["jumprelu", "topk"])
    func oneAndTwoThreadsStoreIdenticalExamplesAndStatistics(architecture: String) throws {
        let sae = TestSAE.random(dIn: 16, dSAE: 48, architecture: architecture, seed: 21, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 24, ctx: 40, dIn: 16, seed: 22, dtype: "F32")
        var (directory, options) = try smallWindowFixture(sae: sae, corpus: corpus, batchTokens: 64, chunkRows: 5)
        options.blasThreads = 1
        let single = try collectIntoStore(options, directory: directory, name: "one.sqlite")
        options.blasThreads = 2
        let double = try collectIntoStore(options, directory: directory, name: "two.sqlite")
        let expected = try storedContents(single, features: 48)
        #expect(expected.count > 48 * 5, "the fixture must store examples")
        #expect(try storedContents(double, features: 48) == expected)
    }

    /// A TopK SAE collected in blocks of a few features (each block multiplying only its own rows, the k-th value
    /// per token coming from the extra thresholds pass) matches the plain-loop reference like a single block does.
    @Test func topKInBlocksMatchesTheReference() throws {
        let sae = TestSAE.random(dIn: 12, dSAE: 30, architecture: "topk", seed: 31, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 10, ctx: 24, dIn: 12, seed: 32, dtype: "F32")
        var (directory, options) = try smallWindowFixture(sae: sae, corpus: corpus, batchTokens: 48, chunkRows: 7)
        options.memoryBudgetMiB = Double(Collector.bytesPerFeature(options, dIn: 12) * 8) / 1_048_576  // 6 features a block
        let plan = try Collector.plan(options)
        #expect(Collector.blocks(of: plan.features, options: options, plan: plan).count == 5)
        let store = try collectIntoStore(options, directory: directory, name: "blocks.sqlite")
        let reference = referenceActivations(sae: sae, corpus: corpus) { _, position in position == 0 }
        var firing = 0
        for feature in 0..<30 {
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
        #expect(firing > 10 * 23, "about a third of the features fire on each token")
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
        for slot in 0..<10 {
            #expect(runs.random.order[slot] == stepwise.random.order[slot])
            #expect(runs.random.sequence[slot] == stepwise.random.sequence[slot] && runs.random.start[slot] == stepwise.random.start[slot])
        }
        #expect(runs.randomState[0].seen == 4273 && stepwise.randomState[1].seen == 4273)
        #expect(Set((0..<5).map { runs.random.order[$0] }).count == 5, "five distinct windows kept")
    }
}
