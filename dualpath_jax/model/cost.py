"""Size and cost accounting: KV bytes, prefill/decode FLOPs and bytes, the cache-compute ratio.

Used by the simulator's compute model and by the engine's emulated hardware profile.

What is counted (one forward pass; a multiply-add = 2 FLOPs):

* **linear**: ``2 * active_linear_params`` per new token - every projection a token passes through
  (attention q/kv/o incl. MLA's ``kv_b`` absorbed into the query and output, the DSA indexer's
  projections, dense MLP or the routed+shared experts actually activated plus the router, and the
  LM head). Embedding lookup, norms, RoPE, softmax and activations are not counted.
* **attention**: per new token, per layer, over the ``s`` keys it attends to (causal:
  ``context + i + 1`` for the i-th appended token; capped at ``index_topk`` under DSA):
  GQA ``4 * N * H * s`` (QK^T and PV); MLA in the absorbed form ``2 * N * (C + R) * s +
  2 * N * C * s`` (FlashMLA-style, as in PAPER.md section 1.2's re-derivation [Z]).
* **indexer** (DeepSeek-V3.2 DSA lightning indexer): ``2 * index_n_heads * index_head_dim * s``
  per new token per layer over all ``s`` causal keys.

KV bytes follow the cached layouts: GQA ``2 * K * H * bytes(dtype)`` per token per layer; MLA with
``fp8`` uses FlashMLA's layout (C fp8 values + one f32 scale per 128 values + R bf16 rope values =
656 B for C=512, R=64, PAPER.md section 1.2); other MLA dtypes ``(C + R) * bytes(dtype)``. The DSA
indexer's key cache (``index_head_dim`` fp8 values + one f32 scale = 132 B per token per layer on
DeepSeek-V3.2, PAPER.md section 8.2) is excluded by :func:`kv_bytes_per_token` by default, as in the
paper's Table 1 (PAPER.md section 1.2), but it is part of every token's cache entry: every hit
token's indexer keys are loaded with its KV, so the bytes the data path stores, reads and moves
are :func:`stored_kv_bytes_per_token`.
"""

from __future__ import annotations

import numpy as np

from dualpath_jax.config import ConfigError
from dualpath_jax.model.spec import ModelSpec

__all__ = [
    "DTYPE_BYTES", "kv_bytes_per_token_per_layer", "kv_bytes_per_token", "active_linear_params",
    "routed_active_params", "total_params", "prefill_flops", "decode_flops", "decode_bytes", "cache_compute_ratio",
    "default_kv_dtype", "stored_kv_bytes_per_token",
]

DTYPE_BYTES = {"fp8": 1, "float8": 1, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "f32": 4, "float32": 4}

_FP8_SCALE_GROUP = 128  # FlashMLA FP8 KV: one f32 scale per 128 latent values
_INDEXER_KEY_SCALE_BYTES = 4


def _dtype_bytes(kv_dtype: str) -> int:
    if kv_dtype not in DTYPE_BYTES:
        raise ConfigError("kv_dtype", f"must be one of {sorted(DTYPE_BYTES)} (got {kv_dtype!r})")
    return DTYPE_BYTES[kv_dtype]


def default_kv_dtype(spec: ModelSpec) -> str:
    """Table 1's convention: FP8 KV for MLA models, FP16 for GQA (Qwen2.5-32B) (PAPER.md 1.2)."""
    return "fp8" if spec.is_mla else "fp16"


def kv_bytes_per_token_per_layer(spec: ModelSpec, kv_dtype: str | None = None, *,
                                 include_indexer: bool = False) -> int:
    """Bytes of cached KV per token per layer.

    Args:
      kv_dtype: ``"fp8" | "bf16" | "fp16" | "f32"`` (default :func:`default_kv_dtype`).
      include_indexer: add the DSA indexer key (``index_head_dim`` fp8 + one f32 scale).

    Raises:
      ConfigError: field ``kv_dtype`` for an unknown dtype.
    """
    kv_dtype = kv_dtype or default_kv_dtype(spec)
    nbytes = _dtype_bytes(kv_dtype)
    if spec.is_mla:
        c, r = spec.kv_lora_rank, spec.qk_rope_head_dim
        if nbytes == 1:
            per_layer = c + 4 * -(-c // _FP8_SCALE_GROUP) + 2 * r
        else:
            per_layer = (c + r) * nbytes
    else:
        per_layer = 2 * spec.n_kv_heads * spec.head_dim * nbytes
    if include_indexer and spec.index_n_heads:
        per_layer += spec.index_head_dim + _INDEXER_KEY_SCALE_BYTES
    return per_layer


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: str | None = None, *, include_indexer: bool = False) -> int:
    """Bytes of cached KV per token over all L layers."""
    return spec.n_layers * kv_bytes_per_token_per_layer(spec, kv_dtype, include_indexer=include_indexer)


def stored_kv_bytes_per_token(spec: ModelSpec, kv_dtype: str | None = None) -> int:
    """Bytes of one token's cache entry over all L layers: the KV plus, under DSA, the indexer keys.

    This is what the data path stores, reads from storage and moves between engines per token
    (DeepSeek-V3.2 FP8: 61 x (656 + 132) = 48,068 B; PAPER.md section 8.2 gives about 48 KB incl.
    indexer keys). Dense-attention models hold no indexer keys, so it equals :func:`kv_bytes_per_token`.

    Raises:
      ConfigError: field ``kv_dtype`` for an unknown dtype.
    """
    return kv_bytes_per_token(spec, kv_dtype, include_indexer=True)


def _attn_linear_params(spec: ModelSpec) -> int:
    d, n = spec.d_model, spec.n_heads
    if not spec.is_mla:
        k, h = spec.n_kv_heads, spec.head_dim
        return d * n * h + 2 * d * k * h + n * h * d
    c, r, nope, v = spec.kv_lora_rank, spec.qk_rope_head_dim, spec.qk_nope_head_dim, spec.v_head_dim
    q = d * spec.q_lora_rank + spec.q_lora_rank * n * (nope + r) if spec.q_lora_rank else d * n * (nope + r)
    params = q + d * (c + r) + c * n * (nope + v) + n * v * d
    if spec.index_n_heads:
        q_in = spec.q_lora_rank or d
        params += q_in * spec.index_n_heads * spec.index_head_dim + d * spec.index_head_dim + d * spec.index_n_heads
    return params


def _mlp_params(spec: ModelSpec, layer: int, *, active: bool) -> int:
    d = spec.d_model
    if not spec.is_moe_layer(layer):
        return 3 * d * spec.d_ff
    experts = spec.n_activated_experts if active else spec.n_routed_experts
    return (experts + spec.n_shared_experts) * 3 * d * spec.moe_d_ff + d * spec.n_routed_experts


def active_linear_params(spec: ModelSpec) -> int:
    """Weights one token multiplies through (activated experts only), LM head included."""
    per_layer = sum(_attn_linear_params(spec) + _mlp_params(spec, l, active=True) for l in range(spec.n_layers))
    return per_layer + spec.d_model * spec.vocab_size


def routed_active_params(spec: ModelSpec) -> int:
    """Weights of the routed experts one token multiplies through: ``n_activated_experts * 3 * D *
    moe_d_ff`` per MoE layer (shared experts, router and dense layers excluded); 0 for a dense
    model. Under expert parallelism this is the work a token sends to other GPUs (PAPER.md 5.5)."""
    if not spec.n_routed_experts:
        return 0
    moe_layers = sum(spec.is_moe_layer(l) for l in range(spec.n_layers))
    return moe_layers * spec.n_activated_experts * 3 * spec.d_model * spec.moe_d_ff


def total_params(spec: ModelSpec) -> int:
    """All weights (all experts), embeddings and LM head included; norms and biases excluded."""
    per_layer = sum(_attn_linear_params(spec) + _mlp_params(spec, l, active=False) for l in range(spec.n_layers))
    head = spec.d_model * spec.vocab_size
    return per_layer + head * (1 if spec.tie_embeddings else 2)


def _attn_flops_per_key(spec: ModelSpec) -> int:
    if spec.is_mla:
        c, r = spec.kv_lora_rank, spec.qk_rope_head_dim
        return 2 * spec.n_heads * (c + r) + 2 * spec.n_heads * c
    return 4 * spec.n_heads * spec.head_dim


def _sum_keys(context: np.ndarray, append: np.ndarray, cap: int | None) -> np.ndarray:
    """Sum over i in [0, append) of min(context + i + 1, cap) (closed form, vectorised)."""
    first = context + 1
    last = context + append
    total = (first + last) * append / 2.0
    if cap is None:
        return total
    # terms above cap: those i with context + i + 1 > cap
    n_over = np.clip(last - np.maximum(first, cap + 1) + 1, 0, None)
    over_first = np.maximum(first, cap + 1)
    over_sum = (over_first + last) * n_over / 2.0
    return total - over_sum + cap * n_over


def prefill_flops(spec: ModelSpec, context_tokens, append_tokens) -> dict[str, np.ndarray]:
    """FLOPs of a prefill forward computing ``append_tokens`` new tokens over ``context_tokens``.

    Args:
      context_tokens, append_tokens: scalars or arrays (broadcast) of token counts.

    Returns:
      dict with ``linear``, ``attention``, ``indexer`` and ``total`` FLOPs (float64 arrays or scalars).
    """
    ctx = np.asarray(context_tokens, dtype=np.float64)
    app = np.asarray(append_tokens, dtype=np.float64)
    linear = 2.0 * active_linear_params(spec) * app
    cap = spec.index_topk if spec.index_n_heads else None
    attention = spec.n_layers * _attn_flops_per_key(spec) * _sum_keys(ctx, app, cap)
    indexer = np.zeros_like(linear)
    if spec.index_n_heads:
        indexer = spec.n_layers * 2.0 * spec.index_n_heads * spec.index_head_dim * _sum_keys(ctx, app, None)
    return {"linear": linear, "attention": attention, "indexer": indexer,
            "total": linear + attention + indexer}


def decode_flops(spec: ModelSpec, context_tokens) -> dict[str, np.ndarray]:
    """FLOPs of one decode step per sequence whose KV holds ``context_tokens`` (1 new token each)."""
    return prefill_flops(spec, context_tokens, 1)


def decode_bytes(spec: ModelSpec, batch_context_tokens, *, weight_dtype: str = "bf16",
                 kv_dtype: str | None = None) -> float:
    """HBM bytes read by one decode step of a batch: active weights once + every sequence's KV
    (under DSA: its top-k entries, plus every token's indexer key, which the indexer scores).

    Args:
      batch_context_tokens: sequence of per-sequence context lengths (tokens).
      weight_dtype: dtype of the weights (``fp8`` for DeepSeek's FP8 checkpoints).

    Returns:
      bytes (float). For MoE layers the experts read are approximated by the activated experts of
      one token times min(batch, n_routed/n_activated) (distinct experts touched grows with batch).
    """
    ctx = np.asarray(batch_context_tokens, dtype=np.float64).reshape(-1)
    batch = max(len(ctx), 1)
    wbytes = _dtype_bytes(weight_dtype)
    weights = 0.0
    for layer in range(spec.n_layers):
        weights += _attn_linear_params(spec)
        if spec.is_moe_layer(layer):
            touched = min(spec.n_routed_experts, spec.n_activated_experts * batch)
            weights += (touched + spec.n_shared_experts) * 3 * spec.d_model * spec.moe_d_ff
        else:
            weights += 3 * spec.d_model * spec.d_ff
    weights += spec.d_model * spec.vocab_size
    if spec.index_n_heads:  # DSA: top-k KV entries per sequence, every indexer key
        kv = (kv_bytes_per_token(spec, kv_dtype) * float(np.minimum(ctx, spec.index_topk).sum())
              + (stored_kv_bytes_per_token(spec, kv_dtype) - kv_bytes_per_token(spec, kv_dtype)) * float(ctx.sum()))
    else:
        kv = kv_bytes_per_token(spec, kv_dtype) * float(ctx.sum())
    return weights * wbytes + kv


def cache_compute_ratio(spec: ModelSpec, context_tokens, append_tokens, kv_dtype: str | None = None) -> float:
    """Cache-compute ratio in GB per PFLOP (PAPER.md section 1.2, Table 1).

    ``KV bytes of the context_tokens hit tokens / FLOPs of prefilling append_tokens over them``,
    with GB = 1e9 bytes and PFLOP = 1e15 FLOPs. FLOPs as in :func:`prefill_flops` (linear +
    attention + DSA indexer); KV bytes as in :func:`kv_bytes_per_token` (default dtype: FP8 for MLA,
    FP16 for GQA; indexer keys excluded), matching Table 1's definition.
    """
    kv = kv_bytes_per_token(spec, kv_dtype) * float(context_tokens)
    flops = float(prefill_flops(spec, context_tokens, append_tokens)["total"])
    return (kv / 1e9) / (flops / 1e15)
