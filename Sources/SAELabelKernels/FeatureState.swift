import CPrefetch
import Foundation
import SAELabelCore

/// How many windows of each kind a feature keeps, and the window geometry. Defaults follow the project's
/// brief (SPEC §3).
public struct SelectionParameters: Sendable, Equatable {
    /// Windows are non-overlapping blocks of this many tokens of each sequence, aligned at position 0.
    public var windowLength: Int
    public var explainTop: Int
    public var explainQuantile: Int
    public var heldoutTop: Int
    public var heldoutQuantile: Int
    public var heldoutRandom: Int
    /// A feature that fires in fewer windows is stored as `.sparse`.
    public var minActivatingWindows: Int
    public var seed: UInt64

    public init(windowLength: Int = 32, explainTop: Int = 10, explainQuantile: Int = 10, heldoutTop: Int = 5,
                heldoutQuantile: Int = 5, heldoutRandom: Int = 5, minActivatingWindows: Int = 10, seed: UInt64 = 0) {
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

/// One window a feature keeps: its slot among the feature's slots, where it came from, its max and its order.
public struct KeptWindow: Sendable, Equatable {
    public var index: Int
    public var sequence: Int
    public var start: Int
    public var length: Int
    public var maximum: Float
    public var order: Int64
}

/// Up to `capacity` window slots per feature: where each window came from, its max, its order and (optionally)
/// its values, kept as float32 so stored examples hold the raw activations (with Float16, values above 65,504
/// were stored as 0).
///
/// A feature's slots are one allocation of fixed-size records, made when it keeps its first window and doubled
/// as it keeps more (`reservation`): every heap and reservoir fills its slots 0, 1, 2, … before replacing any,
/// so a latent that fires in 8 windows holds 8 slots, not `capacity`, and a feature that keeps nothing holds none.
public final class WindowSlots {
    public let capacity: Int
    public let window: Int
    /// Bytes per record: order (Int64), sequence, start, length (Int32), max (Float), then the window's values
    /// when they are kept; a multiple of 8 so every record's order is aligned.
    public let stride: Int
    let storesValues: Bool
    /// Whether a feature's first window reserves every slot at once: for slots that nearly always fill (the
    /// random held-out windows), one allocation instead of a first run and a doubling.
    let reservesCapacity: Bool
    let features: Int
    /// Per feature, its records (nil until its first window) and how many it has room for.
    private let records: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private let reserved: UnsafeMutablePointer<Int32>
    private let arena: SlotArena

    /// Slots a feature's first allocation holds.
    public static let firstReservation = 4

    /// `arena` (of this record size) is where the records are cut from; a fresh one by default.
    init(features: Int, capacity: Int, window: Int, storesValues: Bool, reservesCapacity: Bool = false, arena: SlotArena? = nil) {
        self.capacity = capacity
        self.window = window
        self.storesValues = storesValues
        self.reservesCapacity = reservesCapacity
        self.features = max(1, features)
        stride = Self.recordBytes(window: window, storesValues: storesValues)
        records = zeroed(self.features)
        reserved = zeroed(self.features)
        let recordBytes = stride
        precondition(arena.map { $0.stride == recordBytes } ?? true, "window slots need an arena of their record size")
        self.arena = arena ?? SlotArena(stride: recordBytes)
    }

    deinit {
        free(records)
        free(reserved)
    }

    public static func recordBytes(window: Int, storesValues: Bool) -> Int {
        (24 + (storesValues ? window * 4 : 0) + 7) / 8 * 8
    }

    /// Slots reserved for a feature that has filled `count` of `capacity`: the first reservation doubled until it
    /// holds `count`, never more than `capacity` (0 for 0).
    public static func reservation(for count: Int, capacity: Int) -> Int {
        let needed = min(count, capacity)
        guard needed > 0 else { return 0 }
        var slots = min(capacity, firstReservation)
        while slots < needed { slots = min(capacity, slots * 2) }
        return slots
    }

    /// Slots `feature` has room for (for tests and memory estimates).
    public func reservedSlots(_ feature: Int) -> Int { Int(reserved[feature]) }

    @inline(__always)
    fileprivate func record(_ feature: Int, _ index: Int) -> UnsafeMutableRawPointer {
        records[feature].unsafelyUnwrapped + index * stride
    }

    /// Asks for the cache lines of record `index` of `feature` ahead of a write, when it exists.
    @inline(__always)
    func prefetch(_ feature: Int, _ index: Int) {
        guard index < Int(reserved[feature]) else { return }
        let start = record(feature, index)
        var offset = 0
        while offset < stride {
            saelabel_prefetch_for_write(start + offset)
            offset += 64
        }
    }

    private func grow(_ feature: Int, toHold count: Int) {
        move(feature, toSlots: reservesCapacity ? capacity : Self.reservation(for: count, capacity: capacity))
    }

    /// Gives `feature` room for exactly `slots` slots (at most the capacity) if it has less: a reader that knows
    /// how many windows a feature can keep (a latent's windows, from its entries) spares it the doublings and
    /// the unused slots of a first run of 4 (a latent firing in 2 windows holds 2 records, not 4).
    public func reserve(_ feature: Int, slots: Int) {
        let wanted = min(slots, capacity)
        if wanted > Int(reserved[feature]) { move(feature, toSlots: wanted) }
    }

    private func move(_ feature: Int, toSlots slots: Int) {
        let moved = arena.take(slots: slots)
        let old = Int(reserved[feature])
        if let previous = records[feature] {
            moved.copyMemory(from: previous, byteCount: old * stride)
            arena.give(previous, slots: old)
        }
        records[feature] = moved
        reserved[feature] = Int32(slots)
    }

    @inline(__always)
    func store(_ feature: Int, _ index: Int, sequence seq: Int, start position: Int, length count: Int, maximum peak: Float,
               order ordinal: Int64, values source: UnsafePointer<Float>?) {
        if index >= Int(reserved[feature]) { grow(feature, toHold: index + 1) }
        let target = record(feature, index)
        target.storeBytes(of: ordinal, as: Int64.self)
        target.storeBytes(of: Int32(truncatingIfNeeded: seq), toByteOffset: 8, as: Int32.self)
        target.storeBytes(of: Int32(truncatingIfNeeded: position), toByteOffset: 12, as: Int32.self)
        target.storeBytes(of: Int32(count), toByteOffset: 16, as: Int32.self)
        target.storeBytes(of: peak, toByteOffset: 20, as: Float.self)
        if storesValues, let source {
            (target + 24).copyMemory(from: source, byteCount: count * 4)
        }
    }

    @inline(__always)
    public func maximum(_ feature: Int, _ index: Int) -> Float { record(feature, index).load(fromByteOffset: 20, as: Float.self) }

    @inline(__always)
    public func order(_ feature: Int, _ index: Int) -> Int64 { record(feature, index).load(as: Int64.self) }

    /// Slot `index`'s values (a record of slots that keep values) and their count.
    @inline(__always)
    func valuesPointer(_ feature: Int, _ index: Int) -> (UnsafePointer<Float>, Int) {
        let source = record(feature, index)
        return (UnsafePointer((source + 24).assumingMemoryBound(to: Float.self)), Int(source.load(fromByteOffset: 16, as: Int32.self)))
    }

    /// Copies record `index` of `feature` in `other` (same window length, values kept by both) to slot `target`.
    func copy(from other: WindowSlots, _ feature: Int, _ index: Int, to target: Int) {
        if target >= Int(reserved[feature]) { grow(feature, toHold: target + 1) }
        let source = other.record(feature, index)
        let count = Int(source.load(fromByteOffset: 16, as: Int32.self))
        record(feature, target).copyMemory(from: source, byteCount: 24 + (storesValues ? count * 4 : 0))
    }

    /// Slot `index` of `feature` (filled: below the count its heap or reservoir kept).
    public func kept(_ feature: Int, _ index: Int) -> KeptWindow {
        let source = record(feature, index)
        return KeptWindow(index: index, sequence: Int(source.load(fromByteOffset: 8, as: Int32.self)),
                          start: Int(source.load(fromByteOffset: 12, as: Int32.self)),
                          length: Int(source.load(fromByteOffset: 16, as: Int32.self)),
                          maximum: source.load(fromByteOffset: 20, as: Float.self), order: source.load(as: Int64.self))
    }

    /// The values of slot `index` of `feature` (zeros when this kind of slot keeps none).
    public func values(_ feature: Int, _ index: Int) -> [Float] {
        let source = record(feature, index)
        let count = Int(source.load(fromByteOffset: 16, as: Int32.self))
        guard storesValues else { return [Float](repeating: 0, count: count) }
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: source + 24, byteCount: count * 4)
            initialized = count
        }
    }
}

/// Where window slots live: large chunks cut into runs of records, so a feature's first window and each
/// doubling cost no malloc (per-feature mallocs from worker threads spent much of a wide latent cache's time
/// growing glibc's thread heaps). A run given back when its feature outgrows it is reused by the next feature
/// that needs that many slots, so the doubling wastes at most one run per size in use. Thread-safe: features
/// of one `WindowSlots` grow on several threads at once (`FeaturePass`). `rewind` hands the same chunks out
/// again for the next block of features, so its records land on pages already mapped instead of fresh ones
/// the kernel must fault in and clear.
final class SlotArena: @unchecked Sendable {
    let stride: Int
    private let lock = NSLock()
    private var chunks: [(start: UnsafeMutableRawPointer, bytes: Int)] = []
    /// Index in `chunks` of the chunk runs are cut from (-1 before the first).
    private var current = -1
    private var cursor: UnsafeMutableRawPointer?
    private var remaining = 0
    /// Runs given back, by slot count: each run's first 8 bytes link to the next.
    private var released: [Int: UnsafeMutableRawPointer] = [:]
    static let chunkBytes = 4 << 20

    init(stride: Int) { self.stride = stride }

    deinit { for chunk in chunks { free(chunk.start) } }

    /// A run of `slots` records (uninitialized).
    func take(slots: Int) -> UnsafeMutableRawPointer {
        let bytes = slots * stride
        lock.lock()
        defer { lock.unlock() }
        if let run = released[slots] {
            released[slots] = run.load(as: UnsafeMutableRawPointer?.self)
            return run
        }
        if bytes > remaining {
            // The next chunk a rewound arena already holds, if large enough, else a new one at the end.
            current += 1
            while current < chunks.count && chunks[current].bytes < bytes { current += 1 }
            if current >= chunks.count {
                let size = max(Self.chunkBytes, bytes)
                guard let chunk = malloc(size) else { fatalError("out of memory reserving \(slots) window slots") }
                chunks.append((chunk, size))
                current = chunks.count - 1
            }
            cursor = chunks[current].start
            remaining = chunks[current].bytes
        }
        let run = cursor.unsafelyUnwrapped
        cursor = run + bytes
        remaining -= bytes
        return run
    }

    /// Gives back a run `take(slots:)` returned, for the next feature that needs as many slots.
    func give(_ run: UnsafeMutableRawPointer, slots: Int) {
        lock.lock()
        defer { lock.unlock() }
        run.storeBytes(of: released[slots], as: UnsafeMutableRawPointer?.self)
        released[slots] = run
    }

    /// Forgets every run handed out: the chunks are cut again from the first, keeping their pages. Only when
    /// nothing reads or writes a run any more (the block that used them is finished and stored).
    func rewind() {
        lock.lock()
        defer { lock.unlock() }
        released.removeAll(keepingCapacity: true)
        current = -1
        cursor = nil
        remaining = 0
    }

    /// Bytes of chunks held (for tests).
    var heldBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return chunks.reduce(0) { $0 + $1.bytes }
    }
}

/// The arenas one block's window slots and histograms are cut from, passed from a finished block's
/// `FeatureAccumulators` to a later block's (`init(features:parameters:defersToTop:reusing:)`): collect's
/// pipeline alternates two of them, so after the first two blocks a block's state costs no new pages.
public final class FeatureStateMemory: @unchecked Sendable {
    let top: SlotArena
    let reservoir: SlotArena
    let random: SlotArena
    let drawn: SlotArena
    let histograms: SlotArena
    /// The window length the record strides were sized for.
    let windowLength: Int

    init(windowLength: Int) {
        self.windowLength = windowLength
        let valued = WindowSlots.recordBytes(window: windowLength, storesValues: true)
        let plain = WindowSlots.recordBytes(window: windowLength, storesValues: false)
        top = SlotArena(stride: valued)
        reservoir = SlotArena(stride: valued)
        random = SlotArena(stride: plain)
        drawn = SlotArena(stride: plain)
        histograms = SlotArena(stride: FeatureAccumulators.fineBins * MemoryLayout<UInt32>.stride)
    }

    private var arenas: [SlotArena] { [top, reservoir, random, drawn, histograms] }

    func rewind() {
        for arena in arenas { arena.rewind() }
    }

    /// Bytes of chunks held by every arena (for tests and benchmarks).
    public var heldBytes: Int { arenas.reduce(0) { $0 + $1.heldBytes } }
}

/// `count` zeroed elements from calloc (free with `free`): zero pages the kernel maps only when first written.
func zeroed<T>(_ count: Int) -> UnsafeMutablePointer<T> {
    guard let raw = calloc(max(1, count), MemoryLayout<T>.stride) else { fatalError("out of memory allocating \(count) × \(T.self)") }
    return raw.bindMemory(to: T.self, capacity: max(1, count))
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
    /// Its bins (`fineBins` counts), nil until the feature first fires: taken from an arena then, so only
    /// firing features pay the 1 KiB, and it is written before it is read (one page fault per page, not two).
    private let histograms: UnsafeMutablePointer<UnsafeMutablePointer<UInt32>?>
    private var histogramArena: SlotArena { memory.histograms }
    /// The arenas this block's slots and histograms are cut from; a later block may take them over once this
    /// one is finished (`init(features:parameters:defersToTop:reusing:)`).
    public let memory: FeatureStateMemory
    public let top: WindowSlots
    public let topCount: UnsafeMutablePointer<Int>
    /// Per feature, `topCapacity` keys (max, record index in `top`) arranged as a min-heap by (max, earlier first):
    /// the root is the weakest kept window. The heap moves these keys, never the records (152 bytes each at 32
    /// tokens, far out of cache across a block's features), so a window is written once, where it lands, and a
    /// sift reads records only to break a tie of maxima.
    let topHeap: UnsafeMutablePointer<TopKey>

    struct TopKey {
        var maximum: Float
        var record: Int32
    }
    /// Per feature, the max of its weakest kept window once its top heap is full: a window whose peak is not
    /// above it cannot enter, which is all most firing windows need to learn about the heap.
    let topFloor: UnsafeMutablePointer<Float>
    public let reservoir: WindowSlots
    public let reservoirState: UnsafeMutablePointer<ReservoirState>
    public let random: WindowSlots
    public let randomState: UnsafeMutablePointer<ReservoirState>
    let generators: UnsafeMutablePointer<SplitMix64>
    /// 1 once the slot's generator is seeded (its first window).
    let started: UnsafeMutablePointer<UInt8>
    /// The random reservoir's own generator (its draws never shift the activating reservoir's), seeded on first use.
    let randomGenerators: UnsafeMutablePointer<SplitMix64>
    let randomStarted: UnsafeMutablePointer<UInt8>
    /// The held-out random windows drawn by `drawRandomWindows`, when the draw found enough (`RandomDraw.chosen`).
    public let drawn: WindowSlots
    /// Per feature, the draw's candidate windows as the dense pass tracks them: `randomCandidates` packed
    /// `order << 5 | draw index`, sorted by order, written when the feature is first caught up.
    private let candidates: UnsafeMutablePointer<Int64>
    private let draws: UnsafeMutablePointer<RandomDraw>

    /// Candidate windows the held-out random draw looks at (see `drawRandomWindows`): at most 32 (a bit mask).
    public static let randomCandidates = 32

    /// Where a feature's random draw stands: which candidates were seen inactive (bit = draw index), how far
    /// the stream has passed through the sorted candidates, and whether the draw was made and decided.
    struct RandomDraw {
        var inactive: UInt32 = 0
        var cursor: UInt8 = 0
        var prepared: UInt8 = 0
        /// 1 once the held-out random windows are decided (drawn or left to the reservoir).
        var decided: UInt8 = 0
        /// Windows the draw chose (`heldoutRandom` when it found enough; 0 means the reservoir's are used).
        var chosen: UInt8 = 0
    }

    public struct ReservoirState {
        public var seen = 0
        var next = 0
        var weight = 0.0
    }

    /// While a feature has fired in at most `topCapacity` windows, its top heap holds every one of them, so its
    /// reservoir (which would hold the same windows, in corpus order) and its histogram are not written: they
    /// are built from the heap when its next window arrives (`settle`), or read from it at the end
    /// (`reservoirWindows`, `histogramCounts`). A wide SAE's many latents that fire a few times then hold one
    /// copy of their windows instead of two plus a histogram. Only when the reservoir can hold the whole heap.
    public let defersToTop: Bool

    /// Whether these parameters let the top heap stand in for the reservoir (it can hold the whole heap).
    static func topStandsInForReservoir(_ parameters: SelectionParameters) -> Bool {
        parameters.topCapacity > 0 && (parameters.reservoirCapacity == 0 || parameters.reservoirCapacity >= parameters.topCapacity)
    }

    /// `defersToTop: false` writes every window to the reservoir and histogram as it comes (the reference the
    /// deferral is tested against). `reusing` is the memory of a finished block's accumulators (nothing reads
    /// them any more): its arenas are rewound and cut again, so this block's window slots land on pages already
    /// mapped. Every record and histogram is written before it is read, so the reused bytes never show.
    public init(features: [Int], parameters: SelectionParameters, defersToTop: Bool = true, reusing: FeatureStateMemory? = nil) {
        self.features = features
        self.parameters = parameters
        self.defersToTop = defersToTop && Self.topStandsInForReservoir(parameters)
        if let reusing, reusing.windowLength == parameters.windowLength {
            reusing.rewind()
            memory = reusing
        } else {
            memory = FeatureStateMemory(windowLength: parameters.windowLength)
        }
        let n = max(1, features.count)
        // Zeroed by calloc: large arrays come as untouched zero pages, so a feature that never fires costs no
        // memory and no time (its state is first written when it first fires, `catchUp`).
        activeTokens = zeroed(n)
        sums = zeroed(n)
        maxima = zeroed(n)
        activeWindows = zeroed(n)
        histogramRange = zeroed(n)
        histograms = zeroed(n)
        top = WindowSlots(features: n, capacity: parameters.topCapacity, window: parameters.windowLength, storesValues: true,
                          arena: memory.top)
        topCount = zeroed(n)
        topHeap = zeroed(n * max(1, parameters.topCapacity))
        topFloor = zeroed(n)
        reservoir = WindowSlots(features: n, capacity: parameters.reservoirCapacity, window: parameters.windowLength, storesValues: true,
                                arena: memory.reservoir)
        reservoirState = zeroed(n)  // all-zero bits are `ReservoirState()`
        random = WindowSlots(features: n, capacity: parameters.heldoutRandom, window: parameters.windowLength, storesValues: false,
                             reservesCapacity: true, arena: memory.random)
        randomState = zeroed(n)
        generators = zeroed(n)
        started = zeroed(n)
        randomGenerators = zeroed(n)
        randomStarted = zeroed(n)
        drawn = WindowSlots(features: n, capacity: parameters.heldoutRandom, window: parameters.windowLength, storesValues: false,
                            reservesCapacity: true, arena: memory.drawn)
        candidates = zeroed(n * Self.randomCandidates)
        draws = zeroed(n)
    }

    deinit {
        // One `free` each (explicit types: a single array literal of 17 conversions is too slow to type-check).
        free(activeTokens); free(sums); free(maxima); free(activeWindows); free(histogramRange)
        free(histograms); free(topCount); free(topHeap); free(topFloor); free(reservoirState); free(randomState)
        free(generators); free(started); free(randomGenerators); free(randomStarted); free(candidates); free(draws)
    }

    /// Bytes one feature's streaming state holds once it fired in `activeWindows` windows (and missed enough
    /// others to fill its random reservoir): the per-feature entries every feature has, plus, once it fired, its
    /// histogram and the window slots it reserved (`WindowSlots.reservation`).
    public static func stateBytes(_ parameters: SelectionParameters, activeWindows: Int) -> Int {
        let everyFeature = 4 * 8 + 3 * 4 + 2 * MemoryLayout<ReservoirState>.stride + 2 * (MemoryLayout<SplitMix64>.stride + 1)
            + 4 * (8 + 4) + MemoryLayout<RandomDraw>.stride + parameters.topCapacity * MemoryLayout<TopKey>.stride
        guard activeWindows > 0 else { return everyFeature }
        let window = parameters.windowLength
        let valued = WindowSlots.recordBytes(window: window, storesValues: true)
        // A feature that fired in at most `topCapacity` windows keeps them in its top heap alone (`defersToTop`):
        // no reservoir slots, no histogram. A wide latent cache's latents mostly fire that rarely.
        let deferred = topStandsInForReservoir(parameters) && activeWindows <= parameters.topCapacity
        let activeSlots = WindowSlots.reservation(for: activeWindows, capacity: parameters.topCapacity)
            + (deferred ? 0 : WindowSlots.reservation(for: activeWindows, capacity: parameters.reservoirCapacity))
        // The random reservoir and the drawn windows (the dense pass holds both), and the dense pass's candidates.
        let randomSlots = 2 * parameters.heldoutRandom
        return everyFeature + (deferred ? 0 : fineBins * MemoryLayout<UInt32>.stride) + activeSlots * valued
            + randomSlots * WindowSlots.recordBytes(window: window, storesValues: false) + randomCandidates * 8
    }

    @inline(__always)
    private func histogramBins(_ slot: Int) -> UnsafeMutablePointer<UInt32> {
        if let bins = histograms[slot] { return bins }
        let bins = histogramArena.take(slots: 1).bindMemory(to: UInt32.self, capacity: Self.fineBins)
        bins.initialize(repeating: 0, count: Self.fineBins)
        histograms[slot] = bins
        return bins
    }

    /// Asks for the lines `observeActive` will write for a window of `slot` peaking at `peak` (its peak's histogram
    /// bin, the top-heap record it would take), so the misses on these scattered lines overlap other work.
    @inline(__always)
    func prefetchActive(_ slot: Int, peak: Float) {
        if let bins = histograms[slot] {
            let range = histogramRange[slot]
            if peak <= range { saelabel_prefetch_for_write(bins + Self.bin(peak, scale: Float(Self.fineBins) / range)) }
        }
        let capacity = top.capacity
        guard capacity > 0 else { return }
        let count = topCount[slot]
        if count < capacity {
            top.prefetch(slot, count)
        } else if peak > topFloor[slot] {
            top.prefetch(slot, Int(topHeap[slot * capacity].record))
        }
    }

    /// Whether `slot` fired and its reservoir and histogram are still deferred to its top heap.
    @inline(__always)
    func isDeferred(_ slot: Int) -> Bool { defersToTop && histograms[slot] == nil }

    /// The top heap's slots in corpus order (while deferred: the windows the reservoir would hold, in its order).
    private func topByOrder(_ slot: Int) -> [Int] {
        (0..<topCount[slot]).sorted { top.order(slot, $0) < top.order(slot, $1) }
    }

    /// Ends the deferral of `slot` (`defersToTop`): its histogram and reservoir are built from the heap, which
    /// holds every window it fired in so far, as the window-by-window pass would have left them. The histogram
    /// has the same counts whatever the order: a value's bin at range 2R is its bin at R halved, which is what
    /// growing the range does to the bins.
    func settle(_ slot: Int) {
        guard isDeferred(slot), activeWindows[slot] > 0 else { return }
        let windows = topByOrder(slot)
        histogramRange[slot] = Self.grownRange(maxima[slot])
        fillHistogram(histogramBins(slot), slot: slot, windows: windows)
        if reservoir.capacity > 0 {
            for (index, heapSlot) in windows.enumerated() { reservoir.copy(from: top, slot, heapSlot, to: index) }
        }
    }

    /// The range the window-by-window pass reaches for a feature whose largest window max is `peak`: the
    /// smallest power of two at or above it, whatever the first window was (`firstRange`, doubled).
    static func grownRange(_ peak: Float) -> Float {
        var range = firstRange(peak)
        while range < peak { range *= 2 }
        return range
    }

    private func fillHistogram(_ bins: UnsafeMutablePointer<UInt32>, slot: Int, windows: [Int]) {
        let scale = Float(Self.fineBins) / histogramRange[slot]
        for heapSlot in windows {
            let (values, length) = top.valuesPointer(slot, heapSlot)
            for index in 0..<length where values[index] > 0 { bins[Self.bin(values[index], scale: scale)] &+= 1 }
        }
    }

    /// Feature `slot`'s histogram range and fine counts (`fineBins` counts over (0, range]); nil if it never fired.
    public func histogramCounts(_ slot: Int) -> (range: Float, counts: [UInt32])? {
        guard activeWindows[slot] > 0 || histograms[slot] != nil else { return nil }
        if let bins = histograms[slot] { return (histogramRange[slot], Array(UnsafeBufferPointer(start: bins, count: Self.fineBins))) }
        let range = Self.grownRange(maxima[slot])
        var counts = [UInt32](repeating: 0, count: Self.fineBins)
        let scale = Float(Self.fineBins) / range
        for heapSlot in topByOrder(slot) {
            let (values, length) = top.valuesPointer(slot, heapSlot)
            for index in 0..<length where values[index] > 0 { counts[Self.bin(values[index], scale: scale)] &+= 1 }
        }
        return (range, counts)
    }

    /// The activating windows `slot`'s reservoir holds, in its slot order, with the slots to read their values from.
    public func reservoirWindows(_ slot: Int) -> (slots: WindowSlots, windows: [KeptWindow]) {
        if isDeferred(slot) {
            return (top, topByOrder(slot).map { top.kept(slot, $0) })
        }
        return (reservoir, (0..<min(reservoirState[slot].seen, reservoir.capacity)).map { reservoir.kept(slot, $0) })
    }

    /// Windows feature `slot` holds in its slots now: top heap, reservoir (none while deferred to the heap) and
    /// random held-out reservoir. For benchmarks relating the streaming cost to the windows kept.
    public func keptWindowCount(_ slot: Int) -> Int {
        topCount[slot] + (isDeferred(slot) ? 0 : min(reservoirState[slot].seen, reservoir.capacity))
            + (randomStarted[slot] != 0 ? min(randomState[slot].seen, random.capacity) : 0) + Int(draws[slot].chosen)
    }

    /// Whether feature `slot` has any state yet (it fired, or windows were fed to it directly).
    public func hasState(_ slot: Int) -> Bool { started[slot] != 0 || randomStarted[slot] != 0 || activeWindows[slot] != 0 }

    /// The slot's generator, seeded on first use: features that never fire never seed one.
    @inline(__always)
    private func generator(_ slot: Int) -> UnsafeMutablePointer<SplitMix64> {
        seeded(slot, generators, started, purpose: 1)
    }

    /// The random reservoir's generator, seeded on first use.
    @inline(__always)
    private func randomGenerator(_ slot: Int) -> UnsafeMutablePointer<SplitMix64> {
        seeded(slot, randomGenerators, randomStarted, purpose: 3)
    }

    @inline(__always)
    private func seeded(_ slot: Int, _ generators: UnsafeMutablePointer<SplitMix64>, _ started: UnsafeMutablePointer<UInt8>,
                        purpose: UInt64) -> UnsafeMutablePointer<SplitMix64> {
        if started[slot] == 0 {
            (generators + slot).initialize(to: SplitMix64(seed: parameters.seed, feature: features[slot], purpose: purpose))
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
    /// The dense pass also tracks which of the feature's random draw candidates (`drawRandomWindows`) fall in
    /// these inactive windows, so the draw can be decided at the end without the feature's firing windows.
    @inline(__always)
    public func catchUp(_ slot: Int, to order: Int64, geometry: WindowGeometry) {
        if draws[slot].prepared == 0 { prepareCandidates(slot, windows: geometry.totalWindows) }
        let observed = observedWindows(slot)
        if order > observed {
            markInactiveCandidates(slot, from: observed, to: order)
            observeInactiveRun(slot, firstOrder: observed, count: Int(order - observed), place: { geometry.place($0) })
        }
    }

    /// Ends the stream for `slots`: each feature that fired gets its trailing inactive windows (up to
    /// `geometry.totalWindows`) and its held-out random windows decided; features that never fired stay
    /// untouched (stored as dead, with no examples). Features already decided (`finishInactive`) are skipped.
    public func completeInactive(slots: Range<Int>, geometry: WindowGeometry) {
        for slot in slots where activeWindows[slot] > 0 && draws[slot].decided == 0 {
            catchUp(slot, to: geometry.totalWindows, geometry: geometry)
            let mask = draws[slot].inactive
            drawRandomWindows(slot, geometry: geometry) { draw, _ in mask & (1 << UInt32(draw)) != 0 }
        }
    }

    /// Ends the stream for one feature whose firing windows are all known (a latent cache's latent, read whole):
    /// `firingOrders`, ascending, are the windows it fired in (each already given to `observeActive`). Decides
    /// its held-out random windows by the draw, and only when the draw falls short feeds the inactive windows
    /// between to the random reservoir, so a latent costs O(its windows), not O(log of the corpus's windows).
    /// Same state afterwards as `catchUp` before each firing window and `completeInactive`.
    public func finishInactive(_ slot: Int, firingOrders: UnsafeBufferPointer<Int64>, geometry: WindowGeometry) {
        guard !firingOrders.isEmpty, draws[slot].decided == 0 else { return }
        let found = drawRandomWindows(slot, geometry: geometry) { _, order in
            let index = firingOrders.partitionIndex { $0 >= order }
            return index == firingOrders.count || firingOrders[index] != order
        }
        if found {
            // The reservoir is not read; only its count, so `observedWindows` says the stream is complete.
            randomState[slot].seen = Int(geometry.totalWindows) - activeWindows[slot]
            return
        }
        // The runs between firing windows, then the run after the last one (no array of firing orders + [total]).
        var next: Int64 = 0
        for order in firingOrders {
            if order > next { observeInactiveRun(slot, firstOrder: next, count: Int(order - next), place: { geometry.place($0) }) }
            next = order + 1
        }
        if geometry.totalWindows > next {
            observeInactiveRun(slot, firstOrder: next, count: Int(geometry.totalWindows - next), place: { geometry.place($0) })
        }
    }

    /// The held-out random windows of a feature: the first `heldoutRandom` distinct windows on which it does not
    /// fire among `randomCandidates` windows drawn uniformly from the corpus by its own seeded generator
    /// (purpose 4, independent of the data). That is a uniform sample of its non-activating windows; a feature
    /// that fires in so many windows that the candidates hold too few keeps the random reservoir's uniform
    /// sample instead. Draws are all that a rarely firing latent needs (≈ `heldoutRandom` of them), where a
    /// reservoir over its ≈ all-the-corpus inactive windows admits O(k log(windows / k)) with logs and exps.
    /// `isInactive(draw, order)` says whether candidate `draw` (window `order`) is one it does not fire on.
    /// Returns whether the draw found enough (`RandomDraw.chosen`).
    @discardableResult
    private func drawRandomWindows(_ slot: Int, geometry: WindowGeometry, isInactive: (Int, Int64) -> Bool) -> Bool {
        let wanted = parameters.heldoutRandom
        draws[slot].decided = 1
        guard wanted > 0, geometry.totalWindows > 0 else { return false }
        var chosen: [Int64] = []
        chosen.reserveCapacity(wanted)
        for (draw, order) in candidateWindows(slot, windows: geometry.totalWindows).enumerated() {
            guard isInactive(draw, order), !chosen.contains(order) else { continue }
            chosen.append(order)
            if chosen.count == wanted { break }
        }
        guard chosen.count == wanted else { return false }
        for (index, order) in chosen.enumerated() {
            let window = geometry.place(order)
            drawn.store(slot, index, sequence: window.sequence, start: window.start, length: window.length, maximum: 0,
                        order: order, values: nil)
        }
        draws[slot].chosen = UInt8(wanted)
        return true
    }

    /// The windows of `slot`'s `randomCandidates` draws, in draw order: the one derivation both the draw and the
    /// dense pass's sorted copy (`prepareCandidates`) use, so they always name the same windows.
    private func candidateWindows(_ slot: Int, windows: Int64) -> [Int64] {
        var generator = SplitMix64(seed: parameters.seed, feature: features[slot], purpose: 4)
        return (0..<Self.randomCandidates).map { _ in Int64(generator.next() % UInt64(windows)) }
    }

    /// The dense pass's copy of the draw's candidates, sorted by window, so runs of inactive windows can mark them
    /// as they pass (`markInactiveCandidates`).
    private func prepareCandidates(_ slot: Int, windows: Int64) {
        draws[slot].prepared = 1
        guard windows > 0, parameters.heldoutRandom > 0 else { return }
        let base = candidates + slot * Self.randomCandidates
        for (draw, order) in candidateWindows(slot, windows: windows).enumerated() { base[draw] = order << 5 | Int64(draw) }
        var sorted = UnsafeMutableBufferPointer(start: base, count: Self.randomCandidates)
        sorted.sort()
    }

    /// Marks the candidates in windows `from..<to` (all inactive for `slot`); candidates the stream passed
    /// between runs lie in windows the feature fired in.
    @inline(__always)
    private func markInactiveCandidates(_ slot: Int, from first: Int64, to end: Int64) {
        guard parameters.heldoutRandom > 0 else { return }
        let base = candidates + slot * Self.randomCandidates
        var cursor = Int(draws[slot].cursor)
        var inactive = draws[slot].inactive
        while cursor < Self.randomCandidates {
            let packed = base[cursor]
            let order = packed >> 5
            if order >= end { break }
            if order >= first { inactive |= 1 << UInt32(packed & 31) }
            cursor += 1
        }
        draws[slot].cursor = UInt8(cursor)
        draws[slot].inactive = inactive
    }

    /// Whether `slot`'s held-out random windows come from the draw (else from the random reservoir).
    public func randomWindowsWereDrawn(_ slot: Int) -> Bool { draws[slot].chosen > 0 }

    /// `slot`'s held-out random windows, in corpus order, with the slots they are in: the draw's, or the
    /// random reservoir's.
    public func randomWindows(_ slot: Int) -> (slots: WindowSlots, windows: [KeptWindow]) {
        if draws[slot].chosen > 0 {
            return (drawn, (0..<Int(draws[slot].chosen)).map { drawn.kept(slot, $0) }.sorted { $0.order < $1.order })
        }
        return (random, (0..<min(randomState[slot].seen, random.capacity)).map { random.kept(slot, $0) }.sorted { $0.order < $1.order })
    }

    /// A window on which feature `slot` fires (`peak` > 0). `values` are the feature's activations on its tokens.
    @inline(__always)
    public func observeActive(_ slot: Int, values: UnsafePointer<Float>, length: Int, peak: Float,
                              sequence: Int, start: Int, order: Int64) {
        if activeWindows[slot] == parameters.topCapacity { settle(slot) }
        let deferred = isDeferred(slot)

        // Statistics.
        var fired = 0
        var sum = 0.0
        if deferred {
            Self.forEachPositive(values, length) { value in
                fired += 1
                sum += Double(value)
            }
        } else {
            var range = histogramRange[slot]
            if peak > range { range = growHistogram(slot, to: peak) }
            let bins = histogramBins(slot)
            let scale = Float(Self.fineBins) / range
            Self.forEachPositive(values, length) { value in
                fired += 1
                sum += Double(value)
                bins[Self.bin(value, scale: scale)] &+= 1
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
            let count = topCount[slot]
            let heap = topHeap + slot * capacity
            if count < capacity {
                top.store(slot, count, sequence: sequence, start: start, length: length, maximum: peak, order: order, values: values)
                topCount[slot] = count + 1
                heap[count] = TopKey(maximum: peak, record: Int32(count))
                siftUp(slot, heap: heap, index: count)
                if count + 1 == capacity { topFloor[slot] = heap[0].maximum }
            } else if peak > topFloor[slot] {
                // The weakest window's record takes the new one in place; only keys move.
                let record = heap[0].record
                top.store(slot, Int(record), sequence: sequence, start: start, length: length, maximum: peak, order: order,
                          values: values)
                heap[0] = TopKey(maximum: peak, record: record)
                siftDown(slot, heap: heap, count: capacity)
                topFloor[slot] = heap[0].maximum
            }
        }

        // Reservoir of activating windows.
        let reservoirCapacity = reservoir.capacity
        if reservoirCapacity > 0 {
            if let target = admit(state: reservoirState + slot, capacity: reservoirCapacity, generator: generator(slot)), !deferred {
                reservoir.store(slot, target, sequence: sequence, start: start, length: length, maximum: peak, order: order, values: values)
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
        if let target = admit(state: state, capacity: capacity, generator: randomGenerator(slot)) {
            random.store(slot, target, sequence: sequence, start: start, length: length, maximum: 0, order: order, values: nil)
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
            if let target = admit(state: state, capacity: capacity, generator: randomGenerator(slot)) {
                random.store(slot, target, sequence: window.sequence, start: window.start, length: window.length,
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

    /// Whether top key `a` of `slot` ranks below key `b`: a smaller max, or the same max and a later window.
    @inline(__always)
    private func weaker(_ slot: Int, _ a: TopKey, _ b: TopKey) -> Bool {
        a.maximum < b.maximum || (a.maximum == b.maximum && top.order(slot, Int(a.record)) > top.order(slot, Int(b.record)))
    }

    /// Moves the key at `heap[index]` up to its place (the entries it passes move down one level).
    private func siftUp(_ slot: Int, heap: UnsafeMutablePointer<TopKey>, index: Int) {
        let entry = heap[index]
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard weaker(slot, entry, heap[parent]) else { break }
            heap[child] = heap[parent]
            child = parent
        }
        heap[child] = entry
    }

    /// Moves the root's key down to its place among the first `count` entries.
    private func siftDown(_ slot: Int, heap: UnsafeMutablePointer<TopKey>, count: Int) {
        let entry = heap[0]
        var parent = 0
        while true {
            let left = 2 * parent + 1
            guard left < count else { break }
            var weakest = left
            if left + 1 < count, weaker(slot, heap[left + 1], heap[left]) { weakest = left + 1 }
            guard weaker(slot, heap[weakest], entry) else { break }
            heap[parent] = heap[weakest]
            parent = weakest
        }
        heap[parent] = entry
    }

    /// Record indices of `slot`'s top heap in heap order (the root, the weakest kept window, first).
    public func topHeapOrder(_ slot: Int) -> [Int] {
        (0..<topCount[slot]).map { Int(topHeap[slot * top.capacity + $0].record) }
    }

    /// A histogram's range before its first growth: the power of two at or below `peak` (at least the
    /// smallest normal), doubled by `growHistogram` up to the peak.
    static func firstRange(_ peak: Float) -> Float {
        let smallestNormal = Float(bitPattern: 0x0080_0000)
        return peak.isFinite ? max(smallestNormal, Float(sign: .plus, exponent: peak.exponent, significand: 1)) : smallestNormal
    }

    /// The fine bin of `value` in a histogram whose bins are `1 / scale` wide: ⌈value·scale⌉ − 1, clamped.
    @inline(__always)
    static func bin(_ value: Float, scale: Float) -> Int {
        let scaled = value * scale
        // Rounded up by hand below 2^24 (every float there truncates exactly): `rounded(.up)` is a call to
        // libm's ceilf per firing token on baseline x86-64, which has no rounding instruction.
        if scaled >= 0 && scaled < 16_777_216 {
            let truncated = Int(scaled)
            let up = Float(truncated) < scaled ? truncated + 1 : truncated
            return min(fineBins - 1, max(0, up - 1))
        }
        return min(fineBins - 1, max(0, Int(scaled.rounded(.up)) - 1))
    }

    /// Calls `body` with each value of `values[0..<length]` above 0, in order. Groups of eight whose bits are all
    /// zero are passed over with one test: in most windows a feature fires in, most of its tokens do not fire.
    @inline(__always)
    static func forEachPositive(_ values: UnsafePointer<Float>, _ length: Int, _ body: (Float) -> Void) {
        let raw = UnsafeRawPointer(values)
        var index = 0
        while index + 8 <= length {
            let bits = raw.loadUnaligned(fromByteOffset: index * 4, as: UInt64.self)
                | raw.loadUnaligned(fromByteOffset: index * 4 + 8, as: UInt64.self)
                | raw.loadUnaligned(fromByteOffset: index * 4 + 16, as: UInt64.self)
                | raw.loadUnaligned(fromByteOffset: index * 4 + 24, as: UInt64.self)
            if bits != 0 {
                for lane in index..<(index + 8) where values[lane] > 0 { body(values[lane]) }
            }
            index += 8
        }
        while index < length {
            if values[index] > 0 { body(values[index]) }
            index += 1
        }
    }

    private func growHistogram(_ slot: Int, to peak: Float) -> Float {
        var range = histogramRange[slot]
        let bins = histogramBins(slot)
        if range == 0 { range = Self.firstRange(peak) }
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
