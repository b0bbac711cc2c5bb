// libFuzzer entry for the job file parser (TOML through TOMLKit, then saelabel's own key checks).
// Fuzz/build.sh compiles it into the module with Sources/SAELabelRun/JobConfig.swift. The input is
// written as JOB.toml beside real input files, so key checks past the TOML syntax are reached too.
import Foundation
import SAELabelCore

private let folder: String = {
    let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    let path = (base as NSString).appendingPathComponent("saelabel-fuzz-job-\(getpid())")
    try? FileManager.default.createDirectory(atPath: (path as NSString).appendingPathComponent("sae"), withIntermediateDirectories: true)
    for name in ["activations.safetensors", "tokenizer.json"] {
        _ = FileManager.default.createFile(atPath: (path as NSString).appendingPathComponent(name), contents: Data())
    }
    return path
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let path = (folder as NSString).appendingPathComponent("JOB.toml")
    try? Data(bytes: data, count: size).write(to: URL(fileURLWithPath: path))
    _ = try? JobConfig.load(path: path)
    return 0
}
