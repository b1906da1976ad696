"""Pure-functional GQA (Qwen2-style) and MLA (DeepSeek-V3-style) transformer models."""

from dualpath_jax.model.forward import (LayerKV, embed, empty_layer_kv, forward, forward_batch,
                                        forward_with_cache, kv_concat, layer_forward, unembed)
from dualpath_jax.model.params import count_params, init_params, param_shapes
from dualpath_jax.model.spec import PRESETS, ModelSpec, get_spec, preset_names

__all__ = [
    "LayerKV", "ModelSpec", "PRESETS", "count_params", "embed", "empty_layer_kv", "forward",
    "forward_batch", "forward_with_cache", "get_spec", "init_params", "kv_concat", "layer_forward",
    "param_shapes", "preset_names", "unembed",
]
