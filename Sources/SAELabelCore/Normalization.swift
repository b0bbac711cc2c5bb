import Foundation

/// OpenAI's activation-record formatting (SPEC §4), shared by the explainer and the simulators.
public enum ActivationFormat {
    /// `max over the records of max(relu(a))`.
    public static func maxActivation(_ windows: [[Float]]) -> Float {
        var best: Float = 0
        for window in windows { for value in window where value > best { best = value } }
        return best
    }

    /// `min(10, floor(10·relu(a)/max_act))`, all zeros when max_act ≤ 0.
    public static func normalize(_ activations: [Float], maxActivation: Float) -> [Int] {
        guard maxActivation > 0 else { return Array(repeating: 0, count: activations.count) }
        return activations.map { value in
            let relu = max(0, value)
            return min(10, Int((10 * relu / maxActivation).rounded(.down)))
        }
    }

    /// One token per line as `token<TAB>N`; `nil` values are written `unknown`.
    public static func recordLines(tokens: [String], values: [Int?]) -> String {
        zip(tokens, values).map { token, value in
            "\(token)\t\(value.map(String.init) ?? "unknown")"
        }.joined(separator: "\n")
    }

    /// `"\n<start>\n" + "\n<end>\n<start>\n".join(records) + "\n<end>\n"`.
    public static func wrapRecords(_ records: [String]) -> String {
        "\n<start>\n" + records.joined(separator: "\n<end>\n<start>\n") + "\n<end>\n"
    }

    /// The non-zero (token, value) pairs, listed again when fewer than 20% of tokens are non-zero.
    public static func sparseSummary(tokens: [[String]], values: [[Int]]) -> String? {
        var total = 0
        var nonZero: [String] = []
        for (windowTokens, windowValues) in zip(tokens, values) {
            total += windowValues.count
            for (token, value) in zip(windowTokens, windowValues) where value > 0 {
                nonZero.append("\(token)\t\(value)")
            }
        }
        guard total > 0, !nonZero.isEmpty, Double(nonZero.count) < 0.2 * Double(total) else { return nil }
        return nonZero.joined(separator: "\n")
    }

    /// The compact explainer rendering (`marked` style): a window as running text, each token with a
    /// normalized value of 1 or more written `<<token|N>>` (its leading whitespace kept outside the
    /// marks), line breaks and tabs inside tokens escaped as in `token<TAB>N` records. About 1.1 prompt
    /// tokens per window token, against about 4 for the records.
    public static func marked(tokens: [String], values: [Int]) -> String {
        var out = ""
        for (token, value) in zip(tokens, values) {
            let shown = escapedToken(token)
            guard value > 0 else { out += shown; continue }
            // " cat" reads as ` <<cat|7>>`; a token of spaces only keeps them inside the marks.
            let word = String(shown.drop { $0 == " " })
            let lead = word.isEmpty ? "" : String(shown.prefix(shown.count - word.count))
            out += lead + "<<" + (word.isEmpty ? shown : word) + "|\(value)>>"
        }
        return out
    }

    /// A token as shown on one line (a `token<TAB>N` record, a marked window): newlines and tabs inside
    /// a token would break the line format, so they are written as the visible escapes `\n`, `\r`, `\t`.
    public static func escapedToken(_ token: String) -> String {
        var out = ""
        for character in token {
            switch character {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\r\n": out += "\\r\\n"
            default: out.append(character)
            }
        }
        return out
    }

    /// delphi's alternative: tokens above `threshold × window max` wrapped in `<<` `>>`
    /// (consecutive highlighted tokens share one pair of brackets).
    public static func highlighted(tokens: [String], activations: [Float], threshold: Float = 0.3) -> String {
        let windowMax = activations.max() ?? 0
        var out = ""
        var open = false
        for (token, value) in zip(tokens, activations) {
            let on = windowMax > 0 && value > threshold * windowMax
            if on && !open { out += "<<"; open = true }
            if !on && open { out += ">>"; open = false }
            out += token
        }
        if open { out += ">>" }
        return out
    }
}
