"""Sensitivity of the headline figures to the simulator's assumed quantities (PAPER.md 8.6).

Command:
    python experiments/sensitivity.py --workers=2 --workdir=workdir/sensitivity
    python experiments/sensitivity.py --config=configs/sensitivity.py:tiny --workdir=/tmp/sens
    python experiments/sensitivity.py --print_config      # every field, typed and explained

Each quantity of ``quantities`` (``dualpath_jax.studies.sensitivity.QUANTITIES``: dotted
SimConfig fields, ``hardware.<field>`` for HardwareConfig's) moves alone to ``1 - change`` and
``1 + change`` times its base value (clipped to 1.0 for a share), and the studies of ``studies``
rerun on that configuration. Each study section is a study config as in ``configs/sim_<study>.py``
(override any field, e.g. ``--config.online.search.rel_tol=0.2``; a scheduler plug-in per study,
``--config.ablation.scheduler=pkg.module:Class``, as in ``run_sim.py``); ``seeds`` = 1 everywhere,
so every case replays the same workload and arrivals.

Default (``change`` 0.25, 13 quantities, 27 cases):
  ablation  DS 660B (DeepSeek-V3.2) 2P4D, MAL 64K, 512 agents, Basic / +Layerwise / +DPL / DualPath
            (``configs/sim_ablation.py:quick`` at its larger batch, Oracle left out);
  fig7      one cell of Fig. 7: DS 660B 2P4D, MAL 64K, 1,024 agents, Basic and DualPath;
  online    ``configs/sim_online.py:quick``-sized: DS 27B 1P1D, MAL 32K, Basic and DualPath, 300 s
            of Poisson arrivals per run measured after 150 s (at most 4,000 agents), the max-APS
            search from 6 APS to a bracket within a factor 1.1 (``search.rel_tol``).
Expected run time: about 30-60 minutes with ``--workers=2`` on a 2-core CPU (the committed run took 31)
(about 100 CPU-seconds per case: ablation 20, Fig. 7 cell 22, online 55-60); ``:tiny`` (two
quantities, tiny workloads; tests) under a minute.
Output: sensitivity.md/.csv/.json, tornado_<headline>.png, runs/<case>/ (each case's study
outputs and log), and ``name: value`` lines: per headline its base value, the largest swing and
its quantity.
"""

import importlib.util
from pathlib import Path

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.studies.sensitivity import DEFAULT_QUANTITIES


def _study_config(study: str, arg: str | None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of ``configs/sim_<study>.py`` (beside this file)."""
    path = Path(__file__).resolve().parent / f"sim_{study}.py"
    spec = importlib.util.spec_from_file_location(f"_sensitivity_{study}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "tiny"):
        raise config_variant_error("configs/sensitivity.py", arg, ("tiny",))
    config = ml_collections.ConfigDict()
    config.quantities = DEFAULT_QUANTITIES
    config.change = 0.25  # low = base x (1 - change), high = base x (1 + change)
    config.studies = ("ablation", "fig7", "online")

    ablation = _study_config("ablation", "quick")
    ablation.seeds = 1
    ablation.num_agents = (512,)
    ablation.variants = ("basic", "layerwise", "dpl", "dualpath")

    fig7 = _study_config("fig7", None)
    fig7.seeds = 1
    fig7.row_order = ("ds660b",)
    fig7.mals = ("64K",)
    fig7.num_agents = (1024,)
    fig7.variants = ("basic", "dualpath")

    online = _study_config("online", "quick")
    online.seeds = 1
    online.rows.ds27b.update({"aps_grid": (6.0,), "initial_aps": 6.0})
    online.search.update({"rel_tol": 0.1, "max_runs": 8})

    if arg == "tiny":
        config.quantities = ("eff_memory", "fetch_period_s")  # eff_memory 0.9: +25% is clipped to 1.0
        ablation = _study_config("ablation", "tiny")
        ablation.num_agents = (32,)
        ablation.variants = ("basic", "dpl", "dualpath")
        fig7 = _study_config("fig7", "tiny")
        fig7.num_agents = (16,)
        fig7.variants = ("basic", "dualpath")
        online = _study_config("online", "tiny")
        online.variants = ("basic", "dualpath")
        # full-size DS 27B trajectories for 20 s of arrivals (at most 200 agents) under a 0.5 s TTFT
        # bound, so that the tiny runs still bracket a max APS
        online.workload.token_divisor = 1
        online.rows.ds27b.update({"aps_grid": (8.0,), "initial_aps": 8.0, "horizon_s": 20.0, "warmup_s": 5.0})
        online.max_agents_per_run = 200
        online.slo.ttft_s = 0.5
    config.ablation = ablation
    config.fig7 = fig7
    config.online = online
    return config
