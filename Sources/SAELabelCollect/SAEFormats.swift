import Foundation
import SAELabelCore

/// Finds out which SAE format a `--sae` path holds and opens it (SPEC §10).
public enum SAEFormats {
    static let expected = "expected an SAELens folder (cfg.json + sae_weights.safetensors), a Gemma Scope params.npz "
        + "or the folder holding it, or a sparsify hookpoint folder (cfg.json + sae.safetensors)"

    static func open(path: String) throws(SAELabelError) -> SAEModel {
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        guard manager.fileExists(atPath: path, isDirectory: &isDirectory) else {
            // A sparsify run folder's hookpoint given by a wrong name: say which hookpoints exist.
            if let hint = missingPathHint(path) { throw .badInput(location: path, problem: hint) }
            throw .badInput(location: path, problem: "does not exist; \(expected)")
        }
        if !isDirectory.boolValue {
            if path.hasSuffix(".npz") { return try openGemmaScope(npz: path, name: path) }
            throw .badInput(location: path, problem: "is a file but not a .npz; \(expected)")
        }
        func has(_ name: String) -> Bool { manager.fileExists(atPath: (path as NSString).appendingPathComponent(name)) }
        if has("params.npz") { return try openGemmaScope(npz: (path as NSString).appendingPathComponent("params.npz"), name: path) }
        if has("sae_weights.safetensors") { return try openSAELens(directory: path) }
        if has("sae.safetensors") { return try openSparsify(directory: path) }
        let hookpoints = sparsifyHookpoints(in: path)
        if hookpoints.count == 1 {
            return try openSparsify(directory: (path as NSString).appendingPathComponent(hookpoints[0]))
        }
        if !hookpoints.isEmpty {
            throw .badInput(location: path, problem: "is a sparsify run folder with \(hookpoints.count) hookpoints (\(hookpoints.joined(separator: ", "))); choose one, e.g. --sae \((path as NSString).appendingPathComponent(hookpoints[0]))")
        }
        if has("cfg.json") {
            throw .badInput(location: (path as NSString).appendingPathComponent("sae_weights.safetensors"),
                            problem: "missing; an SAELens SAE folder holds cfg.json and sae_weights.safetensors")
        }
        throw .badInput(location: path, problem: "holds no SAE; \(expected)")
    }

    /// For a `--sae` / `[inputs] sae` path that does not exist: which sparsify hookpoints its folder holds, if any.
    public static func missingPathHint(_ path: String) -> String? {
        guard !FileManager.default.fileExists(atPath: path) else { return nil }
        let parent = (path as NSString).deletingLastPathComponent
        let hookpoints = sparsifyHookpoints(in: parent.isEmpty ? "." : parent)
        return hookpoints.isEmpty ? nil : "no such sparsify hookpoint; \(parent) holds: \(hookpoints.joined(separator: ", "))"
    }

    /// Subfolders holding a sparsify hookpoint (cfg.json + sae.safetensors), sorted.
    static func sparsifyHookpoints(in directory: String) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return names.filter { name in
            let folder = (directory as NSString).appendingPathComponent(name)
            return FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent("cfg.json"))
                && FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent("sae.safetensors"))
        }.sorted()
    }

    // MARK: cfg.json

    /// A cfg.json object; SAELens 6 nests some keys under `metadata`.
    struct ConfigFile {
        var path: String
        var root: [String: Any]

        init(path: String, format: String) throws(SAELabelError) {
            self.path = path
            guard let data = FileManager.default.contents(atPath: path) else {
                throw .badInput(location: path, problem: "cannot read cfg.json; \(format)")
            }
            guard let object = try? JSONSerialization.jsonObject(with: data), let cfg = object as? [String: Any] else {
                throw .badInput(location: path, problem: "not a JSON object")
            }
            root = cfg
        }

        func value(_ key: String) -> Any? {
            if let found = root[key], !(found is NSNull) { return found }
            if let metadata = root["metadata"] as? [String: Any], let found = metadata[key], !(found is NSNull) { return found }
            return nil
        }

        func integer(_ key: String) throws(SAELabelError) -> Int {
            guard let number = value(key) as? NSNumber, number.doubleValue == number.doubleValue.rounded(), number.intValue > 0 else {
                throw .badInput(location: "\(path): \(key)", problem: "missing or not a positive integer")
            }
            return number.intValue
        }

        func optionalInteger(_ key: String) throws(SAELabelError) -> Int? {
            guard value(key) != nil else { return nil }
            guard let number = value(key) as? NSNumber, number.doubleValue == number.doubleValue.rounded(), number.intValue >= 0 else {
                throw .badInput(location: "\(path): \(key)", problem: "not a non-negative integer")
            }
            return number.intValue
        }

        func bool(_ key: String, default fallback: Bool) throws(SAELabelError) -> Bool {
            guard let flag = value(key) else { return fallback }
            guard let number = flag as? NSNumber else { throw .badInput(location: "\(path): \(key)", problem: "not a boolean") }
            return number.boolValue
        }

        func string(_ key: String) -> String? { value(key) as? String }
    }

    // MARK: SAELens

    static func openSAELens(directory: String) throws(SAELabelError) -> SAEModel {
        let configPath = (directory as NSString).appendingPathComponent("cfg.json")
        let weightsPath = (directory as NSString).appendingPathComponent("sae_weights.safetensors")
        let cfg = try ConfigFile(path: configPath, format: "an SAELens SAE folder holds cfg.json and sae_weights.safetensors")
        let dIn = try cfg.integer("d_in")
        let dSAE = try cfg.integer("d_sae")
        let architectureName = cfg.string("architecture")?.lowercased()
        var architecture: SAEArchitecture
        var transcoder = false
        switch architectureName {
        case nil, "standard", "relu": architecture = .standard
        case "jumprelu", "batchtopk", "matryoshka_batchtopk": architecture = .jumprelu
        case "gated": architecture = .gated
        case "topk":
            let k = try cfg.integer("k")
            guard k <= dSAE else { throw .badInput(location: "\(configPath): k", problem: "k = \(k) exceeds d_sae = \(dSAE)") }
            architecture = .topk(k)
        // Transcoders read the MLP input and write the MLP output; their features are labeled from the encoder
        // side, which is a standard or JumpReLU encoder without b_dec subtraction (sae_lens/saes/transcoder.py).
        case "transcoder", "skip_transcoder": architecture = .standard; transcoder = true
        case "jumprelu_transcoder": architecture = .jumprelu; transcoder = true
        case let other?:
            throw .badInput(location: "\(configPath): architecture",
                            problem: "architecture '\(other)' is not supported; supported: standard, jumprelu, topk, batchtopk, matryoshka_batchtopk, gated, transcoder, skip_transcoder, jumprelu_transcoder")
        }
        let normalization = try saelensNormalization(cfg, directory: directory)
        // b_dec of a transcoder has the output's width and is never subtracted (SAELens refuses apply_b_dec_to_input).
        let apply = try transcoder ? false : cfg.bool("apply_b_dec_to_input", default: true)
        let rescale = try cfg.bool("rescale_acts_by_decoder_norm", default: false)
        let dOut = try transcoder ? (cfg.optionalInteger("d_out") ?? dIn) : dIn
        guard FileManager.default.fileExists(atPath: weightsPath) else {
            throw .badInput(location: weightsPath, problem: "missing; an SAELens SAE folder holds cfg.json and sae_weights.safetensors")
        }
        let weights = try SafetensorsFile(path: weightsPath)
        func check(_ name: String, _ shape: [Int]) throws(SAELabelError) -> SAETensor {
            let info = try weights.tensor(name, rank: shape.count, floating: true)
            guard info.shape == shape else {
                throw .badInput(location: weights.location(name),
                                problem: "shape \(info.shape) does not match cfg.json (expected \(shape) for d_in \(dIn), d_sae \(dSAE)\(transcoder ? ", d_out \(dOut)" : ""))")
            }
            return SAETensor(source: .safetensors(weights, info), shape: info.shape, location: weights.location(name))
        }
        let wEnc = try check("W_enc", [dIn, dSAE])
        let bDec = try check("b_dec", [dOut])
        let wDec = try weights.tensors["W_dec"] != nil ? check("W_dec", [dSAE, dOut]) : nil
        let bEnc = try check(architecture == .gated ? "b_gate" : "b_enc", [dSAE])
        let config = SAEConfig(dIn: dIn, dSAE: dSAE, architecture: architecture, applyBDecToInput: apply,
                               normalization: normalization, rescaleByDecoderNorm: rescale && architecture != .gated,
                               hookName: cfg.string("hook_name") ?? cfg.string("hook_point") ?? "",
                               modelName: cfg.string("model_name") ?? "", neuronpediaID: cfg.string("neuronpedia_id"))
        var model = SAEModel(config: config, format: .saelens, path: directory,
                             files: [(weightsPath, "sae_weights"), (configPath, "sae_cfg")],
                             encoder: wEnc, bEnc: bEnc, bDec: apply ? bDec : nil)
        if case .scale = normalization {
            model.files.append(((directory as NSString).appendingPathComponent("activation_scaler.json"), "sae_activation_scaler"))
        }
        switch architecture {
        case .jumprelu:
            if weights.tensors["threshold"] == nil, weights.tensors["log_threshold"] != nil {
                model.threshold = try check("log_threshold", [dSAE])
                model.thresholdIsLog = true
            } else if weights.tensors["threshold"] == nil, architectureName?.hasSuffix("batchtopk") == true, let info = weights.tensors["topk_threshold"] {
                // A BatchTopK training checkpoint: its one global threshold becomes every feature's JumpReLU threshold,
                // as SAELens does when saving it for inference (batchtopk_sae.py process_state_dict_for_saving_inference).
                guard info.elementCount == 1, info.dtype.isFloat || info.dtype == .f64 else {
                    throw .badInput(location: weights.location("topk_threshold"), problem: "expected one float, found \(info.dtype.rawValue) \(info.shape)")
                }
                model.threshold = SAETensor(source: .safetensors(weights, info), shape: info.shape, location: weights.location("topk_threshold"))
            } else {
                model.threshold = try check("threshold", [dSAE])
            }
        case .gated:
            model.rMag = try check("r_mag", [dSAE])
            model.bMag = try check("b_mag", [dSAE])
        case .topk where config.rescaleByDecoderNorm:
            guard let wDec else {
                throw .badInput(location: weights.location("W_dec"), problem: "missing; rescale_acts_by_decoder_norm needs the decoder's norms")
            }
            model.decoder = wDec
        default:
            break
        }
        if model.decoder == nil { model.decoder = wDec }  // a handle only: read for carry-over's decoder directions
        return model
    }

    static func saelensNormalization(_ cfg: ConfigFile, directory: String) throws(SAELabelError) -> InputNormalization {
        switch cfg.string("normalize_activations") {
        case nil, "none": return .none
        case "constant_norm_rescale": return .constantNormRescale
        case "layer_norm": return .layerNorm
        case "expected_average_only_in":
            // SAELens folds the factor into W_enc when it knows it (sae.py fold_activation_norm_scaling_factor);
            // a training checkpoint keeps it in activation_scaler.json (sae_lens/training/activation_scaler.py).
            let scalerPath = (directory as NSString).appendingPathComponent("activation_scaler.json")
            if let data = FileManager.default.contents(atPath: scalerPath),
               let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
               let factor = object["scaling_factor"] as? NSNumber, factor.doubleValue.isFinite, factor.doubleValue > 0 {
                return .scale(factor.floatValue)
            }
            throw .badInput(location: "\(cfg.path): normalize_activations",
                            problem: "'expected_average_only_in' needs the scaling factor from training: put activation_scaler.json ({\"scaling_factor\": S}) beside cfg.json, or fold S into W_enc and set normalize_activations to none")
        case let other?:
            throw .badInput(location: "\(cfg.path): normalize_activations",
                            problem: "'\(other)' is not supported; supported: none, expected_average_only_in, constant_norm_rescale, layer_norm")
        }
    }

    // MARK: Gemma Scope

    /// A Gemma Scope `params.npz`: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold; JumpReLU on
    /// x·W_enc + b_enc without b_dec subtraction (SAELens loading/pretrained_sae_loaders.py, gemma_2 loader; delphi
    /// sparse_coders/custom/gemmascope.py).
    static func openGemmaScope(npz: String, name: String) throws(SAELabelError) -> SAEModel {
        let archive = try NpzArchive(path: npz)
        func array(_ key: String) throws(SAELabelError) -> NpyHeader {
            guard let header = archive.arrays[key] else {
                throw .badInput(location: archive.location(key),
                                problem: "missing; a Gemma Scope params.npz holds W_enc, W_dec, b_enc, b_dec and threshold (this one holds: \(archive.arrays.keys.sorted().joined(separator: ", ")))")
            }
            guard header.dtype.isFloat || header.dtype == .f64 else {
                throw .badInput(location: archive.location(key), problem: "dtype \(header.dtype.rawValue) is not a float type")
            }
            return header
        }
        let wEnc = try array("W_enc")
        guard wEnc.shape.count == 2, wEnc.shape[0] > 0, wEnc.shape[1] > 0 else {
            throw .badInput(location: archive.location("W_enc"), problem: "shape \(wEnc.shape), expected [d_in, d_sae]")
        }
        let dIn = wEnc.shape[0], dSAE = wEnc.shape[1]
        func tensor(_ key: String, _ shape: [Int]) throws(SAELabelError) -> SAETensor {
            let header = try array(key)
            guard header.shape == shape else {
                throw .badInput(location: archive.location(key),
                                problem: "shape \(header.shape) does not match W_enc \(wEnc.shape) (expected \(shape))")
            }
            return SAETensor(source: .npz(archive, key), shape: shape, location: archive.location(key),
                             columnMajor: header.fortranOrder && shape.count == 2)
        }
        let encoder = try tensor("W_enc", [dIn, dSAE])
        let wDec = try tensor("W_dec", [dSAE, dIn])
        let bEnc = try tensor("b_enc", [dSAE])
        _ = try tensor("b_dec", [dIn])
        let threshold = try tensor("threshold", [dSAE])
        // Name the SAE by its place in the Gemma Scope tree (layer_L/width_W/average_l0_N) when the path shows it.
        let components = URL(fileURLWithPath: name).standardizedFileURL.pathComponents.filter { $0 != "params.npz" }
        let layerIndex = components.lastIndex { $0.hasPrefix("layer_") }
        let displayName = layerIndex.map { components[$0...].joined(separator: "/") } ?? (components.last ?? name)
        let config = SAEConfig(dIn: dIn, dSAE: dSAE, architecture: .jumprelu, applyBDecToInput: false,
                               hookName: layerIndex.map { components[$0] } ?? "", modelName: "", neuronpediaID: nil)
        var model = SAEModel(config: config, format: .gemmaScope, path: displayName, files: [(npz, "sae_weights")],
                             encoder: encoder, featureMajor: encoder.columnMajor, bEnc: bEnc)
        model.threshold = threshold
        model.decoder = wDec
        return model
    }

    // MARK: sparsify

    /// An EleutherAI sparsify hookpoint: cfg.json (d_in, k, num_latents or expansion_factor, activation, transcode)
    /// and sae.safetensors (encoder.weight [n, d_in], encoder.bias, W_dec, b_dec). Encode: relu((x − b_dec)·encoder.weightᵀ
    /// + encoder.bias), top-k; no b_dec subtraction when `transcode` (sparsify/sparse_coder.py `encode`,
    /// sparsify/fused_encoder.py).
    static func openSparsify(directory: String) throws(SAELabelError) -> SAEModel {
        let configPath = (directory as NSString).appendingPathComponent("cfg.json")
        let weightsPath = (directory as NSString).appendingPathComponent("sae.safetensors")
        let cfg = try ConfigFile(path: configPath, format: "a sparsify hookpoint folder holds cfg.json and sae.safetensors")
        let dIn = try cfg.integer("d_in")
        let k = try cfg.integer("k")
        let transcode = try cfg.bool("transcode", default: false)
        let activation = cfg.string("activation") ?? "topk"
        guard activation == "topk" || activation == "groupmax" else {
            throw .badInput(location: "\(configPath): activation", problem: "'\(activation)' is not supported; sparsify's activations are topk and groupmax")
        }
        let weights = try SafetensorsFile(path: weightsPath)
        let encoderInfo = try weights.tensor("encoder.weight", rank: 2, floating: true)
        let dSAE = encoderInfo.shape[0]
        let declared = try cfg.optionalInteger("num_latents") ?? 0
        let expansion = try cfg.optionalInteger("expansion_factor") ?? 0
        let expected = declared > 0 ? declared : dIn * expansion
        guard encoderInfo.shape[1] == dIn, expected == 0 || expected == dSAE else {
            throw .badInput(location: weights.location("encoder.weight"),
                            problem: "shape \(encoderInfo.shape) does not match cfg.json (expected [\(expected > 0 ? expected : dSAE), \(dIn)] from d_in, num_latents, expansion_factor)")
        }
        guard k <= dSAE else { throw .badInput(location: "\(configPath): k", problem: "k = \(k) exceeds the \(dSAE) latents") }
        guard activation != "groupmax" || dSAE % k == 0 else {
            throw .badInput(location: "\(configPath): k", problem: "groupmax needs the \(dSAE) latents to split into k = \(k) equal groups")
        }
        func check(_ name: String, _ shape: [Int]) throws(SAELabelError) -> SAETensor {
            let info = try weights.tensor(name, rank: shape.count, floating: true)
            guard info.shape == shape else {
                throw .badInput(location: weights.location(name), problem: "shape \(info.shape) does not match encoder.weight \(encoderInfo.shape) (expected \(shape))")
            }
            return SAETensor(source: .safetensors(weights, info), shape: shape, location: weights.location(name))
        }
        let bias = try check("encoder.bias", [dSAE])
        let bDec = try check("b_dec", [dIn])
        let wDec = try weights.tensors["W_dec"] != nil ? check("W_dec", [dSAE, dIn]) : nil
        let hook = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
        let config = SAEConfig(dIn: dIn, dSAE: dSAE, architecture: activation == "groupmax" ? .groupMax(k) : .topk(k), applyBDecToInput: !transcode,
                               hookName: hook, modelName: "", neuronpediaID: nil)
        let encoder = SAETensor(source: .safetensors(weights, encoderInfo), shape: encoderInfo.shape,
                                location: weights.location("encoder.weight"))
        var model = SAEModel(config: config, format: .sparsify, path: directory,
                             files: [(weightsPath, "sae_weights"), (configPath, "sae_cfg")],
                             encoder: encoder, featureMajor: true, bEnc: bias, bDec: transcode ? nil : bDec)
        model.decoder = wDec
        return model
    }
}
