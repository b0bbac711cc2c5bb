import Foundation
import SAELabelCore

/// Decodes token ids of a Hugging Face byte-level BPE `tokenizer.json` back to text.
///
/// Vocabulary entries are spelled in GPT-2's byte alphabet (each byte 0–255 is a printable character:
/// `Ġ` = space, `Ċ` = newline, …); the inverse of that alphabet turns them back into raw bytes.
/// Added tokens (e.g. `<|endoftext|>`) are stored verbatim and decode to their UTF-8 content.
public struct TokenDecoder: Sendable {
    /// Raw bytes of each id; `nil` where the tokenizer has no such id.
    let bytes: [[UInt8]?]
    public let path: String
    /// Ids of added tokens marked `special` (BOS, EOS, padding …), excluded from collection by default.
    public let specialTokenIDs: Set<Int>

    public var vocabularySize: Int { bytes.count }

    public init(path: String) throws(SAELabelError) {
        self.path = path
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .badInput(location: path, problem: "cannot read the tokenizer file")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data), let root = object as? [String: Any] else {
            throw .badInput(location: path, problem: "not a JSON object; expected a Hugging Face tokenizer.json")
        }
        guard let model = root["model"] as? [String: Any], let vocab = model["vocab"] as? [String: Any] else {
            throw .badInput(location: "\(path): model.vocab", problem: "missing; expected a byte-level BPE tokenizer.json")
        }
        let inverse = TokenDecoder.byteAlphabetInverse
        var table: [Int: [UInt8]] = [:]
        table.reserveCapacity(vocab.count)
        for (token, value) in vocab {
            guard let id = (value as? NSNumber)?.intValue, id >= 0 else { continue }
            var tokenBytes: [UInt8] = []
            tokenBytes.reserveCapacity(token.unicodeScalars.count)
            for scalar in token.unicodeScalars {
                if let byte = inverse[scalar] {
                    tokenBytes.append(byte)
                } else {
                    tokenBytes.append(contentsOf: Array(String(scalar).utf8))  // not byte-level-encoded: keep as is
                }
            }
            table[id] = tokenBytes
        }
        var special = Set<Int>()
        for entry in root["added_tokens"] as? [[String: Any]] ?? [] {
            guard let id = (entry["id"] as? NSNumber)?.intValue, id >= 0, let content = entry["content"] as? String else { continue }
            table[id] = Array(content.utf8)
            if (entry["special"] as? NSNumber)?.boolValue == true { special.insert(id) }
        }
        let size = (table.keys.max() ?? -1) + 1
        // Ids index a dense table: a stray huge id (found by fuzzing) must not ask for terabytes.
        guard size <= 4 * table.count + 65_536 else {
            throw .badInput(location: "\(path): model.vocab",
                            problem: "token id \(size - 1) is far beyond the \(table.count) tokens defined; is the file corrupt?")
        }
        var bytes = [[UInt8]?](repeating: nil, count: size)
        for (id, value) in table { bytes[id] = value }
        self.bytes = bytes
        specialTokenIDs = special
    }

    public func contains(_ id: Int) -> Bool { id >= 0 && id < bytes.count && bytes[id] != nil }

    /// GPT-2's `bytes_to_unicode` inverted: printable bytes map to themselves, the other 68 bytes to U+0100….
    static let byteAlphabetInverse: [Unicode.Scalar: UInt8] = {
        var printable = Array(33...126) + Array(161...172) + Array(174...255)
        var scalars = printable
        var extra = 0
        for byte in 0...255 where !printable.contains(byte) {
            printable.append(byte)
            scalars.append(256 + extra)
            extra += 1
        }
        var inverse: [Unicode.Scalar: UInt8] = [:]
        for (byte, scalar) in zip(printable, scalars) { inverse[Unicode.Scalar(UInt32(scalar))!] = UInt8(byte) }
        return inverse
    }()

    /// Decodes the tokens of one window to one string per token.
    ///
    /// Rule for characters split across tokens: each token shows the complete characters it finishes.
    /// When a token's bytes end inside a multi-byte UTF-8 character, the incomplete bytes are carried
    /// into the next token, so the character appears on the token that completes it and the earlier
    /// token shows only what it could decode (possibly ""). Bytes that can never form a valid character
    /// (a stray continuation byte, e.g. at the start of a window that begins mid-character, or a
    /// character still incomplete at the window's end) become U+FFFD, so every string is valid.
    public func decodeWindow(_ ids: [Int]) -> [String] {
        var strings: [String] = []
        strings.reserveCapacity(ids.count)
        var carry: [UInt8] = []
        for (position, id) in ids.enumerated() {
            var pending = carry
            if id >= 0, id < bytes.count, let tokenBytes = bytes[id] { pending.append(contentsOf: tokenBytes) }
            let isLast = position == ids.count - 1
            let cut = isLast ? pending.count : TokenDecoder.completePrefixLength(pending)
            strings.append(String(decoding: pending[..<cut], as: UTF8.self))
            carry = Array(pending[cut...])
        }
        return strings
    }

    /// Length of the prefix of `bytes` that excludes a trailing, still-completable multi-byte sequence.
    static func completePrefixLength(_ bytes: [UInt8]) -> Int {
        let count = bytes.count
        // A UTF-8 sequence is at most 4 bytes: look back at most 3 bytes for its lead byte.
        var index = count - 1
        var continuation = 0
        while index >= 0, continuation < 3, bytes[index] & 0xC0 == 0x80 {
            continuation += 1
            index -= 1
        }
        guard index >= 0 else { return count }
        let lead = bytes[index]
        let needed: Int
        if lead & 0xE0 == 0xC0 { needed = 2 } else if lead & 0xF0 == 0xE0 { needed = 3 } else if lead & 0xF8 == 0xF0 { needed = 4 } else { return count }
        let have = count - index
        return have < needed ? index : count
    }
}
