"""Pure-functional GQA (Qwen2-style) and MLA (DeepSeek-V3-style) transformer models, dense or MoE.

Two halves, split so that the layers below the runtimes' JAX code can use the model's shapes:

* JAX-free: :mod:`~dualpath_jax.model.spec` (``ModelSpec``, the presets),
  :mod:`~dualpath_jax.model.hf_config` (a Hugging Face ``config.json`` read into a ``ModelSpec``)
  and :mod:`~dualpath_jax.model.cost` (KV bytes, FLOPs, the cache-compute ratio) import only the
  stdlib, numpy and ``dualpath_jax.config``. The simulator, the scheduler and ``kvcache`` use them
  without loading JAX (DESIGN.md's layers; ``tests/test_layering.py`` checks it in a subprocess).
* JAX: ``forward``, ``layers``, ``params``, ``hf``, ``checkpoint`` and ``fingerprint`` (the
  weights fingerprint that scopes the KV store's keys).

Importing this package loads only the JAX-free half. The JAX names listed in ``_LAZY``
(``forward``, ``init_params``, ``load_hf_checkpoint``, ``save_params``, ...) are loaded on first
access through a module ``__getattr__`` (PEP 562), so ``from dualpath_jax.model import get_spec,
forward`` works as before.
"""

import sys
import types

from dualpath_jax.lazy import lazy_exports
from dualpath_jax.model.spec import PRESETS, ModelSpec, RopeScaling, get_spec, preset_names

_LAZY = {  # public JAX-side name -> the submodule that defines it
    **dict.fromkeys(["LayerKV", "embed", "empty_layer_kv", "forward", "forward_batch", "forward_with_cache",
                     "kv_concat", "layer_forward", "unembed"], "forward"),
    **dict.fromkeys(["count_params", "init_params", "param_shapes"], "params"),
    "weights_fingerprint": "fingerprint",
    "load_hf_checkpoint": "hf",
    **dict.fromkeys(["save_params", "restore_params"], "checkpoint"),
}

__all__ = sorted(["ModelSpec", "PRESETS", "RopeScaling", "get_spec", "preset_names", *_LAZY])


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


class _Package(types.ModuleType):
    """Keeps ``dualpath_jax.model.forward`` the function: the import system binds a submodule on
    its package when it first loads it, which would otherwise replace the function by the module
    ``model/forward.py`` once anything imports that module directly."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
