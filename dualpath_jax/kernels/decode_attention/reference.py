"""Plain-jnp reference of decode attention over a block KV cache (f32 softmax and accumulation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dualpath_jax.kernels._reference import gather_blocks, masked_attention

__all__ = ["decode_reference", "decode_reference_mla"]


def decode_reference(q, k_blocks, v_blocks, block_table, kv_len, *, scale: float) -> jax.Array:
    """One query per sequence over its first ``kv_len[b]`` cached tokens.

    Shapes as :func:`dualpath_jax.kernels.decode_attention.decode_attention`. Returns
    ``[B, N, Hv]`` in q's dtype; zeros where ``kv_len[b] == 0``; NaN rows for a used block id
    outside ``[0, Pt)``.
    """
    b = q.shape[0]
    keys = gather_blocks(k_blocks, block_table)
    values = gather_blocks(v_blocks, block_table)
    key_ok = jnp.arange(keys.shape[1])[None, :] < kv_len[:, None]
    out = masked_attention(q[:, None], keys, values, key_ok, jnp.ones((b, 1, keys.shape[1]), bool),
                           jnp.ones((b, 1), bool), scale=scale)
    return out[:, 0].astype(q.dtype)


def decode_reference_mla(q_latent, q_rope, latent_blocks, rope_blocks, block_table, kv_len, *,
                         scale: float) -> jax.Array:
    """Absorbed MLA decode: key ``[latent | rope]``, value ``latent``; returns ``[B, N, C]``."""
    q = jnp.concatenate([q_latent, q_rope], axis=-1)
    k_blocks = jnp.concatenate([latent_blocks, rope_blocks], axis=-1)[:, :, None]
    return decode_reference(q, k_blocks, latent_blocks[:, :, None], block_table, kv_len, scale=scale)
