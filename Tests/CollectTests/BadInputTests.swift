import Foundation
import Testing
@testable import SAELabelCollect
import SAELabelCore
import SAELabelStore

@Suite struct BadInputTests {
    func fixture() throws -> (directory: String, options: CollectOptions, sae: TestSAE, corpus: TestCorpus) {
        let sae = TestSAE.random(dIn: 8, dSAE: 6, architecture: "standard", seed: 1, dtype: "F32")
        let corpus = TestCorpus.random(nSeq: 4, ctx: 16, dIn: 8, seed: 1, dtype: "F32")
        let (directory, options) = try makeFixture(sae: sae, corpus: corpus)
        return (directory, options, sae, corpus)
    }

    /// Runs plan + run; expects a badInput whose location names `file` (and whose text contains `mentions`),
    /// and a store with no feature rows.
    func expectBadInput(_ options: CollectOptions, directory: String, file: String, mentions: [String] = []) throws {
        let store = try temporaryStore(in: directory)
        do {
            let plan = try Collector.plan(options)
            _ = try Collector.run(options, plan: plan, store: store)
            Issue.record("expected a badInput error naming \(file)")
        } catch {
            guard case .badInput(let location, let problem) = error else {
                Issue.record("expected badInput, got \(error)")
                return
            }
            #expect(location.contains(file), "\(location): \(problem)")
            for word in mentions { #expect("\(location): \(problem)".contains(word), "\(location): \(problem)") }
        }
        #expect(try featureRowCount(store) == 0)
    }

    @Test func truncatedFile() throws {
        let (directory, options, _, _) = try fixture()
        let path = options.activationFiles[0]
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        try expectBadInput(options, directory: directory, file: path, mentions: ["outside the data section"])
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: path))
        try expectBadInput(options, directory: directory, file: path, mentions: ["truncated"])
    }

    @Test func headerLengthBeyondFile() throws {
        let (directory, options, _, _) = try fixture()
        let path = options.activationFiles[0]
        var data = Data()
        withUnsafeBytes(of: UInt64(1 << 20).littleEndian) { data.append(contentsOf: $0) }
        data.append(contentsOf: Array("{}".utf8))
        try data.write(to: URL(fileURLWithPath: path))
        try expectBadInput(options, directory: directory, file: path, mentions: ["header length"])
    }

    @Test func offsetsOutsideDataAndOverlaps() throws {
        let (directory, options, _, _) = try fixture()
        let path = options.activationFiles[0]
        let tokens = TestTensor.integers("tokens", [Int](repeating: 1, count: 64), shape: [4, 16])
        try writeSafetensors(path, [tokens], headerOverride: "{\"tokens\":{\"dtype\":\"I32\",\"shape\":[4,16],\"data_offsets\":[0,4096]}}")
        try expectBadInput(options, directory: directory, file: path, mentions: ["tensor tokens", "outside the data section"])
        try writeSafetensors(path, [tokens], headerOverride: "{\"tokens\":{\"dtype\":\"I32\",\"shape\":[4,16],\"data_offsets\":[0,200]}}")
        try expectBadInput(options, directory: directory, file: path, mentions: ["tensor tokens", "needs 256"])
        try writeSafetensors(path, [tokens, tokens], headerOverride: "{\"tokens\":{\"dtype\":\"I32\",\"shape\":[4,16],\"data_offsets\":[0,256]},\"activations\":{\"dtype\":\"F32\",\"shape\":[4,16,1],\"data_offsets\":[128,384]}}")
        try expectBadInput(options, directory: directory, file: path, mentions: ["overlaps"])
        try writeSafetensors(path, [tokens], headerOverride: "{not json")
        try expectBadInput(options, directory: directory, file: path, mentions: ["JSON"])
    }

    @Test func dInMismatch() throws {
        let (directory, options, _, _) = try fixture()
        let corpus = TestCorpus.random(nSeq: 4, ctx: 16, dIn: 7, seed: 1, dtype: "F32")
        try corpus.write(options.activationFiles[0])
        try expectBadInput(options, directory: directory, file: options.activationFiles[0], mentions: ["d_in 7", "d_in 8"])
    }

    @Test func tokensActivationsShapeMismatch() throws {
        let (directory, options, _, corpus) = try fixture()
        try writeSafetensors(options.activationFiles[0], [
            .integers("tokens", Array(corpus.tokens.prefix(3 * 16)), shape: [3, 16]),
            .floats("activations", corpus.activations, shape: [4, 16, 8]),
        ])
        try expectBadInput(options, directory: directory, file: options.activationFiles[0], mentions: ["[4, 16, 8]", "[3, 16]"])
    }

    @Test func nanActivationNamesSequenceAndPosition() throws {
        let (directory, options, _, _) = try fixture()
        var corpus = TestCorpus.random(nSeq: 4, ctx: 16, dIn: 8, seed: 1, dtype: "F32")
        corpus.activations[(2 * 16 + 7) * 8 + 3] = .nan
        try corpus.write(options.activationFiles[0])
        try expectBadInput(options, directory: directory, file: options.activationFiles[0], mentions: ["sequence 2", "position 7"])
    }

    /// Two bad rows in the second batch: the first in corpus order is reported, with one thread and with two,
    /// where the reader prepares that batch while the workers still encode the first.
    @Test(arguments: [1, 2])
    func firstOfTwoNonFiniteRowsIsReportedWithPartsPreparedByThreads(threads: Int) throws {
        var (directory, options, _, _) = try fixture()
        options.batchTokens = 32  // two 16-token sequences a batch: sequences 2 and 3 are the second batch's two parts
        options.blasThreads = threads
        var corpus = TestCorpus.random(nSeq: 4, ctx: 16, dIn: 8, seed: 1, dtype: "F32")
        corpus.activations[(2 * 16 + 7) * 8 + 3] = .nan
        corpus.activations[(3 * 16 + 2) * 8 + 1] = .infinity
        try corpus.write(options.activationFiles[0])
        try expectBadInput(options, directory: directory, file: options.activationFiles[0], mentions: ["sequence 2", "position 7", "dimension 3"])
    }

    @Test func unknownArchitecture() throws {
        let (directory, options, sae, _) = try fixture()
        try sae.write(to: options.saeDirectory!, cfg: ["d_in": 8, "d_sae": 6, "architecture": "matryoshka-gated"])
        try expectBadInput(options, directory: directory, file: "cfg.json", mentions: ["architecture", "matryoshka-gated"])
        try sae.write(to: options.saeDirectory!, cfg: ["d_in": 8, "d_sae": 6, "normalize_activations": "expected_average_only_in"])
        try expectBadInput(options, directory: directory, file: "cfg.json", mentions: ["normalize_activations"])
    }

    @Test func wrongWeightShape() throws {
        let (directory, options, sae, _) = try fixture()
        try sae.write(to: options.saeDirectory!, cfg: ["d_in": 8, "d_sae": 7])
        try expectBadInput(options, directory: directory, file: "sae_weights.safetensors", mentions: ["W_enc"])
    }

    @Test func tokenIDMissingFromTokenizer() throws {
        let (directory, options, _, corpus) = try fixture()
        var tokens = corpus.tokens
        tokens[20] = 777
        try writeSafetensors(options.activationFiles[0], [
            .integers("tokens", tokens, shape: [4, 16]), .floats("activations", corpus.activations, shape: [4, 16, 8]),
        ])
        try expectBadInput(options, directory: directory, file: options.activationFiles[0], mentions: ["777", "tokenizer.json"])
    }
}
