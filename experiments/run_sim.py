"""Run a simulator study (paper figure / table) from a config file.

    python experiments/run_sim.py --config=configs/sim_ablation.py --workdir=workdir/sim_ablation
    python experiments/run_sim.py --config=configs/sim_ablation.py:quick --workdir=/tmp/abl

The study named by ``config.study`` (``dualpath_jax.studies.STUDIES``) writes its tables, plots
and JSON to the workdir together with ``config.json``, ``env.json`` and ``metrics.json``; the
output ends with the study's ``name: value`` lines. Override any field with
``--config.<field>=<value>``: every ``SimConfig`` field is under ``sim`` and every
``HardwareConfig`` field under ``sim.hardware`` (e.g. ``--config.sim.beta_s=1``,
``--config.sim.hardware.snic_bytes_per_s=25e9``, ``--config.num_agents='(256,)'``). A field the
study sets for each run (the switches from ``variants``, Fig. 7's model and cluster from its
``rows``, the clusters of ``clusters`` / ``*_cases``) is rejected under ``sim`` with the entry to
change instead. ``--config.scheduler=pkg.module:Class`` runs every simulation of the study with
that ClusterScheduler subclass (the module must be importable, e.g. with ``PYTHONPATH=.``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from dualpath_jax.config import overridden_fields
from dualpath_jax.metrics import writers
from dualpath_jax.sched import scheduler_name
from dualpath_jax.studies import check_sim_overrides, from_config_dict, run_study

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Study config file configs/sim_<study>.py; append :quick or :tiny for the smaller variants "
    "described in the file's docstring; override any field with --config.<field>=<value> (every SimConfig "
    "field is under sim, every HardwareConfig field under sim.hardware; e.g. --config.sim.beta_s=1, "
    "--config.sim.hardware.snic_bytes_per_s=25e9, --config.num_agents='(256,)'; "
    "--config.scheduler=pkg.module:Class for a scheduler plug-in).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend-probe INFO lines out of the output
    config = _CONFIG.value
    study = from_config_dict(config)  # every field checked (and the scheduler loaded) before any run
    check_sim_overrides(config, overridden_fields(sys.argv[1:]))  # an override a study would overwrite fails
    workdir = Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    writers.write_config(workdir, config)
    writers.write_env(workdir, device="simulator (virtual time)")
    if scheduler_name(study.scheduler):
        print(f"scheduler {scheduler_name(study.scheduler)}", flush=True)
    t0 = time.perf_counter()
    named = run_study(study, workdir, log=lambda s: print(s, flush=True))
    named["wall_s"] = time.perf_counter() - t0
    writers.write_named_values(workdir, named)
    writers.append_metrics(workdir, {"study": config.study, "scheduler": scheduler_name(study.scheduler), **named})
    print()
    print(writers.format_named_values(named))


if __name__ == "__main__":
    app.run(main)
