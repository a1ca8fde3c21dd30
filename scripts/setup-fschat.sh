#!/usr/bin/env bash
# FastChat (PyPI `fschat`, with its llm_judge extra's openai<1 and anthropic) in its own venv, .venv-fschat,
# for the tests that read bon's MT-Bench export and judge prompts with FastChat's own code. Its pins
# (openai<1) clash with bon's, so it lives apart; torch and transformers, which fastchat.model imports,
# come from .venv through a .pth file. Never fails: without it those tests skip. scripts/test.sh runs this.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-fschat/bin/python ] && .venv-fschat/bin/python -c "import fastchat" 2>/dev/null && exit 0
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
{ "$PY" -m venv .venv-fschat \
  && .venv-fschat/bin/python -m pip install -q --disable-pip-version-check "fschat==0.2.36" "openai<1" anthropic \
  && .venv/bin/python -c "import site; print(site.getsitepackages()[0])" \
     > "$(.venv-fschat/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz_bon_venv.pth"; } \
  >/dev/null 2>&1 || { echo "FastChat could not be installed: the FastChat reader tests will skip"; rm -rf .venv-fschat; }
exit 0
