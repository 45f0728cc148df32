#!/usr/bin/env bash
# The main job: set up, then run `truecost demo` on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh embed
export HF_HUB_OFFLINE=1
exec .venv/bin/truecost demo "$@"
