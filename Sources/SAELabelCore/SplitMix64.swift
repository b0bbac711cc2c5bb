/// SplitMix64: a small, fast, seedable generator, the same on every platform, used wherever saelabel
/// must be reproducible from a seed (example selection, prompt shuffles, benchmarks, tests).
/// `(seed, feature, purpose)` keys an independent stream.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64, feature: Int, purpose: UInt64) {
        var mixer = SplitMix64(state: seed)
        state = mixer.next() ^ SplitMix64.mix(UInt64(truncatingIfNeeded: feature) &+ 0x632B_E59B_D9B4_E019) ^ SplitMix64.mix(purpose)
    }

    public init(state: UInt64) { self.state = state }

    public static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1).
    public mutating func unit() -> Double { (Double(next() >> 11) + 0.5) * 0x1p-53 }
}
