"""P/D advisor (``dualpath_jax.studies.advisor``): for a model, hardware, node budget and workload,
the P:D split, DRAM buffer per node, alpha/beta and compute quota that minimise the offline JCT
(``objective = "jct"``) or maximise the agents per second under the TTFT/TPOT SLO
(``objective = "max_aps"``), with the predicted objective's 95% interval over ``seeds``, the
runners-up, a plot over P/D and the binding resource.

Inputs: ``model`` (a preset or a Hugging Face ``config.json`` path), ``hardware.gpu`` (a
``sim.catalog`` key: h800, h100, h200, b200, a100) with any ``HardwareConfig`` field as an override
(None = the catalog's), ``nodes`` (N = P + D), ``workload`` (synthetic MAL, or
``workload.source=agentic|mooncake``), ``objective``; online: ``slo``, ``online`` (run window and
the search's first rate), ``aps_search``. The space: every split P = 1 .. N - 1 times the knob lists
``buffer_gb`` x ``alpha_beta`` x ``compute_quota_s`` (the first value of each is the P:D stage's).

Commands:
    python experiments/advise.py --workdir=W                                  # DS 660B, 6 H800 nodes, offline MAL 64K
    python experiments/advise.py --config=configs/advise.py:online --workdir=W  # DS 27B, 3 nodes, max APS
    python experiments/advise.py --config=configs/advise.py:validate --workers=2 --workdir=W
    python experiments/advise.py --config.model=qwen2.5-32b --config.sim.kv_dtype=fp16 --config.nodes=4 --workdir=W

Expected run time on a 2-core CPU with ``--workers=2``: the default about 1 minute (15 runs of 384 agents);
``:online`` about 5 minutes; ``:validate`` (three workloads, the advisor and an exhaustive sweep of
each space: 270 offline runs and 54 max-APS searches) about 25 minutes;
``:tiny`` seconds.

``:validate`` prints ``advisor_regret`` (the worst over the cases of the relative gap between the
advisor's choice and the sweep's best, on the first seed) and ``advisor_run_fraction`` (the worst
ratio of the advisor's simulated runs to the sweep's, both counting the runs that give the
recommendation its interval). Its online case measures a shorter window than ``configs/sim_online.py``
(150 s of arrivals, the first 60 s not measured) to keep the sweep affordable: the search is
validated on that objective.
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.studies.advisor_report import advisor_sim_dict, hardware_dict
from dualpath_jax.studies.common import workload_config_dict

KNOBS = {"buffer_gb": (80.0, 40.0, 160.0), "alpha_beta": ((3.0, 5.0), (1.5, 2.5), (6.0, 10.0)),
         "compute_quota_s": (0.3, 0.15, 0.6)}

CASES = {
    "ds660b_offline_64k": {"model": "deepseek-v3.2", "nodes": 6, "objective": "jct",
                           "workload": {"mal": "64K", "num_agents": 384}},
    "ds27b_online": {"model": "ds-27b", "nodes": 3, "objective": "max_aps", "hardware": {"gpus_per_node": 4},
                     "workload": {"mal": "32K"},
                     "online": {"horizon_s": 150.0, "warmup_s": 60.0, "max_agents_per_run": 4000,
                                "initial_aps": 8.0},
                     "aps_search": {"rel_tol": 0.2, "max_runs": 6, "max_aps": 64.0}},
    "qwen32b_offline_32k": {"model": "qwen2.5-32b", "nodes": 6, "objective": "jct",
                            "sim": {"kv_dtype": "fp16", "weight_dtype": "fp8"},
                            "workload": {"mal": "32K", "num_agents": 256}},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "deepseek-v3.2"  # a preset (dualpath_jax.model.preset_names()) or a config.json path
    config.hardware = hardware_dict("h800")  # catalog GPU; any HardwareConfig field overrides (None = catalog)
    config.sim = advisor_sim_dict()  # every other SimConfig field (kv_dtype, weight_dtype: the model's own)
    config.nodes = 6  # node budget N = P + D
    config.objective = "jct"  # jct (offline, lower is better) | max_aps (online, under the SLO)
    config.variant = "dualpath"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.seed = 0
    config.workload = workload_config_dict(mal="64K", num_agents=384)
    config.buffer_gb = KNOBS["buffer_gb"]  # DRAM buffer per node (GB); the first is the P:D stage's
    config.alpha_beta = KNOBS["alpha_beta"]  # (alpha_s, beta_s) pairs of Algorithm 1
    config.compute_quota_s = KNOBS["compute_quota_s"]  # attention seconds per PE forward
    config.prune = True  # Eq. 9 prunes the P:D splits (its range and the nearest split outside each end)
    config.coarse_points = 4  # splits of the first P:D batch
    config.seeds = 3  # seeds of the recommendation's interval
    config.slo = ml_collections.ConfigDict({"ttft_s": 4.0, "tpot_s": 0.050, "statistic": "mean", "window_s": 150.0})
    config.online = ml_collections.ConfigDict({"horizon_s": 300.0, "warmup_s": 150.0, "max_agents_per_run": 8192,
                                               "initial_aps": 1.0})
    config.aps_search = ml_collections.ConfigDict({"rel_tol": 0.1, "max_runs": 10, "min_aps": 1e-3,
                                                   "max_aps": 64.0})
    config.cases = ml_collections.ConfigDict(CASES)
    config.validate = ()  # case names: run the advisor and an exhaustive sweep on each (:validate)
    if arg == "online":
        config.model = "ds-27b"
        config.nodes = 3
        config.objective = "max_aps"
        config.workload.mal = "32K"
        config.online.update({"horizon_s": 300.0, "warmup_s": 150.0, "initial_aps": 4.0})
        config.aps_search.update({"rel_tol": 0.2, "max_runs": 6})
    elif arg == "validate":
        config.validate = tuple(CASES)
    elif arg == "tiny":
        config.model = "ds-27b"
        config.nodes = 4
        config.seeds = 2
        config.workload.update({"mal": "32K", "num_agents": 12, "token_divisor": 8})
        config.buffer_gb = (80.0, 20.0)
        config.alpha_beta = ((3.0, 5.0), (1.5, 2.5))
        config.compute_quota_s = (0.3,)
    elif arg not in (None, ""):
        raise config_variant_error("configs/advise.py", arg, ("online", "validate", "tiny"))
    return config
