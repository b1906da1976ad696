"""Sensitivity of the headline figures to the simulator's assumed quantities (PAPER.md 8.6).

    python experiments/sensitivity.py --workers=2 --workdir=workdir/sensitivity
    python experiments/sensitivity.py --config=configs/sensitivity.py:tiny --workdir=/tmp/sens
    python experiments/sensitivity.py --config.quantities="('alpha_s','beta_s')" --config.change=0.5 --workdir=W
    python experiments/sensitivity.py --print_config     # every field, typed and explained

Every assumed quantity of ``config.quantities`` (GPU HBM capacity and bandwidth, peak FLOP/s,
attention and decode-memory efficiencies, the per-layer overhead, the fetch period, alpha, beta,
the CNIC share left to KV, the activation reserve, Basic's batch cap, the usable HBM share; see
``dualpath_jax.studies.sensitivity.QUANTITIES``) moves alone by ``-change`` and ``+change``
(25%: a factor on its value, clipped to 1.0 for a share), and the headline figures are measured
again: the ablation's speedups over Basic per step, Fig. 7's DualPath-over-Basic speedup of one
cell and the online max-APS gain (sections ``ablation``, ``fig7``, ``online`` of the config, each
a study config as in ``configs/sim_<study>.py``). All cases run side by side: each step's runs of
every case form one batch on ``--workers`` Ray workers (or the cluster at ``--ray_address``).

Output (workdir): ``sensitivity.md`` (per headline, the quantities by swing: base, low and high
values with the factors applied, the headline at each, relative changes; the quantities with why
each is an assumption; the fields left out and why), ``sensitivity.csv`` (one row per headline
and quantity), ``sensitivity.json``, ``tornado_<headline>.png``, ``runs/<case>/`` (each case's
study outputs and log), ``config.json``, ``env.json``, ``metrics.json``; the output ends with
``name: value`` lines: per headline its base value, ``max_swing_<headline>`` (the largest
relative change) and ``max_swing_quantity_<headline>``.

The workdir must be new or empty (``--overwrite`` replaces an earlier run's); its ``status.json``
says ``running``, then ``finished`` or ``failed``. A bad field ends the run with one line naming it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import flags, logging

from dualpath_jax.studies import cli

_CONFIG = cli.define_config_file(
    "config", str(Path(__file__).resolve().parent.parent / "configs" / "sensitivity.py"),
    "Sensitivity config (configs/sensitivity.py; :tiny for the test-sized one); override fields with "
    "--config.<field>=<value>, a study's with --config.<study>.<field> (e.g. --config.online.search.rel_tol=0.2).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (new or empty; --overwrite replaces an earlier run).")
cli.define_sweep_flags()
cli.define_resume_flag()

_DOCS = {
    "quantities": "the assumed quantities moved one at a time (dualpath_jax.studies.sensitivity.QUANTITIES: "
                  "SimConfig fields, hardware.<field> for HardwareConfig's)",
    "change": "relative change of each quantity: low = base x (1 - change), high = base x (1 + change)",
    "studies": "the sections whose headline figures are measured (ablation, fig7, online)",
    "*.study": "the section's study (its name)",
    "*.seed": "seed of the paper's workload generator (workload.seed)",
    "*.row_order": "the rows of rows that run, in this order",
    "*.rows.*.label": "the row's name in tables and plots",
}


def _describe(config) -> str:
    from dualpath_jax.config import describe_config
    from dualpath_jax.metrics.latency import SLO
    from dualpath_jax.sim.config import SimConfig
    from dualpath_jax.sim.hardware import HardwareConfig
    from dualpath_jax.studies.common import OnlineWindow, WorkloadSpec
    from dualpath_jax.studies.config import OnlineRow, SearchConfig
    from dualpath_jax.studies.sensitivity import SECTIONS, sensitivity_config

    sensitivity_config(config)  # an invalid config fails here, naming the field
    schema = []
    for section, cls in SECTIONS.items():
        p = f"{section}."
        schema += [(p, cls), (p, OnlineWindow), (p + "sim.", SimConfig), (p + "sim.hardware.", HardwareConfig),
                   (p + "workload.", WorkloadSpec), (p + "slo.", SLO), (p + "search.", SearchConfig),
                   (p + "rows.*.", OnlineRow), (p + "rows.*.", OnlineWindow), (p + "rows.*.sim.", SimConfig),
                   (p + "rows.*.sim.hardware.", HardwareConfig)]
    return describe_config(config, schema, docs=_DOCS, title="# sensitivity (configs/sensitivity.py); set a field "
                           "with --config.<name>=<value>")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from dualpath_jax.config import ConfigError, overridden_fields
    from dualpath_jax.metrics import writers
    from dualpath_jax.studies.config import check_sim_overrides
    from dualpath_jax.studies.sensitivity import run_sensitivity, sensitivity_config
    from dualpath_jax.studies.seeds import printed

    config = _CONFIG.value
    typed = sensitivity_config(config)  # every field checked before any run
    overridden = overridden_fields(sys.argv[1:])
    for section in (type(s).study for s in typed.studies):  # an override a study would overwrite fails
        try:
            check_sim_overrides(config[section], [n[len(section) + 1:] for n in overridden
                                                  if n.startswith(section + ".")])
        except ConfigError as e:
            raise ConfigError(f"{section}.{e.field}", e.message) from None
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_config(workdir, config)
    writers.write_env(workdir, device="simulator (virtual time)")
    t0 = time.perf_counter()
    store = cli.run_store(workdir)  # finished runs are kept for --resume
    named = run_sensitivity(typed, workdir, log=lambda s: print(s, flush=True), sweep=cli.sweep_from_flags(),
                            store=store)
    named["wall_s"] = time.perf_counter() - t0
    writers.write_named_values(workdir, named)
    writers.append_metrics(workdir, {"experiment": "sensitivity", **named})
    cli.report_resumed(store, workdir)
    print()
    print(writers.format_named_values(printed(named)))


if __name__ == "__main__":
    cli.run(main, config=_CONFIG, describe=_describe)
