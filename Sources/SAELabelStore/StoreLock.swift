import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SAELabelCore

/// One mutating run per store at a time: an exclusive `flock` on the sidecar file `<store>.lock`.
///
/// Why a lock rather than cooperating workers: every stage already commits per feature and resumes from
/// the store, so a second process on the same store can only duplicate paid calls; sharding (`--shard`,
/// `merge`) is the way to split a job. The kernel releases a `flock` when its holder exits in any way
/// (kill -9 included), so a dead run never blocks the next one, and no stale-lock cleanup is needed.
/// Read-only commands (status, export, --dry-run) never take it.
public final class StoreLock: Sendable {
    public let path: String
    private let descriptor: Int32

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    /// The sidecar lock file of the store at `storePath`.
    public static func lockPath(store storePath: String) -> String { storePath + ".lock" }

    /// Takes the lock at once or throws `.storeBusy` naming the holder; never waits.
    public static func acquire(store storePath: String) throws(SAELabelError) -> StoreLock {
        let path = lockPath(store: storePath)
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw .store("cannot open the lock file \(path): \(String(cString: strerror(errno))); is the folder writable?")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno
            defer { close(descriptor) }
            guard reason == EWOULDBLOCK else {
                throw .store("cannot lock \(path): \(String(cString: strerror(reason)))")
            }
            throw .storeBusy(store: storePath, holder: holder(descriptor))
        }
        // Who holds it, for the refusal message of a second run. A stale text left by a killed holder is
        // simply overwritten here.
        let formatter = ISO8601DateFormatter()
        let host = ProcessInfo.processInfo.hostName
        let text = "pid \(getpid()) on \(host) since \(formatter.string(from: Date()))\n"
        _ = ftruncate(descriptor, 0)
        _ = text.withCString { pwrite(descriptor, $0, strlen($0), 0) }
        return StoreLock(path: path, descriptor: descriptor)
    }

    /// The holder's description; the holder writes it right after locking, so an empty file is read again briefly.
    private static func holder(_ descriptor: Int32) -> String {
        for _ in 0..<20 {
            var buffer = [UInt8](repeating: 0, count: 512)
            let count = buffer.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                return String(decoding: buffer[0..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            }
            usleep(25_000)
        }
        return "another process (its pid is not recorded yet)"
    }

    deinit { close(descriptor) }
}
