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
directory holding one) through :func:`~dualpath_jax.model.hf_config.spec_from_hf_config`: GQA (``model_type`` ``qwen2``,
``qwen3``, ``qwen3_moe``, ``llama``, ``mistral``) and DeepSeek-style MLA with MoE (``deepseek_v2``,
``deepseek_v3``) and the DSA indexer (``deepseek_v32``).

Sources: Qwen2.5-32B ``config.json`` (huggingface.co/Qwen/Qwen2.5-32B), DeepSeek-V3.2
``config.json`` (PAPER.md [CFG-DS]), DS 27B shapes from PAPER.md section 6.1 / paper appendix A.2
(latent dims assumed equal to V3.2's, as PAPER.md states).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Literal

from dualpath_jax.config import ConfigError, check_in, check_non_negative, check_positive, did_you_mean
from dualpath_jax.lazy import lazy_exports

__all__ = ["ModelSpec", "RopeScaling", "get_spec", "resolve_spec", "spec_from_hf_config", "load_hf_config",
           "default_weight_dtype", "hf_weight_dtype", "PRESETS", "preset_names", "ContextBeyondModelWarning"]

# the config.json reader's public names (model.hf_config, which imports this module) resolve here too
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ("spec_from_hf_config", "load_hf_config", "hf_weight_dtype", "HF_MODEL_TYPES"), "hf_config"),
    base="dualpath_jax.model")


class ContextBeyondModelWarning(UserWarning):
    """Some requests' contexts (hit + append + generated tokens) exceed the model's
    ``max_position_embeddings``: the simulator's cost model prices them all the same and the
    engine's RoPE extends past it, but the model was not trained there (a real deployment would
    refuse them)."""


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
        ``original_max_position`` (YaRN, Llama 3), ``beta_fast < beta_slow`` (equal is valid, e.g.
        Kimi-K2's 1 and 1: ``transformers`` warns only below, and its ramp widens equal bounds by 0.001)
        or ``high_freq_factor <= low_freq_factor`` (Llama 3 divides by their difference).
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
            hi, lo = getattr(self, high), getattr(self, low)
            if not (hi >= lo if self.kind == "yarn" else hi > lo):
                raise ConfigError("rope_scaling." + high, f"must be {'>=' if self.kind == 'yarn' else '>'} {low} "
                                  f"(got {hi} and {lo})")

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
    """Names of the model presets accepted by :func:`get_spec`, sorted."""
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
    ``config.json``: a path to the file or to a directory holding it
    (:func:`~dualpath_jax.model.hf_config.load_hf_config`).

    Raises:
      ConfigError: naming ``field`` for a name that is neither a preset nor an existing path
        (listing the presets); naming ``<file>: <key>`` for a bad or missing ``config.json`` field.
    """
    key = os.fspath(name_or_path)
    if str(key).lower() in PRESETS:
        return PRESETS[str(key).lower()]
    if os.path.exists(key):
        from dualpath_jax.model.hf_config import load_hf_config  # noqa: PLC0415 (it imports this module)

        return load_hf_config(key, field=field)
    raise ConfigError(field, f"unknown model {key!r}: neither a preset ({preset_names()}) nor an existing "
                      "config.json file or directory")


def default_weight_dtype(spec: ModelSpec) -> str:
    """The weights' dtype a preset is served in by default: ``fp8`` for the DeepSeek-style MLA / MoE
    presets (DeepSeek-V3's public checkpoints are FP8, block-scaled, run by FP8 GEMMs: PAPER.md 6.1
    DeepGEMM; ``quantization_config`` of their ``config.json``), ``bf16`` for dense GQA ones
    (Qwen2.5's public checkpoints are BF16, ``torch_dtype`` of their ``config.json``). A model read
    from a ``config.json`` is priced in the dtype the file declares instead
    (:func:`~dualpath_jax.model.hf_config.hf_weight_dtype`)."""
    return "fp8" if spec.is_mla or spec.n_routed_experts else "bf16"
