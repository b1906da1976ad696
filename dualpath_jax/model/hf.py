"""Load a local Hugging Face checkpoint (``config.json`` + safetensors) into ``(ModelSpec, params)``.

Supported architectures: ``Qwen2ForCausalLM`` (``model_type="qwen2"``) and
``DeepseekV3ForCausalLM`` (``model_type="deepseek_v3"``) whose layers are all dense
(``first_k_dense_replace >= num_hidden_layers`` or ``n_routed_experts`` 0). Weight names follow
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
from safetensors import safe_open

from dualpath_jax.config import ConfigError
from dualpath_jax.model.params import param_shapes
from dualpath_jax.model.spec import ModelSpec

__all__ = ["load_hf_checkpoint", "spec_from_hf_config"]


def _rope_theta(cfg: dict, path: str) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ConfigError(f"{path}: rope_parameters.rope_type",
                          f"only default RoPE is supported (got {rope_type!r})")
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def spec_from_hf_config(cfg: dict[str, Any], *, name: str = "hf", path: str = "config.json") -> ModelSpec:
    """Translate a HF ``config.json`` dict into a :class:`ModelSpec`.

    Raises:
      ConfigError: naming ``<path>: <field>`` for an unsupported architecture or setting
        (unknown ``model_type``, MoE layers, attention bias on MLA, sliding window, YaRN RoPE).
    """
    model_type = cfg.get("model_type")
    try:
        common = dict(name=name, vocab_size=int(cfg["vocab_size"]), d_model=int(cfg["hidden_size"]),
                      n_layers=int(cfg["num_hidden_layers"]), n_heads=int(cfg["num_attention_heads"]),
                      d_ff=int(cfg["intermediate_size"]), rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                      rope_theta=_rope_theta(cfg, path),
                      tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                      max_position=int(cfg.get("max_position_embeddings", 131072)))
    except KeyError as e:
        raise ConfigError(f"{path}: {e.args[0]}", "required field is missing") from None
    if model_type == "qwen2":
        if cfg.get("use_sliding_window", False):
            raise ConfigError(f"{path}: use_sliding_window", "sliding-window attention is not supported")
        head_dim = int(cfg.get("head_dim") or common["d_model"] // common["n_heads"])
        return ModelSpec(attention="gqa", n_kv_heads=int(cfg.get("num_key_value_heads", common["n_heads"])),
                         head_dim=head_dim, qkv_bias=True, **common)
    if model_type == "deepseek_v3":
        n_layers = common["n_layers"]
        n_routed = int(cfg.get("n_routed_experts") or 0)
        first_dense = int(cfg.get("first_k_dense_replace", 0))
        if n_routed and first_dense < n_layers:
            raise ConfigError(f"{path}: first_k_dense_replace",
                              f"layers {first_dense}..{n_layers - 1} are MoE; the functional model runs dense "
                              f"MLPs only (set first_k_dense_replace >= num_hidden_layers={n_layers})")
        if cfg.get("attention_bias", False):
            raise ConfigError(f"{path}: attention_bias", "MLA with attention bias is not supported")
        return ModelSpec(attention="mla", q_lora_rank=int(cfg.get("q_lora_rank") or 0),
                         kv_lora_rank=int(cfg["kv_lora_rank"]), qk_nope_head_dim=int(cfg["qk_nope_head_dim"]),
                         qk_rope_head_dim=int(cfg["qk_rope_head_dim"]), v_head_dim=int(cfg["v_head_dim"]),
                         rope_interleave=bool(cfg.get("rope_interleave", True)), **common)
    raise ConfigError(f"{path}: model_type", f"unsupported architecture {model_type!r}; "
                      "supported: 'qwen2', 'deepseek_v3'")


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
        with safe_open(file, framework="flax") as f:
            for key in f.keys():
                tensors[key] = np.asarray(f.get_tensor(key))
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
      ConfigError: unsupported architecture / settings (see :func:`spec_from_hf_config`).
      ValueError: a tensor is missing or has an unexpected shape (message names the tensor).
    """
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: not found")
    with open(cfg_path) as f:
        cfg = json.load(f)
    spec = spec_from_hf_config(cfg, name=name or os.path.basename(os.path.normpath(path)), path=cfg_path)
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
