import Foundation
import SAELabelCore

/// One step of a Hugging Face tokenizer's decoder (tokenizers/src/decoders/*.rs), as named in tokenizer.json.
indirect enum DecoderStep: Sendable {
    /// GPT-2's byte alphabet back to bytes, all tokens decoded as one UTF-8 stream (lossy).
    case byteLevel
    /// `▁` → space; in the first token it is dropped unless `prepend_scheme` is "never".
    case metaspace(replacement: Unicode.Scalar, dropInFirst: Bool)
    case replace(pattern: String, content: String)
    /// Runs of `<0xNN>` tokens → UTF-8; a run that is not valid UTF-8 becomes one U+FFFD per byte.
    case byteFallback
    /// All tokens joined into one.
    case fuse
    /// Removes up to `start` leading and `stop` trailing `content` characters of each token.
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    /// Tokens after the first: drop `prefix` (`##`) or else prepend a space; optional cleanup of spaces.
    case wordPiece(prefix: String, cleanup: Bool)
    /// The end-of-word suffix (`</w>`) becomes a space (nothing on the last token).
    case bpeSuffix(String)
    case sequence([DecoderStep])
}

/// Decodes token ids through a Hugging Face `tokenizer.json` the way the `tokenizers` library does
/// (`Tokenizer.decode(ids, skip_special_tokens=False)`), one string per token.
///
/// Supported: model types BPE (byte-level, or SentencePiece-style with `▁` and `<0xNN>` byte fallback), Unigram,
/// WordPiece and WordLevel; decoders ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, WordPiece, BPEDecoder
/// and Sequences of them. Normalizers act only when encoding, so decoding never needs them.
public struct TokenDecoder: Sendable {
    /// The token string of each id (added tokens override the model's vocabulary); nil where there is no such id.
    let tokens: [String?]
    /// `tokens` after the Replace steps that open the decoder chain: they act on each token alone, so they are
    /// applied once here instead of on every window (the Llama 2 chain starts with Replace("▁", " ")).
    let replacedTokens: [String?]
    /// The rest of the decoder chain; nil: the tokenizer has no decoder, and `tokenizers` joins tokens with spaces.
    let decoder: DecoderStep?
    public let path: String
    /// Ids of added tokens marked `special` (BOS, EOS, padding …), excluded from collection by default.
    public let specialTokenIDs: Set<Int>

    public var vocabularySize: Int { tokens.count }

    public init(path: String) throws(SAELabelError) {
        self.path = path
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .badInput(location: path, problem: "cannot read the tokenizer file")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data), let root = object as? [String: Any] else {
            throw .badInput(location: path, problem: "not a JSON object; expected a Hugging Face tokenizer.json")
        }
        guard let model = root["model"] as? [String: Any] else {
            throw .badInput(location: "\(path): model", problem: "missing; expected a Hugging Face tokenizer.json")
        }
        var table: [Int: String] = [:]
        let type = model["type"] as? String ?? (model["merges"] != nil ? "BPE" : nil)
        switch type {
        case "BPE", "WordPiece", "WordLevel":
            guard let vocab = model["vocab"] as? [String: Any] else {
                throw .badInput(location: "\(path): model.vocab", problem: "missing or not an object of token → id")
            }
            table.reserveCapacity(vocab.count)
            for (token, value) in vocab {
                guard let id = (value as? NSNumber)?.intValue, id >= 0 else { continue }
                table[id] = token
            }
        case "Unigram":
            guard let vocab = model["vocab"] as? [Any] else {
                throw .badInput(location: "\(path): model.vocab", problem: "missing or not a list of [piece, score]")
            }
            for (id, entry) in vocab.enumerated() {
                guard let pair = entry as? [Any], let piece = pair.first as? String else {
                    throw .badInput(location: "\(path): model.vocab[\(id)]", problem: "not a [piece, score] pair")
                }
                table[id] = piece
            }
        default:
            throw .badInput(location: "\(path): model.type",
                            problem: "'\(type ?? "(missing)")' is not supported; supported: BPE, Unigram, WordPiece, WordLevel")
        }
        var special = Set<Int>()
        for entry in root["added_tokens"] as? [[String: Any]] ?? [] {
            guard let id = (entry["id"] as? NSNumber)?.intValue, id >= 0, let content = entry["content"] as? String else { continue }
            table[id] = content
            if (entry["special"] as? NSNumber)?.boolValue == true { special.insert(id) }
        }
        let size = (table.keys.max() ?? -1) + 1
        // Ids index a dense table: a stray huge id (found by fuzzing) must not ask for terabytes.
        guard size <= 4 * table.count + 65_536 else {
            throw .badInput(location: "\(path): model.vocab",
                            problem: "token id \(size - 1) is far beyond the \(table.count) tokens defined; is the file corrupt?")
        }
        var tokens = [String?](repeating: nil, count: size)
        for (id, value) in table { tokens[id] = value }
        self.tokens = tokens
        specialTokenIDs = special
        var chain: DecoderStep?
        if let decoder = root["decoder"], !(decoder is NSNull) {
            chain = try TokenDecoder.parseDecoder(decoder, location: "\(path): decoder")
        }
        var replaced = tokens
        while let step = chain {
            if case .replace(let pattern, let content) = step {
                replaced = replaced.map { $0.map { TokenDecoder.replace(pattern, with: content, in: $0) } }
                chain = nil
            } else if case .sequence(let steps) = step, case .replace(let pattern, let content)? = steps.first {
                replaced = replaced.map { $0.map { TokenDecoder.replace(pattern, with: content, in: $0) } }
                chain = .sequence(Array(steps.dropFirst()))
            } else {
                break
            }
        }
        replacedTokens = replaced
        decoder = chain
    }

    /// Literal replacement matching Unicode scalars, as `tokenizers` matches chars.
    static func replace(_ pattern: String, with content: String, in text: String) -> String {
        guard !pattern.isEmpty else { return text }
        let scalars = pattern.unicodeScalars
        if scalars.count == 1, let target = scalars.first {
            guard text.unicodeScalars.contains(target) else { return text }
            var result = String.UnicodeScalarView()
            for scalar in text.unicodeScalars {
                if scalar == target { result.append(contentsOf: content.unicodeScalars) } else { result.append(scalar) }
            }
            return String(result)
        }
        return text.replacingOccurrences(of: pattern, with: content, options: .literal)
    }

    static func parseDecoder(_ value: Any, location: String) throws(SAELabelError) -> DecoderStep {
        guard let object = value as? [String: Any], let type = object["type"] as? String else {
            throw .badInput(location: location, problem: "not an object with a type")
        }
        func character(_ key: String, default fallback: Unicode.Scalar) throws(SAELabelError) -> Unicode.Scalar {
            guard let text = object[key] as? String else { return fallback }
            guard text.unicodeScalars.count == 1, let first = text.unicodeScalars.first else {
                throw .badInput(location: "\(location).\(key)", problem: "'\(text)' is not one character")
            }
            return first
        }
        switch type {
        case "ByteLevel":
            return .byteLevel
        case "Metaspace":
            let scheme: String
            if let named = object["prepend_scheme"] as? String {
                scheme = named
            } else {
                // Files older than tokenizers 0.14 carry add_prefix_space instead (true ≙ "always").
                scheme = (object["add_prefix_space"] as? NSNumber)?.boolValue == false ? "never" : "always"
            }
            guard ["always", "first", "never"].contains(scheme) else {
                throw .badInput(location: "\(location).prepend_scheme", problem: "'\(scheme)' is not always, first or never")
            }
            return .metaspace(replacement: try character("replacement", default: "▁"), dropInFirst: scheme != "never")
        case "Replace":
            let content = object["content"] as? String ?? ""
            guard let pattern = object["pattern"] as? [String: Any] else {
                throw .badInput(location: "\(location).pattern", problem: "missing")
            }
            guard let text = pattern["String"] as? String else {
                throw .badInput(location: "\(location).pattern",
                                problem: "only String patterns are supported in a Replace decoder (found \(pattern.keys.sorted().joined(separator: ", ")))")
            }
            return .replace(pattern: text, content: content)
        case "ByteFallback":
            return .byteFallback
        case "Fuse":
            return .fuse
        case "Strip":
            let start = (object["start"] as? NSNumber)?.intValue ?? 0
            let stop = (object["stop"] as? NSNumber)?.intValue ?? 0
            return .strip(content: try character("content", default: " "), start: max(0, start), stop: max(0, stop))
        case "WordPiece":
            return .wordPiece(prefix: object["prefix"] as? String ?? "##", cleanup: (object["cleanup"] as? NSNumber)?.boolValue ?? true)
        case "BPEDecoder":
            return .bpeSuffix(object["suffix"] as? String ?? "</w>")
        case "Sequence":
            guard let list = object["decoders"] as? [Any] else {
                throw .badInput(location: "\(location).decoders", problem: "missing or not a list")
            }
            var steps: [DecoderStep] = []
            for (index, item) in list.enumerated() {
                steps.append(try parseDecoder(item, location: "\(location).decoders[\(index)]"))
            }
            return .sequence(steps)
        default:
            throw .badInput(location: "\(location).type",
                            problem: "decoder '\(type)' is not supported; supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, WordPiece, BPEDecoder, Sequence")
        }
    }

    public func contains(_ id: Int) -> Bool { id >= 0 && id < tokens.count && tokens[id] != nil }

    /// GPT-2's `bytes_to_unicode` inverted: printable bytes map to themselves, the other 68 bytes to U+0100….
    /// The same inverse as a table indexed by scalar value (−1: not in the alphabet), for the per-token hot path.
    static let byteAlphabetTable: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (scalar, byte) in byteAlphabetInverse { table[Int(scalar.value)] = Int16(byte) }
        return table
    }()

    @inline(__always)
    static func alphabetByte(_ scalar: Unicode.Scalar) -> UInt8? {
        let value = Int(scalar.value)
        guard value < byteAlphabetTable.count, byteAlphabetTable[value] >= 0 else { return nil }
        return UInt8(byteAlphabetTable[value])
    }

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

    /// Decodes the tokens of one window to one string per token; the strings join to what `tokenizers` decodes
    /// for the same ids.
    ///
    /// Rule for characters split across tokens (byte-level and byte-fallback): a character appears on the token
    /// that completes it, earlier tokens show only what they finish (possibly ""). Bytes that never form a valid
    /// character (a window starting mid-character, one still incomplete at the window's end) become U+FFFD as
    /// `tokenizers` renders them.
    public func decodeWindow(_ ids: [Int]) -> [String] {
        // Each step works on a list of logical tokens, as tokenizers' `decode_chain` does; a logical token is a
        // list of pieces that remember which window position they came from, so joined results can be split back.
        var logical: [[Piece]] = ids.enumerated().map { position, id in
            [Piece(owner: position, text: id >= 0 && id < replacedTokens.count ? replacedTokens[id] ?? "" : "")]
        }
        if let decoder {
            logical = TokenDecoder.apply(decoder, to: logical)
        } else {
            for index in logical.indices.dropFirst() where !logical[index].isEmpty { logical[index][0].text = " " + logical[index][0].text }
        }
        var strings = [String](repeating: "", count: ids.count)
        for token in logical {
            for piece in token { strings[piece.owner] += piece.text }
        }
        return strings
    }

    struct Piece {
        var owner: Int
        var text: String
    }

    static func apply(_ step: DecoderStep, to tokens: [[Piece]]) -> [[Piece]] {
        switch step {
        case .sequence(let steps):
            return steps.reduce(tokens) { apply($1, to: $0) }
        case .fuse:
            return [tokens.flatMap { $0 }]
        case .byteLevel:
            var bytes: [UInt8] = [], owners: [Int] = []
            for token in tokens {
                // A token whose characters are not all in the byte alphabet is taken as its UTF-8 (byte_level.rs).
                let mapped = token.allSatisfy { $0.text.unicodeScalars.allSatisfy { alphabetByte($0) != nil } }
                for piece in token {
                    if mapped {
                        for scalar in piece.text.unicodeScalars { bytes.append(alphabetByte(scalar)!); owners.append(piece.owner) }
                    } else {
                        bytes.append(contentsOf: piece.text.utf8)
                        owners.append(contentsOf: repeatElement(piece.owner, count: piece.text.utf8.count))
                    }
                }
            }
            return [decodeUTF8(bytes, owners: owners)]
        case .byteFallback:
            var result: [[Piece]] = []
            var bytes: [UInt8] = [], owners: [Int] = []
            func flush() {
                guard !bytes.isEmpty else { return }
                if String(validating: bytes, as: UTF8.self) != nil {
                    result.append(decodeUTF8(bytes, owners: owners))
                } else {
                    for owner in owners { result.append([Piece(owner: owner, text: "\u{FFFD}")]) }
                }
                bytes.removeAll()
                owners.removeAll()
            }
            for token in tokens {
                if let byte = byteToken(token), let owner = token.last?.owner {
                    bytes.append(byte)
                    owners.append(owner)
                } else {
                    flush()
                    result.append(token)
                }
            }
            flush()
            return result
        case .metaspace(let replacement, let dropInFirst):
            return tokens.enumerated().map { index, token in
                token.map { piece in
                    var text = String.UnicodeScalarView()
                    for scalar in piece.text.unicodeScalars {
                        if scalar == replacement {
                            if !(index == 0 && dropInFirst) { text.append(" ") }
                        } else {
                            text.append(scalar)
                        }
                    }
                    return Piece(owner: piece.owner, text: String(text))
                }
            }
        case .replace(let pattern, let content):
            guard !pattern.isEmpty else { return tokens }
            return tokens.map { token in token.map { Piece(owner: $0.owner, text: replace(pattern, with: content, in: $0.text)) } }
        case .strip(let content, let start, let stop):
            return tokens.map { token in
                var token = token
                var remaining = start
                var index = 0
                while remaining > 0, index < token.count {
                    if token[index].text.isEmpty { index += 1; continue }
                    guard token[index].text.unicodeScalars.first == content else { break }
                    token[index].text.unicodeScalars.removeFirst()
                    remaining -= 1
                }
                remaining = stop
                index = token.count - 1
                while remaining > 0, index >= 0 {
                    if token[index].text.isEmpty { index -= 1; continue }
                    guard token[index].text.unicodeScalars.last == content else { break }
                    token[index].text.unicodeScalars.removeLast()
                    remaining -= 1
                }
                return token
            }
        case .wordPiece(let prefix, let cleanup):
            return tokens.enumerated().map { index, token in
                var token = token
                if index != 0, let first = token.indices.first {
                    if token[first].text.hasPrefix(prefix) {
                        token[first].text.removeFirst(prefix.count)
                    } else {
                        token[first].text = " " + token[first].text
                    }
                }
                if cleanup { for piece in token.indices { token[piece].text = wordPieceCleanup(token[piece].text) } }
                return token
            }
        case .bpeSuffix(let suffix):
            return tokens.enumerated().map { index, token in
                token.map { Piece(owner: $0.owner, text: $0.text.replacingOccurrences(of: suffix, with: index == tokens.count - 1 ? "" : " ", options: .literal)) }
            }
        }
    }

    /// The byte of a `<0xNN>` token (exactly six characters, two hex digits), else nil.
    static func byteToken(_ token: [Piece]) -> UInt8? {
        let text = token.count == 1 ? token[0].text : token.map(\.text).joined()
        guard text.utf8.count == 6 else { return nil }
        let utf8 = Array(text.utf8)
        guard utf8[0] == UInt8(ascii: "<"), utf8[1] == UInt8(ascii: "0"), utf8[2] == UInt8(ascii: "x"), utf8[5] == UInt8(ascii: ">") else { return nil }
        return UInt8(String(decoding: utf8[3..<5], as: UTF8.self), radix: 16)
    }

    /// `tokenizers`' clean-up of spaces before punctuation and contractions (decoders/wordpiece.rs `cleanup`).
    static func wordPieceCleanup(_ text: String) -> String {
        var result = text
        for (from, to) in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                           (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")] {
            result = result.replacingOccurrences(of: from, with: to, options: .literal)
        }
        return result
    }

    /// Decodes bytes as UTF-8, replacing each maximal invalid subpart by U+FFFD (as Rust's `from_utf8_lossy`), and
    /// gives every character to the owner of its last byte: a character split over tokens lands on the one
    /// completing it.
    static func decodeUTF8(_ bytes: [UInt8], owners: [Int]) -> [Piece] {
        var pieces: [Piece] = []
        var parser = Unicode.UTF8.ForwardParser()
        var iterator = bytes.makeIterator()
        var consumed = 0
        func add(_ scalar: Unicode.Scalar, length: Int) {
            consumed += length
            let owner = owners[consumed - 1]
            if let last = pieces.indices.last, pieces[last].owner == owner {
                pieces[last].text.unicodeScalars.append(scalar)
            } else {
                pieces.append(Piece(owner: owner, text: String(Character(scalar))))
            }
        }
        loop: while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid(let encoded):
                add(Unicode.UTF8.decode(encoded), length: encoded.count)
            case .error(let length):
                add("\u{FFFD}", length: length)
            case .emptyInput:
                break loop
            }
        }
        return pieces
    }
}
