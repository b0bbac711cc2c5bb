import Foundation
import SAELabelCore

/// A feature's score details with their numbers already printed, as the catalog and html show them.
struct PrintedDetails {
    var simulation: PrintedSimulation?
    var classification: [String: PrintedClassification] = [:]
}

/// `SimulationDetails` (score.details of the simulation scorer) with every number printed as the
/// Double it decodes to. Read by StoredJSON when the text is plain JSON of the expected shape; anything
/// else goes through JSONDecoder, so a detail that does not decode is absent either way.
struct PrintedSimulation {
    struct Window {
        var ordinal: Int
        /// A JSON array, or nil when the simulator failed on the window.
        var simulated: [UInt8]?
    }

    /// Printed numbers; nil is JSON null.
    var rsquared: [UInt8]?
    var absoluteDevExplained: [UInt8]?
    var failedWindows: Int
    var retriedWindows: Int
    var undefinedReason: String?
    var windows: [Window]

    static func print(_ value: Double) -> [UInt8] {
        var out = JSONBytes(scriptSafe: false, capacity: 24)
        out.double(value)
        return out.bytes
    }

    /// The JSONDecoder semantics of SimulationDetails on the fast path: required keys present with the
    /// right types, optional ones missing or null, unknown keys ignored; nil otherwise (then Foundation decides).
    private static func scan(_ details: String) -> PrintedSimulation? {
        var text = details
        return text.withUTF8 { source -> PrintedSimulation? in
            var scanner = StoredJSON.Scanner(source)
            var rsquared: [UInt8]?
            var absoluteDevExplained: [UInt8]?
            var failedWindows: Int?
            var retriedWindows: Int?
            var undefinedReason: String?
            var windows: [Window]?
            let ok = scanner.object { key, scanner in
                switch key {
                case "rsquared":
                    guard let value = scanner.optionalDouble() else { return false }
                    rsquared = value
                case "absoluteDevExplained":
                    guard let value = scanner.optionalDouble() else { return false }
                    absoluteDevExplained = value
                case "failedWindows":
                    failedWindows = scanner.integer()
                    return failedWindows != nil
                case "retriedWindows":
                    retriedWindows = scanner.integer()
                    return retriedWindows != nil
                case "undefinedReason":
                    guard let value = scanner.optionalString() else { return false }
                    undefinedReason = value
                case "windows":
                    var list: [Window] = []
                    guard scanner.array({ scanner in
                        guard let window = scanWindow(&scanner) else { return false }
                        list.append(window)
                        return true
                    }) else { return false }
                    windows = list
                default:
                    return scanner.skipValue()
                }
                return true
            }
            guard ok, scanner.endOfText(), let failedWindows, let retriedWindows, let windows else { return nil }
            return PrintedSimulation(rsquared: rsquared, absoluteDevExplained: absoluteDevExplained, failedWindows: failedWindows,
                                     retriedWindows: retriedWindows, undefinedReason: undefinedReason, windows: windows)
        }
    }

    private static func scanWindow(_ scanner: inout StoredJSON.Scanner) -> Window? {
        var ordinal: Int?
        var simulated: [UInt8]?
        let ok = scanner.object { key, scanner in
            switch key {
            case "heldoutOrdinal":
                ordinal = scanner.integer()
                return ordinal != nil
            case "simulated":
                if scanner.peek == UInt8(ascii: "n") { return scanner.literal("null") }
                var printed: [UInt8] = []
                guard scanner.numberArray(kind: .double, into: &printed) else { return false }
                simulated = printed
                return true
            case "error":
                return scanner.optionalString() != nil
            default:
                return scanner.skipValue()
            }
        }
        guard ok, let ordinal else { return nil }
        return Window(ordinal: ordinal, simulated: simulated)
    }
}

extension PrintedSimulation {
    init?(_ details: String) {
        if let fast = Self.scan(details) {
            self = fast
            return
        }
        guard let decoded = try? JSONDecoder().decode(SimulationDetails.self, from: Data(details.utf8)) else { return nil }
        rsquared = decoded.rsquared.map(Self.print)
        absoluteDevExplained = decoded.absoluteDevExplained.map(Self.print)
        failedWindows = decoded.failedWindows
        retriedWindows = decoded.retriedWindows
        undefinedReason = decoded.undefinedReason
        windows = decoded.windows.map { window in
            Window(ordinal: window.heldoutOrdinal, simulated: window.simulated.map { values in
                var out = JSONBytes(scriptSafe: false, capacity: values.count * 4 + 2)
                out.raw("[")
                for value in values { out.separator(); out.double(value) }
                out.raw("]")
                return out.bytes
            })
        }
    }
}

/// `ClassificationDetails` (detection, fuzzing) with its rates printed as Doubles; read like PrintedSimulation.
struct PrintedClassification {
    var balancedAccuracy: [UInt8]
    var f1: [UInt8]
    var precision: [UInt8]
    var recall: [UInt8]
    var truePositives: Int
    var trueNegatives: Int
    var falsePositives: Int
    var falseNegatives: Int
    var failedPrompts: Int

}

extension PrintedClassification {
    init?(_ details: String) {
        var text = details
        let fast = text.withUTF8 { source -> PrintedClassification? in
            var scanner = StoredJSON.Scanner(source)
            var balancedAccuracy: [UInt8]?, f1: [UInt8]?, precision: [UInt8]?, recall: [UInt8]?
            var truePositives: Int?, trueNegatives: Int?, falsePositives: Int?, falseNegatives: Int?, failedPrompts: Int?
            func read<Value>(_ value: Value?, into slot: inout Value?) -> Bool {
                slot = value
                return value != nil
            }
            let ok = scanner.object { key, scanner in
                switch key {
                case "balancedAccuracy": return read(scanner.printedDouble(), into: &balancedAccuracy)
                case "f1": return read(scanner.printedDouble(), into: &f1)
                case "precision": return read(scanner.printedDouble(), into: &precision)
                case "recall": return read(scanner.printedDouble(), into: &recall)
                case "truePositives": return read(scanner.integer(), into: &truePositives)
                case "trueNegatives": return read(scanner.integer(), into: &trueNegatives)
                case "falsePositives": return read(scanner.integer(), into: &falsePositives)
                case "falseNegatives": return read(scanner.integer(), into: &falseNegatives)
                case "failedPrompts": return read(scanner.integer(), into: &failedPrompts)
                default: return scanner.skipValue()
                }
            }
            guard ok, scanner.endOfText(), let balancedAccuracy, let f1, let precision, let recall, let truePositives,
                  let trueNegatives, let falsePositives, let falseNegatives, let failedPrompts else { return nil }
            return PrintedClassification(balancedAccuracy: balancedAccuracy, f1: f1, precision: precision, recall: recall,
                                         truePositives: truePositives, trueNegatives: trueNegatives, falsePositives: falsePositives,
                                         falseNegatives: falseNegatives, failedPrompts: failedPrompts)
        }
        if let fast {
            self = fast
            return
        }
        guard let decoded = try? JSONDecoder().decode(ClassificationDetails.self, from: Data(details.utf8)) else { return nil }
        self.init(balancedAccuracy: PrintedSimulation.print(decoded.balancedAccuracy), f1: PrintedSimulation.print(decoded.f1),
                  precision: PrintedSimulation.print(decoded.precision), recall: PrintedSimulation.print(decoded.recall),
                  truePositives: decoded.truePositives, trueNegatives: decoded.trueNegatives, falsePositives: decoded.falsePositives,
                  falseNegatives: decoded.falseNegatives, failedPrompts: decoded.failedPrompts)
    }
}

extension JSONBytes {
    /// A number printed earlier, or null.
    mutating func printed(_ value: [UInt8]?) {
        if let value { append(value) } else { null() }
    }
}
