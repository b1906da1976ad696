"""Simulator ablation (paper Fig. 12 right): DS 660B (DeepSeek-V3.2), 2P4D, offline, MAL 64K.

Command:
    python experiments/run_sim.py --config=configs/sim_ablation.py --workdir=workdir/sim_ablation
    python experiments/run_sim.py --config=configs/sim_ablation.py:tiny --config.workload.source=agentic --workdir=W
(``workload.source``: ``synthetic``, the paper's generator, by default; ``agentic`` or ``mooncake``
replays the first agents of those traces, cut at the MAL; ``--print_config`` lists every field.)
Variants: Basic (pe_read, full, round_robin), +Layerwise, +DPL (dual, round_robin),
+Sched = DualPath (dual, layerwise, dualpath) and Oracle, at 1024 and 2048 agents.
Expected run time: about 3 minutes per seed on a 2-core CPU (``:quick``: 256 and 512 agents, about
35 s; ``:tiny``: 32 and 64 agents, a few seconds).
The times are for one seed: every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``;
``--config.seeds=R``; ``:tiny`` 1), so about 3x as long serially, less with ``--workers=N``; each figure
is the mean over the seeds with its 95% CI (``<name>_ci95``).
Output: ablation.json ({"variants": {name: {"jct_s", "ttft_p50_s", "ttft_p99_s", "tpot_s",
"snic_bytes"}}}), ablation.md/.csv, ablation.png, and ``name: value`` lines (JCT per variant,
speedups vs Basic, DualPath / Oracle JCT).
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import workload_config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "ablation"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.mal = "64K"
    config.num_agents = (1024, 2048)
    config.seed = 0
    config.seeds = 3  # runs per configuration (workload seed seed + r); figures: mean and 95% CI
    config.variants = ("basic", "layerwise", "dpl", "dualpath", "oracle")
    # the workload's source (the paper's generator, or agentic / Mooncake traces), token scaling and
    # sub-agents; its MAL, agent counts and seed are the fields above
    config.workload = workload_config_dict(exclude=("mal", "num_agents"))
    config.sim = sim_config_dict(model="deepseek-v3.2", prefill_nodes=2, decode_nodes=4)
    if arg == "quick":
        config.num_agents = (256, 512)
    elif arg == "tiny":
        config.seeds = 1
        config.num_agents = (32, 64)
    elif arg not in (None, ""):
        raise config_variant_error("configs/sim_ablation.py", arg, ("quick", "tiny"))
    return config
