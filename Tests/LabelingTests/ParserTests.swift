import Foundation
import LLMClient
import SAELabelCore
import SAELabelExplain
import SAELabelScore
import Testing

@Suite struct ExplanationParserTests {
    static let table: [(String, String?)] = [
        ("the token \"import\"", "the token \"import\""),
        ("the main thing this neuron does is find the word \"import\".", "the word \"import\""),
        ("The main thing this neuron does is find: dates in text", "dates in text"),
        ("Explanation: Python import statements", "Python import statements"),
        ("This neuron fires on references to cats.", "references to cats"),
        ("The feature mainly detects dates", "dates"),
        ("It responds to closing brackets", "closing brackets"),
        ("The detector fires on the path function to import a module.", "the path function to import a module"),
        ("The detector fires a special type of light called a laser.", "a special type of light called a laser"),
        ("\"closing parentheses\"", "closing parentheses"),
        ("“curly quoted phrase”.", "curly quoted phrase"),
        ("**Numbers in lists**", "Numbers in lists"),
        ("> **Explanation:** the letter e", "the letter e"),
        ("Sure! Here is the explanation:\nmonths of the year\nThese tokens are all months.", "months of the year"),
        ("Explanation:\n\nfunction definitions", "function definitions"),
        ("- Years and dates", "Years and dates"),
        ("1. Legal terminology", "Legal terminology"),
        ("```\ncode keywords\n```", "code keywords"),
        ("phrase endings", "phrase endings"),
        ("answers to questions", "answers to questions"),
        ("items in a list", "items in a list"),
        ("   \n  ", nil),
        ("", nil),
        ("...", nil),
        ("\"\"", nil),
        ("I'm sorry, I can't help with that.", nil),
        ("nothing in particular", nil),
        ("This neuron fires on", nil),
    ]

    @Test(arguments: table.indices)
    func parsesChattyAnswer(_ index: Int) {
        let (raw, expected) = Self.table[index]
        #expect(ExplanationParser.parse(raw) == expected, "input: \(raw.debugDescription)")
    }

    @Test func capsLength() throws {
        let long = Array(repeating: "word", count: 100).joined(separator: " ")
        let parsed = try #require(ExplanationParser.parse(long))
        #expect(parsed.count <= ExplanationParser.maxCharacters)
        #expect(parsed.hasSuffix("word"))
    }
}

@Suite struct AnswerParsingTests {
    @Test func simulatorAnswers() throws {
        let good = JSONSimulationScorer.parseAnswer(#"{"activations":[{"token":"a","activation":3},{"token":"b","activation":0}]}"#, expectedCount: 2)
        #expect(try good.get().values == [3, 0])
        // chatty wrapper, numeric string, out-of-range and non-numeric values → 0 and counted
        let wrapped = try JSONSimulationScorer.parseAnswer(
            "Here you go: {\"activations\":[{\"token\":\"a\",\"activation\":\"7\"},{\"token\":\"b\",\"activation\":12},{\"token\":\"c\",\"activation\":\"high\"},{\"token\":\"d\",\"activation\":-1},{\"token\":\"e\",\"activation\":2.5}]} done",
            expectedCount: 5).get()
        #expect(wrapped.values == [7, 0, 0, 0, 2.5])
        #expect(wrapped.badValues == 3)
        #expect(JSONSimulationScorer.parseAnswer(#"{"activations":[{"token":"a","activation":1}]}"#, expectedCount: 2)
            == .failure(.wrongLength(got: 1, expected: 2)))
        #expect(JSONSimulationScorer.parseAnswer("not json", expectedCount: 1) == .failure(.notJSON))
        #expect(JSONSimulationScorer.parseAnswer(#"{"values":[1]}"#, expectedCount: 1) == .failure(.noActivations))
        #expect(try JSONSimulationScorer.parseAnswer("[1, 2]", expectedCount: 2).get().values == [1, 2])
    }

    @Test func schemaFixesLengthAndTokens() throws {
        let schema = JSONSimulationScorer.schema(tokens: ["a", "\"b\"", "\n", "é"])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(schema.utf8)) as? [String: Any])
        let activations = try #require((object["properties"] as? [String: Any])?["activations"] as? [String: Any])
        #expect(activations["minItems"] as? Int == 4 && activations["maxItems"] as? Int == 4)
        let items = try #require(activations["prefixItems"] as? [[String: Any]])
        #expect(items.count == 4)
        func tokenSchema(_ index: Int) -> [String: Any]? {
            (items[index]["properties"] as? [String: Any])?["token"] as? [String: Any]
        }
        #expect(tokenSchema(0)?["enum"] as? [String] == ["a"])
        #expect(tokenSchema(3)?["enum"] as? [String] == ["é"])
        // Quotes and control characters are left free: llama.cpp's schema converter breaks on them.
        #expect(tokenSchema(1)?["enum"] == nil && tokenSchema(1)?["type"] as? String == "string")
        #expect(tokenSchema(2)?["enum"] == nil)
        let second = try #require(items[1]["properties"] as? [String: Any])
        #expect((second["activation"] as? [String: Any])?["enum"] as? [Int] == Array(0...10))

        // Without pinning (OpenAI strict mode has no prefixItems): one closed `items` schema, every property required.
        let open = JSONSimulationScorer.schema(tokens: ["a", "b", "c"], pinTokens: false)
        let openObject = try #require(try JSONSerialization.jsonObject(with: Data(open.utf8)) as? [String: Any])
        let array = try #require((openObject["properties"] as? [String: Any])?["activations"] as? [String: Any])
        #expect(array["prefixItems"] == nil && array["minItems"] as? Int == 3 && array["maxItems"] as? Int == 3)
        let entry = try #require(array["items"] as? [String: Any])
        #expect(entry["additionalProperties"] as? Bool == false)
        #expect(Set(entry["required"] as? [String] ?? []) == Set((entry["properties"] as? [String: Any] ?? [:]).keys))
        #expect(openObject["additionalProperties"] as? Bool == false && openObject["required"] as? [String] == ["activations"])
    }

    @Test func expectedValueOverDigits() {
        let top = [TopLogprob(token: "3", logprob: log(0.5)), TopLogprob(token: "7", logprob: log(0.25)),
                   TopLogprob(token: " the", logprob: log(0.25))]
        // (3·0.5 + 7·0.25) / 0.75 = 3.25 / 0.75
        #expect(abs((LogprobSimulationScorer.expectedValue(top) ?? -1) - 3.25 / 0.75) < 1e-12)
        #expect(LogprobSimulationScorer.expectedValue([TopLogprob(token: "x", logprob: 0)]) == nil)
        #expect(LogprobSimulationScorer.expectedValue([TopLogprob(token: "10", logprob: -0.1)]) == 10)
    }
}

@Suite struct ClassificationAnswerTests {
    @Test func parsesListsAndDigits() {
        #expect(DetectionScorer.parseAnswer("[1, 0, 1]", count: 3) == .success([true, false, true]))
        #expect(DetectionScorer.parseAnswer("Answer: [true, false, \"1\"] — done", count: 3) == .success([true, false, true]))
        #expect(DetectionScorer.parseAnswer("1 0 0 1", count: 4) == .success([true, false, false, true]))
        #expect(DetectionScorer.parseAnswer("[1, 0]", count: 3) == .failure(.wrongLength(got: 2, expected: 3)))
        #expect(DetectionScorer.parseAnswer("[1, 2, 0]", count: 3) == .failure(.notBinary))
        #expect(DetectionScorer.parseAnswer("no idea", count: 2) == .failure(.noList))
    }
}

@Suite struct SparseAnswerTests {
    @Test func unlistedTokensAreZeroAndBadIndicesAreUnusable() throws {
        let good = try SparseSimulationScorer.parseAnswer(#"{"activations":[{"index":2,"activation":7},{"index":0,"activation":"3"}]}"#, count: 4).get()
        #expect(good.values == [3, 0, 7, 0] && good.badValues == 0)
        // A bare list of [index, value] pairs, a repeated index (the larger value stays), bad values → 0 and counted.
        let loose = try SparseSimulationScorer.parseAnswer("Sure: [[1, 4], [1, 9], [3, 12], [2, \"high\"]]", count: 4).get()
        #expect(loose.values == [0, 9, 0, 0] && loose.badValues == 2)
        #expect(try SparseSimulationScorer.parseAnswer(#"{"activations":[]}"#, count: 3).get().values == [0, 0, 0])
        #expect(SparseSimulationScorer.parseAnswer(#"{"activations":[{"index":4,"activation":1}]}"#, count: 4)
            == .failure(.indexOutOfRange(index: 4, count: 4)))
        #expect(SparseSimulationScorer.parseAnswer(#"{"activations":[{"index":1.5,"activation":1}]}"#, count: 4).failureDescription != nil)
        #expect(SparseSimulationScorer.parseAnswer("no", count: 2) == .failure(.notJSON))
        #expect(SparseSimulationScorer.parseAnswer(#"{"active":[]}"#, count: 2) == .failure(.noActivations))
    }

    /// One schema for every server: indices fixed to the window, values 1–10, at most one entry per
    /// token, closed objects with every property required (OpenAI strict mode).
    @Test func schemaBoundsIndicesAndEntries() throws {
        let schema = try #require(try JSONSerialization.jsonObject(with: Data(SparseSimulationScorer.schema(count: 5).utf8)) as? [String: Any])
        let list = try #require((schema["properties"] as? [String: Any])?["activations"] as? [String: Any])
        #expect(list["maxItems"] as? Int == 5 && list["minItems"] == nil)
        let entry = try #require(list["items"] as? [String: Any])
        let properties = try #require(entry["properties"] as? [String: Any])
        #expect((properties["index"] as? [String: Any])?["enum"] as? [Int] == [0, 1, 2, 3, 4])
        #expect((properties["activation"] as? [String: Any])?["enum"] as? [Int] == Array(1...10))
        #expect(entry["additionalProperties"] as? Bool == false && Set(entry["required"] as? [String] ?? []) == ["index", "activation"])
        #expect(schema["additionalProperties"] as? Bool == false && schema["required"] as? [String] == ["activations"])
    }

    /// The numbered list the prompt shows, and a prompt whose first message is the same for every window
    /// (the part a server's prompt cache can reuse).
    @Test func promptSharesItsSystemTextAcrossFeatures() throws {
        #expect(SparseSimulationScorer.tokenList(["The", " \"cat\""]) == "0 The\n1  \"cat\"")
        let client = LLMClient(configuration: LLMClientConfiguration(baseURL: "http://127.0.0.1:9/v1"))
        defer { client.shutdown() }
        let scorer = try SparseSimulationScorer(client: client, model: "m", prompts: prompts, windowsPerRequest: 1)
        let a = scorer.messages(explanation: "cats", tokens: ["a", "b"]), b = scorer.messages(explanation: "dogs", tokens: ["c"])
        #expect(a.count == 2 && a[0].role == "system" && a[0].content == b[0].content)
        #expect(a[1].content.contains("cats") && a[1].content.contains("<tokens>\n0 a\n1 b\n</tokens>"))
    }
}
