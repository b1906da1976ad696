"""Model demo: layer-by-layer prefill over cached KV checked against one pass; Table 1 ratios.

    python experiments/run_demo.py --config=configs/demo.py --workdir=workdir/demo

Writes ``config.json``, ``env.json``, ``metrics.json`` and ``status.json`` to the workdir (new or
empty; ``--overwrite`` replaces an earlier run's) and ends with ``name: value`` lines:
``max_abs_diff_<model>`` and ``ratio_<model>_<context>``. ``--print_config`` lists the config's fields.
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
from absl import flags, logging
from ml_collections import config_flags

from dualpath_jax.config import describe_config
from dualpath_jax.model import cost, forward, forward_with_cache, get_spec, init_params
from dualpath_jax.studies import cli

_CONFIG = cli.define_config_file("config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       "configs", "demo.py"),
                                 "Demo config file; --print_config lists its fields.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/demo", "Directory for config.json, env.json, metrics.json (new or "
                                "empty; --overwrite replaces an earlier run).")
_DOCS = {
    "models": "models whose layer-by-layer prefill is checked against one pass (dualpath_jax.model presets).",
    "seq_len": "tokens of the checked sequence.",
    "cached_lens": "cached-prefix lengths the prefill starts from.",
    "seed": "seed of the parameters and tokens.",
    "ratio_models": "models of the cache-compute ratio table (PAPER.md Table 1).",
    "ratio_contexts": "context lengths of the table, tokens.",
    "append_tokens": "appended tokens per round of the table.",
}


def run(config, workdir: str) -> dict[str, float]:
    """Run the demo; returns the headline figures (also written to ``workdir/metrics.json``)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2, default=list)
    with open(os.path.join(workdir, "env.json"), "w") as f:
        json.dump({"python": platform.python_version(), "jax": jax.__version__,
                   "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}, f, indent=2)
    figures: dict[str, float] = {}
    for name in config.models:
        spec = get_spec(name)
        params = init_params(spec, jax.random.PRNGKey(config.seed))
        tokens = jax.random.randint(jax.random.PRNGKey(config.seed + 1), (config.seq_len,), 0, spec.vocab_size)
        full = forward(params, spec, tokens)
        worst = 0.0
        for cached in config.cached_lens:
            start = time.perf_counter()
            caches = forward_with_cache(params, spec, tokens[:cached], None)[1] if cached else None
            logits, _ = forward_with_cache(params, spec, tokens[cached:], caches)
            diff = float(jnp.max(jnp.abs(logits - full[cached:])))
            worst = max(worst, diff)
            print(f"{name:9s} cached={cached:4d} new={config.seq_len - cached:4d} "
                  f"max|layerwise - one pass|={diff:.2e}  ({time.perf_counter() - start:.2f} s)")
        figures[f"max_abs_diff_{name}"] = worst
    print("\ncache-compute ratio (GB/PFLOP), append", config.append_tokens, "tokens (PAPER.md Table 1)")
    for name in config.ratio_models:
        spec = get_spec(name)
        row = []
        for ctx in config.ratio_contexts:
            r = cost.cache_compute_ratio(spec, ctx, config.append_tokens)
            figures[f"ratio_{name}_{ctx // 1024}k"] = r
            row.append(f"{ctx // 1024}K: {r:6.1f}")
        print(f"  {name:14s} KV {cost.kv_bytes_per_token(spec) / 1024:7.1f} KiB/token  " + "  ".join(row))
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(figures, f, indent=2)
    return figures


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    figures = run(_CONFIG.value, str(cli.open_workdir(_WORKDIR.value)))
    print()
    for key, value in figures.items():
        print(f"{key}: {value:.6g}")


def _describe(config) -> str:
    """``--print_config``: every field, with the config file's default variant as the defaults."""
    import importlib.util

    path = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[0]
    spec = importlib.util.spec_from_file_location("_demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return describe_config(config, docs=_DOCS, defaults=module.get_config(None),
                           title=f"# model demo ({path}); set a field with --config.<name>=<value>")


if __name__ == "__main__":
    cli.run(main, config=_CONFIG, describe=_describe)
