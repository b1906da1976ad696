#!/usr/bin/env bash
# GPU check of the block-KV attention kernels (issue 6), for one H200 (or any CUDA GPU).
#
# Runs from the repository root of a fresh checkout:   bash scripts/gpu_check.sh [OUT_DIR]
# 1. the kernel test suite with the Pallas kernels compiled by Triton (not interpret mode);
# 2. experiments/bench_kernels.py --sizes=gpu (Pallas vs reference vs jax.nn.dot_product_attention);
# 3. the engine ablation (:quick, one repeat) on the Ray runtime, every node a process with its share
#    of the GPUs (one GPU per engine when there are three), if the image has Ray.
# Total under 10 minutes (each step has its own time limit). Logs and the benchmark's
# metrics.json / results.csv / env.json go to OUT_DIR (default: $OUT, else /tmp/gpu_check).
#
# Nothing is installed: the device image has no network and already holds what is needed
# (python3 with jax + CUDA plugin, pytest, absl-py, numpy); the package is used from the
# checkout via PYTHONPATH. Override the interpreter with PYTHON=... .
set -uo pipefail

OUT_DIR="${1:-${OUT:-/tmp/gpu_check}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT_DIR/nvidia_smi.txt"
"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/env.txt" || exit 2
import jax
import jax.numpy as jnp
print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
assert jax.default_backend() == "gpu", "no GPU visible to JAX"
EOF

status=0
echo "== kernel tests (Pallas compiled for the GPU) =="
timeout 150 "$PY" -m pytest -q -p no:cacheprovider --durations=8 \
  tests/test_kernels_prefill.py tests/test_kernels_decode.py tests/test_kernels_kv_write.py \
  tests/test_kernels_dense.py tests/test_kernels_model.py 2>&1 | tee "$OUT_DIR/tests.log"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "kernel tests failed (rc=$rc)"; status=1; }

echo "== kernel benchmark =="
timeout 140 "$PY" experiments/bench_kernels.py --workdir="$OUT_DIR/bench" --overwrite --sizes=gpu 2>&1 \
  | tee "$OUT_DIR/bench.log"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "benchmark failed (rc=$rc)"; status=1; }

echo "== engine on Ray: 1P2D, every node its own process on a share of the GPU(s) =="
if "$PY" -c "import ray, tensorstore, ml_collections" 2>/dev/null; then
  NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
  GPE=$("$PY" -c "print(min(1.0, max(int('${NGPU:-1}'), 1) / 3))")   # 3 engines: one GPU each when there are 3
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 280 "$PY" experiments/run_engine.py \
    --config=configs/engine_ablation.py:quick --config.runtime=ray --config.ray.gpus_per_engine="$GPE" \
    --config.repeats=1 --config.calibrate.passes=1 --workdir="$OUT_DIR/engine_ray" --overwrite 2>&1 \
    | tee "$OUT_DIR/engine_ray.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "Ray engine run failed (rc=$rc)"; status=1; }
else
  echo "skipped: ray, tensorstore or ml_collections is not installed in this image"
fi

echo "gpu_check status: $status (logs in $OUT_DIR)"
exit "$status"
