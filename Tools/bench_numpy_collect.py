#!/usr/bin/env python3
"""Straightforward numpy collect, the comparison point for `saelabel-bench collect`.

Reads the same SAELens SAE directory and dense activation file (safetensors, float32) and does what a
plain numpy implementation of saelabel's collect would: encode in chunks (x - b_dec) @ W_enc + b_enc,
ReLU, per-window (32 tokens) max, running top-15 windows per feature, firing counts. Prints one JSON
line with tokens_per_second (encode + selection; file loading of the SAE not included).
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}


def open_safetensors(path):
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        count = (end - begin) // np.dtype(dtype).itemsize
        tensors[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=(count,)).reshape(entry["shape"])
    return tensors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sae", required=True)
    parser.add_argument("--activations", required=True)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--chunk-sequences", type=int, default=16)
    args = parser.parse_args()

    weights = open_safetensors(os.path.join(args.sae, "sae_weights.safetensors"))
    w_enc = np.ascontiguousarray(weights["W_enc"], dtype=np.float32)
    b_enc = np.asarray(weights["b_enc"], dtype=np.float32)
    b_dec = np.asarray(weights["b_dec"], dtype=np.float32)
    data = open_safetensors(args.activations)
    activations, tokens = data["activations"], data["tokens"]
    n_seq, ctx, d_in = activations.shape
    d_sae = w_enc.shape[1]
    windows_per_seq = ctx // args.window

    top_values = np.full((args.top, d_sae), -np.inf, dtype=np.float32)
    top_windows = np.full((args.top, d_sae), -1, dtype=np.int64)
    firing = np.zeros(d_sae, dtype=np.int64)
    maxima = np.zeros(d_sae, dtype=np.float32)

    began = time.perf_counter()
    for first in range(0, n_seq, args.chunk_sequences):
        chunk = np.asarray(activations[first:first + args.chunk_sequences], dtype=np.float32)
        count = chunk.shape[0]
        x = chunk.reshape(-1, d_in) - b_dec
        acts = np.maximum(x @ w_enc + b_enc, 0)
        bos = (tokens[first:first + count].reshape(-1) == 0)
        acts[bos] = 0
        firing += (acts > 0).sum(axis=0)
        window_max = acts.reshape(count * windows_per_seq, args.window, d_sae).max(axis=1)
        maxima = np.maximum(maxima, window_max.max(axis=0))
        ids = np.arange(first * windows_per_seq, first * windows_per_seq + count * windows_per_seq)
        values = np.concatenate([top_values, window_max], axis=0)
        candidates = np.concatenate([top_windows, np.broadcast_to(ids[:, None], window_max.shape)], axis=0)
        keep = np.argpartition(-values, args.top - 1, axis=0)[:args.top]
        top_values = np.take_along_axis(values, keep, axis=0)
        top_windows = np.take_along_axis(candidates, keep, axis=0)
    elapsed = time.perf_counter() - began
    total = n_seq * ctx
    print(json.dumps({"tokens": total, "seconds": round(elapsed, 3), "tokens_per_second": total / elapsed,
                      "numpy": np.__version__, "firing_mean_per_token": float(firing.sum() / total),
                      "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}}))


if __name__ == "__main__":
    sys.exit(main())
