import Testing
import SAELabelCore
@testable import SAELabelCollect
@testable import SAELabelKernels

/// The per-feature pass's cheaper pieces give exactly what the plain versions gave.
@Suite struct KernelPassTests {
    /// The heap the pass kept before: whole records swapped, keyed by (max, earlier first), root the weakest.
    struct RecordHeap {
        var entries: [(maximum: Float, order: Int64)] = []
        let capacity: Int

        func weaker(_ a: Int, _ b: Int) -> Bool {
            entries[a].maximum < entries[b].maximum || (entries[a].maximum == entries[b].maximum && entries[a].order > entries[b].order)
        }

        mutating func offer(maximum: Float, order: Int64) {
            if entries.count < capacity {
                entries.append((maximum, order))
                var child = entries.count - 1
                while child > 0, weaker(child, (child - 1) / 2) {
                    entries.swapAt(child, (child - 1) / 2)
                    child = (child - 1) / 2
                }
            } else if capacity > 0, maximum > entries[0].maximum {
                entries[0] = (maximum, order)
                var parent = 0
                while 2 * parent + 1 < entries.count {
                    var weakest = 2 * parent + 1
                    if weakest + 1 < entries.count, weaker(weakest + 1, weakest) { weakest += 1 }
                    guard weaker(weakest, parent) else { break }
                    entries.swapAt(weakest, parent)
                    parent = weakest
                }
            }
        }
    }

    /// On random windows with many tied peaks, the heap of record indices holds the same windows in the same heap
    /// positions as the record heap did, each record keeps the values it was given, and the floor is the root's max.
    @Test(arguments: [(1, 0), (3, 2), (10, 5), (16, 0)])
    func heapOfRecordIndicesKeepsWhatTheRecordHeapKept(explainTop: Int, heldoutTop: Int) {
        let parameters = SelectionParameters(windowLength: 4, explainTop: explainTop, explainQuantile: 10, heldoutTop: heldoutTop,
                                             heldoutQuantile: 5, heldoutRandom: 0, minActivatingWindows: 1, seed: 3)
        let capacity = parameters.topCapacity
        let accumulators = FeatureAccumulators(features: [0, 1], parameters: parameters)
        var generator = SplitMix64(seed: 41, feature: capacity, purpose: 9)
        for slot in 0..<2 {
            var reference = RecordHeap(capacity: capacity)
            var fed: [Int64: [Float]] = [:]
            for order in Int64(0)..<Int64(200) {
                // Few distinct levels, so equal peaks (ties broken by order) are common; a zero token now and then.
                let values = (0..<4).map { _ in Float(generator.next() % 6) * 0.5 }
                guard let peak = values.max(), peak > 0 else { continue }
                fed[order] = values
                accumulators.observeActive(slot, values: values, length: 4, peak: peak, sequence: Int(order), start: 0, order: order)
                reference.offer(maximum: peak, order: order)
                let heap = accumulators.topHeapOrder(slot).map { accumulators.top.kept(slot, $0) }
                #expect(heap.map(\.order) == reference.entries.map(\.order), "slot \(slot) after window \(order)")
                #expect(heap.map(\.maximum) == reference.entries.map(\.maximum))
                if heap.count == capacity { #expect(accumulators.topFloor[slot] == heap[0].maximum) }
            }
            #expect(accumulators.topCount[slot] == capacity)
            for index in 0..<accumulators.topCount[slot] {
                let kept = accumulators.top.kept(slot, index)
                #expect(accumulators.top.values(slot, index) == fed[kept.order])
            }
        }
    }

    /// The hand-rounded bin equals ⌈value·scale⌉ − 1 clamped, on bin edges, between them and far above the range.
    @Test func binMatchesCeilingOfTheScaledValue() {
        var generator = SplitMix64(seed: 7, feature: 0, purpose: 0)
        var checked = 0
        for exponent in [-126, -20, -1, 0, 3, 30, 100] {
            let range = Float(sign: .plus, exponent: exponent, significand: 1)
            for scale in [Float(FeatureAccumulators.fineBins) / range, 1e30, 1] {
                var values: [Float] = [0, -0.0, range, range.nextUp, range.nextDown, .leastNonzeroMagnitude]
                for bin in 0...300 {
                    let edge = Float(bin) * range / Float(FeatureAccumulators.fineBins)
                    values += [edge, edge.nextUp, edge.nextDown]
                }
                for _ in 0..<200 { values.append(range * Float(generator.unit()) * 1.5) }
                for value in values where (value * scale).isFinite && value * scale < 1e18 {
                    let expected = min(FeatureAccumulators.fineBins - 1, max(0, Int((value * scale).rounded(.up)) - 1))
                    #expect(FeatureAccumulators.bin(value, scale: scale) == expected, "value \(value) scale \(scale)")
                    checked += 1
                }
            }
        }
        #expect(checked > 10_000)
    }

    /// `forEachPositive` yields every value above 0 in order and nothing else, whatever the length and sparsity.
    @Test func forEachPositiveYieldsThePositiveValuesInOrder() {
        var generator = SplitMix64(seed: 11, feature: 0, purpose: 0)
        let specials: [Float] = [0, -0.0, -1, .leastNonzeroMagnitude, 2.5, -.leastNonzeroMagnitude]
        for length in 0..<41 {
            for density in [0, 1, 3, 8] {
                let values = (0..<length).map { _ in
                    generator.next() % 8 < UInt64(density) ? specials[Int(generator.next() % UInt64(specials.count))] : 0
                }
                var seen: [Float] = []
                values.withUnsafeBufferPointer { buffer in
                    FeatureAccumulators.forEachPositive(buffer.baseAddress ?? UnsafePointer(bitPattern: 8)!, length) { seen.append($0) }
                }
                #expect(seen == values.filter { $0 > 0 }, "length \(length) density \(density)")
            }
        }
    }

    /// The vector pass of every activation rule gives, value by value, what its scalar form gives (NaN, negative,
    /// excluded columns and every tail length included), and the window's max of them.
    @Test func vectorActivationMatchesTheScalarRule() {
        var generator = SplitMix64(seed: 23, feature: 0, purpose: 0)
        let columns = 48
        let limits = (0..<(columns + 8)).map { _ in Float(generator.unit()) - 0.3 }
        let keep = (0..<columns).map { _ in generator.next() % 5 == 0 ? Float(0) : 1 }
        func check<Rule: RowActivation>(_ rule: Rule, _ name: String) {
            for start in [0, 3] {
                for length in 0...(columns - start) {
                    let row = (0..<columns).map { _ in generator.next() % 17 == 0 ? Float.nan : Float(generator.unit()) * 4 - 2 }
                    var values = row
                    let peak = values.withUnsafeMutableBufferPointer { buffer in
                        keep.withUnsafeBufferPointer { kept in
                            activateWindow(buffer.baseAddress! + start, column: start, length: length, keep: kept.baseAddress!, rule: rule)
                        }
                    }
                    let expected = (start..<(start + length)).map { keep[$0] == 0 ? 0 : rule(row[$0], column: $0) }
                    #expect(Array(values[start..<(start + length)]).map(\.bitPattern) == expected.map(\.bitPattern), "\(name) \(length)")
                    #expect(peak == (expected.max() ?? 0) && !peak.isNaN, "\(name) \(length)")
                    #expect(values[..<start].map(\.bitPattern) == row[..<start].map(\.bitPattern))
                }
            }
        }
        limits.withUnsafeBufferPointer { buffer in
            check(ReLURow(bias: 0.1), "relu")
            check(JumpReLURow(bias: -0.2, threshold: 0.4), "jumprelu")
            check(GatedRow(gateBias: 0.3, scale: 1.5, magnitudeBias: -0.25), "gated")
            check(LimitRow(bias: 0.05, scale: 2, limits: buffer.baseAddress!), "limit")
        }
    }

    /// The inline horizontal max equals `SIMD4.max()` for the non-negative lanes the activation pass produces.
    /// The batch preparation's ‖row‖² (four running sums) is the squared norm to float precision at every length
    /// (whole steps of 16 and the tail), and a NaN or an infinity anywhere in the row makes it non-finite, which is
    /// what sends the row to the non-finite check.
    @Test func squaredNormIsTheSumOfSquaresAndCarriesNonFiniteValues() {
        var generator = SplitMix64(seed: 17, feature: 0, purpose: 0)
        for count in Array(0...40) + [768, 2304, 4099] {
            var row = (0..<count).map { _ in Float(generator.unit()) * 8 - 4 }
            let expected = row.reduce(0.0) { $0 + Double($1) * Double($1) }
            let norm = squaredNorm(row, count: count)
            #expect(abs(Double(norm) - expected) <= 1e-6 * max(1, expected), "length \(count)")
            guard count > 0 else { continue }
            for bad in [Float.nan, .infinity, -.infinity] {
                let position = Int(generator.next() % UInt64(count))
                let kept = row[position]
                row[position] = bad
                #expect(!squaredNorm(row, count: count).isFinite, "length \(count), \(bad) at \(position)")
                row[position] = kept
            }
        }
    }

    @Test func largestLaneIsTheMaximum() {
        var generator = SplitMix64(seed: 5, feature: 0, purpose: 0)
        for _ in 0..<2_000 {
            var lanes = SIMD4<Float>(repeating: 0)
            for lane in 0..<4 where generator.next() % 3 == 0 { lanes[lane] = Float(generator.unit()) * 100 }
            #expect(largestLane(lanes) == lanes.max())
        }
    }
}
