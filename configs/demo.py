"""Model demo: layer-by-layer prefill over cached KV vs one pass, and the cache-compute ratio table.

Command:
    python experiments/run_demo.py --config=configs/demo.py --workdir=workdir/demo
Expected run time: about 30 s on a 2-core CPU.
Expected output: per model and cached-prefix length the max |logit difference| between the
layer-by-layer prefill and the one-pass forward (about 1e-7 in float32), then the cache-compute
ratio of the paper's Table 1 models; ends with ``name: value`` lines.
Variants: ``configs/demo.py:quick`` uses a shorter sequence.
"""

import ml_collections

from dualpath_jax.config import config_variant_error


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.models = ("tiny-gqa", "tiny-mla")
    config.seq_len = 256
    config.cached_lens = (0, 1, 63, 64, 65, 192)
    config.seed = 0
    config.ratio_models = ("qwen2.5-32b", "deepseek-v3.2", "ds-27b")
    config.ratio_contexts = (16384, 32768, 65536)
    config.append_tokens = 429
    if arg == "quick":
        config.seq_len = 96
        config.cached_lens = (0, 64, 65)
    elif arg not in (None, ""):
        raise config_variant_error("configs/demo.py", arg, ("quick",))
    return config
