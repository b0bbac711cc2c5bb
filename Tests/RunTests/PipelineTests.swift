import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport
import Testing

/// The demo dataset shipped in Datasets/demo: a real SmolLM2 residual stream and a real SAE.
enum Demo {
    static var folder: URL { Repository.root.appendingPathComponent("Datasets/demo") }
    static var available: Bool {
        FileManager.default.fileExists(atPath: folder.appendingPathComponent("activations.safetensors").path)
    }

    /// A job file over the demo data against `endpoint`, written into `dir`.
    static func job(_ dir: TempDirectory, endpoint: String, features: String, store: String = "job.sqlite",
                    scorers: String = "[\"simulation\"]", concurrency: Int = 4, retries: Int = 3, extra: String = "",
                    model: String = "mock", server: String? = nil, batch: Bool = false) throws -> String {
        let serverLine = (server.map { "server = \"\($0)\"" } ?? "") + (batch ? "\nbatch = true" : "")
        return try dir.write("job.toml", """
            [job]
            store = "\(dir.file(store))"
            seed = 3

            [inputs]
            sae = "\(folder.appendingPathComponent("sae").path)"
            activations = ["\(folder.appendingPathComponent("activations.safetensors").path)"]
            tokenizer = "\(folder.appendingPathComponent("tokenizer.json").path)"

            [collect]
            features = "\(features)"
            window = 16
            explain_top = 4
            explain_quantile = 2
            heldout_top = 2
            heldout_quantile = 1
            heldout_random = 2
            min_activating_windows = 3

            [explainer]
            endpoint = "\(endpoint)"
            model = "\(model)"
            \(serverLine)

            [simulator]
            endpoint = "\(endpoint)"
            model = "\(model)"
            \(serverLine)
            scorers = \(scorers)

            [limits]
            concurrency = \(concurrency)
            timeout_seconds = 5
            max_retries = \(retries)
            \(extra)
            """)
    }
}

@Suite(.serialized) struct CommandLineTests {
    @Test func everyCommandExplainsItsFlags() async throws {
        let top = try await runSAELabel(["--help"])
        #expect(top.status == 0)
        for command in ["run", "collect", "explain", "score", "status", "export", "merge"] {
            #expect(top.stdout.contains(command))
            let help = try await runSAELabel([command, "--help"])
            #expect(help.status == 0, "\(command) --help")
            // Every option line carries a description, on the same line or the next.
            let lines = help.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            var options = 0
            for (index, line) in lines.enumerated() {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                guard trimmed.hasPrefix("-"), !trimmed.hasPrefix("-h, --help") else { continue }
                options += 1
                let words = trimmed.split(separator: " ", omittingEmptySubsequences: true)
                let flagWords = words.prefix { $0.hasPrefix("-") || $0.hasPrefix("<") }
                let next = index + 1 < lines.count ? lines[index + 1].trimmingCharacters(in: .whitespaces) : ""
                let described = words.count > flagWords.count || (!next.isEmpty && !next.hasPrefix("-"))
                #expect(described, "\(command): undocumented option \(trimmed)")
            }
            #expect(options > 0, "\(command) has options")
        }
    }

    @Test func badJobFileExitsTwoWithOneLineAndWritesNothing() async throws {
        let dir = TempDirectory()
        let cases: [(String, String)] = [
            ("[job]\nstore = \"out/s.sqlite\"\nsurprise = 1\n", "surprise"),
            ("[job]\nstore = 5\n", "[job] store"),
            ("[job]\nstore = \"out/s.sqlite\"\n[inputs]\nsae = \"missing-sae\"\nactivations = [\"a.safetensors\"]\ntokenizer = \"t.json\"\n", "missing-sae"),
        ]
        for (text, fragment) in cases {
            let job = try dir.write("bad.toml", text)
            let result = try await runSAELabel(["run", "--config", job])
            #expect(result.status == 2, "\(fragment): \(result.stderr)")
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 1, "one line on stderr: \(result.stderr)")
            #expect(result.stderr.contains(fragment))
            #expect(!FileManager.default.fileExists(atPath: dir.file("out")), "nothing written")
        }
        let usage = try await runSAELabel(["export", "--db", dir.file("x.sqlite"), "--format", "pdf", "--out", dir.file("o")])
        #expect(usage.status == 2)
        for arguments in [["explain", "--db", dir.file("e.sqlite"), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--style", "poetic"],
                          ["score", "--db", dir.file("s.sqlite"), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--scorer", "vibes"],
                          ["score", "--db", dir.file("s.sqlite"), "--endpoint", "not a url", "--model", "m"]] {
            let refused = try await runSAELabel(arguments)
            #expect(refused.status == 2, "\(arguments): \(refused.stderr)")
            #expect(refused.stderr.split(separator: "\n").count == 1)
        }
        // The CLI's scorer and simulator flags are the job file's enums: the message lists their names.
        for (flag, valid) in [("--scorer", ScorerKind.validNames), ("--simulator", SimulatorMode.validNames)] {
            let refused = try await runSAELabel(["score", "--db", dir.file("s.sqlite"), "--endpoint", "http://127.0.0.1:9/v1",
                                                 "--model", "m", flag, "vibes"])
            #expect(refused.status == 2, "\(refused.stderr)")
            for name in valid.components(separatedBy: ", ") { #expect(refused.stderr.contains("'\(name)'"), "\(refused.stderr)") }
        }
        #expect(!FileManager.default.fileExists(atPath: dir.file("e.sqlite")) && !FileManager.default.fileExists(atPath: dir.file("s.sqlite")),
                "bad flags create no store")
        let badFlag = try await runSAELabel(["status", "--dbb", "x"])
        #expect(badFlag.status == 2)
        #expect(badFlag.stderr.split(separator: "\n").count == 1)
    }

    @Test(.enabled(if: Demo.available)) func changedSelectionSettingsAreRefusedUnlessNewVersion() async throws {
        let dir = TempDirectory()
        let job = try Demo.job(dir, endpoint: "http://127.0.0.1:9/v1", features: "0..4")
        let first = try await runSAELabel(["run", "--config", job, "--stage", "collect", "--quiet"])
        #expect(first.status == 0, "\(first.stderr)")
        let text = try String(contentsOfFile: job, encoding: .utf8).replacingOccurrences(of: "window = 16", with: "window = 8")
        try Data(text.utf8).write(to: URL(fileURLWithPath: job))
        let refused = try await runSAELabel(["run", "--config", job, "--stage", "collect", "--quiet"])
        #expect(refused.status == 2)
        #expect(refused.stderr.contains("window=16") && refused.stderr.contains("window=8"))
        #expect(refused.stderr.split(separator: "\n").count == 1)
        let accepted = try await runSAELabel(["run", "--config", job, "--stage", "collect", "--new-version", "--quiet"])
        #expect(accepted.status == 0, "\(accepted.stderr)")
        let status = try await runSAELabel(["status", "--db", dir.file("job.sqlite"), "--json"])
        let object = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        #expect(object?["features"] as? Int == 4)
    }
}
