"""Paper Fig. 10/11: online serving. Agents arrive as a Poisson process at APS and replay their
rounds back to back; mean TTFT, TTST, TPOT and trajectory completion time vs APS for Basic,
DualPath and Oracle, and the max APS under the SLO (mean TTFT <= 4 s, mean TPOT <= 50 ms) per
system, on DS 27B (1P1D) and DS 660B (2P4D), MAL 64K.

Each run is an open system observed for ``horizon_s`` seconds of arrivals (``ceil(APS x
horizon_s)`` agents, at most ``max_agents_per_run``); latency is measured over the requests
issued between ``warmup_s`` (at least one trajectory lifetime: a DS 660B trajectory of MAL 64K,
157 rounds of about 176 generated tokens at a TPOT of 25-35 ms, lasts 700-1,000 s, and the
warm-up is 1,500 s) and the last arrival, so that the cluster is in its loaded state; above capacity the backlog keeps growing and the search
brackets the capacity. Each model row sets its own horizon and warm-up. With ``horizon_s = 0`` a
run replays ``workload.num_agents`` agents instead (a bounded batch, whose latency saturates at
the offline batch's: see ``dualpath_jax.studies.online``).

Command:
    python experiments/run_sim.py --config=configs/sim_online.py --workdir=workdir/sim_online
    python experiments/run_sim.py --config=configs/sim_online.py:quick --workdir=/tmp/online
Expected run time on a 2-core CPU: about 15-20 minutes (2 models x 3 systems x ~8 runs of up to
~500 K requests); ``:quick`` (DS 27B only, Basic and DualPath, MAL 32K, 300 s horizon, 150 s
warm-up; a DS 27B trajectory of MAL 32K lasts ~170 s) about 2-3 minutes; ``:tiny`` seconds.
The times are for one seed: every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``,
arrival seed ``arrival_seed + r``; ``--config.seeds=R``; ``:tiny`` 1), so about 3x as long serially,
less with ``--workers=N``; each figure is the mean over the seeds with its 95% CI (``<name>_ci95``).
Output: online.json (curves, max APS, search trials), online_curves.md/.csv,
online_max_aps.md/.csv, online_latency.png, online_completion.png, and ``name: value`` lines
(max APS per model and system, DualPath / Basic APS gain per model and its mean, DualPath / Oracle,
the number of unbracketed searches).
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import workload_config_dict

ROWS = {
    "ds27b": {"label": "DS 27B", "sim": {"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1},
              "aps_grid": (0.2, 0.4, 0.8, 1.6), "initial_aps": 0.4, "horizon_s": 1500.0, "warmup_s": 600.0},
    "ds660b": {"label": "DS 660B", "sim": {"model": "deepseek-v3.2", "prefill_nodes": 2, "decode_nodes": 4},
               "aps_grid": (0.1, 0.2, 0.4, 0.8), "initial_aps": 0.2, "horizon_s": 3000.0, "warmup_s": 1500.0},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "online"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.seed = 0
    config.seeds = 3  # runs per configuration (workload seed seed + r); figures: mean and 95% CI
    config.arrival_seed = 0
    config.rows = ml_collections.ConfigDict(ROWS)
    config.row_order = ("ds27b", "ds660b")
    config.variants = ("basic", "dualpath", "oracle")
    config.horizon_s = 3000.0
    config.warmup_s = 1500.0
    config.max_agents_per_run = 8192
    config.workload = workload_config_dict(mal="64K", num_agents=2048)
    config.sim = sim_config_dict()  # KV and weight dtypes: each row model's own (FP8 for DeepSeek models)
    config.slo = ml_collections.ConfigDict({"ttft_s": 4.0, "tpot_s": 0.050, "statistic": "mean", "window_s": 150.0})
    config.search = ml_collections.ConfigDict({"enabled": True, "rel_tol": 0.1, "max_runs": 10, "min_aps": 1e-3,
                                               "max_aps": 64.0})
    if arg == "quick":
        config.row_order = ("ds27b",)
        config.variants = ("basic", "dualpath")
        config.workload.mal = "32K"
        config.rows.ds27b.update({"aps_grid": (2.0, 4.0, 8.0), "initial_aps": 4.0, "horizon_s": 300.0,
                                  "warmup_s": 150.0})
        config.max_agents_per_run = 4000
        config.search.update({"rel_tol": 0.2, "max_runs": 6, "max_aps": 32.0})
    elif arg == "tiny":
        config.seeds = 1
        config.row_order = ("ds27b",)
        config.workload.update({"mal": "32K", "num_agents": 16, "token_divisor": 8})
        config.rows.ds27b.update({"aps_grid": (0.5, 2.0), "initial_aps": 0.5, "horizon_s": 24.0, "warmup_s": 4.0})
        config.max_agents_per_run = 48
        config.search.update({"rel_tol": 0.5, "max_runs": 4})
    elif arg not in (None, ""):
        raise config_variant_error("configs/sim_online.py", arg, ("quick", "tiny"))
    return config
