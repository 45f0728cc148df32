#!/usr/bin/env bash
# The LiteLLM proxy, in a venv of its own (its pins must not move ours), for bench/gateway_overhead.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-litellm/bin/python ] || python3 -m venv .venv-litellm
.venv-litellm/bin/python -m pip install --quiet --upgrade pip
.venv-litellm/bin/python -m pip install --quiet 'litellm[proxy]'
LITELLM_LOCAL_MODEL_COST_MAP=True .venv-litellm/bin/litellm --version || true  # no price-map download
# the load generator: at concurrency 64 the Python one saturates before either gateway does
if ! command -v wrk >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
