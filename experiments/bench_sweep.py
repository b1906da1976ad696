"""Benchmark: a study's independent runs on Ray workers against the same runs one after another.

    python experiments/bench_sweep.py --workdir=workdir/bench_sweep                      # Fig. 7 quick grid
    python experiments/bench_sweep.py --config=configs/sim_fig7.py --repeats=1 --workdir=W   # the full grid
    python experiments/bench_sweep.py --workers=4 --ray_address=auto --workdir=W         # on a Ray cluster

Runs the study of ``--config`` (default ``configs/sim_fig7.py:quick``) twice per repeat, side by
side in one process: every run in this process, one after another (the default of every script),
and with its runs as Ray tasks on ``--workers`` workers (a local Ray instance started here, or the
cluster at ``--ray_address``; its start-up is timed apart, once). ``--repeats`` (default 3) does
both again, alternating which goes first so a slow drift of the host's load hits both alike.
Every run's figures (all but its wall time) must be identical between the two and across repeats.
Writes ``metrics.json`` and ``runs.json`` (each run's key and seconds in repeat 0) to the workdir
and ends with ``runs``, ``repeats``, ``serial_s``, ``parallel_s`` (mean wall seconds over repeats),
``ray_start_s``, ``runs_identical`` and ``sweep_speedup_<N>_workers`` (serial over parallel wall
seconds within a repeat: the mean over repeats, with its 95% Student-t interval as ``_ci95`` from
two repeats on).
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import flags, logging

from dualpath_jax.studies import cli

_CONFIG = cli.define_config_file(
    "config", str(Path(__file__).resolve().parent.parent / "configs" / "sim_fig7.py") + ":quick",
    "Study config (configs/sim_<study>.py[:variant]) whose runs are timed; --config.<field>=<value> overrides.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (new or empty; --overwrite replaces an earlier run).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Times both the serial and the parallel sweep run (>= 1).")
cli.define_sweep_flags()


def _fingerprint(run) -> str:
    """A run's figures but its wall time, exactly (repr: NaN equals NaN)."""
    if isinstance(run, dict):
        return repr(sorted((k, v) for k, v in run.items() if k not in ("wall_s", "cached")))
    return repr(run)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from dualpath_jax.config import ConfigError
    from dualpath_jax.metrics import writers
    from dualpath_jax.studies import RunCache, Sweep, from_config_dict, run_study
    from dualpath_jax.studies.seeds import CI_SUFFIX, printed, put

    if _REPEATS.value < 1:
        raise ConfigError("repeats", f"must be >= 1 (got {_REPEATS.value})")
    study = from_config_dict(_CONFIG.value)
    parallel = cli.sweep_from_flags()
    if not parallel.parallel:
        parallel = Sweep(2)  # the default --workers=1 would time the serial path twice
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_config(workdir, _CONFIG.value)
    writers.write_env(workdir, device="simulator (virtual time)")
    quiet = lambda s: None  # noqa: E731
    t0 = time.perf_counter()
    parallel.map(abs, [-1, -2])  # start Ray (or join the cluster) outside the timed part
    ray_start_s = time.perf_counter() - t0
    seconds: dict[str, list[float]] = {"serial": [], "parallel": []}
    first: dict[str, dict] = {}  # repeat 0's runs, serial and parallel
    ref, identical = None, True  # the first sweep's runs: every sweep must give the same figures
    for r in range(_REPEATS.value):
        order = ("serial", "parallel") if r % 2 == 0 else ("parallel", "serial")
        for name in order:
            cache = RunCache(max_entries=10**6, sweep=Sweep(1) if name == "serial" else parallel)
            t0 = time.perf_counter()
            run_study(study, workdir / f"r{r}" / name, log=quiet, cache=cache)
            seconds[name].append(time.perf_counter() - t0)
            print(f"repeat {r} {name:8s} {len(cache)} runs in {seconds[name][-1]:.1f} s", flush=True)
            runs = dict(cache.items())
            ref = runs if ref is None else ref
            identical &= runs.keys() == ref.keys() and all(_fingerprint(runs[k]) == _fingerprint(ref[k]) for k in ref)
            if r == 0:
                first[name] = runs
    serial, par = first["serial"], first["parallel"]
    wall = lambda run: run.get("wall_s") if isinstance(run, dict) else None  # noqa: E731
    writers.write_json(workdir / "runs.json", [{"key": repr(k), "serial_wall_s": wall(serial[k]),
                                                "parallel_wall_s": wall(par[k]) if k in par else None}
                                               for k in serial])
    named = {"runs": len(serial), "repeats": _REPEATS.value,
             "serial_s": sum(seconds["serial"]) / _REPEATS.value,
             "parallel_s": sum(seconds["parallel"]) / _REPEATS.value,
             "ray_start_s": ray_start_s, "runs_identical": bool(identical)}
    speedup = f"sweep_speedup_{parallel.workers}_workers"
    put(named, speedup, [a / b for a, b in zip(seconds["serial"], seconds["parallel"])])
    if _REPEATS.value < 2:  # no interval from one repeat
        for suffix in (CI_SUFFIX, "_lo", "_hi"):
            named.pop(speedup + suffix)
    writers.write_named_values(workdir, named)
    print()
    print(writers.format_named_values(printed(named)))


if __name__ == "__main__":
    from dualpath_jax.studies.config import describe_study_config  # (imports no JAX)
    cli.run(main, config=_CONFIG, describe=describe_study_config)
