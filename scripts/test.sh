#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole test suite.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRC_BLOCKS_PATH="$PWD/grc${GRC_BLOCKS_PATH:+:$GRC_BLOCKS_PATH}"
exec .venv/bin/python -m pytest -q -ra "$@"
