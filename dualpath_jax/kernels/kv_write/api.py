"""Public KV scatter: input validation and the reference / Pallas dispatcher."""

from __future__ import annotations

import jax
import numpy as np

from dualpath_jax.kernels import _flash
from dualpath_jax.kernels.kv_write.kernel import kv_write_pallas
from dualpath_jax.kernels.kv_write.reference import kv_write_reference

__all__ = ["kv_write"]


def kv_write(blocks, new, block_table, cached_len, new_len, *, implementation: str = "auto",
             check_values: bool = True, num_warps: int | None = None,
             interpret: bool | None = None) -> jax.Array:
    """Scatter new tokens' KV into a block pool (exact copy; returns the updated pool).

    Token ``t < new_len[b]`` of sequence ``b`` sits at position ``p = cached_len[b] + t`` and is
    written to block ``block_table[b, p // Z]``, slot ``p % Z``; every other slot keeps its value.
    Works for any per-token layout: GQA ``[Pt, Z, K, H]`` key or value pools, MLA ``[Pt, Z, C]``
    latent or ``[Pt, Z, R]`` rope pools.

    Args:
      blocks: ``[Pt, Z, ...]`` block pool.
      new: ``[B, T, ...]`` new rows (same trailing dims and dtype as ``blocks``).
      block_table: ``i32[B, P]``; cached_len: ``i32[B]``; new_len: ``i32[B]`` in ``[0, T]`` with
        ``cached_len + new_len <= P * Z``.
      implementation: ``"auto"`` | ``"reference"`` | ``"pallas"`` (auto: Pallas on GPU only).
      check_values: host checks of lengths, block ids, and that no physical block is written by
        two sequences (now when concrete, by a runtime callback when traced). Off, writes to
        invalid ids are dropped.
      num_warps, interpret: Pallas settings.

    Returns:
      The updated ``[Pt, Z, ...]`` pool.

    Raises:
      ValueError: naming the argument, for wrong ranks, shapes or dtypes, lengths out of range,
        a written block id outside ``[0, Pt)``, a block written by two sequences or twice by one,
        or (Pallas) a block size Z that is not a power of two.
    """
    impl = _flash.resolve_implementation(implementation)
    if not hasattr(blocks, "shape") or blocks.ndim < 2:
        raise ValueError(f"blocks: expected an array [Pt, Z, ...], got {getattr(blocks, 'shape', blocks)}")
    num_blocks, z = blocks.shape[:2]
    if not hasattr(new, "shape") or new.ndim != blocks.ndim:
        raise ValueError(f"new: expected [B, T, ...] with the pool's trailing dims {tuple(blocks.shape[2:])}, "
                         f"got {getattr(new, 'shape', new)}")
    _flash.check_shape("new", new, "[B, T, ...]", (None, None, *blocks.shape[2:]))
    if new.dtype != blocks.dtype:
        raise ValueError(f"new: dtype {new.dtype} must equal the pool's {blocks.dtype} (exact copy)")
    b, t = new.shape[:2]
    if num_blocks < 1 or z < 1:
        raise ValueError(f"blocks: the pool needs at least one block of at least one token (got {blocks.shape})")
    if impl == "pallas" and z & (z - 1):  # a Triton block dimension is a power of two
        raise ValueError(f"blocks: block size Z={z} must be a power of two for the Pallas kernel (the reference "
                         "accepts any Z)")
    _flash.check_index("block_table", block_table, "[B, P]", (b, None))
    if block_table.shape[1] < 1:
        raise ValueError("block_table: needs at least one column (P >= 1)")
    _flash.check_index("cached_len", cached_len, "[B]", (b,))
    _flash.check_index("new_len", new_len, "[B]", (b,))

    def check(bt, cached, count):
        capacity = bt.shape[1] * z
        if (cached < 0).any():
            raise ValueError(f"cached_len: entries must be >= 0 (got {cached.tolist()})")
        if (count < 0).any() or (count > t).any():
            raise ValueError(f"new_len: entries must be in [0, T={t}] (got {count.tolist()})")
        if (cached + count > capacity).any():
            raise ValueError(f"new_len: cached_len + new_len must be <= P*Z={capacity} "
                             f"(got {(cached + count).tolist()})")
        first = np.where(count > 0, cached // z, 0)
        last = np.where(count > 0, -(-(cached + count) // z), 0)
        cols = np.arange(bt.shape[1])[None, :]
        written = (cols >= first[:, None]) & (cols < last[:, None])
        bad = written & ((bt < 0) | (bt >= num_blocks))
        if bad.any():
            i, j = (int(x) for x in np.argwhere(bad)[0])
            raise ValueError(f"block_table: entry [{i}, {j}] = {int(bt[i, j])} is outside [0, {num_blocks}) "
                             f"(row {i} writes its entries {int(first[i])}..{int(last[i]) - 1})")
        ids, owners = bt[written], np.nonzero(written)[0]
        order = np.argsort(ids, kind="stable")
        ids, owners = ids[order], owners[order]
        clash = np.nonzero(ids[1:] == ids[:-1])[0]
        if clash.size:
            i = int(clash[0])
            if owners[i] == owners[i + 1]:
                raise ValueError(f"block_table: block {int(ids[i])} appears twice among the entries row "
                                 f"{int(owners[i])} writes (its tokens would overwrite each other)")
            raise ValueError(f"block_table: block {int(ids[i])} is written by sequences {int(owners[i])} and "
                             f"{int(owners[i + 1])} (a block being filled must belong to one sequence)")

    _flash.host_check(check, block_table, cached_len, new_len, enabled=check_values)
    if impl == "reference":
        return _reference(blocks, new, block_table, cached_len, new_len)
    return _pallas(blocks, new, block_table, cached_len, new_len, num_warps=num_warps, interpret=interpret)


_reference = jax.jit(kv_write_reference)
_pallas = jax.jit(kv_write_pallas, static_argnames=("num_warps", "interpret"))
