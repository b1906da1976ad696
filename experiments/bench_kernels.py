"""Benchmark the block-KV attention kernels: Pallas vs the plain-jnp reference vs dense attention.

Sweeps prefill (cached context x new tokens), decode (batch x context) and the KV scatter, for a
GQA model (Qwen2.5-32B attention shape: N=40, K=8, H=128) and an MLA model (DS 27B: N=32,
C=512, R=64). Every Pallas result is checked against the reference; on GPU the prefill kernel is
also compared with ``jax.nn.dot_product_attention`` (XLA and cuDNN) on the equivalent dense
problem (one contiguous sequence of cached + new keys, no mask: 0.8% more work than ours at
32K + 512). Throughput counts only the work each implementation must do: attention FLOPs
``2 * N * (Hk + Hv)`` per visible (query, key) pair, KV bytes read for decode, bytes moved for the
scatter.

Commands:
  CPU quick mode (tiny shapes, Pallas in interpret mode; about a minute):
    python experiments/bench_kernels.py --workdir=/tmp/bench_kernels
  GPU (136 s on one H200, most of it compiling; inputs are drawn on the device; four tile
  configurations are tried for ``--tune_problem``, the headline, and the fastest is timed again on
  fresh runs for its figure):
    python experiments/bench_kernels.py --workdir=/tmp/bench_kernels --sizes=gpu
  Some problems only: --problems=decode_b32_32k,kv_write_b32_512

Output: one line per (problem, implementation) with the median time over ``--repeats`` and its
min..max, then ``name: value`` lines, the same names and values as ``workdir/metrics.json``:
per problem and implementation ``<problem>_<impl>_ms`` and ``<problem>_<impl>_tflops`` (prefill)
or ``_gbps`` (decode, scatter), ``<problem>_pallas_speedup_vs_reference`` and, on GPU,
``<problem>_ratio_vs_dense`` (Pallas TFLOP/s over the best dense TFLOP/s; the headline is
``prefill_32k_512_ratio_vs_dense``); each figure is the median over the repeats, followed by its
``_min`` and ``_max`` (a ratio's from the repeats' extremes: the fastest of one side over the
slowest of the other), then ``pallas_matches_reference`` (1 or 0). A figure that is not a number
prints as ``nan`` and is ``null`` in ``metrics.json``. ``workdir/results.csv`` holds every row,
``workdir/env.json`` the versions and device. Both files are rewritten after every problem, so a
run stopped part-way keeps what it measured. Exits non-zero if any Pallas result disagrees with the
reference. A bad flag (``--repeats`` < 1, ``--seed`` out of range, an unknown ``--problems`` name, a
``--tune_problem`` that is no prefill problem of the run) stops the run before any work with one
line naming it.
Figures of one H200: ``experiments/results/gpu_check/kernels/``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import platform
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from dualpath_jax.config import ConfigError
from dualpath_jax.kernels.decode_attention import decode_attention, decode_attention_mla
from dualpath_jax.kernels.kv_write import kv_write
from dualpath_jax.kernels.prefill_attention import prefill_attention, prefill_attention_mla
from dualpath_jax.metrics import writers
from dualpath_jax.model.spec import get_spec
from dualpath_jax.shapes import BLOCK_TOKENS
from dualpath_jax.studies import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory (metrics.json, results.csv, env.json).")
flags.DEFINE_enum("sizes", "auto", ["auto", "quick", "gpu"], "Problem sizes; auto = gpu on a GPU backend.")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Activation / KV dtype.")
flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median and min..max reported), after one warm-up; "
                     ">= 1.")
flags.DEFINE_bool("tune", True, "Try a few Pallas tile configurations for --tune_problem, then time the fastest "
                  "again on fresh runs (the figure reported).")
flags.DEFINE_string("tune_problem", "prefill_32k_512",
                    "The prefill problem --tune tunes (the GPU headline by default); given explicitly, it must be a "
                    "prefill problem that the run times.")
flags.DEFINE_integer("seed", 0, f"Random seed for the inputs, 0..{2**32 - 2}.")
flags.DEFINE_list("problems", [], "Run only these problems (names as printed, e.g. decode_mla_b32_32k); "
                  "empty: every problem of --sizes.")

# Error bounds of the Pallas-vs-reference check, keyed by dtype (outputs are O(1) or smaller).
TOLERANCE = {"bfloat16": 3e-2, "float32": 1e-4}
# Tile configurations tried on GPU for the headline problem: (block_m, num_warps, num_stages, kv_splits).
TUNE_CONFIGS = [(128, 8, 2, None), (128, 8, 3, None), (64, 4, 3, None), (128, 8, 2, 1)]


@dataclasses.dataclass(frozen=True)
class Dims:
    """Attention shape: GQA (n, k, h) or MLA (n, c, r)."""

    family: str
    n: int
    k: int = 1
    h: int = 0
    c: int = 0
    r: int = 0

    @property
    def key_width(self) -> int:
        return self.h if self.family == "gqa" else self.c + self.r

    @property
    def value_width(self) -> int:
        return self.h if self.family == "gqa" else self.c

    @property
    def kv_values_per_token(self) -> int:
        """Cached scalars per token: 2 K H (GQA) or C + R (MLA, value = latent)."""
        return 2 * self.k * self.h if self.family == "gqa" else self.c + self.r


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str  # prefill | decode | kv_write
    dims: Dims
    batch: int
    cached: int  # prefill: cached tokens; decode: kv_len; kv_write: tokens before the new ones
    new: int  # new tokens per sequence (decode: 1)

    @property
    def name(self) -> str:
        fam = "" if self.dims.family == "gqa" else "mla_"
        if self.kind == "prefill":
            batch = "" if self.batch == 1 else f"b{self.batch}_"
            return f"prefill_{fam}{batch}{_tokens(self.cached)}_{_tokens(self.new)}"
        if self.kind == "decode":
            return f"decode_{fam}b{self.batch}_{_tokens(self.cached)}"
        return f"kv_write_{fam}b{self.batch}_{_tokens(self.new)}"


def _tokens(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def problems(sizes: str) -> list[Problem]:
    if sizes == "gpu":
        qwen, ds = get_spec("qwen2.5-32b"), get_spec("ds-27b")
        gqa = Dims("gqa", n=qwen.n_heads, k=qwen.n_kv_heads, h=qwen.head_dim)
        mla = Dims("mla", n=ds.n_heads, c=ds.kv_lora_rank, r=ds.qk_rope_head_dim)
        return [Problem("prefill", gqa, 1, 32768, 512), Problem("prefill", gqa, 1, 8192, 512),
                Problem("prefill", gqa, 1, 0, 4096), Problem("prefill", gqa, 1, 32768, 2048),
                Problem("prefill", mla, 1, 32768, 512),
                Problem("decode", gqa, 32, 32768, 1), Problem("decode", gqa, 32, 4096, 1),
                Problem("decode", mla, 32, 32768, 1),
                Problem("kv_write", gqa, 32, 4000, 512)]
    gqa = Dims("gqa", n=8, k=2, h=32)
    mla = Dims("mla", n=4, c=32, r=16)
    return [Problem("prefill", gqa, 1, 192, 32), Problem("prefill", gqa, 2, 64, 16),
            Problem("prefill", mla, 1, 128, 16),
            Problem("decode", gqa, 4, 256, 1), Problem("decode", mla, 4, 256, 1),
            Problem("kv_write", gqa, 4, 100, 32)]


# ---- inputs ----------------------------------------------------------------------------------

class _Inputs:
    """Random inputs made on the default device (``jax.random``: gigabytes of KV in milliseconds on a
    GPU, where a host generator takes tens of seconds), and the block tables' permutations (numpy)."""

    def __init__(self, seed: int):
        self.key = jax.random.PRNGKey(seed)
        self.rng = np.random.default_rng(seed)

    def arr(self, shape, dtype) -> jax.Array:
        """``dtype[shape]``, normal with standard deviation 0.5."""
        self.key, k = jax.random.split(self.key)
        return (0.5 * jax.random.normal(k, shape, jnp.float32)).astype(dtype)

    def pool(self, p: Problem, dtype, z: int):
        """Random block pools holding each sequence's ``cached`` tokens (room for ``new`` more),
        with a shuffled block table: the paged layout the kernels see in the engine."""
        per_seq = -(-(p.cached + p.new) // z)
        ids = self.rng.permutation(p.batch * per_seq).astype(np.int32)
        table = jnp.asarray(ids.reshape(p.batch, per_seq))
        total = p.batch * per_seq
        d = p.dims
        shapes = [(total, z, d.k, d.h)] * 2 if d.family == "gqa" else [(total, z, d.c), (total, z, d.r)]
        return [self.arr(s, dtype) for s in shapes], table


def build(p: Problem, dtype, seed: int):
    """``(fn, args, work, unit, donate)``: ``fn(*args, implementation=..., **tuning)`` runs the
    problem; ``work`` is in ``unit`` (flop or byte); ``donate`` names the argument to donate."""
    inp = _Inputs(seed)
    d = p.dims
    z = BLOCK_TOKENS
    pools, table = inp.pool(p, dtype, z)
    b = p.batch
    scale = float(d.key_width) ** -0.5
    if p.kind == "prefill":
        cached = jnp.full((b,), p.cached, jnp.int32)
        new = jnp.full((b,), p.new, jnp.int32)
        if d.family == "gqa":
            args = (inp.arr((b, p.new, d.n, d.h), dtype), inp.arr((b, p.new, d.k, d.h), dtype),
                    inp.arr((b, p.new, d.k, d.h), dtype), *pools, table, cached, new)
            fn = prefill_attention
        else:
            args = (inp.arr((b, p.new, d.n, d.c), dtype), inp.arr((b, p.new, d.n, d.r), dtype),
                    inp.arr((b, p.new, d.c), dtype), inp.arr((b, p.new, d.r), dtype), *pools, table,
                    cached, new)
            fn = prefill_attention_mla
        pairs = b * (p.new * p.cached + p.new * (p.new + 1) // 2)
        return (functools.partial(fn, scale=scale), args, 2.0 * d.n * (d.key_width + d.value_width) * pairs, "flop",
                None)
    if p.kind == "decode":
        kv_len = jnp.full((b,), p.cached, jnp.int32)
        if d.family == "gqa":
            args = (inp.arr((b, d.n, d.h), dtype), *pools, table, kv_len)
            fn = decode_attention
        else:
            args = (inp.arr((b, d.n, d.c), dtype), inp.arr((b, d.n, d.r), dtype), *pools, table, kv_len)
            fn = decode_attention_mla
        kv_bytes = b * p.cached * d.kv_values_per_token * jnp.dtype(dtype).itemsize
        return functools.partial(fn, scale=scale), args, float(kv_bytes), "byte", None
    cached = jnp.full((b,), p.cached, jnp.int32)
    new = jnp.full((b,), p.new, jnp.int32)
    rows = inp.arr((b, p.new, *pools[0].shape[2:]), dtype)
    moved = 2 * rows.size * rows.dtype.itemsize  # read the new rows, write them into the pool
    return kv_write, (pools[0], rows, table, cached, new), float(moved), "byte", 0


def dense_baselines(p: Problem, dtype, seed: int):
    """``jax.nn.dot_product_attention`` on one contiguous sequence of cached + new keys (GPU); none
    for MLA, whose value width differs from its key width (the dense API needs them equal)."""
    inp = _Inputs(seed + 1)
    d = p.dims
    if d.key_width != d.value_width:
        return {}
    s = p.cached + p.new
    q = inp.arr((p.batch, p.new, d.n, d.key_width), dtype)
    k = inp.arr((p.batch, s, d.k, d.key_width), dtype)
    v = inp.arr((p.batch, s, d.k, d.value_width), dtype)
    flops = 2.0 * d.n * (d.key_width + d.value_width) * p.batch * p.new * s
    return {f"dense_{impl}": (functools.partial(jax.nn.dot_product_attention, implementation=impl), (q, k, v), flops)
            for impl in ("xla", "cudnn")}


# ---- measurement -----------------------------------------------------------------------------

class Measured(NamedTuple):
    """One implementation's times (seconds: median, min, max over the repeats), max |error| against
    the reference, note, and the work its rate counts (flop or byte)."""

    secs: float
    lo: float
    hi: float
    err: float
    note: str
    work: float

    def rate(self, t: float | None = None) -> float:
        """Work per second at time ``t`` (default: the median)."""
        return self.work / (self.secs if t is None else t)


def _max_err(out, ref) -> float:
    return float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))


def timed(fn, args, repeats: int, donate: int | None = None):
    """Compile + warm up once, then ``(output, median, min, max)`` wall time of ``repeats`` runs (seconds).

    Arrays are passed as arguments (never baked into the program). With ``donate``, that
    argument is donated (updated in place, as the engine does) and re-created before each run.
    """
    jitted = jax.jit(fn, donate_argnums=() if donate is None else (donate,))

    def fresh():
        if donate is None:
            return args
        fresh_args = list(args)
        fresh_args[donate] = jax.block_until_ready(jnp.copy(args[donate]))
        return fresh_args

    out = jax.block_until_ready(jitted(*fresh()))
    times = []
    for _ in range(repeats):
        call_args = fresh()
        start = time.perf_counter()
        jax.block_until_ready(jitted(*call_args))
        times.append(time.perf_counter() - start)
    return out, float(np.median(times)), float(np.min(times)), float(np.max(times))


def env_info() -> dict:
    dev = jax.devices()[0]
    return {"jax": jax.__version__, "backend": jax.default_backend(), "device": dev.device_kind,
            "python": platform.python_version(), "host": platform.node()}


def _write(workdir: str, rows: list, metrics: dict) -> None:
    """``results.csv`` and ``metrics.json`` as they stand (rewritten after every problem, so a run
    stopped part-way keeps what it measured)."""
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["problem"])
        writer.writeheader()
        writer.writerows(rows)
    writers.write_json(os.path.join(workdir, "metrics.json"), metrics)  # strict JSON: NaN -> null


def _check_problems(sizes: str, names: list[str]) -> None:
    """Raise ConfigError (field ``problems``) for a name that is not a problem of ``sizes``
    (``auto``: of either size set)."""
    known = [p.name for z in (("quick", "gpu") if sizes == "auto" else (sizes,)) for p in problems(z)]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError("problems", f"unknown for --sizes={sizes}: {', '.join(unknown)} (known: {', '.join(known)})")


def _check_tune_problem(sizes: str, names: list[str], resolved_from: str = "") -> None:
    """Raise ConfigError (field ``tune_problem``) when ``--tune_problem`` is given (not the
    default) with ``--tune`` but names no prefill problem of ``sizes`` (``auto``: of either size
    set) that the run times (those of ``names`` if any): it would tune nothing, silently.
    ``resolved_from``: how ``sizes`` was chosen, for the message (``--sizes=auto`` on a backend)."""
    if not FLAGS.tune or not FLAGS["tune_problem"].present:
        return
    allowed = [p.name for z in (("quick", "gpu") if sizes == "auto" else (sizes,)) for p in problems(z)
               if p.kind == "prefill" and (not names or p.name in names)]
    if FLAGS.tune_problem not in allowed:
        where = f"--sizes={sizes}" + (f" ({resolved_from})" if resolved_from else "")
        where += f" among --problems={','.join(names)}" if names else ""
        raise ConfigError("tune_problem", f"{FLAGS.tune_problem!r} is not a prefill problem of {where} "
                          f"(allowed: {', '.join(allowed) or 'none, no prefill problem runs'})")


def _check_flags() -> None:
    """One ConfigError naming the first bad flag, before any work (the checks of ``--problems``
    and ``--tune_problem`` against the resolved sizes come again once JAX has its backend)."""
    if FLAGS.repeats < 1:
        raise ConfigError("repeats", f"must be >= 1 (got {FLAGS.repeats})")
    if not 0 <= FLAGS.seed <= 2**32 - 2:  # numpy refuses < 0; JAX keeps only 32 bits; the dense inputs use seed + 1
        raise ConfigError("seed", f"must be in 0..{2**32 - 2} (got {FLAGS.seed})")
    _check_problems(FLAGS.sizes, FLAGS.problems)
    _check_tune_problem(FLAGS.sizes, FLAGS.problems)


def _put(metrics: dict, name: str, median: float, lo: float, hi: float, digits: int) -> None:
    """``name`` (the median), ``name_min`` and ``name_max``, rounded to ``digits`` decimals."""
    for key, value in ((name, median), (f"{name}_min", lo), (f"{name}_max", hi)):
        metrics[key] = round(value, digits)


def main(argv):
    del argv
    _check_flags()  # before JAX picks its backend
    on_gpu = jax.default_backend() == "gpu"
    sizes = ("gpu" if on_gpu else "quick") if FLAGS.sizes == "auto" else FLAGS.sizes
    _check_problems(sizes, FLAGS.problems)
    _check_tune_problem(sizes, FLAGS.problems,
                        f"--sizes=auto on the {jax.default_backend()} backend" if FLAGS.sizes == "auto" else "")
    dtype = jnp.dtype(FLAGS.dtype)
    todo = [p for p in problems(sizes) if not FLAGS.problems or p.name in FLAGS.problems]
    cli.open_workdir(FLAGS.workdir)
    with open(os.path.join(FLAGS.workdir, "env.json"), "w") as f:
        json.dump(env_info(), f, indent=2)
    rows, metrics, failures = [], {}, []
    for p in todo:
        fn, args, work, unit, donate = build(p, dtype, FLAGS.seed)
        per_s = 1e12 if unit == "flop" else 1e9
        label = "TFLOP/s" if unit == "flop" else "GB/s"
        ref, ref_s, ref_lo, ref_hi = timed(functools.partial(fn, implementation="reference", check_values=False),
                                           args, FLAGS.repeats, donate)
        results = {"reference": Measured(ref_s, ref_lo, ref_hi, 0.0, "", work)}
        pallas = functools.partial(fn, implementation="pallas", check_values=False)
        configs = [(None, None, None, None)]
        if FLAGS.tune and p.kind == "prefill" and p.name == FLAGS.tune_problem:
            configs = TUNE_CONFIGS
        best = None
        for bm, warps, stages, splits in configs:
            tuning = {}
            if p.kind == "prefill":
                tuning = dict(block_m=bm, num_warps=warps, num_stages=stages, kv_splits=splits)
            try:
                out, secs, lo, hi = timed(functools.partial(pallas, **tuning), args, FLAGS.repeats, donate)
            except Exception as err:  # a tile configuration Triton rejects is reported, not fatal
                logging.warning("%s pallas %s failed: %s", p.name, tuning, str(err).splitlines()[0][:300])
                continue
            err_abs = _max_err(out, ref)
            desc = ",".join(f"{k}={v}" for k, v in tuning.items() if v is not None) or "default"
            if len(configs) > 1:
                print(f"  tune {p.name} [{desc}]: {secs * 1e3:.3f} ms, {work / secs / per_s:.2f} {label}")
            if best is None or secs < best.secs:
                best, best_tuning = Measured(secs, lo, hi, err_abs, desc, work), tuning
        if best is None:
            failures.append(f"{p.name}: no Pallas configuration ran")
            continue
        if len(configs) > 1:  # the fastest of several on the same runs is biased low: time it again
            out, secs, lo, hi = timed(functools.partial(pallas, **best_tuning), args, FLAGS.repeats, donate)
            note = f"{best.note} (the fastest of {len(configs)}, timed again)"
            best = Measured(secs, lo, hi, _max_err(out, ref), note, work)
            print(f"  tune {p.name}: [{best.note}]: {secs * 1e3:.3f} ms, {best.rate() / per_s:.2f} {label}")
        results["pallas"] = best
        if not best.err <= TOLERANCE[FLAGS.dtype]:  # a NaN error fails too
            failures.append(f"{p.name}: max |pallas - reference| = {best.err:.3g} > {TOLERANCE[FLAGS.dtype]}")
        if on_gpu and p.kind == "prefill":
            for name, (dense_fn, dense_args, flops) in dense_baselines(p, dtype, FLAGS.seed).items():
                try:
                    _, secs, lo, hi = timed(dense_fn, dense_args, FLAGS.repeats)
                    results[name] = Measured(secs, lo, hi, float("nan"), "no mask, cached+new keys", flops)
                except Exception as err:
                    logging.warning("%s %s failed: %s", p.name, name, str(err).splitlines()[0][:300])
        for impl, m in results.items():
            rate = m.rate() / per_s
            print(f"{p.name:28s} {impl:10s} {m.secs * 1e3:10.3f} ms ({m.lo * 1e3:.3f}..{m.hi * 1e3:.3f}) {rate:10.3f} "
                  f"{label:7s} max_err={m.err:.2e} {m.note}")
            rows.append(dict(problem=p.name, implementation=impl, time_ms=m.secs * 1e3, time_min_ms=m.lo * 1e3,
                             time_max_ms=m.hi * 1e3, rate=rate, unit=label, max_abs_err=m.err, note=m.note))
            key = "tflops" if unit == "flop" else "gbps"
            _put(metrics, f"{p.name}_{impl}_{key}", rate, m.rate(m.hi) / per_s, m.rate(m.lo) / per_s, 4)
            _put(metrics, f"{p.name}_{impl}_ms", m.secs * 1e3, m.lo * 1e3, m.hi * 1e3, 4)
        # reference time over Pallas time; _min/_max over the repeats' extremes
        _put(metrics, f"{p.name}_pallas_speedup_vs_reference", ref_s / best.secs, ref_lo / best.hi,
             ref_hi / best.lo, 3)
        dense = [results[k] for k in ("dense_xla", "dense_cudnn") if k in results]
        if dense:  # Pallas FLOP/s over the best dense FLOP/s (medians); _min/_max over the repeats' extremes
            top = max(dense, key=Measured.rate)
            _put(metrics, f"{p.name}_ratio_vs_dense", best.rate() / top.rate(), best.rate(best.hi) / top.rate(top.lo),
                 best.rate(best.lo) / top.rate(top.hi), 4)
        _write(FLAGS.workdir, rows, {**metrics, "pallas_matches_reference": int(not failures)})
    metrics["pallas_matches_reference"] = int(not failures)
    _write(FLAGS.workdir, rows, metrics)
    for failure in failures:
        print(f"CHECK FAILED: {failure}")
    for name, value in metrics.items():
        print(f"{name}: {value}")  # repr of a float: the number written; NaN (null in the JSON) prints nan
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)
