import Foundation
import Testing
@testable import SAELabelCollect
import SAELabelCore
import SAELabelStore

/// Writes an SAE + corpus + tokenizer and returns options pointing at them.
func makeFixture(sae: TestSAE, corpus: TestCorpus, saeDType: String = "F32", activationDType: String = "F32",
                 shards: Int = 1) throws -> (directory: String, options: CollectOptions) {
    let directory = temporaryDirectory()
    let saeDirectory = (directory as NSString).appendingPathComponent("my-sae")
    try sae.write(to: saeDirectory, dtype: saeDType)
    var files: [String] = []
    for shard in 0..<shards {
        let lower = shard * corpus.nSeq / shards, upper = (shard + 1) * corpus.nSeq / shards
        let path = (directory as NSString).appendingPathComponent("acts-\(shard).safetensors")
        try corpus.write(path, dtype: activationDType, sequences: lower..<upper)
        files.append(path)
    }
    let tokenizer = (directory as NSString).appendingPathComponent("tokenizer.json")
    try writeTokenizer(tokenizer)
    return (directory, CollectOptions(saeDirectory: saeDirectory, activationFiles: files, tokenizerPath: tokenizer))
}

func collectRecords(_ options: CollectOptions) throws -> [CollectedFeature] {
    let plan = try Collector.plan(options)
    return try Collector.collect(options, plan: plan, progress: { _, _ in }).0
}

/// Window order of the reference ranking: larger max first, then earlier (sequence, start).
func ranksBefore(_ a: ActivationWindow, _ b: ActivationWindow) -> Bool {
    if a.maxActivation != b.maxActivation { return a.maxActivation > b.maxActivation }
    return a.sequence != b.sequence ? a.sequence < b.sequence : a.start < b.start
}

func key(_ window: ActivationWindow) -> String { "\(window.sequence):\(window.start)" }

@Suite struct DecoderTests {
    @Test func byteLevelDecoding() throws {
        let directory = temporaryDirectory()
        let path = (directory as NSString).appendingPathComponent("tokenizer.json")
        try writeTokenizer(path)
        let decoder = try TokenDecoder(path: path)
        #expect(decoder.specialTokenIDs == [0])
        #expect(decoder.decodeWindow([1, 2, 4]) == [" the", " cat", "\n"])
        #expect(decoder.decodeWindow([0, 9]) == ["<|endoftext|>", "hello"])
        // "é" = C3 A9 split across two tokens: the character appears on the token that completes it.
        #expect(decoder.decodeWindow([9, 5, 6, 10]) == ["hello", "", "é", " world"])
        // 😀 = F0 9F 98 | 80.
        #expect(decoder.decodeWindow([7, 8]) == ["", "😀"])
        // A window starting mid-character or ending mid-character never yields invalid strings.
        #expect(decoder.decodeWindow([6, 9]) == ["\u{FFFD}", "hello"])
        #expect(decoder.decodeWindow([9, 5]) == ["hello", "\u{FFFD}"])
        #expect(!decoder.contains(99))
    }
}

@Suite struct EncodeTests {
    static let cases: [(String, String, String)] = [
        ("standard", "F32", "F32"), ("standard", "F16", "BF16"), ("standard", "BF16", "F16"),
        ("jumprelu", "F32", "F16"), ("jumprelu", "BF16", "F32"), ("topk", "F32", "F32"), ("topk", "F16", "BF16"),
    ]

    /// Each architecture and dtype against a plain-loop reference: statistics and top windows.
    @Test(arguments: cases)
    func matchesReference(architecture: String, activationDType: String, saeDType: String) throws {
        let sae = TestSAE.random(dIn: 16, dSAE: 24, architecture: architecture, seed: 7, dtype: saeDType)
        let corpus = TestCorpus.random(nSeq: 12, ctx: 20, dIn: 16, seed: 11, dtype: activationDType)
        var (_, options) = try makeFixture(sae: sae, corpus: corpus, saeDType: saeDType, activationDType: activationDType)
        options.windowSelection.windowLength = 8  // 20 = 8 + 8 + 4: a partial last window
        options.batchTokens = 40
        options.windowSelection.explainTop = 3; options.windowSelection.heldoutTop = 2
        options.windowSelection.minActivatingWindows = 1
        let records = try collectRecords(options)
        let reference = referenceActivations(sae: sae, corpus: corpus) { _, position in position == 0 }  // BOS excluded
        #expect(records.count == 24)
        for record in records {
            let values = reference[record.index]
            let firing = values.filter { $0 > 0 }
            #expect(record.statistics.activatingTokens == firing.count, "feature \(record.index)")
            #expect(abs(record.statistics.maxActivation - (firing.max() ?? 0)) <= 1e-4 * max(1, firing.max() ?? 0))
            #expect(abs(record.statistics.frequency - Double(firing.count) / Double(12 * 19)) < 1e-12)
            #expect(record.statistics.histogram.reduce(0, +) == firing.count)
            if firing.isEmpty {
                #expect(record.state == .dead)
                continue
            }
            let ranked = referenceWindows(values, nSeq: 12, ctx: 20, window: 8).filter { $0.peak > 0 }
            #expect(record.statistics.activatingWindows == ranked.count)
            let tops = (record.explain + record.heldout).filter { $0.kind == .top }
                .sorted { $0.maxActivation > $1.maxActivation }
            let expected = ranked.prefix(5)
            #expect(tops.map { [$0.sequence, $0.start] } == expected.map { [$0.sequence, $0.start] }, "feature \(record.index)")
            for window in record.explain + record.heldout {
                let base = window.sequence * 20 + window.start
                #expect(window.activations.count == min(8, 20 - window.start))
                #expect(window.tokens.count == window.activations.count)
                for (offset, value) in window.activations.enumerated() {
                    #expect(abs(value - values[base + offset]) <= 2e-3 * max(1, abs(values[base + offset])))
                }
            }
        }
    }
}

@Suite struct SelectionTests {
    func bigFixture(seed: UInt64) throws -> CollectOptions {
        let sae = TestSAE.random(dIn: 8, dSAE: 6, architecture: "standard", seed: 3, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 40, ctx: 64, dIn: 8, seed: 5, dtype: "F32")
        var options = try makeFixture(sae: sae, corpus: corpus).options
        options.windowSelection.windowLength = 8
        options.windowSelection.seed = seed
        return options
    }

    @Test func explainAndHeldoutAreDisjointAndSeeded() throws {
        let options = try bigFixture(seed: 1)
        let first = try collectRecords(options)
        let again = try collectRecords(options)
        #expect(first == again)
        var other = options
        other.windowSelection.seed = 2
        let different = try collectRecords(other)
        var changed = 0
        for (a, b) in zip(first, different) {
            let explainKeys = Set(a.explain.map(key)), heldoutKeys = Set(a.heldout.map(key))
            #expect(explainKeys.isDisjoint(with: heldoutKeys), "feature \(a.index)")
            #expect(explainKeys.count == a.explain.count && heldoutKeys.count == a.heldout.count)
            #expect(Set(b.explain.map(key)).isDisjoint(with: Set(b.heldout.map(key))))
            guard a.state == .collected else { continue }
            #expect(a.explain.filter { $0.kind == .top }.count == 10)
            #expect(a.explain.filter { $0.kind == .quantile }.count == 10)
            #expect(a.heldout.map(\.kind) == [ExampleKind](repeating: .top, count: 5) + [ExampleKind](repeating: .quantile, count: 5)
                        + [ExampleKind](repeating: .random, count: 5))
            #expect(a.heldout.filter { $0.kind == .random }.allSatisfy { $0.maxActivation == 0 })
            // Tops do not depend on the seed; quantile and random picks do.
            #expect(a.explain.filter { $0.kind == .top } == b.explain.filter { $0.kind == .top })
            if a.explain.filter({ $0.kind != .top }) != b.explain.filter({ $0.kind != .top })
                || a.heldout.filter({ $0.kind != .top }) != b.heldout.filter({ $0.kind != .top }) { changed += 1 }
        }
        #expect(changed > 0)
    }

    @Test func batchSizeDoesNotChangeTheSelection() throws {
        var options = try bigFixture(seed: 9)
        let reference = try collectRecords(options)
        options.batchTokens = 24
        #expect(try collectRecords(options) == reference)
    }

    /// A designed SAE: feature f reads input dimension f. Feature 0 fires everywhere, 1 on three tokens, 2 never.
    @Test func deadSparseAndExclusions() throws {
        let dIn = 4, dSAE = 3, nSeq = 6, ctx = 16
        var wEnc = [Float](repeating: 0, count: dIn * dSAE)
        for f in 0..<dSAE { wEnc[f * dSAE + f] = 1 }
        let sae = TestSAE(dIn: dIn, dSAE: dSAE, wEnc: wEnc, bEnc: [0, 0, 0], bDec: [0, 0, 0, 0], threshold: [], architecture: "standard")
        var corpus = TestCorpus.random(nSeq: nSeq, ctx: ctx, dIn: dIn, seed: 1, dtype: "F32")
        for s in 0..<nSeq {
            for p in 0..<ctx {
                let base = (s * ctx + p) * dIn
                corpus.activations[base] = 1 + Float(p) / 100
                corpus.activations[base + 1] = (s == 2 && (p == 4 || p == 5 || p == 9)) ? 2 : -1
                corpus.activations[base + 2] = -1
                corpus.activations[base + 3] = 0
            }
            corpus.activations[(s * ctx) * dIn] = 50  // the BOS token: an attention sink
        }
        corpus.activations[(1 * ctx + 5) * dIn + 3] = 100  // one huge-norm token
        var (directory, options) = try makeFixture(sae: sae, corpus: corpus)
        options.windowSelection.windowLength = 4
        options.windowSelection.minActivatingWindows = 3
        let store = try temporaryStore(in: directory)
        let plan = try Collector.plan(options)
        let summary = try Collector.run(options, plan: plan, store: store)
        #expect(summary.excludedTokens == nSeq)
        #expect(summary.tokens == nSeq * ctx - nSeq)
        #expect(summary.dead == 1 && summary.sparse == 1 && summary.collected == 1)
        #expect(try store.setting(JobSettingKey.tokensExcluded) == "\(nSeq)")
        #expect(try store.setting(JobSettingKey.tokensCounted) == "\(nSeq * ctx - nSeq)")
        #expect(try store.setting(JobSettingKey.featureCount) == "3")
        #expect(try store.setting(JobSettingKey.hookName) == "blocks.1.hook_resid_post")
        #expect(try store.setting(JobSettingKey.saeName) == "my-sae")
        let always = try #require(try store.feature(0))
        #expect(always.state == .collected)
        #expect(always.statistics?.maxActivation == 1.15)  // the BOS value 50 is excluded
        let sparse = try #require(try store.feature(1))
        #expect(sparse.state == .sparse)
        #expect(sparse.statistics?.activatingWindows == 2 && sparse.statistics?.activatingTokens == 3)
        #expect(try store.examples(feature: 1).count > 0)
        #expect(try store.feature(2)?.state == .dead)
        #expect(try store.examples(feature: 2).isEmpty)

        // Norm and position exclusion.
        options.excludeNormAbove = 60
        options.excludePositions = [1]
        let records = try Collector.collect(options, plan: plan, progress: { _, _ in })
        #expect(records.2 == nSeq + nSeq + 1)
        #expect(records.0[0].statistics.activatingTokens == nSeq * ctx - 2 * nSeq - 1)

        options.excludeSpecialTokens = false
        options.excludeNormAbove = nil
        options.excludePositions = []
        let unfiltered = try Collector.collect(options, plan: plan, progress: { _, _ in })
        #expect(unfiltered.2 == 0)
        #expect(unfiltered.0[0].statistics.maxActivation == 50)
    }
}

@Suite struct InputFormTests {
    @Test func flatConfigForm() throws {
        let sae = TestSAE.random(dIn: 8, dSAE: 5, architecture: "standard", seed: 2, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 4, ctx: 16, dIn: 8, seed: 2, dtype: "F32")
        let (directory, options) = try makeFixture(sae: sae, corpus: corpus)
        let flat: [String: Any] = ["d_in": 8, "d_sae": 5, "hook_point": "blocks.3.hook_resid_pre", "model_name": "gpt2",
                                   "apply_b_dec_to_input": true]
        try sae.write(to: options.saeDirectory!, cfg: flat)
        let plan = try Collector.plan(options)
        #expect(plan.hookName == "blocks.3.hook_resid_pre" && plan.modelName == "gpt2" && plan.featureCount == 5)
        #expect(plan.fingerprints.map(\.role).sorted() == ["activations.0", "sae_cfg", "sae_weights", "tokenizer"])
        let store = try temporaryStore(in: directory)
        _ = try Collector.run(options, plan: plan, store: store)
        #expect(try featureRowCount(store) == 5)
    }

    @Test func shardsNumberSequencesGlobally() throws {
        let sae = TestSAE.random(dIn: 8, dSAE: 6, architecture: "standard", seed: 4, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 9, ctx: 16, dIn: 8, seed: 4, dtype: "F32")
        var single = try makeFixture(sae: sae, corpus: corpus).options
        var sharded = try makeFixture(sae: sae, corpus: corpus, shards: 3).options
        single.windowSelection.windowLength = 4; sharded.windowSelection.windowLength = 4
        #expect(sharded.activationFiles.count == 3)
        let plan = try Collector.plan(sharded)
        #expect(plan.totalTokens == 9 * 16)
        #expect(try collectRecords(sharded) == collectRecords(single))
    }

    @Test func featureSelectionComputesOnlySelected() throws {
        let sae = TestSAE.random(dIn: 8, dSAE: 10, architecture: "standard", seed: 6, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 6, ctx: 16, dIn: 8, seed: 6, dtype: "F32")
        var options = try makeFixture(sae: sae, corpus: corpus).options
        let all = try collectRecords(options)
        options.selection = FeatureSelection(set: .range(2, 8), shard: .init(index: 1, count: 2))
        let some = try collectRecords(options)
        #expect(some.map(\.index) == [3, 5, 7])
        // Same windows and counts; the max may differ in the last bit (a GEMM of another shape rounds differently).
        for (part, whole) in zip(some, [all[3], all[5], all[7]]) {
            #expect(part.state == whole.state && part.statistics.activatingTokens == whole.statistics.activatingTokens)
            #expect(abs(part.statistics.maxActivation - whole.statistics.maxActivation) < 1e-5)
            #expect((part.explain + part.heldout).map(key) == (whole.explain + whole.heldout).map(key))
        }
    }

    /// A delphi latent cache built from a dense reference gives the same statistics and top windows.
    @Test func delphiLatentCache() throws {
        let sae = TestSAE.random(dIn: 8, dSAE: 12, architecture: "standard", seed: 8, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 10, ctx: 16, dIn: 8, seed: 8, dtype: "F32")
        let (directory, denseOptions) = try makeFixture(sae: sae, corpus: corpus)
        let reference = referenceActivations(sae: sae, corpus: corpus) { _, _ in false }
        let cache = (directory as NSString).appendingPathComponent("latents/blocks.2.hook_resid_post")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        for (first, last, dtype) in [(0, 5, "U16"), (6, 11, "U32")] {
            var locations: [Int] = [], values: [Float] = []
            for sequence in 0..<10 {
                for position in 0..<16 {
                    for latent in first...last where reference[latent][sequence * 16 + position] > 1e-5 {
                        locations += [sequence, position, latent - first]
                        values.append(reference[latent][sequence * 16 + position])
                    }
                }
            }
            try writeSafetensors((cache as NSString).appendingPathComponent("\(first)_\(last).safetensors"), [
                .integers("locations", locations, shape: [values.count, 3], dtype: dtype),
                .floats("activations", values, shape: [values.count], dtype: "F16"),
                .integers("tokens", corpus.tokens, shape: [10, 16]),
            ])
        }
        var options = CollectOptions(latentsDirectory: cache, tokenizerPath: denseOptions.tokenizerPath)
        options.windowSelection.windowLength = 4
        let plan = try Collector.plan(options)
        #expect(plan.featureCount == 12 && plan.hookName == "blocks.2.hook_resid_post")
        #expect(plan.fingerprints.map(\.role).sorted() == ["latents.0_5.safetensors", "latents.6_11.safetensors", "tokenizer"])
        let store = try temporaryStore(in: directory)
        let summary = try Collector.run(options, plan: plan, store: store)
        #expect(summary.excludedTokens == 10)  // BOS
        for feature in 0..<12 {
            let values: [Float] = (0..<160).map { (index: Int) -> Float in
                index % 16 == 0 ? 0 : Float(Float16(reference[feature][index]))
            }
            let record = try #require(try store.feature(feature))
            #expect(record.statistics?.activatingTokens == values.filter { $0 > 0 }.count)
            #expect(record.statistics?.maxActivation == values.max())
            guard record.state == .collected else { continue }
            let tops = try store.examples(feature: feature).map(\.window).filter { $0.kind == .top }.sorted(by: ranksBefore)
            let expected = referenceWindows(values, nSeq: 10, ctx: 16, window: 4).filter { $0.peak > 0 }.prefix(15)
            #expect(tops.map { [$0.sequence, $0.start] } == expected.map { [$0.sequence, $0.start] })
        }
        // Collecting the dense activations keeps the same held-out random windows (one sampling rule for both
        // paths) wherever both see the same firing windows (the cache leaves out values at or below 1e-5).
        var dense = denseOptions
        dense.windowSelection.windowLength = 4
        let denseStore = try JobStore(path: (directory as NSString).appendingPathComponent("dense.sqlite"))
        _ = try Collector.run(dense, plan: try Collector.plan(dense), store: denseStore)
        var compared = 0
        for feature in 0..<12 {
            let latentRecord = try #require(try store.feature(feature)), denseRecord = try #require(try denseStore.feature(feature))
            guard latentRecord.state == .collected, latentRecord.statistics?.activatingWindows == denseRecord.statistics?.activatingWindows
            else { continue }
            let randomWindows = { (store: JobStore) in
                try store.examples(feature: feature).map(\.window).filter { $0.kind == .random }.map { [$0.sequence, $0.start] }.sorted { $0.lexicographicallyPrecedes($1) }
            }
            let latentRandom = try randomWindows(store)
            let missed = 40 - (latentRecord.statistics?.activatingWindows ?? 0)
            let denseRandom = try randomWindows(denseStore)
            #expect(latentRandom.count == min(5, missed) && latentRandom == denseRandom, "feature \(feature)")
            compared += 1
        }
        #expect(compared >= 6, "most features fire in the same windows in both inputs")
    }
}
