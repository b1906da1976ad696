"""Paper section 8.2: working set (GB) vs APS, estimated as APS x mean trajectory completion
time x mean total length / 2 x KV bytes per token from DualPath's online runs on DS 660B (2P4D),
MAL 64K (Poisson arrivals over a 3,000 s horizon per run), beside the simulated time-averaged KV
of live agents and the cluster's DRAM buffer.

The runs equal those of ``configs/sim_online.py`` (reused by ``experiments/reproduce_paper.py``).

Command:
    python experiments/run_sim.py --config=configs/sim_working_set.py --workdir=workdir/sim_ws
    python experiments/run_sim.py --config=configs/sim_working_set.py:quick --workdir=/tmp/ws
Expected run time on a 2-core CPU: about 5 minutes alone (4 runs of up to ~375 K requests);
``:quick`` (DS 27B 1P1D, MAL 32K, 300 s horizon, 150 s warm-up) about 30 s alone, free after
the online study; ``:tiny`` seconds.
Output: working_set.json, working_set.md/.csv, working_set.png, and ``name: value`` lines
(working set and simulated live KV at the highest APS, GB per APS).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "working_set"
    config.seed = 0
    config.arrival_seed = 0
    config.variants = ("dualpath",)
    config.aps_grid = (0.1, 0.2, 0.4, 0.8)
    config.horizon_s = 3000.0
    config.warmup_s = 1500.0
    config.max_agents_per_run = 8192
    config.workload = ml_collections.ConfigDict({"mal": "64K", "num_agents": 2048, "token_divisor": 1,
                                                 "num_base": 500})
    config.sim = ml_collections.ConfigDict({"model": "deepseek-v3.2", "prefill_nodes": 2, "decode_nodes": 4,
                                            "kv_dtype": "fp8", "weight_dtype": "fp8", "hardware": {}})
    if arg == "quick":
        config.sim.update({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1})
        config.horizon_s = 300.0
        config.warmup_s = 150.0
        config.max_agents_per_run = 4000
        config.workload.mal = "32K"
        config.aps_grid = (2.0, 4.0, 8.0)
    elif arg == "tiny":
        config.sim.update({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1})
        config.horizon_s = 24.0
        config.warmup_s = 4.0
        config.max_agents_per_run = 48
        config.workload.update({"mal": "32K", "num_agents": 16, "token_divisor": 8})
        config.aps_grid = (0.5, 2.0)
    elif arg not in (None, ""):
        raise ValueError(f"configs/sim_working_set.py: unknown variant {arg!r}; known: quick, tiny")
    return config
