"""Shared pieces of the block-KV attention kernels: tiling, online softmax, input checks.

Design (used by :mod:`~dualpath_jax.kernels.prefill_attention` and
:mod:`~dualpath_jax.kernels.decode_attention`):

* **Rows.** A program owns a tile of ``block_m`` *rows*; a row is one (query token, query head)
  pair of a single KV head's group (GQA ``repeat_kv``: query head ``n`` reads KV head
  ``n // G``, ``G = N // K``). Folding the G heads of a group into the matmul's M dimension
  lets one KV tile load serve all of them (MQA and MLA have G = N).
* **Online softmax** (FlashAttention-2, Dao 2023, arXiv 2307.08691, Alg. 1) over KV tiles with
  f32 running max ``m`` (base-2 logits), sum ``l`` and accumulator; the softmax scale times
  ``log2(e)`` is applied to the f32 logits, never folded into low-precision queries.
* **Masking.** Masked logits are set to the finite :data:`MASK_VALUE` and masked value rows to
  0, so NaN/garbage in unused cache slots never reaches an output (``0 * NaN`` would). Every
  valid row sees a valid key in the first tile a program processes for it (the first token of a
  cached block in use, or new token 0), so ``exp2(MASK_VALUE - m)`` underflows to exactly 0
  afterwards; a program with no tile at all leaves ``l = 0`` and contributes nothing.
* **KV splits** (flash-decoding, Dao et al. 2023): programs may take disjoint ranges of a
  sequence's blocks and write ``(acc, m, l)``; :func:`merge_splits` combines them.
* **Head dims.** Triton needs power-of-two tensor dims and ``tl.dot`` operands of at least 16:
  a key width is split into power-of-two column *parts* (576 = 512 + 64 for MLA's
  ``[latent | rope]``; logits are the sum of per-part dots) and widths that are not multiples
  of 16 are zero-padded by the wrappers (an exact change: zeros add nothing to a dot). Real
  models never pad (128, 512, 64); the tiny test models do.
* **Bad block ids.** A used block id outside ``[0, num_blocks)`` is clamped for the memory
  access only and the tile's logits are multiplied by NaN, so the affected rows come out NaN
  instead of silently reading another block. Eager calls are checked on the host first
  (:func:`host_check`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

__all__ = [
    "IMPLEMENTATIONS",
    "MASK_VALUE",
    "MIN_DOT_DIM",
    "resolve_implementation",
    "resolve_interpret",
    "pow2_parts",
    "dot_width",
    "pad_axis",
    "next_pow2",
    "host_values",
    "check_float",
    "check_index",
    "check_shape",
    "check_block_tokens",
    "check_tile",
    "check_scale",
    "block_id_problem",
    "check_pool_and_table",
    "host_check",
    "merge_splits",
]

IMPLEMENTATIONS = ("auto", "reference", "pallas")
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
"""Finite logit for masked positions (as in jax.experimental.pallas.ops.gpu.attention)."""
LOG2E = math.log2(math.e)
MIN_DOT_DIM = 16
"""Smallest operand dim Triton's ``tl.dot`` accepts; row tiles, KV tiles and key parts use >= 16."""
TARGET_PROGRAMS = 264
"""About two waves of programs on a 132-SM H100/H200; KV splits are chosen to reach it."""


# ---- dispatch ------------------------------------------------------------------------------

def resolve_implementation(implementation: str) -> str:
    """Map ``"auto"`` to ``"pallas"`` on GPU and ``"reference"`` elsewhere.

    Raises:
      ValueError: naming ``implementation`` when it is not one of :data:`IMPLEMENTATIONS`.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation: must be one of {list(IMPLEMENTATIONS)} (got {implementation!r})")
    if implementation == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "reference"
    return implementation


def resolve_interpret(interpret: bool | None) -> bool:
    """Pallas interpret mode: on unless the default backend is a GPU (when ``None``)."""
    return jax.default_backend() != "gpu" if interpret is None else bool(interpret)


# ---- static tiling helpers -----------------------------------------------------------------

def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def dot_width(width: int) -> int:
    """Width after zero-padding so that every power-of-two part is >= :data:`MIN_DOT_DIM`."""
    return -(-width // MIN_DOT_DIM) * MIN_DOT_DIM


def pow2_parts(width: int, max_size: int | None = None) -> tuple[tuple[int, int], ...]:
    """Split ``width`` into ``(offset, size)`` column ranges of power-of-two sizes, largest first
    (each at most ``max_size``, a power of two, when given)."""
    parts, offset = [], 0
    for bit in reversed(range(max(1, width).bit_length())):
        if width & (1 << bit):
            size = 1 << bit
            step = size if max_size is None else min(size, max_size)
            parts += [(offset + i, step) for i in range(0, size, step)]
            offset += size
    return tuple(parts)


def pad_axis(x: jax.Array, axis: int, size: int, *, front: int = 0) -> jax.Array:
    """Zero-pad ``x`` along ``axis`` to ``size`` (``front`` of the padding goes first); no-op if equal."""
    axis = axis % x.ndim
    back = size - x.shape[axis] - front
    if back < 0:
        raise ValueError(f"cannot pad axis {axis} of {x.shape} to {size}")
    if front == 0 and back == 0:
        return x
    pads = [(0, 0)] * x.ndim
    pads[axis] = (front, back)
    return jnp.pad(x, pads)


def pad_head_dims(q_arrays, key_arrays_sets, value_width: int, has_value: bool):
    """Zero-pad the head dims of query parts and their matching key parts (exact: zeros add nothing).

    Every dot operand becomes a sum of power-of-two parts >= :data:`MIN_DOT_DIM`. Without a separate
    value array (MLA, whose value is the first key part: the latent) the first part is also at least
    as wide as the padded value.

    Args:
      q_arrays: query parts ``[..., Hk_a]``.
      key_arrays_sets: lists of key parts, each list matching ``q_arrays`` part by part.
      value_width: value head width.
      has_value: whether the value comes in its own array.

    Returns:
      ``(q_arrays, key_arrays_sets, widths, key_parts, value_padded)``: the padded arrays, each part's
      width, the ``(part, offset, size)`` power-of-two column ranges, and the padded value width.
    """
    value_padded = max(MIN_DOT_DIM, next_pow2(value_width))
    widths = [dot_width(a.shape[-1]) for a in q_arrays]
    if not has_value:
        widths[0] = max(widths[0], value_padded)
    pad = lambda arrays: [pad_axis(a, -1, w) for a, w in zip(arrays, widths)]  # noqa: E731
    key_parts = tuple((a, off, size) for a, w in enumerate(widths) for off, size in pow2_parts(w))
    return pad(q_arrays), [pad(keys) for keys in key_arrays_sets], widths, key_parts, value_padded

# ---- in-kernel math ------------------------------------------------------------------------

def precision_for(dtype) -> lax.Precision | None:
    """IEEE f32 dots for f32 inputs (Triton would use TF32 by default); native for 16-bit."""
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def dot_nt(a: jax.Array, b: jax.Array, precision) -> jax.Array:
    """``a [M, D] @ b[Zk, D].T -> f32 [M, Zk]``."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


def dot_nn(a: jax.Array, b: jax.Array, precision) -> jax.Array:
    """``a [M, Zk] @ b [Zk, Hv] -> f32 [M, Hv]``."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


def init_carry(rows: int, value_width: int):
    """Fresh ``(m, l, acc)``: m = -inf, l = 0, acc = 0 (all f32)."""
    return (jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.float32),
            jnp.zeros((rows, value_width), jnp.float32))


def softmax_update(carry, s: jax.Array, v: jax.Array, precision):
    """One online-softmax step with base-2 logits ``s [M, Zk]`` (already scaled and masked)."""
    m_prev, l_prev, acc = carry
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
    alpha = jnp.exp2(m_prev - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l_new = alpha * l_prev + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + dot_nn(p.astype(v.dtype), v, precision)
    return m_new, l_new, acc


def tile_logits(q_parts, key_parts, load, precision) -> jax.Array:
    """Sum of per-part dots. ``key_parts[i] = (array, offset, size)``; ``load`` fetches a key tile."""
    s = None
    for qp, (arr, off, size) in zip(q_parts, key_parts):
        part = dot_nt(qp, load(arr, off, size), precision)
        s = part if s is None else s + part
    return s


def attend_cached(carry, lo, hi, *, q_parts, key_parts, kc_refs, vc_ref, value_part, bt_ref,
                  num_blocks: int, block_tokens: int, seq_len, masked: bool, scale_log2: float,
                  precision):
    """Fold logical cached blocks ``[lo, hi)`` of one sequence into ``carry``.

    ``kc_refs`` are ``[Pt, Z, W_a]`` cache refs (one KV head), ``bt_ref`` the sequence's
    ``i32[P]`` block-table row. The value tile is ``vc_ref[bid]`` or, when ``vc_ref`` is None,
    the key columns ``value_part = (array, offset, size)`` (MLA: value = latent). With
    ``masked`` the tile's token positions ``>= seq_len`` are masked (partial last block).
    ``hi`` is clipped to the row's ``P`` columns: a length past the table (unchecked input)
    attends to the table's blocks, as the plain-jnp references do, and never reads past the row.
    """
    z = block_tokens
    hi = jnp.minimum(hi, bt_ref.shape[-1])

    def body(j, carry):
        bid = bt_ref[j]
        ok = jnp.logical_and(bid >= 0, bid < num_blocks)
        bid = jnp.minimum(jnp.maximum(bid, 0), num_blocks - 1)
        loaded = {}

        def load(arr, off, size):
            key = (arr, off, size)
            if key not in loaded:
                loaded[key] = kc_refs[arr][bid, :, pl.ds(off, size)]
            return loaded[key]

        s = tile_logits(q_parts, key_parts, load, precision)
        s = s * jnp.where(ok, jnp.full((), scale_log2, jnp.float32), jnp.full((), jnp.nan, jnp.float32))
        v = load(*value_part) if vc_ref is None else vc_ref[bid]
        if masked:
            col_ok = j * z + lax.broadcasted_iota(jnp.int32, (z,), 0) < seq_len
            s = jnp.where(col_ok[None, :], s, MASK_VALUE)
            v = jnp.where(col_ok[:, None], v, jnp.zeros_like(v))
        return softmax_update(carry, s, v, precision)

    return lax.fori_loop(lo, hi, body, carry)


def finalize(carry, row_ok: jax.Array, dtype) -> jax.Array:
    """``acc / l`` for valid rows that saw a key, exact zeros elsewhere (NaN stays NaN)."""
    _, l, acc = carry
    good = jnp.logical_and(row_ok, jnp.logical_not(l == 0))
    safe_l = jnp.where(good, l, 1.0)
    return jnp.where(good[:, None], acc / safe_l[:, None], 0.0).astype(dtype)


def merge_splits(acc: jax.Array, m: jax.Array, l: jax.Array) -> jax.Array:
    """Combine per-split partial softmax states (axis 0) into normalised f32 outputs.

    ``acc [S, ..., Hv]`` unnormalised, ``m [S, ...]`` base-2 running max, ``l [S, ...]`` running
    sum (flash-decoding). Rows with no key at all come out as zeros; NaN propagates.
    """
    m_max = jnp.max(m, axis=0)
    m_max = jnp.where(jnp.isneginf(m_max), 0.0, m_max)
    w = jnp.exp2(m - m_max[None])
    total = jnp.sum(w * l, axis=0)
    out = jnp.sum(w[..., None] * acc, axis=0)
    nonzero = total != 0
    return jnp.where(nonzero[..., None], out / jnp.where(nonzero, total, 1.0)[..., None], 0.0)


# ---- input validation ----------------------------------------------------------------------

def host_values(*xs) -> list[np.ndarray] | None:
    """NumPy copies of ``xs``, or None when any of them is traced (inside ``jit``)."""
    try:
        return [np.asarray(x) for x in xs]
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_float(name: str, x, ndim: int, layout: str, dtype=None) -> None:
    """Raise ValueError naming ``name`` unless ``x`` is a floating array of rank ``ndim``
    (and dtype ``dtype`` when given). ``layout`` (e.g. ``"[B, T, N, Hk]"``) goes in the message."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{name}: expected an array {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected rank {ndim} {layout}, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name}: dtype {x.dtype} must match {jnp.dtype(dtype)}")


def check_index(name: str, x, layout: str, expected: Sequence[int | None]) -> None:
    """Raise ValueError naming ``name`` unless ``x`` is an int32 array of shape ``expected``."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{name}: expected an i32{layout} array, got {type(x).__name__}")
    if x.dtype != jnp.int32:
        raise ValueError(f"{name}: expected dtype int32, got {x.dtype}")
    check_shape(name, x, layout, expected)


def check_shape(name: str, x, layout: str, expected: Sequence[int | None]) -> None:
    """Raise ValueError naming ``name`` unless ``x.shape`` matches ``expected`` (None = any)."""
    shape = tuple(x.shape)
    if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected)):
        want = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name}: expected shape {layout} = {want}, got {shape}")


def check_tile(name: str, value: int | None) -> None:
    """A row tile (``block_m``, ``block_h``) must be None or a power of two >= 16."""
    if value is not None and (not isinstance(value, int) or value < MIN_DOT_DIM or value & (value - 1)):
        raise ValueError(f"{name}: must be a power of two >= {MIN_DOT_DIM} (got {value!r})")


def check_block_tokens(name: str, z: int) -> None:
    """The Pallas kernels tile KV by blocks: Z must be a power of two >= 16 (a Triton dot dim)."""
    if z < MIN_DOT_DIM or z & (z - 1):
        raise ValueError(f"{name}: block size Z={z} must be a power of two >= {MIN_DOT_DIM} for the "
                         "Pallas kernel (the reference accepts any Z)")


def check_scale(scale) -> float:
    """Softmax scale must be a finite positive Python/NumPy number (a static kernel constant)."""
    try:
        value = float(scale)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError(f"scale: must be a static positive number (got {scale!r})") from err
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale: must be finite and > 0 (got {value})")
    return value


def check_pool_and_table(impl: str, blocks_name: str, num_blocks: int, z: int, block_table,
                         batch: int) -> None:
    """Shared checks of a block pool ``[Pt, Z, ...]`` and its ``i32[B, P]`` table.

    Raises:
      ValueError: naming ``blocks_name`` for an empty pool or (Pallas) an untileable Z, or
        ``block_table`` for a wrong rank, dtype, batch size or zero columns.
    """
    if num_blocks < 1 or z < 1:
        raise ValueError(f"{blocks_name}: the pool needs at least one block of at least one token "
                         f"(got Pt={num_blocks}, Z={z})")
    if impl == "pallas":
        check_block_tokens(blocks_name, z)
    check_index("block_table", block_table, "[B, P]", (batch, None))
    if block_table.shape[1] < 1:
        raise ValueError("block_table: needs at least one column (P >= 1)")


def block_id_problem(block_table: np.ndarray, used_blocks: np.ndarray, num_blocks: int) -> str | None:
    """Describe the first used block-table entry outside ``[0, num_blocks)``, or None.

    Row ``b`` uses its first ``used_blocks[b]`` entries.
    """
    cols = np.arange(block_table.shape[1])[None, :]
    bad = (cols < used_blocks[:, None]) & ((block_table < 0) | (block_table >= num_blocks))
    if not bad.any():
        return None
    b, j = (int(i) for i in np.argwhere(bad)[0])
    return (f"block_table: entry [{b}, {j}] = {int(block_table[b, j])} is outside [0, {num_blocks}) "
            f"(row {b} uses its first {int(used_blocks[b])} entries)")


def empty(*arrays) -> bool:
    """Whether any of ``arrays`` has a zero-length axis (no sequence, token, head or feature: the
    kernels have nothing to tile, and the APIs return the plain-jnp reference's result)."""
    return any(0 in a.shape for a in arrays)


def host_check(check, *arrays, enabled: bool) -> None:
    """Run ``check(*numpy_arrays)`` (which raises ValueError naming the argument) on the host.

    With ``enabled``, concrete ``arrays`` are checked now and traced ones by a
    ``jax.debug.callback`` when the computation runs (the error then surfaces as a
    ``JaxRuntimeError`` carrying the same message). ``enabled=False`` skips the check (hot
    loops); the attention kernels still turn a bad block id into NaN rows, never a clamped read.
    """
    if not enabled:
        return
    values = host_values(*arrays)
    if values is not None:
        check(*values)
    else:
        jax.debug.callback(lambda *xs: check(*(np.asarray(x) for x in xs)), *arrays)
