#!/usr/bin/env python3
"""Compares two saelabel catalogs of the same features (e.g. LLM labels vs the no-LLM baseline):
per-feature labels and simulation scores, the mean of each, and how often the first beats the second.

    python3 Tools/compare_labels.py demo-out/catalog.jsonl demo-out/baseline-catalog.jsonl
"""
import json
import sys


def load(path):
    rows = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows[row["feature"]] = row
    return rows


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare_labels.py FIRST.jsonl SECOND.jsonl")
    first, second = load(sys.argv[1]), load(sys.argv[2])
    pairs = []
    print("| feature | first label | score | second label | score |")
    print("|---|---|---|---|---|")
    for feature in sorted(set(first) & set(second)):
        a, b = first[feature], second[feature]
        sa, sb = a["scores"].get("simulation"), b["scores"].get("simulation")
        if sa is None or sb is None:
            continue
        pairs.append((sa, sb))
        label = lambda row: (row.get("explanation") or "").replace("|", "\\|")
        print(f"| {feature} | {label(a)} | {sa:.3f} | {label(b)} | {sb:.3f} |")
    if not pairs:
        sys.exit("no feature has a simulation score in both catalogs")
    n = len(pairs)
    mean_a = sum(a for a, _ in pairs) / n
    mean_b = sum(b for _, b in pairs) / n
    wins = sum(1 for a, b in pairs if a > b)
    print()
    print(f"features scored in both: {n}")
    print(f"mean simulation score: first {mean_a:.3f}, second {mean_b:.3f}")
    print(f"first beats second on {wins} of {n} features")


if __name__ == "__main__":
    main()
