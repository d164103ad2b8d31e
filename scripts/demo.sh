#!/usr/bin/env bash
# The main job: set up (idempotent), then send a sample image through a real
# GNU Radio flowgraph (semantic source -> AWGN -> semantic sink, the receiver
# estimating the SNR itself) and report per image.  Arguments are those of
# `gdmcom link`, in any form it accepts (--snr 15, --snr=15 ...); what is not
# given comes from gr_gdmcom/demo.py: --model patch-gmm (an offline prior of
# natural images fitted to bundled photographs, the astronaut held out; real
# quality needs --model stable-diffusion-v1-5/stable-diffusion-v1-5 or
# --model PATH, best on a GPU), --snr 5 10 20, --k 10 --m 0 (the paper's best
# (k, m) in its Table II), --out out/demo and the bundled astronaut.png.  Paths are taken from the folder you run it in.
#   bash scripts/demo.sh [--model M] [--snr DB ...] [--cfo 0.005 --taps 1 0.3j -0.1] [--out DIR] [--image IMG ...]
# GDMCOM_SETUP=0 skips the set-up step.  JSON lines go to stdout, everything else to stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ "${GDMCOM_SETUP:-1}" = 0 ] || (cd "$ROOT" && bash scripts/setup.sh) >&2
exec "$ROOT/.venv/bin/python" -m gr_gdmcom.demo "$@"
