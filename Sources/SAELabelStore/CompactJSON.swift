/// JSON text for the plain arrays the store keeps (tokens, activations, histograms), written directly:
/// Foundation's JSONEncoder costs more than the SQLite insert itself on collect's bulk write.
/// The output is standard JSON that JSONDecoder reads back.
enum CompactJSON {
    static func strings(_ values: [String]) -> String {
        var out = "["
        out.reserveCapacity(values.count * 8)
        for (index, value) in values.enumerated() {
            if index > 0 { out += "," }
            out += "\""
            for scalar in value.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                case _ where scalar.value < 0x20:
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                default: out.unicodeScalars.append(scalar)
                }
            }
            out += "\""
        }
        return out + "]"
    }

    /// Shortest round-tripping decimal of each value; a non-finite value (collect refuses them) is written 0.
    static func floats(_ values: [Float]) -> String {
        var out = "["
        out.reserveCapacity(values.count * 6)
        for (index, value) in values.enumerated() {
            if index > 0 { out += "," }
            out += value.isFinite ? value.description : "0"
        }
        return out + "]"
    }

    static func integers(_ values: [Int]) -> String {
        "[" + values.map(String.init).joined(separator: ",") + "]"
    }
}
