#!/usr/bin/env bash
# GPU check of the block-KV attention kernels (issue 6), for one H200 (or any CUDA GPU).
#
# Runs from the repository root of a fresh checkout:   bash scripts/gpu_check.sh [OUT_DIR]
# 1. the kernel test suite with the Pallas kernels compiled by Triton (not interpret mode);
# 2. experiments/bench_kernels.py --sizes=gpu (Pallas vs reference vs jax.nn.dot_product_attention).
# Total under 5 minutes (each step has its own time limit). Logs and the benchmark's
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

echo "gpu_check status: $status (logs in $OUT_DIR)"
exit "$status"
