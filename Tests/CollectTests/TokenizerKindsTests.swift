import Foundation
import Testing
@testable import SAELabelCollect
import SAELabelCore

/// The repository checkout (the folder holding Package.swift).
let repositoryRoot: URL = {
    var url = URL(fileURLWithPath: #filePath)
    while url.path != "/" {
        url.deleteLastPathComponent()
        if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
    }
    return URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
}()

/// Runs a Tools/ Python script with arguments; throws with its stderr when it fails.
func runPythonTool(_ script: String, _ arguments: [String]) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", repositoryRoot.appendingPathComponent("Tools/\(script)").path] + arguments
    let errors = Pipe()
    process.standardError = errors
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    let message = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw DecodeFailure(description: "\(script) failed: \(String(decoding: message, as: UTF8.self))")
    }
}

struct DecodeFailure: Error, CustomStringConvertible { var description: String }

/// Every tokenizer kind a decoder LM ships, built by the Hugging Face `tokenizers` library
/// (Tools/tokenizer_fixtures.py) and decoded by it: our per-token strings must join to exactly its decode.
@Suite(.serialized) struct TokenizerKindsTests {
    static let kinds = ["byte_level_bpe", "llama2_bpe_byte_fallback", "gemma_bpe_byte_fallback", "metaspace_bpe",
                        "unigram", "unigram_byte_fallback", "wordpiece"]

    /// Built once for the suite: training seven small tokenizers takes a few seconds.
    static let fixtures: Result<String, DecodeFailure> = {
        let directory = temporaryDirectory()
        do {
            try runPythonTool("tokenizer_fixtures.py", [directory])
            return .success(directory)
        } catch {
            return .failure(DecodeFailure(description: "\(error)"))
        }
    }()

    func folder(_ kind: String) throws -> String {
        (try Self.fixtures.get() as NSString).appendingPathComponent(kind)
    }

    @Test(arguments: kinds) func windowsJoinToWhatTokenizersDecodes(kind: String) throws {
        let folder = try folder(kind)
        let decoder = try TokenDecoder(path: (folder as NSString).appendingPathComponent("tokenizer.json"))
        let data = try Data(contentsOf: URL(fileURLWithPath: (folder as NSString).appendingPathComponent("cases.json")))
        let cases = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let windows = try #require(cases["windows"] as? [[Int]])
        let decoded = try #require(cases["decoded"] as? [String])
        #expect(windows.count == decoded.count && windows.count > 1000)
        var mismatches: [String] = []
        for (window, expected) in zip(windows, decoded) {
            let strings = decoder.decodeWindow(window)
            #expect(strings.count == window.count)
            let joined = strings.joined()
            if joined != expected { mismatches.append("\(window): \(joined.debugDescription) ≠ \(expected.debugDescription)") }
        }
        #expect(mismatches.isEmpty, "\(kind): \(mismatches.count) of \(windows.count) windows differ, e.g. \(mismatches.prefix(3))")
    }

    /// A character split over byte-fallback tokens appears on the token that completes it.
    @Test func byteFallbackCharacterLandsOnItsLastByte() throws {
        let decoder = try TokenDecoder(path: (try folder("llama2_bpe_byte_fallback") as NSString).appendingPathComponent("tokenizer.json"))
        func id(_ token: String) -> Int { decoder.tokens.firstIndex { $0 == token } ?? -1 }
        let bytes = ["<0xE4>", "<0xB8>", "<0xAD>", "<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"].map(id)  // 中 🦀
        #expect(!bytes.contains(-1))
        #expect(decoder.decodeWindow(bytes) == ["", "", "中", "", "", "", "🦀"])
        // A run that is not valid UTF-8 (window starts mid-character) becomes one U+FFFD per byte, as in tokenizers.
        #expect(decoder.decodeWindow(Array(bytes[1...2])) == ["\u{FFFD}", "\u{FFFD}"])
        // The first token's leading space is stripped (Strip(" ", 1, 0) after Fuse), later ones keep theirs.
        let pieces = decoder.tokens.enumerated().filter { $0.element?.hasPrefix("▁") == true && $0.element!.count > 2 }.prefix(2).map(\.offset)
        let strings = decoder.decodeWindow(pieces)
        #expect(!strings[0].hasPrefix(" ") && strings[1].hasPrefix(" "), "\(strings)")
    }

    @Test func unknownModelTypeIsRefused() throws {
        let directory = temporaryDirectory()
        let path = (directory as NSString).appendingPathComponent("tokenizer.json")
        try #"{"model": {"type": "Morpheme", "vocab": {}}, "added_tokens": []}"#.write(toFile: path, atomically: true, encoding: .utf8)
        do {
            _ = try TokenDecoder(path: path)
            Issue.record("expected a badInput error")
        } catch {
            guard case .badInput(let location, let problem) = error else { Issue.record("\(error)"); return }
            #expect(location == "\(path): model.type")
            #expect(problem.contains("Morpheme") && problem.contains("Unigram"))
        }
    }
}
