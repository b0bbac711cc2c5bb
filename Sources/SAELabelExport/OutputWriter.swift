import Foundation
import SAELabelCore

/// A buffered file writer: exports append text as they go and the buffer is flushed every megabyte,
/// so memory stays flat however many features are written.
final class OutputWriter {
    let path: String
    private let handle: FileHandle
    private var buffer: [UInt8] = []
    private let flushThreshold = 1 << 20

    init(path: String) throws(SAELabelError) {
        self.path = path
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let handle = FileHandle(forWritingAtPath: path) else {
            throw .badInput(location: path, problem: "cannot create the file; check that its directory exists and is writable")
        }
        self.handle = handle
        buffer.reserveCapacity(flushThreshold + 4096)
    }

    func write(_ text: String) throws(SAELabelError) {
        buffer.append(contentsOf: text.utf8)
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

    /// Flushes, syncs and closes; the file is complete when this returns.
    func close() throws(SAELabelError) {
        try flush()
        do {
            try handle.synchronize()
            try handle.close()
        } catch {
            throw .badInput(location: path, problem: "cannot finish writing: \(error.localizedDescription)")
        }
    }

    deinit { try? handle.close() }
}

/// Writing to `path.tmp` and renaming at the end, so a killed export never leaves a partial output
/// under the final name. A directory output replaces an existing directory of the same name.
enum AtomicOutput {
    static func temporaryPath(for path: String) -> String { path + ".tmp" }

    static func checkParent(of path: String) throws(SAELabelError) {
        let parent = (path as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        let directory = parent.isEmpty ? "." : parent
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw .badInput(location: path, problem: "the directory \(directory) does not exist")
        }
    }

    /// Creates an empty `path.tmp` directory (removing a leftover one from a killed export).
    static func prepareDirectory(for path: String) throws(SAELabelError) -> String {
        try checkParent(of: path)
        let temporary = temporaryPath(for: path)
        do {
            if FileManager.default.fileExists(atPath: temporary) {
                try FileManager.default.removeItem(atPath: temporary)
            }
            try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        } catch {
            throw .badInput(location: temporary, problem: "cannot create the output directory: \(error.localizedDescription)")
        }
        return temporary
    }

    /// Moves the finished temporary file or directory to `path`.
    static func commit(_ temporary: String, to path: String) throws(SAELabelError) {
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        let exists = manager.fileExists(atPath: path, isDirectory: &isDirectory)
        if exists && isDirectory.boolValue {
            // rename(2) cannot replace a non-empty directory: move the old one aside first.
            let aside = path + ".old-\(ProcessInfo.processInfo.processIdentifier)"
            guard rename(path, aside) == 0 else {
                throw .badInput(location: path, problem: "cannot replace the existing directory (\(String(cString: strerror(errno))))")
            }
            guard rename(temporary, path) == 0 else {
                let reason = String(cString: strerror(errno))
                _ = rename(aside, path)
                throw .badInput(location: path, problem: "cannot move the finished export into place (\(reason))")
            }
            try? manager.removeItem(atPath: aside)
        } else {
            guard rename(temporary, path) == 0 else {
                throw .badInput(location: path, problem: "cannot move the finished export into place (\(String(cString: strerror(errno))))")
            }
        }
    }

    static func discard(_ temporary: String) {
        try? FileManager.default.removeItem(atPath: temporary)
    }
}
