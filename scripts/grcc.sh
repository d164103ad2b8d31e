#!/usr/bin/env bash
# Compile a flowgraph with the venv's python (its imports need gr_gdmcom):
#   bash scripts/grcc.sh flowgraphs/awgn_link.grc [-o DIR]
# then run the generated script with .venv/bin/python.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
export GRC_BLOCKS_PATH="$here/grc${GRC_BLOCKS_PATH:+:$GRC_BLOCKS_PATH}"
exec "$here/.venv/bin/python" /usr/bin/grcc "$@"
