#!/usr/bin/env bash
# The test command: set up (idempotent), run the whole test suite, then every fenced
# command of README.md offline (scripts/readme-check.sh; only when no pytest arguments
# are given, GDMCOM_README_CHECK=0 skips it).  Exits 1 when either failed.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRC_BLOCKS_PATH="$PWD/grc${GRC_BLOCKS_PATH:+:$GRC_BLOCKS_PATH}"
status=0
.venv/bin/python -m pytest -q -ra "$@" || status=$?
if [ $# -eq 0 ] && [ "${GDMCOM_README_CHECK:-1}" != 0 ]; then
    bash scripts/readme-check.sh || status=1
fi
exit "$status"
