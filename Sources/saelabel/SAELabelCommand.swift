import ArgumentParser
import Foundation
import LLMClient
import SAELabelCollect
import SAELabelCore
import SAELabelRun
import SAELabelStore

/// The `saelabel` command line: a thin layer that turns flags into calls on SAELabelRun.
@main
struct SAELabelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "saelabel",
        abstract: "Label the features of sparse autoencoders with LLMs, score every label, and export catalogs.",
        discussion: """
            Every command is safe to kill and to run again: it continues where it stopped, and a finished \
            LLM call is never paid for twice. Exit status: 0 success; 1 the job finished but some features \
            failed (see `saelabel status`); 2 bad usage or bad input (nothing written); 3 another command \
            holds the store; 4 batch mode left work waiting for a batch (run again later).
            """,
        version: SAELabelVersion.current,
        subcommands: [Run.self, Collect.self, Explain.self, Score.self, Status.self, Export.self, Merge.self, Passes.self, Batch.self, Prune.self])

    /// Parses and runs, mapping every failure to CONTRACT.md's exit status and one line on stderr.
    static func main() async {
        BLASKernels.relaunchOnFasterKernelsIfNeeded()
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            JobStore.closeEveryOpenStore()
        } catch let error as SAELabelError {
            fail(error.description, code: error.exitCode)
        } catch let exit as ExitCode {
            JobStore.closeEveryOpenStore()
            Foundation.exit(exit.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                // --help and --version
                self.exit(withError: error)
            }
            let message = self.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            fail("\(message) (see `saelabel help`)", code: 2)
        }
    }

    static func fail(_ message: String, code: Int32) -> Never {
        JobStore.closeEveryOpenStore()
        FileHandle.standardError.write(Data("saelabel: \(message)\n".utf8))
        Foundation.exit(code)
    }
}

/// Flags shared by the commands that pick features.
struct SelectionOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Features to work on: A..B (A inclusive, B exclusive) or a comma list like 1,5,9.", valueName: "RANGE"))
    var features: String?

    @Option(help: ArgumentHelp("Take the features whose index ≡ I mod N, for N machines of a Slurm array or Kubernetes indexed Job.", valueName: "I/N"))
    var shard: String?

    func selection(default base: FeatureSelection.Set = .all) throws(SAELabelError) -> FeatureSelection {
        FeatureSelection(set: try features.map { text throws(SAELabelError) in try FeatureSelection.parseRange(text) } ?? base,
                         shard: try shard.map { text throws(SAELabelError) in try FeatureSelection.parseShard(text) })
    }
}

/// Flags shared by the commands that call an LLM.
struct LLMOptions: ParsableArguments {
    @Option(help: ArgumentHelp("OpenAI-compatible base URL, e.g. http://127.0.0.1:8081/v1 (vLLM, llama.cpp, Ollama, OpenAI, OpenRouter); not needed by --style baseline.", valueName: "URL"))
    var endpoint: String?

    @Option(help: "Model name to send in each request; not needed by --style baseline.")
    var model: String?

    @Option(help: ArgumentHelp("Environment variable holding the API key (never passed as a flag, never written anywhere).", valueName: "NAME"))
    var apiKeyEnv = "OPENAI_API_KEY"

    @Option(help: ArgumentHelp("Which server the endpoint is, for the request fields it accepts: \(LLMServer.names) (see the README).", valueName: "KIND"))
    var server: LLMServer = .openai

    @Option(help: "Requests in flight at once.")
    var concurrency = 64

    @Option(help: ArgumentHelp("Per-request timeout in seconds.", valueName: "SECONDS"))
    var timeout = 120.0

    @Option(help: "Retries per request on 408/429/5xx, timeouts and connection errors.")
    var maxRetries = 5

    @Option(help: ArgumentHelp("Folder of the Mustache prompt templates (default: the Prompts/ folder shipped with saelabel).", valueName: "DIR"))
    var prompts: String?

    func endpointConfig(maxTokens: Int? = nil) throws(SAELabelError) -> JobConfig.Endpoint {
        guard let endpoint, let model else { throw .usage("--endpoint and --model are required (only `explain --style baseline` works without them)") }
        guard let url = URL(string: endpoint), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
            throw .usage("--endpoint \(endpoint): not an http(s) URL like http://127.0.0.1:8081/v1")
        }
        guard concurrency > 0 else { throw .usage("--concurrency must be > 0") }
        var config = JobConfig.Endpoint()
        config.endpoint = endpoint
        config.model = model
        config.apiKeyEnv = apiKeyEnv
        config.maxTokens = maxTokens
        config.server = server
        return config
    }

    var limits: JobConfig.Limits {
        var limits = JobConfig.Limits()
        limits.concurrency = concurrency
        limits.timeoutSeconds = timeout
        limits.maxRetries = maxRetries
        return limits
    }
}

extension Stage: ExpressibleByArgument {}
extension LLMServer: ExpressibleByArgument {}
extension ScorerKind: ExpressibleByArgument {}
extension SimulatorMode: ExpressibleByArgument {}
