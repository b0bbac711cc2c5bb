import LLMClient
import SAELabelStore
import Synchronization

/// `[limits] max_cost`: every request reserves the most it can cost before it is sent (its body's
/// bytes as prompt tokens, its `max_tokens` as answer tokens, at the job file's prices) and settles to
/// what the server's usage says it cost. A request that could take spent + reserved past the limit is
/// not sent; the run then stops taking work and ends with exit 1, and a rerun with a higher limit
/// continues from the store (answers already paid for are in its response cache).
public final class SpendingLimit: LLMBudget {
    public let limit: Double
    private let prices: [String: ModelPrice]
    private struct State: Sendable {
        var spent: Double
        var reserved = 0.0
        var exhausted = false
    }
    private let state: Mutex<State>

    /// `spent`: what earlier runs of the store already cost at these prices (the limit covers the job).
    public init(limit: Double, prices: [String: ModelPrice], spent: Double) {
        self.limit = limit
        self.prices = prices
        self.state = Mutex(State(spent: spent))
    }

    public func reserve(model: String, promptBytes: Int, maxTokens: Int?) -> Double? {
        // A model without a price costs nothing here; the job file refuses max_cost without prices for its models.
        let most = prices[model]?.cost(promptTokens: promptBytes, completionTokens: maxTokens ?? 4096) ?? 0
        return state.withLock { state -> Double? in
            guard !state.exhausted, state.spent + state.reserved + most <= limit else {
                state.exhausted = true
                return nil
            }
            state.reserved += most
            return most
        }
    }

    public func settle(reservation: Double, model: String, usage: TokenUsage?) {
        let cost = usage.flatMap { usage in
            prices[model]?.cost(promptTokens: usage.promptTokens, cachedPromptTokens: usage.cachedPromptTokens,
                                completionTokens: usage.completionTokens)
        } ?? 0
        state.withLock { $0.reserved -= reservation; $0.spent += cost }
    }

    /// A batch about to be submitted that could cost at most `most` (at the batch price): counted as spent
    /// when it fits under the limit; otherwise nothing is counted, the limit is exhausted and the batch must
    /// not be submitted.
    public func reserveBatch(_ most: Double) -> Bool {
        state.withLock { state in
            guard !state.exhausted, state.spent + state.reserved + most <= limit else {
                state.exhausted = true
                return false
            }
            state.spent += most
            return true
        }
    }

    /// A batch read back: what it could have cost (`reserved`, counted by `reserveBatch` or at the start of
    /// the run) is replaced by what its answers cost.
    public func settleBatch(reserved: Double, cost: Double) {
        state.withLock { $0.spent += cost - reserved }
    }

    /// True once a request was refused: workers stop taking features.
    public var isExhausted: Bool { state.withLock { $0.exhausted } }
    public var spent: Double { state.withLock { $0.spent } }
}
