/// JSON string literals written directly, for the writers that stream JSON (the store's example
/// arrays, the exports) where Foundation's encoders cost more than the rest of the work.
public enum JSONText {
    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// How one scalar is written inside a JSON string literal. U+2028/2029 are always escaped (they
    /// end a line in JavaScript); with `scriptSafe`, `<`, `>` and `&` are too, so the text can sit
    /// inside `<script>`. Shared by every writer so they all give the same bytes.
    public enum Escape {
        case verbatim
        /// A two-character escape such as `\n`; the associated byte is the letter after the backslash.
        case short(UInt8)
        /// `\u` and four lowercase hex digits.
        case unicode
    }

    @inline(__always)
    public static func escape(_ value: UInt32, scriptSafe: Bool) -> Escape {
        switch value {
        case 0x22: return .short(0x22)  // "
        case 0x5C: return .short(0x5C)  // backslash
        case 0x0A: return .short(UInt8(ascii: "n"))
        case 0x0D: return .short(UInt8(ascii: "r"))
        case 0x09: return .short(UInt8(ascii: "t"))
        case 0x3C, 0x3E, 0x26: return scriptSafe ? .unicode : .verbatim  // < > &
        case 0x2028, 0x2029: return .unicode
        default: return value < 0x20 ? .unicode : .verbatim
        }
    }

    /// Appends `value` as a JSON string literal (see `escape` for what is escaped).
    public static func appendString(_ value: String, to out: inout String, scriptSafe: Bool = false) {
        out += "\""
        for scalar in value.unicodeScalars {
            switch escape(scalar.value, scriptSafe: scriptSafe) {
            case .verbatim: out.unicodeScalars.append(scalar)
            case .short(let letter): out.unicodeScalars.append("\\"); out.unicodeScalars.append(Unicode.Scalar(letter))
            case .unicode:
                var bytes: [UInt8] = []
                appendUnicodeEscape(scalar.value, to: &bytes)
                out += String(decoding: bytes, as: UTF8.self)
            }
        }
        out += "\""
    }

    /// The same literal as `appendString(_:to:scriptSafe:)`, as UTF-8 bytes.
    public static func appendString(_ value: String, to out: inout [UInt8], scriptSafe: Bool = false) {
        out.append(0x22)
        for scalar in value.unicodeScalars {
            appendScalar(scalar.value, to: &out, scriptSafe: scriptSafe)
        }
        out.append(0x22)
    }

    /// Appends one scalar of a string literal's content, escaped as `escape` says.
    @inline(__always)
    public static func appendScalar(_ value: UInt32, to out: inout [UInt8], scriptSafe: Bool) {
        switch escape(value, scriptSafe: scriptSafe) {
        case .verbatim: appendUTF8(value, to: &out)
        case .short(let letter): out.append(0x5C); out.append(letter)
        case .unicode: appendUnicodeEscape(value, to: &out)
        }
    }

    @inline(__always)
    static func appendUTF8(_ value: UInt32, to out: inout [UInt8]) {
        switch value {
        case ..<0x80:
            out.append(UInt8(value))
        case ..<0x800:
            out.append(UInt8(0xC0 | (value >> 6)))
            out.append(UInt8(0x80 | (value & 0x3F)))
        case ..<0x10000:
            out.append(UInt8(0xE0 | (value >> 12)))
            out.append(UInt8(0x80 | ((value >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (value & 0x3F)))
        default:
            out.append(UInt8(0xF0 | (value >> 18)))
            out.append(UInt8(0x80 | ((value >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((value >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (value & 0x3F)))
        }
    }

    static func appendUnicodeEscape(_ value: UInt32, to out: inout [UInt8]) {
        out.append(0x5C)
        out.append(UInt8(ascii: "u"))
        for shift in stride(from: 12, through: 0, by: -4) {
            out.append(hex[Int((value >> UInt32(shift)) & 0xF)])
        }
    }
}
