"""Building blocks of the transformer: RMSNorm, RoPE, SwiGLU MLP, MoE and the two attention families.

All functions are pure and operate on T rows (leading dim T): the new tokens of one sequence, or,
under :class:`~dualpath_jax.model.attention.PagedDecodeAttention`, one new token of each of T
sequences (everything but the attention is row-wise). The attention families compute their
projections, RoPE and (MLA) absorption here and leave the attention over cached KV to an
:class:`~dualpath_jax.model.attention.AttentionBackend`, so the plain forward, the PE's paged
prefill and the DE's paged decode run this one implementation. Shapes use the glossary of
:mod:`dualpath_jax.shapes`. Numerics follow the Hugging Face reference implementations
(``transformers`` Qwen2/3, Llama, DeepSeek-V2 and DeepSeek-V3 modeling code): RMSNorm in f32,
RoPE with the rotate-half layout (DeepSeek's interleaved rope pairs are de-interleaved first, which
is how HF's ``apply_rotary_pos_emb_interleave`` lays out its output) and its frequencies in f32,
softmax and MoE routing in f32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from dualpath_jax.model.attention import AttentionBackend
from dualpath_jax.model.spec import ModelSpec, RopeScaling

__all__ = ["rms_norm", "rope_inv_freq", "rope_cos_sin", "apply_rope", "swiglu_mlp", "moe_route", "moe_mlp",
           "gqa_attention", "mla_attention", "MLA_NORM_EPS"]

MLA_NORM_EPS = 1e-6
"""eps of MLA's q_a / kv_a RMSNorms (HF DeepSeek-V3 builds them with the default 1e-6)."""


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last dim, computed in f32 then cast back to x's dtype (HF Qwen2RMSNorm)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * xf.astype(x.dtype)


def rope_inv_freq(dim: int, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """RoPE's ``dim/2`` inverse frequencies (RoFormer, Su et al. 2021), ``theta ** (-2j / dim)``,
    scaled as ``scaling`` says (:class:`~dualpath_jax.model.spec.RopeScaling`): linear position
    interpolation divides them all by ``factor``; YaRN (arXiv 2309.00071 section 3) keeps the high
    frequencies, divides the low ones by ``factor`` and ramps linearly between the bounds of
    :meth:`~dualpath_jax.model.spec.RopeScaling.yarn_ramp_bounds`; Llama 3 divides those whose
    wavelength exceeds ``original / low_freq_factor`` and blends down to ``original /
    high_freq_factor``. Computed in f32 as ``transformers`` does.

    Args:
      dim: the rotary width (``H`` for GQA, ``R`` for MLA); even.
      theta: RoPE base (``spec.rope_theta``).
      scaling: ``spec.rope_scaling`` (None: plain RoPE).

    Returns:
      ``f32[dim/2]``, radians per position.
    """
    pos_freqs = theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    if scaling is None:
        return 1.0 / pos_freqs
    if scaling.kind == "linear":
        return 1.0 / pos_freqs / scaling.factor
    if scaling.kind == "llama3":
        inv_freq = 1.0 / pos_freqs
        wavelen = 2 * math.pi / inv_freq
        original = scaling.original_max_position
        scaled = jnp.where(wavelen > original / scaling.low_freq_factor, inv_freq / scaling.factor, inv_freq)
        smooth = (original / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= original / scaling.high_freq_factor) & (wavelen <= original / scaling.low_freq_factor)
        return jnp.where(medium, blended, scaled)
    low, high = scaling.yarn_ramp_bounds(dim, theta)
    if low == high:
        high += 0.001  # (as transformers: no division by zero)
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: the frequency as trained (extrapolated), 0: divided by factor (interpolated)
    return 1.0 / (scaling.factor * pos_freqs) * (1 - keep) + 1.0 / pos_freqs * keep


def rope_cos_sin(positions: jax.Array, dim: int, theta: float, scaling: RopeScaling | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables ``f32[T, dim]`` for absolute ``positions i32[T]``.

    The ``dim/2`` frequencies of :func:`rope_inv_freq` appear twice (rotate-half layout); under YaRN
    both tables are multiplied by :attr:`~dualpath_jax.model.spec.RopeScaling.cos_sin_scale`.
    """
    inv_freq = rope_inv_freq(dim, theta, scaling)
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    scale = 1.0 if scaling is None else scaling.cos_sin_scale
    return jnp.cos(emb) * scale, jnp.sin(emb) * scale


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


def moe_route(p: dict, spec: ModelSpec, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A MoE router: each row's ``k = spec.n_activated_experts`` experts and their weights.

    Scores ``s = softmax(x W_r)`` (DeepSeek-V2, arXiv 2405.04434 section 2.2; Qwen3-MoE) or
    ``sigmoid(x W_r)`` (DeepSeek-V3, arXiv 2412.19437 section 2.1.2), in f32. Choice
    (``spec.moe_topk_method``):

    * ``greedy``: the top-k scores.
    * ``group_limited_greedy`` (V2): experts in ``moe_n_group`` groups, a group ranked by its best
      score; the top-k among the ``moe_topk_group`` best groups.
    * ``noaux_tc`` (V3): the top-k of ``s + b`` (``router_bias b``, the auxiliary-loss-free balance
      bias) among the ``moe_topk_group`` groups with the largest sum of their two best ``s + b``.

    Weights are the chosen experts' ``s`` (without ``b``), divided by their sum when
    ``spec.moe_norm_topk``, times ``spec.moe_routed_scale``.

    Args:
      p: the layer's ``mlp`` params: ``router [D, E]``, ``router_bias [E]`` (``noaux_tc``).
      x: normed hidden states ``[T, D]``.

    Returns:
      ``(experts i32[T, k], weights f32[T, k])``.

    Raises:
      KeyError: ``router_bias`` missing under ``noaux_tc`` (params of another spec).
    """
    logits = jnp.dot(x.astype(jnp.float32), p["router"].astype(jnp.float32))
    scores = jax.nn.sigmoid(logits) if spec.moe_scoring == "sigmoid" else jax.nn.softmax(logits, axis=-1)
    choice = scores
    if spec.moe_topk_method == "noaux_tc":
        choice = scores + p["router_bias"].astype(jnp.float32)
    if spec.moe_topk_method != "greedy":
        t, e, g = x.shape[0], spec.n_routed_experts, spec.moe_n_group
        grouped = choice.reshape(t, g, e // g)
        if spec.moe_topk_method == "noaux_tc":
            group_score = jax.lax.top_k(grouped, 2)[0].sum(-1)
        else:
            group_score = grouped.max(-1)
        _, best = jax.lax.top_k(group_score, spec.moe_topk_group)
        keep = jnp.zeros((t, g), bool).at[jnp.arange(t)[:, None], best].set(True)
        fill = -jnp.inf if spec.moe_topk_method == "noaux_tc" else 0.0  # (as the reference code)
        choice = jnp.where(jnp.repeat(keep, e // g, axis=1), choice, fill)
    _, experts = jax.lax.top_k(choice, spec.n_activated_experts)
    weights = jnp.take_along_axis(scores, experts, axis=-1)
    if spec.moe_norm_topk:
        weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    return experts, weights * spec.moe_routed_scale


def moe_mlp(p: dict, spec: ModelSpec, x: jax.Array) -> jax.Array:
    """A MoE layer (DeepSeekMoE, arXiv 2401.06066; Qwen3-MoE): the routed experts' SwiGLU outputs
    weighted by :func:`moe_route`, plus the shared experts' (one SwiGLU of width
    ``n_shared_experts * moe_d_ff``; none in Qwen3-MoE).

    Every row goes to its k experts, none dropped (no capacity limit, as the reference code): the
    T*k (row, expert) pairs are sorted by expert and each expert's rows multiplied in one grouped
    matmul (``jax.lax.ragged_dot``). Backends with a grouped-matmul lowering then do the activated
    experts' work only; JAX's generic lowering (CPU, as of JAX 0.10) multiplies every expert over a
    masked ``[E, T*k, D]`` copy, E/k times that work, which the tiny models afford.

    Args:
      p: the layer's ``mlp`` params: ``router [D, E]`` (and ``router_bias [E]``), ``w_gate/w_up
        [E, D, Fm]``, ``w_down [E, Fm, D]``, ``shared`` (a :func:`swiglu_mlp` of width
        ``n_shared_experts * Fm``) when ``spec.n_shared_experts``.
      x: normed hidden states ``[T, D]``.

    Returns:
      ``[T, D]`` in x's dtype.
    """
    t, k = x.shape[0], spec.n_activated_experts
    experts, weights = moe_route(p, spec, x)
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    rows = order // k
    sizes = jnp.bincount(flat, length=spec.n_routed_experts).astype(jnp.int32)
    xs = x[rows]
    hidden = jax.nn.silu(jax.lax.ragged_dot(xs, p["w_gate"], sizes)) * jax.lax.ragged_dot(xs, p["w_up"], sizes)
    ys = jax.lax.ragged_dot(hidden, p["w_down"], sizes).astype(jnp.float32)
    ys = ys * weights.reshape(-1)[order][:, None]
    out = jnp.zeros((t, x.shape[1]), jnp.float32).at[rows].add(ys).astype(x.dtype)
    if spec.n_shared_experts:
        out = out + swiglu_mlp(p["shared"], x)
    return out


def gqa_attention(p: dict, spec: ModelSpec, x: jax.Array, cos: jax.Array, sin: jax.Array,
                  backend: AttentionBackend) -> tuple[jax.Array, tuple[jax.Array, jax.Array], Any]:
    """GQA (Qwen2, Qwen3, Llama): projections and RoPE here, the attention over the cached prefix by ``backend``.

    Args:
      p: layer params with ``wq [D, N*H]``, ``bq [N*H]``, ``wk/wv [D, K*H]``, ``bk/bv [K*H]``
        (present iff ``spec.qkv_bias``), ``wo [N*H, D]``, ``bo [D]`` (iff ``spec.o_bias``),
        ``q_norm/k_norm [H]`` (iff ``spec.qk_norm``: Qwen3's per-head RMSNorm before RoPE).
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
    q, k, v = q.reshape(t, n, h), k.reshape(t, kh, h), v.reshape(t, kh, h)
    if spec.qk_norm:
        q, k = rms_norm(q, p["q_norm"], spec.rms_norm_eps), rms_norm(k, p["k_norm"], spec.rms_norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out, aux = backend.gqa(q, k, v, scale=spec.attn_scale)
    out = out.reshape(t, n * h) @ p["wo"]
    return (out + p["bo"] if spec.o_bias else out), (k, v), aux


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
