"""Pallas KV scatter: copy the new tokens' KV rows into their blocks, in place.

Grid ``(touched blocks, B)``: program ``(j, b)`` owns logical block
``cached_len[b] // Z + j`` of sequence ``b`` and, if new tokens fall in it, rewrites that
physical block as ``where(slot holds a new token, new row, old row)``. The pool is aliased to the
output (``input_output_aliases``), so on GPU only touched blocks move. The new rows are padded
by Z in front so the block's window ``[u0, u0 + Z)`` of new-token indices (``u0`` may be as low
as ``1 - Z``) is always an in-bounds slice. The feature dims are flattened and split into
power-of-two column parts of at most 128 (Triton tensors need power-of-two shapes). Plain copies and selects:
the result is exact.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from dualpath_jax.kernels import _flash

__all__ = ["kv_write_pallas"]

_MAX_PART = 128
"""Widest column part copied at once: a ``[Z, 128]`` tile stays in registers on GPU."""


def _kv_write_kernel(cached_ref, new_len_ref, bt_ref, new_ref, blocks_ref, out_ref, *, parts,
                     block_tokens: int, num_blocks: int, table_blocks: int):
    j = pl.program_id(0)
    b = pl.program_id(1)
    z = block_tokens
    start = cached_ref[b]
    count = new_len_ref[b]
    logical = start // z + j
    u0 = logical * z - start
    in_range = jnp.logical_and(jnp.logical_and(logical * z < start + count, logical < table_blocks), logical >= 0)
    bid = bt_ref[jnp.clip(logical, 0, table_blocks - 1)]
    ok = jnp.logical_and(jnp.logical_and(count > 0, in_range), jnp.logical_and(bid >= 0, bid < num_blocks))

    @pl.when(ok)
    def _write():
        u = u0 + lax.broadcasted_iota(jnp.int32, (z,), 0)
        valid = jnp.logical_and(u >= 0, u < count)[:, None]
        for off, size in parts:
            rows = new_ref[pl.ds(u0 + z, z), pl.ds(off, size)]
            old = blocks_ref[bid, :, pl.ds(off, size)]
            out_ref[bid, :, pl.ds(off, size)] = jnp.where(valid, rows, old)


def kv_write_pallas(blocks, new, block_table, cached_len, new_len, *, num_warps: int | None = None,
                    interpret: bool | None = None) -> jax.Array:
    """Run the Pallas scatter (inputs already validated by the public API).

    Args:
      blocks: ``[Pt, Z, ...]`` pool; new: ``[B, T, ...]`` rows (same trailing dims and dtype).
      block_table: ``i32[B, P]``; cached_len, new_len: ``i32[B]``.
      num_warps: Triton setting. interpret: Pallas interpret mode (default: off only on GPU).

    Returns:
      The updated pool (same shape and dtype; aliased to ``blocks`` where XLA can donate it).
    """
    num_blocks, z = blocks.shape[:2]
    bsz, t = new.shape[:2]
    width = math.prod(blocks.shape[2:])
    if 0 in (t, bsz, width, num_blocks, z, block_table.shape[1]):  # nothing to write (the reference's result)
        return blocks
    flat_blocks = blocks.reshape(num_blocks, z, width)
    touched = -(-(t + z - 1) // z)
    padded = (touched + 1) * z
    flat_new = _flash.pad_axis(new.reshape(bsz, t, width), 1, padded, front=z)
    p = block_table.shape[1]
    kernel = functools.partial(_kv_write_kernel, parts=_flash.pow2_parts(width, _MAX_PART), block_tokens=z,
                               num_blocks=num_blocks, table_blocks=p)
    from jax.experimental.pallas import triton as pl_triton  # noqa: PLC0415

    out = pl.pallas_call(
        kernel,
        grid=(touched, bsz),
        in_specs=[pl.BlockSpec((bsz,), lambda j, b: (0,)), pl.BlockSpec((bsz,), lambda j, b: (0,)),
                  pl.BlockSpec((None, p), lambda j, b: (b, 0)),
                  pl.BlockSpec((None, padded, width), lambda j, b: (b, 0, 0)),
                  pl.BlockSpec((num_blocks, z, width), lambda j, b: (0, 0, 0))],
        out_specs=pl.BlockSpec((num_blocks, z, width), lambda j, b: (0, 0, 0)),
        out_shape=jax.ShapeDtypeStruct(flat_blocks.shape, flat_blocks.dtype),
        input_output_aliases={4: 0},
        interpret=_flash.resolve_interpret(interpret),
        compiler_params=pl_triton.CompilerParams(num_warps=num_warps or 4, num_stages=1),
        name="kv_write",
    )(cached_len, new_len, block_table, flat_new, flat_blocks)
    return out.reshape(blocks.shape)
