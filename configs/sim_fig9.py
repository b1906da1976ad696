"""Paper Fig. 9: DS 660B (DeepSeek-V3.2) 2P4D, MAL 64K, 1024 agents, offline; every round's
append length scaled x1, x1.5, x2, x3 (generation unscaled), then the generation length likewise,
each followed by truncation at the MAL (PAPER.md section 6.2); Basic, DualPath, Oracle.

Command:
    python experiments/run_sim.py --config=configs/sim_fig9.py --workdir=workdir/sim_fig9
    python experiments/run_sim.py --config=configs/sim_fig9.py:quick --workdir=/tmp/fig9
Expected run time on a 2-core CPU: about 10-15 minutes (24 runs of up to 160 K requests; the x1
runs are shared); ``:quick`` (256 agents, factors 1 and 3) about 1 minute; ``:tiny`` seconds.
The times are for one seed: every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``;
``--config.seeds=R``; ``:tiny`` 1), so about 3x as long serially, less with ``--workers=N``; each figure
is the mean over the seeds with its 95% CI (``<name>_ci95``).
Output: fig9.json, fig9.md/.csv, fig9.png (JCT vs factor, one panel per scaled length), and
``name: value`` lines (DualPath speedup vs Basic per scaling, mean DualPath / Oracle JCT).
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import workload_config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "fig9"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.seed = 0
    config.seeds = 3  # runs per configuration (workload seed seed + r); figures: mean and 95% CI
    config.num_agents = 1024
    config.scale = ("append", "gen")
    config.factors = (1.0, 1.5, 2.0, 3.0)
    config.variants = ("basic", "dualpath", "oracle")
    config.workload = workload_config_dict(exclude=("num_agents", "append_factor", "gen_factor"), mal="64K")
    config.sim = sim_config_dict(model="deepseek-v3.2", prefill_nodes=2, decode_nodes=4)
    if arg == "quick":
        config.num_agents = 256
        config.factors = (1.0, 3.0)
    elif arg == "tiny":
        config.seeds = 1
        config.num_agents = 12
        config.factors = (1.0, 2.0)
        config.workload.mal = "32K"
        config.workload.token_divisor = 8
        config.sim.update({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1})
    elif arg not in (None, ""):
        raise config_variant_error("configs/sim_fig9.py", arg, ("quick", "tiny"))
    return config
