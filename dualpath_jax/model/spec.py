"""Model specifications (`ModelSpec`) and named presets.

A spec is a frozen, validated description of a decoder-only transformer in one of two attention
families:

* ``attention="gqa"``: grouped-query attention as in Qwen2 / Qwen2.5, Qwen3, Llama, Mistral (RoPE
  with rotate-half layout, RMSNorm, SwiGLU MLP). KV cache per layer per token: K and V, ``K*H`` each.
* ``attention="mla"``: multi-head latent attention as in DeepSeek-V2/V3 (optional query LoRA,
  latent KV of ``kv_lora_rank`` C plus a decoupled RoPE key of ``qk_rope_head_dim`` R). KV cache
  per layer per token: ``C + R`` values. DeepSeek-V3.2 adds the DSA lightning indexer
  (``index_n_heads``, ``index_head_dim``, ``index_topk``), which is accounted for in the cost
  model (:mod:`dualpath_jax.model.cost`); the functional model runs dense attention.

GQA variants: q/k/v biases (Qwen2), an o_proj bias (Llama / Qwen3 with ``attention_bias``), per-head
q/k RMSNorm (Qwen3). Mixture-of-experts layers (``n_routed_experts`` etc.: a softmax router with
greedy or group-limited top-k as DeepSeek-V2 and Qwen3-MoE, DeepSeek-V3's sigmoid router with
bias-corrected group top-k) are priced by the cost model and run by the functional model; RoPE
scaling of long-context checkpoints (:class:`RopeScaling`: linear position interpolation, YaRN,
Llama 3's) is carried for the functional model.

Besides the presets, :func:`resolve_spec` reads a Hugging Face ``config.json`` (a file, or a
directory holding one) through :func:`spec_from_hf_config`: GQA (``model_type`` ``qwen2``,
``qwen3``, ``qwen3_moe``, ``llama``, ``mistral``) and DeepSeek-style MLA with MoE (``deepseek_v2``,
``deepseek_v3``) and the DSA indexer (``deepseek_v32``).

Sources: Qwen2.5-32B ``config.json`` (huggingface.co/Qwen/Qwen2.5-32B), DeepSeek-V3.2
``config.json`` (PAPER.md [CFG-DS]), DS 27B shapes from PAPER.md section 6.1 / paper appendix A.2
(latent dims assumed equal to V3.2's, as PAPER.md states).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Literal

from dualpath_jax.config import ConfigError, check_in, check_non_negative, check_positive, did_you_mean

__all__ = ["ModelSpec", "RopeScaling", "get_spec", "resolve_spec", "spec_from_hf_config", "load_hf_config",
           "default_weight_dtype", "hf_weight_dtype", "PRESETS", "preset_names"]


MOE_SCORING = ("softmax", "sigmoid")
MOE_TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE scaling of a long-context checkpoint (Hugging Face ``rope_scaling`` / ``rope_parameters``).

    * ``kind="linear"``: position interpolation (Chen et al. 2023, arXiv 2306.15595): every frequency
      divided by ``factor``.
    * ``kind="yarn"``: YaRN (Peng et al. 2023, arXiv 2309.00071, section 3; ``transformers``'
      ``_compute_yarn_parameters``): frequencies whose wavelength fits ``original_max_position`` more
      than ``beta_fast`` times are kept, those fitting it fewer than ``beta_slow`` times divided by
      ``factor``, a linear ramp in between (bounds floored / ceiled when ``truncate``); cos and sin
      are scaled by :attr:`cos_sin_scale`.
    * ``kind="llama3"``: Llama 3.1's scaling (``transformers``' ``_compute_llama3_parameters``):
      wavelengths shorter than ``original_max_position / high_freq_factor`` kept, longer than
      ``original_max_position / low_freq_factor`` divided by ``factor``, smoothly blended between.

    DeepSeek's MLA also multiplies its softmax scale by ``mscale(factor, mscale_all_dim) ** 2``
    (:attr:`mla_softmax_factor`).

    ``attention_factor`` 0 means inferred: ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)``
    when both are set, else ``mscale(factor)``, with ``mscale(s, m) = 0.1 * m * ln(s) + 1`` for
    ``s > 1`` (1 otherwise; YaRN eq. 21).

    Raises:
      ConfigError: naming the field, for an unknown ``kind``, ``factor < 1``, a missing
        ``original_max_position`` (YaRN, Llama 3), ``beta_fast <= beta_slow`` or
        ``high_freq_factor <= low_freq_factor``.
    """

    kind: Literal["linear", "yarn", "llama3"] = "yarn"
    factor: float = 1.0
    original_max_position: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    attention_factor: float = 0.0
    truncate: bool = True
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    def __post_init__(self):
        check_in("rope_scaling.kind", self.kind, ("linear", "yarn", "llama3"))
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor >= 1):
            raise ConfigError("rope_scaling.factor", f"must be a number >= 1 (got {self.factor!r})")
        for f in ("mscale", "mscale_all_dim", "attention_factor"):
            check_non_negative("rope_scaling." + f, getattr(self, f))
        if self.kind != "linear":  # a ramp between two bounds over the original context
            low, high = ("low_freq_factor", "high_freq_factor") if self.kind == "llama3" else ("beta_slow", "beta_fast")
            check_positive("rope_scaling.original_max_position", self.original_max_position, integer=True)
            check_positive("rope_scaling." + low, getattr(self, low))
            if not getattr(self, high) > getattr(self, low):
                raise ConfigError("rope_scaling." + high, f"must be > {low} (got {getattr(self, high)} and "
                                  f"{getattr(self, low)})")

    @staticmethod
    def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
        """YaRN's attention temperature ``0.1 * mscale * ln(scale) + 1`` (1 for ``scale <= 1``; eq. 21)."""
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    @property
    def cos_sin_scale(self) -> float:
        """The factor on the cos/sin tables (YaRN's ``attention_factor``; 1 for linear)."""
        if self.kind != "yarn":
            return 1.0
        if self.attention_factor:
            return float(self.attention_factor)
        if self.mscale and self.mscale_all_dim:
            return self.yarn_mscale(self.factor, self.mscale) / self.yarn_mscale(self.factor, self.mscale_all_dim)
        return self.yarn_mscale(self.factor)

    @property
    def mla_softmax_factor(self) -> float:
        """The factor on MLA's softmax scale: ``mscale(factor, mscale_all_dim) ** 2`` when
        ``mscale_all_dim`` is set, else 1 (DeepSeek-V2/V3 reference code; ``transformers``'
        ``yarn_apply_mscale``, which applies it under any scaled RoPE)."""
        if not self.mscale_all_dim:
            return 1.0
        return self.yarn_mscale(self.factor, self.mscale_all_dim) ** 2

    def yarn_ramp_bounds(self, dim: int, theta: float) -> tuple[float, float]:
        """``(low, high)`` frequency indices (of ``dim / 2``) between which YaRN ramps from kept to
        interpolated frequencies (``find_correction_range``; ``dim`` the rotary width)."""
        def correction_dim(rotations: float) -> float:
            return dim * math.log(self.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(theta))
        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        return max(low, 0), min(high, dim - 1)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Shapes and hyper-parameters of a decoder-only transformer.

    Glossary letters (``dualpath_jax.shapes``): V=vocab_size, D=d_model, L=n_layers, N=n_heads,
    K=n_kv_heads, H=head_dim, F=d_ff, C=kv_lora_rank, R=qk_rope_head_dim.

    Raises:
      ConfigError: naming the field, for non-positive sizes, heads that do not divide, an unknown
        ``attention`` value or inconsistent MoE / MLA settings.
    """

    name: str
    attention: Literal["gqa", "mla"]
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    # GQA
    n_kv_heads: int = 0
    head_dim: int = 0
    qkv_bias: bool = True
    o_bias: bool = False  # an o_proj bias (Llama / Qwen3 ``attention_bias``)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3)
    # MLA (DeepSeek-V3 naming)
    q_lora_rank: int = 0  # 0 = no query compression
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = True  # DeepSeek checkpoints store rope dims as interleaved pairs
    # DSA lightning indexer (DeepSeek-V3.2); 0 heads = dense attention
    index_n_heads: int = 0
    index_head_dim: int = 0
    index_topk: int = 0
    # MoE; 0 routed experts = every layer dense
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    n_activated_experts: int = 0
    moe_d_ff: int = 0
    first_k_dense: int = 0
    # MoE routing (DeepSeek-V2: softmax + greedy / group_limited_greedy; V3: sigmoid + noaux_tc)
    moe_scoring: Literal["softmax", "sigmoid"] = "softmax"
    moe_topk_method: Literal["greedy", "group_limited_greedy", "noaux_tc"] = "greedy"
    moe_n_group: int = 1
    moe_topk_group: int = 1
    moe_norm_topk: bool = False
    moe_routed_scale: float = 1.0
    # common
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_position: int = 131072
    rope_scaling: RopeScaling | None = None

    def __post_init__(self):
        p = f"ModelSpec[{self.name}]."
        check_in(p + "attention", self.attention, ("gqa", "mla"))
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_position"):
            check_positive(p + f, getattr(self, f), integer=True)
        for f in ("n_kv_heads", "head_dim", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                  "qk_rope_head_dim", "v_head_dim", "index_n_heads", "index_head_dim", "index_topk",
                  "n_routed_experts", "n_shared_experts", "n_activated_experts", "moe_d_ff",
                  "first_k_dense"):
            check_non_negative(p + f, getattr(self, f), integer=True)
        check_positive(p + "rope_theta", self.rope_theta)
        check_positive(p + "rms_norm_eps", self.rms_norm_eps)
        if self.attention == "gqa":
            check_positive(p + "n_kv_heads", self.n_kv_heads, integer=True)
            check_positive(p + "head_dim", self.head_dim, integer=True)
            if self.n_heads % self.n_kv_heads:
                raise ConfigError(p + "n_heads", f"must be divisible by n_kv_heads (got n_heads="
                                  f"{self.n_heads}, n_kv_heads={self.n_kv_heads})")
            if self.head_dim % 2:
                raise ConfigError(p + "head_dim", f"must be even for RoPE (got {self.head_dim})")
        else:
            for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                check_positive(p + f, getattr(self, f), integer=True)
            if self.qk_rope_head_dim % 2:
                raise ConfigError(p + "qk_rope_head_dim", f"must be even for RoPE (got {self.qk_rope_head_dim})")
            for f in ("o_bias", "qk_norm"):
                if getattr(self, f):
                    raise ConfigError(p + f, "is a GQA setting (MLA has neither)")
        if (self.index_n_heads > 0) != (self.index_topk > 0) or (self.index_n_heads > 0) != (self.index_head_dim > 0):
            raise ConfigError(p + "index_n_heads", "index_n_heads, index_head_dim and index_topk must be all zero "
                              f"or all positive (got {self.index_n_heads}, {self.index_head_dim}, {self.index_topk})")
        if self.n_routed_experts:
            check_positive(p + "n_activated_experts", self.n_activated_experts, integer=True)
            check_positive(p + "moe_d_ff", self.moe_d_ff, integer=True)
            if self.n_activated_experts > self.n_routed_experts:
                raise ConfigError(p + "n_activated_experts", f"must be <= n_routed_experts "
                                  f"({self.n_activated_experts} > {self.n_routed_experts})")
            self._check_routing(p)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(p + "rope_scaling", "must be a RopeScaling or None "
                              f"(got {type(self.rope_scaling).__name__})")
        if self.first_k_dense > self.n_layers:
            raise ConfigError(p + "first_k_dense", f"must be <= n_layers ({self.first_k_dense} > {self.n_layers})")

    def _check_routing(self, p: str) -> None:
        check_in(p + "moe_scoring", self.moe_scoring, MOE_SCORING)
        check_in(p + "moe_topk_method", self.moe_topk_method, MOE_TOPK_METHODS)
        check_positive(p + "moe_n_group", self.moe_n_group, integer=True)
        check_positive(p + "moe_topk_group", self.moe_topk_group, integer=True)
        check_positive(p + "moe_routed_scale", self.moe_routed_scale)
        if self.moe_topk_method == "greedy":
            return
        e, g = self.n_routed_experts, self.moe_n_group
        if e % g:
            raise ConfigError(p + "moe_n_group", f"must divide n_routed_experts ({e} experts, {g} groups)")
        if self.moe_topk_group > g:
            raise ConfigError(p + "moe_topk_group", f"must be <= moe_n_group ({self.moe_topk_group} > {g})")
        if self.moe_topk_group * (e // g) < self.n_activated_experts:
            raise ConfigError(p + "moe_topk_group", f"{self.moe_topk_group} group(s) of {e // g} experts hold fewer "
                              f"than the {self.n_activated_experts} activated experts")
        if self.moe_topk_method == "noaux_tc" and e // g < 2:
            raise ConfigError(p + "moe_n_group", "noaux_tc scores a group by its two best experts: groups need "
                              f">= 2 experts ({e} experts, {g} groups)")

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def is_mla(self) -> bool:
        return self.attention == "mla"

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width: H for GQA, qk_nope + R for MLA."""
        return self.head_dim if not self.is_mla else self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def out_head_dim(self) -> int:
        """Per-head value width feeding o_proj: H for GQA, v_head_dim for MLA."""
        return self.head_dim if not self.is_mla else self.v_head_dim

    @property
    def kv_values_per_token_per_layer(self) -> int:
        """Scalars cached per token per layer: 2*K*H (GQA) or C + R (MLA latent + rope key)."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.n_kv_heads * self.head_dim

    @property
    def attn_scale(self) -> float:
        """Softmax scale ``1/sqrt(qk head dim)``; MLA under a scaled RoPE with ``mscale_all_dim``
        set times :attr:`RopeScaling.mla_softmax_factor` (DeepSeek-V2/V3)."""
        scale = float(self.qk_head_dim) ** -0.5
        if self.is_mla and self.rope_scaling is not None:
            scale *= self.rope_scaling.mla_softmax_factor
        return scale

    def is_moe_layer(self, layer: int) -> bool:
        """True if layer ``layer`` (0-based) uses routed experts (DeepSeek ``first_k_dense_replace``)."""
        return self.n_routed_experts > 0 and layer >= self.first_k_dense

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelSpec] = {
    # Small enough for CPU tests; same code paths as the big ones.
    "tiny-gqa": ModelSpec(
        name="tiny-gqa", attention="gqa", vocab_size=512, d_model=64, n_layers=4, n_heads=4,
        n_kv_heads=2, head_dim=16, d_ff=128, qkv_bias=True, rope_theta=10000.0, rms_norm_eps=1e-6),
    "tiny-mla": ModelSpec(
        name="tiny-mla", attention="mla", vocab_size=512, d_model=64, n_layers=4, n_heads=4, d_ff=128,
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        rope_theta=10000.0, rms_norm_eps=1e-6),
    # tiny-mla with DeepSeek-V3's MoE after one dense layer (8 routed experts in 4 groups, 2 per token,
    # 1 shared; sigmoid router, noaux_tc) and YaRN over a 256-token original context
    "tiny-moe": ModelSpec(
        name="tiny-moe", attention="mla", vocab_size=512, d_model=64, n_layers=4, n_heads=4, d_ff=128,
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, moe_d_ff=32, first_k_dense=1,
        moe_scoring="sigmoid", moe_topk_method="noaux_tc", moe_n_group=4, moe_topk_group=2, moe_norm_topk=True,
        moe_routed_scale=2.5, rope_theta=10000.0, rms_norm_eps=1e-6,
        rope_scaling=RopeScaling(kind="yarn", factor=4.0, original_max_position=256, mscale=1.0, mscale_all_dim=1.0)),
    # huggingface.co/Qwen/Qwen2.5-32B config.json
    "qwen2.5-32b": ModelSpec(
        name="qwen2.5-32b", attention="gqa", vocab_size=152064, d_model=5120, n_layers=64, n_heads=40,
        n_kv_heads=8, head_dim=128, d_ff=27648, qkv_bias=True, rope_theta=1_000_000.0,
        rms_norm_eps=1e-5, max_position=131072),
    # DeepSeek-V3.2 config.json (PAPER.md [CFG-DS]): 61 layers, first 3 dense, MLA 512+64, DSA; router
    # (sigmoid, noaux_tc over 8 groups, 4 kept) and YaRN as in huggingface.co/deepseek-ai/DeepSeek-V3.2-Exp.
    "deepseek-v3.2": ModelSpec(
        name="deepseek-v3.2", attention="mla", vocab_size=129280, d_model=7168, n_layers=61, n_heads=128,
        d_ff=18432, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, index_n_heads=64, index_head_dim=128, index_topk=2048, n_routed_experts=256,
        n_shared_experts=1, n_activated_experts=8, moe_d_ff=2048, first_k_dense=3, moe_scoring="sigmoid",
        moe_topk_method="noaux_tc", moe_n_group=8, moe_topk_group=4, moe_norm_topk=True, moe_routed_scale=2.5,
        rope_theta=10000.0, rms_norm_eps=1e-6, max_position=163840,
        rope_scaling=RopeScaling(kind="yarn", factor=40.0, original_max_position=4096, mscale=1.0, mscale_all_dim=1.0)),
    # Paper appendix A.2 (PAPER.md 6.1): hidden 2560, 30 layers, 32 heads, 72 experts (6 active,
    # 2 shared), MoE ff 1536, dense ff 12288, 1 dense layer, indexer 32x64 top-1024, no q LoRA.
    # Latent dims, vocab, router (sigmoid, noaux_tc; no groups) and RoPE assumed as V3.2.
    "ds-27b": ModelSpec(
        name="ds-27b", attention="mla", vocab_size=129280, d_model=2560, n_layers=30, n_heads=32,
        d_ff=12288, q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, index_n_heads=32, index_head_dim=64, index_topk=1024, n_routed_experts=72,
        n_shared_experts=2, n_activated_experts=6, moe_d_ff=1536, first_k_dense=1, moe_scoring="sigmoid",
        moe_topk_method="noaux_tc", moe_norm_topk=True, moe_routed_scale=2.5, rope_theta=10000.0,
        rms_norm_eps=1e-6, max_position=163840,
        rope_scaling=RopeScaling(kind="yarn", factor=40.0, original_max_position=4096, mscale=1.0, mscale_all_dim=1.0)),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_spec(name: str) -> ModelSpec:
    """Return the preset ``name`` (case-insensitive).

    Raises:
      ConfigError: field ``model.name`` for an unknown preset, listing the known ones.
    """
    key = str(name).lower()
    if key not in PRESETS:
        raise ConfigError("model.name", f"unknown preset {name!r}{did_you_mean(key, PRESETS)}; known presets: "
                          f"{preset_names()}")
    return PRESETS[key]


def resolve_spec(name_or_path: str | os.PathLike, *, field: str = "model.name") -> ModelSpec:
    """A preset by name (:func:`get_spec`, case-insensitive), else the model of a Hugging Face
    ``config.json``: a path to the file or to a directory holding it (:func:`load_hf_config`).

    Raises:
      ConfigError: naming ``field`` for a name that is neither a preset nor an existing path
        (listing the presets); naming ``<file>: <key>`` for a bad or missing ``config.json`` field.
    """
    key = os.fspath(name_or_path)
    if str(key).lower() in PRESETS:
        return PRESETS[str(key).lower()]
    if os.path.exists(key):
        return load_hf_config(key, field=field)
    raise ConfigError(field, f"unknown model {key!r}: neither a preset ({preset_names()}) nor an existing "
                      "config.json file or directory")


def load_hf_config(path: str | os.PathLike, *, name: str | None = None, field: str = "model.name") -> ModelSpec:
    """Read a Hugging Face ``config.json`` (``path``: the file, or a directory holding it) into a
    :class:`ModelSpec` named ``name`` (default: the directory's name).

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


HF_MODEL_TYPES = ("qwen2", "qwen3", "qwen3_moe", "llama", "mistral", "deepseek_v2", "deepseek_v3", "deepseek_v32")
"""The ``model_type`` values :func:`spec_from_hf_config` reads."""


def _flag(cfg: dict, key: str, default: bool, path: str) -> bool:
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {key}", f"must be true or false (got {value!r})")
    return value


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


def _moe_routing(cfg: dict, model_type: str, path: str) -> dict:
    """The router's fields of a DeepSeek ``config.json`` (``scoring_func``, ``topk_method``,
    ``n_group``, ``topk_group``, ``norm_topk_prob``, ``routed_scaling_factor``).

    DeepSeek-V2 (and V2-Lite) score with a softmax and pick ``greedy`` or ``group_limited_greedy``
    (a token's top-k among the ``topk_group`` groups holding its best experts); V3 and V3.2 score
    with a sigmoid and pick ``noaux_tc`` (groups ranked by their two best bias-corrected scores).
    Absent keys take the defaults of ``transformers``' ``DeepseekV2Config`` / ``DeepseekV3Config``.
    DeepSeek-V2 with ``norm_topk_prob`` normalises the chosen weights *instead of* scaling them by
    ``routed_scaling_factor``, as DeepSeek's own modeling code does (``transformers`` 5 ignores the flag;
    the released V2 and V2-Lite checkpoints set it false, where both agree).
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
    """The :class:`RopeScaling` of a ``config.json``'s ``rope_parameters`` (transformers >= 5) or
    ``rope_scaling`` (older; the kind under ``type`` or ``rope_type``); None for default RoPE and for
    kinds the functional model does not implement (they change neither shapes nor FLOPs; the
    checkpoint loader refuses them).

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
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{path}: rope_scaling", f"must be a JSON object or null (got {rope!r})")
    if "rope_theta" in rope:
        return _number(rope, "rope_theta", f"{path}: rope_parameters", float)
    return _number(cfg, "rope_theta", path, float, 10000.0)


def spec_from_hf_config(cfg: dict[str, Any], *, name: str = "hf", path: str = "config.json") -> ModelSpec:
    """Translate a Hugging Face ``config.json`` dict into a :class:`ModelSpec` (shapes for the cost
    model and the simulator).

    ``model_type``:

    * ``qwen2`` (Qwen2 / Qwen2.5): GQA with q/k/v bias; ``num_key_value_heads`` (default: the
      query heads), ``head_dim`` (default ``hidden_size / num_attention_heads``).
    * ``llama`` / ``mistral`` (Llama 2 and 3, Mistral): GQA, biases on q/k/v/o when
      ``attention_bias``; Mistral without a ``sliding_window``.
    * ``qwen3`` / ``qwen3_moe`` (Qwen3, Qwen3-MoE): GQA with per-head q/k RMSNorm, biases as Llama;
      Qwen3-MoE's every layer a MoE of ``num_experts`` (softmax router, top ``num_experts_per_tok``,
      ``norm_topk_prob``; ``decoder_sparse_step`` 1 and no ``mlp_only_layers``).
    * ``deepseek_v2`` / ``deepseek_v3`` / ``deepseek_v32`` (DeepSeek-V2 and V2-Lite, V3, V3.2;
      V2's MLA and MoE fields are V3's): MLA (``q_lora_rank``, null = none;
      ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``), MoE
      (``n_routed_experts``, ``num_experts_per_tok``, ``n_shared_experts``,
      ``moe_intermediate_size``, ``first_k_dense_replace``; MoE every layer after the dense ones,
      ``moe_layer_freq`` 1) and, when present, the DSA indexer (``index_n_heads``,
      ``index_head_dim``, ``index_topk``). A model whose every layer is dense
      (``first_k_dense_replace >= num_hidden_layers``) gets no MoE fields. The multi-token
      prediction layers (``num_nextn_predict_layers``) are not counted: speculative decoding is
      off in the paper's runs (PAPER.md 6.1).

    Their router (:func:`_moe_routing`) and, under ``rope_scaling`` / ``rope_parameters``, linear,
    YaRN or Llama 3 RoPE scaling (:class:`RopeScaling`) are read for the functional model. Other RoPE kinds
    change neither shapes nor FLOPs and are accepted here; the JAX model's checkpoint loader
    (``model.hf.load_hf_checkpoint``) rejects what its forward does not implement (the indexer,
    other RoPE kinds).

    Raises:
      ConfigError: naming ``<path>: <key>`` for a missing or non-numeric required field, an
        unsupported ``model_type``, sliding-window attention, ``moe_layer_freq`` other than 1, or a
        value ModelSpec rejects (inconsistent heads, MoE, router, RoPE scaling or indexer settings).
    """
    model_type = cfg.get("model_type")
    if model_type is None:
        raise ConfigError(f"{path}: model_type", f"required field is missing (supported: "
                          f"{', '.join(map(repr, HF_MODEL_TYPES))})")
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(f"{path}: model_type", f"unsupported architecture {model_type!r}; "
                          f"supported: {', '.join(map(repr, HF_MODEL_TYPES))}")
    common = dict(name=name, vocab_size=_number(cfg, "vocab_size", path, int),
                  d_model=_number(cfg, "hidden_size", path, int), n_layers=_number(cfg, "num_hidden_layers", path, int),
                  n_heads=_number(cfg, "num_attention_heads", path, int),
                  d_ff=_number(cfg, "intermediate_size", path, int),
                  rms_norm_eps=_number(cfg, "rms_norm_eps", path, float, 1e-6), rope_theta=_rope_theta(cfg, path),
                  tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                  max_position=_number(cfg, "max_position_embeddings", path, int, 131072))
    keys = _HF_KEYS
    if not model_type.startswith("deepseek"):
        if cfg.get("use_sliding_window", False):
            raise ConfigError(f"{path}: use_sliding_window", "sliding-window attention is not supported")
        if model_type == "mistral" and cfg.get("sliding_window", 4096) is not None:  # (MistralConfig's default)
            raise ConfigError(f"{path}: sliding_window", "sliding-window attention is not supported (set it to "
                              f"null for full attention; got {cfg.get('sliding_window', 4096)!r})")
        bias = _flag(cfg, "attention_bias", False, path)
        fields = dict(attention="gqa", qkv_bias=True if model_type == "qwen2" else bias,
                      o_bias=model_type != "qwen2" and bias, qk_norm=model_type.startswith("qwen3"),
                      n_kv_heads=_number(cfg, "num_key_value_heads", path, int, common["n_heads"]),
                      head_dim=_number(cfg, "head_dim", path, int, 0)
                      or (128 if model_type == "qwen3" else common["d_model"] // max(common["n_heads"], 1)))
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
        n_routed = _number(cfg, "n_routed_experts", path, int, defaults["n_routed_experts"])
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
                      rope_interleave=bool(cfg.get("rope_interleave", True)),
                      index_n_heads=_number(cfg, "index_n_heads", path, int, 0),
                      index_head_dim=_number(cfg, "index_head_dim", path, int, 0),
                      index_topk=_number(cfg, "index_topk", path, int, 0))
        if moe:
            fields.update(n_routed_experts=n_routed, first_k_dense=first_dense,
                          n_activated_experts=_number(cfg, "num_experts_per_tok", path, int,
                                                      defaults["num_experts_per_tok"]),
                          n_shared_experts=_number(cfg, "n_shared_experts", path, int, defaults["n_shared_experts"]),
                          moe_d_ff=_number(cfg, "moe_intermediate_size", path, int, defaults["moe_intermediate_size"]),
                          **_moe_routing(cfg, model_type, path))
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


_HF_WEIGHT_DTYPES = {"bfloat16": "bf16", "float16": "fp16"}


def hf_weight_dtype(name_or_path: str | os.PathLike) -> str | None:
    """The weights' dtype a Hugging Face ``config.json`` declares (``name_or_path`` as
    :func:`resolve_spec`): ``fp8`` when its ``quantization_config`` has ``quant_method`` ``fp8``
    (DeepSeek-V3's block-scaled FP8 checkpoints), else ``bf16`` / ``fp16`` from ``torch_dtype``
    (``dtype`` in newer files); None for a preset, an unreadable file or another dtype (callers then
    use :func:`default_weight_dtype`)."""
    key = os.fspath(name_or_path)
    if str(key).lower() in PRESETS or not os.path.exists(key):
        return None
    try:
        _, cfg = _read_hf_config(key, "model")
    except ConfigError:
        return None
    quant = cfg.get("quantization_config")
    if isinstance(quant, dict) and str(quant.get("quant_method", "")).lower() == "fp8":
        return "fp8"
    return _HF_WEIGHT_DTYPES.get(str(cfg.get("torch_dtype", cfg.get("dtype", ""))).lower())


def default_weight_dtype(spec: ModelSpec) -> str:
    """The weights' dtype a model is served in by default: ``fp8`` for DeepSeek-style MLA / MoE
    models (DeepSeek-V3's public checkpoints are FP8, block-scaled, run by FP8 GEMMs: PAPER.md 6.1
    DeepGEMM; ``quantization_config`` of their ``config.json``), ``bf16`` for dense GQA models
    (Qwen2.5's public checkpoints are BF16, ``torch_dtype`` of their ``config.json``)."""
    return "fp8" if spec.is_mla or spec.n_routed_experts else "bf16"
