#!/usr/bin/env python3
"""Builds one small tokenizer.json of each kind a decoder LM ships, with the Hugging Face `tokenizers` library,
and writes what `tokenizers` itself decodes for many windows of real multilingual text.

    python3 Tools/tokenizer_fixtures.py OUT_DIR

For each kind, OUT_DIR/<kind>/tokenizer.json and OUT_DIR/<kind>/cases.json:
{"windows": [[id, ...], ...], "decoded": ["...", ...]} where decoded[i] is
tokenizer.decode(windows[i], skip_special_tokens=False). The tokenizers are trained here on the text below
(no downloads), with small vocabularies so that byte fallback and unknown pieces really occur.
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

TEXT = """The quick brown fox jumps over the lazy dog. Voilà, naïve café façade — déjà vu!
Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. Ça coûte 12,50 €.
我能吞下玻璃而不伤身体。中文分词很有趣，日本語のテキストも混ざっています。한국어 문장도 있습니다.
Съешь же ещё этих мягких французских булок, да выпей чаю. مرحبا بالعالم. שלום עולם.
Emoji: 😀 🎉 👩‍💻 👨‍👩‍👧‍👦 🇫🇷 🇯🇵 ✅ ❤️ 🤖🦀 — and math: ∑ x² ≤ ∞, α β γ, √2 ≈ 1.414.
def tokenize(text):
\tfor line in text.split("\\n"):
\t\tif not line.strip():  # skip blanks
\t\t\tcontinue
\t\tyield line.rstrip()  \t trailing\ttabs
struct Point { let x: Int; let y: Int }  // Swift: «quotes» and “curly” ‘ones’
   three leading spaces,  two  inner  spaces, and a line ending in spaces   
Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. ภาษาไทย ทดสอบ. हिन्दी परीक्षण।
"""

# Training text: the test text without its rarest scripts, so some characters fall back to bytes or <unk>.
TRAIN = [line for line in TEXT.splitlines() if not any(ch in line for ch in "ภहΕש")] * 20


def byte_tokens():
    return [f"<0x{byte:02X}>" for byte in range(256)]


def train_bpe_pieces(vocab_size, limit_alphabet, prepend_scheme="always"):
    """A SentencePiece-like BPE vocabulary (▁word pieces) trained on TRAIN."""
    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, limit_alphabet=limit_alphabet, show_progress=False)
    trainer_tokenizer.train_from_iterator(TRAIN, trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    pieces = sorted(model["vocab"].items(), key=lambda item: item[1])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return [piece for piece, _ in pieces], merges


def sentencepiece_bpe(specials, normalizer=None, pre_tokenizer=None, decoder=None):
    """BPE with byte fallback laid out as Llama/Mistral/Gemma do: specials, the 256 byte tokens, then pieces."""
    pieces, merges = train_bpe_pieces(400, 80)
    vocab = {}
    for token in specials + byte_tokens() + pieces:
        vocab.setdefault(token, len(vocab))
    model = models.BPE(vocab=vocab, merges=merges, unk_token=specials[0], byte_fallback=True, fuse_unk=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    tokenizer.add_special_tokens(specials)
    return tokenizer


def byte_level_bpe():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TRAIN, trainer)
    return tokenizer


def llama2():
    return sentencepiece_bpe(
        ["<unk>", "<s>", "</s>"],
        normalizer=normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]),
        decoder=decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)]))


def gemma():
    return sentencepiece_bpe(
        ["<unk>", "<pad>", "<eos>", "<bos>"],
        normalizer=normalizers.Replace(" ", "▁"),
        decoder=decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]))


def metaspace_bpe():
    return sentencepiece_bpe(
        ["<unk>", "<s>", "</s>"],
        pre_tokenizer=pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        decoder=decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]))


def unigram():
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tokenizer.train_from_iterator(TRAIN, trainer)
    return tokenizer


def unigram_byte_fallback():
    base = unigram()
    vocab = json.loads(base.to_str())["model"]["vocab"]
    specials = vocab[:3]
    pieces = specials + [[token, 0.0] for token in byte_tokens()] + vocab[3:]
    model = models.Unigram([tuple(piece) for piece in pieces], unk_id=2, byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return tokenizer


def wordpiece():
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[UNK]", "[CLS]", "[SEP]"], show_progress=False)
    tokenizer.train_from_iterator(TRAIN, trainer)
    return tokenizer


KINDS = {
    "byte_level_bpe": (byte_level_bpe, "<|endoftext|>"),
    "llama2_bpe_byte_fallback": (llama2, "<s>"),
    "gemma_bpe_byte_fallback": (gemma, "<bos>"),
    "metaspace_bpe": (metaspace_bpe, "<s>"),
    "unigram": (unigram, "</s>"),
    "unigram_byte_fallback": (unigram_byte_fallback, "</s>"),
    "wordpiece": (wordpiece, "[CLS]"),
}


def main():
    out = sys.argv[1]
    for kind, (build, separator) in KINDS.items():
        tokenizer = build()
        folder = os.path.join(out, kind)
        os.makedirs(folder, exist_ok=True)
        tokenizer.save(os.path.join(folder, "tokenizer.json"))
        tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        separator_id = tokenizer.token_to_id(separator)
        ids = []
        for line in TEXT.splitlines(keepends=True):
            ids.append(separator_id)
            ids.extend(tokenizer.encode(line, add_special_tokens=False).ids)
        windows = [ids[start:start + length] for start in range(len(ids)) for length in (1, 2, 3, 4, 7, 16, 32)
                   if start + length <= len(ids)]
        windows.append(ids)
        decoded = [tokenizer.decode(window, skip_special_tokens=False) for window in windows]
        with open(os.path.join(folder, "cases.json"), "w", encoding="utf-8") as handle:
            json.dump({"windows": windows, "decoded": decoded, "bos": separator_id}, handle, ensure_ascii=False)
        print(kind, len(ids), "tokens,", len(windows), "windows")


if __name__ == "__main__":
    main()
