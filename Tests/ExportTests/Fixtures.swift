import Foundation
import SAELabelCore
import SAELabelStore
import TestSupport

/// Tokens and labels that break naive CSV, JSON, JS and HTML writers.
enum Nasty {
    static let scriptAlert = "<script>alert(1)</script>"
    static let imgAlert = "\"><img src=x onerror=alert(1)>"
    /// If either of these ever runs or becomes an element, `data-pwned` appears on <body>.
    static let imgPwn = "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
    static let scriptPwn = "</script><script>document.body.setAttribute('data-pwned','2')</script>"
    static let tokens = ["He", " said", " \"hi\"", ",", " tab\there", " new\nline", " café", " 日本", " 🚀",
                         scriptAlert, imgAlert, imgPwn, scriptPwn, " a,b", "\u{2028}sep\u{2029}", "\r"]
    static let label0 = "quotes \"x\", commas, tab\there, newline\nhere, café 日本 🚀 \(scriptAlert)"
    static let label1 = "labels from the LLM: \(imgPwn) and \(scriptPwn)"
}

/// A store with every feature state, explanations, scores with details and nasty text.
struct NastyStore {
    let directory = TempDirectory()
    let store: JobStore

    static let simulated0: [Double] = [0, 1, 2.5, 0, 10, 3, 0, 0, 7, 1, 0, 0, 0, 4, 0, 0]

    init() throws {
        store = try JobStore(path: directory.file("job.sqlite"))
        try store.setSetting(JobSettingKey.saeName, "gpt2-small-res-jb <b>")
        try store.setSetting(JobSettingKey.hookName, "blocks.6.hook_resid_pre")
        try store.setSetting(JobSettingKey.modelName, "gpt2-small")

        let n = Nasty.tokens.count
        func window(_ kind: ExampleKind, scale: Float, sequence: Int) -> ActivationWindow {
            ActivationWindow(tokens: Nasty.tokens, activations: (0..<n).map { Float($0 % 5) * scale + ($0 == 4 ? 0.1 : 0) },
                             kind: kind, sequence: sequence, start: 3)
        }
        func stats(_ frequency: Double, _ max: Float) -> FeatureStatistics {
            FeatureStatistics(frequency: frequency, maxActivation: max, meanActivation: max / 3, activatingTokens: 42,
                              activatingWindows: 7, histogram: [9, 5, 3, 0, 1, 1, 0, 0, 0, 1])
        }
        try store.saveCollected([
            CollectedFeature(index: 0, state: .collected, statistics: stats(0.0023, 12.3),
                             explain: [window(.top, scale: 3.075, sequence: 1), window(.top, scale: 1.5, sequence: 2)],
                             heldout: [window(.top, scale: 2, sequence: 3), window(.random, scale: 0, sequence: 4)]),
            CollectedFeature(index: 1, state: .collected, statistics: stats(0.25, 4.5),
                             explain: [window(.top, scale: 1, sequence: 5)], heldout: [window(.quantile, scale: 0.5, sequence: 6)]),
            CollectedFeature(index: 2, state: .dead, statistics: FeatureStatistics(frequency: 0, maxActivation: 0, meanActivation: 0,
                             activatingTokens: 0, activatingWindows: 0, histogram: []), explain: [], heldout: [], note: "never fired"),
            CollectedFeature(index: 3, state: .collected, statistics: stats(1e-5, 0.75),
                             explain: [window(.top, scale: 0.1875, sequence: 7)], heldout: [window(.top, scale: 0.1, sequence: 8)]),
            CollectedFeature(index: 4, state: .collected, statistics: stats(0.01, 2),
                             explain: [window(.top, scale: 0.5, sequence: 9)], heldout: []),
        ])

        let e0 = try store.saveExplanation(feature: 0, text: Nasty.label0, explainerModel: "llama-3.1-8b \"instruct\"",
                                           promptHash: "ph0", rawResponse: nil)
        let simulation = SimulationDetails(rsquared: 0.37, absoluteDevExplained: 0.2, failedWindows: 1, retriedWindows: 1,
                                           undefinedReason: nil,
                                           windows: [.init(heldoutOrdinal: 0, simulated: Self.simulated0),
                                                     .init(heldoutOrdinal: 1, simulated: nil, error: "unparseable")])
        let detection = ClassificationDetails(balancedAccuracy: 0.8, f1: 0.75, precision: 0.9, recall: 0.64, truePositives: 9,
                                              trueNegatives: 10, falsePositives: 1, falseNegatives: 5, failedPrompts: 0)
        try store.saveScore(explanation: e0, score: StoredScore(scorer: "simulation", value: 0.61, model: "sim-model",
                                                                promptHash: "s0", details: Self.json(simulation)), completesFeature: false)
        try store.saveScore(explanation: e0, score: StoredScore(scorer: "detection", value: 0.8, model: "det-model",
                                                                promptHash: "d0", details: Self.json(detection)), completesFeature: true)

        try store.saveExplanation(feature: 1, text: Nasty.label1, explainerModel: "llama", promptHash: "ph1", rawResponse: nil)

        let e3 = try store.saveExplanation(feature: 3, text: "the word \"the\" after commas", explainerModel: "llama",
                                           promptHash: "ph3", rawResponse: nil)
        let sim3 = SimulationDetails(rsquared: 0.04, absoluteDevExplained: nil, failedWindows: 0, retriedWindows: 0, undefinedReason: nil,
                                     windows: [.init(heldoutOrdinal: 0, simulated: Array(repeating: 1, count: n))])
        let fuzz3 = ClassificationDetails(balancedAccuracy: 0.55, f1: 0.5, precision: 0.5, recall: 0.5, truePositives: 5,
                                          trueNegatives: 6, falsePositives: 5, falseNegatives: 5, failedPrompts: 1)
        try store.saveScore(explanation: e3, score: StoredScore(scorer: "simulation", value: 0.2, model: "sim-model",
                                                                promptHash: "s3", details: Self.json(sim3)), completesFeature: false)
        try store.saveScore(explanation: e3, score: StoredScore(scorer: "fuzzing", value: 0.55, model: "fuzz-model",
                                                                promptHash: "f3", details: Self.json(fuzz3)), completesFeature: true)

        try store.markFailed(feature: 4, stage: "explain", reason: "LLM said \"no\" <3 times")
    }

    static func json<T: Encodable>(_ value: T) -> String {
        String(decoding: try! JSONEncoder().encode(value), as: UTF8.self)
    }
}

/// Reads RFC 4180 text: quoted fields may hold commas, quotes (doubled), CR and LF.
func parseCSV(_ text: String) -> [[String]] {
    var rows: [[String]] = []
    var row: [String] = []
    var field = ""
    var quoted = false
    var scalars = Array(text.unicodeScalars)[...]
    while let c = scalars.popFirst() {
        if quoted {
            if c == "\"" {
                if scalars.first == "\"" { scalars.removeFirst(); field.unicodeScalars.append("\"") } else { quoted = false }
            } else {
                field.unicodeScalars.append(c)
            }
        } else if c == "\"" {
            quoted = true
        } else if c == "," {
            row.append(field); field = ""
        } else if c == "\r" && scalars.first == "\n" {
            scalars.removeFirst()
            row.append(field); field = ""
            rows.append(row); row = []
        } else {
            field.unicodeScalars.append(c)
        }
    }
    if !field.isEmpty || !row.isEmpty { row.append(field); rows.append(row) }
    return rows
}

func readText(_ path: String) throws -> String {
    String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self)
}

func jsonLines(_ path: String) throws -> [[String: Any]] {
    try readText(path).split(separator: "\n", omittingEmptySubsequences: true).map {
        try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
    }
}

/// Payload of a `window.__catalog_xxx(n, PAYLOAD);` data file, parsed as JSON.
func jsonpPayload(_ path: String) throws -> Any {
    var text = try readText(path)
    let open = text.firstIndex(of: "(")!
    text = String(text[text.index(after: open)...])
    if let comma = text.firstIndex(of: ","), text[..<comma].allSatisfy(\.isNumber) {
        text = String(text[text.index(after: comma)...])
    }
    let close = text.range(of: ")", options: .backwards)!
    return try JSONSerialization.jsonObject(with: Data(text[..<close.lowerBound].utf8))
}
