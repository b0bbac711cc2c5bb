# The two commands of the README: `make demo` and `make test`. Everything they need is installed by
# Tools/install_deps.sh; nothing here hides a failure.
SWIFT ?= swift
PORT ?= 8081
ENDPOINT = http://127.0.0.1:$(PORT)/v1

# Tests run on OpenBLAS's Haswell kernels where the CPU has AVX2 and FMA: they give a GEMM row different last
# bits depending on the GEMM's row count (SkylakeX's do not), so a result that wrongly depends on how features
# are cut into blocks and chunks shows on every such machine, not only on some (BLASKernels.swift, ScaleTests).
TEST_BLAS = $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && echo OPENBLAS_CORETYPE=Haswell)

PREFIX ?= /usr/local
BIN ?= .build/release/saelabel

.PHONY: demo demo-baseline test test-fast test-slurm build release bench fuzz deps clean-demo install install-binary prompts

deps:
	Tools/install_deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product saelabel

# Installs saelabel as $(PREFIX)/bin/saelabel. The binary carries its prompt templates and HTML assets,
# so it runs from any folder; `prompts_dir` or SAELABEL_PROMPTS still point it at edited templates.
install: release
	$(MAKE) install-binary BIN=.build/release/saelabel

# Copies an already built binary (BIN) without building; `make install` builds first.
install-binary:
	install -d "$(DESTDIR)$(PREFIX)/bin"
	install -m 755 "$(BIN)" "$(DESTDIR)$(PREFIX)/bin/saelabel"

# After editing Prompts/*.mustache: regenerate the templates built into the binary.
prompts:
	python3 Tools/embed_prompts.py

# Labels the bundled demo SAE's features with the real local LLM, then writes the catalogs.
# Running it again resumes: finished features and LLM calls are not repeated.
# --chat-only: the demo needs no prompt logprobs, so the server skips computing them (see Tools/llm_server.sh).
demo: release
	Tools/install_deps.sh --llm
	Tools/llm_server.sh start $(PORT) --chat-only
	status=0; .build/release/saelabel run --config Datasets/demo/job.toml || status=$$?; \
	  Tools/llm_server.sh stop; \
	  test $$status -le 1 && .build/release/saelabel status --db demo-out/demo.sqlite; exit $$status

# The demo's first 12 features labeled by the no-LLM baseline explainer and scored by the same
# simulator on the same held-out windows, then compared with the LLM labels of `make demo`
# (12 features keep it near 15 minutes on 2 cores).
demo-baseline: release
	Tools/install_deps.sh --llm
	Tools/llm_server.sh start $(PORT)
	status=0; .build/release/saelabel run --config Datasets/demo/job-baseline.toml --features 0..12 || status=$$?; \
	  Tools/llm_server.sh stop; test $$status -le 1 || exit $$status
	python3 Tools/compare_labels.py demo-out/catalog.jsonl demo-out/baseline-catalog.jsonl

# The whole suite, including the real-LLM end-to-end test and the headless-browser catalog test.
test:
	Tools/install_deps.sh --browser --llm
	$(SWIFT) build --build-tests
	Tools/llm_server.sh start $(PORT)
	status=0; $(TEST_BLAS) SAELABEL_LLM_ENDPOINT=$(ENDPOINT) SAELABEL_LLM_MODEL=smollm2 $(SWIFT) test --skip-build || status=$$?; \
	  Tools/llm_server.sh stop; exit $$status

# The README's Slurm array example on a one-node Slurm cluster started on 127.0.0.1: four array tasks
# label four shards against the mock LLM server, a dependent job merges them, and the merged catalog
# must equal one unsharded run's (Tools/slurm_test.sh). CI runs it after `make test`.
test-slurm:
	Tools/install_deps.sh --slurm
	$(SWIFT) build --product saelabel
	Tools/slurm_test.sh .build/debug/saelabel

# Without the real LLM (seconds instead of minutes).
test-fast: deps
	$(TEST_BLAS) $(SWIFT) test

bench:
	$(SWIFT) build -c release --product saelabel-bench
	.build/release/saelabel-bench collect
	.build/release/saelabel-bench llm

# libFuzzer on every file parser for FUZZ_SECONDS each (default 60); prints executions and crashes
# per parser and fails when one crashed (RELIABILITY.md).
fuzz: deps
	Fuzz/build.sh
	Fuzz/run.sh

clean-demo:
	rm -rf demo-out
