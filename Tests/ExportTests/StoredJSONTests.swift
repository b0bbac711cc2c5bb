import Foundation
import Testing
import SAELabelCore
@testable import SAELabelStore
@testable import SAELabelExport

/// The shortcuts of StoredJSON (a stored token array copied whole, a single digit printed without parsing,
/// object keys compared as bytes) give what the general scanner gives, or give way to it.
@Suite struct StoredJSONTests {
    /// The general path: every string re-escaped one by one.
    static func rescanned(_ text: String, scriptSafe: Bool) -> [UInt8]? {
        var text = text
        var out = JSONBytes(scriptSafe: scriptSafe)
        let ok = text.withUTF8 { source in
            var scanner = StoredJSON.Scanner(source)
            return scanner.stringArray(into: &out) && scanner.endOfText()
        }
        return ok ? out.bytes : nil
    }

    static func appended(_ text: String, scriptSafe: Bool) -> [UInt8]? {
        var out = JSONBytes(scriptSafe: scriptSafe)
        return StoredJSON.appendStringArray(text, to: &out) ? out.bytes : nil
    }

    static func isPrinted(_ text: String, scriptSafe: Bool) -> Bool {
        var text = text
        return text.withUTF8 { StoredJSON.isPrinted(stringArray: $0, scriptSafe: scriptSafe) }
    }

    @Test func tokenArraysAsTheStoreWritesThemAreCopiedWhole() {
        // Strings as the store writes them (JSONText, not script-safe), from an alphabet of every case.
        let alphabet: [String] = ["a", " the", "\"", "\\", "/", "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{1}", "\u{1f}", "\u{7f}",
                                  "<", ">", "&", "é", "日本", "🚀", "\u{2028}", "\u{2029}", "\u{2027}", "\u{20ac}", "]", ",", "[", ""]
        var generator = SplitMix64(state: 17)
        var copiedPlain = 0, copiedScriptSafe = 0
        for _ in 0..<2_000 {
            let tokens = (0..<Int(generator.next() % 6)).map { _ in
                (0..<Int(generator.next() % 4)).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] }.joined()
            }
            var stored: [UInt8] = [UInt8(ascii: "[")]
            for (index, token) in tokens.enumerated() {
                if index > 0 { stored.append(UInt8(ascii: ",")) }
                JSONText.appendString(token, to: &stored)
            }
            stored.append(UInt8(ascii: "]"))
            let text = String(decoding: stored, as: UTF8.self)
            for scriptSafe in [false, true] {
                let expected = Self.rescanned(text, scriptSafe: scriptSafe)
                #expect(expected != nil, "\(text)")
                #expect(Self.appended(text, scriptSafe: scriptSafe) == expected, "\(text)")
                if Self.isPrinted(text, scriptSafe: scriptSafe) {
                    #expect(expected == stored, "\(text) was copied whole but prints differently")
                    if scriptSafe { copiedScriptSafe += 1 } else { copiedPlain += 1 }
                }
            }
            // Not script-safe, the store's own text is what the export prints.
            #expect(Self.isPrinted(text, scriptSafe: false), "\(text)")
        }
        #expect(copiedPlain == 2_000)
        #expect(copiedScriptSafe > 100 && copiedScriptSafe < 2_000)
    }

    @Test func textOtherWritersStoredIsReescaped() {
        let cases: [(String, scriptSafe: Bool)] = [
            (#"["a\/b"]"#, false), (#"["\b"]"#, false), (#"["\f"]"#, false), (#"["\u001F"]"#, false), (#"["\u000a"]"#, false),
            (#"["\u003c"]"#, false), (#"["\u00e9"]"#, false), (#"["\ud83d\ude80"]"#, false), (#"[ "a"]"#, false), (#"["a" ]"#, false),
            (#"["a",]"#, false), (#"["a""b"]"#, false), ("[\"a\"] ", false), ("[\"\u{2028}\"]", false), ("[\"\u{1}\"]", false),
            (#"["<"]"#, true), (#"["&"]"#, true), (#"["a>"]"#, true), (#"["a]"#, false), (#"[""#, false), ("[", false), ("", false),
        ]
        for (text, scriptSafe) in cases {
            #expect(!Self.isPrinted(text, scriptSafe: scriptSafe), "\(text)")
            #expect(Self.appended(text, scriptSafe: scriptSafe) == Self.rescanned(text, scriptSafe: scriptSafe), "\(text)")
        }
        // Escapes JSONText writes are kept as they are; what script-safe text needs escaped is, when it already is.
        let printed: [(String, scriptSafe: Bool)] = [(#"["\u2028\u0001\n\t\r\"\\"]"#, false), (#"["\u2029x"]"#, true),
                                                    (#"["\u003c\u003e\u0026"]"#, true), ("[]", true), (#"[""]"#, true)]
        for (text, scriptSafe) in printed {
            #expect(Self.isPrinted(text, scriptSafe: scriptSafe), "\(text)")
            #expect(Self.appended(text, scriptSafe: scriptSafe) == Array(text.utf8), "\(text)")
        }
    }

    @Test func singleDigitsPrintAsTheGeneralPathPrintsThem() {
        for text in ["[0]", "[0,0]", "[ 0 , 0 ]", "[0,1,0.5,0.0,3]", "[9,10,7,-3,2.5]", "[5]", "[1e0,0]", "[0", "[0,]", "[]", "[ ]"] {
            for kind in [StoredJSON.NumberKind.float, .double] {
                var fast: [UInt8] = []
                var text = text
                let ok = text.withUTF8 { source in
                    var scanner = StoredJSON.Scanner(source)
                    return scanner.numberArray(kind: kind, into: &fast) && scanner.endOfText()
                }
                // The reference: each number as the Float or Double it decodes to, by Foundation.
                // Not strict JSON (Foundation reads a trailing comma): refused, as the general path refuses it.
                if text == "[0" || text == "[0,]" {
                    #expect(!ok, "\(text)")
                    continue
                }
                let decoded = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [NSNumber]
                #expect(ok && decoded != nil, "\(text)")
                guard let decoded else { continue }
                let printed = decoded.map { kind == .float ? $0.floatValue.description : $0.doubleValue.description }
                #expect(String(decoding: fast, as: UTF8.self) == "[" + printed.joined(separator: ",") + "]", "\(text)")
            }
        }
    }

    @Test func objectKeysCompareAsBytesAndUnusualKeysGiveWay() {
        func keys(_ text: String) -> [String]? {
            var text = text
            return text.withUTF8 { source in
                var scanner = StoredJSON.Scanner(source)
                var seen: [String] = []
                let ok = scanner.object { key, scanner in
                    seen.append(String(decoding: key.bytes, as: UTF8.self))
                    if case "n" = key { return scanner.integer() != nil }
                    return scanner.skipValue()
                } && scanner.endOfText()
                return ok ? seen : nil
            }
        }
        #expect(keys(#"{"n": 1, "a": [1, {"b": null}], "": "x"}"#) == ["n", "a", ""])
        #expect(keys(#"{"n": 1.5}"#) == nil)
        #expect(keys(#"{"a": 1, "a": 2}"#) == nil)
        #expect(keys(#"{"a": 1, "ab": 2, "b": 3}"#) == ["a", "ab", "b"])
        #expect(keys(#"{"\u0061": 1}"#) == nil)
        #expect(keys(#"{"é": 1}"#) == nil)
        let many = "{" + (0..<33).map { "\"k\($0)\":0" }.joined(separator: ",") + "}"
        #expect(keys(many) == nil)
        #expect(keys("{" + (0..<32).map { "\"k\($0)\":0" }.joined(separator: ",") + "}")?.count == 32)
    }

    @Test func integersReadLikeIntOfTheirText() {
        let cases: [(String, Int?)] = [("0", 0), ("-0", 0), ("7", 7), ("-12", -12), ("9223372036854775807", .max),
                                       ("-9223372036854775808", .min), ("9223372036854775808", nil), ("-9223372036854775809", nil),
                                       ("12345678901234567890", nil), ("1.0", nil), ("1e2", nil), ("01", nil), ("-", nil)]
        for (text, expected) in cases {
            var copy = text
            let value = copy.withUTF8 { source -> Int? in
                var scanner = StoredJSON.Scanner(source)
                guard let value = scanner.integer(), scanner.endOfText() else { return nil }
                return value
            }
            #expect(value == expected, "\(text)")
        }
    }

    @Test func histogramsReadAsJSONDecoderReadsThem() throws {
        let written = [[], [0], [400, 400, 200, 0, -3], [Int.max / 1000, -7]].map(CompactJSON.integers)
        for text in written {
            let fast = try #require(JobStore.integers(text), "\(text)")
            #expect(fast == (try JSONDecoder().decode([Int].self, from: Data(text.utf8))), "\(text)")
        }
        // Anything else gives way to JSONDecoder.
        for text in ["[ 1]", "[1,]", "[,1]", "[01]", "[-]", "[1-2]", "[1.0]", "[1e2]", "1", "[", "[--1]", "[1234567890123456789]", "[1]2]"] {
            #expect(JobStore.integers(text) == nil, "\(text)")
        }
    }
}
