import Foundation
import SAELabelCore

/// Activation functions saelabel can apply (SPEC §2).
enum SAEArchitecture: Sendable, Equatable {
    case standard
    case jumprelu
    case topk(Int)
}

/// The parts of cfg.json that collect needs, from either the SAELens 6 form (`metadata.hook_name`)
/// or the older flat form (`hook_point`, no `architecture` = standard).
struct SAEConfig: Sendable {
    var dIn: Int
    var dSAE: Int
    var architecture: SAEArchitecture
    var applyBDecToInput: Bool
    var hookName: String
    var modelName: String
    var neuronpediaID: String?

    static func load(path: String) throws(SAELabelError) -> SAEConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .badInput(location: path, problem: "cannot read cfg.json; an SAELens SAE directory holds cfg.json and sae_weights.safetensors")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data), let cfg = object as? [String: Any] else {
            throw .badInput(location: path, problem: "not a JSON object")
        }
        let metadata = cfg["metadata"] as? [String: Any] ?? [:]
        func value(_ key: String) -> Any? {
            if let found = cfg[key], !(found is NSNull) { return found }
            if let found = metadata[key], !(found is NSNull) { return found }
            return nil
        }
        func integer(_ key: String) throws(SAELabelError) -> Int {
            guard let number = value(key) as? NSNumber, number.intValue > 0 else {
                throw .badInput(location: "\(path): \(key)", problem: "missing or not a positive integer")
            }
            return number.intValue
        }
        let dIn = try integer("d_in")
        let dSAE = try integer("d_sae")
        let architecture: SAEArchitecture
        switch (value("architecture") as? String)?.lowercased() {
        case nil, "standard", "relu":
            architecture = .standard
        case "jumprelu":
            architecture = .jumprelu
        case "topk":
            let k = try integer("k")
            guard k <= dSAE else { throw .badInput(location: "\(path): k", problem: "k = \(k) exceeds d_sae = \(dSAE)") }
            architecture = .topk(k)
        case let other?:
            throw .badInput(location: "\(path): architecture",
                            problem: "architecture '\(other)' is not supported; supported: standard, jumprelu, topk")
        }
        if let normalize = value("normalize_activations") as? String, normalize != "none" {
            throw .badInput(location: "\(path): normalize_activations",
                            problem: "normalize_activations '\(normalize)' is not supported yet; only 'none' (or null) is")
        }
        let apply: Bool
        if let flag = value("apply_b_dec_to_input") {
            guard let number = flag as? NSNumber else {
                throw .badInput(location: "\(path): apply_b_dec_to_input", problem: "not a boolean")
            }
            apply = number.boolValue
        } else {
            apply = true  // SAELens' default
        }
        let hook = (value("hook_name") as? String) ?? (value("hook_point") as? String) ?? ""
        return SAEConfig(dIn: dIn, dSAE: dSAE, architecture: architecture, applyBDecToInput: apply,
                         hookName: hook, modelName: (value("model_name") as? String) ?? "",
                         neuronpediaID: value("neuronpedia_id") as? String)
    }
}

/// A loaded SAE encoder: cfg plus the encoder tensors, shape-checked against cfg (the decoder is checked, not loaded).
struct SAEModel: @unchecked Sendable {
    var config: SAEConfig
    var directory: String
    var weightsPath: String
    var configPath: String
    var weights: SafetensorsFile
    var wEnc: TensorInfo
    var bEnc: TensorInfo
    var bDec: TensorInfo
    var threshold: TensorInfo?
    /// The checkpoint stores `log_threshold` instead of `threshold`.
    var thresholdIsLog = false

    static func open(directory: String) throws(SAELabelError) -> SAEModel {
        let configPath = (directory as NSString).appendingPathComponent("cfg.json")
        let weightsPath = (directory as NSString).appendingPathComponent("sae_weights.safetensors")
        let config = try SAEConfig.load(path: configPath)
        guard FileManager.default.fileExists(atPath: weightsPath) else {
            throw .badInput(location: weightsPath, problem: "missing; an SAELens SAE directory holds cfg.json and sae_weights.safetensors")
        }
        let weights = try SafetensorsFile(path: weightsPath)
        func check(_ name: String, _ shape: [Int]) throws(SAELabelError) -> TensorInfo {
            let info = try weights.tensor(name, rank: shape.count, floating: true)
            guard info.shape == shape else {
                throw .badInput(location: weights.location(name),
                                problem: "shape \(info.shape) does not match cfg.json (expected \(shape) for d_in \(config.dIn), d_sae \(config.dSAE))")
            }
            return info
        }
        let wEnc = try check("W_enc", [config.dIn, config.dSAE])
        let bEnc = try check("b_enc", [config.dSAE])
        let bDec = try check("b_dec", [config.dIn])
        if weights.tensors["W_dec"] != nil { _ = try check("W_dec", [config.dSAE, config.dIn]) }
        var model = SAEModel(config: config, directory: directory, weightsPath: weightsPath, configPath: configPath,
                             weights: weights, wEnc: wEnc, bEnc: bEnc, bDec: bDec)
        if config.architecture == .jumprelu {
            if weights.tensors["threshold"] == nil, weights.tensors["log_threshold"] != nil {
                model.threshold = try check("log_threshold", [config.dSAE])
                model.thresholdIsLog = true
            } else {
                model.threshold = try check("threshold", [config.dSAE])
            }
        }
        return model
    }

    /// Encoder columns for `features`, gathered into a contiguous row-major `[features.count, d_in]` matrix
    /// (row r = W_enc[:, features[r]]), so one GEMM computes exactly the features that are needed.
    func gatherEncoder(features: [Int]) -> [Float] {
        let dIn = config.dIn, dSAE = config.dSAE
        var gathered = [Float](repeating: 0, count: features.count * dIn)
        var row = [Float](repeating: 0, count: dSAE)
        gathered.withUnsafeMutableBufferPointer { out in
            row.withUnsafeMutableBufferPointer { rowBuffer in
                for input in 0..<dIn {
                    weights.readFloats(wEnc, start: input * dSAE, count: dSAE, into: rowBuffer.baseAddress!)
                    for (r, feature) in features.enumerated() { out[r * dIn + input] = rowBuffer[feature] }
                }
            }
        }
        return gathered
    }

    func vector(_ info: TensorInfo, features: [Int]) -> [Float] {
        let all = weights.readFloats(info)
        return features.map { all[$0] }
    }

    func thresholds(features: [Int]) -> [Float] {
        guard let threshold else { return [] }
        let values = vector(threshold, features: features)
        return thresholdIsLog ? values.map { Foundation.exp($0) } : values
    }
}
