import Foundation
import SAELabelCore

/// The score formulas of SPEC §6, on plain arrays so they can be checked by hand.
public enum ScoreMath {
    /// Pearson r. nil when the lengths differ, there are fewer than 2 values, or either side is
    /// constant (no variance: r is undefined; the simulation score then records 0 and the reason).
    public static func correlation(_ truth: [Double], _ predicted: [Double]) -> Double? {
        guard truth.count == predicted.count, truth.count >= 2 else { return nil }
        guard !isConstant(truth), !isConstant(predicted) else { return nil }
        let n = Double(truth.count)
        let meanT = truth.reduce(0, +) / n
        let meanP = predicted.reduce(0, +) / n
        var sxy = 0.0, sxx = 0.0, syy = 0.0
        for (t, p) in zip(truth, predicted) {
            let dt = t - meanT, dp = p - meanP
            sxy += dt * dp
            sxx += dt * dt
            syy += dp * dp
        }
        guard sxx > 0, syy > 0 else { return nil }
        return max(-1, min(1, sxy / (sxx * syy).squareRoot()))
    }

    /// `1 − mean((t−p)²) / mean(t²)`; nil when the lengths differ, the arrays are empty or every t is 0.
    public static func rsquared(_ truth: [Double], _ predicted: [Double]) -> Double? {
        guard truth.count == predicted.count, !truth.isEmpty else { return nil }
        let n = Double(truth.count)
        let meanSquaredTruth = truth.reduce(0) { $0 + $1 * $1 } / n
        guard meanSquaredTruth > 0 else { return nil }
        let meanSquaredError = zip(truth, predicted).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } / n
        return 1 - meanSquaredError / meanSquaredTruth
    }

    /// `1 − mean|t−p| / mean|t|`; nil when the lengths differ, the arrays are empty or every t is 0.
    public static func absoluteDevExplained(_ truth: [Double], _ predicted: [Double]) -> Double? {
        guard truth.count == predicted.count, !truth.isEmpty else { return nil }
        let n = Double(truth.count)
        let meanAbsTruth = truth.reduce(0) { $0 + abs($1) } / n
        guard meanAbsTruth > 0 else { return nil }
        let meanAbsError = zip(truth, predicted).reduce(0) { $0 + abs($1.0 - $1.1) } / n
        return 1 - meanAbsError / meanAbsTruth
    }

    /// Binary classification metrics; `true` = "activating". With P = TP+FN and N = TN+FP:
    /// - recall = TP/P, and 0 when P = 0; precision = TP/(TP+FP), and 0 when nothing was predicted positive;
    /// - F1 = 2·precision·recall/(precision+recall), and 0 when both are 0;
    /// - balanced accuracy = (TP/P + TN/N)/2 when both classes are present; when only one class is
    ///   present it is that class's rate alone (TP/P or TN/N); with no items at all it is 0.
    /// Only the common prefix is used if the lengths differ. `failedPrompts` is left 0 for the caller.
    public static func classification(truth: [Bool], predicted: [Bool]) -> ClassificationDetails {
        var tp = 0, tn = 0, fp = 0, fn = 0
        for (t, p) in zip(truth, predicted) {
            switch (t, p) {
            case (true, true): tp += 1
            case (false, false): tn += 1
            case (false, true): fp += 1
            case (true, false): fn += 1
            }
        }
        let positives = tp + fn, negatives = tn + fp
        let recall = positives > 0 ? Double(tp) / Double(positives) : 0
        let specificity = negatives > 0 ? Double(tn) / Double(negatives) : 0
        let precision = tp + fp > 0 ? Double(tp) / Double(tp + fp) : 0
        let f1 = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0
        let balanced: Double
        switch (positives > 0, negatives > 0) {
        case (true, true): balanced = (recall + specificity) / 2
        case (true, false): balanced = recall
        case (false, true): balanced = specificity
        case (false, false): balanced = 0
        }
        return ClassificationDetails(balancedAccuracy: balanced, f1: f1, precision: precision, recall: recall,
                                     truePositives: tp, trueNegatives: tn, falsePositives: fp, falseNegatives: fn,
                                     failedPrompts: 0)
    }

    private static func isConstant(_ values: [Double]) -> Bool {
        guard let first = values.first else { return true }
        return values.allSatisfy { $0 == first }
    }
}
