import Foundation
import SAELabelCore

/// A small JSON tree with ordered keys, serialized by hand so exports control number formatting and
/// escaping (and can stream one feature at a time).
indirect enum JSONValue {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case float(Float)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    static func number(_ value: Double?) -> JSONValue { value.map(JSONValue.double) ?? .null }
    static func text(_ value: String?) -> JSONValue { value.map(JSONValue.string) ?? .null }

    /// Serializes compactly. `scriptSafe` also escapes `<`, `>`, `&`, U+2028 and U+2029 so the text
    /// can sit inside a JavaScript file or `<script>` element without ending it.
    func write(into out: inout String, scriptSafe: Bool) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .int(let value): out += String(value)
        case .double(let value): out += value.isFinite ? String(value) : "null"
        case .float(let value): out += value.isFinite ? String(value) : "null"
        case .string(let value): JSONText.appendString(value, to: &out, scriptSafe: scriptSafe)
        case .array(let values):
            out += "["
            for (i, value) in values.enumerated() {
                if i > 0 { out += "," }
                value.write(into: &out, scriptSafe: scriptSafe)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (i, (key, value)) in members.enumerated() {
                if i > 0 { out += "," }
                JSONText.appendString(key, to: &out, scriptSafe: scriptSafe)
                out += ":"
                value.write(into: &out, scriptSafe: scriptSafe)
            }
            out += "}"
        }
    }

    func serialized(scriptSafe: Bool = false) -> String {
        var out = ""
        write(into: &out, scriptSafe: scriptSafe)
        return out
    }

}
