/// JSON string literals written directly, for the writers that stream JSON (the store's example
/// arrays, the exports) where Foundation's encoders cost more than the rest of the work.
public enum JSONText {
    private static let hex: [Character] = Array("0123456789abcdef")

    /// Appends `value` as a JSON string literal. U+2028/2029 are always escaped (they end a line in
    /// JavaScript); with `scriptSafe`, `<`, `>` and `&` are too, so the text can sit inside `<script>`.
    public static func appendString(_ value: String, to out: inout String, scriptSafe: Bool = false) {
        out += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "<" where scriptSafe, ">" where scriptSafe, "&" where scriptSafe, "\u{2028}", "\u{2029}":
                appendEscape(scalar.value, to: &out)
            default:
                if scalar.value < 0x20 {
                    appendEscape(scalar.value, to: &out)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }

    private static func appendEscape(_ value: UInt32, to out: inout String) {
        out += "\\u"
        for shift in stride(from: 12, through: 0, by: -4) {
            out.append(hex[Int((value >> UInt32(shift)) & 0xF)])
        }
    }
}
