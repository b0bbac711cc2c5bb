import Foundation
import Testing
@testable import SAELabelCollect
import SAELabelCore

/// .npy headers of every format version and the dtypes numpy writes, read back through an npz that numpy made.
@Suite struct NpyTests {
    @Test func everyVersionDtypeAndOrderReadsBackAsNumpyWroteIt() throws {
        let directory = temporaryDirectory()
        let npz = (directory as NSString).appendingPathComponent("arrays.npz")
        let expected = (directory as NSString).appendingPathComponent("expected.json")
        let script = (directory as NSString).appendingPathComponent("write.py")
        try """
        import io, json, sys, zipfile
        import numpy as np
        base = np.arange(12, dtype=np.float64).reshape(3, 4) / 8 - 0.5
        arrays = {"v1_f4": ((1, 0), base.astype("<f4")), "v2_f2": ((2, 0), base.astype("<f2")),
                  "v3_f8": ((3, 0), base.astype("<f8")), "fortran": ((1, 0), np.asfortranarray(base.astype("<f4"))),
                  "vector": ((1, 0), base[0].astype("<f4"))}
        expected = {}
        with zipfile.ZipFile(sys.argv[1], "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, (version, array) in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array, version=version)
                archive.writestr(name + ".npy", buffer.getvalue())
                expected[name] = {"shape": list(array.shape), "fortran": bool(array.flags.f_contiguous and array.ndim > 1),
                                  "storage": array.ravel(order="F" if array.flags.f_contiguous and array.ndim > 1 else "C").astype(float).tolist()}
        json.dump(expected, open(sys.argv[2], "w"))
        """.write(toFile: script, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, npz, expected]
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0)
        let archive = try NpzArchive(path: npz)
        let reference = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: expected))) as? [String: [String: Any]])
        #expect(Set(archive.arrays.keys) == Set(reference.keys))
        for (name, entry) in reference {
            let header = try #require(archive.arrays[name])
            #expect(header.shape == entry["shape"] as? [Int], "\(name)")
            #expect(header.fortranOrder == entry["fortran"] as? Bool, "\(name)")
            let values = try archive.readFloats(name).map(Double.init)
            #expect(values == entry["storage"] as? [Double], "\(name): \(values)")
        }
        #expect(archive.arrays["v2_f2"]?.dtype == .f16 && archive.arrays["v3_f8"]?.dtype == .f64)
    }

    @Test func malformedHeadersNameTheProblem() throws {
        func parse(_ text: String, version: UInt8 = 1) throws(SAELabelError) -> NpyHeader? {
            var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [version, 0]
            let header = Array(text.utf8)
            bytes += version == 1 ? [UInt8(header.count & 0xFF), UInt8(header.count >> 8)] : [UInt8(header.count & 0xFF), UInt8(header.count >> 8), 0, 0]
            return try NpyHeader.parse(bytes + header, location: "x.npy")
        }
        #expect(try parse("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }")?.shape == [2, 3])
        #expect(try parse("{'descr': '<f4', 'fortran_order': False, 'shape': (), }")?.shape == [])
        for (text, words) in [("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", ["'>f4'", "little-endian"]),
                              ("{'descr': '<f4', 'shape': (2,), }", ["fortran_order"]),
                              ("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", ["True or False"]),
                              ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", ["shape"])] {
            #expect {
                _ = try parse(text)
            } throws: { error in
                guard case .badInput(let location, let problem)? = error as? SAELabelError else { return false }
                return location == "x.npy" && words.allSatisfy { problem.contains($0) }
            }
        }
        #expect(throws: SAELabelError.self) { _ = try parse("{}", version: 4) }
        #expect(throws: SAELabelError.self) { _ = try NpyHeader.parse(Array("PK\u{3}\u{4}not npy".utf8), location: "x.npy") }
        #expect(try NpyHeader.parse([0x93, 0x4E], location: "x.npy") == nil, "an incomplete prefix asks for more bytes")
    }
}
