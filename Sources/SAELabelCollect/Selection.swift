import Foundation
import SAELabelCore
import SAELabelKernels

/// The final selection of a feature's windows from its streaming state (the state itself, and the passes
/// that fill it, live in SAELabelKernels).
extension FeatureAccumulators {
    // MARK: - Final selection

    /// Splits `ranked` between two sets in proportion to their quotas: each next window goes to the set that is
    /// less full relative to its quota (explain on ties). Every window goes to exactly one pool, so windows
    /// chosen from different pools can never coincide.
    static func partition<T>(_ ranked: [T], explainQuota: Int, heldoutQuota: Int) -> (explain: [T], heldout: [T]) {
        var explain: [T] = [], heldout: [T] = []
        for item in ranked {
            if heldoutQuota == 0 { explain.append(item); continue }
            if explainQuota == 0 { heldout.append(item); continue }
            if explain.count * heldoutQuota <= heldout.count * explainQuota { explain.append(item) } else { heldout.append(item) }
        }
        return (explain, heldout)
    }

    /// One window drawn from each of `count` equal rank bins of `ranked` (all of them when there are too few).
    static func quantileSample<T>(_ ranked: [T], count: Int, generator: inout SplitMix64) -> [T] {
        guard count > 0 else { return [] }
        guard ranked.count > count else { return ranked }
        var picked: [T] = []
        for bin in 0..<count {
            let lower = bin * ranked.count / count, upper = (bin + 1) * ranked.count / count
            picked.append(ranked[lower + Int(generator.next() % UInt64(upper - lower))])
        }
        return picked
    }

    /// The stored record of a feature that never fired: all statistics zero, no examples. Also what a latent
    /// without entries in a latent cache gets, which has no streaming state at all (`Collector.stream`).
    static func neverFired(_ feature: Int, countedTokens: Int) -> CollectedFeature {
        let statistics = FeatureStatistics(frequency: 0, maxActivation: 0, meanActivation: 0, activatingTokens: 0,
                                           activatingWindows: 0, histogram: [Int](repeating: 0, count: histogramBins))
        return CollectedFeature(index: feature, state: .dead, statistics: statistics, explain: [], heldout: [],
                                note: "never fired on \(countedTokens) counted tokens")
    }

    /// The stored record of feature `slot`. `tokens(sequence, start, length)` decodes a window's token strings.
    func finish(_ slot: Int, countedTokens: Int, tokens: (Int, Int, Int) -> [String]) -> CollectedFeature {
        let feature = features[slot]
        let fired = activeTokens[slot]
        guard fired > 0 else { return Self.neverFired(feature, countedTokens: countedTokens) }
        let peak = maxima[slot]
        var coarse = [Int](repeating: 0, count: Self.histogramBins)
        if let (range, histogram) = histogramCounts(slot) {
            for bin in 0..<Self.fineBins {
                let count = Int(histogram[bin])
                guard count > 0 else { continue }
                let center = (Float(bin) + 0.5) * range / Float(Self.fineBins)
                let target = min(Self.histogramBins - 1, max(0, Int((center / peak * Float(Self.histogramBins)).rounded(.up)) - 1))
                coarse[target] += count
            }
        }
        let statistics = FeatureStatistics(
            frequency: countedTokens > 0 ? Double(fired) / Double(countedTokens) : 0, maxActivation: peak,
            meanActivation: Float(sums[slot] / Double(fired)), activatingTokens: fired,
            activatingWindows: activeWindows[slot], histogram: coarse)
        let p = parameters

        // Top windows, ranked by max (earlier first on ties), split between the sets by rank.
        let ranksBefore = { (a: KeptWindow, b: KeptWindow) in a.maximum > b.maximum || (a.maximum == b.maximum && a.order < b.order) }
        let topKept = (0..<topCount[slot]).map { top.kept(slot, $0) }.sorted(by: ranksBefore)
        let topSplit = Self.partition(topKept, explainQuota: p.explainTop, heldoutQuota: p.heldoutTop)
        // At most `topCapacity` (15) orders: a scan costs less than building and probing a hashed set per feature.
        let topOrders = topKept.map(\.order)

        // Quantile windows: the reservoir minus the top windows, ranked, partitioned into two pools, binned.
        let (reservoirSlots, reservoirKept) = reservoirWindows(slot)
        let rankedReservoir = reservoirKept.filter { !topOrders.contains($0.order) }
            .sorted(by: ranksBefore)
        let pools = Self.partition(rankedReservoir, explainQuota: p.explainQuantile, heldoutQuota: p.heldoutQuantile)
        var generator = SplitMix64(seed: p.seed, feature: feature, purpose: 2)
        let explainQuantile = Self.quantileSample(pools.explain, count: p.explainQuantile, generator: &generator)
        let heldoutQuantile = Self.quantileSample(pools.heldout, count: p.heldoutQuantile, generator: &generator)

        let (randomSlots, randomKept) = randomWindows(slot)

        func window(_ slots: WindowSlots, _ kept: KeptWindow, _ kind: ExampleKind) -> ActivationWindow {
            ActivationWindow(tokens: tokens(kept.sequence, kept.start, kept.length), activations: slots.values(slot, kept.index),
                             kind: kind, sequence: kept.sequence, start: kept.start)
        }
        let explain = topSplit.explain.map { window(top, $0, .top) } + explainQuantile.map { window(reservoirSlots, $0, .quantile) }
        let heldout = topSplit.heldout.map { window(top, $0, .top) } + heldoutQuantile.map { window(reservoirSlots, $0, .quantile) }
            + randomKept.map { window(randomSlots, $0, .random) }
        let windows = activeWindows[slot]
        if windows < p.minActivatingWindows {
            return CollectedFeature(index: feature, state: .sparse, statistics: statistics, explain: explain, heldout: heldout,
                                    note: "fired in \(windows) window\(windows == 1 ? "" : "s"), fewer than the \(p.minActivatingWindows) needed to explain and score")
        }
        return CollectedFeature(index: feature, state: .collected, statistics: statistics, explain: explain, heldout: heldout)
    }
}
