"""Paper Fig. 12 left: Basic's and DualPath's mean TTFT (the paper pairs them at each APS) split
into scheduling (arrival -> placed on a PE and a DE), read wait (DRAM-buffer allocation + SNIC
queueing), read transfer, prefill queue and prefill compute, vs APS; DS 660B (2P4D), MAL 64K, online (Poisson arrivals over a 3,000 s horizon
(1,500 s warm-up) per run, as in ``configs/sim_online.py``).

The runs equal those of ``configs/sim_online.py`` (same model, workload, horizon, rates and
seed), so ``experiments/reproduce_paper.py`` reuses them.

Command:
    python experiments/run_sim.py --config=configs/sim_ttft_breakdown.py --workdir=workdir/sim_ttft
    python experiments/run_sim.py --config=configs/sim_ttft_breakdown.py:quick --workdir=/tmp/ttft
Expected run time on a 2-core CPU: about 10 minutes alone (8 runs of up to ~375 K requests);
``:quick`` (DS 27B 1P1D, MAL 32K, 300 s horizon, 150 s warm-up) about 30 s alone, free after
the online study; ``:tiny`` seconds.
The times are for one seed: every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``,
arrival seed ``arrival_seed + r``; ``--config.seeds=R``; ``:tiny`` 1), so about 3x as long serially,
less with ``--workers=N``; each figure is the mean over the seeds with its 95% CI (``<name>_ci95``).
Output: ttft_breakdown.json, ttft_breakdown.md/.csv, ttft_breakdown_<variant>.png (stacked
bars), and ``name: value`` lines (mean TTFT and each component's share at the highest APS).
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import workload_config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "ttft_breakdown"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.seed = 0
    config.seeds = 3  # runs per configuration (workload seed seed + r); figures: mean and 95% CI
    config.arrival_seed = 0
    config.variants = ("basic", "dualpath")
    config.aps_grid = (0.1, 0.2, 0.4, 0.8)
    config.horizon_s = 3000.0
    config.warmup_s = 1500.0
    config.max_agents_per_run = 8192
    config.workload = workload_config_dict(mal="64K", num_agents=2048)
    config.sim = sim_config_dict(model="deepseek-v3.2", prefill_nodes=2, decode_nodes=4)
    if arg == "quick":
        config.sim.update({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1})
        config.horizon_s = 300.0
        config.warmup_s = 150.0
        config.max_agents_per_run = 4000
        config.workload.mal = "32K"
        config.aps_grid = (2.0, 4.0, 8.0)
    elif arg == "tiny":
        config.seeds = 1
        config.sim.update({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1})
        config.horizon_s = 24.0
        config.warmup_s = 4.0
        config.max_agents_per_run = 48
        config.workload.update({"mal": "32K", "num_agents": 16, "token_divisor": 8})
        config.aps_grid = (0.5, 2.0)
    elif arg not in (None, ""):
        raise config_variant_error("configs/sim_ttft_breakdown.py", arg, ("quick", "tiny"))
    return config
