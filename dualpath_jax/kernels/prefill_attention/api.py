"""Public prefill attention: input validation and the reference / Pallas dispatcher."""

from __future__ import annotations

import functools

import jax

from dualpath_jax.kernels import _flash
from dualpath_jax.kernels.prefill_attention.kernel import prefill_pallas
from dualpath_jax.kernels.prefill_attention.reference import prefill_reference, prefill_reference_mla

__all__ = ["prefill_attention", "prefill_attention_mla"]

_TUNING = ("block_m", "kv_splits", "num_warps", "num_stages", "interpret")


def prefill_attention(q, k_new, v_new, k_blocks, v_blocks, block_table, cached_len, new_len, *,
                      scale: float, implementation: str = "auto", check_values: bool = True,
                      block_m: int | None = None, kv_splits: int | None = None,
                      num_warps: int | None = None, num_stages: int | None = None,
                      interpret: bool | None = None) -> jax.Array:
    """GQA/MHA/MQA attention of a ragged batch's new tokens over cached block KV plus themselves.

    Sequence ``b`` has ``cached_len[b]`` cached tokens stored in blocks
    ``block_table[b, :ceil(cached_len[b] / Z)]`` of the pool (token ``s`` in block
    ``block_table[b, s // Z]``, slot ``s % Z``) followed by ``new_len[b] <= T`` new tokens. New
    query ``t`` (absolute position ``cached_len[b] + t``) sees every cached token and new tokens
    ``0..t``. Query head ``n`` reads KV head ``n // (N // K)`` (Qwen2 ``repeat_kv``).

    Args:
      q: ``[B, T, N, Hk]`` new queries (rows ``t >= new_len[b]`` are ignored).
      k_new: ``[B, T, K, Hk]`` new keys; v_new: ``[B, T, K, Hv]`` new values (same dtype as q).
      k_blocks: ``[Pt, Z, K, Hk]`` key block pool; v_blocks: ``[Pt, Z, K, Hv]`` (same dtype).
      block_table: ``i32[B, P]`` block ids per sequence; entries past the used ones are ignored.
      cached_len: ``i32[B]`` cached tokens, ``<= P * Z``; new_len: ``i32[B]`` in ``[0, T]``.
      scale: softmax scale (static), usually ``Hk ** -0.5``.
      implementation: ``"auto"`` (Pallas on GPU, reference elsewhere), ``"reference"``, ``"pallas"``.
      check_values: check lengths and used block ids on the host (now when concrete, by a
        runtime callback when traced); off, a bad id yields NaN rows, never a clamped read.
      block_m: Pallas rows per program (a power of two >= 16; None: default).
      kv_splits: programs sharing one row tile's cached blocks, merged flash-decoding style
        (None: enough for ~2 waves of programs on a 132-SM GPU).
      num_warps, num_stages: Triton settings (None: defaults).
      interpret: Pallas interpret mode (None: on unless the backend is a GPU).

    Returns:
      ``[B, T, N, Hv]`` in q's dtype; rows ``t >= new_len[b]`` are zero.

    Raises:
      ValueError: naming the argument, for wrong ranks, shapes or dtypes, a block size the
        Pallas kernel cannot tile, lengths out of range or used block ids outside ``[0, Pt)``.
    """
    impl = _flash.resolve_implementation(implementation)
    scale = _flash.check_scale(scale)
    _flash.check_float("q", q, 4, "[B, T, N, Hk]")
    b, t, n, hk = q.shape
    _flash.check_float("k_new", k_new, 4, "[B, T, K, Hk]", q.dtype)
    _flash.check_shape("k_new", k_new, "[B, T, K, Hk]", (b, t, None, hk))
    kh = k_new.shape[2]
    if kh == 0 or n % kh:
        raise ValueError(f"q: query heads N={n} must be a positive multiple of KV heads K={kh} (k_new)")
    _flash.check_float("v_new", v_new, 4, "[B, T, K, Hv]", q.dtype)
    _flash.check_shape("v_new", v_new, "[B, T, K, Hv]", (b, t, kh, None))
    hv = v_new.shape[3]
    _flash.check_float("k_blocks", k_blocks, 4, "[Pt, Z, K, Hk]", q.dtype)
    _flash.check_shape("k_blocks", k_blocks, "[Pt, Z, K, Hk]", (None, None, kh, hk))
    num_blocks, z = k_blocks.shape[:2]
    _flash.check_float("v_blocks", v_blocks, 4, "[Pt, Z, K, Hv]", q.dtype)
    _flash.check_shape("v_blocks", v_blocks, "[Pt, Z, K, Hv]", (num_blocks, z, kh, hv))
    _check_common(impl, "k_blocks", b, t, num_blocks, z, block_table, cached_len, new_len, check_values)
    _check_splits(kv_splits)
    tuning = dict(block_m=block_m, kv_splits=kv_splits, num_warps=num_warps, num_stages=num_stages,
                  interpret=interpret)
    if impl == "reference" or _flash.empty(q, v_new):  # (nothing to tile: the reference's empty result)
        return _reference_gqa(q, k_new, v_new, k_blocks, v_blocks, block_table, cached_len, new_len,
                              scale=scale)
    return _pallas_gqa(q, k_new, v_new, k_blocks, v_blocks, block_table, cached_len, new_len,
                       scale=scale, **tuning)


def prefill_attention_mla(q_latent, q_rope, latent_new, rope_new, latent_blocks, rope_blocks,
                          block_table, cached_len, new_len, *, scale: float,
                          implementation: str = "auto", check_values: bool = True,
                          block_m: int | None = None, kv_splits: int | None = None,
                          num_warps: int | None = None, num_stages: int | None = None,
                          interpret: bool | None = None) -> jax.Array:
    """MLA prefill attention over the latent block cache, in absorbed form (DeepSeek-V2, arXiv
    2405.04434, section 2.1.2 / appendix C).

    All N query heads share one KV "head": key ``[latent | rope]`` (C + R), value ``latent`` (C).
    The caller folds ``W_UK`` into ``q_latent`` and applies ``W_UV`` to the output. Token layout,
    masking and the tuning arguments as :func:`prefill_attention`.

    Args:
      q_latent: ``[B, T, N, C]``; q_rope: ``[B, T, N, R]`` (same dtype).
      latent_new: ``[B, T, C]``; rope_new: ``[B, T, R]``.
      latent_blocks: ``[Pt, Z, C]``; rope_blocks: ``[Pt, Z, R]``.
      block_table: ``i32[B, P]``; cached_len, new_len: ``i32[B]``.
      scale: softmax scale, usually ``(qk_nope_head_dim + R) ** -0.5`` (static).

    Returns:
      ``[B, T, N, C]`` in q_latent's dtype; rows ``t >= new_len[b]`` are zero.

    Raises:
      ValueError: naming the argument, as :func:`prefill_attention`.
    """
    impl = _flash.resolve_implementation(implementation)
    scale = _flash.check_scale(scale)
    _flash.check_float("q_latent", q_latent, 4, "[B, T, N, C]")
    b, t, n, c = q_latent.shape
    dtype = q_latent.dtype
    _flash.check_float("q_rope", q_rope, 4, "[B, T, N, R]", dtype)
    _flash.check_shape("q_rope", q_rope, "[B, T, N, R]", (b, t, n, None))
    r = q_rope.shape[3]
    _flash.check_float("latent_new", latent_new, 3, "[B, T, C]", dtype)
    _flash.check_shape("latent_new", latent_new, "[B, T, C]", (b, t, c))
    _flash.check_float("rope_new", rope_new, 3, "[B, T, R]", dtype)
    _flash.check_shape("rope_new", rope_new, "[B, T, R]", (b, t, r))
    _flash.check_float("latent_blocks", latent_blocks, 3, "[Pt, Z, C]", dtype)
    _flash.check_shape("latent_blocks", latent_blocks, "[Pt, Z, C]", (None, None, c))
    num_blocks, z = latent_blocks.shape[:2]
    _flash.check_float("rope_blocks", rope_blocks, 3, "[Pt, Z, R]", dtype)
    _flash.check_shape("rope_blocks", rope_blocks, "[Pt, Z, R]", (num_blocks, z, r))
    _check_common(impl, "latent_blocks", b, t, num_blocks, z, block_table, cached_len, new_len, check_values)
    _check_splits(kv_splits)
    args = (q_latent, q_rope, latent_new, rope_new, latent_blocks, rope_blocks, block_table, cached_len, new_len)
    if impl == "reference" or _flash.empty(q_latent, q_rope):
        return _reference_mla(*args, scale=scale)
    return _pallas_mla(*args, scale=scale, block_m=block_m, kv_splits=kv_splits, num_warps=num_warps,
                       num_stages=num_stages, interpret=interpret)


def _check_common(impl, blocks_name, b, t, num_blocks, z, block_table, cached_len, new_len, check_values):
    _flash.check_pool_and_table(impl, blocks_name, num_blocks, z, block_table, b)
    _flash.check_index("cached_len", cached_len, "[B]", (b,))
    _flash.check_index("new_len", new_len, "[B]", (b,))

    def check(bt, cached, new):
        capacity = bt.shape[1] * z
        if (cached < 0).any() or (cached > capacity).any():
            raise ValueError(f"cached_len: entries must be in [0, P*Z={capacity}] (got {cached.tolist()})")
        if (new < 0).any() or (new > t).any():
            raise ValueError(f"new_len: entries must be in [0, T={t}] (got {new.tolist()})")
        problem = _flash.block_id_problem(bt, -(-cached // z), num_blocks)
        if problem:
            raise ValueError(problem)

    _flash.host_check(check, block_table, cached_len, new_len, enabled=check_values)


def _check_splits(kv_splits) -> None:
    if kv_splits is not None and (not isinstance(kv_splits, int) or kv_splits < 1):
        raise ValueError(f"kv_splits: must be a positive int or None (got {kv_splits!r})")


_reference_gqa = jax.jit(prefill_reference, static_argnames=("scale",))
_reference_mla = jax.jit(prefill_reference_mla, static_argnames=("scale",))


@functools.partial(jax.jit, static_argnames=("scale", *_TUNING))
def _pallas_gqa(q, k_new, v_new, k_blocks, v_blocks, block_table, cached_len, new_len, *, scale,
                block_m, kv_splits, num_warps, num_stages, interpret):
    return prefill_pallas((q,), (k_new,), v_new, (k_blocks,), v_blocks, block_table, cached_len, new_len,
                          scale=scale, block_m=block_m, kv_splits=kv_splits, num_warps=num_warps,
                          num_stages=num_stages, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("scale", *_TUNING))
def _pallas_mla(q_latent, q_rope, latent_new, rope_new, latent_blocks, rope_blocks, block_table,
                cached_len, new_len, *, scale, block_m, kv_splits, num_warps, num_stages, interpret):
    return prefill_pallas((q_latent, q_rope), (latent_new[:, :, None], rope_new[:, :, None]), None,
                          (latent_blocks[:, :, None], rope_blocks[:, :, None]), None, block_table,
                          cached_len, new_len, scale=scale, block_m=block_m, kv_splits=kv_splits,
                          num_warps=num_warps, num_stages=num_stages, interpret=interpret)

