"""Paper Table 3: scale-out of DualPath on DS 660B (DeepSeek-V3.2), MAL 64K. Offline: 2P4D with
2K agents vs 48P96D with 48K agents (JCT); online: 2P4D at 0.4 APS vs 44P88D at 8.8 APS (mean
TTFT, TTST, TPOT; 1024 and 22528 agents per run, the same arrival window at both scales, measured
over its second half).

Command:
    python experiments/run_sim.py --config=configs/sim_table3.py --workdir=workdir/sim_table3
    python experiments/run_sim.py --config=configs/sim_table3.py:quick --workdir=/tmp/table3
Expected run time on a 2-core CPU: 30 minutes or more (the 48P96D / 48K-agent run alone is about
7.7 M requests, ~10+ minutes; the 44P88D online run ~3.5 M); ``:quick`` shrinks the large cluster
to 8P16D with the same load per node (offline 2P4D / 512 agents vs 8P16D / 2048; online 2P4D at
0.4 APS / 128 agents vs 8P16D at 1.6 APS / 512 agents), about 1 minute; ``:tiny`` seconds.
The times are for one seed: every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``,
arrival seed ``arrival_seed + r``; ``--config.seeds=R``; ``:tiny`` 1), so about 3x as long serially,
less with ``--workers=N``; each figure is the mean over the seeds with its 95% CI (``<name>_ci95``).
Output: table3.json, table3.md/.csv, table3.png, and ``name: value`` lines (JCT per case, large /
small JCT ratio, TTFT / TTST / TPOT per online case).
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import workload_config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "table3"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.seed = 0
    config.seeds = 3  # runs per configuration (workload seed seed + r); figures: mean and 95% CI
    config.arrival_seed = 0
    config.variants = ("dualpath",)
    config.offline_cases = (("2P4D", 2048), ("48P96D", 49152))
    config.online_cases = (("2P4D", 0.4, 1024), ("44P88D", 8.8, 22528))
    # online latencies over the requests issued in the second half of the arrival window (agents / APS
    # seconds): the cluster under load, not its ramp-up from empty
    config.online_warmup_fraction = 0.5
    config.workload = workload_config_dict(exclude=("num_agents",), mal="64K")
    # EP groups of the small cluster's size at both scales: the large cluster is that instance
    # replicated (24 x 2P4D), so both hold the same weights per GPU and step groups of the same size
    config.sim = sim_config_dict(model="deepseek-v3.2", pe_ep_nodes=2, de_ep_nodes=4)
    if arg == "quick":
        config.offline_cases = (("2P4D", 512), ("8P16D", 2048))
        config.online_cases = (("2P4D", 0.4, 128), ("8P16D", 1.6, 512))
    elif arg == "tiny":
        config.seeds = 1
        config.sim.model = "ds-27b"
        config.sim.pe_ep_nodes, config.sim.de_ep_nodes = 1, 1
        config.offline_cases = (("1P1D", 8), ("2P2D", 16))
        config.online_cases = (("1P1D", 0.5, 8), ("2P2D", 1.0, 16))
        config.workload.update({"mal": "32K", "token_divisor": 8})
    elif arg not in (None, ""):
        raise config_variant_error("configs/sim_table3.py", arg, ("quick", "tiny"))
    return config
