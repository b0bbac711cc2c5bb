import Foundation
import SAELabelStore
import TestSupport
import Testing

/// `make install-binary PREFIX=…` (the copy step of `make install`), then the installed binary runs a whole
/// job from a folder that has nothing to do with the checkout: prompts and HTML assets travel inside it.
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct InstallTests {
    @Test func theInstalledBinaryRunsAJobFromAnUnrelatedFolder() async throws {
        let prefix = TempDirectory()
        let install = try await runProcess("/usr/bin/env", ["make", "-C", Repository.root.path, "install-binary",
                                                            "PREFIX=\(prefix.path)", "BIN=\(SAELabelBinary.path)"])
        #expect(install.status == 0, "\(install.stdout) \(install.stderr)")
        let installed = prefix.file("bin/saelabel")
        #expect(FileManager.default.isExecutableFile(atPath: installed))

        let work = TempDirectory()
        let mock = try await MockLLMServer.start(["--dialect", "openai"])
        defer { mock.stop() }
        let job = try Demo.job(work, endpoint: mock.baseURL, features: "0..4",
                               extra: "[export]\ncatalog = \"catalog.jsonl\"\nhtml = \"catalog\"",
                               model: "gpt-4.1-mini", server: "openai")
        let run = try await runProcess(installed, ["run", "--config", job, "--quiet"], currentDirectory: work.path)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(try await mock.stats().refused.isEmpty)
        let catalog = try readCatalog(work.file("catalog.jsonl"))
        #expect(!catalog.isEmpty)
        #expect(FileManager.default.fileExists(atPath: work.file("catalog/index.html")))
        #expect(FileManager.default.fileExists(atPath: work.file("catalog/app.js")))

        // prompts_dir still overrides the built-in templates; a missing folder is refused with one line.
        let missing = try await runProcess(installed, ["explain", "--db", work.file("job.sqlite"), "--endpoint", mock.baseURL,
                                                       "--model", "m", "--prompts", work.file("no-such-prompts")],
                                           currentDirectory: work.path)
        #expect(missing.status == 2 && missing.stderr.contains("no-such-prompts"), "\(missing.stderr)")
    }
}
