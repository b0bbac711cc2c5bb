#!/usr/bin/env python3
"""Writes a known "next version" of a SAELens SAE, for the label carry-over ground-truth test.

    python3 Tools/sae_version_fixture.py OLD_SAE_DIR OUT_DIR [--features N] [--replace R] [--seed S]

From the first N features of OLD_SAE_DIR (a SAELens folder: cfg.json + sae_weights.safetensors), the new SAE
keeps N - R of them, perturbed (W_enc column and W_dec row each get Gaussian noise of 10-40 % of their norm,
as a retrain moves a surviving feature) and shuffled to new indices; R old features are dropped and their
slots go to replaced features with random encoder and decoder directions. OUT_DIR/truth.json says, for each
new index, the old index it came from (null for a replaced feature).
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

ap = argparse.ArgumentParser()
ap.add_argument("old")
ap.add_argument("out")
ap.add_argument("--features", type=int, default=64)
ap.add_argument("--replace", type=int, default=12)
ap.add_argument("--seed", type=int, default=15)
args = ap.parse_args()
rng = np.random.default_rng(args.seed)

cfg = json.load(open(os.path.join(args.old, "cfg.json")))
w = {k: v.astype(np.float32) for k, v in load_file(os.path.join(args.old, "sae_weights.safetensors")).items()}
n, r = args.features, args.replace
kept = np.sort(rng.choice(n, n - r, replace=False))
order = rng.permutation(n)            # new index -> slot: slots < n - r are kept features, the rest replaced
W_enc = np.zeros((w["W_enc"].shape[0], n), np.float32)
W_dec = np.zeros((n, w["W_dec"].shape[1]), np.float32)
b_enc = np.zeros(n, np.float32)
threshold = np.zeros(n, np.float32)
truth = []
for new, slot in enumerate(order):
    if slot < n - r:
        old = int(kept[slot])
        scale = rng.uniform(0.1, 0.4)
        enc, dec = w["W_enc"][:, old], w["W_dec"][old]
        W_enc[:, new] = enc + rng.standard_normal(enc.shape) * scale * np.linalg.norm(enc) / np.sqrt(enc.size)
        W_dec[new] = dec + rng.standard_normal(dec.shape) * scale * np.linalg.norm(dec) / np.sqrt(dec.size)
        b_enc[new], threshold[new] = w["b_enc"][old], w["threshold"][old]
        truth.append(old)
    else:
        donor = int(rng.integers(n))  # keeps a realistic encoder norm, bias and threshold, not the direction
        enc = rng.standard_normal(W_enc.shape[0]).astype(np.float32)
        W_enc[:, new] = enc / np.linalg.norm(enc) * np.linalg.norm(w["W_enc"][:, donor])
        dec = rng.standard_normal(W_dec.shape[1]).astype(np.float32)
        W_dec[new] = dec / np.linalg.norm(dec) * np.linalg.norm(w["W_dec"][donor])
        b_enc[new], threshold[new] = w["b_enc"][donor], w["threshold"][donor]
        truth.append(None)

os.makedirs(args.out, exist_ok=True)
dtype = np.float16 if cfg.get("dtype") == "float16" else np.float32
save_file({"W_enc": W_enc.astype(dtype), "W_dec": W_dec.astype(dtype), "b_enc": b_enc.astype(dtype),
           "b_dec": w["b_dec"].astype(dtype), "threshold": threshold.astype(dtype)},
          os.path.join(args.out, "sae_weights.safetensors"))
cfg["d_sae"] = n
json.dump(cfg, open(os.path.join(args.out, "cfg.json"), "w"), indent=2)
json.dump({"old_index": truth}, open(os.path.join(args.out, "truth.json"), "w"))
