"""Public decode attention: input validation and the reference / Pallas dispatcher."""

from __future__ import annotations

import functools

import jax

from dualpath_jax.kernels import _flash
from dualpath_jax.kernels.decode_attention.kernel import decode_pallas
from dualpath_jax.kernels.decode_attention.reference import decode_reference, decode_reference_mla

__all__ = ["decode_attention", "decode_attention_mla"]

_TUNING = ("num_splits", "block_h", "num_warps", "num_stages", "interpret")


def decode_attention(q, k_blocks, v_blocks, block_table, kv_len, *, scale: float,
                     implementation: str = "auto", check_values: bool = True,
                     num_splits: int | None = None, block_h: int | None = None,
                     num_warps: int | None = None, num_stages: int | None = None,
                     interpret: bool | None = None) -> jax.Array:
    """GQA/MHA/MQA decode: one query per sequence over its first ``kv_len[b]`` cached tokens.

    The current token's KV must already be in the cache (write it with
    :func:`dualpath_jax.kernels.kv_write.kv_write` first); token ``s`` of sequence ``b`` lives in
    block ``block_table[b, s // Z]``, slot ``s % Z``. Query head ``n`` reads KV head
    ``n // (N // K)``.

    Args:
      q: ``[B, N, Hk]``.
      k_blocks: ``[Pt, Z, K, Hk]``; v_blocks: ``[Pt, Z, K, Hv]`` (same dtype as q).
      block_table: ``i32[B, P]``; kv_len: ``i32[B]`` in ``[0, P * Z]``.
      scale: softmax scale (static).
      implementation: ``"auto"`` | ``"reference"`` | ``"pallas"`` (auto: Pallas on GPU only).
      check_values: host checks of kv_len and the used block ids (see
        :func:`~dualpath_jax.kernels.prefill_attention.prefill_attention`).
      num_splits: KV splits per sequence (flash-decoding); block_h: query heads per program;
        num_warps, num_stages: Triton settings; interpret: Pallas interpret mode.

    Returns:
      ``[B, N, Hv]`` in q's dtype; zeros where ``kv_len[b] == 0``.

    Raises:
      ValueError: naming the argument, for wrong ranks, shapes or dtypes, an untileable block
        size (Pallas), ``kv_len`` out of range or used block ids outside ``[0, Pt)``.
    """
    impl = _flash.resolve_implementation(implementation)
    scale = _flash.check_scale(scale)
    _flash.check_float("q", q, 3, "[B, N, Hk]")
    b, n, hk = q.shape
    _flash.check_float("k_blocks", k_blocks, 4, "[Pt, Z, K, Hk]", q.dtype)
    _flash.check_shape("k_blocks", k_blocks, "[Pt, Z, K, Hk]", (None, None, None, hk))
    num_blocks, z, kh, _ = k_blocks.shape
    if kh == 0 or n % kh:
        raise ValueError(f"q: query heads N={n} must be a positive multiple of KV heads K={kh} (k_blocks)")
    _flash.check_float("v_blocks", v_blocks, 4, "[Pt, Z, K, Hv]", q.dtype)
    _flash.check_shape("v_blocks", v_blocks, "[Pt, Z, K, Hv]", (num_blocks, z, kh, None))
    _check_common(impl, "k_blocks", b, num_blocks, z, block_table, kv_len, check_values, num_splits)
    if impl == "reference" or _flash.empty(q, v_blocks):  # (nothing to tile: the reference's empty result)
        return _reference_gqa(q, k_blocks, v_blocks, block_table, kv_len, scale=scale)
    return _pallas_gqa(q, k_blocks, v_blocks, block_table, kv_len, scale=scale, num_splits=num_splits,
                       block_h=block_h, num_warps=num_warps, num_stages=num_stages, interpret=interpret)


def decode_attention_mla(q_latent, q_rope, latent_blocks, rope_blocks, block_table, kv_len, *,
                         scale: float, implementation: str = "auto", check_values: bool = True,
                         num_splits: int | None = None, block_h: int | None = None,
                         num_warps: int | None = None, num_stages: int | None = None,
                         interpret: bool | None = None) -> jax.Array:
    """Absorbed MLA decode (DeepSeek-V2, arXiv 2405.04434, appendix C): all N heads share key
    ``[latent | rope]`` and value ``latent``. Semantics and tuning as :func:`decode_attention`.

    Args:
      q_latent: ``[B, N, C]``; q_rope: ``[B, N, R]``.
      latent_blocks: ``[Pt, Z, C]``; rope_blocks: ``[Pt, Z, R]``.
      block_table: ``i32[B, P]``; kv_len: ``i32[B]``.

    Returns:
      ``[B, N, C]`` in q_latent's dtype.

    Raises:
      ValueError: naming the argument, as :func:`decode_attention`.
    """
    impl = _flash.resolve_implementation(implementation)
    scale = _flash.check_scale(scale)
    _flash.check_float("q_latent", q_latent, 3, "[B, N, C]")
    b, n, c = q_latent.shape
    dtype = q_latent.dtype
    _flash.check_float("q_rope", q_rope, 3, "[B, N, R]", dtype)
    _flash.check_shape("q_rope", q_rope, "[B, N, R]", (b, n, None))
    r = q_rope.shape[2]
    _flash.check_float("latent_blocks", latent_blocks, 3, "[Pt, Z, C]", dtype)
    _flash.check_shape("latent_blocks", latent_blocks, "[Pt, Z, C]", (None, None, c))
    num_blocks, z = latent_blocks.shape[:2]
    _flash.check_float("rope_blocks", rope_blocks, 3, "[Pt, Z, R]", dtype)
    _flash.check_shape("rope_blocks", rope_blocks, "[Pt, Z, R]", (num_blocks, z, r))
    _check_common(impl, "latent_blocks", b, num_blocks, z, block_table, kv_len, check_values, num_splits)
    args = (q_latent, q_rope, latent_blocks, rope_blocks, block_table, kv_len)
    if impl == "reference" or _flash.empty(q_latent, q_rope):
        return _reference_mla(*args, scale=scale)
    return _pallas_mla(*args, scale=scale, num_splits=num_splits, block_h=block_h, num_warps=num_warps,
                       num_stages=num_stages, interpret=interpret)


def _check_common(impl, blocks_name, b, num_blocks, z, block_table, kv_len, check_values, num_splits):
    _flash.check_pool_and_table(impl, blocks_name, num_blocks, z, block_table, b)
    _flash.check_index("kv_len", kv_len, "[B]", (b,))
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits: must be a positive int or None (got {num_splits!r})")

    def check(bt, kv):
        capacity = bt.shape[1] * z
        if (kv < 0).any() or (kv > capacity).any():
            raise ValueError(f"kv_len: entries must be in [0, P*Z={capacity}] (got {kv.tolist()})")
        problem = _flash.block_id_problem(bt, -(-kv // z), num_blocks)
        if problem:
            raise ValueError(problem)

    _flash.host_check(check, block_table, kv_len, enabled=check_values)


_reference_gqa = jax.jit(decode_reference, static_argnames=("scale",))
_reference_mla = jax.jit(decode_reference_mla, static_argnames=("scale",))


@functools.partial(jax.jit, static_argnames=("scale", *_TUNING))
def _pallas_gqa(q, k_blocks, v_blocks, block_table, kv_len, *, scale, num_splits, block_h, num_warps,
                num_stages, interpret):
    return decode_pallas((q,), (k_blocks,), v_blocks, block_table, kv_len, scale=scale,
                         num_splits=num_splits, block_h=block_h, num_warps=num_warps,
                         num_stages=num_stages, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("scale", *_TUNING))
def _pallas_mla(q_latent, q_rope, latent_blocks, rope_blocks, block_table, kv_len, *, scale, num_splits,
                block_h, num_warps, num_stages, interpret):
    return decode_pallas((q_latent, q_rope), (latent_blocks[:, :, None], rope_blocks[:, :, None]), None,
                         block_table, kv_len, scale=scale, num_splits=num_splits, block_h=block_h,
                         num_warps=num_warps, num_stages=num_stages, interpret=interpret)
