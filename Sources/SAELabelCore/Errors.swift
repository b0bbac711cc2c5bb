import Foundation

/// Every failure a user can see. `message` is one line saying what was wrong and what to do;
/// `exitCode` follows CONTRACT.md (2 = bad usage or bad input, nothing written).
public enum SAELabelError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A flag or argument that cannot be understood.
    case usage(String)
    /// An input file or value that is wrong; `location` names the file, key or position.
    case badInput(location: String, problem: String)
    /// An input changed since the job started (fingerprint mismatch).
    case inputChanged(path: String, detail: String)
    /// The job store could not be read or written.
    case store(String)
    /// An LLM call failed for good.
    case llm(String)
    /// A stage failed on one feature; the job goes on.
    case feature(index: Int, stage: String, reason: String)
    /// Another process is running a mutating command on the same store (exit 3).
    case storeBusy(store: String, holder: String)

    public var exitCode: Int32 {
        switch self {
        case .usage, .badInput, .inputChanged: return 2
        case .store, .llm, .feature: return 1
        case .storeBusy: return 3
        }
    }

    public var description: String {
        switch self {
        case .usage(let message):
            return message
        case .badInput(let location, let problem):
            return "\(location): \(problem)"
        case .inputChanged(let path, let detail):
            return "\(path) changed since this job started (\(detail)); restore it, or pass --new-version to start a new labeling pass in the same store"
        case .store(let message):
            return "job store: \(message)"
        case .llm(let message):
            return message
        case .feature(let index, let stage, let reason):
            return "feature \(index), \(stage): \(reason)"
        case .storeBusy(let store, let holder):
            return "\(store) is busy: saelabel \(holder) is working on it; wait for it to finish, or stop it (a killed run frees the store at once)"
        }
    }
}
