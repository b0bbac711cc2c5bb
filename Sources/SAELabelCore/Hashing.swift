import Crypto
import Foundation

public enum Hashing {
    public static func sha256Hex(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    public static func sha256Hex(_ text: String) -> String {
        sha256Hex(Data(text.utf8))
    }

    /// SHA-256 of a file, streamed in 4 MiB chunks so a multi-GB activation shard never sits in memory.
    public static func sha256Hex(fileAt path: String) throws(SAELabelError) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .badInput(location: path, problem: "cannot open the file; check the path and permissions")
        }
        defer { try? handle.close() }
        var hasher = SHA256()
        while true {
            let chunk: Data
            do {
                chunk = try handle.read(upToCount: 4 << 20) ?? Data()
            } catch {
                throw .badInput(location: path, problem: "read failed: \(error.localizedDescription)")
            }
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
