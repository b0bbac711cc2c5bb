import SAELabelCore

/// JSON text for the plain arrays the store keeps (tokens, activations, histograms), written directly:
/// Foundation's JSONEncoder costs more than the SQLite insert itself on collect's bulk write.
/// The output is standard JSON that JSONDecoder reads back.
enum CompactJSON {
    static func strings(_ values: [String]) -> String {
        var out = "["
        out.reserveCapacity(values.count * 8)
        for (index, value) in values.enumerated() {
            if index > 0 { out += "," }
            JSONText.appendString(value, to: &out)
        }
        return out + "]"
    }

    /// Shortest round-tripping decimal of each value, appended to `bytes` as a JSON array; a non-finite value
    /// (collect refuses them) is written 0. Bytes, not a String: collect's bulk write binds them in place.
    static func appendFloats(_ values: [Float], to bytes: inout [UInt8]) {
        bytes.append(UInt8(ascii: "["))
        for (index, value) in values.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            // Most values of a window are 0: skip the shortest-decimal search for them.
            if value == 0 || !value.isFinite {
                bytes.append(UInt8(ascii: "0"))
            } else {
                bytes.append(contentsOf: value.description.utf8)
            }
        }
        bytes.append(UInt8(ascii: "]"))
    }

    static func integers(_ values: [Int]) -> String {
        "[" + values.map(String.init).joined(separator: ",") + "]"
    }
}
