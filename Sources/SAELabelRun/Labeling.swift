import Foundation
import LLMClient
import SAELabelCore
import SAELabelExplain
import SAELabelScore
import SAELabelStore

/// Runs explain and score over the store with both queues kept full: a feature goes to the scorers
/// as soon as its explanation is stored, so the explainer and simulator servers work side by side.
public struct LabelingRun: Sendable {
    public var store: JobStore
    public var explainer: (any Explainer)?
    public var scorers: [any Scorer]
    public var selection: FeatureSelection
    /// Features worked on at once per stage. The LLM client separately caps requests in flight.
    public var concurrency: Int
    public var progress: ProgressReporter
    /// `[limits] max_cost`: once it refuses a request, workers stop and leave the rest for a later run.
    public var budget: SpendingLimit?

    public init(store: JobStore, explainer: (any Explainer)?, scorers: [any Scorer], selection: FeatureSelection,
                concurrency: Int, progress: ProgressReporter) {
        self.store = store
        self.explainer = explainer
        self.scorers = scorers
        self.selection = selection
        self.concurrency = max(1, concurrency)
        self.progress = progress
    }

    public struct Outcome: Sendable, Equatable {
        public var explained = 0
        public var scored = 0
        public var failed: [Int: String] = [:]
        /// The spending limit stopped the run before everything was done (exit 1; a rerun continues).
        public var stoppedByBudget = false
        /// Feature steps put off because their requests wait for a batch (batch mode).
        public var deferred = 0
    }

    /// One pass over what the store says is left to do. Failed features of earlier runs are retried.
    public func run() async throws(SAELabelError) -> Outcome {
        try store.requeueFailed()
        let toExplain = explainer == nil ? [] : try store.features(in: [.collected], selection: selection)
        // Explained features, plus scored ones that a newly added (or changed) scorer has not scored yet.
        let toScore = scorers.isEmpty ? [] : try store.features(in: [.explained], selection: selection)
            + store.featuresMissingScores(scorers.map { (name: $0.name, model: $0.model, promptHash: $0.promptHash) },
                                        selection: selection)
        let queue = WorkQueue(explain: toExplain, score: toScore, scoring: !scorers.isEmpty)
        if explainer != nil { progress.begin(stage: "explain", total: toExplain.count) }
        if !scorers.isEmpty { progress.begin(stage: "score", total: toScore.count + toExplain.count) }

        let workers = concurrency
        let outcome = await withTaskGroup(of: Outcome.self) { group in
            if let explainer {
                for _ in 0..<workers {
                    group.addTask { await explainWorker(explainer, queue) }
                }
            }
            if !scorers.isEmpty {
                for _ in 0..<workers {
                    group.addTask { await scoreWorker(queue) }
                }
            }
            var total = Outcome()
            for await part in group {
                total.explained += part.explained
                total.scored += part.scored
                total.failed.merge(part.failed) { first, _ in first }
                total.stoppedByBudget = total.stoppedByBudget || part.stoppedByBudget
                total.deferred += part.deferred
            }
            return total
        }
        progress.finish()
        return outcome
    }

    private func explainWorker(_ explainer: any Explainer, _ queue: WorkQueue) async -> Outcome {
        var outcome = Outcome()
        while let feature = await queue.nextToExplain() {
            if await stopsForBudget(&outcome, queue) { break }
            let mark = DeferralMark()
            do {
                try await Self.deferrable(mark) { () async throws(SAELabelError) in
                    try await ExplainStep.run(feature: feature, store: store, explainer: explainer)
                }
                outcome.explained += 1
                progress.advance(stage: "explain")
                await queue.explained(feature)
            } catch where budget?.isExhausted == true {  // checked first: not the feature's fault, it stays to do
                _ = await stopsForBudget(&outcome, queue)
                break
            } catch where mark.isSet {
                outcome.deferred += 1
                progress.add(stage: "explain", total: -1)
                progress.add(stage: "score", total: -1)
                await queue.explainFailed()
            } catch {
                let reason = error.featureReason
                outcome.failed[feature] = reason
                try? store.markFailed(feature: feature, stage: "explain", reason: reason)
                progress.advance(stage: "explain", failed: true)
                progress.add(stage: "score", total: -1)
                await queue.explainFailed()
            }
        }
        return outcome
    }

    /// When the spending limit is reached: records it and stops the queue for every worker.
    private func stopsForBudget(_ outcome: inout Outcome, _ queue: WorkQueue) async -> Bool {
        guard budget?.isExhausted == true else { return false }
        outcome.stoppedByBudget = true
        await queue.stop()
        return true
    }

    private func scoreWorker(_ queue: WorkQueue) async -> Outcome {
        var outcome = Outcome()
        while let feature = await queue.nextToScore() {
            if await stopsForBudget(&outcome, queue) { break }
            let mark = DeferralMark()
            do {
                try await Self.deferrable(mark) { () async throws(SAELabelError) in
                    try await ScoreStep.run(feature: feature, store: store, scorers: scorers)
                }
                outcome.scored += 1
                progress.advance(stage: "score")
            } catch where budget?.isExhausted == true {
                _ = await stopsForBudget(&outcome, queue)
                break
            } catch where mark.isSet {
                outcome.deferred += 1
                progress.add(stage: "score", total: -1)
            } catch {
                let reason = error.featureReason
                outcome.failed[feature] = reason
                try? store.markFailed(feature: feature, stage: "score", reason: reason)
                progress.advance(stage: "score", failed: true)
            }
        }
        return outcome
    }
}

extension LabelingRun {
    /// Runs one feature step under `mark`: in batch mode a request it cannot answer from the cache is
    /// queued for a batch and marks the step, which is then put off (not failed) until the answer is in.
    static func deferrable(_ mark: DeferralMark, _ step: () async throws(SAELabelError) -> Void) async throws(SAELabelError) {
        let result: Result<Void, SAELabelError> = await BatchDeferral.$mark.withValue(mark) {
            do throws(SAELabelError) { try await step(); return .success(()) } catch { return .failure(error) }
        }
        try result.get()
    }
}

/// The two queues. Score workers wait for explanations until every explain worker has finished.
actor WorkQueue {
    private var explainQueue: [Int]
    private var scoreQueue: [Int]
    private var explainPending: Int
    private var waiters: [CheckedContinuation<Int?, Never>] = []
    private let scoring: Bool

    init(explain: [Int], score: [Int], scoring: Bool) {
        explainQueue = explain.reversed()
        scoreQueue = score.reversed()
        explainPending = explain.count
        self.scoring = scoring
    }

    func nextToExplain() -> Int? {
        explainQueue.popLast()
    }

    func explained(_ feature: Int) {
        explainPending -= 1
        guard scoring else { return }
        if let waiter = waiters.popLast() {
            waiter.resume(returning: feature)
        } else {
            scoreQueue.insert(feature, at: 0)
        }
        wakeIfFinished()
    }

    func explainFailed() {
        explainPending -= 1
        wakeIfFinished()
    }

    func nextToScore() async -> Int? {
        if let next = scoreQueue.popLast() { return next }
        if explainPending <= 0 { return nil }
        return await withCheckedContinuation { waiters.append($0) }
    }

    /// Drops the work still queued (the spending limit was reached) and releases waiting score workers.
    func stop() {
        explainQueue.removeAll()
        scoreQueue.removeAll()
        explainPending = 0
        wakeIfFinished()
    }

    private func wakeIfFinished() {
        guard explainPending <= 0, scoreQueue.isEmpty else { return }
        for waiter in waiters { waiter.resume(returning: nil) }
        waiters.removeAll()
    }
}

extension SAELabelError {
    /// The reason stored for a failed feature: without the "feature N, stage:" prefix the feature row
    /// already says, so equal causes read alike and can be counted together.
    var featureReason: String {
        if case .feature(_, _, let reason) = self { return reason }
        return description
    }
}
