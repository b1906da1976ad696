"""Shared suite for the block-KV decode attention kernel, run on every implementation.

Cases and the independent float64 NumPy expectation come from ``kernel_cases`` (dense
attention over each sequence's contiguous KV, scattered into a NaN-poisoned pool).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from kernel_cases import (FULL_GRID, IMPLEMENTATIONS, TOLERANCES, VARIANTS, build_pool, dense_qkv,
                          np_causal_attention, rounded, to_jnp, with_slow)

from dualpath_jax.kernels.decode_attention import decode_attention, decode_attention_mla

# One configuration per variant, covering both block sizes and both dtypes; the prefill suite
# covers the pairs; the full cross-product runs under -m slow.
DECODE_GRID = [("mha", 64, "float32"), ("gqa4", 16, "bfloat16"), ("mqa", 16, "float32"), ("mla", 64, "bfloat16")]


def decode_case(variant, z, dtype, seed=1):
    rng = np.random.default_rng(seed)
    kv_len = [0, 1, z, 2 * z + 3, 3 * z]
    pools, table, contiguous = build_pool(rng, z, dtype, variant, kv_len)
    cfg = VARIANTS[variant]
    b = len(kv_len)
    q_shapes = [(cfg["c"],), (cfg["r"],)] if variant == "mla" else [(cfg["h"],)]
    q_pieces = [rounded(rng.standard_normal((b, cfg["n"], *s)), dtype) for s in q_shapes]
    scale = sum(s[0] for s in q_shapes) ** -0.5
    expected = np.zeros((b, cfg["n"], cfg.get("c", cfg.get("h"))))
    for i in range(b):
        if kv_len[i]:
            seq = {name: contiguous[name][i] for name in contiguous}
            q, k, v = dense_qkv(variant, [qp[i][None] for qp in q_pieces], seq)
            expected[i] = np_causal_attention(q, k, v, scale)[0]
    args = ([to_jnp(x, dtype) for x in q_pieces], {k: to_jnp(v, dtype) for k, v in pools.items()},
            jnp.asarray(table), jnp.asarray(kv_len, jnp.int32))
    return args, expected, scale


def run_decode(variant, args, scale, implementation, **kw):
    q_pieces, pools, table, kv_len = args
    if implementation == "pallas":
        kw.setdefault("num_splits", 2)
    if variant == "mla":
        return decode_attention_mla(q_pieces[0], q_pieces[1], pools["a"], pools["b"], table, kv_len, scale=scale,
                                    implementation=implementation, **kw)
    return decode_attention(q_pieces[0], pools["a"], pools["b"], table, kv_len, scale=scale,
                            implementation=implementation, **kw)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant,z,dtype", with_slow(DECODE_GRID, FULL_GRID))
def test_decode_matches_dense(variant, z, dtype, implementation):
    args, expected, scale = decode_case(variant, z, dtype)
    out = run_decode(variant, args, scale, implementation)
    assert out.dtype == jnp.dtype(dtype) and out.shape == expected.shape
    out = np.asarray(out.astype(jnp.float32))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, **TOLERANCES[dtype])
    assert not out[0].any(), "kv_len = 0 must give zeros"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_two_runs_are_bit_identical(implementation):
    args, _, scale = decode_case("mla", 64, "bfloat16", seed=4)
    a = np.asarray(run_decode("mla", args, scale, implementation).view(jnp.uint16))
    b = np.asarray(run_decode("mla", args, scale, implementation).view(jnp.uint16))
    np.testing.assert_array_equal(a, b)


def test_split_count_does_not_change_result():
    """4 splits of one block each: short sequences leave whole splits empty (merged as zeros)."""
    args, expected, scale = decode_case("gqa4", 16, "bfloat16")
    out = run_decode("gqa4", args, scale, "pallas", num_splits=4)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), expected, **TOLERANCES["bfloat16"])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bad_block_id(implementation):
    args, expected, scale = decode_case("mqa", 16, "float32")
    q, pools, table, kv_len = args
    bad = table.at[3, 0].set(-1)  # row 3 (kv_len = 2Z + 3) uses 3 blocks
    with pytest.raises(ValueError, match=r"block_table: entry \[3, 0\] = -1 is outside"):
        run_decode("mqa", (q, pools, bad, kv_len), scale, implementation)
    out = np.asarray(run_decode("mqa", (q, pools, bad, kv_len), scale, implementation, check_values=False))
    assert np.isnan(out[3]).all(), "a bad block id must give NaN, not a clamped read"
    keep = [0, 1, 2, 4]
    np.testing.assert_allclose(out[keep], expected[keep], **TOLERANCES["float32"])


def test_a_length_past_the_table_unchecked_reads_only_the_tables_blocks():
    """kv_len one block past the table's P = 3 blocks, checks off, 2 splits of 2 columns (the last
    split reaches column 3): the table's 3 blocks are attended to, as in the reference, and the
    last is not read twice (a read past the row, on a GPU the next row or beyond)."""
    rng = np.random.default_rng(0)
    z = 16
    k = jnp.asarray(rng.standard_normal((4, z, 1, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((4, z, 1, 16)), jnp.float32)
    q = jnp.asarray(rng.standard_normal((1, 2, 16)), jnp.float32)
    kv_len = jnp.array([4 * z], jnp.int32)

    def run(table, implementation, **kw):
        return np.asarray(decode_attention(q, k, v, jnp.array([table], jnp.int32), kv_len, scale=0.25,
                                           implementation=implementation, check_values=False, **kw))

    out = run([3, 1, 2], "pallas", num_splits=2)
    np.testing.assert_allclose(out, run([3, 1, 2], "reference"), **TOLERANCES["float32"])
    assert np.abs(out - run([3, 1, 2, 2], "reference")).max() > 0.05  # not the last block twice


def test_empty_batches_and_zero_width_keys_give_the_references_result():
    f32 = jnp.float32
    pool = jnp.asarray(np.random.default_rng(1).standard_normal((4, 16, 2, 16)), f32)
    cases = [(jnp.ones((0, 4, 16), f32), pool, pool, jnp.zeros((0, 2), jnp.int32), jnp.zeros((0,), jnp.int32)),
             # Hk = 0: every logit is 0, so the output is the mean of the first kv_len values
             (jnp.ones((1, 4, 0), f32), jnp.ones((4, 16, 2, 0), f32), pool, jnp.array([[2, 0]], jnp.int32),
              jnp.array([5], jnp.int32))]
    for args in cases:
        got = np.asarray(decode_attention(*args, scale=0.25, implementation="pallas"))
        np.testing.assert_allclose(got, np.asarray(decode_attention(*args, scale=0.25, implementation="reference")))
    mean = np.asarray(pool)[2, :5].mean(axis=0)  # [K, Hv]: heads 0-1 read KV head 0, heads 2-3 KV head 1
    np.testing.assert_allclose(got[0], np.repeat(mean, 2, axis=0), **TOLERANCES["float32"])


def test_validation_names_argument():
    args, _, scale = decode_case("gqa4", 16, "float32")
    (q,), pools, table, kv_len = args
    with pytest.raises(ValueError, match=r"kv_len: entries must be in \[0, P\*Z="):
        decode_attention(q, pools["a"], pools["b"], table, kv_len.at[0].set(10**4), scale=scale,
                         implementation="pallas")
    with pytest.raises(ValueError, match="kv_len: expected dtype int32"):
        decode_attention(q, pools["a"], pools["b"], table, kv_len.astype(jnp.float32), scale=scale,
                         implementation="reference")
    with pytest.raises(ValueError, match="num_splits: must be a positive int"):
        decode_attention(q, pools["a"], pools["b"], table, kv_len, scale=scale, implementation="pallas",
                         num_splits=0)
    with pytest.raises(ValueError, match="v_blocks: expected shape"):
        decode_attention(q, pools["a"], pools["b"][:, :, :1], table, kv_len, scale=scale,
                         implementation="reference")
    with pytest.raises(ValueError, match="q: expected rank 3"):
        decode_attention(q[:, None], pools["a"], pools["b"], table, kv_len, scale=scale, implementation="reference")
    with pytest.raises(ValueError, match="block_h: must be a power of two"):
        decode_attention(q, pools["a"], pools["b"], table, kv_len, scale=scale, implementation="pallas",
                         block_h=8)
    (ql, qr), mpools, mtable, mlen = decode_case("mla", 16, "float32")[0]
    with pytest.raises(ValueError, match="latent_blocks: dtype"):
        decode_attention_mla(ql, qr, mpools["a"].astype(jnp.bfloat16), mpools["b"], mtable, mlen, scale=scale,
                             implementation="reference")
