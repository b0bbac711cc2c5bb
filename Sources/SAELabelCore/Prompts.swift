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

/// The prompt templates: the ones built into the binary (generated from `Prompts/` by
/// Tools/embed_prompts.py, so an installed binary runs from any folder), or a folder of edited copies.
public struct PromptLibrary: Sendable {
    /// The folder the templates are read from; nil for the built-in templates.
    public let directory: String?

    /// An explicit folder (`prompts_dir`, `--prompts`), else `$SAELABEL_PROMPTS`, else the built-in templates.
    public static func locate(explicit: String? = nil) throws(SAELabelError) -> PromptLibrary {
        if let explicit {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: explicit, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw .badInput(location: explicit, problem: "prompt directory not found; point prompts_dir or SAELABEL_PROMPTS at a folder of .mustache templates, or unset it to use the built-in ones")
            }
            return PromptLibrary(directory: explicit)
        }
        if let fromEnvironment = ProcessInfo.processInfo.environment["SAELABEL_PROMPTS"], !fromEnvironment.isEmpty {
            return try locate(explicit: fromEnvironment)
        }
        return .bundled
    }

    /// The templates built into the binary.
    public static let bundled = PromptLibrary(directory: nil)

    /// The names of the built-in templates.
    public static var bundledNames: [String] { BundledPrompts.sources.keys.sorted() }

    public init(directory: String?) {
        self.directory = directory
    }

    private func path(_ name: String) -> String? {
        directory.map { ($0 as NSString).appendingPathComponent("\(name).mustache") }
    }

    /// Whether the library has a template of that name (optional templates, such as system messages,
    /// are sent only when present).
    public func contains(_ name: String) -> Bool {
        guard let path = path(name) else { return BundledPrompts.sources[name] != nil }
        return FileManager.default.fileExists(atPath: path)
    }

    /// The template, or nil when the library has none of that name.
    public func optionalTemplate(_ name: String) throws(SAELabelError) -> PromptTemplate? {
        contains(name) ? try template(name) : nil
    }

    public func template(_ name: String) throws(SAELabelError) -> PromptTemplate {
        guard let path = path(name) else {
            guard let source = BundledPrompts.sources[name] else {
                throw .badInput(location: "Prompts/\(name).mustache", problem: "no built-in prompt template of that name")
            }
            return try PromptTemplate(name: name, source: source)
        }
        guard let data = FileManager.default.contents(atPath: path), let source = String(data: data, encoding: .utf8) else {
            throw .badInput(location: path, problem: "prompt template missing or not UTF-8")
        }
        return try PromptTemplate(name: name, source: source)
    }
}
