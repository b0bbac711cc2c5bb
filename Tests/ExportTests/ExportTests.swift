import Foundation
import TestSupport
import Testing
import SAELabelCore
import SAELabelStore
@testable import SAELabelExport

@Suite struct CatalogExportTests {
    static let contractKeys: Set<String> = ["sae", "hook", "feature", "status", "explanation", "explainer_model",
                                            "scores", "frequency", "max_activation", "examples", "carried_from"]

    @Test func catalogMatchesStoreFieldByField() throws {
        let fixture = try NastyStore()
        let store = fixture.store
        let out = fixture.directory.file("catalog.jsonl")
        let summary = try Exporter.export(store: store, format: .catalog, to: out, filter: .all)
        #expect(summary.features == 5)
        #expect(summary.files == [out])
        #expect(!FileManager.default.fileExists(atPath: out + ".tmp"))

        let text = try readText(out)
        #expect(text.hasSuffix("\n"))
        let lines = try jsonLines(out)
        #expect(lines.map { $0["feature"] as? Int } == [0, 1, 2, 3, 4])
        for object in lines {
            #expect(Self.contractKeys.isSubset(of: Set(object.keys)))
            let index = object["feature"] as! Int
            let record = try #require(try store.feature(index))
            #expect(object["sae"] as? String == "gpt2-small-res-jb <b>")
            #expect(object["hook"] as? String == "blocks.6.hook_resid_pre")
            #expect(object["status"] as? String == record.state.rawValue)
            #expect(object["frequency"] as? Double == record.statistics?.frequency)
            #expect((object["max_activation"] as? Double).map(Float.init) == record.statistics?.maxActivation)

            let explanation = try store.currentExplanation(feature: index)
            if let explanation {
                #expect(object["explanation"] as? String == explanation.text)
                #expect(object["explainer_model"] as? String == explanation.explainerModel)
                #expect(object["prompt_hash"] as? String == explanation.promptHash)
            } else {
                #expect(object["explanation"] is NSNull)
                #expect(object["explainer_model"] is NSNull)
            }
            let stored = try explanation.map { try store.scores(explanation: $0) } ?? []
            let scores = try #require(object["scores"] as? [String: Any])
            #expect(Set(scores.keys) == ["simulation", "detection", "fuzzing"])
            for scorer in ["simulation", "detection", "fuzzing"] {
                if let score = stored.first(where: { $0.scorer == scorer }) {
                    #expect(scores[scorer] as? Double == score.value)
                } else {
                    #expect(scores[scorer] is NSNull, "feature \(index) \(scorer)")
                }
            }

            let examples = try #require(object["examples"] as? [String: Any])
            let simulation = stored.first { $0.scorer == "simulation" }.flatMap {
                try? JSONDecoder().decode(SimulationDetails.self, from: Data($0.details.utf8))
            }
            for split in ExampleSplit.allCases {
                let windows = try #require(examples[split.rawValue] as? [[String: Any]])
                let expected = try store.examples(feature: index, split: split)
                #expect(windows.count == expected.count)
                for (window, example) in zip(windows, expected) {
                    #expect(window["tokens"] as? [String] == example.window.tokens)
                    #expect((window["activations"] as? [Double])?.map(Float.init) == example.window.activations)
                    #expect(window["kind"] as? String == example.window.kind.rawValue)
                    if split == .heldout {
                        let want = simulation?.windows.first { $0.heldoutOrdinal == example.ordinal }?.simulated
                        if let want { #expect(window["simulated"] as? [Double] == want) } else { #expect(window["simulated"] is NSNull) }
                    } else {
                        #expect(window["simulated"] == nil)
                    }
                }
            }
        }
        // Spot checks of the nasty values after the generic comparison.
        #expect(lines[0]["explanation"] as? String == Nasty.label0)
        let heldout0 = (lines[0]["examples"] as! [String: Any])["heldout"] as! [[String: Any]]
        #expect(heldout0[0]["simulated"] as? [Double] == NastyStore.simulated0)
        #expect(heldout0[1]["simulated"] is NSNull)
        #expect(((lines[0]["examples"] as! [String: Any])["explain"] as! [[String: Any]])[0]["tokens"] as? [String] == Nasty.tokens)
        #expect(lines[2]["status"] as? String == "dead")
        #expect(lines[4]["status"] as? String == "failed")
        #expect(lines[4]["failure_reason"] as? String == "LLM said \"no\" <3 times")
        let details = try #require(lines[0]["score_details"] as? [String: Any])
        #expect((details["detection"] as? [String: Any])?["f1"] as? Double == 0.75)
        #expect((details["simulation"] as? [String: Any])?["failed_windows"] as? Int == 1)
    }

    @Test func filtersByScoreStateAndSelection() throws {
        let fixture = try NastyStore()
        func features(_ filter: ExportFilter) throws -> [Int] {
            let out = fixture.directory.file("f-\(UUID().uuidString).jsonl")
            let summary = try Exporter.export(store: fixture.store, format: .catalog, to: out, filter: filter)
            let lines = try jsonLines(out).map { $0["feature"] as! Int }
            #expect(summary.features == lines.count)
            return lines
        }
        #expect(try features(ExportFilter(minScore: 0.5)) == [0])
        #expect(try features(ExportFilter(minScore: 0.2)) == [0, 3])
        #expect(try features(ExportFilter(minScore: -1)) == [0, 3])   // unscored features are excluded when set
        #expect(try features(ExportFilter(states: [.dead, .failed])) == [2, 4])
        #expect(try features(ExportFilter(states: [])) == [])
        #expect(try features(ExportFilter(selection: FeatureSelection(set: .range(1, 4)))) == [1, 2, 3])
        #expect(try features(ExportFilter(selection: FeatureSelection(set: .list([0, 4, 9])))) == [0, 4])
        #expect(try features(ExportFilter(selection: FeatureSelection(shard: .init(index: 1, count: 2)))) == [1, 3])
        #expect(try features(ExportFilter(minScore: 0.1, states: [.scored], selection: FeatureSelection(set: .range(1, 5)))) == [3])

        // The same filter reaches the other formats.
        let csv = fixture.directory.file("f.csv")
        #expect(try Exporter.export(store: fixture.store, format: .csv, to: csv, filter: ExportFilter(minScore: 0.5)).features == 1)
        #expect(parseCSV(try readText(csv)).count == 2)
    }

    @Test func createsMissingFoldersRefusesAPathUnderAFileAndLeavesNothing() throws {
        let fixture = try NastyStore()
        let out = fixture.directory.file("missing/dir/catalog.jsonl")
        #expect(try Exporter.export(store: fixture.store, format: .catalog, to: out, filter: .all).features == 5)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.directory.file("missing/dir")) == ["catalog.jsonl"])
        let file = try fixture.directory.write("plain.txt", "text")
        let before = try FileManager.default.contentsOfDirectory(atPath: fixture.directory.path).sorted()
        #expect(throws: SAELabelError.self) {
            try Exporter.export(store: fixture.store, format: .catalog, to: file + "/catalog.jsonl", filter: .all)
        }
        #expect(throws: SAELabelError.self) {
            try Exporter.export(store: fixture.store, format: .catalog, to: fixture.directory.path + "/x.jsonl",
                                filter: ExportFilter(minScore: .nan))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.directory.path).sorted() == before)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "text")
    }

    @Test func emptyStoreGivesEmptyButValidOutputs() throws {
        let directory = TempDirectory()
        let store = try JobStore(path: directory.file("empty.sqlite"))
        for format in ExportFormat.allCases {
            let out = directory.file("out-\(format.rawValue)")
            let summary = try Exporter.export(store: store, format: format, to: out, filter: .all)
            #expect(summary.features == 0)
        }
        #expect(try readText(directory.file("out-catalog")).isEmpty)
        #expect(parseCSV(try readText(directory.file("out-csv"))).count == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.file("out-neuronpedia")) == [".saelabel-export.json"])
        #expect(try readText(directory.file("out-html/data/meta.js")).contains("\"indexChunks\":0"))
    }

    @Test func largeCatalogStreamsEveryFeature() throws {
        let directory = TempDirectory()
        let store = try JobStore(path: directory.file("big.sqlite"))
        let count = 20_000
        let stats = FeatureStatistics(frequency: 0.001, maxActivation: 1, meanActivation: 0.5, activatingTokens: 1,
                                      activatingWindows: 1, histogram: [1])
        var batch: [CollectedFeature] = []
        for index in 0..<count {
            batch.append(CollectedFeature(index: index, state: .collected, statistics: stats,
                                          explain: [ActivationWindow(tokens: ["a", "\(index)"], activations: [0, Float(index)],
                                                                     kind: .top, sequence: index, start: 0)],
                                          heldout: []))
            if batch.count == 5_000 { try store.saveCollected(batch); batch.removeAll() }
        }
        let out = directory.file("big.jsonl")
        let summary = try Exporter.export(store: store, format: .catalog, to: out, filter: .all)
        #expect(summary.features == count)
        var lines = 0
        var outOfOrder: [Int] = []
        var last: [String: Any] = [:]
        for line in try readText(out).split(separator: "\n") {
            last = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            if last["feature"] as? Int != lines { outOfOrder.append(lines) }
            lines += 1
        }
        #expect(lines == count)
        #expect(outOfOrder.isEmpty)
        let explain = (last["examples"] as! [String: Any])["explain"] as! [[String: Any]]
        #expect(explain[0]["tokens"] as? [String] == ["a", "\(count - 1)"])
    }
}

@Suite struct CSVExportTests {
    @Test func csvRoundTripsThroughRFC4180() throws {
        let fixture = try NastyStore()
        let out = fixture.directory.file("features.csv")
        let summary = try Exporter.export(store: fixture.store, format: .csv, to: out, filter: .all)
        #expect(summary.features == 5)
        let text = try readText(out)
        #expect(text.hasSuffix("\r\n"))
        let rows = parseCSV(text)
        #expect(rows.first == ["feature", "status", "label", "simulation", "detection", "fuzzing",
                               "frequency", "max_activation", "explainer_model", "failure_reason", "sae", "hook",
                               "carried_from_feature", "carried_cosine", "carried_previous_score"])
        #expect(rows.count == 6)
        let job = try fixture.store.settings()
        for row in rows.dropFirst() {
            #expect(row.count == 15)
            #expect(row[12...] == ["", "", ""], "no label here was carried")
            let index = try #require(Int(row[0]))
            let record = try #require(try fixture.store.feature(index))
            #expect(row[1] == record.state.rawValue)
            let explanation = try fixture.store.currentExplanation(feature: index)
            #expect(row[2] == (explanation?.text ?? ""))
            #expect(row[8] == (explanation?.explainerModel ?? ""))
            let scores = try explanation.map { try fixture.store.scores(explanation: $0) } ?? []
            for (column, scorer) in [(3, "simulation"), (4, "detection"), (5, "fuzzing")] {
                #expect(Double(row[column]) == scores.first { $0.scorer == scorer }?.value, "feature \(index) \(scorer)")
            }
            #expect(Double(row[6]) == record.statistics?.frequency)
            #expect(Float(row[7]) == record.statistics?.maxActivation)
            #expect(row[9] == (record.state == .failed ? record.failureReason ?? "" : ""))
            #expect(row[10] == job[JobSettingKey.saeName] ?? "" && row[11] == job[JobSettingKey.hookName] ?? "")
        }
        #expect(rows[1][2] == Nasty.label0)
        #expect(rows[2][2] == Nasty.label1)
        #expect(rows[1][8] == "llama-3.1-8b \"instruct\"")
    }

    @Test func quotesOnlyWhenNeeded() {
        #expect(CSVExport.field("plain") == "plain")
        #expect(CSVExport.field("a,b") == "\"a,b\"")
        #expect(CSVExport.field("say \"hi\"") == "\"say \"\"hi\"\"\"")
        #expect(CSVExport.field("tab\tx") == "\"tab\tx\"")
        #expect(CSVExport.field("line\nx") == "\"line\nx\"")
        #expect(CSVExport.field("日本 🚀") == "日本 🚀")
    }
}

@Suite struct NeuronpediaExportTests {
    @Test func rowsCarryLabelsAndScores() throws {
        let fixture = try NastyStore()
        try fixture.store.setSetting(JobSettingKey.neuronpediaId, "6-res-jb")
        let out = fixture.directory.file("np")
        let summary = try Exporter.export(store: fixture.store, format: .neuronpedia, to: out, filter: .all)
        #expect(summary.features == 3)   // features 0, 1 and 3 have explanations
        #expect(summary.files == [out + "/batch-0.jsonl"])
        let rows = try jsonLines(out + "/batch-0.jsonl")
        #expect(rows.map { $0["index"] as? String } == ["0", "1", "3"])
        for row in rows {
            let index = Int(row["index"] as! String)!
            let explanation = try #require(try fixture.store.currentExplanation(feature: index))
            #expect(row["modelId"] as? String == "gpt2-small")
            #expect(row["layer"] as? String == "6-res-jb")
            #expect(row["description"] as? String == explanation.text)
            #expect(row["explanationModelName"] as? String == explanation.explainerModel)
            #expect(row["typeName"] as? String == "oai_token-act-pair")
            let scores = try #require(row["scores"] as? [[String: Any]])
            let stored = try fixture.store.scores(explanation: explanation)
            #expect(scores.count == stored.count)
            for (score, want) in zip(scores, stored) {
                #expect(score["value"] as? Double == want.value)
                #expect(score["explanationScoreModelName"] as? String == want.model)
                #expect(score["explanationScoreTypeName"] as? String == NeuronpediaExport.scoreTypeNames[want.scorer])
            }
        }
    }

    @Test func sourceIdFromSettingsOrHook() {
        var job = JobInfo([JobSettingKey.modelName: "gpt2-small", JobSettingKey.hookName: "blocks.6.hook_resid_pre"])
        #expect(NeuronpediaExport.source(job) == ("gpt2-small", "6-res"))
        job.neuronpediaId = "gemma-2-2b/20-gemmascope-res-16k"
        #expect(NeuronpediaExport.source(job) == ("gemma-2-2b", "20-gemmascope-res-16k"))
        #expect(NeuronpediaExport.layer(fromHook: "blocks.3.hook_mlp_out") == "3-mlp")
        #expect(NeuronpediaExport.layer(fromHook: "blocks.11.attn.hook_z") == "11-att")
        #expect(NeuronpediaExport.layer(fromHook: "embed") == nil)
    }

    @Test func batchesOf1024Rows() throws {
        let directory = TempDirectory()
        let store = try JobStore(path: directory.file("np.sqlite"))
        try store.setSetting(JobSettingKey.modelName, "m")
        try store.setSetting(JobSettingKey.hookName, "blocks.0.hook_resid_post")
        let stats = FeatureStatistics(frequency: 0.5, maxActivation: 1, meanActivation: 1, activatingTokens: 1,
                                      activatingWindows: 1, histogram: [])
        try store.saveCollected((0..<2_100).map {
            CollectedFeature(index: $0, state: .collected, statistics: stats, explain: [], heldout: [])
        })
        for index in 0..<2_100 {
            try store.saveExplanation(feature: index, text: "label \(index)", explainerModel: "e", promptHash: "p", rawResponse: nil)
        }
        let out = directory.file("np")
        // A folder that is not a saelabel export is refused and left as it was.
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        _ = FileManager.default.createFile(atPath: out + "/batch-7.jsonl", contents: Data("stale\n".utf8))
        #expect(throws: SAELabelError.self) { try Exporter.export(store: store, format: .neuronpedia, to: out, filter: .all) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: out) == ["batch-7.jsonl"])
        try FileManager.default.removeItem(atPath: out)
        let summary = try Exporter.export(store: store, format: .neuronpedia, to: out, filter: .all)
        #expect(summary.features == 2_100)
        #expect(summary.files.map { ($0 as NSString).lastPathComponent } == ["batch-0.jsonl", "batch-1.jsonl", "batch-2.jsonl"])
        let counts = try (0..<3).map { try jsonLines(out + "/batch-\($0).jsonl").count }
        #expect(counts == [1_024, 1_024, 52])
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).sorted()
                    == [".saelabel-export.json", "batch-0.jsonl", "batch-1.jsonl", "batch-2.jsonl"])
        let first = try jsonLines(out + "/batch-1.jsonl")[0]
        #expect(first["index"] as? String == "1024")
        #expect(first["layer"] as? String == "0-res")
        #expect(!FileManager.default.fileExists(atPath: out + ".tmp"))
        // A previous export of the same format is replaced whole.
        _ = try Exporter.export(store: store, format: .neuronpedia, to: out, filter: ExportFilter(selection: FeatureSelection(set: .range(0, 10))))
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).sorted() == [".saelabel-export.json", "batch-0.jsonl"])
        // The swap leaves neither the new export's temporary folder nor the old export beside it.
        let parent = (out as NSString).deletingLastPathComponent
        #expect(try FileManager.default.contentsOfDirectory(atPath: parent).filter { $0.contains(".saelabel-") }.isEmpty)
    }
}

@Suite struct JSONValueTests {
    @Test func escapesForScripts() {
        let value = JSONValue.string("</script><!-- \u{2028}\u{2029} & \"q\" \\ \n\t\u{1}")
        let plain = value.serialized()
        let safe = value.serialized(scriptSafe: true)
        #expect(plain.contains("</script>"))
        #expect(!safe.contains("<") && !safe.contains(">") && !safe.contains("&"))
        #expect(!safe.unicodeScalars.contains("\u{2028}") && !safe.unicodeScalars.contains("\u{2029}"))
        for text in [plain, safe] {
            let back = try? JSONSerialization.jsonObject(with: Data("[\(text)]".utf8)) as? [String]
            #expect(back == ["</script><!-- \u{2028}\u{2029} & \"q\" \\ \n\t\u{1}"])
        }
        #expect(JSONValue.double(.nan).serialized() == "null")
        #expect(JSONValue.float(.infinity).serialized() == "null")
        #expect(JSONValue.float(0.1).serialized() == "0.1")
    }
}
