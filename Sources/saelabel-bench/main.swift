import Foundation

// saelabel-bench collect [--tokens N] …   collect throughput vs plain sgemm and numpy (CollectBench.swift)
// saelabel-bench llm [--requests N] …     LLM client throughput against the mock server (LLMBench.swift)
let benchArguments = Array(CommandLine.arguments.dropFirst())
switch benchArguments.first {
case "collect":
    runCollectBenchmark(arguments: benchArguments)
case "llm":
    await runLLMBenchmark(arguments: benchArguments)
default:
    FileHandle.standardError.write(Data("usage: saelabel-bench collect [--tokens N] [--features N] | llm [options]\n".utf8))
    exit(2)
}
