import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// fsync(2) of a path: the one way the store and the exporters make a written file, or a folder's entries
/// (a rename in it), durable. Each caller words the failure for its own error.
public enum FileSync {
    /// Opens `path` read-only (a file or a folder), fsyncs and closes it; nil when durable, else the reason.
    public static func sync(_ path: String) -> String? {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { return String(cString: strerror(errno)) }
        defer { _ = close(descriptor) }
        guard fsync(descriptor) == 0 else { return String(cString: strerror(errno)) }
        return nil
    }

    /// `bytes` as "12.3 MiB", as the store's space messages and `saelabel prune` word sizes.
    public static func mebibytes(_ bytes: Int64) -> String { String(format: "%.1f MiB", Double(bytes) / 1_048_576) }
}
