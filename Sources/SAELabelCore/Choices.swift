/// Closed sets of names the job file and the command line share: each is parsed by its enum, and an
/// unknown name is refused with the list of valid ones taken from the enum itself.
public protocol NamedChoice: CaseIterable, RawRepresentable, Sendable where RawValue == String {}

extension NamedChoice {
    /// The valid names, in declaration order, for error messages: "json, sparse, logprobs".
    public static var validNames: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// What an error message says about an unknown name: "'x' is not one of json, sparse, logprobs".
    public static func unknown(_ name: String) -> String { "'\(name)' is not one of \(validNames)" }
}

/// The scorers a job can run (`[simulator] scorers`, `saelabel score --scorer`); the raw value is the
/// score's name in the store and the exports.
public enum ScorerKind: String, NamedChoice {
    /// Correlation of simulated activations with the true ones: the label's confidence.
    case simulation
    case detection
    case fuzzing
}

/// How the simulation scorer asks for activations (`[simulator] mode`, `saelabel score --simulator`).
public enum SimulatorMode: String, NamedChoice {
    /// Any chat model: a value for every token (SPEC §5).
    case json
    /// Any chat model: only the tokens predicted active, by index (the default).
    case sparse
    /// Servers that return prompt logprobs: the all-at-once simulator.
    case logprobs
}
