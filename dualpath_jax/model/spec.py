"""Model specifications (`ModelSpec`) and named presets.

A spec is a frozen, validated description of a decoder-only transformer in one of two attention
families:

* ``attention="gqa"``: grouped-query attention as in Qwen2 / Qwen2.5 (q/k/v bias, RoPE with
  rotate-half layout, RMSNorm, SwiGLU MLP). KV cache per layer per token: K and V, ``K*H`` each.
* ``attention="mla"``: multi-head latent attention as in DeepSeek-V2/V3 (optional query LoRA,
  latent KV of ``kv_lora_rank`` C plus a decoupled RoPE key of ``qk_rope_head_dim`` R). KV cache
  per layer per token: ``C + R`` values. DeepSeek-V3.2 adds the DSA lightning indexer
  (``index_n_heads``, ``index_head_dim``, ``index_topk``), which is accounted for in the cost
  model (:mod:`dualpath_jax.model.cost`); the functional model runs dense attention.

Mixture-of-experts shapes (``n_routed_experts`` etc.) are carried for cost accounting; the
functional model implements the dense MLP (every layer of the tiny presets is dense).

Sources: Qwen2.5-32B ``config.json`` (huggingface.co/Qwen/Qwen2.5-32B), DeepSeek-V3.2
``config.json`` (PAPER.md [CFG-DS]), DS 27B shapes from PAPER.md section 6.1 / paper appendix A.2
(latent dims assumed equal to V3.2's, as PAPER.md states).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from dualpath_jax.config import ConfigError, check_in, check_non_negative, check_positive

__all__ = ["ModelSpec", "get_spec", "PRESETS", "preset_names"]


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
    # MoE (cost accounting); 0 routed experts = every layer dense
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    n_activated_experts: int = 0
    moe_d_ff: int = 0
    first_k_dense: int = 0
    # common
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_position: int = 131072

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
        if (self.index_n_heads > 0) != (self.index_topk > 0) or (self.index_n_heads > 0) != (self.index_head_dim > 0):
            raise ConfigError(p + "index_n_heads", "index_n_heads, index_head_dim and index_topk must be all zero "
                              f"or all positive (got {self.index_n_heads}, {self.index_head_dim}, {self.index_topk})")
        if self.n_routed_experts:
            check_positive(p + "n_activated_experts", self.n_activated_experts, integer=True)
            check_positive(p + "moe_d_ff", self.moe_d_ff, integer=True)
            if self.n_activated_experts > self.n_routed_experts:
                raise ConfigError(p + "n_activated_experts", f"must be <= n_routed_experts "
                                  f"({self.n_activated_experts} > {self.n_routed_experts})")
        if self.first_k_dense > self.n_layers:
            raise ConfigError(p + "first_k_dense", f"must be <= n_layers ({self.first_k_dense} > {self.n_layers})")

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
        """Softmax scale 1/sqrt(qk head dim) (Qwen2; DeepSeek-V3 without YaRN mscale)."""
        return float(self.qk_head_dim) ** -0.5

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
    # huggingface.co/Qwen/Qwen2.5-32B config.json
    "qwen2.5-32b": ModelSpec(
        name="qwen2.5-32b", attention="gqa", vocab_size=152064, d_model=5120, n_layers=64, n_heads=40,
        n_kv_heads=8, head_dim=128, d_ff=27648, qkv_bias=True, rope_theta=1_000_000.0,
        rms_norm_eps=1e-5, max_position=131072),
    # DeepSeek-V3.2 config.json (PAPER.md [CFG-DS]): 61 layers, first 3 dense, MLA 512+64, DSA.
    "deepseek-v3.2": ModelSpec(
        name="deepseek-v3.2", attention="mla", vocab_size=129280, d_model=7168, n_layers=61, n_heads=128,
        d_ff=18432, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, index_n_heads=64, index_head_dim=128, index_topk=2048, n_routed_experts=256,
        n_shared_experts=1, n_activated_experts=8, moe_d_ff=2048, first_k_dense=3, rope_theta=10000.0,
        rms_norm_eps=1e-6, max_position=163840),
    # Paper appendix A.2 (PAPER.md 6.1): hidden 2560, 30 layers, 32 heads, 72 experts (6 active,
    # 2 shared), MoE ff 1536, dense ff 12288, 1 dense layer, indexer 32x64 top-1024, no q LoRA.
    # Latent dims assumed as V3.2 (512 + 64); vocab assumed as V3.2.
    "ds-27b": ModelSpec(
        name="ds-27b", attention="mla", vocab_size=129280, d_model=2560, n_layers=30, n_heads=32,
        d_ff=12288, q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, index_n_heads=32, index_head_dim=64, index_topk=1024, n_routed_experts=72,
        n_shared_experts=2, n_activated_experts=6, moe_d_ff=1536, first_k_dense=1, rope_theta=10000.0,
        rms_norm_eps=1e-6, max_position=163840),
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
        raise ConfigError("model.name", f"unknown preset {name!r}; known presets: {preset_names()}")
    return PRESETS[key]
