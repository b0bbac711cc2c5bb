import Foundation
import Synchronization

/// Token buckets for requests/minute and tokens/minute, refilled continuously (capacity: 10 s of refill). A request waits
/// until every bucket holds its cost (or is full, so a request larger than a bucket still runs).
/// Token costs are estimates; `correct(by:)` adds the difference once the usage is known, which
/// may drive the bucket negative so later requests wait longer.
final class RateLimiter: Sendable {
    private struct Bucket {
        var capacity: Double
        var level: Double
        var perSecond: Double
        mutating func refill(_ seconds: Double) { level = min(capacity, level + seconds * perSecond) }
        func wait(for cost: Double) -> Double {
            let need = min(cost, capacity)
            return level >= need ? 0 : (need - level) / perSecond
        }
    }
    private struct State {
        var requests: Bucket?
        var tokens: Bucket?
        var last: ContinuousClock.Instant
    }
    private let state: Mutex<State>

    init?(requestsPerMinute: Int?, tokensPerMinute: Int?) {
        func bucket(_ perMinute: Int?) -> Bucket? {
            guard let perMinute, perMinute > 0 else { return nil }
            // Burst of at most 10 seconds' allowance, so a minute's quota is not spent at once
            // (servers often enforce per-minute limits over shorter windows).
            let perSecond = Double(perMinute) / 60
            let capacity = max(1, perSecond * 10)
            return Bucket(capacity: capacity, level: capacity, perSecond: perSecond)
        }
        let r = bucket(requestsPerMinute), t = bucket(tokensPerMinute)
        if r == nil && t == nil { return nil }
        state = Mutex(State(requests: r, tokens: t, last: .now))
    }

    func acquire(tokens cost: Int) async throws(LLMError) {
        while true {
            let wait = state.withLock { s -> Double in
                let now = ContinuousClock.now
                let d = s.last.duration(to: now)
                s.last = now
                let elapsed = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
                s.requests?.refill(elapsed)
                s.tokens?.refill(elapsed)
                let w = max(s.requests?.wait(for: 1) ?? 0, s.tokens?.wait(for: Double(cost)) ?? 0)
                if w == 0 {
                    s.requests?.level -= 1
                    s.tokens?.level -= Double(cost)
                }
                return w
            }
            if wait == 0 { return }
            do { try await Task.sleep(for: .seconds(wait)) } catch { throw .cancelled }
        }
    }

    func correct(by tokenDelta: Int) {
        state.withLock { $0.tokens?.level -= Double(tokenDelta) }
    }
}
