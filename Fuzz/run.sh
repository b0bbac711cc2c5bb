#!/usr/bin/env bash
# Runs every parser fuzzer for a bounded time (FUZZ_SECONDS each, default 60) and prints, per parser,
# the executions run and the crashes found. Crash inputs are kept in .build/fuzz/crashes/<parser>/.
# Exit status 1 when any parser crashed. `make fuzz` builds (Fuzz/build.sh) and runs this.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=.build/fuzz
SECONDS_EACH=${FUZZ_SECONDS:-60}
status=0
printf '%-12s %12s %8s\n' parser executions crashes
for target in safetensors cfg tokenizer delphi job; do
  binary=$OUT/fuzz-collect
  [ "$target" = job ] && binary=$OUT/fuzz-job
  corpus=$OUT/corpus/$target
  crashes=$OUT/crashes/$target
  mkdir -p "$corpus" "$crashes"
  cp -n Fuzz/seeds/$target/* "$corpus"/ 2>/dev/null || true
  log=$OUT/$target.log
  SAELABEL_FUZZ_TARGET=$target ASAN_OPTIONS=detect_leaks=0 "$binary" "$corpus" -max_total_time="$SECONDS_EACH" \
    -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/" >"$log" 2>&1
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  found=$(find "$crashes" -type f | wc -l)
  printf '%-12s %12s %8s\n' "$target" "${runs:-?}" "$found"
  [ "$found" -gt 0 ] && status=1
done
exit $status
