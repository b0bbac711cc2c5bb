#!/usr/bin/env bash
# The README's Slurm array example, run for real: a one-node Slurm cluster on 127.0.0.1
# (Tools/slurm_cluster.sh), four array tasks that each label one shard of the demo SAE against the
# mock LLM server, a merge job that waits for the array (afterany), and a check that the merged
# catalog equals the catalog of one unsharded run of the same job.
#   Tools/slurm_test.sh [SAELABEL_BINARY]     (default .build/debug/saelabel; `make test-slurm` builds it)
# Prints `slurm: N passed, N failed` and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
binary="$(cd "$(dirname "${1:-.build/debug/saelabel}")" && pwd)/$(basename "${1:-.build/debug/saelabel}")"
[ -x "$binary" ] || { echo "slurm_test: $binary not found; build it first (swift build)" >&2; exit 2; }

work="$(mktemp -d /tmp/saelabel-slurm-XXXXXX)"
cluster="$work/cluster"
mock_pid=""
cleanup() {
  "$root/Tools/slurm_cluster.sh" stop "$cluster" >/dev/null 2>&1 || true
  if [ -n "$mock_pid" ]; then kill -9 "$mock_pid" 2>/dev/null; wait "$mock_pid" 2>/dev/null; fi || true
  if [ "${KEEP_SLURM_TEST:-0}" != 1 ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

Tools/slurm_cluster.sh start "$cluster"
export SLURM_CONF="$cluster/slurm.conf"

# The mock prints `LISTENING <port>` once bound to a free port of 127.0.0.1.
mkfifo "$work/mock.out"
python3 Tools/mock_llm_server.py --port 0 --latency-ms 20 --dialect openai >"$work/mock.out" 2>"$work/mock.err" &
mock_pid=$!
read -r listening port <"$work/mock.out"
[ "$listening" = LISTENING ] || { echo "slurm_test: mock server did not start" >&2; exit 1; }
endpoint="http://127.0.0.1:$port/v1"

# One job file as a user would write it; SHARD is replaced per array task, as in the README.
demo="$root/Datasets/demo"
write_job() {
  cat >"$1" <<EOF
[job]
store = "$2"
seed = 0

[inputs]
sae = "$demo/sae"
activations = ["$demo/activations.safetensors"]
tokenizer = "$demo/tokenizer.json"

[collect]
features = "0..40"
window = 16
explain_top = 6
explain_quantile = 4
heldout_top = 2
heldout_quantile = 1
heldout_random = 2
min_activating_windows = 5

[explainer]
endpoint = "$endpoint"
model = "gpt-4.1-mini"

[simulator]
endpoint = "$endpoint"
model = "gpt-4.1-mini"
scorers = ["simulation", "detection"]

[limits]
concurrency = 4
EOF
}
mkdir -p "$work/cluster-job/shards" "$work/single"
write_job "$work/cluster-job/job.toml" "shards/shard-SHARD.sqlite"
write_job "$work/single/job.toml" "single.sqlite"

# The README's array script, with 4 tasks instead of 16. sbatch passes this environment on, so
# `saelabel` is found on PATH as it would be on a cluster with the tool installed.
export PATH="$(dirname "$binary"):$PATH"
cat >"$work/cluster-job/array.sh" <<'EOF'
#!/bin/bash
#SBATCH --array=0-3
#SBATCH --cpus-per-task=1
sed "s/SHARD/${SLURM_ARRAY_TASK_ID}/" job.toml > "job-${SLURM_ARRAY_TASK_ID}.toml"
saelabel run --config "job-${SLURM_ARRAY_TASK_ID}.toml" --shard "${SLURM_ARRAY_TASK_ID}/4" --quiet
EOF
cat >"$work/cluster-job/merge.sh" <<'EOF'
#!/bin/bash
saelabel merge --into merged.sqlite shards/shard-*.sqlite
saelabel export --db merged.sqlite --format catalog --out merged.jsonl
EOF
cd "$work/cluster-job"
array_id="$(sbatch --parsable -o 'array-%A_%a.out' array.sh)"
merge_id="$(sbatch --parsable -o 'merge-%j.out' --dependency="afterany:$array_id" merge.sh)"
echo "submitted array job $array_id (4 tasks) and merge job $merge_id"

# Both jobs leave the queue when done; bounded wait.
deadline=$((SECONDS + 600))
while squeue -h -j "$array_id,$merge_id" 2>/dev/null | grep -q .; do
  if [ $SECONDS -gt $deadline ]; then echo "slurm_test: jobs still queued after 600 s" >&2; squeue >&2; exit 1; fi
  sleep 2
done

passed=0
failed=0
check() {
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
tasks_ran() {
  local ok=0
  for task in 0 1 2 3; do
    if [ -f "shards/shard-$task.sqlite" ]; then ok=$((ok + 1)); else echo "FAIL: array task $task wrote no store" >&2; cat "array-${array_id}_$task.out" >&2 || true; fi
  done
  [ "$ok" = 4 ]
}
check tasks_ran
merged_ok() {
  [ -s merged.jsonl ] || { echo "FAIL: the merge job wrote no catalog" >&2; cat merge-*.out >&2 || true; return 1; }
}
check merged_ok

cd "$work/single"
status=0
saelabel run --config job.toml --quiet >run.out 2>&1 || status=$?
single_ok() {
  [ "$status" -le 1 ] || { echo "FAIL: the single run exited $status" >&2; cat run.out >&2; return 1; }
  saelabel export --db single.sqlite --format catalog --out single.jsonl >/dev/null
}
check single_ok
check python3 "$root/Tools/compare_catalogs.py" "$work/single/single.jsonl" "$work/cluster-job/merged.jsonl"

echo "slurm: $passed passed, $failed failed"
[ "$failed" = 0 ]
