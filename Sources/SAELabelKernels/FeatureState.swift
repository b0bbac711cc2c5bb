import Foundation
import SAELabelCore

/// How many windows of each kind a feature keeps, and the window geometry.
public struct SelectionParameters: Sendable {
    public var windowLength: Int
    public var explainTop: Int
    public var explainQuantile: Int
    public var heldoutTop: Int
    public var heldoutQuantile: Int
    public var heldoutRandom: Int
    public var minActivatingWindows: Int
    public var seed: UInt64

    public init(windowLength: Int, explainTop: Int, explainQuantile: Int, heldoutTop: Int, heldoutQuantile: Int,
                heldoutRandom: Int, minActivatingWindows: Int, seed: UInt64) {
        self.windowLength = windowLength
        self.explainTop = explainTop
        self.explainQuantile = explainQuantile
        self.heldoutTop = heldoutTop
        self.heldoutQuantile = heldoutQuantile
        self.heldoutRandom = heldoutRandom
        self.minActivatingWindows = minActivatingWindows
        self.seed = seed
    }

    public var topCapacity: Int { explainTop + heldoutTop }
    /// A uniform sample of activating windows large enough to cut into the quantile bins of both sets.
    public var reservoirCapacity: Int {
        let quantiles = explainQuantile + heldoutQuantile
        return quantiles == 0 ? 0 : max(16, 4 * quantiles)
    }
}

/// A fixed number of window slots per feature: where each window came from, its max, and (optionally) its values,
/// kept as float32 so stored examples hold the raw activations (with Float16, values above 65,504 were stored as 0).
public final class WindowSlots {
    public let capacity: Int
    public let window: Int
    public let sequence: UnsafeMutablePointer<Int32>
    public let start: UnsafeMutablePointer<Int32>
    public let length: UnsafeMutablePointer<Int32>
    public let maximum: UnsafeMutablePointer<Float>
    public let order: UnsafeMutablePointer<Int64>
    public let values: UnsafeMutablePointer<Float>?

    init(features: Int, capacity: Int, window: Int, storesValues: Bool) {
        self.capacity = capacity
        self.window = window
        let slots = max(1, features * capacity)
        sequence = .allocate(capacity: slots)
        start = .allocate(capacity: slots)
        length = .allocate(capacity: slots)
        maximum = .allocate(capacity: slots)
        order = .allocate(capacity: slots)
        values = storesValues ? .allocate(capacity: slots * window) : nil
    }

    deinit {
        sequence.deallocate(); start.deallocate(); length.deallocate(); maximum.deallocate(); order.deallocate()
        values?.deallocate()
    }

    @inline(__always)
    func store(slot: Int, sequence seq: Int, start position: Int, length count: Int, maximum peak: Float, order ordinal: Int64,
               values source: UnsafePointer<Float>?) {
        sequence[slot] = Int32(truncatingIfNeeded: seq)
        start[slot] = Int32(truncatingIfNeeded: position)
        length[slot] = Int32(count)
        maximum[slot] = peak
        order[slot] = ordinal
        if let values, let source {
            let destination = values + slot * window
            destination.update(from: source, count: count)
        }
    }

    @inline(__always)
    func swapSlots(_ a: Int, _ b: Int) {
        sequence.swapAt(a, b); start.swapAt(a, b); length.swapAt(a, b); maximum.swapAt(a, b); order.swapAt(a, b)
        if let values {
            let first = values + a * window, second = values + b * window
            for index in 0..<window {
                let saved = first[index]
                first[index] = second[index]
                second[index] = saved
            }
        }
    }

    public func windowValues(slot: Int) -> [Float] {
        let count = Int(length[slot])
        guard let values else { return [Float](repeating: 0, count: count) }
        return Array(UnsafeBufferPointer(start: values + slot * window, count: count))
    }
}

/// `count` zeroed elements from calloc (free with `free`): zero pages the kernel maps only when first written.
func zeroed<T>(_ count: Int) -> UnsafeMutablePointer<T> {
    guard let raw = calloc(max(1, count), MemoryLayout<T>.stride) else { fatalError("out of memory allocating \(count) × \(T.self)") }
    return raw.bindMemory(to: T.self, capacity: max(1, count))
}

private extension UnsafeMutablePointer {
    @inline(__always) func swapAt(_ i: Int, _ j: Int) {
        let t = self[i]; self[i] = self[j]; self[j] = t
    }
}

/// Bounded, one-pass per-feature state (memory ∝ selected features × windows kept, never corpus size):
/// statistics, a top-K min-heap of windows by max, a seeded reservoir (Algorithm L) of activating windows
/// for the quantile sets, and a seeded reservoir of non-activating windows for the random held-out set.
///
/// Each slot's state is touched only by the thread given that slot's range (`FeaturePass`), and every slot
/// draws from its own generator, so the result never depends on how slots are split over threads.
public final class FeatureAccumulators: @unchecked Sendable {
    public static let fineBins = 256
    public static let histogramBins = 20

    public let parameters: SelectionParameters
    public let features: [Int]
    public let activeTokens: UnsafeMutablePointer<Int>
    public let sums: UnsafeMutablePointer<Double>
    public let maxima: UnsafeMutablePointer<Float>
    public let activeWindows: UnsafeMutablePointer<Int>
    /// Per-feature fine histogram over (0, range], range a power of two ≥ the running max (bins merge pairwise as it grows).
    public let histogramRange: UnsafeMutablePointer<Float>
    public let histogram: UnsafeMutablePointer<UInt32>
    public let top: WindowSlots
    public let topCount: UnsafeMutablePointer<Int>
    public let reservoir: WindowSlots
    public let reservoirState: UnsafeMutablePointer<ReservoirState>
    public let random: WindowSlots
    public let randomState: UnsafeMutablePointer<ReservoirState>
    let generators: UnsafeMutablePointer<SplitMix64>
    /// 1 once the slot's generator is seeded (its first window).
    let started: UnsafeMutablePointer<UInt8>

    public struct ReservoirState {
        public var seen = 0
        var next = 0
        var weight = 0.0
    }

    public init(features: [Int], parameters: SelectionParameters) {
        self.features = features
        self.parameters = parameters
        let n = max(1, features.count)
        // Zeroed by calloc: large arrays come as untouched zero pages, so a feature that never fires costs no
        // memory and no time (its state is first written when it first fires, `catchUp`).
        activeTokens = zeroed(n)
        sums = zeroed(n)
        maxima = zeroed(n)
        activeWindows = zeroed(n)
        histogramRange = zeroed(n)
        histogram = zeroed(n * Self.fineBins)
        top = WindowSlots(features: n, capacity: parameters.topCapacity, window: parameters.windowLength, storesValues: true)
        topCount = zeroed(n)
        reservoir = WindowSlots(features: n, capacity: parameters.reservoirCapacity, window: parameters.windowLength, storesValues: true)
        reservoirState = zeroed(n)  // all-zero bits are `ReservoirState()`
        random = WindowSlots(features: n, capacity: parameters.heldoutRandom, window: parameters.windowLength, storesValues: false)
        randomState = zeroed(n)
        generators = zeroed(n)
        started = zeroed(n)
    }

    deinit {
        for pointer in [UnsafeMutableRawPointer(activeTokens), UnsafeMutableRawPointer(sums), UnsafeMutableRawPointer(maxima),
                        UnsafeMutableRawPointer(activeWindows), UnsafeMutableRawPointer(histogramRange),
                        UnsafeMutableRawPointer(histogram), UnsafeMutableRawPointer(topCount),
                        UnsafeMutableRawPointer(reservoirState), UnsafeMutableRawPointer(randomState),
                        UnsafeMutableRawPointer(generators), UnsafeMutableRawPointer(started)] {
            free(pointer)
        }
    }

    /// Whether feature `slot` has any state yet (it fired, or windows were fed to it directly).
    public func hasState(_ slot: Int) -> Bool { started[slot] != 0 || activeWindows[slot] != 0 }

    /// The slot's generator, seeded on first use: features that never fire never seed one.
    @inline(__always)
    private func generator(_ slot: Int) -> UnsafeMutablePointer<SplitMix64> {
        if started[slot] == 0 {
            (generators + slot).initialize(to: SplitMix64(seed: parameters.seed, feature: features[slot], purpose: 1))
            started[slot] = 1
        }
        return generators + slot
    }

    /// Windows of the corpus observed so far by `slot` (orders 0..<this when windows arrive in corpus order).
    @inline(__always)
    public func observedWindows(_ slot: Int) -> Int64 { Int64(randomState[slot].seen + activeWindows[slot]) }

    /// Feeds `slot` the windows from its last observed one up to (not including) `order`, all inactive for it,
    /// in one step (`observeInactiveRun`). Passes call this just before a window on which the feature fires and
    /// once at the end (`completeInactive`), so inactive windows cost nothing per window, and a feature that
    /// never fires is never touched, while the state equals a window-by-window pass.
    @inline(__always)
    public func catchUp(_ slot: Int, to order: Int64, geometry: WindowGeometry) {
        let observed = observedWindows(slot)
        if order > observed {
            observeInactiveRun(slot, firstOrder: observed, count: Int(order - observed), place: geometry.place)
        }
    }

    /// Ends the stream for `slots`: each feature that fired gets its trailing inactive windows (up to
    /// `geometry.totalWindows`); features that never fired stay untouched (stored as dead, with no examples).
    public func completeInactive(slots: Range<Int>, geometry: WindowGeometry) {
        for slot in slots where activeWindows[slot] > 0 {
            catchUp(slot, to: geometry.totalWindows, geometry: geometry)
        }
    }

    /// A window on which feature `slot` fires (`peak` > 0). `values` are the feature's activations on its tokens.
    @inline(__always)
    public func observeActive(_ slot: Int, values: UnsafePointer<Float>, length: Int, peak: Float,
                              sequence: Int, start: Int, order: Int64) {
        // Statistics.
        var range = histogramRange[slot]
        if peak > range { range = growHistogram(slot, to: peak) }
        let bins = histogram + slot * Self.fineBins
        let scale = Float(Self.fineBins) / range
        var fired = 0
        var sum = 0.0
        for index in 0..<length {
            let value = values[index]
            if value > 0 {
                fired += 1
                sum += Double(value)
                let bin = min(Self.fineBins - 1, max(0, Int((value * scale).rounded(.up)) - 1))
                bins[bin] &+= 1
            }
        }
        activeTokens[slot] += fired
        sums[slot] += sum
        if peak > maxima[slot] { maxima[slot] = peak }
        activeWindows[slot] += 1

        // Top-K min-heap keyed by (max, earlier first): the root is the weakest kept window. A later window
        // with an equal max never displaces an earlier one, so ties resolve to the earliest window.
        let capacity = top.capacity
        if capacity > 0 {
            let base = slot * capacity
            let count = topCount[slot]
            if count < capacity {
                top.store(slot: base + count, sequence: sequence, start: start, length: length, maximum: peak, order: order, values: values)
                topCount[slot] = count + 1
                siftUp(base: base, index: count)
            } else if peak > top.maximum[base] {
                top.store(slot: base, sequence: sequence, start: start, length: length, maximum: peak, order: order, values: values)
                siftDown(base: base, count: capacity)
            }
        }

        // Reservoir of activating windows.
        let reservoirCapacity = reservoir.capacity
        if reservoirCapacity > 0 {
            let base = slot * reservoirCapacity
            if let target = admit(state: reservoirState + slot, capacity: reservoirCapacity, generator: generator(slot)) {
                reservoir.store(slot: base + target, sequence: sequence, start: start, length: length, maximum: peak, order: order, values: values)
            }
        }
    }

    /// A window on which feature `slot` never fires.
    @inline(__always)
    public func observeInactive(_ slot: Int, length: Int, sequence: Int, start: Int, order: Int64) {
        let capacity = random.capacity
        guard capacity > 0 else { return }
        let state = randomState + slot
        if state.pointee.seen >= capacity && state.pointee.seen != state.pointee.next {
            state.pointee.seen += 1
            return
        }
        if let target = admit(state: state, capacity: capacity, generator: generator(slot)) {
            random.store(slot: slot * capacity + target, sequence: sequence, start: start, length: length, maximum: 0, order: order, values: nil)
        }
    }

    /// `count` consecutive windows (orders `firstOrder`…) on which feature `slot` never fires, in time independent
    /// of `count` once the reservoir is full: Algorithm L already knows which window it admits next, so the
    /// windows between are skipped in one step. Same state afterwards as `count` calls of `observeInactive`.
    /// `place(order)` gives a window's (sequence, start, length).
    @inline(__always)
    public func observeInactiveRun(_ slot: Int, firstOrder: Int64, count: Int,
                                   place: (Int64) -> (sequence: Int, start: Int, length: Int)) {
        let capacity = random.capacity
        guard capacity > 0, count > 0 else { return }
        let state = randomState + slot
        var done = 0
        while done < count {
            let seen = state.pointee.seen
            if seen >= capacity && seen != state.pointee.next {
                // Windows before the next admitted one change nothing but the count.
                let skip = min(count - done, state.pointee.next > seen ? state.pointee.next - seen : count - done)
                state.pointee.seen += skip
                done += skip
                continue
            }
            let order = firstOrder + Int64(done)
            let window = place(order)
            if let target = admit(state: state, capacity: capacity, generator: generator(slot)) {
                random.store(slot: slot * capacity + target, sequence: window.sequence, start: window.start, length: window.length,
                             maximum: 0, order: order, values: nil)
            }
            done += 1
        }
    }

    /// Algorithm L (Li 1994): a uniform reservoir sample that draws random numbers only when an item is admitted.
    /// Returns the slot (within the feature's reservoir) the current item goes to, or nil.
    @inline(__always)
    private func admit(state: UnsafeMutablePointer<ReservoirState>, capacity: Int,
                       generator: UnsafeMutablePointer<SplitMix64>) -> Int? {
        let seen = state.pointee.seen
        state.pointee.seen = seen + 1
        if seen < capacity {
            if seen == capacity - 1 {
                state.pointee.weight = Foundation.exp(Foundation.log(generator.pointee.unit()) / Double(capacity))
                state.pointee.next = seen + skip(weight: state.pointee.weight, generator: generator) + 1
            }
            return seen
        }
        guard seen == state.pointee.next else { return nil }
        let target = Int(generator.pointee.next() % UInt64(capacity))
        state.pointee.weight *= Foundation.exp(Foundation.log(generator.pointee.unit()) / Double(capacity))
        state.pointee.next = seen + skip(weight: state.pointee.weight, generator: generator) + 1
        return target
    }

    private func skip(weight: Double, generator: UnsafeMutablePointer<SplitMix64>) -> Int {
        let value = (Foundation.log(generator.pointee.unit()) / Foundation.log(1 - weight)).rounded(.down)
        guard value.isFinite, value >= 0 else { return value.isNaN || value < 0 ? 0 : Int.max / 4 }
        return value < Double(Int.max / 4) ? Int(value) : Int.max / 4
    }

    @inline(__always)
    private func weaker(_ a: Int, _ b: Int) -> Bool {
        let ma = top.maximum[a], mb = top.maximum[b]
        return ma < mb || (ma == mb && top.order[a] > top.order[b])
    }

    private func siftUp(base: Int, index: Int) {
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard weaker(base + child, base + parent) else { break }
            top.swapSlots(base + child, base + parent)
            child = parent
        }
    }

    private func siftDown(base: Int, count: Int) {
        var parent = 0
        while true {
            let left = 2 * parent + 1
            guard left < count else { break }
            var weakest = left
            if left + 1 < count, weaker(base + left + 1, base + left) { weakest = left + 1 }
            guard weaker(base + weakest, base + parent) else { break }
            top.swapSlots(base + weakest, base + parent)
            parent = weakest
        }
    }

    private func growHistogram(_ slot: Int, to peak: Float) -> Float {
        var range = histogramRange[slot]
        let bins = histogram + slot * Self.fineBins
        if range == 0 {
            range = Float(bitPattern: 0x0080_0000)  // smallest normal; doubled below up to peak
            if peak.isFinite { range = max(range, Float(sign: .plus, exponent: peak.exponent, significand: 1)) }
        }
        while range < peak {
            let half = Self.fineBins / 2
            for index in 0..<half { bins[index] = bins[2 * index] &+ bins[2 * index + 1] }
            for index in half..<Self.fineBins { bins[index] = 0 }
            range *= 2
        }
        histogramRange[slot] = range
        return range
    }
}
