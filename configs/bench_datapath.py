"""Data-path benchmark: store read throughput, layer-wise load/compute overlap, device KV peak.

Command:
    python experiments/bench_datapath.py --config=configs/bench_datapath.py --workdir=workdir/bench_datapath
Expected run time: about 1-2 minutes on a 2-core CPU. ``configs/bench_datapath.py:quick`` is a
~30 s smoke run (fewer blocks, L=16: the first layer's unhidden load is then 1/16 of the run, so
its overlap efficiency sits above the default's).
Expected output: a store-read table (cold and warm page cache), an overlap table (compute only,
loading only, layerwise depth 2, layerwise depth 1, full) and the final ``name: value`` lines
``store_read_repeats``, ``repeats`` and, each as the mean over repeats of a ratio taken within one
repeat with ``_ci95`` (95% interval half width), ``_min`` and ``_max``: ``store_read_ratio``
(cold/cold, target >= 0.8), ``store_read_ratio_warm`` (warm/warm, target >= 0.9),
``overlap_efficiency`` (target <= 1.15), ``overlap_efficiency_depth1`` (about 2) and
``kv_device_peak_ratio`` (about depth / L); the same values in ``workdir/metrics.json``.
Every field is checked before the run starts (``store.repeats`` and ``repeats`` >= 2,
``cached_tokens`` a multiple of 64, ``depth`` <= ``model.n_layers``, ...).
"""

import ml_collections

from dualpath_jax.config import config_variant_error


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # (1) store read throughput: N Full Blocks of a paper-scale layout.
    config.store = ml_collections.ConfigDict()
    config.store.model = "deepseek-v3.2"   # FP8 MLA: 61 x 64 x 656 B = 2.56 MB Full Blocks (PAPER.md 2.2)
    config.store.kv_dtype = "fp8"
    config.store.num_blocks = 128
    config.store.io_threads = 4
    config.store.repeats = 10             # paired store/plain passes (>= 2; page-cache and allocator state vary)
    # (2)/(3) overlap: a tiny-gqa-derived model with enough per-layer compute to measure.
    config.model = ml_collections.ConfigDict()
    config.model.base = "tiny-gqa"
    config.model.n_layers = 32
    config.model.d_model = 512
    config.model.n_heads = 8
    config.model.n_kv_heads = 2
    config.model.head_dim = 64
    config.model.d_ff = 1024
    config.batch_size = 1
    config.cached_tokens = 1024          # hit tokens per request (a multiple of 64)
    config.append_tokens = 256
    config.depth = 2
    config.repeats = 4                   # paired repeats (>= 2; mean ± 95% CI reported)
    config.passes = 2                    # runs of each kind per repeat (best taken)
    config.kv_dtype = "f32"
    if arg == "quick":
        config.store.num_blocks = 48
        config.store.repeats = 6
        config.model.n_layers = 16
        config.repeats = 3
    elif arg not in (None, ""):
        raise config_variant_error("configs/bench_datapath.py", arg, ("quick",))
    return config
