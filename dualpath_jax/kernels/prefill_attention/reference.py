"""Plain-jnp reference of prefill attention over a block KV cache (f32 softmax and accumulation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dualpath_jax.kernels._reference import gather_blocks, masked_attention

__all__ = ["prefill_reference", "prefill_reference_mla"]


def prefill_reference(q, k_new, v_new, k_blocks, v_blocks, block_table, cached_len, new_len, *,
                      scale: float) -> jax.Array:
    """Gather the cached blocks, append the new KV, run masked dense attention in f32.

    Shapes as :func:`dualpath_jax.kernels.prefill_attention.prefill_attention`. Key ``s`` of the
    gathered cache is visible iff ``s < cached_len[b]``; new key ``u`` is visible to new query
    ``t`` iff ``u <= t < new_len[b]``. Returns ``[B, T, N, Hv]`` in q's dtype, zero rows for
    ``t >= new_len[b]``; a used block id outside ``[0, Pt)`` gives NaN rows.
    """
    t = q.shape[1]
    cache_tokens = block_table.shape[1] * k_blocks.shape[1]
    keys = jnp.concatenate([gather_blocks(k_blocks, block_table), k_new.astype(jnp.float32)], axis=1)
    values = jnp.concatenate([gather_blocks(v_blocks, block_table), v_new.astype(jnp.float32)], axis=1)
    cache_ok = jnp.arange(cache_tokens)[None, :] < cached_len[:, None]
    row_ok = jnp.arange(t)[None, :] < new_len[:, None]
    key_ok = jnp.concatenate([cache_ok, row_ok], axis=1)
    causal = jnp.concatenate([jnp.ones((t, cache_tokens), bool), jnp.tril(jnp.ones((t, t), bool))], axis=1)
    out = masked_attention(q, keys, values, key_ok, jnp.broadcast_to(causal, (q.shape[0], *causal.shape)),
                           row_ok, scale=scale)
    return out.astype(q.dtype)


def prefill_reference_mla(q_latent, q_rope, latent_new, rope_new, latent_blocks, rope_blocks,
                          block_table, cached_len, new_len, *, scale: float) -> jax.Array:
    """MLA in absorbed form: key ``[latent | rope]``, value ``latent``, one KV head shared by all
    N query heads. Shapes as :func:`~dualpath_jax.kernels.prefill_attention.prefill_attention_mla`;
    returns ``[B, T, N, C]`` (latent-space output, before the value up-projection)."""
    q = jnp.concatenate([q_latent, q_rope], axis=-1)
    k_new = jnp.concatenate([latent_new, rope_new], axis=-1)[:, :, None]
    k_blocks = jnp.concatenate([latent_blocks, rope_blocks], axis=-1)[:, :, None]
    return prefill_reference(q, k_new, latent_new[:, :, None], k_blocks, latent_blocks[:, :, None],
                             block_table, cached_len, new_len, scale=scale)
