#!/usr/bin/env bash
# Set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash scripts/system_deps.sh
bash scripts/setup_integrations.sh   # LiteLLM in its own venv, for the LiteLLM integration's tests
export HF_HUB_OFFLINE=1
bash scripts/lint.sh      # ruff lint + format check, mypy: a finding fails the run before any test
exec .venv/bin/python -m pytest "$@"
