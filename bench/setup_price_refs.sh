#!/usr/bin/env bash
# The reference pricers for bench/price_agreement.py -- LiteLLM (litellm.cost_per_token) and
# Pydantic's genai-prices (calc_price) -- in a venv of their own, so their pins never move ours
# (the same approach as bench/setup_litellm.sh for the gateway bench). Versions are pinned so a
# re-run compares against the same reference data; pass other versions as arguments to try them:
#   bench/setup_price_refs.sh 'litellm==1.110.2' 'genai-prices==0.2.3'
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-prices
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [ "$#" -gt 0 ]; then pkgs=("$@"); else pkgs=('litellm==1.110.2' 'genai-prices==0.2.3'); fi
"$VENV/bin/python" -m pip install --quiet "${pkgs[@]}"
"$VENV/bin/python" -c 'import importlib.metadata as m; print({p: m.version(p) for p in ("litellm", "genai-prices")})'
