"""Attention backends: where a decoder layer's attention finds its cached KV.

The layer code (:mod:`dualpath_jax.model.layers`) owns everything but the attention itself:
norms, projections, RoPE and MLA's absorption of ``W_UK`` / ``W_UV``. It hands the attention to a
backend, so one implementation of the layer serves every runtime:

* :class:`DenseAttention`: one sequence over a contiguous ``LayerKV`` of its prefix (or none),
  through :func:`dualpath_jax.kernels.attention`; the plain and layer-by-layer forwards.
* :class:`PagedPrefillAttention`: one sequence's T new tokens over its cached KV held as blocks
  ``[Pt, Z, ...]`` reached through a block table, plus themselves, through
  :func:`~dualpath_jax.kernels.prefill_attention` / ``prefill_attention_mla``; the PE's prefill.
* :class:`PagedDecodeAttention`: B rows, each one new token of a different sequence: each row's
  KV is written into a block pool (:func:`~dualpath_jax.kernels.kv_write`), then attends over the
  sequence's first ``position + 1`` tokens (:func:`~dualpath_jax.kernels.decode_attention` /
  ``decode_attention_mla``); the DE's decode step.

Every backend has one method per attention family, each returning ``(out, aux)``: ``aux`` is
what the backend changed (the updated pools of :class:`PagedDecodeAttention`, else None). The
``implementation`` of each is ``"auto" | "reference" | "pallas"`` (the kernels' dispatchers:
plain jnp with f32 softmax, or the Pallas kernel, interpret mode off GPU). Shapes use the
glossary of :mod:`dualpath_jax.shapes`; a ``LayerKV`` is GQA ``(k [S, K, H], v [S, K, H])`` or
MLA ``(latent [S, C], k_rope [S, R])``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from dualpath_jax import kernels

__all__ = ["AttentionBackend", "DenseAttention", "PagedPrefillAttention", "PagedDecodeAttention"]


class AttentionBackend(Protocol):
    """What a decoder layer needs from its attention (see the module docstring)."""

    def gqa(self, q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> tuple[jax.Array, Any]:
        """GQA: ``q [T, N, H]`` and the new tokens' post-RoPE ``k, v [T, K, H]`` -> ``([T, N, H], aux)``."""

    def mla(self, q_latent: jax.Array, q_rope: jax.Array, latent: jax.Array, k_rope: jax.Array, *,
            scale: float) -> tuple[jax.Array, Any]:
        """Absorbed MLA: ``q_latent [T, N, C]``, ``q_rope [T, N, R]``, the new tokens' ``latent [T, C]``
        and ``k_rope [T, R]`` -> latent-space output ``([T, N, C], aux)`` (before ``W_UV``)."""


def _concat(cache, new: jax.Array) -> jax.Array:
    return new if cache is None else jnp.concatenate([cache.astype(new.dtype), new], axis=0)


@dataclasses.dataclass(frozen=True)
class DenseAttention:
    """Causal attention of one sequence over ``[cache | new]`` held contiguously.

    Attributes:
      cache: the prefix's LayerKV (S_c tokens), or None for no prefix.
      implementation: ``"auto" | "reference" | "pallas"`` of :func:`dualpath_jax.kernels.attention`.
    """

    cache: tuple | None = None
    implementation: str = "auto"

    def _prefix(self) -> tuple:
        return (None, None) if self.cache is None else self.cache

    def gqa(self, q, k, v, *, scale):
        ck, cv = self._prefix()
        out = kernels.attention(q, _concat(ck, k), _concat(cv, v), scale=scale, implementation=self.implementation)
        return out, None

    def mla(self, q_latent, q_rope, latent, k_rope, *, scale):
        c_cache, r_cache = self._prefix()
        lat_all, rope_all = _concat(c_cache, latent), _concat(r_cache, k_rope)
        q = jnp.concatenate([q_latent, q_rope.astype(q_latent.dtype)], axis=-1)  # [T, N, C+R]
        k = jnp.concatenate([lat_all, rope_all.astype(lat_all.dtype)], axis=-1)[:, None, :]  # [S, 1, C+R]
        out = kernels.attention(q, k, lat_all[:, None, :], scale=scale, implementation=self.implementation)
        return out, None


@dataclasses.dataclass(frozen=True)
class PagedPrefillAttention:
    """One sequence's T new tokens over ``cached_len`` cached tokens held in blocks, plus themselves.

    Token ``s < cached_len`` of the prefix sits in block ``block_table[s // Z]``, slot ``s % Z``;
    new query ``t`` (position ``cached_len + t``) sees the whole prefix and new tokens ``0..t``;
    query rows ``t >= new_len`` are padding (zero output, never seen by real rows).

    Attributes:
      blocks: the prefix as a block pair: GQA ``(k [Pt, Z, K, H], v [Pt, Z, K, H])``, MLA
        ``(latent [Pt, Z, C], k_rope [Pt, Z, R])``.
      block_table: ``i32[P]`` the sequence's blocks.
      cached_len, new_len: ``i32[]`` scalars.
      implementation: ``"auto" | "reference" | "pallas"``.
      check_values: host checks of lengths and block ids (a runtime callback under ``jit``).
    """

    blocks: tuple
    block_table: jax.Array
    cached_len: jax.Array
    new_len: jax.Array
    implementation: str = "auto"
    check_values: bool = False

    def _lengths(self) -> tuple:
        return (self.block_table[None], jnp.reshape(self.cached_len, (1,)), jnp.reshape(self.new_len, (1,)))

    def gqa(self, q, k, v, *, scale):
        kb, vb = (x.astype(q.dtype) for x in self.blocks)
        out = kernels.prefill_attention(q[None], k[None], v[None], kb, vb, *self._lengths(), scale=scale,
                                        implementation=self.implementation, check_values=self.check_values)
        return out[0], None

    def mla(self, q_latent, q_rope, latent, k_rope, *, scale):
        dtype = q_latent.dtype
        lb, rb = (x.astype(dtype) for x in self.blocks)
        out = kernels.prefill_attention_mla(q_latent[None], q_rope[None].astype(dtype), latent[None].astype(dtype),
                                            k_rope[None].astype(dtype), lb, rb, *self._lengths(), scale=scale,
                                            implementation=self.implementation, check_values=self.check_values)
        return out[0], None


@dataclasses.dataclass(frozen=True)
class PagedDecodeAttention:
    """B rows, each the next token of its own sequence, over a block pool (the rows are the T axis).

    Row ``b`` (if ``active[b]``) writes its new KV at ``positions[b]`` (block
    ``block_table[b, positions[b] // Z]``), then attends over its first ``positions[b] + 1``
    tokens. Inactive rows write and read nothing (zero output).

    Attributes:
      pools: the layer's block pools: GQA ``(k [Pt, Z, K, H], v [Pt, Z, K, H])``, MLA
        ``(latent [Pt, Z, C], k_rope [Pt, Z, R])``.
      block_table: ``i32[B, P]``; positions: ``i32[B]``; active: ``bool[B]``.
      implementation, check_values: as :class:`PagedPrefillAttention`.

    ``aux`` of both methods is the updated ``pools`` pair.
    """

    pools: tuple
    block_table: jax.Array
    positions: jax.Array
    active: jax.Array
    implementation: str = "auto"
    check_values: bool = False

    def _write(self, new: tuple) -> tuple:
        written = self.active.astype(jnp.int32)
        return tuple(kernels.kv_write(pool, x[:, None].astype(pool.dtype), self.block_table, self.positions, written,
                                      implementation=self.implementation, check_values=self.check_values)
                     for pool, x in zip(self.pools, new))

    def _kv_len(self) -> jax.Array:
        return jnp.where(self.active, self.positions + 1, 0).astype(jnp.int32)

    def gqa(self, q, k, v, *, scale):
        kp, vp = self._write((k, v))
        out = kernels.decode_attention(q, kp.astype(q.dtype), vp.astype(q.dtype), self.block_table, self._kv_len(),
                                       scale=scale, implementation=self.implementation,
                                       check_values=self.check_values)
        return out, (kp, vp)

    def mla(self, q_latent, q_rope, latent, k_rope, *, scale):
        lp, rp = self._write((latent, k_rope))
        dtype = q_latent.dtype
        out = kernels.decode_attention_mla(q_latent, q_rope.astype(dtype), lp.astype(dtype), rp.astype(dtype),
                                           self.block_table, self._kv_len(), scale=scale,
                                           implementation=self.implementation, check_values=self.check_values)
        return out, (lp, rp)
