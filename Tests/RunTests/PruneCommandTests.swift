import Foundation
import TestSupport
import Testing

/// `saelabel prune` through the real binary on a store a real run labeled against the mock: it frees
/// the cached answers of finished work, every export is the same bytes before and after, and running
/// the job again sends nothing.
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct PruneCommandTests {
    func exportBytes(_ db: String, _ dir: TempDirectory, _ name: String) async throws -> [String: Data] {
        var files: [String: Data] = [:]
        for (format, out) in [("catalog", "\(name).jsonl"), ("csv", "\(name).csv"), ("html", "\(name)-html"), ("neuronpedia", "\(name)-np")] {
            let result = try await runSAELabel(["export", "--db", db, "--format", format, "--out", dir.file(out)])
            #expect(result.status == 0, "\(format): \(result.stderr)")
            var isFolder: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: dir.file(out), isDirectory: &isFolder)
            let paths = isFolder.boolValue
                ? (FileManager.default.enumerator(atPath: dir.file(out))?.compactMap { $0 as? String } ?? [])
                    .filter { $0 != "data/meta.js" && !$0.hasPrefix(".") }  // meta.js holds the export time
                    .map { out + "/" + $0 }
                : [out]
            for path in paths where !path.hasSuffix("/data") {
                var folder: ObjCBool = false
                if FileManager.default.fileExists(atPath: dir.file(path), isDirectory: &folder), !folder.boolValue {
                    files[format + ":" + String(path.dropFirst(out.count))] = try Data(contentsOf: URL(fileURLWithPath: dir.file(path)))
                }
            }
        }
        return files
    }

    /// The inode number of a file: prune replaces the store's file by a new one (a rename), so it changes.
    func inode(_ path: String) throws -> UInt64 {
        try #require(try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? NSNumber).uint64Value
    }

    /// `leftover`: a prune killed while writing its compacted copy left part of one beside the store
    /// (the store's first bytes: a valid header over a cut-off file); the next prune must remove it.
    @Test(arguments: [false, true])
    func pruneFreesFinishedAnswersAndChangesNoExport(leftover: Bool) async throws {
        let mock = try await MockLLMServer.start()
        defer { mock.stop() }
        let dir = TempDirectory()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..6", scorers: "[\"simulation\", \"detection\", \"fuzzing\"]")
        let db = dir.file("job.sqlite")
        let run = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(run.status == 0, "\(run.stderr)")
        let temporary = db + ".prune-tmp"
        if leftover {
            let data = try Data(contentsOf: URL(fileURLWithPath: db))
            try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: temporary))
        }
        // Exports read the store as it is; a leftover copy beside it changes nothing they write.
        let before = try await exportBytes(db, dir, "before")
        #expect(before.keys.contains("catalog:") && before.keys.contains("html:/data/features-0000.js"))
        let fileBefore = try inode(db)

        let pruned = try await runSAELabel(["prune", "--db", db])
        #expect(pruned.status == 0, "\(pruned.stderr)")
        // "dropped N cached LLM answers (K kept for unfinished work), …; A MiB → B MiB"
        let dropped = pruned.stdout.split(separator: " ").dropFirst().first.flatMap { Int($0) }
        #expect((dropped ?? 0) > 0, "prune freed nothing: \(pruned.stdout)")
        // The compacted copy replaced the store (nothing else had it open), and nothing is left beside it.
        #expect(!pruned.stdout.contains("in place"), "\(pruned.stdout)")
        #expect(try inode(db) != fileBefore)
        for name in [temporary, temporary + "-journal", db + "-wal", db + "-shm", db + "-journal"] {
            #expect(!FileManager.default.fileExists(atPath: name), "\(name) was left beside the store")
        }

        let after = try await exportBytes(db, dir, "after")
        #expect(after.keys.sorted() == before.keys.sorted())
        for (name, data) in before {
            #expect(after[name] == data, "\(name) changed after prune")
        }

        // Everything is labeled and scored: running the job again asks the server nothing.
        try await mock.resetStats()
        let again = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try await mock.requestCount() == 0)
    }

    /// Whether this process may mount a file system (a tmpfs of a given size is the only way to make a real disk
    /// too small for the compacted copy). CI runs as root; elsewhere the test is skipped and says why.
    static let canMount = geteuid() == 0

    /// A store on a file system without room for its compacted copy: prune drops the finished answers, says how
    /// much room the copy needs, exits 1 and leaves the store whole (every label and score, every export byte)
    /// with nothing beside it; once there is room, the next prune compacts it.
    @Test(.enabled(if: canMount, "needs root to mount a small tmpfs"))
    func pruneWithoutRoomForTheCopyKeepsTheStoreAndSaysWhatItNeeds() async throws {
        let mock = try await MockLLMServer.start()
        defer { mock.stop() }
        let dir = TempDirectory()
        let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..6", scorers: "[\"simulation\", \"detection\"]")
        let run = try await runSAELabel(["run", "--config", job, "--quiet"])
        #expect(run.status == 0, "\(run.stderr)")

        // A 12 MiB tmpfs holds the store (about 1 MiB) but not the copy's margin (16 MiB over its size).
        let small = dir.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        let mount = try await runProcess("/bin/mount", ["-t", "tmpfs", "-o", "size=12m", "tmpfs", small])
        try #require(mount.status == 0, "mount: \(mount.stderr)")
        defer { _ = try? Process.run(URL(fileURLWithPath: "/bin/umount"), arguments: ["-l", small]).waitUntilExit() }
        let db = small + "/job.sqlite"
        try FileManager.default.copyItem(atPath: dir.file("job.sqlite"), toPath: db)
        let before = try await exportBytes(db, dir, "before")

        let refused = try await runSAELabel(["prune", "--db", db])
        #expect(refused.status == 1, "\(refused.stdout) \(refused.stderr)")
        #expect(refused.stderr.contains("needs about") && refused.stderr.contains("free in \(small)")
                && refused.stderr.contains("every label and score is kept"), "\(refused.stderr)")
        let leftBeside = try FileManager.default.contentsOfDirectory(atPath: small).filter { $0 != "job.sqlite" && $0 != "job.sqlite.lock" }
        #expect(leftBeside.isEmpty, "left beside the store: \(leftBeside)")
        let after = try await exportBytes(db, dir, "after")
        #expect(after.keys.sorted() == before.keys.sorted())
        for (name, data) in before { #expect(after[name] == data, "\(name) changed after the refused prune") }

        // With room, prune compacts: the answers are already gone (none dropped now), the file is replaced.
        let grow = try await runProcess("/bin/mount", ["-o", "remount,size=64m", small])
        try #require(grow.status == 0, "remount: \(grow.stderr)")
        let compacted = try await runSAELabel(["prune", "--db", db])
        #expect(compacted.status == 0, "\(compacted.stderr)")
        #expect(compacted.stdout.hasPrefix("dropped 0 cached LLM answers") && !compacted.stdout.contains("in place"), "\(compacted.stdout)")
        let final = try await exportBytes(db, dir, "final")
        for (name, data) in before { #expect(final[name] == data, "\(name) changed after the prune that compacted") }
    }
}
