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
The times are for one seed: every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``,
arrival seed ``arrival_seed + r``; ``--config.seeds=R``; ``:tiny`` 1), so about 3x as long serially,
less with ``--workers=N``; each figure is the mean over the seeds with its 95% CI (``<name>_ci95``).
Output: working_set.json, working_set.md/.csv, working_set.png, and ``name: value`` lines
(working set and simulated live KV at the highest APS, GB per APS).
"""

import importlib.util
import os

import ml_collections

from dualpath_jax.config import config_variant_error


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # The same runs as the TTFT breakdown (DualPath, online, DS 660B 2P4D and its quick / tiny
    # variants); only the study that reduces them differs.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sim_ttft_breakdown.py")
    spec = importlib.util.spec_from_file_location("_sim_ttft_breakdown_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        config = module.get_config(arg)
    except ValueError:
        raise config_variant_error("configs/sim_working_set.py", arg, ("quick", "tiny")) from None
    config.study = "working_set"
    config.variants = ("dualpath",)  # the paper estimates DualPath's working set
    return config
