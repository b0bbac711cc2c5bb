import Foundation
import Synchronization

/// Progress of the running stages: a redrawn line per stage on a terminal, plain periodic log lines
/// otherwise (cron, CI, `nohup`), so an unattended job leaves a readable trace.
public final class ProgressReporter: Sendable {
    struct StageState {
        var total: Int
        var done = 0
        var failed = 0
        var started = Date()
        var promptTokens = 0
        var completionTokens = 0
        /// Set once the stage's last line was drawn; a finished stage is not redrawn.
        var ended = false
    }

    private let stages = Mutex<[(name: String, state: StageState)]>([])
    private let isTerminal: Bool
    private let interval: Double
    private let linesDrawn = Mutex<Int>(0)
    private let ticker = Mutex<Task<Void, Never>?>(nil)
    private let enabled: Bool

    public init(enabled: Bool = true) {
        self.enabled = enabled
        isTerminal = isatty(STDERR_FILENO) != 0
        let configured = ProcessInfo.processInfo.environment["SAELABEL_PROGRESS_INTERVAL"].flatMap(Double.init)
        interval = configured ?? (isTerminal ? 0.5 : 30)
    }

    public func begin(stage: String, total: Int) {
        stages.withLock { list in
            if let index = list.firstIndex(where: { $0.name == stage }) {
                list[index].state = StageState(total: total)
            } else {
                list.append((stage, StageState(total: total)))
            }
        }
        startTicker()
    }

    public func add(stage: String, total: Int) {
        stages.withLock { list in
            if let index = list.firstIndex(where: { $0.name == stage }) { list[index].state.total += total }
        }
    }

    public func advance(stage: String, failed: Bool = false) {
        stages.withLock { list in
            guard let index = list.firstIndex(where: { $0.name == stage }) else { return }
            list[index].state.done += 1
            if failed { list[index].state.failed += 1 }
        }
    }

    func withStages(_ body: (inout [(name: String, state: StageState)]) -> Void) {
        stages.withLock { body(&$0) }
    }

    /// Tokens of an answered call, counted on its stage's line.
    public func addTokens(stage: String, prompt: Int, completion: Int) {
        stages.withLock { list in
            guard let index = list.firstIndex(where: { $0.name == stage }) else { return }
            list[index].state.promptTokens += prompt
            list[index].state.completionTokens += completion
        }
    }

    /// Draws the final state of the running stages and forgets them, so the next stage starts a fresh display.
    public func finish() {
        ticker.withLock { $0?.cancel(); $0 = nil }
        if enabled { draw(final: true) }
        stages.withLock { $0.removeAll() }
    }

    private func startTicker() {
        guard enabled else { return }
        ticker.withLock { task in
            guard task == nil else { return }
            let interval = self.interval
            task = Task.detached { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(nanoseconds: UInt64(interval * 1e9))
                    if Task.isCancelled { break }
                    self?.draw(final: false)
                }
            }
        }
    }

    /// One line per stage still running, plus the final line of a stage that just ended (once).
    func lines() -> [(text: String, ended: Bool)] {
        let now = Date()
        return stages.withLock { list in
            var result: [(text: String, ended: Bool)] = []
            for index in list.indices where !list[index].state.ended {
                let (name, state) = list[index]
                if state.total > 0 && state.done >= state.total { list[index].state.ended = true }
                let elapsed = max(now.timeIntervalSince(state.started), 0.001)
                let rate = Double(state.done) / elapsed
                let remaining = max(state.total - state.done, 0)
                let eta = rate > 0 ? Self.duration(Double(remaining) / rate) : "?"
                let fraction = state.total > 0 ? Double(state.done) / Double(state.total) : 1
                let width = 24
                let filled = Int((min(fraction, 1) * Double(width)).rounded(.down))
                let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
                let failures = state.failed > 0 ? " failed \(state.failed)" : ""
                let timing = list[index].state.ended ? "done in \(Self.duration(elapsed))" : "ETA \(eta)"
                result.append((String(format: "%-8@ %@ %d/%d%@  %.2f/s  %@  tokens %d in / %d out",
                                      name as NSString, bar as NSString, state.done, state.total, failures as NSString, rate,
                                      timing as NSString, state.promptTokens, state.completionTokens),
                               list[index].state.ended))
            }
            return result
        }
    }

    private func draw(final: Bool) {
        // Ended stages first: their last line stays on screen and is not redrawn.
        let current = lines().sorted { $0.ended && !$1.ended }
        guard !current.isEmpty else { return }
        var output = ""
        if isTerminal {
            let previous = linesDrawn.withLock { $0 }
            if previous > 0 { output += "\u{1B}[\(previous)A" }
            for line in current { output += "\u{1B}[2K" + line.text + "\n" }
            linesDrawn.withLock { $0 = final ? 0 : current.filter { !$0.ended }.count }
        } else {
            let stamp = ISO8601DateFormatter().string(from: Date())
            for line in current { output += "\(stamp) progress \(line.text)\n" }
        }
        FileHandle.standardError.write(Data(output.utf8))
    }

    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "?" }
        let total = Int(seconds.rounded())
        if total >= 3600 { return "\(total / 3600)h\(String(format: "%02d", (total % 3600) / 60))m" }
        if total >= 60 { return "\(total / 60)m\(String(format: "%02d", total % 60))s" }
        return "\(total)s"
    }
}

extension ProgressReporter {
    /// For stages that report absolute progress (collect counts tokens).
    public func setDone(stage: String, done: Int) {
        withStages { list in
            if let index = list.firstIndex(where: { $0.name == stage }) { list[index].state.done = done }
        }
    }
}
