/// For each of the `groups` equal, consecutive groups of features in `groupRange` and each of `tokens` columns,
/// the largest `pre + bias` (sparsify's groupmax activation keeps only each group's maximum, sparsify/fused_encoder.py).
public func groupMaximum(output: UnsafePointer<Float>, rows: Int, tokens: Int, stride: Int, bias: [Float], groups: Int,
                         groupRange: Range<Int>, into maxima: UnsafeMutablePointer<Float>) {
    let size = rows / max(1, groups)
    for group in groupRange {
        let target = maxima + group * stride
        for index in 0..<tokens { target[index] = -.infinity }
        for row in (group * size)..<((group + 1) * size) {
            let source = output + row * stride
            let b = bias[row]
            for index in 0..<tokens { target[index] = max(target[index], source[index] + b) }
        }
    }
}

/// For each column of `columns`, the k-th largest of `(pre + bias)·scale` over all `rows` features.
/// `scratch` holds `rows × 8` floats (one per thread when column ranges run in parallel).
public func kthLargest(output: UnsafePointer<Float>, rows: Int, columns: Range<Int>, stride: Int, bias: [Float], scale: [Float]?,
                       k: Int, scratch: UnsafeMutablePointer<Float>, into result: UnsafeMutablePointer<Float>) {
    var first = columns.lowerBound
    while first < columns.upperBound {
        let block = min(8, columns.upperBound - first)
        for row in 0..<rows {
            let source = output + row * stride + first
            let b = bias[row]
            if let scale {
                let s = scale[row]
                for column in 0..<block { scratch[column * rows + row] = (source[column] + b) * s }
            } else {
                for column in 0..<block { scratch[column * rows + row] = source[column] + b }
            }
        }
        for column in 0..<block {
            result[first + column] = select(scratch + column * rows, count: rows, rank: k - 1)
        }
        first += block
    }
}

/// The element that would be at `rank` if `values[0..<count]` were sorted descending (reorders the buffer).
public func select(_ values: UnsafeMutablePointer<Float>, count: Int, rank: Int) -> Float {
    var lower = 0, upper = count - 1
    while lower < upper {
        let pivot = values[(lower + upper) / 2]
        var i = lower, j = upper
        while i <= j {
            while values[i] > pivot { i += 1 }
            while values[j] < pivot { j -= 1 }
            if i <= j {
                let saved = values[i]; values[i] = values[j]; values[j] = saved
                i += 1; j -= 1
            }
        }
        if rank <= j { upper = j } else if rank >= i { lower = i } else { return values[rank] }
    }
    return values[rank]
}

/// Per column, the k largest values seen so far over chunks of feature rows (a min-heap per column whose root is
/// the running k-th value), so a TopK SAE's k-th value per token comes out of GEMMs of a few rows at a time
/// instead of one over every feature. Columns are independent: disjoint column ranges may run on different threads.
public final class RunningTopK: @unchecked Sendable {
    public let k: Int
    public let columns: Int
    /// [columns × k] heaps; `filled[c]` values of column c are valid.
    let heaps: UnsafeMutablePointer<Float>
    let filled: UnsafeMutablePointer<Int>

    public init(k: Int, columns: Int) {
        self.k = max(1, k)
        self.columns = max(1, columns)
        heaps = .allocate(capacity: self.k * self.columns)
        filled = .allocate(capacity: self.columns)
        reset()
    }

    deinit { heaps.deallocate(); filled.deallocate() }

    public func reset() { filled.initialize(repeating: 0, count: columns) }

    /// Offers rows `rows` of pre-activations (`output` row r at `output + (r - rows.lowerBound)·stride`), with
    /// their bias and scale indexed by feature row, for columns `columnRange`.
    public func offer(output: UnsafePointer<Float>, rows: Range<Int>, stride: Int, columnRange: Range<Int>,
                      bias: [Float], scale: [Float]?) {
        for row in rows {
            let source = output + (row - rows.lowerBound) * stride
            let b = bias[row], s = scale?[row] ?? 1
            for column in columnRange {
                let value = (source[column] + b) * s
                let heap = heaps + column * k
                let count = filled[column]
                if count < k {
                    heap[count] = value
                    siftUp(heap, count)
                    filled[column] = count + 1
                } else if value > heap[0] {
                    heap[0] = value
                    siftDown(heap, k)
                }
            }
        }
    }

    /// The k-th largest value offered to `column` (−∞ while fewer than k were offered).
    public func kth(_ column: Int) -> Float { filled[column] < k ? -.infinity : heaps[column * k] }

    private func siftUp(_ heap: UnsafeMutablePointer<Float>, _ index: Int) {
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child] < heap[parent] else { break }
            let saved = heap[child]; heap[child] = heap[parent]; heap[parent] = saved
            child = parent
        }
    }

    private func siftDown(_ heap: UnsafeMutablePointer<Float>, _ count: Int) {
        var parent = 0
        while true {
            let left = 2 * parent + 1
            guard left < count else { break }
            var smallest = left
            if left + 1 < count, heap[left + 1] < heap[left] { smallest = left + 1 }
            guard heap[smallest] < heap[parent] else { break }
            let saved = heap[smallest]; heap[smallest] = heap[parent]; heap[parent] = saved
            parent = smallest
        }
    }
}

extension RunningTopK {
    /// Copies the values kept for `column` to `destination` and returns how many there are.
    public func values(_ column: Int, into destination: UnsafeMutablePointer<Float>) -> Int {
        let count = filled[column]
        destination.update(from: heaps + column * k, count: count)
        return count
    }
}

extension RandomAccessCollection where Index == Int {
    /// First index whose element satisfies `predicate` (the collection is sorted and `predicate` monotone:
    /// false, then true), by binary search; `endIndex` when none does.
    @inlinable
    public func partitionIndex(where predicate: (Element) -> Bool) -> Int {
        var low = startIndex, high = endIndex
        while low < high {
            let middle = low + (high - low) / 2
            if predicate(self[middle]) { high = middle } else { low = middle + 1 }
        }
        return low
    }
}
