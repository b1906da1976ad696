"""Pallas decode attention: one query token per sequence over its block KV (flash-decoding).

Grid ``(splits, K * head_tiles, B)``. Program ``(s, j, b)`` takes KV head ``j // head_tiles``,
the ``block_h`` query heads of tile ``j % head_tiles`` of that head's group (the G heads sharing
a KV head are the rows of the matmul, padded to >= 16), and the logical blocks
``[s * per_split, (s + 1) * per_split)`` of sequence ``b`` clipped to ``ceil(kv_len / Z)``. It
writes its unnormalised f32 accumulator with the running max and sum; the wrapper merges the
splits (flash-decoding, Dao et al. 2023, "Flash-Decoding for long-context inference"), so a
single long sequence still spreads over many SMs.

Backend-agnostic Pallas only (runs in interpret mode off GPU, lowers to Triton on GPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from dualpath_jax.kernels import _flash

__all__ = ["decode_pallas", "default_num_splits"]


def default_num_splits(batch: int, programs_per_split: int, table_blocks: int) -> int:
    """Enough KV splits for ~:data:`_flash.TARGET_PROGRAMS` programs, at most one per table column."""
    want = -(-_flash.TARGET_PROGRAMS // max(1, batch * programs_per_split))
    return max(1, min(table_blocks, want))


def _decode_kernel(len_ref, bt_ref, *refs, n_arrays: int, has_value: bool, key_parts, value_part,
                   per_split: int, block_tokens: int, num_blocks: int, scale_log2: float, precision):
    q_refs = refs[:n_arrays]
    kc_refs = refs[n_arrays:2 * n_arrays]
    vc_ref = refs[2 * n_arrays] if has_value else None
    acc_ref, m_ref, l_ref = refs[-3:]

    s = pl.program_id(0)
    b = pl.program_id(2)
    z = block_tokens
    kv_len = len_ref[b]
    lo = s * per_split
    hi = jnp.minimum(lo + per_split, pl.cdiv(kv_len, z))
    full_hi = jnp.minimum(jnp.maximum(kv_len // z, lo), hi)

    q_parts = [q_refs[a][:, pl.ds(off, size)] for a, off, size in key_parts]
    carry = _flash.init_carry(acc_ref.shape[0], acc_ref.shape[1])
    common = dict(q_parts=q_parts, key_parts=key_parts, kc_refs=kc_refs, vc_ref=vc_ref,
                  value_part=value_part, bt_ref=bt_ref, num_blocks=num_blocks, block_tokens=z,
                  seq_len=kv_len, scale_log2=scale_log2, precision=precision)
    carry = _flash.attend_cached(carry, lo, full_hi, masked=False, **common)
    carry = _flash.attend_cached(carry, full_hi, hi, masked=True, **common)
    m, l, acc = carry
    acc_ref[...] = acc
    m_ref[...] = m
    l_ref[...] = l


def decode_pallas(q_arrays, kc_arrays, v_blocks, block_table, kv_len, *, scale: float,
                  num_splits: int | None = None, block_h: int | None = None,
                  num_warps: int | None = None, num_stages: int | None = None,
                  interpret: bool | None = None) -> jax.Array:
    """Run the Pallas decode kernel (inputs already validated by the public API).

    Args:
      q_arrays: tuple of ``[B, N, W_a]`` query pieces (GQA: ``(q,)``; MLA: ``(q_latent, q_rope)``).
      kc_arrays: matching tuple of key block pools ``[Pt, Z, K, W_a]``.
      v_blocks: ``[Pt, Z, K, Hv]`` or None for "value = key piece 0" (MLA latent).
      block_table: ``i32[B, P]``; kv_len: ``i32[B]`` tokens to attend to (incl. the current one).
      scale: softmax scale. num_splits: KV splits per sequence (None: fill ~2 waves of SMs).
      block_h: query heads per program (power of two >= 16; None: up to 64, fewer for wide heads).
      num_warps, num_stages: Triton settings. interpret: Pallas interpret mode.

    Returns:
      ``[B, N, Hv]`` in the queries' dtype; zeros where ``kv_len[b] == 0``.
    """
    _flash.check_tile("block_h", block_h)
    n_arrays = len(q_arrays)
    bsz, n, _ = q_arrays[0].shape
    num_blocks, z, kv_heads, _ = kc_arrays[0].shape
    group = n // kv_heads
    has_value = v_blocks is not None
    value_width = v_blocks.shape[-1] if has_value else q_arrays[0].shape[-1]

    q_arrays, (kc_arrays,), widths, key_parts, value_padded = _flash.pad_head_dims(
        q_arrays, [kc_arrays], value_width, has_value)

    group_padded = max(_flash.MIN_DOT_DIM, _flash.next_pow2(group))
    widest = max(value_padded, max(widths))
    bh = block_h or min(group_padded, 64 if widest <= 256 else 32)
    bh = min(bh, group_padded)
    head_tiles = group_padded // bh
    q_arrays = [_flash.pad_axis(a.reshape(bsz, kv_heads, group, a.shape[-1]), 2, group_padded) for a in q_arrays]

    p = block_table.shape[1]
    splits = num_splits or default_num_splits(bsz, kv_heads * head_tiles, p)
    per_split = -(-p // max(1, min(splits, p)))
    splits = -(-p // per_split)

    def head(j):
        return j // head_tiles

    def tile(j):
        return j % head_tiles

    in_specs = [pl.BlockSpec((bsz,), lambda s, j, b: (0,)), pl.BlockSpec((None, p), lambda s, j, b: (b, 0))]
    in_specs += [pl.BlockSpec((None, None, bh, a.shape[-1]), lambda s, j, b: (b, head(j), tile(j), 0))
                 for a in q_arrays]
    in_specs += [pl.BlockSpec((num_blocks, z, None, a.shape[-1]), lambda s, j, b: (0, 0, head(j), 0))
                 for a in kc_arrays]
    inputs = [*q_arrays, *kc_arrays]
    if has_value:
        inputs.append(_flash.pad_axis(v_blocks, -1, value_padded))
        in_specs.append(pl.BlockSpec((num_blocks, z, None, value_padded), lambda s, j, b: (0, 0, head(j), 0)))
    out_shape = [jax.ShapeDtypeStruct((splits, bsz, kv_heads, group_padded, value_padded), jnp.float32),
                 jax.ShapeDtypeStruct((splits, bsz, kv_heads, group_padded), jnp.float32),
                 jax.ShapeDtypeStruct((splits, bsz, kv_heads, group_padded), jnp.float32)]
    out_specs = [pl.BlockSpec((None, None, None, bh, value_padded), lambda s, j, b: (s, b, head(j), tile(j), 0)),
                 pl.BlockSpec((None, None, None, bh), lambda s, j, b: (s, b, head(j), tile(j))),
                 pl.BlockSpec((None, None, None, bh), lambda s, j, b: (s, b, head(j), tile(j)))]
    kernel = functools.partial(
        _decode_kernel, n_arrays=n_arrays, has_value=has_value, key_parts=key_parts,
        value_part=(0, 0, value_padded), per_split=per_split, block_tokens=z, num_blocks=num_blocks,
        scale_log2=float(scale) * _flash.LOG2E, precision=_flash.precision_for(q_arrays[0].dtype))
    from jax.experimental.pallas import triton as pl_triton  # noqa: PLC0415

    acc, m, l = pl.pallas_call(
        kernel,
        grid=(splits, kv_heads * head_tiles, bsz),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=_flash.resolve_interpret(interpret),
        compiler_params=pl_triton.CompilerParams(num_warps=num_warps or 4,
                                                 num_stages=2 if num_stages is None else num_stages),
        name="decode_attention",
    )(kv_len, block_table, *inputs)
    out = _flash.merge_splits(acc, m, l)[:, :, :group, :value_width]
    return out.reshape(bsz, n, value_width).astype(q_arrays[0].dtype)
