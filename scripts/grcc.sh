#!/usr/bin/env bash
# Compile a flowgraph with the venv's python (its imports need gr_gdmcom):
#   bash scripts/grcc.sh flowgraphs/awgn_link.grc [-o DIR]
# then run the generated script with .venv/bin/python.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
export GRC_BLOCKS_PATH="$here/grc${GRC_BLOCKS_PATH:+:$GRC_BLOCKS_PATH}"
# GRC loads [grc] local_blocks_path of ~/.gnuradio/config.conf after GRC_BLOCKS_PATH, so another
# checkout listed there would override this one's blocks; GNU Radio's GR_CONF_* variable replaces it.
export GR_CONF_GRC_LOCAL_BLOCKS_PATH="$here/grc"
exec "$here/.venv/bin/python" /usr/bin/grcc "$@"
