"""Load a local Hugging Face checkpoint (``config.json`` + safetensors) into ``(ModelSpec, params)``.

Supported architectures: ``Qwen2ForCausalLM`` (``model_type="qwen2"``), ``Qwen3ForCausalLM`` /
``Qwen3MoeForCausalLM`` (``"qwen3"`` / ``"qwen3_moe"``), ``LlamaForCausalLM`` /
``MistralForCausalLM`` (``"llama"`` / ``"mistral"``) and ``DeepseekV2ForCausalLM`` /
``DeepseekV3ForCausalLM`` (``"deepseek_v2"`` / ``"deepseek_v3"``: the same MLA weights and
interleaved RoPE); dense or MoE (DeepSeek-V2's softmax router, greedy or group-limited, as
Qwen3-MoE's; V3's sigmoid router with its ``e_score_correction_bias``; shared experts), with
default, linear, YaRN or Llama 3 RoPE and no DSA indexer. The ``config.json`` is read by
:func:`~dualpath_jax.model.hf_config.spec_from_hf_config` (JAX-free, also used by the simulator, which
accepts indexer models too). Weight names follow ``transformers``' modeling files;
``torch.nn.Linear`` weights ``[out, in]`` are transposed to this project's ``[in, out]``.
Single-file and sharded (``model.safetensors.index.json``) checkpoints are read. No network
access: the path must be a local directory.
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
from dualpath_jax.model.hf_config import _read_hf_config, spec_from_hf_config
from dualpath_jax.model.spec import ModelSpec

__all__ = ["load_hf_checkpoint", "spec_from_hf_config"]


def _check_runnable(cfg: dict[str, Any], spec: ModelSpec, path: str) -> None:
    """Raise for what the functional model's forward does not implement (the spec itself may hold it)."""
    key = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    rope = cfg.get(key) or {}
    kind_key = "type" if "rope_type" not in rope and "type" in rope else "rope_type"
    rope_type = rope.get(kind_key, "default")
    if rope_type not in ("default", None, "linear", "yarn", "llama3"):
        raise ConfigError(f"{path}: {key}.{kind_key}",
                          f"only default, linear, yarn and llama3 RoPE are supported (got {rope_type!r})")
    if spec.index_n_heads:
        raise ConfigError(f"{path}: index_n_heads", "the DSA indexer is not implemented by the functional model "
                          "(it runs dense attention)")
    if spec.is_mla and cfg.get("attention_bias", False):
        raise ConfigError(f"{path}: attention_bias", "MLA with attention bias is not supported")
    if cfg.get("hidden_act", "silu") not in ("silu", "swish"):  # (transformers' ACT2FN: swish is SiLU)
        raise ConfigError(f"{path}: hidden_act", f"only silu (SwiGLU) is supported (got {cfg['hidden_act']!r})")
    if cfg.get("mlp_bias", False):
        raise ConfigError(f"{path}: mlp_bias", "MLP biases are not supported")
    quant = cfg.get("quantization_config")
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise ConfigError(f"{path}: quantization_config", f"quantized weights ({method!r}) are not dequantized "
                          "by this loader; use a BF16/F32 checkpoint (e.g. one converted with DeepSeek's "
                          "fp8_cast_bf16.py)")


def _weight_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{index}: cannot be read ({e})") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"{index}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from e
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
            raise ValueError(f"{index}: weight_map: must be an object of tensor name -> shard file name "
                             f"(got {type(weight_map).__name__ if weight_map is not None else 'none'})")
        return sorted({os.path.join(path, v) for v in weight_map.values()})
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json (PyTorch .bin weights "
                            "are not read; a config.json alone is priced by the simulator, sim.model)")


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
    """Our param name (``mlp.*`` and ``mlp.shared.*`` nested) -> (HF tensor name, transpose?); a MoE
    layer's routed experts are read by :func:`_expert_weights`."""
    pre = f"model.layers.{layer}."
    names = {"attn_norm": (pre + "input_layernorm.weight", False),
             "mlp_norm": (pre + "post_attention_layernorm.weight", False)}
    if spec.is_moe_layer(layer):
        names["mlp.router"] = (pre + "mlp.gate.weight", True)
        if spec.moe_topk_method == "noaux_tc":
            names["mlp.router_bias"] = (pre + "mlp.gate.e_score_correction_bias", False)
        if spec.n_shared_experts:
            for ours in ("gate", "up", "down"):
                names[f"mlp.shared.w_{ours}"] = (pre + f"mlp.shared_experts.{ours}_proj.weight", True)
    else:
        for ours in ("gate", "up", "down"):
            names[f"mlp.w_{ours}"] = (pre + f"mlp.{ours}_proj.weight", True)
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
        if spec.o_bias:
            names["bo"] = (a + "o_proj.bias", False)
        if spec.qk_norm:
            names.update(q_norm=(a + "q_norm.weight", False), k_norm=(a + "k_norm.weight", False))
    return names


def _tensor(tensors: dict[str, np.ndarray], name: str, transpose: bool, shape: tuple, path: str,
            read: set[str]) -> np.ndarray:
    """``tensors[name]`` (transposed when ``transpose``) checked to be ``shape``, its name added to ``read``.

    Raises:
      ValueError: the tensor is missing or of another shape (naming it).
    """
    if name not in tensors:
        raise ValueError(f"{path}: tensor {name!r} missing from checkpoint")
    w = tensors[name].T if transpose else tensors[name]
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"{path}: tensor {name!r} has shape {tuple(w.shape)}, expected {tuple(shape)}")
    read.add(name)
    return w


def _expert_weights(tensors: dict[str, np.ndarray], spec: ModelSpec, layer: int, path: str,
                    read: set[str]) -> dict[str, np.ndarray]:
    """A MoE layer's routed experts as ``w_gate/w_up [E, D, Fm]``, ``w_down [E, Fm, D]`` (their
    tensor names added to ``read``): from the Hub's per-expert tensors
    (``mlp.experts.<j>.{gate,up,down}_proj.weight``) or, when absent, from ``transformers`` 5's fused
    ``mlp.experts.gate_up_proj [E, 2Fm, D]`` and ``down_proj [E, D, Fm]``.

    Raises:
      ValueError: a tensor missing (naming the first one) or of another shape.
    """
    pre = f"model.layers.{layer}.mlp.experts."
    e, d, fm = spec.n_routed_experts, spec.d_model, spec.moe_d_ff
    if f"{pre}0.gate_proj.weight" not in tensors and pre + "gate_up_proj" in tensors:
        gate_up = np.swapaxes(_tensor(tensors, pre + "gate_up_proj", False, (e, 2 * fm, d), path, read), 1, 2)
        down = _tensor(tensors, pre + "down_proj", False, (e, d, fm), path, read)
        return {"w_gate": gate_up[..., :fm], "w_up": gate_up[..., fm:], "w_down": np.swapaxes(down, 1, 2)}
    return {f"w_{ours}": np.stack([_tensor(tensors, f"{pre}{j}.{ours}_proj.weight", True, shape, path, read)
                                   for j in range(e)])
            for ours, shape in (("gate", (d, fm)), ("up", (d, fm)), ("down", (fm, d)))}


def load_hf_checkpoint(path: str | os.PathLike, *, dtype=jnp.float32, name: str | None = None
                       ) -> tuple[ModelSpec, dict]:
    """Read a local HF checkpoint directory into ``(spec, params)``.

    Args:
      path: directory holding ``config.json`` and ``model.safetensors`` (or a sharded index), or
        that ``config.json``.
      dtype: dtype of the returned params (a MoE router's ``router`` / ``router_bias`` stay f32:
        DeepSeek's reference routes in f32; Qwen3-MoE's computes its router logits in the model
        dtype, so in bf16 near-ties between experts may be broken differently).
      name: spec name (defaults to the directory name).

    Raises:
      FileNotFoundError: no config or weight files.
      ConfigError: naming the ``config.json`` when it is not a readable JSON object; naming
        ``<config.json>: <key>`` for an unsupported architecture or setting
        (:func:`~dualpath_jax.model.hf_config.spec_from_hf_config`; the DSA indexer, RoPE kinds other than
        default, linear, YaRN and Llama 3, attention bias on MLA, an activation other than SiLU, MLP biases,
        quantized weights).
      ValueError: a weight file is unreadable (truncated, damaged, a shard missing, a sharded
        index that is not JSON or has no ``weight_map``; the message names the file), a tensor is missing or has an unexpected shape (it names the tensor), or
        the checkpoint holds weights the config.json does not describe (:func:`_check_all_read`).
    """
    path = os.fspath(path)
    if os.path.basename(path) == "config.json" and os.path.isfile(path):  # the checkpoint's config.json itself
        path = os.path.dirname(path) or "."
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: not found")
    _, cfg = _read_hf_config(cfg_path, "model.checkpoint")  # names the file when it is not a JSON object
    spec = spec_from_hf_config(cfg, name=name or os.path.basename(os.path.normpath(path)), path=cfg_path)
    _check_runnable(cfg, spec, cfg_path)
    tensors = _read_tensors(path)
    shapes = param_shapes(spec)

    read: set[str] = set()

    def take(hf_name: str, transpose: bool, shape: tuple, dtype=dtype) -> jnp.ndarray:
        return jnp.asarray(_tensor(tensors, hf_name, transpose, shape, path, read), dtype=dtype)

    params: dict = {"embed": take("model.embed_tokens.weight", False, shapes["embed"]),
                    "final_norm": take("model.norm.weight", False, shapes["final_norm"])}
    if not spec.tie_embeddings:
        params["lm_head"] = take("lm_head.weight", True, shapes["lm_head"])
    layers = []
    for layer in range(spec.n_layers):
        lp: dict = {"mlp": {}}
        for ours, (theirs, transpose) in _hf_names(spec, layer).items():
            *parents, leaf = ours.split(".")
            node, shape = lp, shapes["layers"][layer]
            for key in parents:
                node, shape = node.setdefault(key, {}), shape[key]
            node[leaf] = take(theirs, transpose, shape[leaf],  # routing in f32, as the reference code
                              jnp.float32 if leaf.startswith("router") else dtype)
        if spec.is_moe_layer(layer):
            experts = _expert_weights(tensors, spec, layer, path, read)
            lp["mlp"].update({k: jnp.asarray(w, dtype) for k, w in experts.items()})
        layers.append(lp)
    params["layers"] = layers
    _check_all_read(tensors, read, spec, cfg, path)
    return spec, params


def _check_all_read(tensors: dict, read: set, spec: ModelSpec, cfg: dict, path: str) -> None:
    """Raise ValueError for weights the ``config.json`` does not account for: a key it leaves out
    (shared experts, biases, q/k norms, MoE layers) would otherwise run another model than the
    checkpoint's. Not counted: RoPE tables (``rotary_emb.inv_freq``), DeepSeek-V3's multi-token
    prediction layers (``num_nextn_predict_layers`` after the last layer), a tied model's
    ``lm_head.weight`` and tensors with no elements (``transformers`` writes zero-width shared
    experts for ``n_shared_experts: 0``)."""
    mtp = int(cfg.get("num_nextn_predict_layers") or 0)
    extra = []
    for name in tensors:
        if name in read or name.endswith("rotary_emb.inv_freq") or (spec.tie_embeddings and name == "lm_head.weight"):
            continue
        if tensors[name].size == 0:  # computes nothing, whatever its name
            continue
        parts = name.split(".")
        if mtp and name.startswith("model.layers.") and parts[2].isdigit() and \
                spec.n_layers <= int(parts[2]) < spec.n_layers + mtp:
            continue
        extra.append(name)
    if extra:
        raise ValueError(f"{path}: {len(extra)} tensor(s) the config.json does not describe, e.g. {sorted(extra)[:3]} "
                         "(a key it leaves out, such as n_shared_experts, attention_bias or the MoE layers?)")
