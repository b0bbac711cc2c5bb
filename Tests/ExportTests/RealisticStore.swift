import Foundation
import TestSupport
import SAELabelCore
import SAELabelStore

/// A small catalog that reads like a real one, for the screenshots in docs/.
struct RealisticStore {
    let directory = TempDirectory()
    let store: JobStore

    struct Spec {
        var label: String?
        var state: FeatureState
        var simulation: Double?
        var detection: Double?
        var fuzzing: Double?
        var frequency: Double
        var trigger: (String) -> Bool
    }

    static let sentences = [
        "The dog chased the ball across the park while the cat watched from the fence.",
        "In 1969 the first humans landed on the Moon, and in 1972 the last mission returned.",
        "def area(r): return math.pi * (r ** 2) if r > 0 else 0",
        "She said bonjour to the baker and bought a croissant et un café au lait.",
        "Prices rose by 3.5 percent in March, the highest since 2008 according to the report.",
        "The puppy slept next to the old dog, and the kitten curled up beside them.",
        "Le chat dort sur le canapé pendant que la pluie tombe dehors.",
        "for i in range(10): print(f\"value {i}\") # loop over the first ten numbers",
    ]

    static func tokens(_ sentence: String) -> [String] {
        var out: [String] = []
        var current = ""
        for ch in sentence {
            if ch == " " || ch.isPunctuation || ch.isSymbol {
                if !current.isEmpty { out.append(current) }
                current = ch == " " ? " " : ""
                if ch != " " { out.append(String(ch)) }
            } else {
                current.append(ch)
            }
        }
        if !current.isEmpty { out.append(current) }
        return out
    }

    init() throws {
        store = try JobStore(path: directory.file("demo.sqlite"))
        try store.setSetting(JobSettingKey.saeName, "gpt2-small-res-jb")
        try store.setSetting(JobSettingKey.hookName, "blocks.6.hook_resid_pre")
        try store.setSetting(JobSettingKey.modelName, "gpt2-small")
        let animals: Set<String> = ["dog", "cat", "puppy", "kitten", "chat"]
        let french: Set<String> = ["bonjour", "croissant", "et", "un", "café", "au", "lait", "Le", "chat", "dort", "sur", "le",
                                   "canapé", "pendant", "que", "la", "pluie", "tombe", "dehors"]
        func word(_ token: String) -> String { token.trimmingCharacters(in: .whitespaces) }
        let specs: [Spec] = [
            Spec(label: "years written as four digits, mostly 19xx and 20xx", state: .scored, simulation: 0.71, detection: 0.88,
                 fuzzing: 0.79, frequency: 0.0031, trigger: { word($0).count == 4 && Int(word($0)) != nil }),
            Spec(label: "closing parentheses and brackets in Python code", state: .scored, simulation: 0.52, detection: 0.74,
                 fuzzing: 0.66, frequency: 0.0120, trigger: { $0 == ")" || $0 == "]" }),
            Spec(label: "nouns for pets and domestic animals (dog, cat, puppy, kitten)", state: .scored, simulation: 0.64,
                 detection: 0.91, fuzzing: 0.83, frequency: 0.0018, trigger: { animals.contains(word($0)) }),
            Spec(label: "French words inside English or French sentences", state: .scored, simulation: 0.43, detection: 0.81,
                 fuzzing: 0.58, frequency: 0.0044, trigger: { french.contains(word($0)) }),
            Spec(label: "the token \"the\" at the start of a noun phrase", state: .scored, simulation: 0.12, detection: 0.56,
                 fuzzing: 0.51, frequency: 0.0410, trigger: { word($0).lowercased() == "the" }),
            Spec(label: "percent signs and numeric rates in economic news", state: .explained, simulation: nil, detection: nil,
                 fuzzing: nil, frequency: 0.0009, trigger: { word($0) == "percent" || word($0).contains(".") }),
            Spec(label: nil, state: .dead, simulation: nil, detection: nil, fuzzing: nil, frequency: 0, trigger: { _ in false }),
            Spec(label: "the keyword for and loop headers in code", state: .scored, simulation: 0.35, detection: 0.69,
                 fuzzing: 0.61, frequency: 0.0062, trigger: { word($0) == "for" || word($0) == "range" }),
            Spec(label: nil, state: .failed, simulation: nil, detection: nil, fuzzing: nil, frequency: 0.0007,
                 trigger: { word($0) == "," }),
            Spec(label: "commas separating clauses", state: .scored, simulation: -0.03, detection: 0.50, fuzzing: 0.49,
                 frequency: 0.0350, trigger: { $0 == "," }),
        ]
        for (index, spec) in specs.enumerated() {
            var windows: [ActivationWindow] = []
            for (s, sentence) in Self.sentences.enumerated() {
                let toks = Self.tokens(sentence)
                let acts: [Float] = toks.enumerated().map { i, t in
                    spec.trigger(t) ? Float(4 + (i * 7 + index * 3) % 6) + 0.25 * Float(s % 3) : (i % 9 == 4 && spec.state != .dead ? 0.4 : 0)
                }
                windows.append(ActivationWindow(tokens: toks, activations: acts, kind: s < 4 ? .top : (s < 6 ? .quantile : .random),
                                                sequence: 100 * index + s, start: 0))
            }
            windows.sort { $0.maxActivation > $1.maxActivation }
            let maxAct = windows.map(\.maxActivation).max() ?? 0
            let histogram = spec.state == .dead ? [] : (0..<24).map { bin in Int(400 * exp(-Double(bin) / 4)) + (bin % 5) }
            let stats = FeatureStatistics(frequency: spec.frequency, maxActivation: maxAct, meanActivation: maxAct / 3,
                                          activatingTokens: Int(spec.frequency * 1_000_000), activatingWindows: Int(spec.frequency * 40_000),
                                          histogram: histogram)
            // Alternate the windows (strongest first) between the two sets, as a stratified split would.
            let explain = spec.state == .dead ? [] : windows.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
            let heldout = spec.state == .dead ? [] : windows.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
            try store.saveCollected(CollectedFeature(index: index, state: spec.state == .dead ? .dead : .collected, statistics: stats,
                                                     explain: explain, heldout: heldout, note: spec.state == .dead ? "never fired on the corpus" : nil))
            if spec.state == .failed {
                try store.markFailed(feature: index, stage: "explain", reason: "explainer returned no explanation after 3 attempts")
                continue
            }
            guard let label = spec.label else { continue }
            let explanation = try store.saveExplanation(feature: index, text: label, explainerModel: "Llama-3.1-8B-Instruct",
                                                        promptHash: "demo", rawResponse: nil)
            if let value = spec.simulation {
                let simulated = heldout.enumerated().map { ordinal, window in
                    // A plausible simulator: right about where it fires, a little off about how much.
                    SimulationDetails.Window(heldoutOrdinal: ordinal, simulated: window.activations.enumerated().map { i, a in
                        maxAct > 0 && a > 1 ? min(10, (Double(a / maxAct) * 10 * (i % 2 == 0 ? 0.7 : 1)).rounded()) : 0
                    })
                }
                let details = SimulationDetails(rsquared: value * value, absoluteDevExplained: value / 2, failedWindows: 0,
                                                retriedWindows: 0, undefinedReason: nil, windows: simulated)
                try store.saveScore(explanation: explanation, score: StoredScore(scorer: "simulation", value: value,
                                    model: "Llama-3.1-8B-Instruct", promptHash: "demo", details: NastyStore.json(details)),
                                    completesFeature: false)
            }
            for (scorer, value) in [("detection", spec.detection), ("fuzzing", spec.fuzzing)] {
                guard let value else { continue }
                let details = ClassificationDetails(balancedAccuracy: value, f1: value - 0.05, precision: value + 0.03, recall: value - 0.08,
                                                    truePositives: 16, trueNegatives: 18, falsePositives: 2, falseNegatives: 4, failedPrompts: 0)
                try store.saveScore(explanation: explanation, score: StoredScore(scorer: scorer, value: value, model: "Llama-3.1-8B-Instruct",
                                    promptHash: "demo", details: NastyStore.json(details)), completesFeature: true)
            }
        }
    }
}
