#!/usr/bin/env python3
"""Scores the same stored labels with several simulator settings against a running LLM server and
compares them: answer and prompt tokens per held-out window, wall time, failures and the scores
(mean and paired difference against the first setting). The README's "Sparse against dense
simulation" table comes from this script.

    Tools/llm_server.sh start 8081
    python3 Tools/compare_simulators.py --bin .build/release/saelabel --endpoint http://127.0.0.1:8081/v1 \
        --out demo-out/compare [--features 0..24] [--setting NAME=FLAGS[@FEATURES]]...

`--baseline OTHER/summary.json` takes the paired differences against another run's first setting
instead (copy that run's labels.sqlite into OUT first, so both score the same labels), e.g. to compare
two builds of saelabel.

Step 1 collects and explains the demo job's features once (`saelabel run --stage explain`, the labels
are then fixed; `--explainer-style` explains with another style than the demo job's); step 2 copies that store once per setting and runs `saelabel score` on the copy, so
every setting scores the same labels on the same held-out windows. The default settings are the
sparse simulator with all of a feature's windows in one request, the sparse simulator with a request
per window, and the dense JSON simulator on the first 8 features (it is slow). Python 3 standard
library only; prints a Markdown table and writes the numbers to OUT/summary.json.
"""
import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "Datasets", "demo")
DEFAULT_SETTINGS = [
    "sparse, several windows a request=--simulator sparse",
    "sparse, a request per window=--simulator sparse --windows-per-request 1",
    "dense JSON=--simulator json@0..8",
]


def job_text(store, endpoint, style=None):
    """The demo job with absolute input paths, this store and endpoint, no exports, and `style` for the
    explainer if given."""
    text = open(os.path.join(DEMO, "job.toml"), encoding="utf-8").read()
    text = re.sub(r'^store = .*$', 'store = "%s"' % store, text, flags=re.M)
    text = re.sub(r'^endpoint = .*$', 'endpoint = "%s"' % endpoint, text, flags=re.M)
    if style:
        text = re.sub(r'^style = .*$', 'style = "%s"' % style, text, flags=re.M)
    for key in ("sae", "tokenizer"):
        text = re.sub(r'^%s = "([^"]+)"' % key, lambda m: '%s = "%s"' % (key, os.path.join(DEMO, m.group(1))), text, flags=re.M)
    text = re.sub(r'^activations = \["([^"]+)"\]', lambda m: 'activations = ["%s"]' % os.path.join(DEMO, m.group(1)),
                  text, flags=re.M)
    return text.split("[export]")[0]


def feature_range(spec):
    low, high = spec.split("..")
    return set(range(int(low), int(high)))


def run(command, log):
    start = time.monotonic()
    with open(log, "w") as out:
        status = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    return status, time.monotonic() - start


def measure(db, features):
    con = sqlite3.connect(db)
    calls = [r for r in con.execute("SELECT tag, prompt_tokens, completion_tokens, latency_ms FROM llm_call "
                                    "WHERE tag LIKE 'simulate:%' AND outcome = 'ok'")
             if int(r[0].split(":")[1]) in features]
    scores, windows, retried = {}, 0, 0
    for feature, value, details in con.execute("SELECT feature, value, details FROM score WHERE scorer = 'simulation'"):
        if feature not in features:
            continue
        d = json.loads(details)
        scores[feature] = value
        windows += len(d.get("windows") or [])
        retried += d.get("retriedWindows") or 0
    failed = [r[0] for r in con.execute("SELECT id FROM feature WHERE state = 'failed'") if r[0] in features]
    con.close()
    first = [c for c in calls if not c[0].endswith(":retry")]
    return {
        "calls": len(calls), "retries": len(calls) - len(first), "windows_scored": windows, "retried_windows": retried,
        "scored": len(scores), "failed": len(failed),
        "answer_tokens_per_window": sum(c[2] for c in first) / max(windows, 1),
        "prompt_tokens_per_window": sum(c[1] for c in first) / max(windows, 1),
        "all_tokens_out": sum(c[2] for c in calls), "all_tokens_in": sum(c[1] for c in calls),
        "mean_latency_s": statistics.mean(c[3] for c in calls) / 1000 if calls else None,
        "scores": scores,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=os.path.join(ROOT, ".build", "release", "saelabel"))
    parser.add_argument("--endpoint", default="http://127.0.0.1:8081/v1")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--server", default="llama-cpp-python")
    parser.add_argument("--out", default=os.path.join(ROOT, "demo-out", "compare"))
    parser.add_argument("--features", default="0..24")
    parser.add_argument("--setting", action="append", help="NAME=FLAGS[@FEATURES] for `saelabel score` (repeatable)")
    parser.add_argument("--explainer-style", help="explain with this [explainer] style instead of the demo job's")
    parser.add_argument("--baseline", help="another run's OUT/summary.json: paired differences against its first setting "
                                           "(e.g. the same labels scored by an older binary; copy its labels.sqlite into OUT first)")
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    labels = os.path.join(args.out, "labels.sqlite")
    summary = {"load_before": os.getloadavg()}

    if not os.path.exists(labels):
        job = os.path.join(args.out, "job.toml")
        with open(job, "w", encoding="utf-8") as f:
            f.write(job_text(labels, args.endpoint, args.explainer_style))
        for stage in ("collect", "explain"):
            status, seconds = run([args.bin, "run", "--config", job, "--features", args.features, "--stage", stage],
                                  os.path.join(args.out, stage + ".log"))
            if status != 0:
                sys.exit("%s stage failed (exit %d); see %s/%s.log" % (stage, status, args.out, stage))
            summary[stage + "_seconds"] = seconds
    con = sqlite3.connect(labels)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()

    results = []
    for setting in args.setting or DEFAULT_SETTINGS:
        name, _, rest = setting.partition("=")
        flags, _, subset = rest.partition("@")
        features = feature_range(subset or args.features)
        db = os.path.join(args.out, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".sqlite")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.remove(db + suffix)
        shutil.copyfile(labels, db)
        command = [args.bin, "score", "--db", db, "--endpoint", args.endpoint, "--model", args.model,
                   "--server", args.server, "--concurrency", "1", "--features", subset or args.features] + flags.split()
        load = os.getloadavg()[0]
        status, seconds = run(command, db + ".log")
        result = measure(db, features)
        result.update(name=name, flags=flags, features=subset or args.features, exit=status, wall_seconds=seconds,
                      load_before=load, load_after=os.getloadavg()[0])
        results.append(result)
        print("%s: %d scored, %d failed, %.0f s" % (name, result["scored"], result["failed"], seconds), flush=True)

    base = results[0]["scores"]
    if args.baseline:
        first = json.load(open(args.baseline))["results"][0]
        base = {int(feature): value for feature, value in first["scores"].items()}
        summary["baseline"] = {"file": os.path.abspath(args.baseline), "name": first["name"]}
    for result in results:
        shared = [f for f in result["scores"] if f in base and result["scores"][f] is not None and base[f] is not None]
        values = [result["scores"][f] for f in shared]
        result["mean_score"] = statistics.mean(values) if values else None
        diffs = [result["scores"][f] - base[f] for f in shared]
        result["paired_difference"] = statistics.mean(diffs) if diffs else None
        result["paired_difference_sd"] = statistics.stdev(diffs) if len(diffs) > 1 else None
        result["paired_features"] = len(shared)
        result["base_mean_on_shared"] = statistics.mean(base[f] for f in shared) if shared else None
    summary["results"] = results
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)

    def cell(value, fmt):
        return "–" if value is None else fmt % value

    print("\n| | " + " | ".join(r["name"] for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    rows = [("features scored / failed", lambda r: "%d / %d" % (r["scored"], r["failed"])),
            ("held-out windows scored", lambda r: str(r["windows_scored"])),
            ("requests (retries)", lambda r: "%d (%d)" % (r["calls"], r["retries"])),
            ("answer tokens per window (first answers)", lambda r: cell(r["answer_tokens_per_window"], "%.1f")),
            ("prompt tokens per window", lambda r: cell(r["prompt_tokens_per_window"], "%.0f")),
            ("mean request latency", lambda r: cell(r["mean_latency_s"], "%.1f s")),
            ("wall time", lambda r: "%.0f s" % r["wall_seconds"]),
            ("wall time per window", lambda r: cell(r["wall_seconds"] / max(r["windows_scored"], 1), "%.2f s")),
            ("mean simulation score", lambda r: cell(r["mean_score"], "%.3f")),
            ("paired difference to %s (features)" % ("the baseline" if args.baseline else "the first"),
             lambda r: "%s ± %s (%d)" % (cell(r["paired_difference"], "%+.3f"), cell(r["paired_difference_sd"], "%.3f"),
                                         r["paired_features"])),
            ("load average before / after", lambda r: "%.1f / %.1f" % (r["load_before"], r["load_after"]))]
    for label, fn in rows:
        print("| %s | %s |" % (label, " | ".join(fn(r) for r in results)))


if __name__ == "__main__":
    main()
