import Foundation
import TestSupport
import Testing
import SAELabelCore
@testable import SAELabelStore
@testable import SAELabelExport

/// The catalog and html exports give byte for byte what the per-feature, decode-everything exports
/// gave (ReferenceExport), on stores written today, on stores whose rows older writers produced, and
/// on JSON no writer of ours produces.
@Suite struct ExportBytesTests {
    func expectSameBytes(_ store: JobStore, _ directory: TempDirectory, filter: ExportFilter = .all,
                         sourceLocation: SourceLocation = #_sourceLocation) throws {
        let catalog = directory.file("catalog-\(UUID().uuidString).jsonl")
        _ = try Exporter.export(store: store, format: .catalog, to: catalog, filter: filter)
        let expected = try ReferenceExport.catalog(store, filter: filter)
        #expect(!expected.isEmpty, sourceLocation: sourceLocation)
        let written = try readText(catalog)
        #expect(written == expected, "catalog: first difference at \(firstDifference(written, expected))", sourceLocation: sourceLocation)

        let html = directory.file("html-\(UUID().uuidString)")
        _ = try Exporter.export(store: store, format: .html, to: html, filter: filter)
        let (features, index) = try ReferenceExport.htmlData(store, filter: filter)
        let writtenFeatures = try readText(html + "/data/features-0000.js")
        #expect(writtenFeatures == features, "html features: first difference at \(firstDifference(writtenFeatures, features))",
                sourceLocation: sourceLocation)
        #expect(try readText(html + "/data/index-0000.js") == index, sourceLocation: sourceLocation)
    }

    func firstDifference(_ a: String, _ b: String) -> String {
        let x = Array(a.utf8), y = Array(b.utf8)
        let i = (0..<min(x.count, y.count)).first { x[$0] != y[$0] } ?? min(x.count, y.count)
        func around(_ bytes: [UInt8]) -> String { String(decoding: bytes[max(0, i - 60)..<min(bytes.count, i + 60)], as: UTF8.self) }
        return "byte \(i): got …\(around(x))… want …\(around(y))…"
    }

    @Test func nastyStoreMatchesTheReference() throws {
        let fixture = try NastyStore()
        try expectSameBytes(fixture.store, fixture.directory)
        try expectSameBytes(fixture.store, fixture.directory, filter: ExportFilter(minScore: 0.3))
        try expectSameBytes(fixture.store, fixture.directory, filter: ExportFilter(states: [.collected, .failed, .dead]))
        try expectSameBytes(fixture.store, fixture.directory, filter: ExportFilter(selection: FeatureSelection(set: .list([0, 3, 4]))))
        try expectSameBytes(fixture.store, fixture.directory,
                            filter: ExportFilter(selection: FeatureSelection(set: .range(1, 4), shard: .init(index: 1, count: 2))))
    }

    @Test func realisticStoreMatchesTheReference() throws {
        let fixture = try RealisticStore()
        try expectSameBytes(fixture.store, fixture.directory)
    }

    @Test func olderWritersAndUnusualJSONMatchTheReference() async throws {
        let fixture = try NastyStore()
        let store = fixture.store
        try store.beginPass("second")
        // Rows as older versions wrote them (JSONEncoder: "\/", "\b", integral floats without ".0", raw U+2028)
        // and JSON no writer produces (spaces, exponents, trailing zeros, surrogate pairs, long decimals).
        let encoder = JSONEncoder()
        func encoded<T: Encodable>(_ value: T) -> String { String(decoding: try! encoder.encode(value), as: UTF8.self) }
        let legacyTokens = encoded(Nasty.tokens + ["a/b", "\u{8}\u{c}", "\u{7f}", "\u{1f}"])
        let legacyActivations = encoded((0..<20).map { Float($0) * 0.5 } + [16_777_216, 1e-5, -0.0])
        let rows: [(Int, String, Int, String, String)] = [
            (0, "explain", 0, legacyTokens, legacyActivations),
            (0, "explain", 1, #"[ "\u00e9\ud83d\ude80" , "\u2028<&>", "x\/y" ]"#,
             "[ 0 , 1.50, 1e-05,16777216, -0, 0.000012, 3.4028235e+38, 0.1000000001, 12345678, 0.00, 2E2 ]"),
            (0, "heldout", 0, "[]", "[]"),
            (1, "explain", 0, legacyTokens, "[0.0001,0.00001,123456.7,1234567.0,0.30000001]"),
        ]
        let script = """
            import json, sqlite3, sys
            db = sqlite3.connect(sys.argv[1])
            for feature, split, ordinal, tokens, activations in json.load(open(sys.argv[2])):
                # A window of its own: other examples may show the one this example shows.
                window = db.execute("INSERT INTO text_window(sequence, start, tokens) "
                    "SELECT w.sequence, w.start, ? FROM example e JOIN text_window w ON w.id = e.text_window "
                    "WHERE e.feature = ? AND e.split = ? AND e.ordinal = ?", (tokens, feature, split, ordinal)).lastrowid
                assert db.execute("SELECT changes()").fetchone()[0] == 1
                db.execute("UPDATE example SET text_window = ?, activations = ? WHERE feature = ? AND split = ? AND ordinal = ?",
                           (window, activations, feature, split, ordinal))
                assert db.execute("SELECT changes()").fetchone()[0] == 1
            db.commit()
            """
        let rowsJSON = try JSONSerialization.data(withJSONObject: rows.map { [$0.0, $0.1, $0.2, $0.3, $0.4] as [Any] })
        let rowsFile = try fixture.directory.write("rows.json", String(decoding: rowsJSON, as: UTF8.self))
        let result = try await runProcess("/usr/bin/env", ["python3", "-c", script, store.path, rowsFile])
        #expect(result.status == 0, "\(result.stderr)")

        // Score details beyond what the scorers write: spaces, unknown and nested keys, integral doubles,
        // escapes, exponents; and some that do not decode (duplicate key, a fractional count, a null count).
        let e0 = try store.saveExplanation(feature: 0, text: "second label", explainerModel: "m", promptHash: "p", rawResponse: nil)
        try store.saveScore(explanation: e0, score: StoredScore(scorer: "simulation", value: 0.5, model: "m", promptHash: "s", details: #"""
            { "failedWindows" : 0, "retriedWindows":2, "rsquared": 1, "absoluteDevExplained": 2.50e-3,
              "extra": {"a": [1, {"b": null}, "\"x\""], "c": true},
              "windows": [ {"heldoutOrdinal": 0, "simulated": [1, 2.50, 3e0, -0, 0.1, 10], "error": null},
                           {"heldoutOrdinal": 0, "simulated": [9]}, {"heldoutOrdinal": 1, "simulated": null, "error": "bad \u00e9"} ],
              "undefinedReason": "no \"variance\" \u00e9 \ud83d\ude80 <b>&" }
            """#), completesFeature: false)
        try store.saveScore(explanation: e0, score: StoredScore(scorer: "detection", value: 0.7, model: "m", promptHash: "d", details: """
            {"balancedAccuracy":1,"f1":0.5,"precision":0.25,"recall":1e-1,"truePositives":3,"trueNegatives":4,
             "falsePositives":0,"falseNegatives":1,"failedPrompts":0,"unused":[1,2]}
            """), completesFeature: false)
        try store.saveScore(explanation: e0, score: StoredScore(scorer: "fuzzing", value: 0.6, model: "m", promptHash: "f", details: """
            {"balancedAccuracy":0.5,"f1":0.5,"precision":0.5,"recall":0.5,"truePositives":3,"trueNegatives":4,
             "falsePositives":0,"falseNegatives":1,"failedPrompts":0,"failedPrompts":1}
            """), completesFeature: true)
        let e1 = try store.saveExplanation(feature: 1, text: "another", explainerModel: "m", promptHash: "p", rawResponse: nil)
        try store.saveScore(explanation: e1, score: StoredScore(scorer: "simulation", value: nil, model: "m", promptHash: "s",
                                                                details: #"{"failedWindows":1.0,"retriedWindows":0,"windows":[]}"#),
                            completesFeature: false)
        try store.saveScore(explanation: e1, score: StoredScore(scorer: "detection", value: 0.1, model: "m", promptHash: "d",
                                                                details: #"{"balancedAccuracy":0.5,"truePositives":null}"#),
                            completesFeature: true)
        let e3 = try store.saveExplanation(feature: 3, text: "third", explainerModel: "m", promptHash: "p", rawResponse: nil)
        try store.saveScore(explanation: e3, score: StoredScore(scorer: "simulation", value: 0.2, model: "m", promptHash: "s",
                                                                details: #"{"failedWindows":0,"retriedWindows":0,"windows":[{"heldoutOrdinal":0,"simulated":[1e400]}]}"#),
                            completesFeature: true)
        // A label carried from another store onto a collected feature of this pass.
        try store.setState(feature: 4, .collected)
        #expect(try store.carry([(CarriedLabel(feature: 4, source: "old.sqlite", sourcePass: "p0", sourceFeature: 17, cosine: 0.93,
                                               previousScore: 0.41),
                                  CarrySourceLabel(feature: 17, text: "carried <label>", explainerModel: "m0", promptHash: "h0", score: 0.41))]) == 1)

        try expectSameBytes(store, fixture.directory)
        // An older pass: its labels and scores, without simulated values if the examples changed since.
        try expectSameBytes(store, fixture.directory, filter: ExportFilter(pass: "default"))
    }
}
