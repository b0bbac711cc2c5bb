#!/usr/bin/env bash
# Reproduces README's "Carry-over with the real LLM" figures: the demo job's features labeled by SmolLM2 on
# the demo SAE (Datasets/demo/job.toml), then the next SAE version Datasets/demo-v2 run with carry-over
# (Datasets/demo/job-v2.toml, --new-version, same store), and the same v2 features labeled afresh
# ([carry_over] enabled = false, a separate store) to compare carried labels with fresh ones.
#   Tools/carry_over_report.sh            uses port 8091, .build/debug/saelabel and out/carry-report/
#   PORT=8081 SAELABEL_BIN=.build/release/saelabel OUT=/tmp/r Tools/carry_over_report.sh
#   FEATURES=3,17,40 Tools/carry_over_report.sh   v2 runs over these v2 features instead of job-v2.toml's (quicker)
# Starts the local llama.cpp server (Tools/llm_server.sh) if it is not answering, and stops it at the end
# when it started it. Prints the report and writes it to $OUT/report.md. Rerunning resumes the stores.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-8091}"
bin="${SAELABEL_BIN:-.build/debug/saelabel}"
out="$(mkdir -p "${OUT:-out/carry-report}" && cd "${OUT:-out/carry-report}" && pwd)"
[ -x "$bin" ] || { echo "no saelabel binary at $bin: swift build first, or set SAELABEL_BIN" >&2; exit 2; }
[ -f Datasets/demo-v2/sae/sae_weights.safetensors ] || { echo "Datasets/demo-v2 is missing" >&2; exit 2; }

started_server=0
answering() {  # any HTTP answer counts (a server without /v1/models answers 404)
  python3 -c "
import sys, urllib.error, urllib.request
try: urllib.request.urlopen(sys.argv[1], timeout=5)
except urllib.error.HTTPError: pass" "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1
}
if ! answering; then
  Tools/llm_server.sh start "$port"
  started_server=1
fi
trap '[ "$started_server" = 1 ] && Tools/llm_server.sh stop' EXIT

# The shipped job files, pointed at this port and at stores and exports under $out. Prices: gpt-4.1-mini's
# (README "The job file"), so the stores price SmolLM2's tokens as if that model had answered.
python3 - "$out" "$port" "${FEATURES:-}" <<'PY'
import os, re, sys
out, port, features_v2 = sys.argv[1], sys.argv[2], sys.argv[3]
demo = os.path.abspath("Datasets/demo")
prices = '\n[prices."smollm2"]\ninput = 0.4\noutput = 1.6\n'
def job(source, store, name, extra=""):
    text = open(os.path.join(demo, source)).read()
    text = text.replace("http://127.0.0.1:8081", f"http://127.0.0.1:{port}")
    if features_v2 and source == "job-v2.toml":
        text = re.sub(r'^features = ".*"$', f'features = "{features_v2}"', text, flags=re.M)
    text = re.sub(r'^store = ".*"$', f'store = "{out}/{store}"', text, flags=re.M)
    text = re.sub(r'^(sae|tokenizer) = "(.*)"$', lambda m: f'{m[1]} = "{os.path.normpath(os.path.join(demo, m[2]))}"', text, flags=re.M)
    text = re.sub(r'^activations = \["(.*)"\]$', lambda m: f'activations = ["{os.path.join(demo, m[1])}"]', text, flags=re.M)
    suffix = {"catalog": "-catalog.jsonl", "csv": ".csv", "html": "-html"}
    text = re.sub(r'^(catalog|csv|html) = ".*"$', lambda m: f'{m[1]} = "{out}/{name}{suffix[m[1]]}"', text, flags=re.M)
    if extra:  # into the job's [carry_over] table (TOML allows a table once), or a new one
        if re.search(r"^\[carry_over\]$", text, flags=re.M):
            text = re.sub(r"^\[carry_over\]$", "[carry_over]\n" + extra, text, count=1, flags=re.M)
        else:
            text += "\n[carry_over]\n" + extra + "\n"
    open(os.path.join(out, f"{name}.toml"), "w").write(text + prices)
job("job.toml", "carry.sqlite", "v1")
job("job-v2.toml", "carry.sqlite", "v2-carry")
job("job-v2.toml", "fresh.sqlite", "v2-fresh", extra="enabled = false")
PY

run() {  # name, extra flags: runs the job, records its wall time; exit 1 (some feature failed) is reported, not fatal
  local name=$1; shift
  local t0 status=0
  t0=$(date +%s)
  "$bin" run --config "$out/$name.toml" "$@" >"$out/$name.log" 2>&1 || status=$?
  echo "$name $(( $(date +%s) - t0 )) $status" >>"$out/runs.txt"
  [ "$status" -le 1 ] || { echo "$name failed (exit $status), see $out/$name.log" >&2; tail -5 "$out/$name.log" >&2; exit "$status"; }
}
: >"$out/runs.txt"
on_v2() {  # whether the carry store has started the v2 version (then v1 is done and v2 resumes)
  [ -f "$out/carry.sqlite" ] && python3 -c "import sqlite3,sys; v=sqlite3.connect(sys.argv[1]).execute(\"SELECT value FROM job_setting WHERE key='input_version'\").fetchone(); sys.exit(0 if (v and int(v[0])>1) else 1)" "$out/carry.sqlite"
}
if on_v2; then
  run v2-carry
else
  run v1
  run v2-carry --new-version
fi
run v2-fresh
features_v2=$(sed -n 's/^features = "\(.*\)"$/\1/p' "$out/v2-carry.toml")
features_v1=$(sed -n 's/^features = "\(.*\)"$/\1/p' "$out/v1.toml")
python3 Tools/carry_over_match.py Datasets/demo/sae Datasets/demo-v2/sae --old-features "$features_v1" \
  --new-features "$features_v2" >"$out/oracle.json"
python3 - "$out" <<'PY' | tee "$out/report.md"
import json, os, sqlite3, statistics, sys
out = sys.argv[1]
carry = sqlite3.connect(os.path.join(out, "carry.sqlite"))
fresh = sqlite3.connect(os.path.join(out, "fresh.sqlite"))
oracle = json.load(open(os.path.join(out, "oracle.json")))
runs = {line.split()[0]: int(line.split()[1]) for line in open(os.path.join(out, "runs.txt"))}

def current_pass(db):
    return db.execute("SELECT value FROM job_setting WHERE key = 'current_pass'").fetchone()[0]

def simulation_scores(db):
    """feature -> (label, simulation score) of the current pass."""
    return {f: (t, v) for f, t, v in db.execute("""
        SELECT e.feature, e.text, s.value FROM explanation e JOIN score s ON s.explanation = e.id AND s.scorer = 'simulation'
        WHERE e.pass = ?""", (current_pass(db),))}

def explain_calls(db):
    """Explain calls answered by the server (not the response cache) since the current pass began: count,
    prompt and answer tokens."""
    began = db.execute("SELECT created_at FROM labeling_pass WHERE id = ?", (current_pass(db),)).fetchone()[0]
    return db.execute("""SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM llm_call
                         WHERE tag LIKE 'explain%' AND outcome = 'ok' AND created_at >= ?""", (began,)).fetchone()

def usd(prompt, completion):  # gpt-4.1-mini, per million tokens
    return prompt * 0.4e-6 + completion * 1.6e-6

carried = carry.execute("SELECT feature, source_feature, cosine, previous_score, decision, new_score FROM carried_label WHERE pass = ? ORDER BY feature",
                        (current_pass(carry),)).fetchall()
kept = [row for row in carried if row[4] == "kept"]
carried_scores, fresh_scores = simulation_scores(carry), simulation_scores(fresh)
labelable = sorted(fresh_scores)
pairs = [(carried_scores[f][1], fresh_scores[f][1]) for f, *_ in kept
         if f in fresh_scores and carried_scores.get(f, (None, None))[1] is not None and fresh_scores[f][1] is not None]
diffs = [c - f for c, f in pairs]
cosines = sorted(row[2] for row in carried)
n_carry, p_carry, c_carry = explain_calls(carry)
n_fresh, p_fresh, c_fresh = explain_calls(fresh)
per_call = usd(p_fresh, c_fresh) / max(1, n_fresh)
fmt = lambda x: f"{x:+.3f}"
print(f"v2 features in the job: {oracle['new_features']} (v1 job: {oracle['old_features']}); labelable on v2: {len(labelable)}")
print(f"decoder matches (mutual best, cosine >= {oracle['min_cosine']}): numpy oracle {oracle['matched']}, "
      f"saelabel carried {len(carried)} (to features with a v1 label and enough v2 windows)")
if cosines:
    print(f"cosine of carried pairs: min {cosines[0]:.3f}, median {statistics.median(cosines):.3f}, max {cosines[-1]:.3f}")
print(f"carried labels kept after re-scoring: {len(kept)}; re-explained (score fell > max_score_drop): "
      f"{sum(row[4] == 'reexplained' for row in carried)}")
if pairs:
    print(f"simulation score on the same {len(pairs)} v2 features, carried label vs fresh label: "
          f"mean {statistics.mean(c for c, _ in pairs):+.3f} vs {statistics.mean(f for _, f in pairs):+.3f}, "
          f"difference mean {fmt(statistics.mean(diffs))}, sd {statistics.stdev(diffs) if len(diffs) > 1 else 0:.3f}")
    same = sum(carried_scores[f][0] == fresh_scores[f][0] for f, *_ in kept if f in fresh_scores)
    print(f"  (carried and fresh label identical on {same} of {len(pairs)})")
print(f"carried labels' v1 score vs their v2 re-score: mean {statistics.mean(r[3] for r in kept if r[3] is not None):+.3f} -> "
      f"{statistics.mean(r[5] for r in kept if r[5] is not None):+.3f}" if kept else "no carried label kept")
print(f"explain calls on v2: {n_carry} with carry-over, {n_fresh} fresh: {n_fresh - n_carry} saved "
      f"({p_fresh - p_carry} prompt + {c_fresh - c_carry} answer tokens = ${usd(p_fresh - p_carry, c_fresh - c_carry):.5f} "
      f"at gpt-4.1-mini prices; ${per_call:.6f} per explain call)")
print("wall time (s): " + ", ".join(f"{name} {seconds}" for name, seconds in runs.items()))
PY
