import Foundation

/// Turns a chat model's answer into a label, or nil when nothing usable is in it.
///
/// Small and chatty models wrap the phrase in preambles ("Sure! Here is…:"), echo the prompt's
/// ending ("the main thing this neuron does is find …"), restate the subject ("This neuron fires
/// on …"), quote it, bullet it, or add more lines. The parser takes the first line that still has
/// content after all that is stripped, caps its length, and refuses refusals and empty answers.
public enum ExplanationParser {
    /// Labels longer than this are cut at a word boundary.
    public static let maxCharacters = 160

    public static func parse(_ raw: String) -> String? {
        let lines = raw.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: true)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("```") }
        for (position, line) in lines.enumerated() {
            // "Here is the explanation:" introduces the answer on the next line.
            if line.hasSuffix(":") && position + 1 < lines.count && clean(String(line.dropLast())).map(isPreamble) ?? true {
                continue
            }
            guard let label = clean(line) else { continue }
            if isRefusal(label) { return nil }
            return cap(label)
        }
        return nil
    }

    /// The prompt's own ending, echoed back; removed when followed by a space, ':' or nothing.
    private static let echoes = ["the main thing this neuron does is find", "the main thing this neuron does is"]
    /// Labels of the answer; removed only when followed by ':' or '-' ("Explanation: …").
    private static let labels = ["final answer", "explanation", "answer", "label", "description", "summary",
                                 "short phrase", "phrase"]

    private static let subjects = ["this neuron", "the neuron", "this feature", "the feature", "this latent",
                                   "the latent", "this detector", "the detector", "it"]
    private static let adverbs = ["mainly", "mostly", "primarily", "largely", "seems to", "appears to", "likely"]
    private static let verbs = ["is looking for", "looks for", "is activated by", "activates on", "activates for",
                                "activates in response to", "responds to", "fires on", "fires for", "fires in response to",
                                "fires when it sees", "fires", "activates", "detects", "finds", "find", "recognizes",
                                "identifies", "tracks", "is about", "represents", "encodes", "captures"]

    static func clean(_ line: String) -> String? {
        var text = line
        // Markdown: headings, bullets, numbering, emphasis and inline code markers.
        text = text.replacingOccurrences(of: "**", with: "").replacingOccurrences(of: "__", with: "")
            .replacingOccurrences(of: "`", with: "")
        text = stripLeading(text, while: { "#>*-•".contains($0) || $0 == " " })
        if let match = text.range(of: #"^\d+[.)]\s+"#, options: .regularExpression) { text.removeSubrange(match) }

        var changed = true
        while changed {
            changed = false
            text = text.trimmingCharacters(in: .whitespaces)
            let lower = text.lowercased()
            for prefix in echoes + labels where lower.hasPrefix(prefix) {
                let rest = text.dropFirst(prefix.count)
                let separators: String = echoes.contains(prefix) ? ": -" : ":-"
                guard rest.isEmpty || separators.contains(rest.first!) else { continue }
                text = stripLeading(String(rest), while: { $0 == ":" || $0 == "-" || $0 == " " || $0 == "–" })
                changed = true
                break
            }
            if changed { continue }
            if let rest = stripSubjectVerb(text) {
                text = rest
                changed = true
                continue
            }
            if let unquoted = unquote(text) {
                text = unquoted
                changed = true
            }
        }
        while let last = text.last, ".。!;,:".contains(last) || last == " " { text.removeLast() }
        if let unquoted = unquote(text) { text = unquoted }
        text = text.trimmingCharacters(in: .whitespaces)
        guard text.contains(where: { $0.isLetter || $0.isNumber }) else { return nil }
        return text
    }

    /// "This neuron (mainly) fires on X" → "X".
    private static func stripSubjectVerb(_ text: String) -> String? {
        let lower = text.lowercased()
        for subject in subjects where lower.hasPrefix(subject + " ") {
            var rest = String(lower.dropFirst(subject.count + 1))
            var consumed = subject.count + 1
            for adverb in adverbs where rest.hasPrefix(adverb + " ") {
                rest.removeFirst(adverb.count + 1)
                consumed += adverb.count + 1
                break
            }
            for verb in verbs where rest.hasPrefix(verb + " ") || rest.hasPrefix(verb + ":") {
                consumed += verb.count + 1
                let remainder = String(text.dropFirst(consumed))
                // "This neuron fires on" with nothing after it says nothing.
                let bare = remainder.trimmingCharacters(in: .whitespacesAndNewlines.union(.punctuationCharacters)).lowercased()
                return ["", "on", "for", "to", "by", "in", "when"].contains(bare) ? "" : remainder
            }
        }
        return nil
    }

    private static let quotePairs: [(Character, Character)] = [("\"", "\""), ("'", "'"), ("“", "”"), ("‘", "’"), ("«", "»")]

    /// The text without one pair of surrounding quotes, if it is wrapped in a pair and has no other.
    private static func unquote(_ text: String) -> String? {
        guard text.count >= 2, let first = text.first, let last = text.last else { return nil }
        for (open, close) in quotePairs where first == open && last == close {
            let inner = text.dropFirst().dropLast()
            if inner.contains(open) || inner.contains(close) { return nil }
            return String(inner)
        }
        return nil
    }

    private static func stripLeading(_ text: String, while predicate: (Character) -> Bool) -> String {
        String(text.drop(while: predicate))
    }

    private static func isPreamble(_ text: String) -> Bool {
        let lower = text.lowercased()
        return ["here", "sure", "okay", "ok", "certainly", "based on", "looking at", "the answer", "my answer", "explanation",
                "answer", "label"].contains { lower.hasPrefix($0) }
    }

    private static func isRefusal(_ text: String) -> Bool {
        let lower = text.lowercased()
        return ["i'm sorry", "i am sorry", "sorry,", "i cannot", "i can't", "as an ai", "i'm unable", "i am unable",
                "i don't know", "unknown", "n/a", "none"].contains { lower.hasPrefix($0) } && lower.count < 80
            || lower == "nothing" || lower == "nothing in particular"
    }

    private static func cap(_ text: String) -> String {
        guard text.count > maxCharacters else { return text }
        let head = text.prefix(maxCharacters)
        if let space = head.lastIndex(of: " "), head.distance(from: head.startIndex, to: space) > maxCharacters / 2 {
            return String(head[..<space]).trimmingCharacters(in: CharacterSet(charactersIn: " ,;:."))
        }
        return String(head)
    }
}
