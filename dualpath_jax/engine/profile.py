"""Start-up profiling of the PE forward: the time model of compute-quota batching, and warm-up.

PAPER.md section 5.5: the intra-engine scheduler maps each request's ``(cached, bsz)`` to an
attention time "with a relation fitted by profiling in advance". :func:`profile_prefill` times the
runtime's own per-layer prefill (:func:`dualpath_jax.engine.compute.prefill_layer`, all L
layers, cached KV already on the device) at a few ``(cached, bsz)`` pairs on one device, best of
``repeats`` after a compile call; :func:`fit_time_model` fits

    seconds_per_layer(cached, bsz) = a * bsz + b * flops_per_key * sum_{i<bsz} (cached + i + 1)

by least squares in relative error with a, b >= 0 (an :class:`~dualpath_jax.sched.AttentionTimeModel` of
L layers: its ``time_s``, the b term of all L layers, is the attention time of a forward that the
compute quota bounds; ``forward_s`` the whole forward; the attention FLOPs per key come from
:mod:`dualpath_jax.model.cost`). The layer is timed whole; the a term takes its per-token work.
The same calls compile the shape buckets the run will use (:func:`warm_up_prefill`: forwards of the PE's own
:class:`~dualpath_jax.engine.prefill.PrefillPath`, with the last-token logits per query bucket), so
compilation does not land inside a timed run; :class:`CompileClock` counts a process's
compilations (the studies' stages, a Ray node's warm-up); :func:`thread_cpu_s` splits processes'
CPU-seconds by kind of thread (XLA's, Python's, native libraries'), as ``bench_runtime``
compares the runtimes with it, knowing XLA's threads from :func:`start_backends`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence

import jax
import numpy as np

from dualpath_jax.engine.compute import bucket_blocks, bucket_tokens, prefill_layer
from dualpath_jax.engine.prefill import PrefillChunk, PrefillPath
from dualpath_jax.kvcache import layout_for
from dualpath_jax.model import cost
from dualpath_jax.model.forward import layer_kv_shapes
from dualpath_jax.model.spec import ModelSpec
from dualpath_jax.sched import AttentionTimeModel

__all__ = ["ProfileSample", "profile_prefill", "fit_time_model", "warm_up_prefill", "prefill_shape", "CompileClock",
           "start_backends", "thread_cpu_s"]


class CompileClock:
    """Seconds and count of XLA programs compiled in this process, from JAX's backend-compile
    events. A program read from the persistent compilation cache counts too (the event times the
    compile-or-load step; a load takes milliseconds), so a count of 0 means the in-memory cache
    held every program."""

    _EVENT = "/jax/core/compile/backend_compile_duration"
    seconds = 0.0
    count = 0
    _listening = False
    _lock = threading.Lock()

    @classmethod
    def start(cls) -> None:
        """Listen to JAX's compile events (once per process)."""
        with cls._lock:
            if not cls._listening:
                jax.monitoring.register_event_duration_secs_listener(cls._on_event)
                cls._listening = True

    @classmethod
    def _on_event(cls, event: str, duration_s: float, **_) -> None:
        if event == cls._EVENT:
            cls.seconds += duration_s
            cls.count += 1

    @classmethod
    def read(cls) -> tuple[float, int]:
        """``(seconds, programs)`` since the process began listening."""
        return cls.seconds, cls.count


@dataclasses.dataclass(frozen=True)
class ProfileSample:
    """Measured seconds of one layer (mean over the L layers of a forward) at ``(cached, bsz)``."""

    cached: int
    bsz: int
    layer_s: float


def prefill_shape(cached: int, bsz: int, block_tokens: int) -> tuple[int, int]:
    """``(T bucket, P bucket)`` the runtime uses for a request chunk."""
    return bucket_tokens(bsz), bucket_blocks(-(-cached // block_tokens))


def _inputs(spec: ModelSpec, cached: int, bsz: int, block_tokens: int, device, rng):
    t_b, p_b = prefill_shape(cached, bsz, block_tokens)
    put = lambda x: jax.device_put(x, device)  # noqa: E731
    h = put(rng.standard_normal((t_b, spec.d_model)).astype(np.float32))
    pos = put(np.arange(cached, cached + t_b, dtype=np.int32))
    cache = tuple(put(rng.standard_normal((p_b, block_tokens, *s)).astype(np.float32)) for s in layer_kv_shapes(spec))
    return h, pos, cache, put(np.int32(cached)), put(np.int32(bsz))


def _forward_s(params, spec, inputs) -> float:
    h, pos, cache, c, n = inputs
    t0 = time.perf_counter()
    for lp in params["layers"]:
        h, kv = prefill_layer(lp, spec, h, pos, cache, c, n)
    jax.block_until_ready((h, kv))
    return time.perf_counter() - t0


def warm_up_prefill(params: dict, spec: ModelSpec, device, shapes: Iterable[tuple[int, int]], *,
                    block_tokens: int = 64, path: PrefillPath | None = None) -> int:
    """Compile a PE's prefill programs on ``device`` for ``(T bucket, P bucket)`` shapes; returns the count.

    Runs one forward per shape through a :class:`~dualpath_jax.engine.prefill.PrefillPath` (``path``,
    default a new one over ``params`` on ``device`` with Z = ``block_tokens``): T tokens over
    ``(P - 1) * Z + 1`` cached tokens of zero KV (one block when P = 1), last-token logits. So the
    programs are compiled exactly as a PE calls them (same static arguments, shardings and
    committed inputs) and a run's first forward of a shape finds them in JAX's in-memory cache;
    compiling :func:`prefill_layer` with other call arguments would compile (or load from the
    persistent cache) a second copy inside the first timed run.
    """
    if path is None:
        path = PrefillPath(params, spec, layout_for(spec, block_tokens=block_tokens), device=device)
    z = path.layout.block_tokens
    shapes = sorted(set(shapes))
    for t_b, p_b in shapes:
        cached = (p_b - 1) * z + 1 if p_b > 1 else 1
        kv = [tuple(np.zeros((cached, *s), np.float32) for s in path.kv_shapes)]
        path.forward([PrefillChunk(np.zeros(t_b, np.int32), cached, logits="last")], lambda layer: [kv])
    return len(shapes)


def profile_prefill(params: dict, spec: ModelSpec, device, pairs: Sequence[tuple[int, int]], *,
                    block_tokens: int = 64, repeats: int = 3) -> list[ProfileSample]:
    """Per-layer forward seconds at each ``(cached, bsz)`` pair (best of ``repeats`` after a compile call).

    ``params`` must already be on ``device``.
    """
    rng = np.random.default_rng(0)
    out = []
    for cached, bsz in pairs:
        inputs = _inputs(spec, cached, bsz, block_tokens, device, rng)
        _forward_s(params, spec, inputs)
        best = min(_forward_s(params, spec, inputs) for _ in range(repeats))
        out.append(ProfileSample(int(cached), int(bsz), best / spec.n_layers))
    return out


def fit_time_model(spec: ModelSpec, samples: Sequence[ProfileSample]) -> AttentionTimeModel:
    """Non-negative least squares fit, in relative error (``sum((predicted / measured - 1) ** 2)``), of the
    two per-layer rates of :class:`AttentionTimeModel` (module docstring); the model has ``spec.n_layers``
    layers (``time_s``: a forward's attention seconds; ``forward_s``: the whole forward's; ``layer_s``
    one layer's).

    Raises:
      ValueError: fewer than two samples.
    """
    if len(samples) < 2:
        raise ValueError(f"samples: need at least 2 profiled pairs to fit a time model (got {len(samples)})")
    fpk = float(cost.prefill_flops(spec, 0, 1)["attention"]) / spec.n_layers  # FLOPs per (query, key) per layer
    probe = AttentionTimeModel(flops_per_key=fpk, seconds_per_flop=1.0, seconds_per_token=0.0)
    keys = np.array([probe.time_s(s.cached, s.bsz) for s in samples])  # = fpk * sum of keys
    tokens = np.array([float(s.bsz) for s in samples])
    y = np.array([s.layer_s for s in samples])
    # relative errors: every profiled shape counts alike (absolute ones let the largest decide the fit,
    # and the typical shapes came out 2-3x too slow)
    x = np.stack([tokens, keys], axis=1) / y[:, None]
    best = None
    for cols in ((0, 1), (0,), (1,)):  # full fit, then each coefficient alone (NNLS over 2 variables)
        coef, *_ = np.linalg.lstsq(x[:, cols], np.ones_like(y), rcond=None)
        if np.any(coef < 0):
            continue
        full = np.zeros(2)
        full[list(cols)] = coef
        err = float(np.sum((x @ full - 1) ** 2))
        if best is None or err < best[0]:
            best = (err, full)
    per_token, per_flop = best[1] if best is not None else (float(np.mean(y / tokens)), 0.0)
    return AttentionTimeModel(flops_per_key=fpk, seconds_per_flop=float(per_flop), seconds_per_token=float(per_token),
                              layers=spec.n_layers)


def _stat_cpu_s(path: str) -> float:
    """utime + stime (seconds) of a ``/proc/.../stat`` file."""
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_BACKEND_THREADS: frozenset[int] | None = None  # what start_backends' first call found (None: not called)


def _thread_ids() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:  # no Linux /proc
        return set()


def start_backends() -> frozenset[int]:
    """Initialize JAX's backends in this process (``jax.devices()``) and return the native ids of
    the threads that started meanwhile (Linux ``/proc``): XLA's. Besides its intra-op pool, named
    ``tf_XLA...``, XLA's CPU client runs computations on threads that carry no name of their own
    (they inherit the creating thread's, ``python`` or a Ray actor's ``ray::...``), so only the
    moment they start tells them from the interpreter's threads.

    Call it before anything else initializes a backend (a ``jax.devices()``, the first array, a
    device array unpickled); later calls return what the first one found. A first call after the
    backends started returns an empty set and warns (``RuntimeWarning``): those threads then count
    as ``python`` in :func:`thread_cpu_s`.
    """
    global _BACKEND_THREADS
    from jax._src import xla_bridge  # noqa: PLC0415 - whether the backends started, without starting them

    if _BACKEND_THREADS is not None:
        return _BACKEND_THREADS
    started = getattr(xla_bridge, "backends_are_initialized", lambda: bool(getattr(xla_bridge, "_backends", {})))
    if started():
        warnings.warn("start_backends: JAX's backends had already started; XLA's unnamed threads will count as "
                      "python in thread_cpu_s", RuntimeWarning, stacklevel=2)
        _BACKEND_THREADS = frozenset()
        return _BACKEND_THREADS
    before = _thread_ids()
    jax.devices()
    _BACKEND_THREADS = frozenset(_thread_ids() - before)
    return _BACKEND_THREADS


def thread_cpu_s(pids: Iterable[int], xla_threads: Mapping[int, Iterable[int]] | None = None) -> dict[str, float]:
    """CPU-seconds processes ``pids`` have used so far, by kind of thread (Linux ``/proc``;
    NaN for every kind elsewhere):

    * ``xla``: XLA's threads: its intra-op pool (named ``tf_XLA...``) and, in a process of
      ``xla_threads`` (pid -> native thread ids, as :func:`start_backends` returns them), the
      threads its CPU client runs computations on (those of them that carry the inherited name);
    * ``native``: threads a native library named (Ray's core worker ``worker.io``, gRPC pollers,
      tensorstore's pool, ...);
    * ``python``: the rest of each process's total: the threads that carry the process's (or a
      Ray actor's ``ray::...``) name, as a Python thread inherits it, and every thread that has
      already ended (the process total keeps them; a run's workers are Python threads). This is
      the interpreter's work and the native code those threads run inline (a dispatch, a copy,
      a pickle); in a process missing from ``xla_threads``, XLA's unnamed threads too.

    A process that is gone counts nothing. Resolution: the clock tick (10 ms, ``SC_CLK_TCK``).
    """
    out = {"xla": 0.0, "native": 0.0, "python": 0.0}
    if not os.path.isdir("/proc/self/task"):
        return {k: float("nan") for k in out}
    xla_threads = xla_threads or {}
    for pid in dict.fromkeys(int(p) for p in pids):
        xla_tids = {int(t) for t in xla_threads.get(pid, ())}
        try:
            total = _stat_cpu_s(f"/proc/{pid}/stat")
            with open(f"/proc/{pid}/comm") as f:
                own = f.read().strip()
            kinds = {"xla": 0.0, "native": 0.0}
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{tid}/comm") as f:
                        name = f.read().strip()
                    cpu = _stat_cpu_s(f"/proc/{pid}/task/{tid}/stat")
                except OSError:  # the thread ended meanwhile: in the process total
                    continue
                inherited = name == own or name.startswith("ray::") or name.startswith("python")
                if name.startswith("tf_XLA") or (inherited and int(tid) in xla_tids):
                    kinds["xla"] += cpu
                elif not inherited:
                    kinds["native"] += cpu
        except OSError:  # the process is gone
            continue
        out["xla"] += kinds["xla"]
        out["native"] += kinds["native"]
        out["python"] += max(0.0, total - kinds["xla"] - kinds["native"])
    return out
