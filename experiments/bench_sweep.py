"""Benchmark: a study's independent runs on Ray workers against the same runs one after another.

    python experiments/bench_sweep.py --workdir=workdir/bench_sweep                      # Fig. 7 quick grid
    python experiments/bench_sweep.py --config=configs/sim_fig7.py --workdir=W           # the full grid
    python experiments/bench_sweep.py --workers=4 --ray_address=auto --workdir=W         # on a Ray cluster

Runs the study of ``--config`` (default ``configs/sim_fig7.py:quick``) twice, side by side in one
process: first every run in this process, one after another (the default of every script), then
with its runs as Ray tasks on ``--workers`` workers (a local Ray instance started here, or the
cluster at ``--ray_address``; its start-up is timed apart). Every run's figures (all but its wall
time) must be identical between the two. Writes ``metrics.json`` and ``runs.json`` (each run's
key and seconds) to the workdir and ends with ``runs``, ``serial_s``, ``parallel_s``,
``ray_start_s``, ``runs_identical`` and ``sweep_speedup_<N>_workers`` (serial over parallel
wall seconds).
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
cli.define_sweep_flags()


def _fingerprint(run) -> str:
    """A run's figures but its wall time, exactly (repr: NaN equals NaN)."""
    if isinstance(run, dict):
        return repr(sorted((k, v) for k, v in run.items() if k not in ("wall_s", "cached")))
    return repr(run)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from dualpath_jax.metrics import writers
    from dualpath_jax.studies import RunCache, Sweep, from_config_dict, run_study

    study = from_config_dict(_CONFIG.value)
    parallel = cli.sweep_from_flags()
    if not parallel.parallel:
        parallel = Sweep(2)  # the default --workers=1 would time the serial path twice
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_config(workdir, _CONFIG.value)
    writers.write_env(workdir, device="simulator (virtual time)")
    quiet = lambda s: None  # noqa: E731
    timing, caches = {}, {}
    for name, sweep in (("serial", Sweep(1)), ("parallel", parallel)):
        if name == "parallel":
            t0 = time.perf_counter()
            parallel.map(abs, [-1, -2])  # start Ray (or join the cluster) outside the timed part
            timing["ray_start_s"] = time.perf_counter() - t0
        caches[name] = RunCache(max_entries=10**6, sweep=sweep)
        t0 = time.perf_counter()
        run_study(study, workdir / name, log=quiet, cache=caches[name])
        timing[f"{name}_s"] = time.perf_counter() - t0
        print(f"{name:8s} {len(caches[name])} runs in {timing[f'{name}_s']:.1f} s", flush=True)
    serial, par = dict(caches["serial"].items()), dict(caches["parallel"].items())
    identical = serial.keys() == par.keys() and all(_fingerprint(serial[k]) == _fingerprint(par[k]) for k in serial)
    wall = lambda run: run.get("wall_s") if isinstance(run, dict) else None  # noqa: E731
    writers.write_json(workdir / "runs.json", [{"key": repr(k), "serial_wall_s": wall(serial[k]),
                                                "parallel_wall_s": wall(par[k]) if k in par else None}
                                               for k in serial])
    named = {"runs": len(serial), "serial_s": timing["serial_s"], "parallel_s": timing["parallel_s"],
             "ray_start_s": timing["ray_start_s"], "runs_identical": bool(identical),
             f"sweep_speedup_{parallel.workers}_workers": timing["serial_s"] / timing["parallel_s"]}
    writers.write_named_values(workdir, named)
    print()
    print(writers.format_named_values(named))


if __name__ == "__main__":
    cli.run(main, config=_CONFIG)
