#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import SAELabelCore

/// How an export file reaches the disk.
enum WritePath {
    /// Through the page cache: files that are read right after the export (the html index, shell).
    case cached
    /// Straight to the disk (O_DIRECT on Linux) when the filesystem allows it: bulk output nobody
    /// reads right away (the catalog, the html feature chunks). On the benchmark VM a buffered write
    /// into fresh page-cache pages ran at ~130 MB/s against 1.7 GB/s direct, and was most of the
    /// 131k exports' time; direct writes also leave the store's pages in the cache.
    case direct
}

/// A buffered file writer: exports append text as they go and the buffer is written out every
/// megabyte or so, so memory stays flat however many features are written. (Starting each
/// megabyte's write-back with posix_fadvise DONTNEED was tried at 131k: the catalog export got
/// slower, 51.7 → 63.3 s, and the html catalog then loaded from disk in Chromium, so it is not done.)
final class OutputWriter {
    let path: String
    private let descriptor: Int32
    private var buffer: [UInt8] = []
    private let flushThreshold: Int
    /// True while the file is open for direct writes: whole blocks at block offsets, from `staging`.
    private var direct: Bool
    /// The block-aligned copy direct writes are made from (direct I/O needs aligned memory).
    private let staging: UnsafeMutableRawPointer?
    private static let alignment = 4096
    private static let directChunk = 4 << 20

    /// Standard output is not closed here; special files are closed but not synced (fsync fails on pipes).
    private let closes: Bool
    private let syncs: Bool
    /// When true, `close` leaves the fsync to the caller (an export folder syncs all its files at the end).
    private let defersSync: Bool
    private var closed = false

    /// Creates (or truncates) the file at `path`; with `replace` false an existing special file
    /// (a FIFO, a terminal, /dev/stdout) is opened for writing as it is, always through the cache.
    init(path: String, replace: Bool = true, defersSync: Bool = false, writePath: WritePath = .cached) throws(SAELabelError) {
        self.path = path
        var descriptor: Int32 = -1
        var staging: UnsafeMutableRawPointer?
        if replace, writePath == .direct, let flag = directWriteOpenFlag, posix_memalign(&staging, Self.alignment, Self.directChunk) == 0 {
            // Refused (EINVAL) by filesystems without direct I/O, such as older tmpfs: then cached.
            descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | flag, 0o666)
        }
        direct = descriptor >= 0
        if !direct {
            descriptor = replace ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o666) : open(path, O_WRONLY)
        }
        guard descriptor >= 0 else {
            let reason = String(cString: strerror(errno))
            free(staging)
            throw .badInput(location: path, problem: replace ? "cannot create the file (\(reason)); check that its folder is writable"
                                                            : "cannot open for writing (\(reason)); check its permissions")
        }
        self.descriptor = descriptor
        self.staging = staging
        self.closes = true
        self.syncs = replace
        self.defersSync = defersSync
        flushThreshold = direct ? Self.directChunk : 1 << 20
        buffer.reserveCapacity(flushThreshold + (64 << 10))
    }

    init(standardOutput handle: FileHandle) {
        self.path = "standard output"
        self.descriptor = handle.fileDescriptor
        self.direct = false
        self.staging = nil
        self.closes = false
        self.syncs = false
        self.defersSync = false
        flushThreshold = 1 << 20
        buffer.reserveCapacity(flushThreshold + (64 << 10))
    }

    func write(_ text: String) throws(SAELabelError) {
        buffer.append(contentsOf: text.utf8)
        if buffer.count >= flushThreshold { try flush() }
    }

    func write(_ bytes: [UInt8]) throws(SAELabelError) {
        buffer.append(contentsOf: bytes)
        if buffer.count >= flushThreshold { try flush() }
    }

    /// Writes out the buffer; a direct writer keeps back the tail short of a whole block until `close`.
    func flush() throws(SAELabelError) {
        guard !buffer.isEmpty else { return }
        guard direct, let staging else {
            let failure = buffer.withUnsafeBytes { bytes -> SAELabelError? in
                do throws(SAELabelError) { try writeAll(bytes) } catch { return error }
                return nil
            }
            if let failure { throw failure }
            buffer.removeAll(keepingCapacity: true)
            return
        }
        let whole = buffer.count / Self.alignment * Self.alignment
        var done = 0
        while done < whole {
            let length = min(Self.directChunk, whole - done)
            buffer.withUnsafeBytes { bytes in staging.copyMemory(from: bytes.baseAddress! + done, byteCount: length) }
            try writeAll(UnsafeRawBufferPointer(start: staging, count: length))
            done += length
        }
        buffer.removeFirst(whole)
    }

    /// Flushes, syncs (unless deferred) and closes; the file is complete when this returns.
    func close() throws(SAELabelError) {
        try flush()
        if !buffer.isEmpty {
            // The last partial block of a direct file goes through the cache.
            stopDirect()
            try flush()
        }
        guard closes, !closed else { return }
        closed = true
        var failure: String?
        if syncs && !defersSync && fsync(descriptor) != 0 { failure = String(cString: strerror(errno)) }
        if closeDescriptor(descriptor) != 0 && failure == nil { failure = String(cString: strerror(errno)) }
        if let failure { throw .badInput(location: path, problem: "cannot finish writing: \(failure)") }
    }

    deinit {
        if closes && !closed { _ = closeDescriptor(descriptor) }
        free(staging)
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws(SAELabelError) {
        var done = 0
        while done < bytes.count {
            let written = writeDescriptor(descriptor, bytes.baseAddress! + done, bytes.count - done)
            if written < 0 {
                if errno == EINTR { continue }
                // A filesystem that took O_DIRECT at open but refuses the write: go on through the cache.
                if errno == EINVAL && direct {
                    stopDirect()
                    continue
                }
                throw .badInput(location: path, problem: "write failed: \(String(cString: strerror(errno)))")
            }
            done += written
        }
    }

    private func stopDirect() {
        guard direct, let flag = directWriteOpenFlag else { return }
        direct = false
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) & ~flag)
    }
}

/// O_DIRECT, which Swift's Glibc module does not export (a _GNU_SOURCE flag); nil where unknown.
/// Public for the store benchmark, which times a plain direct write beside the exports.
public let directWriteOpenFlag: Int32? = {
    #if os(Linux) && (arch(x86_64) || arch(i386))
    return 0o40000
    #elseif os(Linux) && (arch(arm64) || arch(arm))
    return 0o200000
    #else
    return nil
    #endif
}()

// The system calls under names the writer's own methods do not shadow.
private func writeDescriptor(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int { write(descriptor, bytes, count) }
private func closeDescriptor(_ descriptor: Int32) -> Int32 { close(descriptor) }
