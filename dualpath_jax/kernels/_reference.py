"""Plain-jnp building blocks of the block-KV references: gather blocks, masked attention in f32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["gather_blocks", "masked_attention"]


def gather_blocks(blocks: jax.Array, block_table: jax.Array) -> jax.Array:
    """Lay each sequence's blocks out contiguously, in f32.

    Args:
      blocks: ``[Pt, Z, ...]`` block pool.
      block_table: ``i32[B, P]``.

    Returns:
      ``f32[B, P * Z, ...]``; entries whose block id is outside ``[0, Pt)`` read as NaN (so a bad
      id that is actually used poisons the result instead of being clamped to another block).
    """
    b, p = block_table.shape
    ids = block_table.reshape(-1)
    ok = jnp.logical_and(ids >= 0, ids < blocks.shape[0])  # explicit: take() would wrap -1
    rows = jnp.take(blocks.astype(jnp.float32), jnp.where(ok, ids, 0), axis=0)
    rows = jnp.where(ok.reshape(-1, *([1] * (rows.ndim - 1))), rows, jnp.nan)
    return rows.reshape(b, p * blocks.shape[1], *blocks.shape[2:])


def masked_attention(q: jax.Array, keys: jax.Array, values: jax.Array, key_ok: jax.Array,
                     mask: jax.Array, row_ok: jax.Array, *, scale: float) -> jax.Array:
    """Softmax attention in f32 with explicit masks.

    Args:
      q: ``[B, T, N, Hk]``; keys: ``[B, S, K, Hk]``; values: ``[B, S, K, Hv]`` (N % K == 0,
        query head ``n`` reads KV head ``n // (N // K)``).
      key_ok: ``bool[B, S]`` keys holding data (others are zeroed before use, so NaN in unused
        slots cannot leak through ``0 * NaN``).
      mask: ``bool[B, T, S]`` which keys each query sees (``key_ok`` is applied on top).
      row_ok: ``bool[B, T]`` queries that exist; other rows are returned as zeros.
      scale: softmax scale.

    Returns:
      ``f32[B, T, N, Hv]``.
    """
    b, t, n, hk = q.shape
    kh = keys.shape[2]
    qf = q.astype(jnp.float32).reshape(b, t, kh, n // kh, hk)
    keys = keys.astype(jnp.float32)
    values = jnp.where(key_ok[:, :, None, None], values.astype(jnp.float32), 0.0)
    logits = jnp.einsum("btkgh,bskh->bkgts", qf, keys, precision=jax.lax.Precision.HIGHEST) * scale
    full_mask = jnp.logical_and(mask, key_ok[:, None, :])[:, None, None]
    logits = jnp.where(full_mask, logits, -jnp.inf)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    peak = jnp.where(jnp.isneginf(peak), 0.0, peak)
    weights = jnp.where(full_mask, jnp.exp(logits - peak), 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    probs = weights / jnp.where(denom > 0, denom, 1.0)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, values, precision=jax.lax.Precision.HIGHEST)
    out = jnp.where(row_ok[:, :, None, None, None], out, 0.0)
    return out.reshape(b, t, n, values.shape[-1])
