// libFuzzer entry for the file parsers of SAELabelCollect. Fuzz/build.sh compiles this file into the
// module together with the library's own sources (so internal parsers are reachable) with
// -sanitize=fuzzer,address; SAELABEL_FUZZ_TARGET picks the parser. Each input is written to a file in a
// private folder and handed to the parser as a user's file would be; a thrown SAELabelError is the
// expected answer to bad bytes, anything else (a trap, an ASan report, a hang) is a finding.
import Foundation
import SAELabelCore

enum FuzzTarget: String, CaseIterable {
    case safetensors, cfg, tokenizer, delphi
}

private let target: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["SAELABEL_FUZZ_TARGET"] ?? ""
    guard let target = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("set SAELABEL_FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue))\n".utf8))
        exit(2)
    }
    return target
}()

private let folder: String = {
    let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    let path = (base as NSString).appendingPathComponent("saelabel-fuzz-\(getpid())")
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    // A small valid tokenizer for the delphi target, whose cache needs one.
    let vocab = (0..<64).map { "\"t\($0)\": \($0)" }.joined(separator: ", ")
    try? Data(#"{"model": {"type": "BPE", "vocab": {\#(vocab)}}, "added_tokens": [{"id": 0, "content": "<s>", "special": true}]}"#.utf8)
        .write(to: URL(fileURLWithPath: (path as NSString).appendingPathComponent("fixed-tokenizer.json")))
    return path
}()

private func write(_ data: UnsafePointer<UInt8>, _ size: Int, to name: String) -> String {
    let path = (folder as NSString).appendingPathComponent(name)
    try? Data(bytes: data, count: size).write(to: URL(fileURLWithPath: path))
    return path
}

/// Reads every tensor the way collect does once a file is validated (bounded, so big shapes stay quick).
private func readAll(_ file: SafetensorsFile) {
    for info in file.tensors.values where info.elementCount <= 1 << 16 {
        if info.dtype.isFloat || info.dtype == .f64 {
            _ = file.readFloats(info)
        } else {
            _ = file.readIntegers(info, start: 0, count: info.elementCount)
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    switch target {
    case .safetensors:
        if let file = try? SafetensorsFile(path: write(data, size, to: "input.safetensors")) { readAll(file) }
    case .cfg:
        _ = try? SAEConfig.load(path: write(data, size, to: "cfg.json"))
    case .tokenizer:
        if let decoder = try? TokenDecoder(path: write(data, size, to: "tokenizer.json")) {
            let ids = (0..<min(decoder.vocabularySize, 64)).filter(decoder.contains)
            _ = decoder.decodeWindow(ids)
            _ = decoder.decodeWindow(ids.reversed())
        }
    case .delphi:
        let cache = (folder as NSString).appendingPathComponent("cache")
        try? FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        _ = write(data, size, to: "cache/0_15.safetensors")
        let tokenizer = (folder as NSString).appendingPathComponent("fixed-tokenizer.json")
        if let decoder = try? TokenDecoder(path: tokenizer),
           let inputs = try? CollectInputs.openLatents(directory: cache, decoder: decoder) {
            var options = CollectOptions(latentsDirectory: cache, tokenizerPath: tokenizer)
            options.excludePositions = [0]
            _ = try? inputs.checkTokenCoverage()
            _ = try? inputs.checkLatentEntries(exclusion: TokenExclusion(options: options, decoder: decoder))
        }
    }
    return 0
}
