import Foundation
import Mustache

/// The editable Mustache templates in `Prompts/`. Each rendered prompt carries the hash of its
/// template so a changed prompt is visible in the store and the catalog.
public struct PromptTemplate: Sendable {
    public let name: String
    public let source: String
    public let hash: String
    private let template: MustacheTemplate

    public init(name: String, source: String) throws(SAELabelError) {
        self.name = name
        self.source = source
        self.hash = String(Hashing.sha256Hex(source).prefix(16))
        do {
            self.template = try MustacheTemplate(string: source)
        } catch {
            throw .badInput(location: "Prompts/\(name).mustache", problem: "not a valid Mustache template: \(error)")
        }
    }

    public func render(_ context: [String: Any]) -> String {
        template.render(context)
    }
}

public struct PromptLibrary: Sendable {
    public let directory: String

    /// Looks for `Prompts/` in: an explicit directory, `$SAELABEL_PROMPTS`, next to or above the
    /// executable (a build folder inside a checkout), then above the working directory.
    public static func locate(explicit: String? = nil) throws(SAELabelError) -> PromptLibrary {
        let fileManager = FileManager.default
        if let explicit {
            guard fileManager.fileExists(atPath: explicit) else {
                throw .badInput(location: explicit, problem: "prompt directory not found")
            }
            return PromptLibrary(directory: explicit)
        }
        if let fromEnvironment = ProcessInfo.processInfo.environment["SAELABEL_PROMPTS"], !fromEnvironment.isEmpty {
            return try locate(explicit: fromEnvironment)
        }
        var starts: [URL] = []
        let executable = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath()
        starts.append(executable.deletingLastPathComponent())
        starts.append(URL(fileURLWithPath: fileManager.currentDirectoryPath))
        starts.append(URL(fileURLWithPath: #filePath))
        for start in starts {
            var directory = start
            for _ in 0..<8 {
                let candidate = directory.appendingPathComponent("Prompts")
                if fileManager.fileExists(atPath: candidate.appendingPathComponent("explainer.mustache").path) {
                    return PromptLibrary(directory: candidate.path)
                }
                directory.deleteLastPathComponent()
            }
        }
        throw .badInput(location: "Prompts/", problem: "prompt templates not found; set prompts_dir in the job file or SAELABEL_PROMPTS")
    }

    public init(directory: String) {
        self.directory = directory
    }

    public func template(_ name: String) throws(SAELabelError) -> PromptTemplate {
        let path = (directory as NSString).appendingPathComponent("\(name).mustache")
        guard let data = FileManager.default.contents(atPath: path), let source = String(data: data, encoding: .utf8) else {
            throw .badInput(location: path, problem: "prompt template missing or not UTF-8")
        }
        return try PromptTemplate(name: name, source: source)
    }
}
