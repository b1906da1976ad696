"""Soak run of the engine under faults (``experiments/soak.py``).

Command:
    python experiments/soak.py --minutes=10 --workdir=workdir/soak

The engine ablation's ``:quick`` workload (8 agentic conversations, 4 rounds, tiny GQA model, warm
store) replayed again and again for ``--minutes`` on the emulated 1P2D cluster, cycling through
``variants``, with every fault kind of :mod:`dualpath_jax.engine.faults` on (``faults``; each
replay draws its faults from ``faults.seed`` plus the replay number). Link rates are fixed (no
calibration): fast enough that a replay takes seconds, so the run covers many faults.

Every replay's tokens are checked against a no-cache recompute teacher-forced on the same tokens;
the output ends with ``wrong_tokens`` (tokens that differ from the recompute other than at a
float near-tie), ``lost_requests`` (rounds that did not finish), ``leaked_bytes`` (DRAM buffer
bytes, DE pool blocks and read-queue tokens, in bytes, still held after a replay),
``peak_rss_mb`` and ``rss_growth_mb`` (resident memory over the last quarter of the replays after
the ``warmup_replays`` minus over their first quarter: flat means near 0), plus the faults injected
and the attempts run again.
"""

import importlib.util
from pathlib import Path

import ml_collections

from dualpath_jax.config import config_variant_error


def _engine_config(arg: str) -> ml_collections.ConfigDict:
    path = Path(__file__).resolve().parent / "engine_ablation.py"
    spec = importlib.util.spec_from_file_location("_engine_ablation_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    engine = _engine_config("quick")
    engine.calibrate.load_over_oracle = 0.0  # fixed link rates (below)
    engine.cluster.snic_bytes_per_s = 50e6
    engine.cluster.cnic_bytes_per_s = 400e6
    engine.cluster.max_attempts = 20  # with these fault rates a round fails 20 times in a row ~never
    engine.cluster.timeout_s = 30.0
    engine.cluster.run_timeout_s = 300.0
    config.engine = engine
    config.variants = ("basic", "layerwise", "dpl", "dualpath", "oracle")
    config.faults = ml_collections.ConfigDict({
        "read_corruption_rate": 0.05, "slow_read_rate": 0.05, "slow_read_s": 0.02, "transfer_failure_rate": 0.01,
        "crash_rate": 0.01, "crash_worker": "", "crash_after_jobs": 0, "crash_at_s": -1.0, "seed": 0})
    config.warmup_replays = 10  # replays that still compile new shapes; rss_growth_mb looks at the ones after
    config.tie_tol = 1e-4
    if arg not in (None, ""):
        raise config_variant_error("configs/soak.py", arg, ())
    return config
