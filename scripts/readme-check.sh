#!/usr/bin/env bash
# Run every fenced command of README.md as a user of a fresh clone would, offline
# (scripts/readme_check.py says how lines are read: [GPU]/[network] tags, services, ...).
# Prints one line per command (status, seconds) and exits 1 when any failed;
# scripts/test.sh runs it after the test suite.
#   bash scripts/readme-check.sh [--jobs N] [--list]   # after scripts/setup.sh (it reuses .venv)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/readme_check.py" "$@"
