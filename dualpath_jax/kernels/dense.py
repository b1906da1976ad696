"""Causal attention of T new queries over S = cached + T keys of one sequence (contiguous KV).

This is the entry point the model's per-layer function calls. Query ``t`` sits at absolute position
``S - T + t`` and attends to keys ``0 .. S - T + t`` (fully to the cached prefix, causally to the
new tokens). GQA maps query head ``n`` to KV head ``n // (N // K)`` (Qwen2 ``repeat_kv``); MLA
calls it with the latent cache as a single KV head (K = 1) whose key is ``[latent | rope]`` and
whose value is the latent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dualpath_jax.kernels import _flash

__all__ = ["attention", "attention_reference"]

_IMPLEMENTATIONS = ("auto", "reference", "pallas")


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """Plain-jnp causal attention with f32 softmax/accumulation.

    Args:
      q: ``[T, N, Hk]`` queries (any float dtype).
      k: ``[S, K, Hk]`` keys, S >= T; the last T rows are the new tokens'.
      v: ``[S, K, Hv]`` values.
      scale: softmax scale (usually ``Hk ** -0.5``).

    Returns:
      ``[T, N, Hv]`` in q's dtype.

    Raises:
      ValueError: naming ``q``/``k``/``v`` for non-float arrays or inconsistent shapes, ``scale``
        unless a static finite number > 0 (the Pallas path's checks: one call behaves alike on
        CPU and GPU).
    """
    scale = _flash.check_scale(scale)
    _validate(q, k, v)
    t, n, _ = q.shape
    s, kh, _ = k.shape
    group = n // kh
    qf = q.astype(jnp.float32).reshape(t, kh, group, q.shape[-1])
    logits = jnp.einsum("tkgh,skh->kgts", qf, k.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST) * scale
    q_pos = (s - t) + jnp.arange(t)
    mask = jnp.arange(s)[None, :] <= q_pos[:, None]  # [T, S]
    logits = jnp.where(mask[None, None], logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("kgts,skh->tkgh", probs, v.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
    return out.reshape(t, n, v.shape[-1]).astype(q.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
              implementation: str = "auto") -> jax.Array:
    """Dispatch causal attention (shapes as :func:`attention_reference`).

    ``implementation``: ``"reference"`` (plain jnp), ``"pallas"`` (block-KV Pallas kernel; runs in
    interpret mode off GPU) or ``"auto"`` (reference on CPU, Pallas on GPU).

    Raises:
      ValueError: unknown ``implementation``.
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"implementation: must be one of {list(_IMPLEMENTATIONS)} (got {implementation!r})")
    if implementation == "auto":
        implementation = "pallas" if jax.default_backend() == "gpu" else "reference"
    if implementation == "pallas":
        from dualpath_jax.kernels import dense_pallas  # noqa: PLC0415  (imports Pallas only when asked for)
        return dense_pallas.attention_pallas(q, k, v, scale=scale)
    return attention_reference(q, k, v, scale=scale)


def _validate(q, k, v) -> None:
    _flash.check_float("q", q, 3, "[T, N, Hk]")
    _flash.check_float("k", k, 3, "[S, K, Hk]")
    _flash.check_float("v", v, 3, "[S, K, Hv]")
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"v: leading dims must match k's [S, K] (k {k.shape}, v {v.shape})")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"k: head dim {k.shape[-1]} must equal q's {q.shape[-1]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"q: query heads N={q.shape[1]} must be a positive multiple of KV heads K={k.shape[1]}")
    if k.shape[0] < q.shape[0]:
        raise ValueError(f"k: S={k.shape[0]} must be >= T={q.shape[0]} (new tokens are part of the KV)")
