#!/usr/bin/env bash
# One GPU session of the throughput figures (docs/codec.md "GPU path", docs/server.md): run from the
# repository root on a CUDA machine with torch, diffusers and transformers installed
# (`pip install -e .` or PYTHONPATH=.).  Each stage has its own time limit, so a slow or failing stage
# costs only its own figures; results go to $OUT (default gpu-results/), one text file per stage.
#
#   bash benchmarks/gpu_session.sh            # sd15-random (SD-1.5's architecture, random weights)
#   MODEL=/models/sd15 bash benchmarks/gpu_session.sh   # real weights: same speed, real images
#   STAGES="cudagraphs_b16 serving_cudagraphs" bash benchmarks/gpu_session.sh   # only these stages
#
# All stages take about 30 minutes on a fresh machine (each cold compilation of SD-1.5's UNet ~90 s).
# In a short lease run the stages still unmeasured first (docs/codec.md, "Speed options"):
# cudagraphs_b16 (~5 min), serving_cudagraphs (~6 min), tuned_b1 (~8 min).
set -u
OUT=${OUT:-gpu-results}
MODEL=${MODEL:-sd15-random}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GDMCOM_CACHE=${GDMCOM_CACHE:-/tmp/gdmcom-cache}
stage() {  # stage NAME SECONDS COMMAND...: run with a limit, keep its output
    local name=$1 limit=$2; shift 2
    if [ -n "${STAGES:-}" ] && [[ " $STAGES " != *" $name "* ]]; then return; fi
    echo "=== $name ($(date -u +%T), limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt" | grep -v -e Warning -e warn_once -e "^  " -e "^$"
    echo "=== $name: rc ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}
{ nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"
# 1. eager, fp16: latency (B=1) and throughput vs batch; the first run builds sd15-random once
stage eager_fp16 ${T1:-200} $PY benchmarks/bench_gpu.py --device cuda --model "$MODEL" --size 512 \
    --dtype fp16 --batch 1 4 16 --repeat 2
# 2. eager, bf16 at the batch that gave most images/s in fp16
stage eager_bf16 ${T2:-60} $PY benchmarks/bench_gpu.py --device cuda --model "$MODEL" --size 512 \
    --dtype bf16 --batch 16 --repeat 2
# 3. torch.compile (inductor) with CUDA graphs, channels_last, fused QKV: single-image latency, then
#    throughput. A cold compilation of SD-1.5's UNet takes ~90 s per shape on a 16-core host (img2img's
#    scalar timestep is one more shape); later stages reuse inductor's on-disk cache.
stage cudagraphs_b1 ${T3:-300} $PY benchmarks/bench_gpu.py --device cuda --model "$MODEL" --size 512 \
    --dtype fp16 --batch 1 --repeat 5 --channels-last --compile-mode reduce-overhead --fuse-qkv --torch-threads 0
stage cudagraphs_b16 ${T4:-300} $PY benchmarks/bench_gpu.py --device cuda --model "$MODEL" --size 512 \
    --dtype fp16 --batch 16 --repeat 2 --channels-last --compile-mode reduce-overhead --fuse-qkv --torch-threads 0
# 4. step-level vs batch-at-a-time scheduling on the GPU (mixed SNR 0-20 dB, so mixed N), eager and with
#    CUDA graphs (the warm-up compiles every batch size 1..8 before the timed runs)
stage serving ${T5:-120} $PY benchmarks/bench_serving.py --device cuda --model "$MODEL" --size 256 \
    --max-batch 8 --requests 32 --rounds 1 --torch-threads 0
stage serving_cudagraphs ${T6:-400} $PY benchmarks/bench_serving.py --device cuda --model "$MODEL" --size 256 \
    --max-batch 8 --requests 32 --rounds 1 --torch-threads 0 --channels-last --compile-mode reduce-overhead
# 5. the VAE compiled too, and diffusers' inductor tuning (longest compilation: last)
stage tuned_b1 ${T7:-500} $PY benchmarks/bench_gpu.py --device cuda --model "$MODEL" --size 512 \
    --dtype fp16 --batch 1 --repeat 5 --channels-last --compile-mode reduce-overhead --fuse-qkv --compile-vae \
    --inductor-tuning --no-anchor --torch-threads 0
