#!/usr/bin/env bash
# One lease of a GPU (the device tool, ~15 minutes in all): the numerics of every GPU form
# (experiments/gpu_check.py), then the benchmark at the GPU anchors, each inside a time budget
# so that the whole run ends well within one call. Uses the machine's own python3 (its JAX,
# Flax, PyTorch with CUDA); results and logs go to $OUT (default results/gpu).
#
#     OUT=results/gpu TOTAL_S=420 bash experiments/gpu_session.sh
#
# The first lease (H200, 2026-12-04; README, Speed on a GPU) measured float32 only, compiles
# taking most of it: BENCH_ARGS="--dtypes bfloat16,float32" puts what it left first.
set -u -o pipefail
OUT=${OUT:-results/gpu}
TOTAL_S=${TOTAL_S:-420}   # seconds for the whole script; the benchmark gets what the check leaves
CHECK_S=${CHECK_S:-150}
mkdir -p "$OUT"
start=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv
  python3 -c "import sys, jax, jaxlib, flax, torch; print(sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

# The Pallas kernels first, alone: a Triton compile that fails or hangs must not cost the rest.
timeout "${PALLAS_S:-100}" python3 experiments/gpu_check.py --cells lstm --forms pallas \
  --sizes 5x37x40,16x64x64,16x64x128 --out "$OUT/gpu_check_pallas.json" 2>&1 | tee "$OUT/gpu_check.log"
# Benchmarked unless the probe hung (a kernel that fails to compile is skipped by the benchmark).
if (( $? == 124 )); then impls=scan; else impls=scan,pallas; fi
timeout "$CHECK_S" python3 experiments/gpu_check.py --sizes "${CHECK_SIZES:-5x37x40,16x64x256}" \
  --forms fused --out "$OUT/gpu_check.json" 2>&1 | tee -a "$OUT/gpu_check.log"

budget=$(( TOTAL_S - ($(date +%s) - start) ))
(( budget < 60 )) && budget=60
python3 experiments/benchmark.py --unrolls 1 --impls "$impls" --peers flax,torch-cudnn \
  --repeats 20 --warmup 2 --time-budget "$budget" ${BENCH_ARGS:-} --out "$OUT/benchmark_gpu.json" 2>&1 \
  | tee "$OUT/benchmark.log"
echo "gpu_session: $(( $(date +%s) - start )) s"
