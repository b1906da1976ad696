"""Soak the engine under faults: replay a workload for N minutes with every fault kind on.

    python experiments/soak.py --minutes=10 --workdir=workdir/soak
    python experiments/soak.py --minutes=1 --workdir=/tmp/soak --config.faults.crash_rate=0.05

The config (default ``configs/soak.py``, whose docstring describes the workload and the outputs)
holds the engine ablation's config under ``engine`` and the faults (``dualpath_jax.engine.faults``)
under ``faults``. Replays cycle through ``variants`` until ``--minutes`` have passed (the replay
running then completes). After every replay the tokens are checked against a no-cache recompute,
the rounds that did not finish are counted and the pools are reconciled. Output (workdir):
``replays.jsonl`` (one line per replay: variant, faults injected, attempts run again, worker
errors, wrong tokens, lost requests, leaked bytes, RSS), ``metrics.json`` and the ``name: value``
lines ``wrong_tokens``, ``lost_requests``, ``leaked_bytes``, ``peak_rss_mb``, ``rss_growth_mb``
(mean resident memory over the last quarter of the replays after the warm-up ones minus over
their first quarter; with ``--config.engine.runtime=ray`` the node actors' processes on this host
count too, summed after each replay),
``replays``, ``requests``, ``faults_injected``, ``attempts_run_again``, ``worker_errors``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

if __name__ == "__main__":  # one JAX CPU device per engine of the emulated 1P2D cluster
    flags_ = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags_:
        os.environ["XLA_FLAGS"] = f"{flags_} --xla_force_host_platform_device_count=3".strip()

from absl import flags, logging  # noqa: E402

from dualpath_jax.studies import cli  # noqa: E402  (imports no JAX)

_CONFIG = cli.define_config_file(
    "config", str(Path(__file__).resolve().parent.parent / "configs" / "soak.py"),
    "Soak config (configs/soak.py); override fields with --config.<field>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (new or empty; --overwrite replaces an earlier run).")
_MINUTES = flags.DEFINE_float("minutes", 10.0, "Replay for this many minutes (the last replay completes; 0: one "
                               "replay).")
flags.register_validator("minutes", lambda m: m >= 0, message="--minutes must be >= 0 (0: one replay)")

_DOCS = {"variants": "ablation variants the replays cycle through (sched.ABLATION_VARIANTS, plus split)",
         "warmup_replays": "replays before the resident-memory baseline of rss_growth_mb",
         "tie_tol": "a token unlike the recompute is a near-tie (not wrong) when the recompute's top-1 logit "
                    "exceeds the produced token's by less than this"}


def _describe(config) -> str:
    from dualpath_jax.config import describe_config
    from dualpath_jax.engine.config import ClusterConfig
    from dualpath_jax.engine.faults import FaultConfig
    from dualpath_jax.studies.engine_config import _SECTIONS, EngineAblationConfig, engine_ablation_config

    engine_ablation_config(config.engine)
    FaultConfig(**dict(config.faults))
    schema = [("faults.", FaultConfig), ("engine.", EngineAblationConfig), ("engine.cluster.", ClusterConfig),
              *((f"engine.{key}.", cls) for key, cls in _SECTIONS.items())]
    return describe_config(config, schema, docs=_DOCS, title="# soak (configs/soak.py); set a field with "
                           "--config.<name>=<value>")


def _rss_mb(pids=()) -> float:
    """Resident set size now (MiB) of this process plus the processes ``pids`` (the ``ray``
    runtime's node actors on this host), from /proc (a process not readable counts 0)."""
    total = 0.0
    for pid in ("self", *pids):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            pass
    return total


def _peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import dataclasses

    import numpy as np

    from dualpath_jax.config import ConfigError
    from dualpath_jax.engine.cluster import ResourceLeakError
    from dualpath_jax.engine.compute import reference_greedy
    from dualpath_jax.engine.faults import FaultConfig
    from dualpath_jax.metrics import writers
    from dualpath_jax.studies.engine_ablation import (Setup, check_config, compile_runs, run_variant, seed_store,
                                                      select_agents)

    import jax

    cli.use_jit_cache(os.path.join(tempfile.gettempdir(), "dualpath_jax_jit_cache"))
    config = _CONFIG.value
    engine = check_config(config.engine)
    faults = FaultConfig(**dict(config.faults))
    variants = list(config.variants)
    if not variants:
        raise ConfigError("variants", "needs at least one variant")
    for v in variants:
        engine.cluster.for_variant(v)  # an unknown variant fails here, before the workdir is touched
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_config(workdir, config)
    writers.write_env(workdir, device=f"{jax.default_backend()} x {jax.device_count()}")
    log = lambda s: print(s, flush=True)  # noqa: E731
    agents = select_agents(engine.workload)
    setup = Setup(engine, agents, log=log)
    scratch = Path(tempfile.mkdtemp(prefix="dualpath_soak_"))
    seed_dir = scratch / "seed" if engine.workload.warm_start else None
    if seed_dir is not None:
        seed_store(setup, seed_dir, log=log)
    compile_runs(setup, scratch / "store", seed_dir, log=log, progress=False)  # the replays start warm
    seen: set = set()

    def _new_shapes(shapes: dict) -> int:
        """Compiled-shape buckets this replay used for the first time (each is a jit compilation)."""
        now = {(e, tuple(s)) for e, ss in shapes.items() for s in ss}
        new = len(now - seen)
        seen.update(now)
        return new

    def node_pids() -> list[int]:
        """The ``ray`` runtime's node actor processes (none under ``threads``)."""
        return list(setup.runtime.pids) if setup.runtime is not None else []

    refs: dict = {}  # (trajectory, round) -> the recompute's (tokens, top-1 minus top-2 gaps)

    def wrong_tokens(result) -> tuple[int, int]:
        """(tokens unlike the recompute, of which near-ties), over the finished requests."""
        wrong = near = 0
        for r in result.requests:
            if r.error:
                continue
            key = (r.trajectory_id, r.round_index)
            if key not in refs:
                toks, _gaps, _ = reference_greedy(setup.params, setup.spec, r.prompt, np.asarray(r.generated, np.int32),
                                                  forced=r.forced, chunk_tokens=engine.reference_chunk_tokens or None)
                refs[key] = toks
            toks = refs[key]
            gen = np.asarray(r.generated, np.int32)
            diff = np.flatnonzero(toks != gen)
            if diff.size:  # a near-tie: the recompute's top-1 logit within tie_tol of the produced token's
                _, _, margin = reference_greedy(setup.params, setup.spec, r.prompt, gen, forced=r.forced,
                                                chunk_tokens=engine.reference_chunk_tokens or None)
                near += int(np.sum(margin[diff] < config.tie_tol))
                wrong += int(np.sum(margin[diff] >= config.tie_tol))
        return wrong, near

    totals = dict(wrong_tokens=0, near_ties=0, lost_requests=0, leaked_bytes=0, requests=0,
                  faults_injected=0, attempts_run_again=0, worker_errors=0)
    rss: list[float] = []
    deadline = time.perf_counter() + 60.0 * _MINUTES.value
    replay = 0
    try:
        while replay == 0 or time.perf_counter() < deadline:
            variant = variants[replay % len(variants)]
            f = dataclasses.replace(faults, seed=faults.seed + replay)
            t0 = time.perf_counter()
            try:
                res = run_variant(setup, variant, scratch / "store", seed_dir, progress=False, faults=f)
            except ResourceLeakError as e:
                res = e.result
            layout = setup.layout
            leaked = 0  # every leak in bytes (a negative count is as wrong as a positive one)
            for k, v in res.leaks.items():
                if k.endswith(".bytes"):
                    leaked += abs(int(v))
                elif k.endswith(".pool_blocks"):
                    leaked += abs(int(v)) * layout.full_block_bytes
                elif k.endswith(".tokens"):
                    leaked += int(abs(v)) * layout.bytes_per_token
                else:  # a scheduler load (tokens, requests) left on an engine
                    tok, seq = v
                    leaked += max(abs(int(tok)) * layout.bytes_per_token, abs(int(seq)))
            wrong, near = wrong_tokens(res)
            rounds = sum(int(a.num_rounds) for a in agents)
            lost = sum(1 for r in res.requests if not r.finished) + max(0, rounds - len(res.requests))
            row = {"replay": replay, "variant": variant, "wall_s": time.perf_counter() - t0,
                   "requests": len(res.requests), "faults": dict(res.faults),
                   "attempts_run_again": len(res.failed_attempts), "worker_errors": len(res.worker_errors),
                   "wrong_tokens": wrong, "near_ties": near, "lost_requests": lost, "leaked_bytes": leaked,
                   "leaks": {k: str(v) for k, v in res.leaks.items()}, "rss_mb": _rss_mb(node_pids()),
                   "threads": threading.active_count(), "new_shapes": _new_shapes(res.runtime_shapes),
                   "lost_causes": sorted({r.error for r in res.requests if r.error})[:5]}
            writers.append_metrics(workdir, row, filename="replays.jsonl")
            rss.append(row["rss_mb"])
            for k in ("wrong_tokens", "near_ties", "lost_requests", "leaked_bytes", "requests", "attempts_run_again",
                      "worker_errors"):
                totals[k] += row[k]
            totals["faults_injected"] += sum(res.faults.values())
            log(f"replay {replay:3d} {variant:9s} {row['wall_s']:5.1f} s  faults {dict(res.faults)}  "
                f"run again {row['attempts_run_again']}  wrong {wrong}  lost {lost}  leaked {leaked} B  "
                f"rss {row['rss_mb']:.0f} MiB  new shapes {row['new_shapes']}")
            replay += 1
    finally:
        import shutil
        setup.close()  # the ray runtime's node actors (nothing under threads)
        shutil.rmtree(scratch, ignore_errors=True)
    post = rss[min(int(config.warmup_replays), len(rss) - 1):]  # after the warm-up replays
    q = max(1, len(post) // 4)  # first and last quarter of them, averaged (RSS moves by tens of MB per replay)
    # ray: the driver's peak and the node actors' summed RSS after each replay, whichever is larger
    peak = max([_peak_rss_mb(), *rss]) if setup.runtime is not None else _peak_rss_mb()
    named = {**totals, "replays": replay, "peak_rss_mb": peak,
             "rss_growth_mb": float(np.mean(post[-q:]) - np.mean(post[:q])) if post else 0.0}
    named = {k: named[k] for k in ("replays", "requests", "faults_injected", "attempts_run_again", "worker_errors",
                                   "near_ties", "rss_growth_mb", "peak_rss_mb", "leaked_bytes", "lost_requests",
                                   "wrong_tokens")}
    writers.write_named_values(workdir, named)
    print()
    print(writers.format_named_values(named))
    if named["wrong_tokens"] or named["lost_requests"] or named["leaked_bytes"]:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main, config=_CONFIG, describe=_describe)
