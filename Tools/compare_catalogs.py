#!/usr/bin/env python3
"""Checks that two saelabel catalogs (JSONL) describe the same features the same way: the same
feature set, status, explanation, examples and tokens, and numbers equal within a tolerance
(sharded runs multiply only their own encoder columns, so sums differ in the last float bits).

    python3 Tools/compare_catalogs.py expected.jsonl actual.jsonl [--tolerance 1e-5]

Prints one line per difference (at most 20) and exits 1 when there is any.
"""
import argparse
import json
import math
import sys


def load(path):
    rows = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                row = json.loads(line)
                if row["feature"] in rows:
                    raise SystemExit(f"{path}:{number}: feature {row['feature']} appears twice")
                rows[row["feature"]] = row
    return rows


def differences(expected, actual, tolerance, where="", out=None):
    out = [] if out is None else out
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) \
            and not isinstance(expected, bool) and not isinstance(actual, bool):
        if not math.isclose(expected, actual, rel_tol=tolerance, abs_tol=tolerance):
            out.append(f"{where}: {expected!r} != {actual!r}")
    elif isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            if key not in expected or key not in actual:
                out.append(f"{where}.{key}: only in {'expected' if key in expected else 'actual'}")
            else:
                differences(expected[key], actual[key], tolerance, f"{where}.{key}", out)
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            out.append(f"{where}: {len(expected)} items != {len(actual)}")
        for index, (left, right) in enumerate(zip(expected, actual)):
            differences(left, right, tolerance, f"{where}[{index}]", out)
    elif expected != actual:
        out.append(f"{where}: {expected!r} != {actual!r}")
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("expected")
    parser.add_argument("actual")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    expected, actual = load(args.expected), load(args.actual)
    found = []
    if set(expected) != set(actual):
        found.append(f"features differ: only expected {sorted(set(expected) - set(actual))[:10]}, "
                     f"only actual {sorted(set(actual) - set(expected))[:10]}")
    for feature in sorted(set(expected) & set(actual)):
        differences(expected[feature], actual[feature], args.tolerance, f"feature {feature}", found)
    labeled = sum(1 for row in expected.values() if row.get("explanation"))
    if labeled == 0:
        found.append("no feature has a label: the comparison would prove nothing")
    for line in found[:20]:
        print(f"FAIL: {line}", file=sys.stderr)
    if len(found) > 20:
        print(f"FAIL: … and {len(found) - 20} more differences", file=sys.stderr)
    if not found:
        print(f"catalogs equal: {len(expected)} features, {labeled} labeled")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
