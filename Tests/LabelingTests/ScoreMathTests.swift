import Foundation
import SAELabelCore
import SAELabelScore
import Testing

@Suite struct ScoreMathTests {
    private func close(_ a: Double?, _ b: Double, _ tolerance: Double = 1e-12) -> Bool {
        guard let a else { return false }
        return abs(a - b) <= tolerance
    }

    @Test func correlationHandCases() {
        #expect(close(ScoreMath.correlation([1, 2, 3], [1, 2, 3]), 1))
        #expect(close(ScoreMath.correlation([1, 2, 3], [3, 2, 1]), -1))
        // means 2.5/2.5; Σdxdy = 2.25 − 0.25 − 0.25 + 2.25 = 4; Σdx² = Σdy² = 5 → 0.8
        #expect(close(ScoreMath.correlation([1, 2, 3, 4], [1, 3, 2, 4]), 0.8))
        // scale and shift invariant
        #expect(close(ScoreMath.correlation([0, 0.5, 1, 1.5], [10, 30, 20, 40]), 0.8))
    }

    @Test func correlationUndefinedCases() {
        #expect(ScoreMath.correlation([1, 1, 1], [1, 2, 3]) == nil)       // truth constant
        #expect(ScoreMath.correlation([1, 2, 3], [0, 0, 0]) == nil)       // prediction constant (all zeros)
        #expect(ScoreMath.correlation([0, 0, 0], [0, 0, 0]) == nil)       // all zero
        #expect(ScoreMath.correlation([0.1, 0.1, 0.1], [1, 2, 3]) == nil) // constant, inexact in binary
        #expect(ScoreMath.correlation([1], [1]) == nil)
        #expect(ScoreMath.correlation([], []) == nil)
        #expect(ScoreMath.correlation([1, 2], [1, 2, 3]) == nil)
    }

    @Test func rsquaredAndAbsoluteDeviation() {
        // t = [0,2,4], p = [0,1,4]: mean((t−p)²) = 1/3, mean(t²) = 20/3 → 1 − 1/20 = 0.95
        #expect(close(ScoreMath.rsquared([0, 2, 4], [0, 1, 4]), 0.95))
        // mean|t−p| = 1/3, mean|t| = 2 → 1 − 1/6
        #expect(close(ScoreMath.absoluteDevExplained([0, 2, 4], [0, 1, 4]), 1 - 1.0 / 6))
        // predicting all zeros explains nothing
        #expect(close(ScoreMath.rsquared([0, 2, 4], [0, 0, 0]), 0))
        #expect(close(ScoreMath.absoluteDevExplained([0, 2, 4], [0, 0, 0]), 0))
        // perfect
        #expect(close(ScoreMath.rsquared([1, 2], [1, 2]), 1))
        // over-prediction goes negative: t = [1,1], p = [3,3] → 1 − 4/1 = −3; 1 − 2/1 = −1
        #expect(close(ScoreMath.rsquared([1, 1], [3, 3]), -3))
        #expect(close(ScoreMath.absoluteDevExplained([1, 1], [3, 3]), -1))
        // undefined: all-zero truth, empty, length mismatch
        #expect(ScoreMath.rsquared([0, 0], [1, 2]) == nil)
        #expect(ScoreMath.absoluteDevExplained([0, 0], [1, 2]) == nil)
        #expect(ScoreMath.rsquared([], []) == nil)
        #expect(ScoreMath.absoluteDevExplained([1], [1, 2]) == nil)
    }

    @Test func classificationHandCase() {
        // TP = 2, FN = 1, FP = 1, TN = 1
        let d = ScoreMath.classification(truth: [true, true, true, false, false],
                                         predicted: [true, false, true, true, false])
        #expect(d.truePositives == 2 && d.falseNegatives == 1 && d.falsePositives == 1 && d.trueNegatives == 1)
        #expect(close(d.recall, 2.0 / 3))
        #expect(close(d.precision, 2.0 / 3))
        #expect(close(d.f1, 2.0 / 3))
        #expect(close(d.balancedAccuracy, (2.0 / 3 + 1.0 / 2) / 2))
        #expect(d.failedPrompts == 0)
    }

    @Test func classificationZeroCases() {
        // Nothing predicted positive: precision 0/0 → 0, F1 → 0; balanced = (0 + 1)/2
        let none = ScoreMath.classification(truth: [true, false], predicted: [false, false])
        #expect(none.precision == 0 && none.recall == 0 && none.f1 == 0)
        #expect(none.balancedAccuracy == 0.5)
        // Only negatives present: balanced accuracy is TN/N alone
        let negatives = ScoreMath.classification(truth: [false, false], predicted: [false, true])
        #expect(negatives.balancedAccuracy == 0.5 && negatives.recall == 0)
        // Only positives present: TP/P alone
        let positives = ScoreMath.classification(truth: [true, true, true, true], predicted: [true, true, true, false])
        #expect(positives.balancedAccuracy == 0.75 && positives.precision == 1)
        // Perfect
        let perfect = ScoreMath.classification(truth: [true, false], predicted: [true, false])
        #expect(perfect.balancedAccuracy == 1 && perfect.f1 == 1)
        // Empty
        let empty = ScoreMath.classification(truth: [], predicted: [])
        #expect(empty.balancedAccuracy == 0 && empty.f1 == 0 && empty.precision == 0 && empty.recall == 0)
    }
}
