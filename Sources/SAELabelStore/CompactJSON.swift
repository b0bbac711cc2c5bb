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

    /// Bytes one value can take in `appendFloats`: a comma and `Float.description`, whose longest forms
    /// ("-1.1754942e-38", "-0.00012345678") are 14 bytes.
    static let floatTextBound = 24

    /// Shortest round-tripping decimal of each value (`Float.description`), appended to `bytes` as a JSON array;
    /// a non-finite value (collect refuses them) is written 0. Bytes, not a String: collect's bulk write binds
    /// them in place. The window is written into a scratch buffer and appended once: appending value by value
    /// checked the array's uniqueness and capacity for every byte, which cost more than the decimal conversion.
    static func appendFloats(_ values: [Float], to bytes: inout [UInt8]) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 2 + values.count * floatTextBound) { scratch in
            var end = 0
            func put(_ byte: UInt8) {
                scratch[end] = byte
                end += 1
            }
            put(UInt8(ascii: "["))
            for (index, value) in values.enumerated() {
                if index > 0 { put(UInt8(ascii: ",")) }
                // Most values of a window are 0: skip the shortest-decimal search for them.
                if value == 0 || !value.isFinite {
                    put(UInt8(ascii: "0"))
                } else {
                    var text = value.description
                    text.withUTF8 { utf8 in
                        precondition(utf8.count < floatTextBound, "Float.description longer than CompactJSON.floatTextBound")
                        for byte in utf8 { put(byte) }
                    }
                }
            }
            put(UInt8(ascii: "]"))
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: scratch[0..<end]))
        }
    }

    static func integers(_ values: [Int]) -> String {
        "[" + values.map(String.init).joined(separator: ",") + "]"
    }
}
