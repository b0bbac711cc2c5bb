#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import SAELabelCore

/// A read-only memory mapping of a whole file. Pages that have been consumed can be handed back to the
/// kernel with `release(_:)`, so streaming a multi-GB shard keeps the resident set bounded.
final class MappedFile: @unchecked Sendable {
    let path: String
    let size: Int
    let base: UnsafeRawPointer?

    init(path: String) throws(SAELabelError) {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw .badInput(location: path, problem: "cannot open the file; check the path and permissions")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw .badInput(location: path, problem: "cannot stat the file")
        }
        size = Int(info.st_size)
        if size == 0 {
            base = nil
            return
        }
        let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let mapped, mapped != MAP_FAILED else {
            throw .badInput(location: path, problem: "cannot memory-map the file")
        }
        base = UnsafeRawPointer(mapped)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }

    private var releasedUpTo = 0

    /// Drops every resident page that lies wholly before byte `offset` and was not dropped yet (streaming reads).
    func releaseBefore(_ offset: Int) {
        guard offset > releasedUpTo else { return }
        release(releasedUpTo..<offset)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        releasedUpTo = max(releasedUpTo, offset / page * page)
    }

    /// Drops the resident pages fully inside `range` (bytes); they are re-read from disk if touched again.
    func release(_ range: Range<Int>) {
        guard let base else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let lower = range.lowerBound / page * page
        let upper = min(range.upperBound, size) / page * page
        guard upper > lower else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + lower), upper - lower, MADV_DONTNEED)
    }
}

/// Element types a safetensors file may hold (the ones saelabel reads).
enum SafetensorsDType: String, Sendable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", f64 = "F64"
    case i32 = "I32", i64 = "I64", u16 = "U16", u32 = "U32", u8 = "U8", i16 = "I16", u64 = "U64", i8 = "I8"

    var byteCount: Int {
        switch self {
        case .f64, .i64, .u64: return 8
        case .f32, .i32, .u32: return 4
        case .f16, .bf16, .u16, .i16: return 2
        case .u8, .i8: return 1
        }
    }

    var isFloat: Bool { self == .f32 || self == .f16 || self == .bf16 }
    var isInteger: Bool { !isFloat && self != .f64 }
}

struct TensorInfo: Sendable {
    var name: String
    var dtype: SafetensorsDType
    var shape: [Int]
    /// Absolute byte offset in the file.
    var byteOffset: Int
    var byteCount: Int
    var elementCount: Int { shape.reduce(1, *) }
}

/// A validated safetensors file (SPEC §2): 8-byte little-endian header length, JSON header, raw data.
/// Every structural problem is reported as `badInput` naming the file (and tensor, when there is one)
/// before any tensor is used.
final class SafetensorsFile: @unchecked Sendable {
    let path: String
    let file: MappedFile
    let tensors: [String: TensorInfo]
    let metadata: [String: String]

    init(path: String) throws(SAELabelError) {
        self.path = path
        file = try MappedFile(path: path)
        guard file.size >= 8, let base = file.base else {
            throw .badInput(location: path, problem: "truncated: \(file.size) bytes, shorter than the 8-byte header length; not a safetensors file")
        }
        let headerLength = base.loadUnaligned(as: UInt64.self).littleEndian
        guard headerLength <= UInt64(file.size - 8) else {
            throw .badInput(location: path, problem: "header length \(headerLength) runs past the end of the file (\(file.size) bytes); the file is truncated or not safetensors")
        }
        let dataStart = 8 + Int(headerLength)
        let dataSize = file.size - dataStart
        let headerData = Data(bytes: base + 8, count: Int(headerLength))
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: headerData)
        } catch {
            throw .badInput(location: path, problem: "header is not valid JSON")
        }
        guard let header = parsed as? [String: Any] else {
            throw .badInput(location: path, problem: "header is not a JSON object")
        }
        var tensors: [String: TensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                if let entries = value as? [String: Any] {
                    for (key, entry) in entries { metadata[key] = entry as? String ?? "\(entry)" }
                }
                continue
            }
            let location = "\(path): tensor \(name)"
            guard let entry = value as? [String: Any] else {
                throw .badInput(location: location, problem: "header entry is not an object")
            }
            guard let dtypeName = entry["dtype"] as? String else {
                throw .badInput(location: location, problem: "missing dtype")
            }
            guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
                throw .badInput(location: location, problem: "unsupported dtype \(dtypeName)")
            }
            guard let shapeValues = entry["shape"] as? [Any] else {
                throw .badInput(location: location, problem: "missing shape")
            }
            var shape: [Int] = []
            for dimension in shapeValues {
                guard let number = dimension as? NSNumber, number.doubleValue >= 0,
                      number.doubleValue == number.doubleValue.rounded(), number.doubleValue < 1e15 else {
                    throw .badInput(location: location, problem: "shape \(shapeValues) is not a list of non-negative integers")
                }
                shape.append(number.intValue)
            }
            guard let offsets = entry["data_offsets"] as? [Any], offsets.count == 2,
                  let begin = (offsets[0] as? NSNumber)?.doubleValue, let end = (offsets[1] as? NSNumber)?.doubleValue,
                  begin >= 0, end >= begin, begin == begin.rounded(), end == end.rounded(), end < 1e18 else {
                throw .badInput(location: location, problem: "data_offsets must be [begin, end] with 0 ≤ begin ≤ end")
            }
            let beginOffset = Int(begin), endOffset = Int(end)
            guard endOffset <= dataSize else {
                throw .badInput(location: location, problem: "data_offsets [\(beginOffset), \(endOffset)] lie outside the data section (\(dataSize) bytes); the file is truncated or corrupt")
            }
            var elements = 1
            for dimension in shape {
                let (product, overflow) = elements.multipliedReportingOverflow(by: dimension)
                guard !overflow else { throw .badInput(location: location, problem: "shape \(shape) is too large") }
                elements = product
            }
            guard elements * dtype.byteCount == endOffset - beginOffset else {
                throw .badInput(location: location, problem: "data_offsets span \(endOffset - beginOffset) bytes but \(dtype.rawValue) × \(shape) needs \(elements * dtype.byteCount)")
            }
            tensors[name] = TensorInfo(name: name, dtype: dtype, shape: shape, byteOffset: dataStart + beginOffset,
                                       byteCount: endOffset - beginOffset)
        }
        let ordered = tensors.values.filter { $0.byteCount > 0 }.sorted { $0.byteOffset < $1.byteOffset }
        for (previous, next) in zip(ordered, ordered.dropFirst()) where next.byteOffset < previous.byteOffset + previous.byteCount {
            throw .badInput(location: "\(path): tensor \(next.name)", problem: "data overlaps tensor \(previous.name)")
        }
        self.tensors = tensors
        self.metadata = metadata
    }

    func location(_ name: String) -> String { "\(path): tensor \(name)" }

    /// The named tensor, checked against the expected rank and dtype family.
    func tensor(_ name: String, rank: Int? = nil, floating: Bool? = nil) throws(SAELabelError) -> TensorInfo {
        guard let info = tensors[name] else {
            throw .badInput(location: location(name), problem: "missing (the file holds: \(tensors.keys.sorted().joined(separator: ", ")))")
        }
        if let rank, info.shape.count != rank {
            throw .badInput(location: location(name), problem: "expected \(rank) dimensions, found shape \(info.shape)")
        }
        if let floating {
            if floating && !info.dtype.isFloat {
                throw .badInput(location: location(name), problem: "dtype \(info.dtype.rawValue) is not F32, F16 or BF16")
            }
            if !floating && !info.dtype.isInteger {
                throw .badInput(location: location(name), problem: "dtype \(info.dtype.rawValue) is not an integer type")
            }
        }
        return info
    }

    /// Converts `count` elements starting at element `start` of a float tensor to Float32.
    func readFloats(_ info: TensorInfo, start: Int, count: Int, into destination: UnsafeMutablePointer<Float>) {
        guard count > 0, let base = file.base else { return }
        let source = base + info.byteOffset + start * info.dtype.byteCount
        switch info.dtype {
        case .f32, .f16, .bf16, .f64:
            convertFloats(source, dtype: info.dtype, count: count, into: destination)
        default:
            for index in 0..<count { destination[index] = Float(integer(info, source: source, index: index)) }
        }
    }

    func readFloats(_ info: TensorInfo) -> [Float] {
        [Float](unsafeUninitializedCapacity: info.elementCount) { buffer, initialized in
            if let pointer = buffer.baseAddress { readFloats(info, start: 0, count: info.elementCount, into: pointer) }
            initialized = info.elementCount
        }
    }

    @inline(__always)
    private func integer(_ info: TensorInfo, source: UnsafeRawPointer, index: Int) -> Int {
        switch info.dtype {
        case .i32: return Int(source.loadUnaligned(fromByteOffset: index * 4, as: Int32.self))
        case .i64: return Int(source.loadUnaligned(fromByteOffset: index * 8, as: Int64.self))
        case .u16: return Int(source.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self))
        case .u32: return Int(source.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self))
        case .u64: return Int(truncatingIfNeeded: source.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self))
        case .i16: return Int(source.loadUnaligned(fromByteOffset: index * 2, as: Int16.self))
        case .u8: return Int(source.load(fromByteOffset: index, as: UInt8.self))
        case .i8: return Int(source.load(fromByteOffset: index, as: Int8.self))
        case .f32: return Int(source.loadUnaligned(fromByteOffset: index * 4, as: Float.self))
        case .f64: return Int(source.loadUnaligned(fromByteOffset: index * 8, as: Double.self))
        case .f16, .bf16: return 0
        }
    }

    /// Integer elements `start..<start+count` of an integer tensor.
    func readIntegers(_ info: TensorInfo, start: Int, count: Int) -> [Int] {
        guard count > 0, let base = file.base else { return [] }
        let source = base + info.byteOffset + start * info.dtype.byteCount
        return (0..<count).map { integer(info, source: source, index: $0) }
    }

    func readInteger(_ info: TensorInfo, at index: Int) -> Int {
        guard let base = file.base else { return 0 }
        return integer(info, source: base + info.byteOffset, index: index)
    }

    /// Lets the kernel drop the resident pages of elements `start..<start+count` of `info`.
    func release(_ info: TensorInfo, start: Int, count: Int) {
        let lower = info.byteOffset + start * info.dtype.byteCount
        file.release(lower..<(lower + count * info.dtype.byteCount))
    }
}
