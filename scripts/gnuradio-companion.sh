#!/usr/bin/env bash
# GNU Radio Companion with this project's blocks and the venv's python (so the
# flowgraphs it loads and runs can import torch and gr_gdmcom):
#   bash scripts/gnuradio-companion.sh [FILE.grc ...]
# Paths are taken from the folder you run it in.  Needs a desktop session and Debian's
# gir1.2-gtk-3.0 (apt-get install gnuradio brings it in without --no-install-recommends).
# GDMCOM_SETUP=0 skips the set-up step.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ "${GDMCOM_SETUP:-1}" = 0 ] || (cd "$ROOT" && bash scripts/setup.sh) >&2
export GRC_BLOCKS_PATH="$ROOT/grc${GRC_BLOCKS_PATH:+:$GRC_BLOCKS_PATH}"
export GR_CONF_GRC_LOCAL_BLOCKS_PATH="$ROOT/grc"  # (see scripts/grcc.sh)
exec "$ROOT/.venv/bin/python" /usr/bin/gnuradio-companion "$@"
