#!/usr/bin/env bash
# The test command: static checks (ruff lint and format, mypy), then the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "ruff check" && .venv/bin/ruff check .
echo "ruff format --check" && .venv/bin/ruff format --check .
echo "mypy" && .venv/bin/mypy
bash scripts/install-chromium.sh  # the browser tests of `bon view`; they skip without it
bash scripts/setup-fschat.sh  # FastChat's own reader for the MT-Bench export; those tests skip without it
.venv/bin/python -m pytest "$@"
