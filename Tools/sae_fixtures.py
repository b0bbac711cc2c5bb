#!/usr/bin/env python3
"""Writes small SAEs in each on-disk format saelabel reads, one corpus of dense activations, and a numpy
reference of each format's own encode (what its owner's code computes), for the collect tests.

    python3 Tools/sae_fixtures.py OUT_DIR

OUT_DIR gets activations.safetensors (tokens int32 [n_seq, ctx], activations float32 [n_seq, ctx, d_in]),
tokenizer.json, the SAEs below, and reference.json: {sae_path: {"max": [per feature], "frequency": [per feature]}},
where frequency is the fraction of all tokens on which the feature is non-zero. Encodes follow:
- Gemma Scope params.npz: relu(x·W_enc + b_enc)·(pre > threshold), no b_dec subtraction (SAELens
  pretrained_sae_loaders.py gemma_2 loader; delphi sparse_coders/custom/gemmascope.py).
- sparsify: relu((x − b_dec)·encoder.weightᵀ + encoder.bias), keep the top k, or each group's maximum for
  groupmax (sparsify/fused_encoder.py).
- SAELens gated (sae_lens/saes/gated_sae.py), jumprelu_transcoder and skip_transcoder (transcoder.py, no b_dec
  on input),
  topk with rescale_acts_by_decoder_norm (topk_sae.py) after layer_norm (sae.py run_time_activation_norm_fn_in),
  standard with constant_norm_rescale in float16.
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

N_SEQ, CTX, D_IN, D_SAE, VOCAB = 6, 24, 16, 24, 40
rng = np.random.default_rng(12)


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(value, handle)


def stats(acts):
    acts = acts.reshape(-1, acts.shape[-1])
    return {"max": acts.max(axis=0).tolist(), "frequency": (acts > 0).mean(axis=0).tolist()}


def topk_mask(values, k):
    order = np.argsort(-values, axis=-1, kind="stable")[:, :k]
    mask = np.zeros_like(values, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    tokens = rng.integers(1, VOCAB, size=(N_SEQ, CTX), dtype=np.int32)
    x32 = (rng.normal(size=(N_SEQ, CTX, D_IN)) * 1.5 + 0.2).astype(np.float32)
    save_file({"tokens": tokens, "activations": x32}, os.path.join(out, "activations.safetensors"))
    vocab = {f"w{i}": i for i in range(1, VOCAB)}
    write_json(os.path.join(out, "tokenizer.json"), {
        "version": "1.0", "added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": True}],
        "model": {"type": "BPE", "vocab": vocab, "merges": []}, "decoder": {"type": "ByteLevel"}})
    x = x32.astype(np.float64).reshape(-1, D_IN)
    reference = {}

    def weights(*shape, scale=None):
        return (rng.normal(size=shape) * (scale or 1 / np.sqrt(shape[0]))).astype(np.float32)

    # Gemma Scope: stored (savez), deflated (savez_compressed) and Fortran-ordered W_enc.
    w_enc, w_dec = weights(D_IN, D_SAE), weights(D_SAE, D_IN)
    b_enc, b_dec = (rng.normal(size=D_SAE) * 0.3).astype(np.float32), (rng.normal(size=D_IN) * 0.5).astype(np.float32)
    threshold = rng.uniform(0.2, 0.8, size=D_SAE).astype(np.float32)
    pre = x @ w_enc + b_enc
    gemma = np.where(pre > threshold, np.maximum(pre, 0), 0)
    arrays = dict(W_enc=w_enc, W_dec=w_dec, b_enc=b_enc, b_dec=b_dec, threshold=threshold)
    for name, save, fortran in [("gemma-scope/layer_3/width_24/average_l0_5", np.savez, False),
                                ("gemma-compressed", np.savez_compressed, False), ("gemma-fortran", np.savez, True)]:
        os.makedirs(os.path.join(out, name), exist_ok=True)
        members = dict(arrays, W_enc=np.asfortranarray(w_enc) if fortran else w_enc)
        save(os.path.join(out, name, "params.npz"), **members)
        reference[name] = stats(gemma)

    # sparsify: a run folder with two hookpoints (the second is a transcoder: no b_dec subtraction).
    for hookpoint, transcode, k in [("layers.1", False, 4), ("layers.4.mlp", True, 3)]:
        encoder, bias = weights(D_SAE, D_IN, scale=0.3), (rng.normal(size=D_SAE) * 0.2).astype(np.float32)
        decoder, dec_bias = weights(D_SAE, D_IN), (rng.normal(size=D_IN) * 0.5).astype(np.float32)
        folder = os.path.join(out, "sparsify-run", hookpoint)
        os.makedirs(folder, exist_ok=True)
        save_file({"encoder.weight": encoder, "encoder.bias": bias, "W_dec": decoder, "b_dec": dec_bias},
                  os.path.join(folder, "sae.safetensors"))
        write_json(os.path.join(folder, "cfg.json"), {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
                                                      "num_latents": D_SAE, "k": k, "multi_topk": False,
                                                      "skip_connection": False, "transcode": transcode, "d_in": D_IN})
        pre = np.maximum((x if transcode else x - dec_bias) @ encoder.astype(np.float64).T + bias, 0)
        reference["sparsify-run/" + hookpoint] = stats(np.where(topk_mask(pre, k), pre, 0))

    # sparsify groupmax: 24 latents in k = 6 groups of 4, each keeping its largest (sparsify/fused_encoder.py).
    encoder, bias = weights(D_SAE, D_IN, scale=0.3), (rng.normal(size=D_SAE) * 0.2).astype(np.float32)
    dec_bias = (rng.normal(size=D_IN) * 0.5).astype(np.float32)
    folder = os.path.join(out, "sparsify-groupmax")
    os.makedirs(folder, exist_ok=True)
    save_file({"encoder.weight": encoder, "encoder.bias": bias, "W_dec": weights(D_SAE, D_IN), "b_dec": dec_bias},
              os.path.join(folder, "sae.safetensors"))
    write_json(os.path.join(folder, "cfg.json"), {"activation": "groupmax", "num_latents": D_SAE, "k": 6, "d_in": D_IN})
    pre = np.maximum((x - dec_bias) @ encoder.astype(np.float64).T + bias, 0).reshape(-1, 6, D_SAE // 6)
    kept = np.zeros_like(pre)
    np.put_along_axis(kept, pre.argmax(axis=-1)[..., None], pre.max(axis=-1)[..., None], axis=-1)
    reference["sparsify-groupmax"] = stats(kept.reshape(-1, D_SAE))

    def saelens(name, tensors, cfg):
        os.makedirs(os.path.join(out, name), exist_ok=True)
        save_file(tensors, os.path.join(out, name, "sae_weights.safetensors"))
        write_json(os.path.join(out, name, "cfg.json"), dict(cfg, d_in=D_IN, d_sae=D_SAE, metadata={
            "model_name": "fixture-model", "hook_name": "blocks.2.hook_resid_post"}))

    # SAELens gated.
    w_enc, b_dec = weights(D_IN, D_SAE), (rng.normal(size=D_IN) * 0.5).astype(np.float32)
    b_gate, r_mag = (rng.normal(size=D_SAE) * 0.3).astype(np.float32), (rng.normal(size=D_SAE) * 0.3).astype(np.float32)
    b_mag = (rng.normal(size=D_SAE) * 0.3).astype(np.float32)
    saelens("saelens-gated", {"W_enc": w_enc, "W_dec": weights(D_SAE, D_IN), "b_dec": b_dec, "b_gate": b_gate,
                              "r_mag": r_mag, "b_mag": b_mag},
            {"architecture": "gated", "apply_b_dec_to_input": True, "normalize_activations": "none", "dtype": "float32"})
    centered = x - b_dec
    gate = centered @ w_enc + b_gate > 0
    magnitude = np.maximum(centered @ (w_enc * np.exp(r_mag)) + b_mag, 0)
    reference["saelens-gated"] = stats(gate * magnitude)

    # SAELens JumpReLU transcoder with d_out != d_in.
    d_out = 12
    w_enc, b_enc = weights(D_IN, D_SAE), (rng.normal(size=D_SAE) * 0.3).astype(np.float32)
    threshold = rng.uniform(0.1, 0.5, size=D_SAE).astype(np.float32)
    saelens("saelens-transcoder", {"W_enc": w_enc, "b_enc": b_enc, "threshold": threshold,
                                   "W_dec": weights(D_SAE, d_out), "b_dec": (rng.normal(size=d_out)).astype(np.float32)},
            {"architecture": "jumprelu_transcoder", "d_out": d_out, "apply_b_dec_to_input": False,
             "normalize_activations": "none", "dtype": "float32"})
    pre = x @ w_enc + b_enc
    reference["saelens-transcoder"] = stats(np.where(pre > threshold, np.maximum(pre, 0), 0))

    # SAELens skip_transcoder: a ReLU encoder; W_skip only adds to the output, never to the features.
    w_enc, b_enc = weights(D_IN, D_SAE), (rng.normal(size=D_SAE) * 0.3).astype(np.float32)
    saelens("saelens-skip-transcoder", {"W_enc": w_enc, "b_enc": b_enc, "W_dec": weights(D_SAE, d_out),
                                        "b_dec": (rng.normal(size=d_out)).astype(np.float32), "W_skip": weights(d_out, D_IN)},
            {"architecture": "skip_transcoder", "d_out": d_out, "apply_b_dec_to_input": False,
             "normalize_activations": "none", "dtype": "float32"})
    reference["saelens-skip-transcoder"] = stats(np.maximum(x @ w_enc + b_enc, 0))

    # SAELens BatchTopK training checkpoint: one global float64 topk_threshold (batchtopk_sae.py).
    w_enc, b_enc = weights(D_IN, D_SAE), (rng.normal(size=D_SAE) * 0.3).astype(np.float32)
    b_dec = (rng.normal(size=D_IN) * 0.2).astype(np.float32)
    saelens("saelens-batchtopk", {"W_enc": w_enc, "b_enc": b_enc, "W_dec": weights(D_SAE, D_IN), "b_dec": b_dec,
                                  "topk_threshold": np.array(0.35, dtype=np.float64)},
            {"architecture": "batchtopk", "k": 4, "apply_b_dec_to_input": True, "normalize_activations": "none", "dtype": "float32"})
    pre = (x - b_dec) @ w_enc + b_enc
    reference["saelens-batchtopk"] = stats(np.where(pre > 0.35, np.maximum(pre, 0), 0))

    # SAELens topk with rescale_acts_by_decoder_norm, on layer-normed input.
    w_enc, w_dec = weights(D_IN, D_SAE), weights(D_SAE, D_IN, scale=0.6)
    b_enc, b_dec = (rng.normal(size=D_SAE) * 0.3).astype(np.float32), (rng.normal(size=D_IN) * 0.2).astype(np.float32)
    saelens("saelens-topk-layernorm", {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec},
            {"architecture": "topk", "k": 5, "rescale_acts_by_decoder_norm": True, "apply_b_dec_to_input": True,
             "normalize_activations": "layer_norm", "dtype": "float32"})
    normed = x - x.mean(axis=-1, keepdims=True)
    normed = normed / (normed.std(axis=-1, ddof=1, keepdims=True) + 1e-5)
    pre = ((normed - b_dec) @ w_enc + b_enc) * np.linalg.norm(w_dec.astype(np.float64), axis=-1)
    reference["saelens-topk-layernorm"] = stats(np.where(topk_mask(pre, 5), np.maximum(pre, 0), 0))

    # SAELens standard in float16 with constant_norm_rescale and the scaling factor of expected_average_only_in.
    w_enc = weights(D_IN, D_SAE).astype(np.float16)
    b_enc, b_dec = (rng.normal(size=D_SAE) * 0.3).astype(np.float16), (rng.normal(size=D_IN) * 0.2).astype(np.float16)
    tensors = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": weights(D_SAE, D_IN).astype(np.float16), "b_dec": b_dec}
    saelens("saelens-constnorm-f16", tensors, {"architecture": "standard", "apply_b_dec_to_input": True,
                                               "normalize_activations": "constant_norm_rescale", "dtype": "float16"})
    scaled = x * np.sqrt(D_IN) / np.linalg.norm(x, axis=-1, keepdims=True)
    reference["saelens-constnorm-f16"] = stats(np.maximum((scaled - b_dec.astype(np.float64)) @ w_enc.astype(np.float64) + b_enc, 0))
    saelens("saelens-expected-average", tensors, {"architecture": "standard", "apply_b_dec_to_input": True,
                                                  "normalize_activations": "expected_average_only_in", "dtype": "float16"})
    write_json(os.path.join(out, "saelens-expected-average", "activation_scaler.json"), {"scaling_factor": 0.75})
    reference["saelens-expected-average"] = stats(np.maximum((x * 0.75 - b_dec.astype(np.float64)) @ w_enc.astype(np.float64) + b_enc, 0))

    write_json(os.path.join(out, "reference.json"), reference)


if __name__ == "__main__":
    main()
