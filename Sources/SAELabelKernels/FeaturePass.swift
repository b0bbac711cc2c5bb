/// One window of an encoded batch: batch columns `offset..<offset+length`, and where it came from in the corpus.
public struct BatchWindow: Sendable {
    public var offset: Int
    public var length: Int
    public var sequence: Int
    public var start: Int
    public var order: Int64

    public init(offset: Int, length: Int, sequence: Int, start: Int, order: Int64) {
        self.offset = offset
        self.length = length
        self.sequence = sequence
        self.start = start
        self.order = order
    }
}

/// How the corpus splits into windows: parts (shards) of `sequences × context` tokens, each sequence cut into
/// windows of `window` tokens from position 0 (the last one shorter), numbered in corpus order from 0.
public struct WindowGeometry: Sendable {
    struct Part: Sendable {
        var firstOrder: Int64
        var firstSequence: Int
        var context: Int
        var windowsPerSequence: Int
    }

    public let window: Int
    let parts: [Part]
    public let totalWindows: Int64

    public init(window: Int, parts shapes: [(sequences: Int, context: Int)]) {
        self.window = max(1, window)
        var parts: [Part] = []
        var order: Int64 = 0, sequence = 0
        for shape in shapes {
            let perSequence = (shape.context + self.window - 1) / self.window
            parts.append(Part(firstOrder: order, firstSequence: sequence, context: shape.context, windowsPerSequence: perSequence))
            order += Int64(shape.sequences * perSequence)
            sequence += shape.sequences
        }
        self.parts = parts
        totalWindows = order
    }

    /// Window `order`'s corpus sequence, first position and length.
    public func place(_ order: Int64) -> (sequence: Int, start: Int, length: Int) {
        let part = parts.last { $0.firstOrder <= order } ?? parts[0]
        let local = Int(order - part.firstOrder)
        let start = (local % part.windowsPerSequence) * window
        return (part.firstSequence + local / part.windowsPerSequence, start, min(window, part.context - start))
    }
}

/// The SAE's activation function, with its per-feature parameters indexed by a row's parameter index.
/// Rows hold `x'·W_enc` without the bias; the function turns them into activations in place.
public enum Activation: Sendable {
    /// relu(pre + b).
    case relu(bias: [Float])
    /// (pre + b) where pre + b > threshold, else 0.
    case jumpReLU(bias: [Float], threshold: [Float])
    /// (pre + b_gate > 0) · relu(pre·scale + b_mag) (SAELens gated_sae.py `encode`).
    case gated(gateBias: [Float], magnitudeScale: [Float], magnitudeBias: [Float])
    /// (pre + b)·scale where it is ≥ the column's k-th largest over all features (`EncodedBatch.columnLimits`), else 0.
    case topK(bias: [Float], scale: [Float]?)
    /// pre + b where it is its group's largest in the column (`columnLimits`: [groups × stride]), else 0.
    case groupMax(bias: [Float], groupSize: Int)
}

/// Where one batch's windows lie and which of its columns count.
public struct EncodedBatch: @unchecked Sendable {
    public var windows: UnsafeBufferPointer<BatchWindow>
    /// Per column, 1 for a counted token and 0 for an excluded one (its activations are stored as 0).
    public var keep: UnsafePointer<Float>
    /// topK: per column, the k-th largest value over all features; groupMax: each group's maxima, row-major [groups × stride].
    public var columnLimits: UnsafePointer<Float>?
    public var stride: Int
    /// The corpus's windows, for the inactive runs a feature catches up on when it fires.
    public var geometry: WindowGeometry

    public init(windows: UnsafeBufferPointer<BatchWindow>, keep: UnsafePointer<Float>, columnLimits: UnsafePointer<Float>?, stride: Int,
                geometry: WindowGeometry) {
        self.windows = windows
        self.keep = keep
        self.columnLimits = columnLimits
        self.stride = stride
        self.geometry = geometry
    }
}

/// An activation function specialized to one feature row; the pass is generic over it so each case
/// compiles to its own loop with no branch per element. Four lanes, the width of baseline x86-64's vectors:
/// with eight, each mask was split and re-packed with shuffles (≈ 9 instructions per value). Each rule selects
/// the value where its condition holds (never `.!`, which costs another mask), so NaN gives 0 as before.
protocol RowActivation {
    func callAsFunction(_ pre: SIMD4<Float>, column: Int) -> SIMD4<Float>
    func callAsFunction(_ pre: Float, column: Int) -> Float
}

struct ReLURow: RowActivation {
    let bias: Float
    @inline(__always) func callAsFunction(_ pre: SIMD4<Float>, column: Int) -> SIMD4<Float> {
        let v = pre + bias
        return SIMD4(repeating: 0).replacing(with: v, where: v .> 0)
    }
    @inline(__always) func callAsFunction(_ pre: Float, column: Int) -> Float {
        let v = pre + bias
        return v > 0 ? v : 0
    }
}

struct JumpReLURow: RowActivation {
    let bias: Float, threshold: Float
    @inline(__always) func callAsFunction(_ pre: SIMD4<Float>, column: Int) -> SIMD4<Float> {
        let v = pre + bias
        return SIMD4(repeating: 0).replacing(with: v, where: (v .> threshold) .& (v .> 0))
    }
    @inline(__always) func callAsFunction(_ pre: Float, column: Int) -> Float {
        let v = pre + bias
        return (v > threshold && v > 0) ? v : 0
    }
}

struct GatedRow: RowActivation {
    let gateBias: Float, scale: Float, magnitudeBias: Float
    @inline(__always) func callAsFunction(_ pre: SIMD4<Float>, column: Int) -> SIMD4<Float> {
        let m = pre * scale + magnitudeBias
        return SIMD4(repeating: 0).replacing(with: m, where: (pre + gateBias .> 0) .& (m .> 0))
    }
    @inline(__always) func callAsFunction(_ pre: Float, column: Int) -> Float {
        let m = pre * scale + magnitudeBias
        return (pre + gateBias > 0 && m > 0) ? m : 0
    }
}

/// TopK (scale = the decoder norm when the SAE rescales, else 1) and groupMax (scale 1, limits = the group's maxima)
/// share one rule: keep the value where it reaches the column's limit.
struct LimitRow: RowActivation {
    let bias: Float, scale: Float
    let limits: UnsafePointer<Float>
    @inline(__always) func callAsFunction(_ pre: SIMD4<Float>, column: Int) -> SIMD4<Float> {
        let v = (pre + bias) * scale
        let limit = UnsafeRawPointer(limits).loadUnaligned(fromByteOffset: column * 4, as: SIMD4<Float>.self)
        return SIMD4(repeating: 0).replacing(with: v, where: (v .>= limit) .& (v .> 0))
    }
    @inline(__always) func callAsFunction(_ pre: Float, column: Int) -> Float {
        let v = (pre + bias) * scale
        return (v >= limits[column] && v > 0) ? v : 0
    }
}

extension FeatureAccumulators {
    /// The per-feature pass after a batch's GEMM: for each slot of `slots`, applies `activation` in place to its
    /// row (zero on excluded columns) and feeds every window to the slot's state. `row(slot)` gives the row's
    /// values and the index of its parameters in `activation`. Slots are independent: disjoint ranges may run
    /// on different threads at once.
    public func observe(slots: Range<Int>, batch: EncodedBatch, activation: Activation,
                        row: (Int) -> (values: UnsafeMutablePointer<Float>, parameter: Int)) {
        switch activation {
        case .relu(let bias):
            observeRows(slots, batch: batch, row: row) { ReLURow(bias: bias[$0]) }
        case .jumpReLU(let bias, let threshold):
            observeRows(slots, batch: batch, row: row) { JumpReLURow(bias: bias[$0], threshold: threshold[$0]) }
        case .gated(let gateBias, let scale, let magnitudeBias):
            observeRows(slots, batch: batch, row: row) {
                GatedRow(gateBias: gateBias[$0], scale: scale[$0], magnitudeBias: magnitudeBias[$0])
            }
        case .topK(let bias, let scale):
            guard let limits = batch.columnLimits else { preconditionFailure("topK needs the k-th value per column") }
            observeRows(slots, batch: batch, row: row) { LimitRow(bias: bias[$0], scale: scale?[$0] ?? 1, limits: limits) }
        case .groupMax(let bias, let groupSize):
            guard let limits = batch.columnLimits else { preconditionFailure("groupMax needs each group's maxima") }
            observeRows(slots, batch: batch, row: row) {
                LimitRow(bias: bias[$0], scale: 1, limits: limits + ($0 / max(1, groupSize)) * batch.stride)
            }
        }
    }

    /// Activates each slot's row window by window and feeds its firing windows to the slot's state one slot
    /// later: the state lines a firing window writes (histogram bin, top record) are scattered and rarely cached,
    /// so they are asked for (`prefetchActive`) when the window is found and written after the next row's
    /// activation, which hides most of their misses. Each slot still gets its windows in order.
    @inline(__always)
    private func observeRows<Rule: RowActivation>(_ slots: Range<Int>, batch: EncodedBatch,
                                                  row: (Int) -> (values: UnsafeMutablePointer<Float>, parameter: Int),
                                                  rule: (Int) -> Rule) {
        let windows = batch.windows
        guard !windows.isEmpty else { return }
        // Not withUnsafeTemporaryAllocation: in its closure the window loop was no longer inlined.
        let lists = UnsafeMutablePointer<FiringWindow>.allocate(capacity: 2 * windows.count)
        defer { lists.deallocate() }
        var pending: (slot: Int, values: UnsafeMutablePointer<Float>, firing: UnsafeMutablePointer<FiringWindow>, count: Int)?
        var half = 0
        for slot in slots {
            let (values, parameter) = row(slot)
            let slotRule = rule(parameter)
            let firing = lists + half * windows.count
            var count = 0
            for index in windows.indices {
                let window = windows[index]
                let peak = activateWindow(values + window.offset, column: window.offset, length: window.length, keep: batch.keep,
                                          rule: slotRule)
                // Inactive windows are fed in runs when the feature next fires (or at the end): nothing to do here.
                if peak > 0 {
                    firing[count] = FiringWindow(index: Int32(index), peak: peak)
                    count += 1
                    prefetchActive(slot, peak: peak)
                }
            }
            if let pending { feedFiring(pending.slot, values: pending.values, firing: pending.firing, count: pending.count, batch: batch) }
            pending = (slot, values, firing, count)
            half ^= 1
        }
        if let pending { feedFiring(pending.slot, values: pending.values, firing: pending.firing, count: pending.count, batch: batch) }
    }

    @inline(__always)
    private func feedFiring(_ slot: Int, values: UnsafeMutablePointer<Float>, firing: UnsafeMutablePointer<FiringWindow>, count: Int,
                            batch: EncodedBatch) {
        for position in 0..<count {
            let window = batch.windows[Int(firing[position].index)]
            catchUp(slot, to: window.order, geometry: batch.geometry)
            observeActive(slot, values: values + window.offset, length: window.length, peak: firing[position].peak,
                          sequence: window.sequence, start: window.start, order: window.order)
        }
    }
}

/// A window of the batch on which a slot fired, and its peak.
struct FiringWindow {
    var index: Int32
    var peak: Float
}

/// Applies `rule` in place to one window's `length` values (batch columns `column`…), zeroing excluded
/// columns, and returns the window's largest activation: one pass, eight values (two vectors) at a time.
@inline(__always)
func activateWindow<Rule: RowActivation>(_ values: UnsafeMutablePointer<Float>, column: Int, length: Int,
                                         keep: UnsafePointer<Float>, rule: Rule) -> Float {
    let raw = UnsafeMutableRawPointer(values)
    let keepRaw = UnsafeRawPointer(keep)
    var low = SIMD4<Float>(repeating: 0), high = SIMD4<Float>(repeating: 0)
    var index = 0
    while index + 8 <= length {
        let first = activateLanes(raw, keep: keepRaw, column: column, index: index, rule: rule)
        let second = activateLanes(raw, keep: keepRaw, column: column, index: index + 4, rule: rule)
        low.replace(with: first, where: first .> low)  // pointwiseMax is not inlined here
        high.replace(with: second, where: second .> high)
        index += 8
    }
    if index + 4 <= length {
        let first = activateLanes(raw, keep: keepRaw, column: column, index: index, rule: rule)
        low.replace(with: first, where: first .> low)
        index += 4
    }
    high.replace(with: low, where: low .> high)
    var peak = largestLane(high)
    while index < length {
        let activated = keep[column + index] == 0 ? 0 : rule(values[index], column: column + index)
        values[index] = activated
        peak = max(peak, activated)
        index += 1
    }
    return peak
}

/// Four values of a window from `index` on, activated by `rule`, zeroed where the column is excluded, stored back.
@inline(__always)
func activateLanes<Rule: RowActivation>(_ raw: UnsafeMutableRawPointer, keep: UnsafeRawPointer, column: Int, index: Int,
                                        rule: Rule) -> SIMD4<Float> {
    let pre = raw.loadUnaligned(fromByteOffset: index * 4, as: SIMD4<Float>.self)
    let kept = keep.loadUnaligned(fromByteOffset: (column + index) * 4, as: SIMD4<Float>.self)
    let activated = rule(pre, column: column + index).replacing(with: 0, where: kept .== 0)
    raw.storeBytes(of: activated, toByteOffset: index * 4, as: SIMD4<Float>.self)
    return activated
}

/// Maximum of `count` non-negative values (SIMD for whole groups of 8).
@inline(__always)
public func peakValue(_ values: UnsafeMutablePointer<Float>, _ count: Int) -> Float {
    var index = 0
    var peak: Float = 0
    if count >= 8 {
        let raw = UnsafeRawPointer(values)
        var lanes = SIMD8<Float>(repeating: 0)
        while index + 8 <= count {
            let next = raw.loadUnaligned(fromByteOffset: index * 4, as: SIMD8<Float>.self)
            lanes.replace(with: next, where: next .> lanes)
            index += 8
        }
        peak = lanes.max()
    }
    while index < count {
        peak = max(peak, values[index])
        index += 1
    }
    return peak
}

/// The largest of four non-negative, non-NaN values, inline: `SIMD.max()` can be a generic call per window.
@inline(__always)
func largestLane(_ lanes: SIMD4<Float>) -> Float {
    let half = lanes.lowHalf.replacing(with: lanes.highHalf, where: lanes.highHalf .> lanes.lowHalf)
    return half.y > half.x ? half.y : half.x
}
