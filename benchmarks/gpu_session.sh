#!/usr/bin/env bash
# One GPU session of the throughput figures (docs/codec.md "GPU path", docs/server.md): run from the
# repository root on a CUDA machine with torch, diffusers and transformers installed
# (`pip install -e .` or PYTHONPATH=.).  Each stage has its own time limit, so a slow or failing stage
# costs only its own figures; results go to $OUT (default gpu-results/), one text file per stage.
#
#   bash benchmarks/gpu_session.sh            # sd15-random (SD-1.5's architecture, random weights)
#   MODEL=/models/sd15 bash benchmarks/gpu_session.sh   # real weights: same speed, real images
set -u
OUT=${OUT:-gpu-results}
MODEL=${MODEL:-sd15-random}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GDMCOM_CACHE=${GDMCOM_CACHE:-/tmp/gdmcom-cache}
stage() {  # stage NAME SECONDS COMMAND...: run with a limit, keep its output
    local name=$1 limit=$2; shift 2
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
# 3. torch.compile (inductor) + channels_last: single-image latency, then CUDA graphs (reduce-overhead)
stage compiled_fp16 ${T3:-130} $PY benchmarks/bench_gpu.py --device cuda --model "$MODEL" --size 512 \
    --dtype fp16 --batch 1 16 --repeat 3 --compile --channels-last
stage cudagraphs_fp16 ${T4:-90} $PY benchmarks/bench_gpu.py --device cuda --model "$MODEL" --size 512 \
    --dtype fp16 --batch 1 --repeat 3 --compile --channels-last --compile-mode reduce-overhead
# 4. step-level vs batch-at-a-time scheduling on the GPU (mixed SNR 0-20 dB, so mixed N)
stage serving ${T5:-80} $PY benchmarks/bench_serving.py --device cuda --model "$MODEL" --size 256 \
    --max-batch 8 --requests 32 --rounds 1 --torch-threads 0
