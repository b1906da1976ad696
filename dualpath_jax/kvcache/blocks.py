"""Packing a request's per-layer KV (the model's ``LayerKV`` tuples) into Full / Layer Blocks and back.

All functions are pure numpy on the host: blocks are ``uint8`` byte tensors as laid out by
:class:`~dualpath_jax.kvcache.layout.BlockLayout` (PAPER.md section 2.2). ``LayerKV`` is the
model's pair ``(k [S, K, H], v [S, K, H])`` (GQA) or ``(latent [S, C], k_rope [S, R])`` (MLA).

Round trips are exact for ``f32``/``bf16``/``fp16`` layouts when the input already has the
layout's dtype (otherwise the input is cast with ``astype``); the ``fp8`` layouts are lossy.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np

from dualpath_jax.kvcache.layout import FP8_SCALE_GROUP, KV_DTYPES, BlockLayout

__all__ = ["encode_tokens", "decode_tokens", "pack_full_blocks", "unpack_full_blocks", "layer_block",
           "full_block_from_layer_blocks", "gather_layer", "num_full_blocks"]

_FP8_MAX = float(ml_dtypes.finfo(KV_DTYPES["fp8"]).max)  # 448 for float8_e4m3fn


def num_full_blocks(layout: BlockLayout, num_tokens: int) -> int:
    """Number of complete Z-token blocks in ``num_tokens`` tokens."""
    return int(num_tokens) // layout.block_tokens


def _as_host(x) -> np.ndarray:
    return np.asarray(x)


def _quantize_fp8(x: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token, per-128-value group absmax quantization to float8_e4m3fn (FlashMLA FP8 KV).

    The scale is ``amax / 448`` (the e4m3 maximum), at least float32's smallest normal number: a
    subnormal scale (a group whose values are all below about 5e-36) would lose the precision that
    keeps ``x / scale`` within 448, or be 0; such a group's values round to 0 or its smallest steps.
    """
    s, c = x.shape
    pad = groups * FP8_SCALE_GROUP - c
    xf = np.pad(x.astype(np.float32), ((0, 0), (0, pad))).reshape(s, groups, FP8_SCALE_GROUP)
    amax = np.abs(xf).max(axis=-1)
    scale = np.where(amax > 0, np.maximum(amax / _FP8_MAX, np.finfo(np.float32).tiny), 1.0).astype(np.float32)
    q = np.clip(xf / scale[..., None], -_FP8_MAX, _FP8_MAX)
    q = q.reshape(s, groups * FP8_SCALE_GROUP)[:, :c].astype(KV_DTYPES["fp8"])
    return q, scale


def _dequantize_fp8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    c = q.shape[-1]
    return q.astype(np.float32) * np.repeat(scale, FP8_SCALE_GROUP, axis=-1)[:, :c]


def _field_arrays(layout: BlockLayout, kv) -> list[np.ndarray]:
    """Map a LayerKV onto the layout's fields (values in field dtype, shape ``[S, *field.shape]``)."""
    if not isinstance(kv, (tuple, list)) or len(kv) != 2:
        raise ValueError(f"kv: expected a LayerKV pair of arrays, got {type(kv).__name__}")
    a, b = _as_host(kv[0]), _as_host(kv[1])
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"kv: both arrays need the same token count S (got {a.shape} and {b.shape})")
    if layout.is_fp8_scaled:
        latent_f, scale_f, rope_f = layout.fields
        if a.shape[1:] != latent_f.shape or b.shape[1:] != rope_f.shape:
            raise ValueError(f"kv: expected (latent [S, {latent_f.shape[0]}], k_rope [S, {rope_f.shape[0]}]), "
                             f"got {a.shape} and {b.shape}")
        q, scale = _quantize_fp8(a, scale_f.shape[0])
        return [q, scale, b.astype(rope_f.dtype)]
    out = []
    for field, arr in zip(layout.fields, (a, b)):
        if arr.shape[1:] != field.shape:
            raise ValueError(f"kv: field {field.name!r} expects per-token shape {field.shape}, got {arr.shape[1:]}")
        if field.dtype == KV_DTYPES["fp8"]:  # a saturating cast, as FP8 KV caches write (e4m3fn has no
            arr = np.clip(arr.astype(np.float32), -_FP8_MAX, _FP8_MAX)  # infinity: the rest would be NaN)
        out.append(arr.astype(field.dtype, copy=False))
    return out


def encode_tokens(layout: BlockLayout, kv) -> np.ndarray:
    """One layer's KV of S tokens -> token records ``uint8[S, Bt]``.

    Raises:
      ValueError: ``kv`` is not a pair with the layout's per-token shapes.
    """
    arrays = _field_arrays(layout, kv)
    s = arrays[0].shape[0]
    parts = [np.ascontiguousarray(x).reshape(s, -1).view(np.uint8) for x in arrays]
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _assemble(layout: BlockLayout, field_values: list[np.ndarray], dtype):
    if layout.is_fp8_scaled:
        q, scale, rope = field_values
        latent = _dequantize_fp8(q, scale)
        out = (latent, rope)
    else:
        out = tuple(field_values)
    if dtype is not None:
        out = tuple(x.astype(dtype, copy=False) for x in out)
    return out


def decode_tokens(layout: BlockLayout, raw: np.ndarray, *, dtype=None):
    """Token records ``uint8[S, Bt]`` -> LayerKV of numpy arrays.

    Args:
      raw: ``uint8[S, Bt]`` (or ``[1, Z, Bt]`` / ``[Z, Bt]`` blocks, flattened to ``[S, Bt]``).
      dtype: optional dtype to cast the output to; default the stored dtype (``float32`` for the
        dequantized fp8 latent).

    Returns:
      ``(a [S, ...], b [S, ...])``, contiguous (each field's byte columns are copied once).

    Raises:
      ValueError: ``raw`` is not uint8 with last dim Bt.
    """
    raw = np.asarray(raw)
    bt = layout.bytes_per_token_per_layer
    if raw.dtype != np.uint8 or raw.shape[-1] != bt:
        raise ValueError(f"raw: expected uint8[..., {bt}], got {raw.dtype}{list(raw.shape)}")
    raw = raw.reshape(-1, bt)
    values = []
    for field, off in zip(layout.fields, layout.field_offsets):
        chunk = raw[:, off:off + field.bytes_per_token]
        values.append(np.ascontiguousarray(chunk).view(field.dtype).reshape(raw.shape[0], *field.shape))
    return _assemble(layout, values, dtype)


def _check_block(layout: BlockLayout, block: np.ndarray, name: str) -> None:
    z, bt = layout.block_tokens, layout.bytes_per_token_per_layer
    if block.dtype != np.uint8 or block.ndim != 3 or block.shape[1:] != (z, bt):
        raise ValueError(f"{name}: expected uint8[layers, {z}, {bt}], got {block.dtype}{list(block.shape)}")


def gather_layer(layout: BlockLayout, blocks: Sequence[np.ndarray], layer: int, *, dtype=None):
    """One layer's LayerKV over consecutive blocks, as contiguous host arrays.

    Args:
      blocks: P Full Blocks ``uint8[L, Z, Bt]`` (or Layer Blocks ``uint8[1, Z, Bt]`` with
        ``layer=0``) of consecutive token ranges.
      layer: layer index into each block's first axis.
      dtype: optional output dtype (see :func:`decode_tokens`).

    Returns:
      LayerKV ``(a [P*Z, ...], b [P*Z, ...])``; each field is copied once (per-field gather of the
      Layer Blocks' byte columns), so the result does not alias ``blocks``.

    Raises:
      ValueError: a block has the wrong shape/dtype or ``layer`` is out of range.
    """
    z = layout.block_tokens
    for i, b in enumerate(blocks):
        _check_block(layout, b, f"blocks[{i}]")
        if not 0 <= layer < b.shape[0]:
            raise ValueError(f"layer: {layer} out of range for blocks[{i}] with {b.shape[0]} layers")
    n_tok = len(blocks) * z
    values = []
    for field, off in zip(layout.fields, layout.field_offsets):
        nb = field.bytes_per_token
        if blocks:
            buf = np.concatenate([b[layer, :, off:off + nb] for b in blocks], axis=0)
        else:
            buf = np.zeros((0, nb), np.uint8)
        values.append(buf.view(field.dtype).reshape(n_tok, *field.shape))
    return _assemble(layout, values, dtype)


def pack_full_blocks(layout: BlockLayout, layer_kvs: Sequence) -> np.ndarray:
    """L layers' KV of S = P*Z tokens -> P Full Blocks ``uint8[P, L, Z, Bt]``.

    Args:
      layer_kvs: L LayerKVs, each holding the same S tokens; S must be a multiple of Z.

    Raises:
      ValueError: wrong number of layers, unequal token counts, or S not a multiple of Z.
    """
    if len(layer_kvs) != layout.n_layers:
        raise ValueError(f"layer_kvs: expected {layout.n_layers} layers, got {len(layer_kvs)}")
    encoded = [encode_tokens(layout, kv) for kv in layer_kvs]
    s = encoded[0].shape[0]
    if any(e.shape[0] != s for e in encoded):
        raise ValueError(f"layer_kvs: all layers must hold the same tokens (got {[e.shape[0] for e in encoded]})")
    z, bt = layout.block_tokens, layout.bytes_per_token_per_layer
    if s % z:
        raise ValueError(f"layer_kvs: token count {s} is not a multiple of block_tokens {z}")
    out = np.empty((s // z, layout.n_layers, z, bt), np.uint8)
    for layer, e in enumerate(encoded):
        out[:, layer] = e.reshape(s // z, z, bt)
    return out


def unpack_full_blocks(layout: BlockLayout, blocks: Sequence[np.ndarray] | np.ndarray, *, dtype=None) -> list:
    """P Full Blocks -> L LayerKVs of P*Z tokens (inverse of :func:`pack_full_blocks`).

    Args:
      blocks: P Full Blocks ``uint8[L, Z, Bt]`` of consecutive token ranges (a sequence, or one
        ``uint8[P, L, Z, Bt]`` array).
      dtype: optional output dtype (see :func:`decode_tokens`).

    Returns:
      A list of L LayerKVs ``(a [P*Z, ...], b [P*Z, ...])`` (GQA ``k, v [P*Z, K, H]``, MLA
      ``latent [P*Z, C]``, ``k_rope [P*Z, R]``), copies that do not alias ``blocks``.

    Raises:
      ValueError: (from :func:`gather_layer`) a block is not ``uint8[layers, Z, Bt]`` of the
        layout, or has fewer than the layout's L layers.
    """
    blocks = list(blocks)
    return [gather_layer(layout, blocks, layer, dtype=dtype) for layer in range(layout.n_layers)]


def layer_block(full_block: np.ndarray, layer: int) -> np.ndarray:
    """Layer Block ``uint8[1, Z, Bt]`` of ``layer``: a view into the Full Block ``uint8[L, Z, Bt]``
    (PAPER.md section 2.2), not a copy; the dtype is not checked and carries over.

    Raises:
      ValueError: ``layer`` is outside ``[0, L)``.
    """
    if not 0 <= layer < full_block.shape[0]:
        raise ValueError(f"layer: {layer} out of range for a Full Block of {full_block.shape[0]} layers")
    return full_block[layer:layer + 1]


def full_block_from_layer_blocks(layer_blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate L Layer Blocks ``[1, Z, Bt]`` into a Full Block ``[L, Z, Bt]`` (PAPER.md 2.2).

    Raises:
      ValueError: the Layer Blocks differ in shape or are not ``[1, Z, Bt]`` uint8.
    """
    if not layer_blocks:
        raise ValueError("layer_blocks: need at least one Layer Block")
    first = layer_blocks[0]
    for i, b in enumerate(layer_blocks):
        if b.dtype != np.uint8 or b.ndim != 3 or b.shape[0] != 1 or b.shape != first.shape:
            raise ValueError(f"layer_blocks[{i}]: expected uint8{[1, *first.shape[1:]]}, got {b.dtype}{list(b.shape)}")
    return np.concatenate(layer_blocks, axis=0)
