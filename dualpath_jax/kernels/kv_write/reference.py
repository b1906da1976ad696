"""Plain-jnp reference of the KV scatter: new tokens' KV into their blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["kv_write_reference"]


def kv_write_reference(blocks, new, block_table, cached_len, new_len) -> jax.Array:
    """Write token ``t < new_len[b]`` of ``new[b]`` to position ``p = cached_len[b] + t``: block
    ``block_table[b, p // Z]``, slot ``p % Z``. Shapes as
    :func:`dualpath_jax.kernels.kv_write.kv_write`. Writes whose block id or logical block is out
    of range are dropped (the public API rejects them first)."""
    num_blocks, z = blocks.shape[:2]
    b, t = new.shape[:2]
    p = block_table.shape[1]
    pos = cached_len[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    logical = pos // z
    bid = jnp.take_along_axis(block_table, jnp.clip(logical, 0, p - 1), axis=1)
    valid = ((jnp.arange(t)[None, :] < new_len[:, None]) & (logical >= 0) & (logical < p) & (bid >= 0)
             & (bid < num_blocks))
    bid = jnp.where(valid, bid, num_blocks)
    rows = new.reshape(b * t, *new.shape[2:])
    return blocks.at[bid.reshape(-1), (pos % z).reshape(-1)].set(rows, mode="drop")
