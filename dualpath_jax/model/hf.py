"""Load a local Hugging Face checkpoint (``config.json`` + safetensors) into ``(ModelSpec, params)``.

Supported architectures: ``Qwen2ForCausalLM`` (``model_type="qwen2"``) and
``DeepseekV2ForCausalLM`` / ``DeepseekV3ForCausalLM`` (``model_type="deepseek_v2"`` /
``"deepseek_v3"``: the same MLA weights and interleaved RoPE) whose layers are all dense
(``first_k_dense_replace >= num_hidden_layers`` or ``n_routed_experts`` 0), with default RoPE and
no DSA indexer. The ``config.json`` is read by :func:`~dualpath_jax.model.spec.spec_from_hf_config`
(JAX-free, also used by the simulator, which accepts MoE and indexer models). Weight names follow
``transformers``' modeling files; ``torch.nn.Linear`` weights ``[out, in]`` are transposed to this
project's ``[in, out]``. Single-file and sharded (``model.safetensors.index.json``) checkpoints
are read. No network access: the path must be a local directory.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from dualpath_jax.config import ConfigError
from dualpath_jax.model.params import param_shapes
from dualpath_jax.model.spec import ModelSpec, spec_from_hf_config

__all__ = ["load_hf_checkpoint", "spec_from_hf_config"]


def _check_runnable(cfg: dict[str, Any], spec: ModelSpec, path: str) -> None:
    """Raise for what the functional model's forward does not implement (the spec itself may hold it)."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ConfigError(f"{path}: rope_parameters.rope_type",
                          f"only default RoPE is supported (got {rope_type!r})")
    if spec.n_routed_experts:
        raise ConfigError(f"{path}: first_k_dense_replace",
                          f"layers {spec.first_k_dense}..{spec.n_layers - 1} are MoE; the functional model runs dense "
                          f"MLPs only (set first_k_dense_replace >= num_hidden_layers={spec.n_layers})")
    if spec.index_n_heads:
        raise ConfigError(f"{path}: index_n_heads", "the DSA indexer is not implemented by the functional model "
                          "(it runs dense attention)")
    if spec.is_mla and cfg.get("attention_bias", False):
        raise ConfigError(f"{path}: attention_bias", "MLA with attention bias is not supported")


def _weight_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted({os.path.join(path, v) for v in weight_map.values()})
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for file in _weight_files(path):
        try:
            with safe_open(file, framework="flax") as f:
                for key in f.keys():
                    tensors[key] = np.asarray(f.get_tensor(key))
        except (OSError, SafetensorError) as e:  # missing shard, truncated or damaged file
            raise ValueError(f"{file}: not a readable safetensors file ({' '.join(str(e).split())})") from e
    return tensors


def _hf_names(spec: ModelSpec, layer: int) -> dict[str, tuple[str, bool]]:
    """Our param name -> (HF tensor name, transpose?)."""
    pre = f"model.layers.{layer}."
    names = {"attn_norm": (pre + "input_layernorm.weight", False),
             "mlp_norm": (pre + "post_attention_layernorm.weight", False),
             "mlp.w_gate": (pre + "mlp.gate_proj.weight", True),
             "mlp.w_up": (pre + "mlp.up_proj.weight", True),
             "mlp.w_down": (pre + "mlp.down_proj.weight", True)}
    a = pre + "self_attn."
    if spec.is_mla:
        if spec.q_lora_rank:
            names.update({"wq_a": (a + "q_a_proj.weight", True), "q_a_norm": (a + "q_a_layernorm.weight", False),
                          "wq_b": (a + "q_b_proj.weight", True)})
        else:
            names["wq"] = (a + "q_proj.weight", True)
        names.update({"wkv_a": (a + "kv_a_proj_with_mqa.weight", True),
                      "kv_a_norm": (a + "kv_a_layernorm.weight", False),
                      "wkv_b": (a + "kv_b_proj.weight", True), "wo": (a + "o_proj.weight", True)})
    else:
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
            names["w" + ours] = (a + theirs + ".weight", True)
            if spec.qkv_bias:
                names["b" + ours] = (a + theirs + ".bias", False)
        names["wo"] = (a + "o_proj.weight", True)
    return names


def load_hf_checkpoint(path: str | os.PathLike, *, dtype=jnp.float32, name: str | None = None
                       ) -> tuple[ModelSpec, dict]:
    """Read a local HF checkpoint directory into ``(spec, params)``.

    Args:
      path: directory holding ``config.json`` and ``model.safetensors`` (or a sharded index).
      dtype: dtype of the returned params.
      name: spec name (defaults to the directory name).

    Raises:
      FileNotFoundError: no config or weight files.
      ConfigError: naming ``<config.json>: <key>`` for an unsupported architecture or setting
        (:func:`~dualpath_jax.model.spec.spec_from_hf_config`; MoE layers, the DSA indexer, RoPE
        scaling, attention bias on MLA).
      ValueError: a weight file is unreadable (truncated, damaged, a shard missing; the message
        names the file), or a tensor is missing or has an unexpected shape (it names the tensor).
    """
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: not found")
    with open(cfg_path) as f:
        cfg = json.load(f)
    spec = spec_from_hf_config(cfg, name=name or os.path.basename(os.path.normpath(path)), path=cfg_path)
    _check_runnable(cfg, spec, cfg_path)
    tensors = _read_tensors(path)
    shapes = param_shapes(spec)

    def take(hf_name: str, transpose: bool, shape: tuple) -> jnp.ndarray:
        if hf_name not in tensors:
            raise ValueError(f"{path}: tensor {hf_name!r} missing from checkpoint")
        w = tensors[hf_name]
        w = w.T if transpose else w
        if tuple(w.shape) != tuple(shape):
            raise ValueError(f"{path}: tensor {hf_name!r} has shape {tuple(w.shape)}, expected {tuple(shape)}")
        return jnp.asarray(w, dtype=dtype)

    params: dict = {"embed": take("model.embed_tokens.weight", False, shapes["embed"]),
                    "final_norm": take("model.norm.weight", False, shapes["final_norm"])}
    if not spec.tie_embeddings:
        params["lm_head"] = take("lm_head.weight", True, shapes["lm_head"])
    layers = []
    for layer in range(spec.n_layers):
        lp: dict = {"mlp": {}}
        for ours, (theirs, transpose) in _hf_names(spec, layer).items():
            if ours.startswith("mlp."):
                key = ours.split(".", 1)[1]
                lp["mlp"][key] = take(theirs, transpose, shapes["layers"][layer]["mlp"][key])
            else:
                lp[ours] = take(theirs, transpose, shapes["layers"][layer][ours])
        layers.append(lp)
    params["layers"] = layers
    return spec, params
