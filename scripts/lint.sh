#!/usr/bin/env bash
# Static checks, run by scripts/test.sh before the tests (and so by CI): ruff lint, ruff format check, mypy
# (strict flags on the kernel, pricing and the ledger; defaults elsewhere: see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin
echo "== ruff check";         $PY/ruff check src tests bench scripts
echo "== ruff format --check"; $PY/ruff format --check src tests bench scripts
echo "== mypy";               $PY/mypy
