import Foundation
import SAELabelCore

/// A small JSON tree with ordered keys, for the exports' few non-streamed objects (html meta,
/// Neuronpedia rows); printed by JSONBytes like everything else the exports write.
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

    func write(into out: inout JSONBytes) {
        switch self {
        case .null: out.null()
        case .bool(let value): value ? out.raw("true") : out.raw("false")
        case .int(let value): out.int(value)
        case .double(let value): out.double(value)
        case .float(let value): out.float(value)
        case .string(let value): out.string(value)
        case .array(let values):
            out.raw("[")
            for value in values {
                out.separator()
                value.write(into: &out)
            }
            out.raw("]")
        case .object(let members):
            out.raw("{")
            for (key, value) in members {
                out.separator()
                out.string(key)
                out.raw(":")
                value.write(into: &out)
            }
            out.raw("}")
        }
    }

    /// Compact JSON text. `scriptSafe` also escapes `<`, `>` and `&` so the text can sit inside a
    /// JavaScript file or `<script>` element without ending it (U+2028/2029 always are).
    func serialized(scriptSafe: Bool = false) -> String {
        var out = JSONBytes(scriptSafe: scriptSafe, capacity: 256)
        write(into: &out)
        return String(decoding: out.bytes, as: UTF8.self)
    }
}
