import Foundation
import SAELabelCore
import ZIPFoundation

/// The header of a NumPy `.npy` array (format versions 1.0, 2.0 and 3.0, see numpy/lib/format.py):
/// magic `\x93NUMPY`, major and minor version bytes, a little-endian header length (2 bytes in 1.0,
/// 4 bytes in 2.0/3.0), then a Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
struct NpyHeader: Sendable, Equatable {
    var dtype: SafetensorsDType
    var shape: [Int]
    var fortranOrder: Bool
    /// Bytes before the data (magic, version, length, dict).
    var dataOffset: Int
    var elementCount: Int { shape.reduce(1, *) }
    var byteCount: Int { elementCount * dtype.byteCount }

    /// The longest header numpy writes is far below this; it bounds what is read before parsing.
    static let maximumLength = 1 << 20

    /// Parses the header at the start of `bytes`; `location` names the array in messages.
    /// Returns nil when `bytes` is too short to hold the whole header yet.
    static func parse(_ bytes: [UInt8], location: String) throws(SAELabelError) -> NpyHeader? {
        let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // \x93NUMPY
        guard bytes.count >= 10 else {
            if !bytes.elementsEqual(magic.prefix(bytes.count)) { throw notNpy(location) }
            return nil
        }
        guard Array(bytes[0..<6]) == magic else { throw notNpy(location) }
        let major = bytes[6]
        let lengthSize: Int
        switch major {
        case 1: lengthSize = 2
        case 2, 3: lengthSize = 4
        default:
            throw .badInput(location: location, problem: ".npy format version \(major).\(bytes[7]) is not supported (1.0, 2.0 and 3.0 are)")
        }
        guard bytes.count >= 8 + lengthSize else { return nil }
        var length = 0
        for index in 0..<lengthSize { length |= Int(bytes[8 + index]) << (8 * index) }
        guard length <= maximumLength else {
            throw .badInput(location: location, problem: ".npy header claims \(length) bytes; the file is corrupt")
        }
        let start = 8 + lengthSize
        guard bytes.count >= start + length else { return nil }
        guard let text = String(bytes: bytes[start..<(start + length)], encoding: major == 3 ? .utf8 : .isoLatin1) else {
            throw .badInput(location: location, problem: ".npy header is not text")
        }
        var header = try parseDictionary(text, location: location)
        header.dataOffset = start + length
        return header
    }

    private static func notNpy(_ location: String) -> SAELabelError {
        .badInput(location: location, problem: "not a .npy array (the \\x93NUMPY magic is missing)")
    }

    /// Reads the three keys numpy writes from the dict literal (strings, booleans and an integer tuple).
    private static func parseDictionary(_ text: String, location: String) throws(SAELabelError) -> NpyHeader {
        var scanner = LiteralScanner(text: Array(text.unicodeScalars))
        var descr: String?
        var fortran: Bool?
        var shape: [Int]?
        func malformed(_ detail: String) -> SAELabelError {
            .badInput(location: location, problem: ".npy header is malformed (\(detail)): \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        guard scanner.take("{") else { throw malformed("expected '{'") }
        while !scanner.take("}") {
            guard let key = scanner.string() else { throw malformed("expected a quoted key") }
            guard scanner.take(":") else { throw malformed("expected ':' after '\(key)'") }
            switch key {
            case "descr":
                guard let value = scanner.string() else { throw malformed("descr is not a string") }
                descr = value
            case "fortran_order":
                if scanner.word("True") { fortran = true } else if scanner.word("False") { fortran = false } else {
                    throw malformed("fortran_order is not True or False")
                }
            case "shape":
                guard let value = scanner.integerTuple() else { throw malformed("shape is not a tuple of integers") }
                shape = value
            default:
                throw malformed("unexpected key '\(key)'")
            }
            _ = scanner.take(",")
        }
        guard let descr, let fortran, let shape else { throw malformed("descr, fortran_order and shape are required") }
        let dtype: SafetensorsDType
        switch descr {
        case "<f4": dtype = .f32
        case "<f2": dtype = .f16
        case "<f8": dtype = .f64
        case "<i4": dtype = .i32
        case "<i8": dtype = .i64
        default:
            throw .badInput(location: location, problem: "dtype '\(descr)' is not supported; expected little-endian float32 ('<f4'), float16 ('<f2') or float64 ('<f8')")
        }
        var elements = 1
        for dimension in shape {
            let (product, overflow) = elements.multipliedReportingOverflow(by: dimension)
            guard !overflow, product < Int(1) << 48 else { throw .badInput(location: location, problem: "shape \(shape) is too large") }
            elements = product
        }
        return NpyHeader(dtype: dtype, shape: shape, fortranOrder: fortran, dataOffset: 0)
    }
}

/// Just enough of a Python literal reader for .npy headers.
private struct LiteralScanner {
    var text: [Unicode.Scalar]
    var index = 0

    mutating func skipSpace() {
        while index < text.count, text[index].properties.isWhitespace { index += 1 }
    }

    mutating func take(_ symbol: Unicode.Scalar) -> Bool {
        skipSpace()
        guard index < text.count, text[index] == symbol else { return false }
        index += 1
        return true
    }

    mutating func word(_ word: String) -> Bool {
        skipSpace()
        let scalars = Array(word.unicodeScalars)
        guard index + scalars.count <= text.count, Array(text[index..<(index + scalars.count)]) == scalars else { return false }
        index += scalars.count
        return true
    }

    mutating func string() -> String? {
        skipSpace()
        guard index < text.count, text[index] == "'" || text[index] == "\"" else { return nil }
        let quote = text[index]
        var end = index + 1
        while end < text.count, text[end] != quote { end += 1 }
        guard end < text.count else { return nil }
        var value = String.UnicodeScalarView()
        value.append(contentsOf: text[(index + 1)..<end])
        index = end + 1
        return String(value)
    }

    mutating func integerTuple() -> [Int]? {
        guard take("(") else { return nil }
        var values: [Int] = []
        while !take(")") {
            skipSpace()
            var digits = ""
            while index < text.count, let value = text[index].properties.numericType, value == .decimal {
                digits.unicodeScalars.append(text[index])
                index += 1
            }
            // numpy writes Python ints, which may carry an `L` suffix in files from Python 2.
            if index < text.count, text[index] == "L" { index += 1 }
            guard let value = Int(digits), digits.count < 16 else { return nil }
            values.append(value)
            guard take(",") || (skipSpaceAndPeek() == ")") else { return nil }
        }
        return values
    }

    private mutating func skipSpaceAndPeek() -> Unicode.Scalar? {
        skipSpace()
        return index < text.count ? text[index] : nil
    }
}

/// A `.npz` archive (a zip of `.npy` members, as numpy's `savez` (stored) and `savez_compressed` (deflated) write
/// it), read with ZIPFoundation. Members are streamed, never held whole: a Gemma Scope `W_enc` of a 1M-wide SAE
/// is 9 GB.
final class NpzArchive: @unchecked Sendable {
    let path: String
    private let archive: Archive
    /// Array name (member path without `.npy`) → header.
    let arrays: [String: NpyHeader]

    init(path: String) throws(SAELabelError) {
        self.path = path
        do {
            archive = try Archive(url: URL(fileURLWithPath: path), accessMode: .read)
        } catch {
            throw .badInput(location: path, problem: "not a readable .npz (zip) archive; the file is truncated or corrupt (\(error))")
        }
        var arrays: [String: NpyHeader] = [:]
        for entry in archive where entry.type == .file && entry.path.hasSuffix(".npy") {
            let name = String(entry.path.dropLast(".npy".count))
            let location = "\(path): \(entry.path)"
            var prefix: [UInt8] = []
            var header: NpyHeader?
            do {
                _ = try archive.extract(entry, bufferSize: 4096, skipCRC32: true) { data in
                    prefix.append(contentsOf: data)
                    if let parsed = try NpyHeader.parse(prefix, location: location) {
                        header = parsed
                        throw StopReading()
                    }
                    if prefix.count > NpyHeader.maximumLength + 16 { throw StopReading() }
                }
            } catch let error as SAELabelError {
                throw error
            } catch is StopReading {
            } catch {
                throw .badInput(location: location, problem: "cannot read the member; the archive is truncated or corrupt (\(error))")
            }
            guard let header else {
                throw .badInput(location: location, problem: "the .npy header is incomplete; the archive is truncated or corrupt")
            }
            guard UInt64(header.dataOffset + header.byteCount) == entry.uncompressedSize else {
                throw .badInput(location: location, problem: "holds \(entry.uncompressedSize) bytes but \(header.dtype.rawValue) × \(header.shape) needs \(header.dataOffset + header.byteCount); the member is truncated or corrupt")
            }
            arrays[name] = header
        }
        self.arrays = arrays
    }

    private struct StopReading: Error {}

    func location(_ name: String) -> String { "\(path): \(name).npy" }

    /// Streams array `name` as Float32 in whole rows of `rowLength` elements (storage order), several rows per call.
    func streamRows(_ name: String, rowLength: Int,
                    _ body: (_ firstRow: Int, _ rows: Int, _ values: UnsafePointer<Float>) throws(SAELabelError) -> Void) throws(SAELabelError) {
        guard let header = arrays[name], let entry = archive[name + ".npy"] else {
            throw .badInput(location: location(name), problem: "missing")
        }
        guard rowLength > 0, header.elementCount % rowLength == 0 else {
            throw .badInput(location: location(name), problem: "shape \(header.shape) cannot be read in rows of \(rowLength)")
        }
        guard header.elementCount > 0 else { return }
        let elementBytes = header.dtype.byteCount
        let rowBytes = rowLength * elementBytes
        let rowsPerChunk = max(1, (4 << 20) / max(1, rowBytes))
        // Bytes of a row still incomplete at the end of a chunk; an array, so its storage is reused (a Data that
        // is repeatedly sliced and appended keeps growing).
        var pending: [UInt8] = []
        pending.reserveCapacity(rowsPerChunk * rowBytes + (1 << 20))
        var skip = header.dataOffset
        var row = 0
        let floats = UnsafeMutablePointer<Float>.allocate(capacity: rowsPerChunk * rowLength)
        defer { floats.deallocate() }
        do {
            // No CRC-32: ZIPFoundation's own (Swift, without zlib on Linux) ran at about 75 MB/s, 4 of the 5 s of
            // a 302 MB params.npz, minutes for a 1M-wide SAE. Sizes and the row count are still checked, as for
            // safetensors, which carry no checksum at all.
            _ = try archive.extract(entry, bufferSize: 1 << 20, skipCRC32: true) { data in
                let dropped = min(skip, data.count)
                skip -= dropped
                pending.append(contentsOf: data.dropFirst(dropped))
                var consumed = 0
                while pending.count - consumed >= rowBytes {
                    let rows = min(rowsPerChunk, (pending.count - consumed) / rowBytes)
                    pending.withUnsafeBytes { bytes in
                        convertFloats(bytes.baseAddress! + consumed, dtype: header.dtype, count: rows * rowLength, into: floats)
                    }
                    try body(row, rows, floats)
                    row += rows
                    consumed += rows * rowBytes
                }
                if consumed > 0 { pending.removeFirst(consumed) }
            }
        } catch let error as SAELabelError {
            throw error
        } catch {
            throw .badInput(location: location(name), problem: "cannot read the member; the archive is truncated or corrupt (\(error))")
        }
        guard row * rowLength == header.elementCount else {
            throw .badInput(location: location(name), problem: "ended after \(row * rowLength) of \(header.elementCount) elements; the archive is truncated")
        }
    }

    /// The whole array as Float32 (for the small vectors: biases, thresholds).
    func readFloats(_ name: String) throws(SAELabelError) -> [Float] {
        guard let header = arrays[name] else { throw .badInput(location: location(name), problem: "missing") }
        var values = [Float](repeating: 0, count: header.elementCount)
        let rowLength = header.shape.last ?? 1
        try streamRows(name, rowLength: max(1, rowLength)) { first, rows, pointer in
            for index in 0..<(rows * rowLength) { values[first * rowLength + index] = pointer[index] }
        }
        return values
    }
}

/// Converts `count` little-endian elements of a float dtype to Float32 (safetensors and .npy alike).
func convertFloats(_ source: UnsafeRawPointer, dtype: SafetensorsDType, count: Int, into destination: UnsafeMutablePointer<Float>) {
    guard count > 0 else { return }
    switch dtype {
    case .f32:
        memcpy(destination, source, count * 4)
    case .f16:
        for index in 0..<count {
            destination[index] = Float(Float16(bitPattern: source.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self)))
        }
    case .bf16:
        for index in 0..<count {
            destination[index] = Float(bitPattern: UInt32(source.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self)) << 16)
        }
    case .f64:
        for index in 0..<count { destination[index] = Float(source.loadUnaligned(fromByteOffset: index * 8, as: Double.self)) }
    case .i32:
        for index in 0..<count { destination[index] = Float(source.loadUnaligned(fromByteOffset: index * 4, as: Int32.self)) }
    case .i64:
        for index in 0..<count { destination[index] = Float(source.loadUnaligned(fromByteOffset: index * 8, as: Int64.self)) }
    default:
        for index in 0..<count { destination[index] = 0 }
    }
}
