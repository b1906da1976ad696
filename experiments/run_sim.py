"""Run a simulator study (paper figure / table) from a config file.

    python experiments/run_sim.py --config=configs/sim_ablation.py --workdir=workdir/sim_ablation
    python experiments/run_sim.py --config=configs/sim_ablation.py:quick --workdir=/tmp/abl
    python experiments/run_sim.py --config=configs/sim_ablation.py:quick --config.seeds=5 --workers=2 --workdir=W
    python experiments/run_sim.py --config=configs/sim_ablation.py:tiny --config.workload.source=agentic --workdir=W
    python experiments/run_sim.py --config=configs/sim_ablation.py --print_config     # every field, typed and explained

The study named by ``config.study`` (``dualpath_jax.studies.STUDIES``) writes its tables, plots
and JSON to the workdir together with ``config.json`` (the config as given), ``sim_resolved.json``
(the study's base ``SimConfig`` with what the model decides resolved: ``kv_dtype``,
``weight_dtype``, ``peak_flops``), ``env.json`` and ``metrics.json``; the
output ends with the study's ``name: value`` lines. Every configuration runs ``config.seeds``
times (seed r: workload seed ``seed + r`` and, online, arrival seed ``arrival_seed + r``;
``--config.seeds=R``); each figure is the mean over the seeds, followed by ``<name>_ci95``, the
half width of its 95% Student-t interval (``nan`` with one seed); ``metrics.json`` also holds
``<name>_lo`` and ``<name>_hi``. Override any field with
``--config.<field>=<value>``: every ``SimConfig`` field is under ``sim`` and every
``HardwareConfig`` field under ``sim.hardware`` (e.g. ``--config.sim.beta_s=1``,
``--config.sim.hardware.snic_bytes_per_s=25e9``, ``--config.num_agents='(256,)'``). A field the
study sets for each run (the switches from ``variants``, Fig. 7's model and cluster from its
``rows``, the clusters of ``clusters`` / ``*_cases``) is rejected under ``sim`` with the entry to
change instead. ``--config.scheduler=pkg.module:Class`` runs every simulation of the study with
that ClusterScheduler subclass (the module must be importable, e.g. with ``PYTHONPATH=.``).

The workload of every study that takes one is ``config.workload``: ``source`` ``synthetic`` (the
paper's generator, default), ``agentic`` (the Claude Code traces, ``path`` = their folder) or
``mooncake`` (``path`` = ``conversation``, ``synthetic`` or a file), with ``token_divisor`` (token
scaling) and ``subagents`` (``separate`` or ``drop``); traces are cut at the MAL.
``--print_config`` lists every field with its value, type, default and meaning, then exits.

The workdir must be new or empty (``--overwrite`` replaces an earlier run's); its ``status.json``
says ``running``, then ``finished`` or ``failed``. A bad field, override or trace file ends the
run with one line on stderr naming it (``--verbose`` for the traceback) and exit status 1.
"""

from __future__ import annotations

import sys
import time

from absl import flags, logging
from ml_collections import config_flags

from dualpath_jax.config import overridden_fields, to_dict
from dualpath_jax.metrics import writers
from dualpath_jax.sched import scheduler_name
from dualpath_jax.studies import RunCache, check_sim_overrides, cli, from_config_dict, run_study
from dualpath_jax.studies.config import describe_study_config
from dualpath_jax.studies.seeds import printed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Study config file configs/sim_<study>.py; append :quick or :tiny for the smaller variants "
    "described in the file's docstring; override any field with --config.<field>=<value> (every SimConfig "
    "field is under sim, every HardwareConfig field under sim.hardware; e.g. --config.sim.beta_s=1, "
    "--config.sim.hardware.snic_bytes_per_s=25e9, --config.num_agents='(256,)'; "
    "--config.scheduler=pkg.module:Class for a scheduler plug-in; --config.workload.source=agentic|mooncake for a "
    "trace). --print_config lists every field.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (new or empty; --overwrite replaces an earlier run).")
flags.mark_flags_as_required(["config"])
cli.define_sweep_flags()
cli.define_resume_flag()


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend-probe INFO lines out of the output
    config = _CONFIG.value
    study = from_config_dict(config)  # every field checked (and the scheduler loaded) before any run
    check_sim_overrides(config, overridden_fields(sys.argv[1:]))  # an override a study would overwrite fails
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_config(workdir, config)
    # the base SimConfig as the runs see it: the model's dtypes and the GPU's peak resolved
    writers.write_json(workdir / "sim_resolved.json", {**to_dict(study.sim), "peak_flops": study.sim.peak_flops})
    writers.write_env(workdir, device="simulator (virtual time)")
    if scheduler_name(study.scheduler):
        print(f"scheduler {scheduler_name(study.scheduler)}", flush=True)
    t0 = time.perf_counter()
    # --workers / --ray_address: where the runs execute; finished runs are kept for --resume
    cache = RunCache(sweep=cli.sweep_from_flags(), store=cli.run_store(workdir))
    named = run_study(study, workdir, log=lambda s: print(s, flush=True), cache=cache)
    named["wall_s"] = time.perf_counter() - t0
    writers.write_named_values(workdir, named)
    writers.append_metrics(workdir, {"study": config.study, "scheduler": scheduler_name(study.scheduler),
                                     "seeds": study.seeds, **named})
    cli.report_resumed(cache, workdir)
    print()
    if study.seeds == 1:  # a 95% interval needs two seeds at least
        print("(1 seed: every *_ci95 is nan; --config.seeds=R for intervals)")
    print(writers.format_named_values(printed(named)))


if __name__ == "__main__":
    cli.run(main, config=_CONFIG, describe=describe_study_config)
