import CFileSystem
import Foundation
import SAELabelCore

/// Where an export goes, checked before anything is written, and the one way every exporter writes:
///
/// - `-` is standard output (catalog and csv only).
/// - A special file (`/dev/stdout`, a FIFO, a terminal, anything under /dev or /proc) is written
///   through, never replaced.
/// - A regular file is written to a hidden temporary beside it and renamed over it when complete
///   (a symlink keeps pointing at it).
/// - A folder (neuronpedia, html) is built as a hidden temporary folder and swapped in when complete;
///   an existing folder is replaced only when it is empty or a previous export of the same format that
///   holds nothing but the files that export wrote (listed in its marker file).
///
/// Refused, before anything is written: a path that is, or is a folder containing, the job store or
/// an input file. Nothing is left behind when an export fails.
public struct OutputTarget: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case standardOutput
        /// Written through in place (devices, FIFOs, /proc and /dev paths).
        case special
        case file
        case directory
    }

    /// The marker an html or neuronpedia export leaves in its folder, so a later export recognizes it.
    public static let markerName = ".saelabel-export.json"

    public var kind: Kind
    /// The path as given, for messages.
    public var path: String
    /// Absolute, with symlinks of existing parts resolved; empty for standard output.
    public var resolved: String

    /// Checks `path` for `format`; `protected` are the store and the input files (files or folders).
    public static func check(_ path: String, format: ExportFormat, protected: [String]) throws(SAELabelError) -> OutputTarget {
        let option = "--out \(path)"
        if path == "-" {
            guard !format.writesFolder else {
                throw .usage("\(option): \(format.rawValue) writes a folder; `--out -` works for catalog and csv")
            }
            return OutputTarget(kind: .standardOutput, path: path, resolved: "")
        }
        guard !path.isEmpty else { throw .usage("--out: give a file or folder name, or - for standard output") }
        if path.hasPrefix("/dev/") || path.hasPrefix("/proc/") {
            guard !format.writesFolder else {
                throw .badInput(location: option, problem: "\(format.rawValue) writes a folder; name a folder, not a device")
            }
            guard FileManager.default.fileExists(atPath: path) else { throw .badInput(location: option, problem: "does not exist") }
            return OutputTarget(kind: .special, path: path, resolved: path)
        }
        let resolved = resolve(path)
        for item in protected where !item.isEmpty {
            let guarded = resolve(item)
            if guarded == resolved || guarded.hasPrefix(resolved.hasSuffix("/") ? resolved : resolved + "/") {
                let what = guarded == resolved ? "is" : "contains"
                throw .badInput(location: option, problem: "\(what) \(item), which the export must not overwrite; choose another path")
            }
        }
        // `resolved` has its symlinks resolved, so this describes the target itself.
        let type = (try? FileManager.default.attributesOfItem(atPath: resolved))?[.type] as? FileAttributeType
        let exists = type != nil
        if !format.writesFolder {
            if type == .typeDirectory {
                throw .badInput(location: option, problem: "is a folder; \(format.rawValue) writes one file, so name a file")
            }
            if exists && type != .typeRegular {
                return OutputTarget(kind: .special, path: path, resolved: resolved)
            }
            try checkAncestor(of: resolved, option: option)
            return OutputTarget(kind: .file, path: path, resolved: resolved)
        }
        if exists {
            guard type == .typeDirectory else {
                throw .badInput(location: option, problem: "exists and is not a folder; \(format.rawValue) writes a folder, so name a new or empty one")
            }
            try checkPreviousExport(resolved, format: format, option: option)
        } else {
            try checkAncestor(of: resolved, option: option)
        }
        return OutputTarget(kind: .directory, path: path, resolved: resolved)
    }

    /// Absolute path with `.`/`..` removed and the symlinks of its longest existing prefix resolved.
    static func resolve(_ path: String) -> String {
        var url = URL(fileURLWithPath: path).standardizedFileURL
        var tail: [String] = []
        while url.path != "/" && !FileManager.default.fileExists(atPath: url.path) {
            tail.insert(url.lastPathComponent, at: 0)
            url.deleteLastPathComponent()
        }
        var base = url.path
        if let real = realpath(base, nil) {
            base = String(cString: real)
            free(real)
        }
        return tail.reduce(base) { ($0 as NSString).appendingPathComponent($1) }
    }

    /// The nearest existing ancestor must be a folder (missing folders are created at write time).
    static func checkAncestor(of resolved: String, option: String) throws(SAELabelError) {
        var ancestor = (resolved as NSString).deletingLastPathComponent
        while !FileManager.default.fileExists(atPath: ancestor) { ancestor = (ancestor as NSString).deletingLastPathComponent }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: ancestor, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw .badInput(location: option, problem: "\(ancestor) is a file, not a folder")
        }
    }

    struct Marker: Codable {
        var format: String
        /// Files the export wrote, relative to its folder.
        var files: [String]
    }

    /// An existing folder may be replaced only when empty or when it is our own export of the same format.
    static func checkPreviousExport(_ folder: String, format: ExportFormat, option: String) throws(SAELabelError) {
        let manager = FileManager.default
        let entries = (try? manager.contentsOfDirectory(atPath: folder)) ?? []
        guard !entries.isEmpty else { return }
        let markerPath = (folder as NSString).appendingPathComponent(markerName)
        guard let data = manager.contents(atPath: markerPath),
              let marker = try? JSONDecoder().decode(Marker.self, from: data) else {
            throw .badInput(location: option, problem: "is a folder that holds other files and is not a saelabel \(format.rawValue) export; name a new or empty folder")
        }
        guard marker.format == format.rawValue else {
            throw .badInput(location: option, problem: "holds a saelabel \(marker.format) export, not \(format.rawValue); name another folder")
        }
        let ours = Set(marker.files + [markerName])
        let enumerator = manager.enumerator(atPath: folder)
        while let entry = enumerator?.nextObject() as? String {
            var isDirectory: ObjCBool = false
            _ = manager.fileExists(atPath: (folder as NSString).appendingPathComponent(entry), isDirectory: &isDirectory)
            if isDirectory.boolValue { continue }
            if !ours.contains(entry) {
                throw .badInput(location: option, problem: "holds \(entry), which no saelabel export wrote; move it away or name another folder")
            }
        }
    }
}

extension ExportFormat {
    /// neuronpedia and html write a folder; catalog and csv one file.
    public var writesFolder: Bool { self == .neuronpedia || self == .html }
}

/// One export being written to its target: files go into a hidden temporary (a file or a folder) that
/// `commit` moves into place; `discard` removes everything written. Shared by all four exporters.
final class OutputSession {
    let target: OutputTarget
    /// Where the exporter writes: the temporary file or folder (for stdout and special files, nothing).
    let workPath: String
    private var relativeFiles: [String] = []
    private let format: ExportFormat
    private var committed = false

    init(_ target: OutputTarget, format: ExportFormat) throws(SAELabelError) {
        self.target = target
        self.format = format
        switch target.kind {
        case .standardOutput, .special:
            workPath = target.resolved
        case .file, .directory:
            let parent = (target.resolved as NSString).deletingLastPathComponent
            let name = (target.resolved as NSString).lastPathComponent
            do {
                try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
            } catch {
                throw .badInput(location: target.path, problem: "cannot create the folder \(parent): \(error.localizedDescription)")
            }
            workPath = (parent as NSString).appendingPathComponent(".\(name).saelabel-\(getpid())-\(UInt32.random(in: 0 ... .max)).tmp")
            if target.kind == .directory {
                guard mkdir(workPath, 0o755) == 0 else {
                    throw .badInput(location: target.path, problem: "cannot create a folder beside it (\(String(cString: strerror(errno))))")
                }
            }
        }
    }

    /// A writer for the single output of catalog and csv.
    func fileWriter() throws(SAELabelError) -> OutputWriter {
        switch target.kind {
        case .standardOutput: return OutputWriter(standardOutput: FileHandle.standardOutput)
        case .special: return try OutputWriter(path: workPath, replace: false)
        // The one output file is bulk nobody reads right away: straight to the disk where it can.
        default: return try OutputWriter(path: workPath, writePath: .direct)
        }
    }

    /// A writer for `relative` inside the output folder (subfolders are created).
    func writer(for relative: String, writePath: WritePath = .cached) throws(SAELabelError) -> OutputWriter {
        let path = (workPath as NSString).appendingPathComponent(relative)
        let parent = (path as NSString).deletingLastPathComponent
        if parent != workPath {
            do {
                try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
            } catch {
                throw .badInput(location: target.path, problem: "cannot create \(relative): \(error.localizedDescription)")
            }
        }
        relativeFiles.append(relative)
        // Synced together in `commit`: an fsync per file as it closed stalled the html export 145 times.
        return try OutputWriter(path: path, defersSync: true, writePath: writePath)
    }

    /// The final name of `relative`, for the summary.
    func finalPath(_ relative: String) -> String { (target.path as NSString).appendingPathComponent(relative) }

    /// Moves the finished output into place (a folder gets its marker first).
    func commit() throws(SAELabelError) {
        switch target.kind {
        case .standardOutput, .special:
            committed = true
            return
        case .file:
            guard rename(workPath, target.resolved) == 0 else {
                throw .badInput(location: target.path, problem: "cannot move the finished export into place (\(String(cString: strerror(errno))))")
            }
            try syncDirectory(parentFolder)
        case .directory:
            let marker = OutputTarget.Marker(format: format.rawValue, files: relativeFiles)
            let markerPath = (workPath as NSString).appendingPathComponent(OutputTarget.markerName)
            guard let data = try? JSONEncoder().encode(marker), FileManager.default.createFile(atPath: markerPath, contents: data) else {
                throw .badInput(location: target.path, problem: "cannot write \(OutputTarget.markerName)")
            }
            try syncFiles(relativeFiles + [OutputTarget.markerName])
            try swapFolder()
        }
        committed = true
    }

    private var parentFolder: String { (target.resolved as NSString).deletingLastPathComponent }

    /// Makes a folder's entries durable: a file's own fsync does not cover its name in the folder, so without
    /// this a power cut right after the rename could bring back the old export or lose the new one's files.
    private func syncDirectory(_ folder: String) throws(SAELabelError) {
        if let reason = FileSync.sync(folder) {
            throw .badInput(location: target.path, problem: "cannot finish writing the folder \(folder) (\(reason)); check the disk")
        }
    }

    /// Makes every file written into the folder, and the folder's own entries (subfolders first), durable
    /// before the folder is moved into place.
    private func syncFiles(_ files: [String]) throws(SAELabelError) {
        for relative in files {
            if let reason = FileSync.sync((workPath as NSString).appendingPathComponent(relative)) {
                throw .badInput(location: target.path, problem: "cannot finish writing \(relative) (\(reason)); check the disk")
            }
        }
        var subfolders = Set<String>()
        for relative in files {
            var folder = (relative as NSString).deletingLastPathComponent
            while !folder.isEmpty, subfolders.insert(folder).inserted { folder = (folder as NSString).deletingLastPathComponent }
        }
        for relative in subfolders.sorted(by: { $0.count > $1.count }) {
            try syncDirectory((workPath as NSString).appendingPathComponent(relative))
        }
        try syncDirectory(workPath)
    }

    /// Moves the finished folder into place and makes the parent folder's entries durable (once, before an old
    /// export is removed).
    private func swapFolder() throws(SAELabelError) {
        let manager = FileManager.default
        guard manager.fileExists(atPath: target.resolved) else {
            guard rename(workPath, target.resolved) == 0 else {
                throw .badInput(location: target.path, problem: "cannot move the finished export into place (\(String(cString: strerror(errno))))")
            }
            try syncDirectory(parentFolder)
            return
        }
        // rename(2) cannot replace a non-empty folder. Swap the two in one step where the kernel can, so a crash
        // leaves the old export or the new one at the path, never neither; the old one is then at workPath.
        if cfs_exchange(workPath, target.resolved) == 0 {
            try syncDirectory(parentFolder)
            try? manager.removeItem(atPath: workPath)
            return
        }
        // Older kernels and some file systems: move the old export aside, then remove it.
        let aside = workPath + ".old"
        guard rename(target.resolved, aside) == 0 else {
            throw .badInput(location: target.path, problem: "cannot replace the previous export (\(String(cString: strerror(errno))))")
        }
        guard rename(workPath, target.resolved) == 0 else {
            let reason = String(cString: strerror(errno))
            _ = rename(aside, target.resolved)
            throw .badInput(location: target.path, problem: "cannot move the finished export into place (\(reason))")
        }
        try syncDirectory(parentFolder)
        try? manager.removeItem(atPath: aside)
    }

    /// Removes what this export wrote; called when it fails.
    func discard() {
        guard !committed, target.kind == .file || target.kind == .directory else { return }
        try? FileManager.default.removeItem(atPath: workPath)
    }

    /// Runs `body` and commits, or discards everything written when anything fails.
    func run<T>(_ body: () throws(SAELabelError) -> T) throws(SAELabelError) -> T {
        do {
            let result = try body()
            try commit()
            return result
        } catch {
            discard()
            throw error
        }
    }
}
