/// Which features a command works on: `--features RANGE` intersected with `--shard I/N`.
public struct FeatureSelection: Sendable, Equatable, Codable {
    public enum Set: Sendable, Equatable, Codable {
        case all
        /// Half-open range `A..B`.
        case range(Int, Int)
        case list([Int])
    }

    public var set: Set
    public var shard: Shard?

    public struct Shard: Sendable, Equatable, Codable {
        public var index: Int
        public var count: Int
        public init(index: Int, count: Int) { self.index = index; self.count = count }
    }

    public init(set: Set = .all, shard: Shard? = nil) {
        self.set = set
        self.shard = shard
    }

    public static let all = FeatureSelection()

    /// Parses `A..B` (A inclusive, B exclusive) or a comma list `1,5,9`.
    public static func parseRange(_ text: String, flag: String = "--features") throws(SAELabelError) -> Set {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if let dots = trimmed.range(of: "..") {
            let lower = Int(trimmed[..<dots.lowerBound].trimmingCharacters(in: .whitespaces))
            let upper = Int(trimmed[dots.upperBound...].trimmingCharacters(in: .whitespaces))
            guard let lower, let upper, lower >= 0, upper > lower else {
                throw .usage("\(flag) \(text): expected A..B with 0 ≤ A < B (B exclusive), e.g. 0..100")
            }
            return .range(lower, upper)
        }
        var values: [Int] = []
        for part in trimmed.split(separator: ",") {
            guard let value = Int(part.trimmingCharacters(in: .whitespaces)), value >= 0 else {
                throw .usage("\(flag) \(text): '\(part)' is not a feature index; use A..B or a comma list like 1,5,9")
            }
            values.append(value)
        }
        guard !values.isEmpty else {
            throw .usage("\(flag) is empty; use A..B or a comma list like 1,5,9")
        }
        return .list(Array(Swift.Set(values)).sorted())
    }

    /// Parses `I/N` with 0 ≤ I < N.
    public static func parseShard(_ text: String) throws(SAELabelError) -> Shard {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let index = Int(parts[0]), let count = Int(parts[1]),
              count >= 1, index >= 0, index < count else {
            throw .usage("--shard \(text): expected I/N with 0 ≤ I < N, e.g. 0/4")
        }
        return Shard(index: index, count: count)
    }

    public func contains(_ feature: Int) -> Bool {
        if let shard, feature % shard.count != shard.index { return false }
        switch set {
        case .all: return true
        case .range(let lower, let upper): return feature >= lower && feature < upper
        case .list(let values): return values.contains(feature)
        }
    }

    /// The selected features among `0..<featureCount`, ascending.
    public func features(featureCount: Int) -> [Int] {
        let candidates: [Int]
        switch set {
        case .all: candidates = Array(0..<featureCount)
        case .range(let lower, let upper): candidates = Array(lower..<min(upper, featureCount))
        case .list(let values): candidates = values.filter { $0 < featureCount }
        }
        guard let shard else { return candidates }
        return candidates.filter { $0 % shard.count == shard.index }
    }

    /// Indices that were asked for explicitly but do not exist.
    public func outOfRange(featureCount: Int) -> [Int] {
        switch set {
        case .all: return []
        case .range(_, let upper): return upper > featureCount ? [upper - 1] : []
        case .list(let values): return values.filter { $0 >= featureCount }
        }
    }
}

import Foundation
