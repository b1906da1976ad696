"""Paper Fig. 7: offline JCT vs number of agents; rows DS 27B (1P1D), DS 660B (2P4D), Qwen 32B
(1P2D); columns MAL 32K / 48K / 64K; series Basic, DualPath, Oracle.

Command:
    python experiments/run_sim.py --config=configs/sim_fig7.py --workdir=workdir/sim_fig7
    python experiments/run_sim.py --config=configs/sim_fig7.py:quick --workdir=/tmp/fig7
Expected run time on a 2-core CPU: the full grid (3 models x 3 MALs x 512..4096 agents x 3
variants, about 22 M simulated requests) about 35 minutes per seed; ``:quick`` (DS 27B and DS 660B,
MAL 32K and 64K, 128 and 512 agents) about 2 minutes for all of its 3 seeds; ``:tiny`` (tests) a few
seconds. Every configuration runs ``seeds`` = 3 times (workload seed ``seed + r``; ``--config.seeds=R``;
``:tiny`` 1), serially, or in parallel with ``--workers=N``; each figure is the mean over the seeds
with its 95% CI (``<name>_ci95``).
Output: fig7.json, fig7.md/.csv (JCT, speedup vs Basic, JCT / Oracle, TTFT, TPOT per cell),
fig7.png (the grid), and ``name: value`` lines (max / mean DualPath speedup vs Basic, where the
max is, DualPath / Oracle JCT per row).

Qwen 32B (PAPER.md section 6.1, A.4): FP16 KV (256 KiB/token), 320 GB DRAM buffer per node.
The paper does not give its weight dtype (PAPER.md 6.1: only Table 1's FP16 KV); the public
checkpoint is BF16 (its config.json's torch_dtype), which is what a Qwen SimConfig gets by default.
This row sets both dtypes explicitly: FP8 weights (32.8 GB/GPU, DP only) leave 35 GB of HBM per PE
for KV and activations; BF16 weights (65.5 GB) would leave under 3 GB, so FP8 is the assumption
that makes the 1P2D deployment servable. The weights' dtype is the GEMMs' compute dtype, so the
row computes at the GPU's FP8 peak (H800: 1979 dense TFLOP/s, ``sim.catalog``).
"""

import ml_collections

from dualpath_jax.config import config_variant_error
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import workload_config_dict

ROWS = {
    "ds27b": {"label": "DS 27B", "sim": {"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1}},
    "ds660b": {"label": "DS 660B", "sim": {"model": "deepseek-v3.2", "prefill_nodes": 2, "decode_nodes": 4}},
    "qwen32b": {"label": "Qwen 32B", "sim": {"model": "qwen2.5-32b", "prefill_nodes": 1, "decode_nodes": 2,
                                             "kv_dtype": "fp16", "weight_dtype": "fp8",
                                             "hardware": {"dram_buffer_bytes": 320e9}}},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.study = "fig7"
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.seed = 0
    config.seeds = 3  # runs per configuration (workload seed seed + r); figures: mean and 95% CI
    config.rows = ml_collections.ConfigDict(ROWS)
    config.row_order = ("ds27b", "ds660b", "qwen32b")
    config.mals = ("32K", "48K", "64K")
    config.num_agents = (512, 1024, 2048, 4096)
    config.variants = ("basic", "dualpath", "oracle")
    config.workload = workload_config_dict(exclude=("mal", "num_agents"))  # MAL and agents: mals, num_agents
    config.sim = sim_config_dict()  # KV and weight dtypes: each row model's own unless the row sets them
    if arg == "quick":
        config.row_order = ("ds27b", "ds660b")
        config.mals = ("32K", "64K")
        config.num_agents = (128, 512)
    elif arg == "tiny":
        config.seeds = 1
        config.row_order = ("ds27b",)
        config.mals = ("32K",)
        config.num_agents = (8, 16)
        config.workload.token_divisor = 8
    elif arg not in (None, ""):
        raise config_variant_error("configs/sim_fig7.py", arg, ("quick", "tiny"))
    return config
