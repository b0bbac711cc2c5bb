/// The JSON stored in `score.details`, shared by the scorers that write it and the exports that read it.
public struct SimulationDetails: Codable, Sendable, Equatable {
    public struct Window: Codable, Sendable, Equatable {
        /// Ordinal of the held-out example this window is.
        public var heldoutOrdinal: Int
        /// Simulated 0–10 values, one per token; nil when the simulator failed on this window (the score then fails).
        public var simulated: [Double]?
        public var error: String?
        public init(heldoutOrdinal: Int, simulated: [Double]?, error: String? = nil) {
            self.heldoutOrdinal = heldoutOrdinal
            self.simulated = simulated
            self.error = error
        }
    }

    public var rsquared: Double?
    public var absoluteDevExplained: Double?
    /// Windows whose simulation failed even after the retry (SPEC §5 scores them as zeros; any such window fails the score, see ScoreStep).
    public var failedWindows: Int
    /// Windows that needed the retry with the error shown.
    public var retriedWindows: Int
    /// Why the correlation is undefined (no variance), when it is; the score is then 0.
    public var undefinedReason: String?
    public var windows: [Window]

    public init(rsquared: Double?, absoluteDevExplained: Double?, failedWindows: Int, retriedWindows: Int,
                undefinedReason: String?, windows: [Window]) {
        self.rsquared = rsquared
        self.absoluteDevExplained = absoluteDevExplained
        self.failedWindows = failedWindows
        self.retriedWindows = retriedWindows
        self.undefinedReason = undefinedReason
        self.windows = windows
    }
}

/// Details of a detection or fuzzing score (SPEC §6).
public struct ClassificationDetails: Codable, Sendable, Equatable {
    public var balancedAccuracy: Double
    public var f1: Double
    public var precision: Double
    public var recall: Double
    public var truePositives: Int
    public var trueNegatives: Int
    public var falsePositives: Int
    public var falseNegatives: Int
    /// Prompts whose answer could not be parsed (their windows count as wrong).
    public var failedPrompts: Int

    public init(balancedAccuracy: Double, f1: Double, precision: Double, recall: Double, truePositives: Int,
                trueNegatives: Int, falsePositives: Int, falseNegatives: Int, failedPrompts: Int) {
        self.balancedAccuracy = balancedAccuracy
        self.f1 = f1
        self.precision = precision
        self.recall = recall
        self.truePositives = truePositives
        self.trueNegatives = trueNegatives
        self.falsePositives = falsePositives
        self.falseNegatives = falseNegatives
        self.failedPrompts = failedPrompts
    }
}

/// Job-level facts collect writes to the store's settings, read by status and the exports.
public enum JobSettingKey {
    public static let saeName = "sae_name"
    public static let hookName = "hook_name"
    public static let modelName = "model_name"
    public static let neuronpediaId = "neuronpedia_id"
    /// Set from the job file's [export] neuronpedia_model_id / neuronpedia_layer; they win over the SAE's metadata.
    public static let neuronpediaModelId = "neuronpedia_model_id"
    public static let neuronpediaLayer = "neuronpedia_layer"
    public static let featureCount = "d_sae"
    public static let tokensCounted = "tokens_counted"
    public static let tokensExcluded = "tokens_excluded"
    public static let seed = "seed"
}
