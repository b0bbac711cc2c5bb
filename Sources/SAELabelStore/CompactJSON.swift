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

    /// Shortest round-tripping decimal of each value; a non-finite value (collect refuses them) is written 0.
    static func floats(_ values: [Float]) -> String {
        var out = "["
        out.reserveCapacity(values.count * 6)
        for (index, value) in values.enumerated() {
            if index > 0 { out += "," }
            // Most values of a window are 0: skip the shortest-decimal search for them.
            out += value == 0 ? "0" : value.isFinite ? value.description : "0"
        }
        return out + "]"
    }

    static func integers(_ values: [Int]) -> String {
        "[" + values.map(String.init).joined(separator: ",") + "]"
    }
}
