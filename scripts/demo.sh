#!/usr/bin/env bash
# The main job: set up, then run `truecost demo` on embedded defaults (SQLite ledger, in-process
# index, local models). The first run compiles llama.cpp for the local model (about 6-8 minutes
# on 2 cores, once); `scripts/demo.sh --no-local-model` skips it and uses the labelled replay upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="embed,onnx,gateway,local"
for arg in "$@"; do
  if [ "$arg" = "--no-local-model" ]; then EXTRAS="embed,onnx,gateway"; fi
done
if [[ "$EXTRAS" == *local* ]] && ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
  echo "== setting up: compiling llama.cpp for the local model (about 6-8 minutes on 2 cores, first run only)"
else
  echo "== setting up (.venv, extras: $EXTRAS)"
fi
bash scripts/setup.sh "$EXTRAS"
export HF_HUB_OFFLINE=1
# One BLAS thread for the bot's and the gateway's MiniLM: OpenBLAS threads spin while they wait, and on a
# shared 2-CPU machine (llama.cpp beside them, other work too) two threads embedded 10x slower than one.
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/truecost demo "$@"
