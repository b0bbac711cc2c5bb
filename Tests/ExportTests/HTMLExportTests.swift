import Foundation
import TestSupport
import Testing
import SAELabelCore
import SAELabelStore
@testable import SAELabelExport

@Suite struct HTMLExportTests {
    @Test func writesShellAndScriptSafeDataChunks() throws {
        let fixture = try NastyStore()
        let out = fixture.directory.file("catalog")
        let summary = try Exporter.export(store: fixture.store, format: .html, to: out, filter: .all)
        #expect(summary.features == 5)
        for name in ["index.html", "app.js", "style.css", "data/meta.js", "data/index-0000.js", "data/features-0000.js"] {
            #expect(summary.files.contains(out + "/" + name), "\(name)")
            #expect(FileManager.default.fileExists(atPath: out + "/" + name), "\(name)")
        }
        #expect(!FileManager.default.fileExists(atPath: out + ".tmp"))
        for name in ["data/meta.js", "data/index-0000.js", "data/features-0000.js"] {
            let text = try readText(out + "/" + name)
            #expect(!text.contains("<") && !text.contains(">"), "\(name) holds a raw angle bracket")
            #expect(!text.unicodeScalars.contains("\u{2028}") && !text.unicodeScalars.contains("\u{2029}"))
        }
        // The page shell never uses innerHTML, so no data can become markup.
        #expect(!HTMLAssets.appJS.contains("innerHTML"))
        #expect(!HTMLAssets.appJS.contains("insertAdjacentHTML") && !HTMLAssets.appJS.contains("document.write"))

        let rows = try #require(try jsonpPayload(out + "/data/index-0000.js") as? [[Any]])
        #expect(rows.map { $0[0] as? Int } == [0, 1, 2, 3, 4])
        #expect(rows[0][2] as? String == Nasty.label0)
        #expect(rows[0][3] as? Double == 0.61)
        #expect(rows[2][3] is NSNull)
        let features = try #require(try jsonpPayload(out + "/data/features-0000.js") as? [[String: Any]])
        let heldout = (features[0]["examples"] as! [String: Any])["heldout"] as! [[String: Any]]
        #expect(heldout[0]["tokens"] as? [String] == Nasty.tokens)
        #expect(heldout[0]["simulated"] as? [Double] == NastyStore.simulated0)
        #expect(features[0]["histogram"] as? [Int] == [9, 5, 3, 0, 1, 1, 0, 0, 0, 1])
    }

    @Test func chunksLargeCatalogs() throws {
        let directory = TempDirectory()
        let store = try JobStore(path: directory.file("c.sqlite"))
        let stats = FeatureStatistics(frequency: 0.1, maxActivation: 1, meanActivation: 1, activatingTokens: 1,
                                      activatingWindows: 1, histogram: [1])
        try store.saveCollected((0..<2_500).map {
            CollectedFeature(index: $0, state: .collected, statistics: stats, explain: [], heldout: [])
        })
        let out = directory.file("html")
        let summary = try Exporter.export(store: store, format: .html, to: out, filter: .all)
        #expect(summary.features == 2_500)
        let chunks = try FileManager.default.contentsOfDirectory(atPath: out + "/data").filter { $0.hasPrefix("features-") }.sorted()
        #expect(chunks == ["features-0000.js", "features-0001.js", "features-0002.js"])
        let last = try #require(try jsonpPayload(out + "/data/features-0002.js") as? [[String: Any]])
        #expect(last.count == 500)
        #expect(last.first?["feature"] as? Int == 2_000)
        let index = try #require(try jsonpPayload(out + "/data/index-0000.js") as? [[Any]])
        #expect(index.count == 2_500)
        #expect(index[2_499][8] as? Int == 2)
    }
}

/// Headless Chromium against the exported page over file://.
enum Chromium {
    static let path: String? = {
        let names = ["chromium", "chromium-browser"]
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            for name in names {
                let candidate = "\(directory)/\(name)"
                if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            }
        }
        return nil
    }()

    static func run(_ arguments: [String]) async throws -> String {
        let profile = TempDirectory()
        let result = try await runProcess(path!, ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                                  "--no-first-run", "--user-data-dir=\(profile.path)",
                                                  "--virtual-time-budget=5000"] + arguments)
        return result.stdout
    }

    static func dumpDOM(_ url: String) async throws -> String {
        try await run(["--dump-dom", url])
    }

    static func screenshot(_ url: String, to png: String, width: Int = 1280, height: Int = 900) async throws {
        _ = try await run(["--screenshot=\(png)", "--window-size=\(width),\(height)", "--hide-scrollbars", url])
    }
}

@Suite(.serialized, .enabled(if: Chromium.path != nil, "chromium is not on PATH (Debian: apt-get install -y chromium); skipping the browser tests"))
struct BrowserTests {
    static func fileURL(_ path: String) -> String { URL(fileURLWithPath: path).absoluteString }

    /// No payload ran and none became an element.
    static func expectInert(_ dom: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(!dom.contains("data-pwned=\""), "an injected handler ran", sourceLocation: sourceLocation)
        #expect(!dom.contains("<img"), "an injected element exists", sourceLocation: sourceLocation)
        #expect(!dom.contains("<script>alert") && !dom.contains("<script>document"), sourceLocation: sourceLocation)
    }

    static func rowFeatures(_ dom: String) -> [Int] {
        dom.components(separatedBy: "<tr data-feature=\"").dropFirst().compactMap { Int($0.prefix { $0.isNumber }) }
    }

    @Test func indexFilterAndFeatureViewRenderDataAsText() async throws {
        let fixture = try NastyStore()
        let out = fixture.directory.file("catalog")
        _ = try Exporter.export(store: fixture.store, format: .html, to: out, filter: .all)
        let index = Self.fileURL(out + "/index.html")

        let dom = try await Chromium.dumpDOM(index)
        #expect(dom.contains("data-view=\"index\""), "index did not render: \(dom.prefix(600))")
        #expect(dom.contains("data-rows=\"5\""))
        #expect(Self.rowFeatures(dom) == [0, 1, 2, 3, 4])
        #expect(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"))
        #expect(dom.contains("&lt;img src=x onerror=\"document.body.setAttribute('data-pwned','1')\"&gt;"))
        #expect(dom.contains("café 日本 🚀"))
        #expect(dom.contains("<title>saelabel — gpt2-small-res-jb &lt;b&gt;</title>"))
        Self.expectInert(dom)

        let byScore = try await Chromium.dumpDOM(index + "?min=0.5")
        #expect(byScore.contains("data-rows=\"1\""))
        #expect(Self.rowFeatures(byScore) == [0])
        let bySearch = try await Chromium.dumpDOM(index + "#q=commas")
        #expect(Self.rowFeatures(bySearch) == [0, 3])
        let byStatus = try await Chromium.dumpDOM(index + "#status=dead")
        #expect(Self.rowFeatures(byStatus) == [2])
        let sorted = try await Chromium.dumpDOM(index + "#sort=simulation&dir=desc")
        #expect(Self.rowFeatures(sorted) == [0, 3, 1, 2, 4])

        let feature = try await Chromium.dumpDOM(index + "#feature=0")
        #expect(feature.contains("data-view=\"feature\""), "feature view did not render: \(feature.prefix(600))")
        #expect(feature.contains("data-feature=\"0\""))
        let shaded = feature.components(separatedBy: "<span class=\"tok\"").count - 1
        #expect(shaded == Nasty.tokens.count * 5)    // 2 explain + 2 held-out true + 1 simulated row
        #expect(feature.contains("background-color: rgb(245, 140, 20)"))        // the max token is fully shaded (alpha 1)
        #expect(feature.contains("background-color: rgba(40, 120, 220, 0.25)")) // simulated 2.5 of 10
        #expect(feature.contains("not simulated"))
        #expect(feature.contains("<svg class=\"hist\""))
        #expect(feature.contains("&lt;script&gt;alert(1)&lt;/script&gt;"))
        #expect(feature.contains("\"&gt;&lt;img src=x onerror=alert(1)&gt;"))
        #expect(feature.contains("&lt;/script&gt;&lt;script&gt;document.body.setAttribute('data-pwned','2')&lt;/script&gt;"))
        Self.expectInert(feature)

        let labelled = try await Chromium.dumpDOM(index + "#feature=1")
        #expect(labelled.contains("data-feature=\"1\""))
        #expect(labelled.contains("labels from the LLM: \"&gt;&lt;img src=x"))
        Self.expectInert(labelled)
    }

    @Test func screenshotsOfARealisticCatalog() async throws {
        let fixture = try RealisticStore()
        let out = fixture.directory.file("catalog")
        _ = try Exporter.export(store: fixture.store, format: .html, to: out, filter: .all)
        let index = Self.fileURL(out + "/index.html")
        let shots = [("catalog-index.png", index + "#sort=simulation&dir=desc", 900), ("catalog-feature.png", index + "#feature=2", 1500)]
        // SAELABEL_UPDATE_DOCS=1 writes the pictures into docs/; otherwise into the temporary directory.
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs").path
        let target = ProcessInfo.processInfo.environment["SAELABEL_UPDATE_DOCS"] == "1" ? docs : fixture.directory.path
        for (name, url, height) in shots {
            let png = (target as NSString).appendingPathComponent(name)
            try? FileManager.default.removeItem(atPath: png)
            try await Chromium.screenshot(url, to: png, height: height)
            let data = try Data(contentsOf: URL(fileURLWithPath: png))
            #expect(data.count > 10_000)
            #expect(data.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))
        }
        let dom = try await Chromium.dumpDOM(index + "#feature=2")
        #expect(dom.contains("Feature 2"))
        #expect(dom.contains("<section id=\"controls\" hidden"))
    }
}
