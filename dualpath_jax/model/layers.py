"""Building blocks of the transformer: RMSNorm, RoPE, SwiGLU MLP and the two attention families.

All functions are pure and operate on T rows (leading dim T): the new tokens of one sequence, or,
under :class:`~dualpath_jax.model.attention.PagedDecodeAttention`, one new token of each of T
sequences (everything but the attention is row-wise). The attention families compute their
projections, RoPE and (MLA) absorption here and leave the attention over cached KV to an
:class:`~dualpath_jax.model.attention.AttentionBackend`, so the plain forward, the PE's paged
prefill and the DE's paged decode run this one implementation. Shapes use the glossary of
:mod:`dualpath_jax.shapes`. Numerics follow the Hugging Face reference implementations
(``transformers`` Qwen2 and DeepSeek-V3 modeling code): RMSNorm in f32, RoPE with the rotate-half
layout (DeepSeek's interleaved rope pairs are de-interleaved first, which is how HF's
``apply_rotary_pos_emb_interleave`` lays out its output), softmax in f32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dualpath_jax.model.attention import AttentionBackend
from dualpath_jax.model.spec import ModelSpec

__all__ = ["rms_norm", "rope_cos_sin", "apply_rope", "swiglu_mlp", "gqa_attention", "mla_attention",
           "MLA_NORM_EPS"]

MLA_NORM_EPS = 1e-6
"""eps of MLA's q_a / kv_a RMSNorms (HF DeepSeek-V3 builds them with the default 1e-6)."""


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last dim, computed in f32 then cast back to x's dtype (HF Qwen2RMSNorm)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * xf.astype(x.dtype)


def rope_cos_sin(positions: jax.Array, dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables ``f32[T, dim]`` for absolute ``positions i32[T]`` (RoFormer, Su et al. 2021).

    ``inv_freq[j] = theta ** (-2j / dim)``; the tables repeat the ``dim/2`` frequencies twice
    (rotate-half layout).
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, *, interleaved: bool = False) -> jax.Array:
    """Rotate ``x [T, ..., dim]`` by position; ``cos``/``sin`` are ``[T, dim]``.

    With ``interleaved=True`` (DeepSeek checkpoints) the pairs ``(x0, x1), (x2, x3), ...`` are
    de-interleaved to ``[x0, x2, ..., x1, x3, ...]`` first; the output stays de-interleaved, as in
    HF's ``apply_rotary_pos_emb_interleave``. Dot products between equally rotated q and k are
    unaffected by that permutation.
    """
    if interleaved:
        x = jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
    extra = x.ndim - 2
    c = cos.reshape(cos.shape[0], *([1] * extra), cos.shape[-1])
    s = sin.reshape(sin.shape[0], *([1] * extra), sin.shape[-1])
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    xf = x.astype(jnp.float32)
    return (xf * c + rotated.astype(jnp.float32) * s).astype(x.dtype)


def swiglu_mlp(p: dict, x: jax.Array) -> jax.Array:
    """SwiGLU MLP: ``down(silu(x @ gate) * (x @ up))``; x ``[T, D]`` -> ``[T, D]``."""
    return (jax.nn.silu(x @ p["w_gate"]) * (x @ p["w_up"])) @ p["w_down"]


def gqa_attention(p: dict, spec: ModelSpec, x: jax.Array, cos: jax.Array, sin: jax.Array,
                  backend: AttentionBackend) -> tuple[jax.Array, tuple[jax.Array, jax.Array], Any]:
    """Qwen2-style GQA: projections and RoPE here, the attention over the cached prefix by ``backend``.

    Args:
      p: layer params with ``wq [D, N*H]``, ``bq [N*H]``, ``wk/wv [D, K*H]``, ``bk/bv [K*H]``,
        ``wo [N*H, D]`` (biases present iff ``spec.qkv_bias``).
      x: normed hidden states ``[T, D]``.
      cos, sin: rope tables ``[T, H]`` for the new tokens' absolute positions.
      backend: where the prefix's KV lives (:mod:`dualpath_jax.model.attention`).

    Returns:
      ``(out [T, D], (k_new [T, K, H], v_new [T, K, H]), aux)`` - the new tokens' post-rope KV and
      the backend's ``aux``.
    """
    t = x.shape[0]
    n, kh, h = spec.n_heads, spec.n_kv_heads, spec.head_dim
    q, k, v = x @ p["wq"], x @ p["wk"], x @ p["wv"]
    if spec.qkv_bias:
        q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
    q = apply_rope(q.reshape(t, n, h), cos, sin)
    k = apply_rope(k.reshape(t, kh, h), cos, sin)
    v = v.reshape(t, kh, h)
    out, aux = backend.gqa(q, k, v, scale=spec.attn_scale)
    return out.reshape(t, n * h) @ p["wo"], (k, v), aux


def mla_attention(p: dict, spec: ModelSpec, x: jax.Array, cos: jax.Array, sin: jax.Array,
                  backend: AttentionBackend) -> tuple[jax.Array, tuple[jax.Array, jax.Array], Any]:
    """DeepSeek-V3 MLA in the absorbed form over the latent cache.

    Scores ``q_nope . (W_uk c) + q_rope . k_rope`` are computed as ``(q_nope W_uk^T) . c + q_rope .
    k_rope`` so attention runs once over the shared latent (a single KV head of width C + R with
    value width C, done by ``backend``), and the per-head value ``W_uv c`` is applied after
    attention (DeepSeek-V2 paper, section 2.1.2, "absorb"). Mathematically equal to HF's expanded
    form.

    Args:
      p: layer params ``wq [D, N*(nope+R)]`` or ``wq_a [D, q_lora]``, ``q_a_norm``,
        ``wq_b [q_lora, N*(nope+R)]``; ``wkv_a [D, C+R]``, ``kv_a_norm [C]``,
        ``wkv_b [C, N*(nope+v)]``, ``wo [N*v, D]``.
      x: normed hidden states ``[T, D]``; cos/sin ``[T, R]``.
      backend: where the prefix's latent KV lives (:mod:`dualpath_jax.model.attention`).

    Returns:
      ``(out [T, D], (latent_new [T, C], k_rope_new [T, R]), aux)``.
    """
    t = x.shape[0]
    n, c, r = spec.n_heads, spec.kv_lora_rank, spec.qk_rope_head_dim
    nope, vd = spec.qk_nope_head_dim, spec.v_head_dim
    if spec.q_lora_rank:
        q = rms_norm(x @ p["wq_a"], p["q_a_norm"], MLA_NORM_EPS) @ p["wq_b"]
    else:
        q = x @ p["wq"]
    q = q.reshape(t, n, nope + r)
    q_nope, q_rope = q[..., :nope], apply_rope(q[..., nope:], cos, sin, interleaved=spec.rope_interleave)
    ckv = x @ p["wkv_a"]
    latent = rms_norm(ckv[:, :c], p["kv_a_norm"], MLA_NORM_EPS)
    k_rope = apply_rope(ckv[:, c:], cos, sin, interleaved=spec.rope_interleave)
    wkv_b = p["wkv_b"].reshape(c, n, nope + vd)
    w_uk, w_uv = wkv_b[..., :nope], wkv_b[..., nope:]
    q_lat = jnp.einsum("tnh,cnh->tnc", q_nope, w_uk)
    o_lat, aux = backend.mla(q_lat, q_rope, latent, k_rope, scale=spec.attn_scale)  # [T, N, C]
    o = jnp.einsum("tnc,cnv->tnv", o_lat, w_uv)
    return o.reshape(t, n * vd) @ p["wo"], (latent, k_rope), aux
