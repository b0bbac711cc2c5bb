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
}
