"""P/D-ratio sweep against the bottleneck-free range of the paper's Eq. 9 (PAPER.md section 2.6):
s/(g-s) <= P/D <= min{(g-2s)/s, (g-s)/(2s), (M/(Bs)-3)/2} (1/7 .. 7/2 for the paper's g = 8,
s = 1, M = 500 GB/s, Bs = 50 GB/s). Fixed total of 9 nodes, 1P8D .. 8P1D, DS 27B.

The probe makes storage the bottleneck, so that the sweep tests the I/O analysis: compute 1000x
faster than H800 FP8 (``hardware.peak_flops``) and one generated token per round
(``workload.gen_factor``: no decode phase), MAL 64K. For each cluster the simulated aggregate
storage read rate of Basic and DualPath while at least half of the agents run (as a fraction of
(P + D) s B) is set beside the analysis (``dualpath_jax.sim.analysis``, with B = the CNIC rate
left to KV): DualPath's even-split fraction min(1, 1 / max link load) and Basic's
P / (P + D) x min(1, 1 / max link load).

Command:
    python experiments/run_sim.py --config=configs/sim_pd_sweep.py --workdir=workdir/sim_pd_sweep
    python experiments/run_sim.py --config=configs/sim_pd_sweep.py:quick --workdir=/tmp/pd
Expected run time on a 2-core CPU: about 3 minutes; ``:quick`` (4 clusters, 256 agents) about
25 s; ``:tiny`` seconds.
The times are for one seed: every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``;
``--config.seeds=R``; ``:tiny`` 1), so about 3x as long serially, less with ``--workers=N``; each figure
is the mean over the seeds with its 95% CI (``<name>_ci95``).
Output: pd_sweep.json, pd_sweep.md/.csv, pd_sweep.png, and ``name: value`` lines (the Eq. 9 range
with the nominal and the KV-share CNIC rate, DualPath's simulated fraction inside / outside it,
the largest gap to the analysis, the best cluster).
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import workload_config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "pd_sweep"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.seed = 0
    config.seeds = 3  # runs per configuration (workload seed seed + r); figures: mean and 95% CI
    config.clusters = ("1P8D", "2P7D", "3P6D", "4P5D", "5P4D", "6P3D", "7P2D", "8P1D")
    config.variants = ("basic", "dualpath")
    config.workload = workload_config_dict(mal="64K", num_agents=512, gen_factor=1e-3)
    config.sim = sim_config_dict(model="ds-27b", hardware={"peak_flops": 1979e15})
    if arg == "quick":
        config.clusters = ("1P8D", "3P6D", "6P3D", "8P1D")
        config.workload.num_agents = 256
    elif arg == "tiny":
        config.seeds = 1
        config.clusters = ("1P2D", "2P1D")
        config.workload.update({"mal": "32K", "num_agents": 16, "token_divisor": 8})
    elif arg not in (None, ""):
        raise config_variant_error("configs/sim_pd_sweep.py", arg, ("quick", "tiny"))
    return config
