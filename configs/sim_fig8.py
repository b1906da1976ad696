"""Paper Fig. 8: P/D ratio study on DS 27B: 1P1D, 2P1D, 1P2D at 512 / 1024 / 2048 agents,
Basic vs DualPath, offline, MAL 64K.

Command:
    python experiments/run_sim.py --config=configs/sim_fig8.py --workdir=workdir/sim_fig8
    python experiments/run_sim.py --config=configs/sim_fig8.py:quick --workdir=/tmp/fig8
Expected run time on a 2-core CPU: about 15 minutes (18 runs, up to 320 K requests each);
``:quick`` (MAL 32K, 128 and 512 agents) about 1 minute; ``:tiny`` (tests) seconds.
The times are for one seed: every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``;
``--config.seeds=R``; ``:tiny`` 1), so about 3x as long serially, less with ``--workers=N``; each figure
is the mean over the seeds with its 95% CI (``<name>_ci95``).
Output: fig8.json, fig8.md/.csv (JCT, speedup, agents per hour per node), fig8.png, and
``name: value`` lines (JCT per cluster at the largest batch, DualPath speedup per cluster, mean).
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import workload_config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "fig8"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.seed = 0
    config.seeds = 3  # runs per configuration (workload seed seed + r); figures: mean and 95% CI
    config.clusters = ("1P1D", "2P1D", "1P2D")
    config.num_agents = (512, 1024, 2048)
    config.variants = ("basic", "dualpath")
    config.workload = workload_config_dict(exclude=("num_agents",), mal="64K")
    config.sim = sim_config_dict(model="ds-27b")
    if arg == "quick":
        config.workload.mal = "32K"
        config.num_agents = (128, 512)
    elif arg == "tiny":
        config.seeds = 1
        config.workload.mal = "32K"
        config.num_agents = (16,)
        config.workload.token_divisor = 8
    elif arg not in (None, ""):
        raise config_variant_error("configs/sim_fig8.py", arg, ("quick", "tiny"))
    return config
