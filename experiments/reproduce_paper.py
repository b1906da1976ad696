"""Run every simulator study of the paper and write one report.

    python experiments/reproduce_paper.py --workdir=workdir/paper --quick --workers=2   # 3 seeds each
    python experiments/reproduce_paper.py --workdir=workdir/paper --quick --seeds=1     # one seed, about 10 minutes
    python experiments/reproduce_paper.py --workdir=workdir/paper              # 3 seeds each: several hours
    python experiments/reproduce_paper.py --workdir=/tmp/p --config_arg=tiny --studies=fig7,online
    PYTHONPATH=. python experiments/reproduce_paper.py --workdir=/tmp/p --quick --scheduler=my_pkg.policies:PreferDE

Each study (``dualpath_jax.studies.STUDIES``) runs with ``configs/sim_<study>.py`` (its
``quick`` variant with ``--quick``, or ``--config_arg``) into ``workdir/<study>/`` (config.json,
metrics.json, tables, plots). Studies run in one process and share one ``RunCache``
(``dualpath_jax.studies.runs``), in an order that lets identical runs be reused: the TTFT
breakdown and working set reuse the online runs. ``--scheduler`` sets
every study's ``scheduler`` (a ClusterScheduler subclass ``pkg.module:Class``) for all its runs;
``--seeds=R`` every study's ``seeds`` (each configuration run R times, seed r offsetting the
workload and arrival seeds; figures are means over the seeds with 95% intervals; unset: each
config's own, 3 in the quick and full configs). With ``--workers=N`` every study's independent
runs, all seeds' together, run on N Ray workers.
``workdir/REPORT.md`` gathers the paper's headline claims beside the simulated values, every
calibration input with its source, and each study's tables and plots. A failing study is
reported and the others still run; the exit status is then non-zero. The output ends with
``name: value`` lines (wall time per study and the claims' simulated values, each mean with its
``_ci95`` half width; a max-APS gain also with the range its searches leave it in,
``_search_lo`` / ``_search_hi``), also in ``workdir/metrics.json`` (with ``_lo`` / ``_hi``).

The workdir must be new or empty (``--overwrite`` replaces an earlier run's); ``status.json`` in it
and in each ``workdir/<study>/`` says ``running``, then ``finished`` or ``failed`` (with the error).
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path

from absl import app, flags, logging

from dualpath_jax.config import did_you_mean
from dualpath_jax.metrics import writers
from dualpath_jax.sched import load_scheduler, scheduler_name
from dualpath_jax.studies import STUDIES, RunCache, cli, from_config_dict, run_study
from dualpath_jax.studies.config import MAX_SEEDS
from dualpath_jax.studies.report import PAPER_CLAIMS, build_report
from dualpath_jax.studies.seeds import CI_SUFFIX, printed

ORDER = ("ablation", "fig7", "fig8", "fig9", "online", "ttft_breakdown", "working_set", "balance", "table3",
         "pd_sweep")

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (new or empty; --overwrite replaces an earlier run).")
_QUICK = flags.DEFINE_bool("quick", False, "Run every study's quick variant (3 seeds each).")
_CONFIG_ARG = flags.DEFINE_string("config_arg", None, "Config variant for every study (overrides --quick).")
_STUDIES = flags.DEFINE_list("studies", list(ORDER), "Studies to run, in this order.")
_SCHEDULER = flags.DEFINE_string(
    "scheduler", None, "Scheduler plug-in for every study's runs: a ClusterScheduler subclass 'pkg.module:Class' "
    "(importable, e.g. with PYTHONPATH=.); empty: the built-in scheduler; unset: each config's own.")

_SEEDS = flags.DEFINE_integer(
    "seeds", None, "Runs per configuration in every study (its config's seeds, R >= 1): seed r offsets the "
    "workload and arrival seeds by r; figures are means over the seeds with 95% intervals. Unset: each config's own.")

cli.define_sweep_flags()
cli.define_resume_flag()

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def load_config(study: str, arg: str | None):
    """``get_config(arg)`` of ``configs/sim_<study>.py``."""
    path = CONFIG_DIR / f"sim_{study}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config file for study {study!r}")
    spec = importlib.util.spec_from_file_location(f"_sim_config_{study}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend-probe INFO lines out of the output
    arg = _CONFIG_ARG.value if _CONFIG_ARG.value is not None else ("quick" if _QUICK.value else None)
    studies = list(_STUDIES.value)
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise app.UsageError(f"--studies: unknown {unknown}{did_you_mean(unknown[0], STUDIES)}; "
                             f"known: {sorted(STUDIES)}")
    if not studies:
        raise app.UsageError(f"--studies: names no study; known: {sorted(STUDIES)}")
    if _SEEDS.value is not None and not 1 <= _SEEDS.value <= MAX_SEEDS:
        raise app.UsageError(f"--seeds: must be an integer in [1, {MAX_SEEDS}] (got {_SEEDS.value})")
    scheduler = ""  # the plug-in every study runs with ("": the built-in scheduler or each config's own)
    if _SCHEDULER.value is not None:
        scheduler = scheduler_name(load_scheduler(_SCHEDULER.value, field="scheduler"))  # fails before any study
    workdir = cli.open_workdir(_WORKDIR.value)
    if _SCHEDULER.value is not None:
        print(f"scheduler {scheduler or '(built-in)'}", flush=True)
    writers.write_env(workdir, device="simulator (virtual time)")
    # runs shared across studies (the online study's runs are the TTFT breakdown's and working set's),
    # room for every seed's; --workers: where they execute
    cache = RunCache(max_entries=32 * _max_seeds(studies, arg), sweep=cli.sweep_from_flags(),
                     store=cli.run_store(workdir))  # finished runs are kept for --resume
    named, wall, errors, seeds = {}, {}, {}, {}
    for study in studies:
        print(f"\n=== {study} ({arg or 'full'}) ===", flush=True)
        out = workdir / study
        out.mkdir(parents=True, exist_ok=True)
        writers.write_status(out, "running")
        t0 = time.perf_counter()
        try:
            config = load_config(study, arg)
            if _SCHEDULER.value is not None:
                config.scheduler = _SCHEDULER.value
            if _SEEDS.value is not None:
                config.seeds = _SEEDS.value
            typed = from_config_dict(config)
            seeds[study] = typed.seeds
            writers.write_config(out, config)
            named[study] = run_study(typed, out, log=lambda s: print(s, flush=True), cache=cache)
            writers.write_named_values(out, {**named[study], "wall_s": time.perf_counter() - t0})
            writers.write_status(out, "finished")
        except Exception as e:  # a failed study is reported; the others still run
            errors[study] = traceback.format_exc()
            writers.write_status(out, "failed", error=cli.one_line(e))
            print(errors[study] if _show_traceback(e) else cli.one_line(e), file=sys.stderr, flush=True)
        wall[study] = time.perf_counter() - t0
        print(f"--- {study}: {wall[study]:.1f} s", flush=True)
    report = build_report(workdir, studies, named, wall, errors, variant=arg or "full", scheduler=scheduler,
                          seeds=seeds)
    summary = {f"wall_s_{s}": wall[s] for s in studies}
    summary["wall_s_total"] = sum(wall.values())
    for _claim, _paper, study, key in PAPER_CLAIMS:
        for name in (key, key + CI_SUFFIX, key + "_lo", key + "_hi", key + "_search_lo", key + "_search_hi"):
            if key in named.get(study, {}) and name in named[study]:
                summary[f"{study}.{name}"] = named[study][name]
    summary["failed_studies"] = ",".join(errors) or "none"
    writers.write_named_values(workdir, summary)
    writers.append_metrics(workdir, {"variant": arg or "full", **summary})
    cli.report_resumed(cache, workdir)
    print(f"\nreport: {report}")
    print(writers.format_named_values(printed(summary)))
    if errors:
        sys.exit(1)


def _max_seeds(studies: list[str], arg: str | None) -> int:
    """The most seeds any of ``studies`` runs (``--seeds`` or its config's; 1 for a config that
    does not load, whose error its study reports)."""
    if _SEEDS.value is not None:
        return int(_SEEDS.value)
    most = 1
    for study in studies:
        try:
            most = max(most, int(load_config(study, arg).get("seeds", 1)))
        except Exception:  # noqa: BLE001 (reported when the study runs)
            pass
    return most


def _show_traceback(e: Exception) -> bool:
    """Whether a failed study's traceback is printed: for a bug, or with --verbose (a ConfigError or
    TraceFormatError is one line)."""
    return flags.FLAGS.verbose or not isinstance(e, cli.USER_ERRORS)


if __name__ == "__main__":
    cli.run(main)
