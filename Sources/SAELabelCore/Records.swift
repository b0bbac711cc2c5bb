/// Where a window came from in the selection (SPEC §1, §3).
public enum ExampleKind: String, Sendable, Codable, CaseIterable {
    case top, quantile, random
}

/// Which set a window belongs to. The two are disjoint by construction.
public enum ExampleSplit: String, Sendable, Codable, CaseIterable {
    case explain, heldout
}

/// A window of consecutive tokens with one feature's raw activation on each (an "activation record").
public struct ActivationWindow: Sendable, Equatable, Codable {
    public var tokens: [String]
    public var activations: [Float]
    public var kind: ExampleKind
    /// Sequence index in the corpus and first position, so a window is traceable to its source.
    public var sequence: Int
    public var start: Int

    public init(tokens: [String], activations: [Float], kind: ExampleKind, sequence: Int, start: Int) {
        self.tokens = tokens
        self.activations = activations
        self.kind = kind
        self.sequence = sequence
        self.start = start
    }

    public var maxActivation: Float { activations.max() ?? 0 }
}

/// Per-stage state of one feature in the job store.
public enum FeatureState: String, Sendable, Codable, CaseIterable {
    /// Selected, not yet collected.
    case pending
    /// Examples and statistics stored; ready to explain.
    case collected
    /// Never fired on the corpus; never sent to an LLM.
    case dead
    /// Fired, but on too few windows to explain and score honestly.
    case sparse
    case explained
    case scored
    case failed
}

/// Activation statistics of one feature over the collected corpus.
public struct FeatureStatistics: Sendable, Equatable, Codable {
    /// Fraction of all counted tokens on which the feature is non-zero.
    public var frequency: Double
    public var maxActivation: Float
    /// Mean over the tokens where the feature fires.
    public var meanActivation: Float
    public var activatingTokens: Int
    /// Windows (of the configured length) holding at least one activation.
    public var activatingWindows: Int
    /// Counts of non-zero activations in equal bins over (0, maxActivation].
    public var histogram: [Int]

    public init(frequency: Double, maxActivation: Float, meanActivation: Float, activatingTokens: Int,
                activatingWindows: Int, histogram: [Int]) {
        self.frequency = frequency
        self.maxActivation = maxActivation
        self.meanActivation = meanActivation
        self.activatingTokens = activatingTokens
        self.activatingWindows = activatingWindows
        self.histogram = histogram
    }
}

/// Everything collect stores for one feature, in one transaction.
public struct CollectedFeature: Sendable, Equatable {
    public var index: Int
    public var state: FeatureState
    public var statistics: FeatureStatistics
    public var explain: [ActivationWindow]
    public var heldout: [ActivationWindow]
    /// Why the state is `dead` or `sparse`, for `status`.
    public var note: String?

    public init(index: Int, state: FeatureState, statistics: FeatureStatistics,
                explain: [ActivationWindow], heldout: [ActivationWindow], note: String? = nil) {
        self.index = index
        self.state = state
        self.statistics = statistics
        self.explain = explain
        self.heldout = heldout
        self.note = note
    }
}
