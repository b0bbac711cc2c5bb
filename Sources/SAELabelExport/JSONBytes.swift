import Foundation
import SAELabelCore

/// Compact JSON written straight into UTF-8 bytes: the catalog and html exports write ~15 KB per
/// feature, and building a value tree and Strings for it cost more than reading the store.
/// Numbers print as Swift's `description` (the shortest text that reads back the same value), strings
/// as `JSONText` escapes them; with `scriptSafe`, `<`, `>`, `&` are escaped too (see JSONText).
struct JSONBytes {
    var bytes: [UInt8] = []
    let scriptSafe: Bool

    init(scriptSafe: Bool, capacity: Int = 1 << 16) {
        self.scriptSafe = scriptSafe
        bytes.reserveCapacity(capacity)
    }

    mutating func removeAll() { bytes.removeAll(keepingCapacity: true) }

    /// Text known to need no escaping (punctuation, key names, literals).
    mutating func raw(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    /// A comma unless this is the first member of the enclosing object or array.
    mutating func separator() {
        if let last = bytes.last, last != UInt8(ascii: "{") && last != UInt8(ascii: "[") { bytes.append(UInt8(ascii: ",")) }
    }

    /// `"name":` after a separator; names are plain ASCII.
    mutating func key(_ name: StaticString) {
        separator()
        bytes.append(UInt8(ascii: "\""))
        raw(name)
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    mutating func null() { raw("null") }

    /// `value` as JSONText writes it, copying runs that need no escape in bulk.
    mutating func string(_ value: String) {
        var value = value
        let scriptSafe = scriptSafe
        value.withUTF8 { source in
            var scanner = StoredJSON.Scanner(source)
            bytes.append(UInt8(ascii: "\""))
            scanner.copyUnescaped(into: &bytes, scriptSafe: scriptSafe)
            bytes.append(UInt8(ascii: "\""))
        }
    }

    mutating func text(_ value: String?) {
        if let value { string(value) } else { null() }
    }

    mutating func int(_ value: Int) {
        if value >= 0 && value < 10 {
            bytes.append(UInt8(ascii: "0") + UInt8(value))
        } else {
            bytes.append(contentsOf: String(value).utf8)
        }
    }

    mutating func double(_ value: Double) {
        if value.isFinite { bytes.append(contentsOf: value.description.utf8) } else { null() }
    }

    mutating func number(_ value: Double?) {
        if let value { double(value) } else { null() }
    }

    mutating func float(_ value: Float?) {
        if let value, value.isFinite { bytes.append(contentsOf: value.description.utf8) } else { null() }
    }

    mutating func append(_ other: [UInt8]) { bytes.append(contentsOf: other) }
}

/// Re-encodes JSON text the store holds (example arrays, score details) into the bytes the exports
/// print for the decoded values, without decoding into Swift values where that can be avoided.
/// Every function returns false (and leaves `out` as it was) for text it does not recognise; the
/// caller then decodes with Foundation as before, so the output never depends on which path ran.
enum StoredJSON {
    /// How the exports print a stored number: as the Float or the Double it decodes to.
    enum NumberKind {
        case float, double

        /// Most digits of an integral value still printed positionally with ".0" (below 2^24 / 2^53).
        var integerDigits: Int { self == .float ? 7 : 15 }
        /// Most significant digits of a decimal that is certainly the shortest text of the value it
        /// reads as (FLT_DIG / DBL_DIG: such decimals map to distinct values), so it prints as itself.
        var significantDigits: Int { self == .float ? 6 : 15 }
    }

    /// Bytes the string copy must look at: `"`, backslash, controls, 0xE2 (which starts U+2028 and
    /// U+2029) and, script-safe, `<`, `>`, `&`; every other byte is copied as it is (see JSONText.escape).
    static let plainAttention: [Bool] = attentionTable(scriptSafe: false)
    static let scriptSafeAttention: [Bool] = attentionTable(scriptSafe: true)

    private static func attentionTable(scriptSafe: Bool) -> [Bool] {
        (0..<256).map { byte in
            if byte == 0xE2 { return true }
            if byte >= 0x80 { return false }
            if case .verbatim = JSONText.escape(UInt32(byte), scriptSafe: scriptSafe) { return false }
            return true
        }
    }

    /// A stored array of strings, each re-escaped as JSONText writes it. Text our writers stored is
    /// usually that already (see `isPrinted`), and is then copied whole: ~1 GB of tokens at 131k features.
    static func appendStringArray(_ text: String, to out: inout JSONBytes) -> Bool {
        var text = text
        let mark = out.bytes.count
        let scriptSafe = out.scriptSafe
        let ok = text.withUTF8 { source in
            if let unescaped = printedExceptScriptCharacters(stringArray: source, scriptSafe: scriptSafe) {
                if unescaped == 0 {
                    out.bytes.append(contentsOf: source)
                } else {
                    appendEscapingScriptCharacters(source, count: unescaped, to: &out.bytes)
                }
                return true
            }
            var scanner = Scanner(source)
            return scanner.stringArray(into: &out) && scanner.endOfText()
        }
        if !ok { out.bytes.removeSubrange(mark...) }
        return ok
    }

    /// True when `source` is a compact array of strings exactly as `Scanner.stringArray` would print it:
    /// no spaces, every escape the one JSONText writes for its scalar, and nothing left that needs one
    /// (a control, U+2028/2029, and with `scriptSafe` `<`, `>`, `&`). Anything else (older writers' `\/`,
    /// spaces, uppercase hex) is false, and the caller re-escapes string by string.
    static func isPrinted(stringArray source: UnsafeBufferPointer<UInt8>, scriptSafe: Bool) -> Bool {
        printedExceptScriptCharacters(stringArray: source, scriptSafe: scriptSafe) == 0
    }

    /// As `isPrinted`, but raw `<`, `>`, `&` (which the store keeps and script-safe output escapes) are
    /// counted rather than refused: nil when the array is not printed text, else how many there are.
    static func printedExceptScriptCharacters(stringArray source: UnsafeBufferPointer<UInt8>, scriptSafe: Bool) -> Int? {
        let end = source.count - 1  // the closing bracket
        guard end >= 1, source[0] == UInt8(ascii: "["), source[end] == UInt8(ascii: "]") else { return nil }
        if end == 1 { return 0 }
        var scriptCharacters = 0
        let printed = (scriptSafe ? scriptSafeAttention : plainAttention).withUnsafeBufferPointer { attention -> Bool in
            var i = 1
            while true {
                guard i < end, source[i] == UInt8(ascii: "\"") else { return false }
                i += 1
                while true {
                    guard i < end else { return false }
                    let byte = source[i]
                    if !attention[Int(byte)] {
                        i += 1
                        continue
                    }
                    if byte == UInt8(ascii: "\"") { break }
                    if byte == UInt8(ascii: "\\") {
                        guard i + 1 < end else { return false }
                        switch source[i + 1] {
                        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                            i += 2
                        case UInt8(ascii: "u"):
                            guard i + 5 < end, let value = lowercaseHex4(source, at: i + 2),
                                  case .unicode = JSONText.escape(value, scriptSafe: scriptSafe) else { return false }
                            i += 6
                        default:
                            return false
                        }
                        continue
                    }
                    if scriptSafe && (byte == UInt8(ascii: "<") || byte == UInt8(ascii: ">") || byte == UInt8(ascii: "&")) {
                        scriptCharacters += 1
                        i += 1
                        continue
                    }
                    // 0xE2 starts U+2028/2029 (escaped when printed) and other scalars (copied).
                    guard byte == 0xE2, !(i + 2 < end && source[i + 1] == 0x80 && (source[i + 2] == 0xA8 || source[i + 2] == 0xA9))
                    else { return false }
                    i += 1
                }
                i += 1
                if i == end { return true }
                guard source[i] == UInt8(ascii: ",") else { return false }
                i += 1
            }
        }
        return printed ? scriptCharacters : nil
    }

    /// `source` with each of its `count` raw `<`, `>`, `&` written as JSONText's script-safe escape.
    private static func appendEscapingScriptCharacters(_ source: UnsafeBufferPointer<UInt8>, count: Int, to out: inout [UInt8]) {
        var run = 0
        for (i, byte) in source.enumerated() where byte == UInt8(ascii: "<") || byte == UInt8(ascii: ">") || byte == UInt8(ascii: "&") {
            out.append(contentsOf: UnsafeBufferPointer(rebasing: source[run..<i]))
            JSONText.appendScalar(UInt32(byte), to: &out, scriptSafe: true)
            run = i + 1
        }
        out.append(contentsOf: UnsafeBufferPointer(rebasing: source[run...]))
    }

    /// Four lowercase hex digits, as JSONText writes a `\u` escape; nil for anything else.
    private static func lowercaseHex4(_ source: UnsafeBufferPointer<UInt8>, at start: Int) -> UInt32? {
        var value: UInt32 = 0
        for byte in source[start..<start + 4] {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = value << 4 | UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = value << 4 | UInt32(byte - UInt8(ascii: "a") + 10)
            default: return nil
            }
        }
        return value
    }

    /// A stored array of numbers, each printed as the `kind` value it decodes to.
    static func appendNumberArray(_ text: String, kind: NumberKind, to out: inout JSONBytes) -> Bool {
        var text = text
        let mark = out.bytes.count
        let ok = text.withUTF8 { source in
            var scanner = Scanner(source)
            return scanner.numberArray(kind: kind, into: &out.bytes) && scanner.endOfText()
        }
        if !ok { out.bytes.removeSubrange(mark...) }
        return ok
    }

    /// Reads stored JSON bytes; every method returns false on anything outside strict JSON.
    struct Scanner {
        let source: UnsafeBufferPointer<UInt8>
        var position = 0

        init(_ source: UnsafeBufferPointer<UInt8>) { self.source = source }

        var atEnd: Bool { position >= source.count }
        var peek: UInt8? { position < source.count ? source[position] : nil }

        mutating func skipSpace() {
            while position < source.count {
                switch source[position] {
                case 0x20, 0x09, 0x0A, 0x0D: position += 1
                default: return
                }
            }
        }

        mutating func consume(_ byte: UInt8) -> Bool {
            skipSpace()
            guard peek == byte else { return false }
            position += 1
            return true
        }

        /// `[` items `]`, each read by `item`.
        mutating func array(_ item: (inout Scanner) -> Bool) -> Bool {
            guard consume(UInt8(ascii: "[")) else { return false }
            if consume(UInt8(ascii: "]")) { return true }
            repeat {
                skipSpace()
                guard item(&self) else { return false }
            } while consume(UInt8(ascii: ","))
            return consume(UInt8(ascii: "]"))
        }

        mutating func stringArray(into out: inout JSONBytes) -> Bool {
            out.bytes.append(UInt8(ascii: "["))
            let scriptSafe = out.scriptSafe
            var first = true
            let ok = array { scanner in
                if !first { out.bytes.append(UInt8(ascii: ",")) }
                first = false
                return scanner.string(into: &out.bytes, scriptSafe: scriptSafe)
            }
            guard ok else { return false }
            out.bytes.append(UInt8(ascii: "]"))
            return true
        }

        /// A JSON array of numbers, each printed as `number` prints it, appended in one piece: per-byte
        /// appends to the array were most of the cost of the ~5 million activation windows at 131k.
        mutating func numberArray(kind: NumberKind, into out: inout [UInt8]) -> Bool {
            // A number array holds no bracket or string, so its extent is up to the first "]".
            guard let close = source[position...].firstIndex(of: UInt8(ascii: "]")) else { return false }
            let extent = close + 1 - position
            // Each number prints at most `printedNumberRoom` bytes beyond its own text, and is at least one byte.
            var ok = false
            out.append(addingCapacity: extent + (extent / 2 + 1) * Self.printedNumberRoom) { span in
                span.withUnsafeMutableBufferPointer { buffer, count in
                    guard let written = printNumberArray(kind: kind, to: buffer.baseAddress!) else { return }
                    count = written
                    ok = true
                }
            }
            return ok
        }

        private mutating func printNumberArray(kind: NumberKind, to out: UnsafeMutablePointer<UInt8>) -> Int? {
            guard consume(UInt8(ascii: "[")) else { return nil }
            out[0] = UInt8(ascii: "[")
            var count = 1
            if consume(UInt8(ascii: "]")) {
                out[count] = UInt8(ascii: "]")
                return count + 1
            }
            while true {
                skipSpace()
                // A single digit (0: most values of an activation window; 0 to 10: what simulators predict)
                // prints as itself and ".0", as `printNumber` would print it.
                if position + 1 < source.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(source[position]),
                   source[position + 1] == UInt8(ascii: ",") || source[position + 1] == UInt8(ascii: "]") {
                    out[count] = source[position]
                    out[count + 1] = UInt8(ascii: ".")
                    out[count + 2] = UInt8(ascii: "0")
                    count += 3
                    position += 1
                } else {
                    guard let token = numberToken(), let written = printNumber(token, kind: kind, to: out + count) else { return nil }
                    count += written
                }
                if consume(UInt8(ascii: ",")) {
                    out[count] = UInt8(ascii: ",")
                    count += 1
                } else {
                    guard consume(UInt8(ascii: "]")) else { return nil }
                    out[count] = UInt8(ascii: "]")
                    return count + 1
                }
            }
        }

        /// A string literal at the position, re-escaped into `out` as JSONText would write its value.
        mutating func string(into out: inout [UInt8], scriptSafe: Bool) -> Bool {
            guard peek == UInt8(ascii: "\"") else { return false }
            position += 1
            out.append(UInt8(ascii: "\""))
            guard copyUnescaped(into: &out, scriptSafe: scriptSafe, literal: true), peek == UInt8(ascii: "\"") else { return false }
            position += 1
            out.append(UInt8(ascii: "\""))
            return true
        }

        /// Copies text up to a closing quote (`literal`: the content of a stored JSON literal, whose
        /// escapes are decoded) or to the end (raw UTF-8 text), escaping as JSONText does. Runs of
        /// bytes that need no escape, nearly all of them, are appended in one copy each: the exports
        /// write ~1 GB of token text at 131k features. False on text that is not strict JSON.
        @discardableResult
        mutating func copyUnescaped(into out: inout [UInt8], scriptSafe: Bool, literal: Bool = false) -> Bool {
            let attention = scriptSafe ? StoredJSON.scriptSafeAttention : StoredJSON.plainAttention
            var run = position
            while position < source.count {
                let byte = source[position]
                guard attention[Int(byte)] else {
                    position += 1
                    continue
                }
                if run < position { out.append(contentsOf: UnsafeBufferPointer(rebasing: source[run..<position])) }
                switch byte {
                case UInt8(ascii: "\"") where literal:
                    return true
                case UInt8(ascii: "\\") where literal:
                    guard let scalar = escapedScalar() else { return false }
                    JSONText.appendScalar(scalar, to: &out, scriptSafe: scriptSafe)
                case ..<0x20 where literal:
                    return false
                case 0xE2 where position + 2 < source.count && source[position + 1] == 0x80
                            && (source[position + 2] == 0xA8 || source[position + 2] == 0xA9):
                    JSONText.appendScalar(source[position + 2] == 0xA8 ? 0x2028 : 0x2029, to: &out, scriptSafe: scriptSafe)
                    position += 3
                case 0xE2:
                    // Another scalar starting with E2: copied as is (the text is valid UTF-8).
                    out.append(byte)
                    position += 1
                default:
                    JSONText.appendScalar(UInt32(byte), to: &out, scriptSafe: scriptSafe)
                    position += 1
                }
                run = position
            }
            if run < position { out.append(contentsOf: UnsafeBufferPointer(rebasing: source[run..<position])) }
            return !literal
        }

        /// A string literal's value (for the few strings the details hold).
        mutating func stringValue() -> String? {
            guard peek == UInt8(ascii: "\"") else { return nil }
            position += 1
            var value = ""
            var run = position
            func flush(_ scanner: Scanner) {
                if run < scanner.position {
                    value += String(decoding: UnsafeBufferPointer(rebasing: scanner.source[run..<scanner.position]), as: UTF8.self)
                }
            }
            while position < source.count {
                switch source[position] {
                case UInt8(ascii: "\""):
                    flush(self)
                    position += 1
                    return value
                case UInt8(ascii: "\\"):
                    flush(self)
                    guard let scalar = escapedScalar(), let unicode = Unicode.Scalar(scalar) else { return nil }
                    value.unicodeScalars.append(unicode)
                    run = position
                case ..<0x20:
                    return nil
                default:
                    position += 1
                }
            }
            return nil
        }

        /// The scalar of the escape at the position (a backslash), or nil for a bad escape or a lone surrogate.
        mutating func escapedScalar() -> UInt32? {
            guard position + 1 < source.count else { return nil }
            let letter = source[position + 1]
            position += 2
            switch letter {
            case UInt8(ascii: "\""): return 0x22
            case UInt8(ascii: "\\"): return 0x5C
            case UInt8(ascii: "/"): return 0x2F
            case UInt8(ascii: "b"): return 0x08
            case UInt8(ascii: "f"): return 0x0C
            case UInt8(ascii: "n"): return 0x0A
            case UInt8(ascii: "r"): return 0x0D
            case UInt8(ascii: "t"): return 0x09
            case UInt8(ascii: "u"):
                guard let unit = hex4() else { return nil }
                switch unit {
                case 0xD800...0xDBFF:
                    guard position + 1 < source.count, source[position] == UInt8(ascii: "\\"), source[position + 1] == UInt8(ascii: "u")
                    else { return nil }
                    position += 2
                    guard let low = hex4(), (0xDC00...0xDFFF).contains(low) else { return nil }
                    return 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                case 0xDC00...0xDFFF: return nil
                default: return unit
                }
            default: return nil
            }
        }

        mutating func hex4() -> UInt32? {
            guard position + 4 <= source.count else { return nil }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = source[position]
                let digit: UInt32
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
                default: return nil
                }
                value = value << 4 | digit
                position += 1
            }
            return value
        }

        /// The extent of a strict JSON number at the position and what it looks like.
        mutating func numberToken() -> (range: Range<Int>, integerDigits: Int, fraction: Range<Int>?, exponent: Bool)? {
            let start = position
            func digits() -> Int {
                let first = position
                while position < source.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(source[position]) { position += 1 }
                return position - first
            }
            if peek == UInt8(ascii: "-") { position += 1 }
            let integerStart = position
            let integerDigits = digits()
            guard integerDigits > 0, integerDigits == 1 || source[integerStart] != UInt8(ascii: "0") else { return nil }
            var fraction: Range<Int>?
            if peek == UInt8(ascii: ".") {
                position += 1
                let fractionStart = position
                guard digits() > 0 else { return nil }
                fraction = fractionStart..<position
            }
            var exponent = false
            if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
                position += 1
                if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { position += 1 }
                guard digits() > 0 else { return nil }
                exponent = true
            }
            return (start..<position, integerDigits, fraction, exponent)
        }

        /// A number at the position, printed as the `kind` value it decodes to (see `printNumber`).
        mutating func number(kind: NumberKind, into out: inout [UInt8]) -> Bool {
            guard let token = numberToken() else { return false }
            var ok = false
            out.append(addingCapacity: token.range.count + Self.printedNumberRoom) { span in
                span.withUnsafeMutableBufferPointer { buffer, count in
                    guard let written = printNumber(token, kind: kind, to: buffer.baseAddress!) else { return }
                    count = written
                    ok = true
                }
            }
            return ok
        }

        /// Bytes a printed number may take beyond its token's length: a Double's description is at most
        /// 24 bytes ("-2.2250738585072014e-308"), and a copied token gains at most ".0".
        static let printedNumberRoom = 24

        /// Prints `token` as the `kind` value it decodes to at `out` (room for its length plus
        /// `printedNumberRoom`) and returns the bytes written. Text that certainly is that print is copied:
        /// an integer of at most 7 (Float) or 15 (Double) digits gains ".0", and a decimal of at most 6 / 15
        /// significant digits without trailing zeros, from 0.0001 up, is kept. Anything else (longer
        /// decimals, exponents) is parsed and printed, as the decoder would; nil if it is not finite.
        func printNumber(_ token: (range: Range<Int>, integerDigits: Int, fraction: Range<Int>?, exponent: Bool), kind: NumberKind,
                   to out: UnsafeMutablePointer<UInt8>) -> Int? {
            let text = UnsafeBufferPointer(rebasing: source[token.range])
            if !token.exponent {
                if let fraction = token.fraction {
                    let integer = source[token.range.lowerBound] == UInt8(ascii: "-") ? token.range.lowerBound + 1 : token.range.lowerBound
                    let integerIsZero = token.integerDigits == 1 && source[integer] == UInt8(ascii: "0")
                    var leadingZeros = 0
                    if integerIsZero {
                        while leadingZeros < fraction.count && source[fraction.lowerBound + leadingZeros] == UInt8(ascii: "0") { leadingZeros += 1 }
                    }
                    let significant = integerIsZero ? fraction.count - leadingZeros : token.integerDigits + fraction.count
                    let noTrailingZero = source[fraction.upperBound - 1] != UInt8(ascii: "0") || fraction.count == 1
                    let zeroValue = integerIsZero && leadingZeros == fraction.count
                    if token.integerDigits <= kind.integerDigits && noTrailingZero
                        && (zeroValue || (significant <= kind.significantDigits && leadingZeros < 4)) {
                        out.update(from: text.baseAddress!, count: text.count)
                        return text.count
                    }
                } else if token.integerDigits <= kind.integerDigits {
                    out.update(from: text.baseAddress!, count: text.count)
                    out[text.count] = UInt8(ascii: ".")
                    out[text.count + 1] = UInt8(ascii: "0")
                    return text.count + 2
                }
            }
            var printed: String
            switch kind {
            case .float:
                guard let value = Self.parse(text, strtof), value.isFinite else { return nil }
                printed = value.description
            case .double:
                guard let value = Self.parse(text, strtod), value.isFinite else { return nil }
                printed = value.description
            }
            return printed.withUTF8 { bytes in
                out.update(from: bytes.baseAddress!, count: bytes.count)
                return bytes.count
            }
        }

        /// strtof/strtod over a NUL-terminated copy on the stack (no String per number); nil unless
        /// the whole text is the number.
        static func parse<Value>(_ text: UnsafeBufferPointer<UInt8>,
                                 _ convert: (UnsafePointer<CChar>, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Value) -> Value? {
            withUnsafeTemporaryAllocation(of: CChar.self, capacity: text.count + 1) { buffer -> Value? in
                for i in 0..<text.count { buffer[i] = CChar(bitPattern: text[i]) }
                buffer[text.count] = 0
                var end: UnsafeMutablePointer<CChar>?
                let value = convert(buffer.baseAddress!, &end)
                return end == buffer.baseAddress! + text.count ? value : nil
            }
        }

        /// Skips any JSON value at the position.
        mutating func skipValue() -> Bool {
            skipSpace()
            guard let byte = peek else { return false }
            switch byte {
            case UInt8(ascii: "\""):
                var sink: [UInt8] = []
                return string(into: &sink, scriptSafe: false)
            case UInt8(ascii: "["):
                position += 1
                if consume(UInt8(ascii: "]")) { return true }
                repeat { guard skipValue() else { return false } } while consume(UInt8(ascii: ","))
                return consume(UInt8(ascii: "]"))
            case UInt8(ascii: "{"):
                position += 1
                if consume(UInt8(ascii: "}")) { return true }
                repeat {
                    skipSpace()
                    var sink: [UInt8] = []
                    guard string(into: &sink, scriptSafe: false), consume(UInt8(ascii: ":")), skipValue() else { return false }
                } while consume(UInt8(ascii: ","))
                return consume(UInt8(ascii: "}"))
            case UInt8(ascii: "t"): return literal("true")
            case UInt8(ascii: "f"): return literal("false")
            case UInt8(ascii: "n"): return literal("null")
            default: return numberToken() != nil
            }
        }

        mutating func literal(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard position + count <= source.count else { return false }
            for i in 0..<count where source[position + i] != word.utf8Start[i] { return false }
            position += count
            return true
        }

        /// An object key as its bytes in the source.
        struct Key {
            let bytes: UnsafeBufferPointer<UInt8>

            static func ~= (name: StaticString, key: Key) -> Bool {
                guard name.utf8CodeUnitCount == key.bytes.count else { return false }
                return key.bytes.isEmpty || memcmp(name.utf8Start, key.bytes.baseAddress!, key.bytes.count) == 0
            }
        }

        /// Reads an object, calling `member` with each key (the scanner is at the value, which
        /// `member` must consume). Duplicate keys are refused: decoders disagree about them. So are keys
        /// with escapes or non-ASCII bytes and objects of more than 32 keys, which no writer of ours
        /// produces: the caller gives way to Foundation, so the keys compare as bytes here.
        mutating func object(_ member: (Key, inout Scanner) -> Bool) -> Bool {
            guard consume(UInt8(ascii: "{")) else { return false }
            if consume(UInt8(ascii: "}")) { return true }
            return withUnsafeTemporaryAllocation(of: Range<Int>.self, capacity: 32) { seen in
                var count = 0
                repeat {
                    skipSpace()
                    guard count < seen.count, let range = plainKey(), consume(UInt8(ascii: ":")) else { return false }
                    let key = Key(bytes: UnsafeBufferPointer(rebasing: source[range]))
                    for earlier in seen[..<count] where earlier.count == range.count {
                        if range.isEmpty || memcmp(source.baseAddress! + earlier.lowerBound, key.bytes.baseAddress!, range.count) == 0 {
                            return false
                        }
                    }
                    (seen.baseAddress! + count).initialize(to: range)
                    count += 1
                    skipSpace()
                    guard member(key, &self) else { return false }
                } while consume(UInt8(ascii: ","))
                return consume(UInt8(ascii: "}"))
            }
        }

        /// The content of a key literal of printable ASCII without escapes; nil for any other.
        mutating func plainKey() -> Range<Int>? {
            guard peek == UInt8(ascii: "\"") else { return nil }
            let start = position + 1
            var end = start
            while end < source.count {
                let byte = source[end]
                if byte == UInt8(ascii: "\"") {
                    position = end + 1
                    return start..<end
                }
                guard byte >= 0x20, byte < 0x80, byte != UInt8(ascii: "\\") else { return nil }
                end += 1
            }
            return nil
        }

        /// An integer literal that fits an Int.
        mutating func integer() -> Int? {
            guard let token = numberToken(), token.fraction == nil, !token.exponent else { return nil }
            // Accumulated negative, so Int.min fits.
            var value = 0
            let negative = source[token.range.lowerBound] == UInt8(ascii: "-")
            for byte in source[(negative ? token.range.lowerBound + 1 : token.range.lowerBound)..<token.range.upperBound] {
                let (shifted, overflow) = value.multipliedReportingOverflow(by: 10)
                let (next, underflow) = shifted.subtractingReportingOverflow(Int(byte - UInt8(ascii: "0")))
                guard !overflow, !underflow else { return nil }
                value = next
            }
            if negative { return value }
            return value == .min ? nil : -value
        }

        /// A number printed as the Double it decodes to, or nil.
        mutating func printedDouble() -> [UInt8]? {
            var printed: [UInt8] = []
            return number(kind: .double, into: &printed) ? printed : nil
        }

        /// `null` → .some(nil); a number → its printed Double; else nil.
        mutating func optionalDouble() -> [UInt8]?? {
            if peek == UInt8(ascii: "n") { return literal("null") ? .some(nil) : nil }
            return printedDouble().map { .some($0) }
        }

        mutating func optionalString() -> String?? {
            if peek == UInt8(ascii: "n") { return literal("null") ? .some(nil) : nil }
            return stringValue().map { .some($0) }
        }

        mutating func endOfText() -> Bool {
            skipSpace()
            return atEnd
        }
    }
}
