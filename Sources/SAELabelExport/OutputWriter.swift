import Foundation
import SAELabelCore

/// A buffered file writer: exports append text as they go and the buffer is flushed every megabyte,
/// so memory stays flat however many features are written. (Starting each megabyte's write-back with
/// posix_fadvise DONTNEED was tried at 131k: the catalog export got slower, 51.7 → 63.3 s, and the
/// html catalog then loaded from disk in Chromium, so it is not done.)
final class OutputWriter {
    let path: String
    private let handle: FileHandle
    private var buffer: [UInt8] = []
    private let flushThreshold = 1 << 20

    /// Standard output is not closed here; special files are closed but not synced (fsync fails on pipes).
    private let closes: Bool
    private let syncs: Bool
    /// When true, `close` leaves the fsync to the caller (an export folder syncs all its files at the end).
    private let defersSync: Bool

    /// Creates (or truncates) the file at `path`; with `replace` false an existing special file
    /// (a FIFO, a terminal, /dev/stdout) is opened for writing as it is.
    init(path: String, replace: Bool = true, defersSync: Bool = false) throws(SAELabelError) {
        self.path = path
        if replace {
            guard FileManager.default.createFile(atPath: path, contents: nil) else {
                throw .badInput(location: path, problem: "cannot create the file; check that its folder is writable")
            }
        }
        guard let handle = FileHandle(forWritingAtPath: path) else {
            throw .badInput(location: path, problem: "cannot open for writing; check its permissions")
        }
        self.handle = handle
        self.closes = true
        self.syncs = replace
        self.defersSync = defersSync
        buffer.reserveCapacity(flushThreshold + 4096)
    }

    init(standardOutput handle: FileHandle) {
        self.path = "standard output"
        self.handle = handle
        self.closes = false
        self.syncs = false
        self.defersSync = false
        buffer.reserveCapacity(flushThreshold + 4096)
    }

    func write(_ text: String) throws(SAELabelError) {
        buffer.append(contentsOf: text.utf8)
        if buffer.count >= flushThreshold { try flush() }
    }

    func write(_ bytes: [UInt8]) throws(SAELabelError) {
        buffer.append(contentsOf: bytes)
        if buffer.count >= flushThreshold { try flush() }
    }

    func flush() throws(SAELabelError) {
        guard !buffer.isEmpty else { return }
        do {
            try handle.write(contentsOf: buffer)
        } catch {
            throw .badInput(location: path, problem: "write failed: \(error.localizedDescription)")
        }
        buffer.removeAll(keepingCapacity: true)
    }

    /// Flushes, syncs (unless deferred) and closes; the file is complete when this returns.
    func close() throws(SAELabelError) {
        try flush()
        guard closes else { return }
        do {
            if syncs && !defersSync { try handle.synchronize() }
            try handle.close()
        } catch {
            throw .badInput(location: path, problem: "cannot finish writing: \(error.localizedDescription)")
        }
    }

    deinit { if closes { try? handle.close() } }
}

