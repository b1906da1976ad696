"""Pallas prefill attention over a block KV cache plus the new tokens' own KV.

Grid ``(row tiles, K, B * splits)``: program ``(i, h, b * splits + s)`` owns rows
``[i*block_m, (i+1)*block_m)`` of sequence ``b``'s KV head ``h``, a row being (new token ``t``,
head ``g`` of the group), row index ``t * G + g``. It streams

1. its split ``s`` of the cached blocks ``block_table[b, :ceil(cached/Z)]`` (full blocks
   unmasked, the partial last block masked at ``cached``), then
2. (last split only) the new tokens' keys/values in tiles of ``Z`` tokens, tiles wholly below
   the diagonal unmasked, the rest with the causal mask ``u <= t`` and ``u < new``,

folding each tile into f32 online-softmax state (see :mod:`dualpath_jax.kernels._flash`).
Tiles past the last row's token are skipped, as are row tiles with no valid row. With one split
the program normalises and writes its rows; with several (long cached prefix, few new tokens:
too few row tiles to fill the GPU) each writes its partial state and the wrapper merges them as
flash-decoding does. The grid's first axis (CUDA ``x``, launched fastest) is the row tile, so
programs reading the same KV head and blocks run together and share them through L2.

Only backend-agnostic Pallas is used (BlockSpec, ``pl.ds`` ref slicing, ``fori_loop``), so the
kernel lowers to Triton on GPU and runs with ``interpret=True`` elsewhere.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from dualpath_jax.kernels import _flash

__all__ = ["prefill_pallas", "default_block_m", "default_kv_splits"]


def default_block_m(rows: int, value_width: int, key_width: int) -> int:
    """Row-tile size: 128 rows for head dims <= 128, fewer for wide MLA tiles, never more than
    the (power-of-two rounded) row count and never under 16."""
    widest = max(value_width, key_width)
    bm = 128 if widest <= 128 else (64 if widest <= 256 else 32)
    return max(_flash.MIN_DOT_DIM, min(bm, _flash.next_pow2(rows)))


def _attend_new(carry, lo, hi, *, q_parts, key_parts, kn_refs, vn_ref, value_part, tile: int,
                new_len, row_tok, masked: bool, scale_log2: float, precision):
    """Fold new-token KV tiles ``[lo, hi)`` (``tile`` tokens each) into ``carry``."""

    def body(jt, carry):
        u0 = jt * tile
        loaded = {}

        def load(arr, off, size):
            key = (arr, off, size)
            if key not in loaded:
                loaded[key] = kn_refs[arr][pl.ds(u0, tile), pl.ds(off, size)]
            return loaded[key]

        s = _flash.tile_logits(q_parts, key_parts, load, precision) * scale_log2
        v = load(*value_part) if vn_ref is None else vn_ref[pl.ds(u0, tile), :]
        if masked:
            u = u0 + lax.broadcasted_iota(jnp.int32, (tile,), 0)
            key_ok = u < new_len
            ok = jnp.logical_and(u[None, :] <= row_tok[:, None], key_ok[None, :])
            s = jnp.where(ok, s, _flash.MASK_VALUE)
            v = jnp.where(key_ok[:, None], v, jnp.zeros_like(v))
        return _flash.softmax_update(carry, s, v, precision)

    return lax.fori_loop(lo, hi, body, carry)


def _prefill_kernel(cached_ref, new_ref, bt_ref, *refs, n_arrays: int, has_value: bool,
                    key_parts, value_part, group: int, block_m: int, block_tokens: int,
                    num_blocks: int, splits: int, per_split: int, scale_log2: float, precision):
    q_refs = refs[:n_arrays]
    kn_refs = refs[n_arrays:2 * n_arrays]
    pos = 2 * n_arrays
    vn_ref = refs[pos] if has_value else None
    pos += int(has_value)
    kc_refs = refs[pos:pos + n_arrays]
    pos += n_arrays
    vc_ref = refs[pos] if has_value else None
    out_refs = refs[pos + int(has_value):]

    i = pl.program_id(0)
    b = pl.program_id(2) // splits
    split = pl.program_id(2) % splits
    z = block_tokens
    cached = cached_ref[b]
    new = new_ref[b]
    row_tok = (i * block_m + lax.broadcasted_iota(jnp.int32, (block_m,), 0)) // group
    t_first = (i * block_m) // group
    t_last = jnp.minimum(((i + 1) * block_m - 1) // group, new - 1)
    has_rows = t_first < new

    q_parts = [q_refs[a][:, pl.ds(off, size)] for a, off, size in key_parts]
    carry = _flash.init_carry(block_m, out_refs[0].shape[-1])

    # Cached blocks of this split: [lo, hi) clipped to the sequence, full ones unmasked.
    cached_common = dict(q_parts=q_parts, key_parts=key_parts, kc_refs=kc_refs, vc_ref=vc_ref,
                         value_part=value_part, bt_ref=bt_ref, num_blocks=num_blocks,
                         block_tokens=z, seq_len=cached, scale_log2=scale_log2,
                         precision=precision)
    lo = split * per_split
    hi = jnp.where(has_rows, jnp.minimum(lo + per_split, pl.cdiv(cached, z)), 0)
    full_hi = jnp.minimum(jnp.maximum(cached // z, lo), hi)
    carry = _flash.attend_cached(carry, lo, full_hi, masked=False, **cached_common)
    carry = _flash.attend_cached(carry, full_hi, hi, masked=True, **cached_common)

    # The new tokens (causal), in the last split only.
    new_common = dict(q_parts=q_parts, key_parts=key_parts, kn_refs=kn_refs, vn_ref=vn_ref,
                      value_part=value_part, tile=z, new_len=new, row_tok=row_tok,
                      scale_log2=scale_log2, precision=precision)
    mine = jnp.logical_and(has_rows, split == splits - 1)
    full_new = jnp.where(mine, jnp.minimum(t_first + 1, new) // z, 0)
    all_new = pl.cdiv(jnp.where(mine, t_last + 1, 0), z)
    carry = _attend_new(carry, 0, full_new, masked=False, **new_common)
    carry = _attend_new(carry, full_new, all_new, masked=True, **new_common)

    if splits == 1:
        (o_ref,) = out_refs
        o_ref[...] = _flash.finalize(carry, row_tok < new, o_ref.dtype)
    else:
        acc_ref, m_ref, l_ref = out_refs
        m, l, acc = carry
        acc_ref[...] = acc
        m_ref[...] = m
        l_ref[...] = l


def default_kv_splits(programs: int, cached_blocks: int) -> int:
    """Split the cached blocks when the row tiles alone give under ~2 waves of programs on a
    132-SM H100/H200 (long context, few new tokens), keeping >= 8 blocks per split."""
    if programs >= _flash.TARGET_PROGRAMS:
        return 1
    return max(1, min(-(-_flash.TARGET_PROGRAMS // programs), cached_blocks // 8))


def _rows(x: jax.Array, kv_heads: int, rows_padded: int) -> jax.Array:
    """``[B, T, N, W] -> [B, K, rows_padded, W]`` with row ``t * G + g`` for head ``h * G + g``."""
    b, t, n, w = x.shape
    g = n // kv_heads
    x = x.reshape(b, t, kv_heads, g, w).transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, t * g, w)
    return _flash.pad_axis(x, 2, rows_padded)


def prefill_pallas(q_arrays, kn_arrays, v_new, kc_arrays, v_blocks, block_table, cached_len, new_len,
                   *, scale: float, block_m: int | None = None, kv_splits: int | None = None,
                   num_warps: int | None = None, num_stages: int | None = None,
                   interpret: bool | None = None) -> jax.Array:
    """Run the Pallas prefill kernel (inputs already validated by the public API).

    Args:
      q_arrays: tuple of ``[B, T, N, W_a]`` query pieces; the logit is the sum over pieces
        (GQA: one piece ``Hk``; MLA: ``(q_latent, q_rope)``).
      kn_arrays: matching tuple of the new tokens' key pieces ``[B, T, K, W_a]``.
      v_new: ``[B, T, K, Hv]`` new values, or None for "value = key piece 0" (MLA latent).
      kc_arrays: matching tuple of cached key pieces ``[Pt, Z, K, W_a]``.
      v_blocks: ``[Pt, Z, K, Hv]`` cached values, or None (with ``v_new``).
      block_table: ``i32[B, P]``; cached_len, new_len: ``i32[B]``.
      scale: softmax scale. block_m: rows per program (power of two >= 16).
      kv_splits: programs per (row tile, sequence) sharing its cached blocks, merged afterwards
        like flash-decoding (None: :func:`default_kv_splits`). num_warps / num_stages: Triton.
      interpret: Pallas interpret mode (default: on unless running on GPU).

    Returns:
      ``[B, T, N, Hv]`` in the queries' dtype; rows ``t >= new_len[b]`` are zero.
    """
    _flash.check_tile("block_m", block_m)
    n_arrays = len(q_arrays)
    bsz, t, n, _ = q_arrays[0].shape
    num_blocks, z, kv_heads, _ = kc_arrays[0].shape
    group = n // kv_heads
    has_value = v_new is not None
    value_width = v_new.shape[-1] if has_value else q_arrays[0].shape[-1]

    q_arrays, (kn_arrays, kc_arrays), widths, key_parts, value_padded = _flash.pad_head_dims(
        q_arrays, [kn_arrays, kc_arrays], value_width, has_value)
    value_part = (0, 0, value_padded)

    rows = t * group
    bm = block_m or default_block_m(rows, value_padded, max(widths))
    rows_padded = -(-max(rows, 1) // bm) * bm
    t_padded = -(-max(t, 1) // z) * z
    q_arrays = [_rows(a, kv_heads, rows_padded) for a in q_arrays]
    kn_arrays = [_flash.pad_axis(a, 1, t_padded) for a in kn_arrays]
    inputs = [*q_arrays, *kn_arrays]
    in_specs = [pl.BlockSpec((None, None, bm, a.shape[-1]), lambda i, h, b: (b, h, i, 0)) for a in q_arrays]
    in_specs += [pl.BlockSpec((None, t_padded, None, a.shape[-1]), lambda i, h, b: (b, 0, h, 0))
                 for a in kn_arrays]
    if has_value:
        inputs.append(_flash.pad_axis(_flash.pad_axis(v_new, -1, value_padded), 1, t_padded))
        in_specs.append(pl.BlockSpec((None, t_padded, None, value_padded), lambda i, h, b: (b, 0, h, 0)))
    inputs += kc_arrays
    in_specs += [pl.BlockSpec((num_blocks, z, None, a.shape[-1]), lambda i, h, b: (0, 0, h, 0))
                 for a in kc_arrays]
    if has_value:
        inputs.append(_flash.pad_axis(v_blocks, -1, value_padded))
        in_specs.append(pl.BlockSpec((num_blocks, z, None, value_padded), lambda i, h, b: (0, 0, h, 0)))

    p = block_table.shape[1]
    splits = kv_splits or default_kv_splits((rows_padded // bm) * kv_heads * bsz, p)
    per_split = -(-p // min(splits, p))
    splits = -(-p // per_split)
    index_specs = [pl.BlockSpec((bsz,), lambda i, h, bs: (0,)), pl.BlockSpec((bsz,), lambda i, h, bs: (0,)),
                   pl.BlockSpec((None, p), lambda i, h, bs: (bs // splits, 0))]
    in_specs = [_by_sequence(spec, splits) for spec in in_specs]
    kernel = functools.partial(
        _prefill_kernel, n_arrays=n_arrays, has_value=has_value, key_parts=key_parts,
        value_part=value_part, group=group, block_m=bm, block_tokens=z, num_blocks=num_blocks,
        splits=splits, per_split=per_split, scale_log2=float(scale) * _flash.LOG2E,
        precision=_flash.precision_for(q_arrays[0].dtype))
    rows_shape = (bsz, kv_heads, rows_padded)
    if splits == 1:
        out_shape = [jax.ShapeDtypeStruct((*rows_shape, value_padded), q_arrays[0].dtype)]
        out_specs = [pl.BlockSpec((None, None, bm, value_padded), lambda i, h, bs: (bs, h, i, 0))]
    else:
        out_shape = [jax.ShapeDtypeStruct((splits, *rows_shape, value_padded), jnp.float32),
                     jax.ShapeDtypeStruct((splits, *rows_shape), jnp.float32),
                     jax.ShapeDtypeStruct((splits, *rows_shape), jnp.float32)]
        out_specs = [pl.BlockSpec((None, None, None, bm, value_padded),
                                  lambda i, h, bs: (bs % splits, bs // splits, h, i, 0)),
                     pl.BlockSpec((None, None, None, bm), lambda i, h, bs: (bs % splits, bs // splits, h, i)),
                     pl.BlockSpec((None, None, None, bm), lambda i, h, bs: (bs % splits, bs // splits, h, i))]
    outs = pl.pallas_call(
        kernel,
        grid=(rows_padded // bm, kv_heads, bsz * splits),
        in_specs=index_specs + in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=_flash.resolve_interpret(interpret),
        compiler_params=_triton_params(bm, value_padded, num_warps, num_stages),
        name="prefill_attention",
    )(cached_len, new_len, block_table, *inputs)
    if splits == 1:
        out = outs[0]
    else:
        out = _flash.merge_splits(*outs)
        row_tok = jnp.arange(rows_padded) // group
        out = jnp.where((row_tok[None, :] < new_len[:, None])[:, None, :, None], out, 0.0)
        out = out.astype(q_arrays[0].dtype)
    out = out[:, :, :rows, :value_width].reshape(bsz, kv_heads, t, group, value_width)
    return out.transpose(0, 2, 1, 3, 4).reshape(bsz, t, n, value_width)


def _by_sequence(spec: pl.BlockSpec, splits: int) -> pl.BlockSpec:
    """Re-index a ``(i, h, b)`` BlockSpec for the grid's third axis ``b * splits + split``."""
    index_map = spec.index_map
    return pl.BlockSpec(spec.block_shape, lambda i, h, bs: index_map(i, h, bs // splits))


def _triton_params(bm: int, value_width: int, num_warps: int | None, num_stages: int | None):
    from jax.experimental.pallas import triton as pl_triton  # noqa: PLC0415

    if num_warps is None:
        num_warps = 8 if bm * value_width >= 128 * 128 else 4
    return pl_triton.CompilerParams(num_warps=num_warps, num_stages=2 if num_stages is None else num_stages)
