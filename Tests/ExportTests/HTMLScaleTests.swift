import Foundation
import TestSupport
import Testing
import SAELabelCore
import SAELabelStore
@testable import SAELabelExport

extension BrowserTests {
    /// A store of `features` collected features (no examples) with a labeling pass begun: more than
    /// one index part of the html catalog, quick to write.
    static func collectedStore(features: Int, in directory: TempDirectory) throws -> JobStore {
        let store = try JobStore(path: directory.file("c.sqlite"))
        let stats = FeatureStatistics(frequency: 0.1, maxActivation: 1, meanActivation: 1, activatingTokens: 1,
                                      activatingWindows: 1, histogram: [1])
        try store.saveCollected((0..<features).map {
            CollectedFeature(index: $0, state: .collected, statistics: stats, explain: [], heldout: [])
        })
        try store.beginPass("p")
        return store
    }

    /// A catalog of two index parts: searching, sorting and opening a feature from the second part
    /// give what the rows say, whether the search is answered from the prebuilt orders or narrowed.
    /// Scores repeat (ties go by feature) and every eleventh feature has none (last either way).
    @Test func searchAndSortOverSeveralIndexParts() async throws {
        let directory = TempDirectory()
        let count = HTMLExport.indexChunkSize + 2_000
        let store = try Self.collectedStore(features: count, in: directory)
        func label(_ i: Int) -> String { "\(i % 7 == 0 ? "Pets and animals" : "other things") number \(i)" }
        func simulation(_ i: Int) -> Double { Double((i * 37) % 1000) / 1000 }
        func scored(_ i: Int) -> Bool { i % 11 != 5 }
        for i in 0..<count where scored(i) {
            let explanation = try store.saveExplanation(feature: i, text: label(i), explainerModel: "m", promptHash: "h", rawResponse: nil)
            try store.saveScore(explanation: explanation, score: StoredScore(scorer: "simulation", value: simulation(i), model: "m",
                                                                             promptHash: "s", details: "{}"), completesFeature: true)
        }
        let out = directory.file("catalog")
        _ = try Exporter.export(store: store, format: .html, to: out, filter: .all)
        let index = Self.fileURL(out + "/index.html")

        // The export's order: simulation highest first, ties by feature, unscored last.
        let descending = (0..<count).filter(scored).sorted { (simulation($0), -$0) > (simulation($1), -$1) }
            + (0..<count).filter { !scored($0) }
        let orders = try #require(try jsonpPayload(out + "/data/orders.js") as? [String: [Int]])
        #expect(orders["simulation"] == descending)
        #expect(orders["frequency"] == Array(0..<count), "equal frequencies go by feature")

        let pets = (0..<count).filter { $0 % 7 == 0 && scored($0) }
        let bySimulation = pets.sorted { (simulation($0), -$0) > (simulation($1), -$1) }
        let dom = try await Chromium.dumpDOM(index + "#q=pets&sort=simulation&dir=desc")
        #expect(dom.contains("data-complete=\"1\""), "the whole index was searched")
        #expect(dom.contains("data-rows=\"\(pets.count)\""))
        #expect(Self.rowFeatures(dom) == Array(bySimulation.prefix(100)))
        #expect(dom.contains("data-first-paint-ms=\""))

        // Ascending (derived from the prebuilt order in the page): lowest first, ties by feature, unscored last.
        let ascending = (0..<count).filter(scored).sorted { (simulation($0), $0) < (simulation($1), $1) }
            + (0..<count).filter { !scored($0) }
        let up = try await Chromium.dumpDOM(index + "#sort=simulation&dir=asc&page=110")
        #expect(Self.rowFeatures(up) == Array(ascending[10_900..<11_000]), "the page spanning the last scores and the first unscored")

        // A feature number matches by equality, and labels holding it as text match too.
        let digits = try await Chromium.dumpDOM(index + "#q=1234")
        let expected = (0..<count).filter { String($0) == "1234" || (scored($0) && label($0).lowercased().contains("1234")) }
        #expect(Self.rowFeatures(digits) == expected)

        let last = try await Chromium.dumpDOM(index + "#feature=\(count - 1)")
        #expect(last.contains("data-view=\"feature\""), "feature view did not render: \(last.prefix(600))")
        #expect(last.contains(label(count - 1)))
    }

    /// The first index part missing (a folder copied half-way): the page still requests the other
    /// parts, shows their rows searchable, and says which file is missing and what to do; a feature
    /// whose detail file is missing says so instead of loading forever.
    @Test func aMissingIndexPartLeavesTheRestUsable() async throws {
        let directory = TempDirectory()
        let count = HTMLExport.indexChunkSize + 1_500
        let store = try Self.collectedStore(features: count, in: directory)
        for i in stride(from: 0, to: count, by: 3) {
            _ = try store.saveExplanation(feature: i, text: "pets \(i)", explainerModel: "m", promptHash: "h", rawResponse: nil)
        }
        let out = directory.file("catalog")
        _ = try Exporter.export(store: store, format: .html, to: out, filter: .all)
        try FileManager.default.removeItem(atPath: out + "/data/index-0000.js")
        let lastChunk = (count - 1) / HTMLExport.detailChunkSize
        try FileManager.default.removeItem(atPath: out + String(format: "/data/features-%04d.js", lastChunk))
        let index = Self.fileURL(out + "/index.html")

        let rest = Array(HTMLExport.indexChunkSize..<count)
        let dom = try await Chromium.dumpDOM(index)
        #expect(dom.contains("data-view=\"index\""), "the index did not render: \(dom.prefix(600))")
        #expect(dom.contains("data-complete=\"1\""))
        #expect(dom.contains("data-rows=\"\(rest.count)\""))
        #expect(Self.rowFeatures(dom) == Array(rest.prefix(100)))
        #expect(dom.contains("data-missing-parts=\"data/index-0000.js\""))
        #expect(dom.contains("\(HTMLExport.indexChunkSize) of \(count) features are missing from this list because data/index-0000.js was not loaded"))
        #expect(dom.contains("saelabel export --format html"))

        // Search and sort over the loaded parts (the prebuilt orders no longer match: sorted in the page).
        let pets = rest.filter { $0 % 3 == 0 }
        let searched = try await Chromium.dumpDOM(index + "#q=pets&sort=feature&dir=desc")
        #expect(searched.contains("data-rows=\"\(pets.count)\""))
        #expect(Self.rowFeatures(searched) == Array(pets.reversed().prefix(100)))

        let lost = try await Chromium.dumpDOM(index + "#feature=5")
        #expect(lost.contains("Feature 5 is not in the part of the index that loaded."), "\(lost.prefix(800))")
        let unreadable = try await Chromium.dumpDOM(index + "#feature=\(count - 1)")
        #expect(unreadable.contains("data-view=\"error\""), "\(unreadable.prefix(800))")
        #expect(unreadable.contains(String(format: "Could not load data/features-%04d.js", lastChunk)))
        let shown = HTMLExport.indexChunkSize + 2  // a labeled feature (every third one is)
        let readable = try await Chromium.dumpDOM(index + "#feature=\(shown)")
        #expect(readable.contains("data-view=\"feature\""))
        #expect(readable.contains("pets \(shown)"))
    }
}
