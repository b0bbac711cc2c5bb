#!/usr/bin/env python3
"""Reference (numpy) for saelabel's label carry-over matching between two SAE versions.

    python3 Tools/carry_over_match.py OLD NEW [--old-features SPEC] [--new-features SPEC] [--min-cosine 0.7]

OLD and NEW are SAELens folders (cfg.json + sae_weights.safetensors, read with the safetensors numpy API)
or .npz files holding a `W_dec` array (make_demo_dataset.py's cached full SAEs). SPEC picks the features
whose decoder directions take part, as saelabel's `features` does: `A..B` (B exclusive), a comma list
`1,5,9`, or `all` (the default).

Each `W_dec` row [d_sae, d_in] is scaled to unit length (float64); new feature n and old feature o match
when each is the other's most similar row by cosine (mutual best, so one-to-one) and the cosine is at least
--min-cosine. Prints one JSON object: `pairs` [{"new", "old", "cosine"}] sorted by new feature, and summary
figures (how many pairs, their cosines' min / median / max, the nearest-old cosine of every new feature).

With --windows W.json --activations A.safetensors (NEW a JumpReLU SAELens folder), also recomputes NEW's
activations on the windows listed in W.json ([{"feature", "sequence", "start", "length"}], tokens of the
`activations` tensor [sequences, positions, d_in]) and adds them as `window_activations`, in W.json's order:
what a collect of NEW over A must have stored for those windows.
"""
import argparse
import json
import os
import sys

import numpy as np


def decoder_rows(path):
    """W_dec as float64 [d_sae, d_in] from a SAELens folder or an .npz."""
    if os.path.isdir(path):
        from safetensors.numpy import load_file
        weights = load_file(os.path.join(path, "sae_weights.safetensors"))
        if "W_dec" not in weights:
            sys.exit(f"{path}: sae_weights.safetensors has no W_dec")
        return weights["W_dec"].astype(np.float64)
    with np.load(path, allow_pickle=False) as archive:
        if "W_dec" not in archive:
            sys.exit(f"{path}: no W_dec array")
        return archive["W_dec"].astype(np.float64)


def parse_features(spec, d_sae):
    spec = spec.strip()
    if spec == "all":
        return np.arange(d_sae)
    if ".." in spec:
        lower, upper = (int(part) for part in spec.split(".."))
        features = np.arange(lower, min(upper, d_sae))
    else:
        features = np.array(sorted({int(part) for part in spec.split(",")}), dtype=np.int64)
    if len(features) == 0 or features.min() < 0 or features.max() >= d_sae:
        sys.exit(f"features {spec!r} do not fit an SAE of {d_sae} features")
    return features


def unit(rows):
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def match(old_rows, new_rows, min_cosine):
    """(new slot, old slot, cosine) of every mutual-best pair at or above min_cosine, and each new row's
    best cosine against the old rows."""
    cosine = unit(new_rows) @ unit(old_rows).T
    old_for_new = cosine.argmax(1)
    new_for_old = cosine.argmax(0)
    best = cosine[np.arange(len(new_rows)), old_for_new]
    pairs = [(n, int(o), float(best[n])) for n, o in enumerate(old_for_new)
             if new_for_old[o] == n and best[n] >= min_cosine]
    return pairs, best


def jumprelu_windows(sae_dir, activations_path, windows):
    """Each window's activations of its feature: pre = (x - b_dec) @ W_enc[:, f] + b_enc[f], kept where it
    exceeds threshold[f], computed in float32 from the stored weights."""
    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(sae_dir, "cfg.json")))
    if cfg.get("architecture") != "jumprelu" or cfg.get("normalize_activations", "none") != "none":
        sys.exit(f"{sae_dir}: --windows handles jumprelu SAEs without activation normalization only")
    weights = {k: v.astype(np.float32) for k, v in load_file(os.path.join(sae_dir, "sae_weights.safetensors")).items()}
    acts = load_file(activations_path)["activations"]
    shift = weights["b_dec"] if cfg.get("apply_b_dec_to_input", True) else np.zeros_like(weights["b_dec"])
    result = []
    for w in windows:
        f, s, t, n = (int(w[k]) for k in ("feature", "sequence", "start", "length"))
        x = acts[s, t:t + n, :].astype(np.float32) - shift
        pre = x @ weights["W_enc"][:, f] + weights["b_enc"][f]
        result.append([float(v) if v > weights["threshold"][f] else 0.0 for v in pre])
    return result


def summary(values):
    if len(values) == 0:
        return None
    values = np.asarray(values)
    return {"min": round(float(values.min()), 6), "median": round(float(np.median(values)), 6),
            "max": round(float(values.max()), 6)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--old-features", default="all")
    parser.add_argument("--new-features", default="all")
    parser.add_argument("--min-cosine", type=float, default=0.7)
    parser.add_argument("--windows", help="JSON list of {feature, sequence, start, length} to recompute on NEW")
    parser.add_argument("--activations", help="the activations.safetensors the windows index into")
    args = parser.parse_args()
    if bool(args.windows) != bool(args.activations):
        sys.exit("--windows and --activations go together")

    old_all, new_all = decoder_rows(args.old), decoder_rows(args.new)
    if old_all.shape[1] != new_all.shape[1]:
        sys.exit(f"decoder widths differ: {old_all.shape[1]} (old) and {new_all.shape[1]} (new)")
    old_features = parse_features(args.old_features, len(old_all))
    new_features = parse_features(args.new_features, len(new_all))
    pairs, best = match(old_all[old_features], new_all[new_features], args.min_cosine)
    mutual_any, _ = match(old_all[old_features], new_all[new_features], -1.0)
    report = {
        "old": args.old, "new": args.new, "min_cosine": args.min_cosine,
        "old_features": len(old_features), "new_features": len(new_features),
        "matched": len(pairs),
        "mutual_best_any_cosine": len(mutual_any),
        "pair_cosine": summary([c for _, _, c in pairs]),
        "nearest_old_cosine": summary(best),
        "pairs": [{"new": int(new_features[n]), "old": int(old_features[o]), "cosine": c} for n, o, c in pairs],
    }
    if args.windows:
        report["window_activations"] = jumprelu_windows(args.new, args.activations, json.load(open(args.windows)))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
