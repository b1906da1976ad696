"""Paper Fig. 13-14: load balance, round-robin scheduling ("dpl": dual-path loading, read side
alternating per request) vs the DualPath scheduler: storage-NIC read traffic Max/Avg across all
SNICs in 10 s windows over the run, and attention-time Max/Avg across the engines of a PE EP group
per forward over the first 5% of the run's time ("during the first 5% of the task", PAPER.md 5.5)
and, separately, over its first 5% of forwards (plotted by forward and over time). PAPER.md gives
no model, cluster or MAL for these figures; this config uses the ablation's setting (DS 660B 2P4D,
MAL 64K, 1024 agents offline), an assumption.

Command:
    python experiments/run_sim.py --config=configs/sim_balance.py --workdir=workdir/sim_balance
    python experiments/run_sim.py --config=configs/sim_balance.py:quick --workdir=/tmp/balance
Expected run time on a 2-core CPU: about 1 minute; ``:quick`` (512 agents) about 25 s;
``:tiny`` seconds.
The times are for one seed: every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``;
``--config.seeds=R``; ``:tiny`` 1), so about 3x as long serially, less with ``--workers=N``; each figure
is the mean over the seeds with its 95% CI (``<name>_ci95``).
Output: balance.json, balance.md/.csv (per variant: JCT, SNIC Max/Avg mean / median / p90,
attention Max/Avg mean, mean and weighted by attention time over the first 5% of the time
(``attn_max_avg_head_time_*``) and of the forwards (``attn_max_avg_head_*``), whole-run weighted, p90,
forwards, share of forwards with every GPU of the group busy and their Max/Avg, request chunks per
PE-group forward), balance_busy.md/.csv (forwards split by how many GPUs had attention work),
balance_snic.csv, balance_attention.csv, balance_snic.png, balance_attention.png, and
``name: value`` lines (per variant).

``sim.beta_s`` (Algorithm 1's beta in seconds of one engine's prefill rate, default 5) is exposed
for sensitivity runs, e.g. ``--config.sim.beta_s=0.5``.
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import workload_config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "balance"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.seed = 0
    config.seeds = 3  # runs per configuration (workload seed seed + r); figures: mean and 95% CI
    config.num_agents = 1024
    config.window_s = 10.0
    config.head_fraction = 0.05
    config.variants = ("dpl", "dualpath")
    config.workload = workload_config_dict(exclude=("num_agents",), mal="64K")
    config.sim = sim_config_dict(model="deepseek-v3.2", prefill_nodes=2, decode_nodes=4, beta_s=5.0)
    if arg == "quick":
        config.num_agents = 512
    elif arg == "tiny":
        config.seeds = 1
        config.num_agents = 16
        config.window_s = 1.0
        config.workload.update({"mal": "32K", "token_divisor": 8})
        config.sim.update({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 2})
    elif arg not in (None, ""):
        raise config_variant_error("configs/sim_balance.py", arg, ("quick", "tiny"))
    return config
