import Foundation

/// Collect's memory budget (`[collect] memory_gb` / `memory_mb`, `--memory-gb` / `--memory-mb`).
public enum MemoryBudget {
    /// A quarter of the machine's memory, between 512 MiB and 8 GiB: wide SAEs take few passes over the
    /// activations while the rest of the machine (and other shards' runs) keep most of it.
    public static var defaultMiB: Double {
        let quarter = Double(ProcessInfo.processInfo.physicalMemory) / 4 / 1_048_576
        return min(8192, max(512, quarter.rounded(.down)))
    }

    /// What the user gave: the budget in MiB (nil when neither key is given), or the problem, naming the keys as
    /// the user wrote them.
    public enum Outcome {
        case success(Double?)
        case failure(String)
    }

    /// The budget from whichever of the two keys is given; both given, or a non-positive value, is refused.
    public static func mebibytes(mb: Double?, gb: Double?, mbName: String, gbName: String) -> Outcome {
        switch (mb, gb) {
        case (.some, .some):
            return .failure("give either \(mbName) or \(gbName), not both")
        case (.some(let value), nil):
            guard value > 0, value.isFinite else { return .failure("\(mbName) must be a positive number of MiB (got \(value))") }
            return .success(value)
        case (nil, .some(let value)):
            guard value > 0, value.isFinite else { return .failure("\(gbName) must be a positive number of GiB (got \(value))") }
            return .success(value * 1024)
        case (nil, nil):
            return .success(nil)
        }
    }
}
