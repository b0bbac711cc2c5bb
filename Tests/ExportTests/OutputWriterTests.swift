import Foundation
import TestSupport
import Testing
import SAELabelCore
@testable import SAELabelExport

/// The writer gives the file exactly the bytes it was given, whichever way they reach the disk:
/// direct writes in whole blocks with the tail through the cache, or through the cache throughout.
@Suite struct OutputWriterTests {
    /// Appends of uneven lengths (a seeded generator), so block and flush boundaries fall mid-append.
    static func pieces(total: Int, seed: UInt64) -> [[UInt8]] {
        var random = SplitMix64(state: seed)
        var out: [[UInt8]] = []
        var written = 0
        while written < total {
            let length = min(total - written, Int(random.next() % 70_000))
            out.append((0..<length).map { UInt8(truncatingIfNeeded: written + $0 &* 31 &+ Int(seed)) })
            written += length
        }
        return out
    }

    @Test(arguments: [0, 1, 4095, 4096, 4097, (4 << 20) - 1, 4 << 20, (4 << 20) + 1, 9_437_187])
    func directAndCachedFilesHoldWhatWasWritten(total: Int) throws {
        let directory = TempDirectory()
        let parts = Self.pieces(total: total, seed: UInt64(total))
        let expected = Data(parts.flatMap { $0 })
        for writePath in [WritePath.direct, .cached] {
            let path = directory.file("out-\(writePath)-\(total).bin")
            let writer = try OutputWriter(path: path, writePath: writePath)
            for part in parts { try writer.write(part) }
            try writer.close()
            let written = try Data(contentsOf: URL(fileURLWithPath: path))
            #expect(written.count == total, "\(writePath)")
            #expect(written == expected, "\(writePath): bytes differ")
        }
    }

    @Test func aDirectWriterReplacesAnExistingLongerFile() throws {
        let directory = TempDirectory()
        let path = try directory.write("old.bin", String(repeating: "x", count: 20_000))
        let writer = try OutputWriter(path: path, writePath: .direct)
        try writer.write("short")
        try writer.close()
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "short")
    }

    @Test func anUnwritableFolderIsAnError() throws {
        let directory = TempDirectory()
        #expect(throws: SAELabelError.self) {
            _ = try OutputWriter(path: directory.file("missing-folder/out.bin"), writePath: .direct)
        }
    }
}
