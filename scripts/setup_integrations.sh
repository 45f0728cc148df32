#!/usr/bin/env bash
# LiteLLM's own environment for the LiteLLM integration tests (tests/e2e/test_integrations_litellm.py):
# bench/setup_litellm.sh's .venv-litellm (its pins must not move ours), with truecost installed into it.
# The other integrations (OTLP receiver, LangChain, LlamaIndex) use the main venv's `integrations` extra.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/setup_litellm.sh
.venv-litellm/bin/python -m pip install --quiet -e .
LITELLM_LOCAL_MODEL_COST_MAP=True .venv-litellm/bin/python -c "import litellm, truecost.integrations.litellm; print('litellm + truecost ready')"
