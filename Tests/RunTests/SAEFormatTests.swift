import Foundation
import Testing
import TestSupport

/// `saelabel collect --sae` (the real binary) on each SAE format users download, against a numpy reference of that
/// format's own encode (Tools/sae_fixtures.py): max activation and frequency of every feature.
@Suite struct SAEFormatTests {
    /// Writes the fixtures (a few hundred KB) and returns their folder and the numpy reference.
    func fixtures() async throws -> (TempDirectory, [String: [String: [Double]]]) {
        let dir = TempDirectory()
        let made = try await runProcess("/usr/bin/env", ["python3", Repository.root.appendingPathComponent("Tools/sae_fixtures.py").path, dir.path])
        guard made.status == 0 else { throw TestFailure("sae_fixtures.py failed: \(made.stderr)") }
        let data = try Data(contentsOf: URL(fileURLWithPath: dir.file("reference.json")))
        let reference = try JSONSerialization.jsonObject(with: data) as? [String: [String: [Double]]] ?? [:]
        return (dir, reference)
    }

    func collect(_ dir: TempDirectory, sae: String, db: String, extra: [String] = []) async throws -> ProcessResult {
        try await runSAELabel(["collect", "--db", dir.file(db), "--sae", sae, "--activations", dir.file("activations.safetensors"),
                               "--tokenizer", dir.file("tokenizer.json")] + extra)
    }

    @Test(arguments: ["gemma-scope/layer_3/width_24/average_l0_5", "gemma-scope/layer_3/width_24/average_l0_5/params.npz",
                      "gemma-compressed", "gemma-fortran", "sparsify-run/layers.1", "sparsify-run/layers.4.mlp", "sparsify-groupmax",
                      "saelens-gated", "saelens-transcoder", "saelens-skip-transcoder", "saelens-batchtopk", "saelens-topk-layernorm", "saelens-constnorm-f16",
                      "saelens-expected-average"])
    func collectMatchesTheFormatsOwnEncode(sae: String) async throws {
        try await expectMatchesReference(sae: sae)
    }

    /// TopK and groupMax collected one feature per block (`--memory-mb 0.05`): each block multiplies only its own
    /// rows (groupMax: its group's), the k-th value per token coming from one extra pass over the corpus.
    @Test(arguments: ["sparsify-run/layers.1", "saelens-topk-layernorm", "sparsify-groupmax"])
    func topKAndGroupMaxInBlocksMatchTheFormatsOwnEncode(sae: String) async throws {
        try await expectMatchesReference(sae: sae, extra: ["--memory-mb", "0.05"])
    }

    func expectMatchesReference(sae: String, extra: [String] = []) async throws {
        let (dir, reference) = try await fixtures()
        let key = sae.hasSuffix("/params.npz") ? String(sae.dropLast("/params.npz".count)) : sae
        let expected = try #require(reference[key])
        let result = try await collect(dir, sae: dir.file(sae), db: "job.sqlite", extra: extra)
        #expect(result.status == 0, "\(result.stderr)")
        let exported = try await runSAELabel(["export", "--db", dir.file("job.sqlite"), "--format", "catalog", "--out", dir.file("catalog.jsonl")])
        #expect(exported.status == 0, "\(exported.stderr)")
        let catalog = try readCatalog(dir.file("catalog.jsonl")).sorted { ($0["feature"] as? Int ?? 0) < ($1["feature"] as? Int ?? 0) }
        let maxima = try #require(expected["max"]), frequencies = try #require(expected["frequency"])
        #expect(catalog.count == maxima.count)
        var differences: [String] = []
        for (feature, row) in catalog.enumerated() {
            let frequency = row["frequency"] as? Double ?? -1
            let maximum = row["max_activation"] as? Double ?? 0  // null for a feature that never fires
            // Frequencies count tokens: equal unless a value sits within float error of a threshold (none here).
            if abs(frequency - frequencies[feature]) > 1e-9 { differences.append("feature \(feature) frequency \(frequency) ≠ \(frequencies[feature])") }
            if abs(maximum - maxima[feature]) > 2e-3 * max(1, abs(maxima[feature])) {
                differences.append("feature \(feature) max \(maximum) ≠ \(maxima[feature])")
            }
        }
        #expect(differences.isEmpty, "\(sae): \(differences.prefix(5))")
        #expect(frequencies.contains { $0 > 0 }, "the fixture must make features fire")
    }

    /// One line on stderr naming the file and the problem, exit 2, and no store.
    func expectRefused(_ result: ProcessResult, dir: TempDirectory, db: String, mentions: [String]) {
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        for word in mentions { #expect(result.stderr.contains(word), "\(result.stderr) lacks \(word)") }
        #expect(!FileManager.default.fileExists(atPath: dir.file(db)), "nothing written")
    }

    @Test func badInputsOfEachFormatAreRefused() async throws {
        let (dir, _) = try await fixtures()
        let npz = dir.file("gemma-compressed/params.npz")
        // Truncated npz: the zip's central directory is gone.
        let whole = try Data(contentsOf: URL(fileURLWithPath: npz))
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: npz))
        expectRefused(try await collect(dir, sae: npz, db: "a.sqlite"), dir: dir, db: "a.sqlite", mentions: [npz, "truncated"])
        // Wrong key and shape mismatch: rewritten by numpy.
        let rewrite = """
        import numpy as np, sys
        src = dict(np.load(sys.argv[1]))
        wrong = dict(src); wrong["thresholds"] = wrong.pop("threshold")
        np.savez(sys.argv[2] + "/wrong-key.npz", **wrong)
        shape = dict(src); shape["b_enc"] = shape["b_enc"][:-1]
        np.savez(sys.argv[2] + "/shape.npz", **shape)
        """
        let script = try dir.write("rewrite.py", rewrite)
        let made = try await runProcess("/usr/bin/env", ["python3", script, dir.file("gemma-fortran/params.npz"), dir.path])
        #expect(made.status == 0, "\(made.stderr)")
        expectRefused(try await collect(dir, sae: dir.file("wrong-key.npz"), db: "b.sqlite"), dir: dir, db: "b.sqlite",
                      mentions: ["wrong-key.npz: threshold.npy", "missing", "thresholds"])
        expectRefused(try await collect(dir, sae: dir.file("shape.npz"), db: "c.sqlite"), dir: dir, db: "c.sqlite",
                      mentions: ["shape.npz: b_enc.npy", "[23]", "[24]"])
        // sparsify: a run folder with several hookpoints, and a wrong hookpoint name, say which exist.
        let run = dir.file("sparsify-run")
        expectRefused(try await collect(dir, sae: run, db: "d.sqlite"), dir: dir, db: "d.sqlite", mentions: ["layers.1", "layers.4.mlp"])
        expectRefused(try await collect(dir, sae: run + "/layers.2", db: "e.sqlite"), dir: dir, db: "e.sqlite",
                      mentions: ["layers.2", "layers.1, layers.4.mlp"])
        // The same through a job file's [inputs] sae.
        let job = try dir.write("job.toml", """
            [job]
            store = "job.sqlite"
            [inputs]
            sae = "sparsify-run/layers.2"
            activations = ["activations.safetensors"]
            tokenizer = "tokenizer.json"
            """)
        expectRefused(try await runSAELabel(["run", "--config", job, "--stage", "collect"]), dir: dir, db: "job.sqlite",
                      mentions: ["job.toml: [inputs] sae", "layers.2", "layers.1, layers.4.mlp"])
        // sparsify shape mismatch: cfg.json's d_in disagrees with encoder.weight.
        let cfgPath = run + "/layers.1/cfg.json"
        let cfg = try String(contentsOfFile: cfgPath, encoding: .utf8).replacingOccurrences(of: "\"d_in\": 16", with: "\"d_in\": 15")
        try Data(cfg.utf8).write(to: URL(fileURLWithPath: cfgPath))
        expectRefused(try await collect(dir, sae: run + "/layers.1", db: "f.sqlite"), dir: dir, db: "f.sqlite",
                      mentions: ["sae.safetensors: tensor encoder.weight", "[24, 16]"])
        // A folder holding no SAE names what was expected.
        expectRefused(try await collect(dir, sae: dir.file("gemma-scope/layer_3"), db: "g.sqlite"), dir: dir, db: "g.sqlite",
                      mentions: ["params.npz", "sae_weights.safetensors", "sae.safetensors"])
        // Unknown tokenizer model type.
        try dir.write("odd-tokenizer.json", #"{"model": {"type": "Morpheme", "vocab": {}}, "added_tokens": []}"#)
        let odd = try await runSAELabel(["collect", "--db", dir.file("h.sqlite"), "--sae", dir.file("saelens-gated"),
                                         "--activations", dir.file("activations.safetensors"), "--tokenizer", dir.file("odd-tokenizer.json")])
        expectRefused(odd, dir: dir, db: "h.sqlite", mentions: ["odd-tokenizer.json: model.type", "Morpheme"])
    }
}
