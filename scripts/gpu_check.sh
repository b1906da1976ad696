#!/usr/bin/env bash
# GPU check of the block-KV attention kernels, the engine on Ray and the KV transport, for one H200
# (or any CUDA GPU).
#
# Runs from the repository root of a fresh checkout:   bash scripts/gpu_check.sh [OUT_DIR]
# 1. the kernel test suite with the Pallas kernels compiled by Triton (not interpret mode);
# 2. experiments/bench_kernels.py --sizes=gpu (Pallas vs reference vs jax.nn.dot_product_attention);
# 3. the engine ablation (:quick, one repeat) on the Ray runtime, every node a process with its share
#    of the GPUs (one GPU per engine when there are three);
# 4. experiments/bench_transfer.py: Layer Block pulls through JAX's transfer server between two
#    processes on the GPU backend, against in-process copies.
# About 6.5 minutes on one H200 (41 s, 136 s, 189 s and 9 s); the steps' own time limits add up to
# 560 s. Logs and each step's metrics.json / results.csv / env.json go to OUT_DIR (default: $OUT,
# else /tmp/gpu_check); experiments/results/gpu_check/ holds the figures of such a run.
#
# Nothing is installed: the package is used from the checkout via PYTHONPATH, with the interpreter's
# packages (PYTHON=..., default python3). Steps 1-2 need jax with its CUDA plugin, pytest,
# pytest-xdist, absl-py and numpy; steps 3-4 also need the engine's dependencies (ray, tensorstore,
# ml_collections, crc32c, flax, chex, scipy, safetensors, tqdm) and are skipped, said so, without them;
# step 3 also reads the agentic traces (../shared/data beside the checkout, or DUALPATH_DATA_DIR).
set -uo pipefail

OUT_DIR="${1:-${OUT:-/tmp/gpu_check}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # several processes share the GPU (test workers, Ray nodes)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT_DIR/nvidia_smi.txt"
"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/env.txt" || exit 2
import jax
import jax.numpy as jnp
import sys
print("python", sys.version.split()[0], "jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
assert jax.default_backend() == "gpu", "no GPU visible to JAX"
EOF

status=0
echo "== kernel tests (Pallas compiled for the GPU) =="
timeout 90 "$PY" -m pytest -q -p no:cacheprovider --durations=8 -n 4 \
  tests/test_kernels_prefill.py tests/test_kernels_decode.py tests/test_kernels_kv_write.py \
  tests/test_kernels_dense.py tests/test_kernels_model.py 2>&1 | tee "$OUT_DIR/tests.log"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "kernel tests failed (rc=$rc)"; status=1; }

echo "== kernel benchmark =="
timeout 170 "$PY" experiments/bench_kernels.py --workdir="$OUT_DIR/bench" --overwrite --sizes=gpu 2>&1 \
  | tee "$OUT_DIR/bench.log"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "benchmark failed (rc=$rc)"; status=1; }

ENGINE_DEPS="import ray, tensorstore, ml_collections, crc32c, flax, chex, scipy, safetensors, tqdm"
MISSING=""   # the import error when an engine dependency is missing
"$PY" -c "$ENGINE_DEPS" >/dev/null 2>&1 || MISSING=$("$PY" -c "$ENGINE_DEPS" 2>&1 | tail -1)
echo "== engine on Ray: 1P2D, every node its own process on a share of the GPU(s) =="
TRACES='from dualpath_jax.workload import agentic_dir; import sys; sys.exit(not any(agentic_dir().glob("*.json.gz")))'
if [ -n "$MISSING" ]; then
  echo "skipped: the engine's dependencies are not all installed for $PY ($MISSING)"
elif ! "$PY" -c "$TRACES" 2>/dev/null; then
  echo "skipped: no agentic traces (set DUALPATH_DATA_DIR to the folder holding agentic_traces/)"
else
  NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
  # 3 engines: one GPU each when there are 3, else a share (Ray counts GPUs in steps of 0.0001)
  GPE=$("$PY" -c "print(int(min(1.0, max(int('${NGPU:-1}'), 1) / 3) * 1e4) / 1e4)")
  timeout 240 "$PY" experiments/run_engine.py \
    --config=configs/engine_ablation.py:quick --config.runtime=ray --config.ray.gpus_per_engine="$GPE" \
    --config.repeats=1 --config.calibrate.passes=1 --workdir="$OUT_DIR/engine_ray" --overwrite 2>&1 \
    | tee "$OUT_DIR/engine_ray.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "Ray engine run failed (rc=$rc)"; status=1; }
fi

echo "== KV transport: transfer-server pulls between two processes on the GPU backend =="
if [ -z "$MISSING" ]; then
  timeout 60 "$PY" experiments/bench_transfer.py --workdir="$OUT_DIR/transfer" --overwrite --repeats=3 2>&1 \
    | tee "$OUT_DIR/transfer.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "transfer benchmark failed (rc=$rc)"; status=1; }
else
  echo "skipped: the engine's dependencies are not all installed for $PY ($MISSING)"
fi

echo "gpu_check status: $status (logs in $OUT_DIR)"
exit "$status"
