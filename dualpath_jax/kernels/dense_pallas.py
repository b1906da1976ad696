"""Dense single-sequence causal attention on the block-KV Pallas prefill kernel.

:func:`dualpath_jax.kernels.dense.attention` dispatches here for ``implementation="pallas"``: the
model's layer-by-layer prefill and decode (query ``t`` at absolute position ``S - T + t`` sees keys
``0 .. S - T + t``) become one prefill-kernel call with ``B = 1``, ``cached = S - T`` and
``new = T``. The contiguous KV is viewed as blocks of Z tokens with the identity block table
(``block_table = arange``); the whole ``[S, K, H]`` array is the pool (zero-padded to a multiple of
Z, a copy only when S is not one), and the kernel reads only its first ``S - T`` tokens from it,
taking the new tokens' KV from ``k[S - T:]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dualpath_jax.kernels import _flash
from dualpath_jax.kernels.prefill_attention.kernel import prefill_pallas
from dualpath_jax.shapes import BLOCK_TOKENS

__all__ = ["attention_pallas"]


def attention_pallas(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                     block_tokens: int = BLOCK_TOKENS, block_m: int | None = None,
                     interpret: bool | None = None) -> jax.Array:
    """Causal attention of T new queries over S = cached + T contiguous keys (Pallas kernel).

    Args:
      q: ``[T, N, Hk]``; k: ``[S, K, Hk]`` (S >= T, last T rows are the new tokens'); v:
        ``[S, K, Hv]``. k and v are cast to q's dtype if they differ.
      scale: softmax scale (static).
      block_tokens: Z used to view the KV as blocks (power of two >= 16).
      block_m: kernel row tile (None: default). interpret: Pallas interpret mode (None: on
        unless the backend is a GPU).

    Returns:
      ``[T, N, Hv]`` in q's dtype.

    Raises:
      ValueError: naming ``q``/``k``/``v``/``block_tokens``/``scale`` for inconsistent inputs.
    """
    scale = _flash.check_scale(scale)
    _flash.check_float("q", q, 3, "[T, N, Hk]")
    _flash.check_float("k", k, 3, "[S, K, Hk]")
    _flash.check_float("v", v, 3, "[S, K, Hv]")
    t, n, hk = q.shape
    _flash.check_shape("k", k, "[S, K, Hk]", (None, None, hk))
    s, kh, _ = k.shape
    _flash.check_shape("v", v, "[S, K, Hv]", (s, kh, None))
    if kh == 0 or n % kh:
        raise ValueError(f"q: query heads N={n} must be a positive multiple of KV heads K={kh}")
    if s < t:
        raise ValueError(f"k: S={s} must be >= T={t} (the new tokens' KV is part of k)")
    _flash.check_block_tokens("block_tokens", block_tokens)
    _flash.check_tile("block_m", block_m)
    return _attention_pallas(q, k.astype(q.dtype), v.astype(q.dtype), scale=scale, block_tokens=block_tokens,
                             block_m=block_m, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("scale", "block_tokens", "block_m", "interpret"))
def _attention_pallas(q, k, v, *, scale, block_tokens, block_m, interpret):
    t, n, _ = q.shape
    s = k.shape[0]
    if t == 0:
        return jnp.zeros((0, n, v.shape[-1]), q.dtype)
    z = block_tokens
    pool_tokens = -(-s // z) * z
    k_pool = _flash.pad_axis(k, 0, pool_tokens).reshape(pool_tokens // z, z, *k.shape[1:])
    v_pool = _flash.pad_axis(v, 0, pool_tokens).reshape(pool_tokens // z, z, *v.shape[1:])
    block_table = jnp.arange(pool_tokens // z, dtype=jnp.int32)[None, :]
    cached_len = jnp.full((1,), s - t, jnp.int32)
    new_len = jnp.full((1,), t, jnp.int32)
    out = prefill_pallas((q[None],), (k[s - t:][None],), v[s - t:][None], (k_pool,), v_pool, block_table,
                         cached_len, new_len, scale=scale, block_m=block_m, interpret=interpret)
    return out[0]
