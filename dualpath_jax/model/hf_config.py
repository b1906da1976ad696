"""Reading a Hugging Face ``config.json`` into a :class:`~dualpath_jax.model.spec.ModelSpec`.

:func:`spec_from_hf_config` translates the fields of the model types in :data:`HF_MODEL_TYPES`
(shapes for the cost model and the simulator, and what the functional model needs: MoE routers,
RoPE scaling, GQA variants), naming ``<file>: <key>`` for a missing or bad field;
:func:`load_hf_config` reads the file (or the directory holding it); :func:`hf_weight_dtype` is the
weights' dtype the file declares. JAX-free, like :mod:`~dualpath_jax.model.spec` (the simulator
and the scheduler read configs without loading JAX).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from dualpath_jax.config import ConfigError
from dualpath_jax.model.spec import PRESETS, ModelSpec, RopeScaling

__all__ = ["spec_from_hf_config", "load_hf_config", "hf_weight_dtype", "HF_MODEL_TYPES"]


def load_hf_config(path: str | os.PathLike, *, name: str | None = None, field: str = "model.name") -> ModelSpec:
    """Read a Hugging Face ``config.json`` (``path``: the file, or a directory holding it) into a
    :class:`~dualpath_jax.model.spec.ModelSpec` named ``name`` (default: the directory's name).

    Raises:
      ConfigError: naming ``field`` when ``path`` holds no ``config.json``; naming the file when it
        is not a JSON object; as :func:`spec_from_hf_config` for its fields.
    """
    file, cfg = _read_hf_config(path, field)
    default_name = os.path.basename(os.path.dirname(os.path.abspath(file))) or "hf"
    return spec_from_hf_config(cfg, name=name or default_name, path=file)


def _read_hf_config(path: str | os.PathLike, field: str) -> tuple[str, dict]:
    """``(file, its JSON object)`` of the ``config.json`` at ``path`` (the file or its directory).

    Raises:
      ConfigError: as :func:`load_hf_config` (no file: ``field``; not a JSON object: the file).
    """
    path = os.fspath(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ConfigError(field, f"{path}: no config.json there")
    try:
        with open(file) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(file, f"not a readable JSON file ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(file, f"must hold a JSON object (got {type(cfg).__name__})")
    return file, cfg


# ModelSpec field -> the config.json key it comes from (errors of ModelSpec's own checks name the key)
_HF_KEYS = {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
            "n_heads": "num_attention_heads", "d_ff": "intermediate_size", "n_kv_heads": "num_key_value_heads",
            "head_dim": "head_dim", "q_lora_rank": "q_lora_rank", "kv_lora_rank": "kv_lora_rank",
            "qk_nope_head_dim": "qk_nope_head_dim", "qk_rope_head_dim": "qk_rope_head_dim",
            "v_head_dim": "v_head_dim", "index_n_heads": "index_n_heads", "index_head_dim": "index_head_dim",
            "index_topk": "index_topk", "n_routed_experts": "n_routed_experts",
            "n_shared_experts": "n_shared_experts", "n_activated_experts": "num_experts_per_tok",
            "moe_d_ff": "moe_intermediate_size", "first_k_dense": "first_k_dense_replace",
            "rope_theta": "rope_theta", "rms_norm_eps": "rms_norm_eps", "max_position": "max_position_embeddings",
            "moe_n_group": "n_group", "moe_topk_group": "topk_group", "moe_routed_scale": "routed_scaling_factor",
            "moe_scoring": "scoring_func", "moe_topk_method": "topk_method"}

_MISSING = object()


def _number(cfg: dict, key: str, path: str, kind: type, default: Any = _MISSING) -> Any:
    """``cfg[key]`` as ``kind`` (int or float); ``default`` when absent or null (required if no default)."""
    value = cfg.get(key)
    if value is None:
        if default is _MISSING:
            raise ConfigError(f"{path}: {key}", "required field is missing")
        return default
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or (kind is int and value != int(value))):
        raise ConfigError(f"{path}: {key}", f"must be {'an integer' if kind is int else 'a number'} (got {value!r})")
    return kind(value)


HF_MODEL_TYPES = ("qwen2", "qwen3", "qwen3_moe", "llama", "mistral", "deepseek_v2", "deepseek_v3", "deepseek_v32",
                  "kimi_k2")
"""The ``model_type`` values :func:`spec_from_hf_config` reads."""

_MAX_POSITION = {"qwen2": 32768, "qwen3": 32768, "qwen3_moe": 32768, "llama": 2048, "mistral": 131072,
                 "deepseek_v2": 2048, "deepseek_v3": 4096, "deepseek_v32": 163840}
"""``max_position_embeddings`` of a ``config.json`` that omits it: the default of ``transformers``'
config class of its ``model_type`` (5.x)."""

_HF_ALIASES = {"kimi_k2": "deepseek_v3"}
"""``model_type`` values read as another: Kimi-K2 is DeepSeek-V3's architecture (its ``config.json``
names ``DeepseekV3ForCausalLM`` in ``architectures``)."""


def _flag(cfg: dict, key: str, default: bool, path: str) -> bool:
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {key}", f"must be true or false (got {value!r})")
    return value


def _rope_interleave(cfg: dict, model_type: str, path: str) -> bool:
    """Whether MLA's RoPE rotates interleaved pairs: always for DeepSeek-V2 (its code and
    transformers' have no other layout); for V3 the key's truth value as transformers reads it
    (absent: true, ``null``: false).

    Raises:
      ConfigError: a value other than true, false, null or an integer.
    """
    if model_type == "deepseek_v2" or "rope_interleave" not in cfg:
        return True
    value = cfg["rope_interleave"]
    if value is not None and not isinstance(value, (bool, int)):
        raise ConfigError(f"{path}: rope_interleave", f"must be true or false (got {value!r})")
    return bool(value)


# the defaults of transformers' DeepseekV2Config / DeepseekV3Config (5.x) for the MoE keys a
# config.json may leave out (V3.2 is V3's); _MISSING: required
_DEEPSEEK_DEFAULTS = {
    "deepseek_v2": {"n_routed_experts": 64, "n_shared_experts": 2, "first_k_dense_replace": 0,
                    "num_experts_per_tok": _MISSING, "moe_intermediate_size": 1407, "n_group": 1, "topk_group": 1,
                    "norm_topk_prob": False, "routed_scaling_factor": 1.0, "q_lora_rank": 1536},
    "deepseek_v3": {"n_routed_experts": 256, "n_shared_experts": 1, "first_k_dense_replace": 3,
                    "num_experts_per_tok": 8, "moe_intermediate_size": 2048, "n_group": 8, "topk_group": 4,
                    "norm_topk_prob": True, "routed_scaling_factor": 2.5, "q_lora_rank": 1536},
}


def _moe_routing(cfg: dict, model_type: str, path: str, top_k: int) -> dict:
    """The router's fields of a DeepSeek ``config.json`` (``scoring_func``, ``topk_method``,
    ``n_group``, ``topk_group``, ``norm_topk_prob``, ``routed_scaling_factor``).

    DeepSeek-V2 (and V2-Lite) score with a softmax and pick ``greedy`` or ``group_limited_greedy``
    (a token's top-k among the ``topk_group`` groups holding its best experts); V3 and V3.2 score
    with a sigmoid and pick ``noaux_tc`` (groups ranked by their two best bias-corrected scores).
    Absent keys take the defaults of ``transformers``' ``DeepseekV2Config`` / ``DeepseekV3Config``.
    DeepSeek-V2 with ``norm_topk_prob`` and more than one expert per token (``top_k``) normalises the
    chosen weights *instead of* scaling them by ``routed_scaling_factor``, as DeepSeek's own modeling
    code does (``if top_k > 1 and norm_topk_prob: normalise, else: scale``; ``transformers`` 5 ignores
    the flag; the released V2 and V2-Lite checkpoints set it false, where both agree).
    """
    v2 = model_type == "deepseek_v2"
    defaults = _DEEPSEEK_DEFAULTS["deepseek_v2" if v2 else "deepseek_v3"]
    scoring, method = ("softmax", "greedy") if v2 else ("sigmoid", "noaux_tc")
    allowed = {"scoring_func": (scoring,), "topk_method": ("greedy", "group_limited_greedy") if v2 else (method,)}
    given = {}
    for key, choices in allowed.items():
        value = cfg.get(key)
        if value is not None and value not in choices:
            raise ConfigError(f"{path}: {key}", f"{model_type} supports {list(choices)} (got {value!r})")
        given[key] = value
    norm = _flag(cfg, "norm_topk_prob", defaults["norm_topk_prob"], path)
    scale = _number(cfg, "routed_scaling_factor", path, float, defaults["routed_scaling_factor"])
    if v2 and norm and top_k == 1:  # DeepSeek-V2's code scales a single expert's weight instead
        norm = False
    grouped = (given["topk_method"] or method) != "greedy"
    for key in ("n_group", "topk_group"):  # DeepSeek's code divides by them: a null is no group count
        if grouped and key in cfg and cfg[key] is None:
            raise ConfigError(f"{path}: {key}", f"topk_method {given['topk_method'] or method!r} groups the experts: "
                              f"needs an integer (got null)")
    return dict(moe_scoring=scoring, moe_topk_method=given["topk_method"] or method,
                moe_n_group=_number(cfg, "n_group", path, int, defaults["n_group"]),
                moe_topk_group=_number(cfg, "topk_group", path, int, defaults["topk_group"]), moe_norm_topk=norm,
                moe_routed_scale=1.0 if v2 and norm else scale)


# RopeScaling field -> its key in a config.json's rope_scaling / rope_parameters
_ROPE_KEYS = {"kind": "rope_type", "factor": "factor", "original_max_position": "original_max_position_embeddings",
              "beta_fast": "beta_fast", "beta_slow": "beta_slow", "mscale": "mscale",
              "mscale_all_dim": "mscale_all_dim", "attention_factor": "attention_factor", "truncate": "truncate",
              "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor"}


def _rope_scaling(cfg: dict, max_position: int, path: str) -> RopeScaling | None:
    """The :class:`~dualpath_jax.model.spec.RopeScaling` of a ``config.json``'s ``rope_parameters``
    (transformers >= 5) or ``rope_scaling`` (older; the kind under ``type`` or ``rope_type``); None
    for default RoPE and for kinds the functional model does not implement (they change neither
    shapes nor FLOPs; the checkpoint loader refuses them).

    As ``transformers``' ``standardize_rope_params``: a top-level ``original_max_position_embeddings``
    wins over the one in the dict, and YaRN and Llama 3 without either take
    ``max_position_embeddings``; YaRN without ``factor`` takes ``max_position_embeddings`` over it.
    Errors name the key as ``<path>: <dict>.<key>``.
    """
    key = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    rope = cfg.get(key) or {}
    kind_key = "type" if "rope_type" not in rope and "type" in rope else "rope_type"
    kind = rope.get(kind_key, "default") if isinstance(rope, dict) else None
    if kind not in ("linear", "yarn", "llama3"):
        return None

    def number(source: dict, name: str, kind_: type, default: Any, where: str) -> Any:
        try:
            return _number(source, name, path, kind_, default)
        except ConfigError as e:
            raise ConfigError(f"{path}: {where}", e.message) from None

    original_key = "original_max_position_embeddings"
    top = original_key in cfg and cfg[original_key] is not None
    original = number(cfg if top else rope, original_key, int, max_position, original_key if top else
                      f"{key}.{original_key}")
    factor = rope.get("factor")
    if factor is None and kind == "yarn":
        factor = max_position / original if original else None
    fields = dict(kind=kind, factor=number({"factor": factor}, "factor", float, _MISSING, f"{key}.factor"),
                  original_max_position=original)
    for name, default in (("low_freq_factor", 1.0), ("high_freq_factor", 4.0), ("mscale", 0.0),
                          ("mscale_all_dim", 0.0), ("attention_factor", 0.0), ("beta_fast", 32.0), ("beta_slow", 1.0)):
        # (YaRN's beta_fast / beta_slow: transformers takes a 0 or null as the default)
        fields[name] = number(rope, name, float, default, f"{key}.{name}") or (default if "beta" in name else 0.0)
    fields["truncate"] = bool(rope.get("truncate", True))
    try:
        return RopeScaling(**fields)
    except ConfigError as e:
        sub = e.field.rsplit(".", 1)[-1]
        name = kind_key if sub == "kind" else _ROPE_KEYS.get(sub, sub)
        where = original_key if sub == "original_max_position" and top else f"{key}.{name}"
        raise ConfigError(f"{path}: {where}", e.message) from None


def _rope_theta(cfg: dict, path: str) -> float:
    key = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    rope = cfg.get(key) or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{path}: {key}", f"must be a JSON object or null (got {rope!r})")
    if "rope_theta" in rope:
        return _number(rope, "rope_theta", f"{path}: rope_parameters", float)
    return _number(cfg, "rope_theta", path, float, 10000.0)


def spec_from_hf_config(cfg: dict[str, Any], *, name: str = "hf", path: str = "config.json") -> ModelSpec:
    """Translate a Hugging Face ``config.json`` dict into a :class:`~dualpath_jax.model.spec.ModelSpec`
    (shapes for the cost model and the simulator).

    ``model_type``:

    * ``qwen2`` (Qwen2 / Qwen2.5): GQA with q/k/v bias; ``num_key_value_heads`` (default: the
      query heads), ``head_dim`` (default ``hidden_size / num_attention_heads``); with
      ``use_sliding_window`` only when no layer slides (``max_window_layers >= num_hidden_layers``
      for Qwen2 / Qwen3, never for Qwen3-MoE, unless ``sliding_window`` is null).
    * ``llama`` / ``mistral`` (Llama 2 and 3, Mistral): GQA, Llama's biases on q/k/v/o when
      ``attention_bias`` (Mistral has none, as in ``transformers``); Mistral without a ``sliding_window``.
    * ``qwen3`` / ``qwen3_moe`` (Qwen3, Qwen3-MoE): GQA with per-head q/k RMSNorm, biases as Llama;
      Qwen3-MoE's every layer a MoE of ``num_experts`` (softmax router, top ``num_experts_per_tok``,
      ``norm_topk_prob``; ``decoder_sparse_step`` 1 and no ``mlp_only_layers``).
    * ``deepseek_v2`` / ``deepseek_v3`` / ``deepseek_v32`` / ``kimi_k2`` (DeepSeek-V2 and V2-Lite,
      V3, V3.2; Kimi-K2, read as ``deepseek_v3``; V2's MLA and MoE fields are V3's): MLA (``q_lora_rank``, null = none;
      ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``), MoE
      (``n_routed_experts``, ``num_experts_per_tok``, ``n_shared_experts``,
      ``moe_intermediate_size``, ``first_k_dense_replace``; MoE every layer after the dense ones,
      ``moe_layer_freq`` 1; an explicit null ``n_routed_experts`` / ``n_shared_experts`` means none,
      as DeepSeek's modeling code reads it) and, when present, the DSA indexer (``index_n_heads``,
      ``index_head_dim``, ``index_topk``). A model whose every layer is dense
      (``first_k_dense_replace >= num_hidden_layers``) gets no MoE fields. The multi-token
      prediction layers (``num_nextn_predict_layers``) are not counted: speculative decoding is
      off in the paper's runs (PAPER.md 6.1).

    Their router (:func:`_moe_routing`) and, under ``rope_scaling`` / ``rope_parameters``, linear,
    YaRN or Llama 3 RoPE scaling (:class:`~dualpath_jax.model.spec.RopeScaling`) are read for the
    functional model. Other RoPE kinds change neither shapes nor FLOPs and are accepted here; the
    JAX model's checkpoint loader (``model.hf.load_hf_checkpoint``) rejects what its forward does
    not implement (the indexer, other RoPE kinds). An absent ``max_position_embeddings`` is the
    default of the ``model_type``'s ``transformers`` config class (:data:`_MAX_POSITION`).

    Raises:
      ConfigError: naming ``<path>: <key>`` for a missing or non-numeric required field, an
        unsupported ``model_type``, sliding-window attention, ``moe_layer_freq`` other than 1, a null
        ``n_group`` / ``topk_group`` under a grouped ``topk_method``, or a
        value ModelSpec rejects (inconsistent heads, MoE, router, RoPE scaling or indexer settings).
    """
    model_type = cfg.get("model_type")
    if model_type is None:
        raise ConfigError(f"{path}: model_type", f"required field is missing (supported: "
                          f"{', '.join(map(repr, HF_MODEL_TYPES))})")
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(f"{path}: model_type", f"unsupported architecture {model_type!r}; "
                          f"supported: {', '.join(map(repr, HF_MODEL_TYPES))}")
    model_type = _HF_ALIASES.get(model_type, model_type)
    common = dict(name=name, vocab_size=_number(cfg, "vocab_size", path, int),
                  d_model=_number(cfg, "hidden_size", path, int), n_layers=_number(cfg, "num_hidden_layers", path, int),
                  n_heads=_number(cfg, "num_attention_heads", path, int),
                  d_ff=_number(cfg, "intermediate_size", path, int),
                  rms_norm_eps=_number(cfg, "rms_norm_eps", path, float, 1e-6), rope_theta=_rope_theta(cfg, path),
                  tie_embeddings=_flag(cfg, "tie_word_embeddings", False, path),
                  max_position=_number(cfg, "max_position_embeddings", path, int, _MAX_POSITION[model_type]))
    keys = _HF_KEYS
    if not model_type.startswith("deepseek"):
        # Qwen (transformers 5): with use_sliding_window and a sliding_window (default 4096; null: none),
        # Qwen3-MoE slides every layer, Qwen2 / Qwen3 the layers from max_window_layers on (default 28)
        if cfg.get("use_sliding_window", False) and cfg.get("sliding_window", 4096) is not None:
            first = 0 if model_type == "qwen3_moe" else _number(cfg, "max_window_layers", path, int, 28)
            if first < common["n_layers"]:
                raise ConfigError(f"{path}: use_sliding_window", f"sliding-window attention is not supported "
                                  f"(layers from {first} on would slide, of {common['n_layers']})")
        if model_type == "mistral" and cfg.get("sliding_window", 4096) is not None:  # (MistralConfig's default)
            raise ConfigError(f"{path}: sliding_window", "sliding-window attention is not supported (set it to "
                              f"null for full attention; got {cfg.get('sliding_window', 4096)!r})")
        # (transformers' Mistral has no projection biases whatever its config says)
        bias = model_type != "mistral" and _flag(cfg, "attention_bias", False, path)
        fields = dict(attention="gqa", qkv_bias=True if model_type == "qwen2" else bias,
                      o_bias=model_type != "qwen2" and bias, qk_norm=model_type.startswith("qwen3"),
                      n_kv_heads=_number(cfg, "num_key_value_heads", path, int, common["n_heads"]),
                      head_dim=_number(cfg, "head_dim", path, int, 0)
                      or (128 if model_type == "qwen3" else common["d_model"] // max(common["n_heads"], 1)))
        if not cfg.get("head_dim") and model_type != "qwen3":  # derived: name the keys it comes from
            keys = {**keys, "head_dim": f"head_dim (absent: hidden_size {common['d_model']} // num_attention_heads "
                                        f"{common['n_heads']})"}
        # (transformers 5 writes num_experts as num_local_experts)
        experts_key = "num_local_experts" if cfg.get("num_experts") is None and "num_local_experts" in cfg \
            else "num_experts"
        if model_type == "qwen3_moe" and _number(cfg, experts_key, path, int):
            keys = {**_HF_KEYS, "n_routed_experts": experts_key}
            for key, dense in (("decoder_sparse_step", 1), ("mlp_only_layers", [])):
                if cfg.get(key, dense) not in (dense, None):
                    raise ConfigError(f"{path}: {key}", f"only every layer MoE is supported ({key} {dense!r}; got "
                                      f"{cfg[key]!r})")
            fields.update(n_routed_experts=_number(cfg, experts_key, path, int),
                          n_activated_experts=_number(cfg, "num_experts_per_tok", path, int),
                          moe_d_ff=_number(cfg, "moe_intermediate_size", path, int), moe_scoring="softmax",
                          moe_topk_method="greedy", moe_norm_topk=_flag(cfg, "norm_topk_prob", False, path))
    else:
        n_layers = common["n_layers"]
        defaults = _DEEPSEEK_DEFAULTS["deepseek_v2" if model_type == "deepseek_v2" else "deepseek_v3"]
        first_dense = _number(cfg, "first_k_dense_replace", path, int, defaults["first_k_dense_replace"])
        # an explicit null means none, as DeepSeek's modeling code reads it (``if n_routed_experts is
        # not None``: MoE layers; ``if n_shared_experts is not None``: shared experts); absent: the default
        n_routed = _number(cfg, "n_routed_experts", path, int,
                           0 if "n_routed_experts" in cfg else defaults["n_routed_experts"])
        moe = n_routed > 0 and first_dense < n_layers
        if moe and _number(cfg, "moe_layer_freq", path, int, 1) != 1:
            raise ConfigError(f"{path}: moe_layer_freq", "only 1 (every layer after the dense ones is MoE) is "
                              f"supported (got {cfg['moe_layer_freq']!r})")
        # an absent q_lora_rank is transformers' default, an explicit null none (V2-Lite)
        q_lora = _number(cfg, "q_lora_rank", path, int, 0) if "q_lora_rank" in cfg else defaults["q_lora_rank"]
        fields = dict(attention="mla", q_lora_rank=q_lora,
                      kv_lora_rank=_number(cfg, "kv_lora_rank", path, int),
                      qk_nope_head_dim=_number(cfg, "qk_nope_head_dim", path, int),
                      qk_rope_head_dim=_number(cfg, "qk_rope_head_dim", path, int),
                      v_head_dim=_number(cfg, "v_head_dim", path, int),
                      rope_interleave=_rope_interleave(cfg, model_type, path),
                      index_n_heads=_number(cfg, "index_n_heads", path, int, 0),
                      index_head_dim=_number(cfg, "index_head_dim", path, int, 0),
                      index_topk=_number(cfg, "index_topk", path, int, 0))
        if moe:
            top_k = _number(cfg, "num_experts_per_tok", path, int, defaults["num_experts_per_tok"])
            fields.update(n_routed_experts=n_routed, first_k_dense=first_dense, n_activated_experts=top_k,
                          n_shared_experts=_number(cfg, "n_shared_experts", path, int,
                                                   0 if "n_shared_experts" in cfg else defaults["n_shared_experts"]),
                          moe_d_ff=_number(cfg, "moe_intermediate_size", path, int, defaults["moe_intermediate_size"]),
                          **_moe_routing(cfg, model_type, path, top_k))
    partial = cfg.get("partial_rotary_factor", (cfg.get("rope_parameters") or {}).get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise ConfigError(f"{path}: partial_rotary_factor", f"partial rotary embeddings are not supported (got "
                          f"{partial!r})")
    common["rope_scaling"] = _rope_scaling(cfg, common["max_position"], path)
    try:
        return ModelSpec(**common, **fields)
    except ConfigError as e:  # ModelSpec names its own field: name the config.json key instead
        spec_field = e.field.rsplit(".", 1)[-1]
        raise ConfigError(f"{path}: {keys.get(spec_field, spec_field)}", e.message) from None


# torch_dtype / dtype -> the weights' dtype priced (float32: as GPU servers load it, in BF16)
_HF_WEIGHT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "bf16", "float": "bf16"}


def _quantized_weight_dtype(quant: Any, file: str) -> str:
    """``fp8`` for a ``quantization_config`` whose weights are FP8: ``quant_method`` ``fp8``
    (DeepSeek-V3's block-scaled checkpoints), ``fbgemm_fp8`` (Meta's Llama-3.1-405B-FP8) or
    ``compressed-tensors`` whose every config group
    quantizes its weights to 8-bit floats (llm-compressor's FP8 checkpoints, e.g.
    huggingface.co/RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8: ``config_groups.*.weights`` ``num_bits`` 8,
    ``type`` ``float``).

    Raises:
      ConfigError: naming ``<file>: quantization_config`` for any other quantization (AWQ, GPTQ,
        bitsandbytes, integer or 4-bit compressed-tensors, ...), with the method it names, and for a
        ``quantization_config`` that is not a JSON object.
    """
    field = f"{file}: quantization_config"
    if not isinstance(quant, dict):
        raise ConfigError(field, f"must be a JSON object naming its quant_method (got {quant!r}); set "
                          "sim.weight_dtype (fp8, bf16, fp16 or f32) to price the weights explicitly")
    method = quant.get("quant_method")
    found = repr(method)
    if str(method).lower() in ("fp8", "fbgemm_fp8"):
        return "fp8"
    if str(method).lower() == "compressed-tensors":
        groups = quant.get("config_groups")
        groups = list(groups.values()) if isinstance(groups, dict) else []
        weights = [g.get("weights") if isinstance(g, dict) else None for g in groups]
        kinds = [f"{w.get('num_bits')}-bit {w.get('type')}" if isinstance(w, dict) else "unquantized"
                 for w in weights]
        if kinds and all(k == "8-bit float" for k in kinds):
            return "fp8"
        found += f" ({', '.join(dict.fromkeys(kinds))} weights)" if kinds else " (no config_groups)"
    raise ConfigError(field, f"quantization {found} is not priced by the simulator (FP8 weights are: quant_method "
                      "'fp8' or 'fbgemm_fp8', or compressed-tensors with 8-bit float weights); set "
                      "sim.weight_dtype (fp8, bf16, fp16 or f32) to price the weights explicitly")


def hf_weight_dtype(name_or_path: str | os.PathLike) -> str | None:
    """The dtype the simulator prices a Hugging Face ``config.json``'s weights in (``name_or_path``
    as :func:`~dualpath_jax.model.spec.resolve_spec`), what the file declares:

    * ``fp8`` for FP8 weights under ``quantization_config`` (:func:`_quantized_weight_dtype`:
      ``quant_method`` ``fp8`` or ``fbgemm_fp8``, or compressed-tensors with 8-bit float weights);
    * else from ``torch_dtype`` (``dtype`` in transformers >= 5 files): ``bfloat16`` -> ``bf16``,
      ``float16`` -> ``fp16``, ``float32`` -> ``bf16`` (GPU servers load a float32 checkpoint in
      BF16), absent -> ``bf16`` (as ``float32``: what transformers 4 loads such a file in).

    The presets' rule (:func:`~dualpath_jax.model.spec.default_weight_dtype`) is not applied to a
    ``config.json``: None only for a preset name or a path that does not exist.

    Raises:
      ConfigError: naming ``<file>: quantization_config`` for quantization other than FP8 (AWQ, GPTQ,
        bitsandbytes, integer or 4-bit compressed-tensors, ...), saying which method it found and that
        ``sim.weight_dtype`` sets the pricing explicitly (the checkpoint loader ``model.hf`` refuses
        every quantized checkpoint, FP8 too: it does not dequantize); naming ``<file>: torch_dtype``
        (or ``dtype``) for another dtype; as :func:`load_hf_config` for a path without a readable
        ``config.json``.
    """
    key = os.fspath(name_or_path)
    if str(key).lower() in PRESETS or not os.path.exists(key):
        return None
    file, cfg = _read_hf_config(key, "model")
    quant = cfg.get("quantization_config")
    if quant:  # (as the checkpoint loader: an empty or null quantization_config is none)
        return _quantized_weight_dtype(quant, file)
    dtype_key = "dtype" if cfg.get("torch_dtype") is None and cfg.get("dtype") is not None else "torch_dtype"
    dtype = cfg.get(dtype_key)
    if dtype is None:
        return "bf16"
    name = dtype.lower().removeprefix("torch.") if isinstance(dtype, str) else None
    if name not in _HF_WEIGHT_DTYPES:
        raise ConfigError(f"{file}: {dtype_key}", f"weights in {dtype!r} are not priced by the simulator (bfloat16, "
                          "float16 and float32 are); set sim.weight_dtype (fp8, bf16, fp16 or f32) to price them "
                          "explicitly")
    return _HF_WEIGHT_DTYPES[name]
