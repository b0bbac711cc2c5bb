import Foundation
import GRDB
import SAELabelCore

/// Decoder directions of one SAE version, as recorded at collect time.
public struct DecoderDirections: Sendable {
    public var features: [Int]
    public var width: Int
    /// Row-major `[features.count, width]`, unit length.
    public var rows: [Float]

    public init(features: [Int], width: Int, rows: [Float]) {
        self.features = features
        self.width = width
        self.rows = rows
    }
}

/// A label of an earlier version, with the score it had there.
public struct CarrySourceLabel: Sendable {
    public var feature: Int
    public var text: String
    public var explainerModel: String
    public var promptHash: String
    public var score: Double?
}

/// One carried label: new feature ← old feature.
public struct CarriedLabel: Sendable, Equatable {
    public var feature: Int
    public var source: String
    public var sourcePass: String
    public var sourceFeature: Int
    public var cosine: Double
    public var previousScore: Double?
    public var decision: String
    public var newScore: Double?

    public init(feature: Int, source: String, sourcePass: String, sourceFeature: Int, cosine: Double, previousScore: Double?,
                decision: String = "carried", newScore: Double? = nil) {
        self.feature = feature
        self.source = source
        self.sourcePass = sourcePass
        self.sourceFeature = sourceFeature
        self.cosine = cosine
        self.previousScore = previousScore
        self.decision = decision
        self.newScore = newScore
    }
}

extension JobStore {
    public func inputVersion() throws(SAELabelError) -> Int {
        Int(try setting("input_version") ?? "") ?? 1
    }

    /// Records the decoder directions of the SAE version the store now collects (once per version and feature).
    /// They outlive the SAE file, which a retrain usually overwrites in place.
    public func recordDecoderDirections(version: Int, _ directions: DecoderDirections) throws(SAELabelError) {
        try write { db in
            let statement = try db.cachedStatement(sql: "INSERT OR IGNORE INTO decoder_direction(input_version, feature, direction) VALUES (?, ?, ?)")
            for (slot, feature) in directions.features.enumerated() {
                let data = Array(directions.rows[(slot * directions.width)..<((slot + 1) * directions.width)])
                    .withUnsafeBufferPointer { Data(buffer: $0) }
                try statement.execute(arguments: [version, feature, data])
            }
        }
    }

    /// The features whose directions of `version` are recorded (ids only: a resumed run checks, not reads, them).
    public func featuresWithDecoderDirections(version: Int) throws(SAELabelError) -> Set<Int> {
        try read { db in
            Set(try Int.fetchAll(db, sql: "SELECT feature FROM decoder_direction WHERE input_version = ?", arguments: [version]))
        }
    }

    public func decoderDirections(version: Int) throws(SAELabelError) -> DecoderDirections? {
        try read { db in
            var features: [Int] = []
            var rows: [Float] = []
            var width = 0
            for row in try Row.fetchAll(db, sql: "SELECT feature, direction FROM decoder_direction WHERE input_version = ? ORDER BY feature",
                                        arguments: [version]) {
                let data: Data = row["direction"]
                var values = [Float](repeating: 0, count: data.count / MemoryLayout<Float>.size)
                _ = values.withUnsafeMutableBytes { data.copyBytes(to: $0) }
                if width == 0 { width = values.count }
                guard values.count == width else { throw SAELabelError.store("decoder directions of version \(version) differ in width") }
                features.append(row["feature"])
                rows += values
            }
            return features.isEmpty ? nil : DecoderDirections(features: features, width: width, rows: rows)
        }
    }

    /// The newest version below `version` whose directions are recorded.
    public func previousDecoderVersion(before version: Int) throws(SAELabelError) -> Int? {
        try read { db in
            try Int.fetchOne(db, sql: "SELECT MAX(input_version) FROM decoder_direction WHERE input_version < ?", arguments: [version])
        }
    }

    /// The pass that labeled `version` (the newest one with explanations), if any.
    public func labelingPass(inputVersion version: Int) throws(SAELabelError) -> String? {
        try read { db in
            try String.fetchOne(db, sql: """
                SELECT p.id FROM labeling_pass p WHERE p.input_version = ? AND EXISTS (SELECT 1 FROM explanation e WHERE e.pass = p.id)
                ORDER BY p.created_at DESC, p.id LIMIT 1
                """, arguments: [version])
        }
    }

    /// Every label of `pass` with its `scorer` score (nil when not scored by it). Labels that were themselves
    /// carried and then found wanting are not here: their pass has the fresh label instead.
    public func carrySourceLabels(pass: String, scorer: String) throws(SAELabelError) -> [Int: CarrySourceLabel] {
        try read { db in
            var result: [Int: CarrySourceLabel] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT e.feature, e.text, e.explainer_model, e.prompt_hash,
                       (SELECT s.value FROM score s WHERE s.explanation = e.id AND s.scorer = ?) AS score
                FROM explanation e WHERE e.pass = ?
                """, arguments: [scorer, pass]) {
                let feature: Int = row["feature"]
                result[feature] = CarrySourceLabel(feature: feature, text: row["text"], explainerModel: row["explainer_model"],
                                                   promptHash: row["prompt_hash"], score: row["score"])
            }
            return result
        }
    }

    /// Carries labels into the current pass, in one transaction: each goes to a feature that is collected, has no
    /// explanation in this pass and was never carried to before (a resumed run carries nothing twice, and
    /// never again to a feature whose carried label was re-explained). Returns how many were carried.
    @discardableResult
    public func carry(_ items: [(CarriedLabel, CarrySourceLabel)]) throws(SAELabelError) -> Int {
        try write { db in
            guard let pass = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") else { return 0 }
            var carried = 0
            for (label, source) in items {
                let eligible = try Bool.fetchOne(db, sql: """
                    SELECT state = 'collected' AND NOT EXISTS (SELECT 1 FROM explanation WHERE feature = ?1 AND pass = ?2)
                       AND NOT EXISTS (SELECT 1 FROM carried_label WHERE feature = ?1 AND pass = ?2)
                    FROM feature WHERE id = ?1
                    """, arguments: [label.feature, pass]) ?? false
                guard eligible else { continue }
                try db.execute(sql: """
                    INSERT INTO explanation(feature, pass, text, explainer_model, prompt_hash, raw_response, created_at)
                    VALUES (?, ?, ?, ?, ?, NULL, ?)
                    """, arguments: [label.feature, pass, source.text, source.explainerModel, source.promptHash, Date()])
                try db.execute(sql: """
                    INSERT INTO carried_label(pass, feature, source, source_pass, source_feature, cosine, previous_score, decision)
                    VALUES (?, ?, ?, ?, ?, ?, ?, 'carried')
                    """, arguments: [pass, label.feature, label.source, label.sourcePass, label.sourceFeature, label.cosine, label.previousScore])
                try db.execute(sql: "UPDATE feature SET state = 'explained', updated_at = ? WHERE id = ?", arguments: [Date(), label.feature])
                carried += 1
            }
            return carried
        }
    }

    /// Carried labels of the current pass (every decision).
    public func carriedLabels() throws(SAELabelError) -> [CarriedLabel] {
        try read { db in
            guard let pass = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") else { return [] }
            return try Row.fetchAll(db, sql: "SELECT * FROM carried_label WHERE pass = ? ORDER BY feature", arguments: [pass]).map(Self.carriedLabel)
        }
    }

    static func carriedLabel(_ row: Row) -> CarriedLabel {
        CarriedLabel(feature: row["feature"], source: row["source"], sourcePass: row["source_pass"], sourceFeature: row["source_feature"],
                     cosine: row["cosine"], previousScore: row["previous_score"], decision: row["decision"], newScore: row["new_score"])
    }

    /// Settles each carried label of the current pass that has its `scorer` score now: kept when the score fell by
    /// at most `maxDrop`, otherwise re-explained (the carried label and its scores are removed and the feature goes
    /// back to collected, in the same transaction). Returns the features to re-explain.
    public func settleCarriedLabels(scorer: String, maxDrop: Double) throws(SAELabelError) -> [Int] {
        try write { db in
            guard let pass = try String.fetchOne(db, sql: "SELECT value FROM job_setting WHERE key = 'current_pass'") else { return [] }
            var reexplain: [Int] = []
            for row in try Row.fetchAll(db, sql: """
                SELECT c.feature, c.previous_score, s.value AS new_score, e.id AS explanation
                FROM carried_label c JOIN explanation e ON e.feature = c.feature AND e.pass = c.pass
                JOIN score s ON s.explanation = e.id AND s.scorer = ?
                WHERE c.pass = ? AND c.decision = 'carried'
                """, arguments: [scorer, pass]) {
                let feature: Int = row["feature"]
                let previous: Double? = row["previous_score"]
                let new: Double? = row["new_score"]
                // A label scored nowhere before, or not scorable now, is kept: there is no drop to measure.
                let dropped = previous.flatMap { previous in new.map { previous - $0 > maxDrop } } ?? false
                try db.execute(sql: "UPDATE carried_label SET decision = ?, new_score = ? WHERE pass = ? AND feature = ?",
                               arguments: [dropped ? "reexplained" : "kept", new, pass, feature])
                if dropped {
                    try db.execute(sql: "DELETE FROM explanation WHERE id = ?", arguments: [row["explanation"] as Int64])
                    try db.execute(sql: "UPDATE feature SET state = 'collected', updated_at = ? WHERE id = ?", arguments: [Date(), feature])
                    reexplain.append(feature)
                }
            }
            return reexplain
        }
    }
}
