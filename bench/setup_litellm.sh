#!/usr/bin/env bash
# The LiteLLM proxy, in a venv of its own (its pins must not move ours), for bench/gateway_overhead.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-litellm/bin/python ] || python3 -m venv .venv-litellm
.venv-litellm/bin/python -m pip install --quiet --upgrade pip
.venv-litellm/bin/python -m pip install --quiet 'litellm[proxy]'
.venv-litellm/bin/litellm --version || true
