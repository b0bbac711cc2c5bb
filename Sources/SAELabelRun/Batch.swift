import Foundation
import LLMClient
import SAELabelCore
import SAELabelStore

/// Batch mode (`[explainer] batch`, `[simulator] batch`). A labeling round runs as usual, but each request
/// of a batch stage that the response cache cannot answer is queued in the store instead of sent, and its
/// feature step is put off. The queued requests go out in provider batches (OpenAI's Batch API); their
/// answers land in the response cache under the same keys, so the next round finds them there and the
/// parsers, retries and scoring run unchanged. Follow-ups that need an answer first (the JSON simulator's
/// retry that shows its error, detection's retry) queue in the next round's batch.
/// A batch line that fails (error, expiry, cancellation, no line) is sent synchronously in the next round,
/// with the client's usual retries, so every feature ends labeled or failed with a reason.
struct StoreBatchQueue: LLMBatchQueue {
    let store: JobStore
    let stages: Set<String>

    static func stage(ofTag tag: String) -> String { tag.hasPrefix("explain") ? "explain" : "score" }

    func enqueue(key: String, path: String, body: Data, tag: String) -> Bool {
        let stage = Self.stage(ofTag: tag)
        guard stages.contains(stage) else { return false }
        return store.enqueueBatchRequest(key: key, stage: stage, path: path, body: body, tag: tag)
    }
}

public enum BatchMode {
    /// The stages of `config` that go through batches.
    static func stages(_ config: JobConfig) -> Set<String> {
        var stages = Set<String>()
        if config.explainer.batch && config.explainer.style != "baseline" { stages.insert("explain") }
        if config.scoring.batch { stages.insert("score") }
        return stages
    }

    /// A batch stage whose server has no Batch API (anything but `openai`): its requests wait in the store
    /// for `saelabel batch export` → vLLM's run_batch → `saelabel batch import`, and it needs no server.
    static func isOffline(_ config: JobConfig, stage: String) -> Bool {
        let endpoint = stage == "explain" ? config.explainer.llm : config.scoring.llm
        return stages(config).contains(stage) && endpoint.server != .openai
    }

    /// One JSONL line of a batch input file: OpenAI's Batch API and vLLM's run_batch read the same shape.
    /// The body goes in byte for byte as the synchronous client would have sent it.
    public static func inputLine(_ request: BatchRequestRecord) -> Data {
        var line = Data("{\"custom_id\":\"\(request.key)\",\"method\":\"POST\",\"url\":\"\(endpointURL(request.path))\",\"body\":".utf8)
        line.append(request.body)
        line.append(Data("}\n".utf8))
        return line
    }

    /// The URL a batch line names: the endpoint path under `/v1`, as both readers expect.
    static func endpointURL(_ path: String) -> String { "/v1" + path }

    /// Splits requests into files within OpenAI's limits (50,000 lines, 200 MB), one endpoint per file.
    static func files(_ requests: [BatchRequestRecord], maxLines: Int = LLMClient.batchMaxLines,
                      maxBytes: Int = LLMClient.batchMaxBytes) -> [(path: String, keys: [String], data: Data)] {
        var files: [(path: String, keys: [String], data: Data)] = []
        for path in Set(requests.map(\.path)).sorted() {
            var keys: [String] = []
            var data = Data()
            for request in requests where request.path == path {
                let line = inputLine(request)
                if !keys.isEmpty && (keys.count >= maxLines || data.count + line.count > maxBytes) {
                    files.append((path, keys, data))
                    keys = []
                    data = Data()
                }
                keys.append(request.key)
                data.append(line)
            }
            if !keys.isEmpty { files.append((path, keys, data)) }
        }
        return files
    }

    /// Reads a batch output or error file: answers by custom_id, and the reason of every failed line.
    public static func readOutput(_ data: Data) -> (answers: [String: Data], failures: [String: String], lines: Int) {
        var answers: [String: Data] = [:]
        var failures: [String: String] = [:]
        var lines = 0
        for line in data.split(separator: UInt8(ascii: "\n")) where !line.allSatisfy({ $0 == 32 || $0 == 13 }) {
            guard let parsed = BatchOutputLine.parse(Data(line)) else { continue }
            lines += 1
            if let answer = parsed.answer {
                answers[parsed.customID] = answer
            } else {
                failures[parsed.customID] = parsed.error ?? "the batch line has no answer"
            }
        }
        return (answers, failures, lines)
    }

    /// The most these requests can cost as batch calls at `prices`: the body's bytes as prompt tokens (a
    /// token is at least one byte) and its answer-token limit (4,096 without one), at the batch discount.
    /// Requests to models without a price count 0 (the job file refuses max_cost without prices for its models).
    static func mostCost(_ requests: [BatchRequestRecord], prices: [String: ModelPrice]) -> Double {
        requests.reduce(0) { total, request in
            let body = (try? JSONSerialization.jsonObject(with: request.body)) as? [String: Any]
            guard let model = body?["model"] as? String, let price = prices[model] else { return total }
            let limit = ((body?["max_completion_tokens"] ?? body?["max_tokens"]) as? NSNumber)?.intValue
            return total + price.cost(promptTokens: request.body.count, completionTokens: limit ?? 4096, batch: true)
        }
    }

    /// The usage each answer reports, by request key, as the call log keeps it.
    static func usage(_ answers: [String: Data]) -> [String: BatchCallUsage] {
        answers.compactMapValues { body in
            TokenUsage(responseBody: body).map {
                BatchCallUsage(promptTokens: $0.promptTokens, cachedPromptTokens: $0.cachedPromptTokens, completionTokens: $0.completionTokens)
            }
        }
    }

    /// What the answered requests cost at the batch price (the model named in each request's body).
    static func cost(_ requests: [BatchRequestRecord], usage: [String: BatchCallUsage], prices: [String: ModelPrice]) -> Double {
        requests.reduce(0) { total, request in
            let body = (try? JSONSerialization.jsonObject(with: request.body)) as? [String: Any]
            guard let call = usage[request.key], let model = body?["model"] as? String, let price = prices[model] else { return total }
            return total + price.cost(promptTokens: call.promptTokens, cachedPromptTokens: call.cachedPromptTokens,
                                      completionTokens: call.completionTokens, batch: true)
        }
    }

    /// `saelabel batch export`: the queued requests of `stage` as a batch input file (the store is not changed).
    public static func export(store: JobStore, stage: String, to path: String) throws(SAELabelError) -> Int {
        let requests = try store.queuedBatchRequests(stage: stage)
        var data = Data()
        for request in requests { data.append(inputLine(request)) }
        do {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw .badInput(location: path, problem: "cannot write the requests file: \(error.localizedDescription)")
        }
        return requests.count
    }

    /// `saelabel batch import`: answers from a run_batch (or Batch API) output file go into the response cache.
    public static func importResults(store: JobStore, from path: String) throws(SAELabelError) -> (answered: Int, failed: Int, unknown: Int) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .badInput(location: path, problem: "cannot read the results file; name the output of run_batch (-o)")
        }
        let (answers, failures, lines) = readOutput(data)
        guard lines > 0 else {
            throw .badInput(location: path, problem: "no batch output lines ({\"custom_id\", \"response\", \"error\"} per line) in the file")
        }
        return try store.importBatchAnswers(answers: answers, failures: failures, usage: usage(answers))
    }
}

/// Submits queued requests and collects finished batches for one job.
struct BatchSubmitter {
    let store: JobStore
    let config: JobConfig
    let clients: LLMClients
    /// `[limits] max_cost`: a batch is submitted only when all of it fits (see `SpendingLimit.reserveBatch`).
    let budget: SpendingLimit?

    private func client(stage: String) -> LLMClient {
        clients.client(for: stage == "explain" ? config.explainer.llm : config.scoring.llm)
    }

    /// Polls the store's open batches; with `wait`, until all have finished (every `batch_poll_seconds`).
    /// Finished batches are read back into the response cache. Returns how many are still open.
    func collect(wait: Bool) async throws(SAELabelError) -> Int {
        var lastStatus: [String: String] = [:]
        while true {
            var open = 0
            for (id, stage) in try store.openBatches() {
                let client = client(stage: stage)
                let info: BatchInfo
                do { info = try await client.batch(id: id) } catch { throw .llm("polling batch \(id): \(error.description)") }
                if lastStatus[id] != info.status {
                    lastStatus[id] = info.status
                    let counts = info.requestCounts.map { " (\($0.completed + $0.failed) of \($0.total) done)" } ?? ""
                    FileHandle.standardError.write(Data("saelabel: batch \(id) [\(stage)]: \(info.status)\(counts)\n".utf8))
                }
                guard info.isFinished else {
                    try store.updateBatchStatus(id: id, status: info.status)
                    open += 1
                    continue
                }
                var answers: [String: Data] = [:]
                var failures: [String: String] = [:]
                for fileID in [info.outputFileID, info.errorFileID].compactMap({ $0 }) {
                    let data: Data
                    do { data = try await client.fileContent(id: fileID) } catch { throw .llm("reading batch \(id)'s file \(fileID): \(error.description)") }
                    let part = BatchMode.readOutput(data)
                    answers.merge(part.answers) { first, _ in first }
                    failures.merge(part.failures) { first, _ in first }
                }
                let submitted = try store.submittedBatchRequests(batch: id)
                let usage = BatchMode.usage(answers)
                try store.closeBatch(id: id, status: info.status, answers: answers, failures: failures, usage: usage)
                budget?.settleBatch(reserved: BatchMode.mostCost(submitted, prices: config.prices),
                                    cost: BatchMode.cost(submitted, usage: usage, prices: config.prices))
            }
            if open == 0 || !wait { return open }
            do { try await Task.sleep(for: .seconds(config.limits.batchPollSeconds)) } catch { throw .llm("stopped while waiting for a batch") }
        }
    }

    /// Uploads the queued requests of online batch stages and creates their batches. Returns how many were
    /// created, and whether `max_cost` stopped a batch from going out (its requests stay queued for a rerun).
    func submitQueued() async throws(SAELabelError) -> (created: Int, stoppedByBudget: Bool) {
        var created = 0
        for stage in BatchMode.stages(config).sorted() where !BatchMode.isOffline(config, stage: stage) {
            let client = client(stage: stage)
            let queued = try store.queuedBatchRequests(stage: stage)
            for file in BatchMode.files(queued) {
                if let budget {
                    let keys = Set(file.keys)
                    guard budget.reserveBatch(BatchMode.mostCost(queued.filter { keys.contains($0.key) }, prices: config.prices)) else {
                        return (created, true)
                    }
                }
                let fileID: String
                let info: BatchInfo
                do {
                    fileID = try await client.uploadBatchFile(file.data, filename: "saelabel-\(stage).jsonl")
                    info = try await client.createBatch(inputFileID: fileID, endpoint: BatchMode.endpointURL(file.path),
                                                        metadata: ["saelabel_stage": stage])
                } catch {
                    throw .llm("submitting a batch of \(file.keys.count) \(stage) requests: \(error.description)")
                }
                // Recorded at once: a run killed from here on polls this batch instead of submitting again.
                try store.recordBatch(id: info.id, stage: stage, inputFileID: fileID, status: info.status, keys: file.keys)
                FileHandle.standardError.write(Data("saelabel: submitted batch \(info.id) [\(stage)]: \(file.keys.count) requests\n".utf8))
                created += 1
            }
        }
        return (created, false)
    }
}
