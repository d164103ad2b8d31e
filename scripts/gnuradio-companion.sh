#!/usr/bin/env bash
# GNU Radio Companion with this project's blocks and the venv's python (so the
# flowgraphs it runs can import torch): bash scripts/gnuradio-companion.sh [FILE.grc]
# Needs a desktop session and Debian's gir1.2-gtk-3.0 (apt-get install gnuradio brings it in
# without --no-install-recommends).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRC_BLOCKS_PATH="$PWD/grc${GRC_BLOCKS_PATH:+:$GRC_BLOCKS_PATH}"
export GR_CONF_GRC_LOCAL_BLOCKS_PATH="$PWD/grc"  # (see scripts/grcc.sh)
exec .venv/bin/python /usr/bin/gnuradio-companion "$@"
