import Foundation
import SAELabelStore
import TestSupport
import Testing

/// Batch mode's money (issue 16.3–16.4) through the real binary against the mock's Batch API: batch calls
/// are logged and priced at the batch discount, `[limits] max_cost` covers a batch before it is submitted,
/// and `--dry-run` prices batch stages at the discount.
@Suite(.serialized, .enabled(if: Demo.available, "Datasets/demo is missing"))
struct BatchCostTests {
    static let prices = "\n[prices.mock]\ninput = 100.0\ncached_input = 25.0\noutput = 400.0\nbatch_discount = 0.5\n"

    func status(_ db: String) async throws -> [String: Any] {
        let result = try await runSAELabel(["status", "--db", db, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    }

    /// The same job synchronously and in batch mode: the same calls and tokens in the log, the batch ones
    /// marked as such and costing half.
    @Test func batchCallsAreLoggedLikeSynchronousOnesAndCostTheDiscountedPrice() async throws {
        var runs: [Bool: (usage: [[String: Any]], cost: Double)] = [:]
        for batch in [false, true] {
            let mock = try await MockLLMServer.start(["--dialect", "openai"])
            defer { mock.stop() }
            let dir = TempDirectory()
            let job = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8", extra: "batch_poll_seconds = 0.2" + Self.prices,
                                   batch: batch)
            let result = try await runSAELabel(["run", "--config", job])
            #expect(result.status == 0, "\(result.stderr)")
            if batch {
                #expect(try await mock.stats().requests == 0, "every work request went through a batch")
                #expect(result.stdout.contains("(mock, batch)"), "\(result.stdout)")
            }
            let json = try await status(dir.file("job.sqlite"))
            runs[batch] = (try #require(json["usage_by_stage"] as? [[String: Any]]), try #require(json["cost"] as? Double))
        }
        let sync = try #require(runs[false]), batch = try #require(runs[true])
        #expect(sync.usage.allSatisfy { $0["batch"] as? Bool == false } && batch.usage.allSatisfy { $0["batch"] as? Bool == true })
        for key in ["stage", "calls", "prompt_tokens", "completion_tokens"] {
            #expect(sync.usage.map { "\($0[key] ?? "nil")" } == batch.usage.map { "\($0[key] ?? "nil")" }, "\(key)")
        }
        #expect(batch.usage.reduce(0) { $0 + ($1["prompt_tokens"] as? Int ?? 0) } > 0)
        #expect(sync.cost > 0 && abs(batch.cost - sync.cost / 2) < 1e-12, "batch \(batch.cost) vs sync \(sync.cost)")
    }

    /// A batch that could pass max_cost is not submitted: the run stops with exit 1 and its requests wait
    /// in the store; a rerun with a higher limit submits them and finishes, no request sent twice.
    @Test func maxCostStopsBeforeSubmittingABatchThatCouldPassIt() async throws {
        let mock = try await MockLLMServer.start(["--dialect", "openai"])
        defer { mock.stop() }
        let dir = TempDirectory()
        let tight = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8", extra: "batch_poll_seconds = 0.2\nmax_cost = 0.01" + Self.prices,
                                 batch: true)
        let stopped = try await runSAELabel(["run", "--config", tight])
        #expect(stopped.status == 1, "\(stopped.stdout)\n\(stopped.stderr)")
        #expect(stopped.stdout.contains("max_cost"), "\(stopped.stdout)")
        let before = try await mock.stats()
        #expect(before.uploads == 0 && before.batchesCreated == 0 && before.requests == 0)
        let store = try JobStore(path: dir.file("job.sqlite"))
        #expect(try store.queuedBatchRequests().count > 0)
        #expect(try store.features(in: [.failed]).isEmpty)

        let roomy = try Demo.job(dir, endpoint: mock.baseURL, features: "0..8", extra: "batch_poll_seconds = 0.2\nmax_cost = 1000" + Self.prices,
                                 batch: true)
        let finished = try await runSAELabel(["run", "--config", roomy, "--quiet"])
        #expect(finished.status == 0, "\(finished.stderr)")
        let after = try await mock.stats()
        #expect(after.batchesCreated == 2 && after.batchCustomIDs == after.batchCustomIDsDistinct && after.requests == 0)
        let spent = try #require(try await status(dir.file("job.sqlite"))["cost"] as? Double)
        #expect(spent > 0.01, "the first run's limit was below what the batches cost: \(spent)")
    }

    @Test func dryRunPricesBatchStagesAtTheDiscount() async throws {
        var costs: [Bool: Double] = [:]
        for batch in [false, true] {
            let dir = TempDirectory()
            let job = try Demo.job(dir, endpoint: "http://127.0.0.1:9/v1", features: "0..4", extra: Self.prices, batch: batch)
            let dry = try await runSAELabel(["run", "--config", job, "--dry-run"])
            #expect(dry.status == 0, "\(dry.stderr)")
            let line = try #require(dry.stdout.split(separator: "\n").first { $0.hasPrefix("cost (estimated") })
            #expect(line.contains("batch discount") == batch, "\(line)")
            costs[batch] = Double(line.split(separator: " ").last.map(String.init) ?? "")
        }
        let sync = try #require(costs[false]), batch = try #require(costs[true])
        #expect(sync > 0 && abs(batch - sync / 2) <= 0.0001, "batch \(batch) vs sync \(sync)")
    }
}
