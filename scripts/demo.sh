#!/usr/bin/env bash
# The main job: set up (idempotent), then send a sample image through a real
# GNU Radio flowgraph (semantic source -> AWGN -> semantic sink, the receiver
# estimating the SNR itself) and report per image.  Extra arguments go to
# `gdmcom link`; without --model the offline natural-image prior `patch-gmm`
# is used (a Gaussian mixture of image patches fitted to bundled photographs;
# the astronaut is held out).  Real quality needs Stable Diffusion 1.5 on a GPU:
# --model stable-diffusion-v1-5/stable-diffusion-v1-5 or --model PATH.
#   bash scripts/demo.sh [--model M] [--snr DB ...] [--cfo 0.005 --taps 1 0.3j -0.1] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=("$@")
case " $* " in *" --model "*) ;; *) args+=(--model patch-gmm) ;; esac
case " $* " in *" --snr "*) ;; *) args+=(--snr 5 10 20) ;; esac
case " $* " in *" --out "*) ;; *) args+=(--out out/demo) ;; esac
case " $* " in *" --image "*) ;; *) args+=(--image gr_gdmcom/data/astronaut.png) ;; esac
exec .venv/bin/gdmcom link "${args[@]}"
