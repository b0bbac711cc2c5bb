// swift-tools-version:6.1
import PackageDescription

// One module per pipeline stage over a small core; the LLM client and the C shims stand apart,
// and the `saelabel` executable is a thin layer over SAELabelRun.
let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "saelabel",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "saelabel", targets: ["saelabel"]),
        .library(name: "SAELabelRun", targets: ["SAELabelRun"]),
        .library(name: "LLMClient", targets: ["LLMClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/groue/GRDB.swift", exact: "7.10.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache", from: "2.1.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/weichsel/ZIPFoundation", exact: "0.9.20"),
    ],
    targets: [
        // C shims
        .target(name: "CCurl", linkerSettings: [.linkedLibrary("curl")]),
        .target(name: "CFileSystem"),
        .target(name: "CPrefetch"),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),

        // Core types shared by every stage
        .target(name: "SAELabelCore",
                dependencies: [.product(name: "Mustache", package: "swift-mustache"),
                               .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: strict),
        .target(name: "SAELabelStore",
                dependencies: ["SAELabelCore", .product(name: "GRDB", package: "GRDB.swift"),
                               // The raw C API, for collect's bulk insert (ExampleRows.swift).
                               .product(name: "GRDBSQLite", package: "GRDB.swift")],
                swiftSettings: strict),

        // Collect's numeric kernels (activation functions, per-feature window state, top-k): they parse nothing and
        // only read buffers their callers sized, so they are built with -Ounchecked (no overflow or bounds checks in
        // the per-window loops, worth 10–30 % of collect's streaming; BENCHMARKS.md). Release builds only: debug
        // builds and tests keep every check.
        .target(name: "SAELabelKernels",
                dependencies: ["SAELabelCore", "CPrefetch"],
                swiftSettings: strict + [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]),

        // Pipeline stages
        // No -Ounchecked: this module parses untrusted files (safetensors, cfg.json, tokenizer.json); its hot loops are in SAELabelKernels.
        .target(name: "SAELabelCollect",
                dependencies: ["SAELabelCore", "SAELabelKernels", "SAELabelStore", "COpenBLAS", "ZIPFoundation"],
                swiftSettings: strict),
        .target(name: "LLMClient",
                dependencies: ["CCurl", .product(name: "Logging", package: "swift-log"),
                               .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: strict),
        .target(name: "SAELabelExplain",
                dependencies: ["SAELabelCore", "SAELabelStore", "LLMClient"],
                swiftSettings: strict),
        .target(name: "SAELabelScore",
                dependencies: ["SAELabelCore", "SAELabelStore", "LLMClient"],
                swiftSettings: strict),
        .target(name: "SAELabelExport",
                dependencies: ["SAELabelCore", "SAELabelStore", "CFileSystem"],
                swiftSettings: strict),
        .target(name: "SAELabelRun",
                dependencies: ["SAELabelCore", "SAELabelStore", "SAELabelCollect", "LLMClient",
                               "SAELabelExplain", "SAELabelScore", "SAELabelExport",
                               "TOMLKit", .product(name: "Logging", package: "swift-log")],
                swiftSettings: strict),

        // Executables
        .executableTarget(name: "saelabel",
                          dependencies: ["SAELabelRun", "SAELabelCore", "SAELabelStore", "SAELabelCollect", "SAELabelExport", "LLMClient",
                                         "SAELabelScore",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: strict),
        .executableTarget(name: "saelabel-bench",
                          dependencies: ["SAELabelCollect", "SAELabelStore", "SAELabelExport", "SAELabelRun", "LLMClient", "COpenBLAS",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: strict),

        // Tests, over shared helpers (temporary folders, processes, the mock LLM server)
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "StoreTests", dependencies: ["TestSupport", "SAELabelStore", "SAELabelCore",
                                                     .product(name: "GRDB", package: "GRDB.swift")], swiftSettings: strict),
        .testTarget(name: "CollectTests", dependencies: ["SAELabelCollect", "SAELabelKernels", "SAELabelStore"], swiftSettings: strict),
        .testTarget(name: "LLMClientTests", dependencies: ["TestSupport", "LLMClient"], swiftSettings: strict),
        .testTarget(name: "LabelingTests",
                    dependencies: ["TestSupport", "SAELabelExplain", "SAELabelScore", "SAELabelStore", "LLMClient"],
                    swiftSettings: strict),
        .testTarget(name: "ExportTests", dependencies: ["TestSupport", "SAELabelExport", "SAELabelStore",
                                                      .product(name: "GRDB", package: "GRDB.swift")], swiftSettings: strict),
        .testTarget(name: "RunTests", dependencies: ["TestSupport", "SAELabelRun", "LLMClient"], swiftSettings: strict),
    ]
)
