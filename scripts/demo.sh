#!/usr/bin/env bash
# The main job: set up (idempotent), then send a sample image over a simulated
# link and decode it.  Extra arguments go to `gdmcom`; without --model the
# offline random-weight model is used (--model stable-diffusion-v1-5/stable-diffusion-v1-5
# or --model PATH for real weights, on a GPU).
#   bash scripts/demo.sh [--model M] [--snr DB ...] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=("$@")
case " $* " in *" --model "*) ;; *) args+=(--model tiny) ;; esac
case " $* " in *" --snr "*) ;; *) args+=(--snr 5 10 20) ;; esac
case " $* " in *" --out "*) ;; *) args+=(--out out/demo) ;; esac
case " $* " in *" --image "*) ;; *) args+=(--image gr_gdmcom/data/astronaut.png) ;; esac
exec .venv/bin/gdmcom simulate "${args[@]}"
