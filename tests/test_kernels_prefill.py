"""Shared suite for the block-KV prefill attention kernel, run on every implementation.

Expected values come from a float64 NumPy dense causal attention over each sequence's
*contiguous* KV (``kernel_cases``), built before it is scattered into a NaN-poisoned block pool
with a permuted block table; nothing from the code under test produces them. Pallas runs in
interpret mode off GPU and compiled (Triton) on GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernel_cases import (FULL_GRID, IMPLEMENTATIONS, T_NEW, TOLERANCES, VARIANTS, build_pool, dense_qkv,
                          np_causal_attention, piece_shapes, rounded, to_jnp, with_slow)

from dualpath_jax.kernels.prefill_attention import prefill_attention, prefill_attention_mla


def prefill_case(variant, z, dtype, seed=0):
    rng = np.random.default_rng(seed)
    cached = [0, 2 * z, z + 5, 0, 3]
    new = [T_NEW, 1, 7, 0, T_NEW - 2]
    pools, table, contiguous = build_pool(rng, z, dtype, variant, cached)
    cfg = VARIANTS[variant]
    b = len(cached)
    q_shapes = [(cfg["c"],), (cfg["r"],)] if variant == "mla" else [(cfg["h"],)]
    q_pieces = [rounded(rng.standard_normal((b, T_NEW, cfg["n"], *s)), dtype) for s in q_shapes]
    new_pieces = {name: rounded(rng.standard_normal((b, T_NEW, *shape)), dtype)
                  for name, shape in piece_shapes(variant).items()}
    hk = sum(s[0] for s in q_shapes)
    scale = hk ** -0.5
    expected = np.zeros((b, T_NEW, cfg["n"], cfg.get("c", cfg.get("h"))))
    for i in range(b):
        seq = {name: np.concatenate([contiguous[name][i], new_pieces[name][i, :new[i]]]) for name in new_pieces}
        if new[i]:
            expected[i, :new[i]] = np_causal_attention(*dense_qkv(variant, [qp[i, :new[i]] for qp in q_pieces], seq),
                                                       scale)
    for arr in [*q_pieces, *new_pieces.values()]:
        for i in range(b):
            arr[i, new[i]:] = np.nan  # padding rows must not leak either
    args = ([to_jnp(x, dtype) for x in q_pieces], {k: to_jnp(v, dtype) for k, v in new_pieces.items()},
            {k: to_jnp(v, dtype) for k, v in pools.items()}, jnp.asarray(table),
            jnp.asarray(cached, jnp.int32), jnp.asarray(new, jnp.int32))
    return args, expected, scale


def run_prefill(variant, args, scale, implementation, **kw):
    q_pieces, new_pieces, pools, table, cached, new = args
    if implementation == "pallas":
        kw.setdefault("block_m", 16)
        kw.setdefault("kv_splits", 2)
    if variant == "mla":
        return prefill_attention_mla(q_pieces[0], q_pieces[1], new_pieces["a"], new_pieces["b"], pools["a"],
                                     pools["b"], table, cached, new, scale=scale,
                                     implementation=implementation, **kw)
    return prefill_attention(q_pieces[0], new_pieces["a"], new_pieces["b"], pools["a"], pools["b"], table,
                             cached, new, scale=scale, implementation=implementation, **kw)


# Interpret-mode compiles cost ~2 s per configuration on CPU, so the default run covers every
# (variant, Z), (variant, dtype) and (Z, dtype) pair; the full cross-product runs under -m slow.
PREFILL_GRID = [(v, z, d) for v, z, d in FULL_GRID
                if (list(VARIANTS).index(v) + (z == 64) + (d == "bfloat16")) % 2 == 0]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant,z,dtype", with_slow(PREFILL_GRID, FULL_GRID))
def test_prefill_matches_dense(variant, z, dtype, implementation):
    args, expected, scale = prefill_case(variant, z, dtype)
    out = run_prefill(variant, args, scale, implementation)
    assert out.dtype == jnp.dtype(dtype) and out.shape == expected.shape
    out = np.asarray(out.astype(jnp.float32))
    assert np.isfinite(out).all(), "NaN from poisoned blocks / padding leaked into the output"
    np.testing.assert_allclose(out, expected, **TOLERANCES[dtype])
    assert not out[3].any() and not out[1, 1:].any(), "rows t >= new_len must be exact zeros"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_two_runs_are_bit_identical(implementation):
    args, _, scale = prefill_case("gqa4", 16, "bfloat16", seed=3)
    a = np.asarray(run_prefill("gqa4", args, scale, implementation).view(jnp.uint16))
    b = np.asarray(run_prefill("gqa4", args, scale, implementation).view(jnp.uint16))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kv_splits", [1, 4])
def test_kv_split_count_does_not_change_result(kv_splits):
    args, expected, scale = prefill_case("gqa4", 64, "float32")
    out = np.asarray(run_prefill("gqa4", args, scale, "pallas", kv_splits=kv_splits))
    np.testing.assert_allclose(out, expected, **TOLERANCES["float32"])
    assert not out[3].any()


# ---- bad block ids: an error naming block_table, or NaN rows; never a clamped read ----------

def _with_bad_id(args, bad_id):
    q, new, pools, table, cached, new_len = args
    return (q, new, pools, table.at[2, 1].set(bad_id), cached, new_len)  # row 2 uses 2 blocks


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bad_block_id_eager_raises(implementation):
    args, _, scale = prefill_case("mqa", 16, "float32")
    num_blocks = args[2]["a"].shape[0]
    with pytest.raises(ValueError, match=rf"block_table: entry \[2, 1\] = {num_blocks} is outside \[0, {num_blocks}\)"):
        run_prefill("mqa", _with_bad_id(args, num_blocks), scale, implementation)
    with pytest.raises(ValueError, match=r"block_table: entry \[2, 1\] = -1"):
        run_prefill("mqa", _with_bad_id(args, -1), scale, implementation)


def test_bad_block_id_traced_check_raises_at_run_time():
    args, _, scale = prefill_case("mqa", 16, "float32")
    bad = _with_bad_id(args, 10**5)
    call = jax.jit(lambda table: run_prefill("mqa", (*bad[:3], table, *bad[4:]), scale, "reference"))
    with pytest.raises(Exception, match=r"block_table: entry \[2, 1\] = 100000"):
        jax.block_until_ready(call(bad[3]))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bad_block_id_unchecked_gives_nan_rows(implementation):
    args, expected, scale = prefill_case("mqa", 16, "float32")
    bad = _with_bad_id(args, args[2]["a"].shape[0] + 7)
    out = np.asarray(run_prefill("mqa", bad, scale, implementation, check_values=False))
    assert np.isnan(out[2, :7]).all(), "rows reading a bad block must be NaN, not a clamped block"
    keep = [0, 1, 4]
    np.testing.assert_allclose(out[keep], expected[keep], **TOLERANCES["float32"])


def test_a_cached_length_past_the_table_unchecked_reads_only_the_tables_blocks():
    """cached_len one block past the table's P = 3 blocks, checks off, 2 KV splits: the table's 3
    blocks are attended to, as in the reference, never a column past the row."""
    rng = np.random.default_rng(0)
    z = 16
    k = jnp.asarray(rng.standard_normal((4, z, 1, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((4, z, 1, 16)), jnp.float32)
    qn = jnp.asarray(rng.standard_normal((1, 2, 2, 16)), jnp.float32)
    kn = jnp.asarray(rng.standard_normal((1, 2, 1, 16)), jnp.float32)

    def run(table, implementation, **kw):
        return np.asarray(prefill_attention(qn, kn, kn, k, v, jnp.array([table], jnp.int32),
                                            jnp.array([4 * z], jnp.int32), jnp.array([2], jnp.int32), scale=0.25,
                                            implementation=implementation, check_values=False, **kw))

    out = run([3, 1, 2], "pallas", kv_splits=2)
    np.testing.assert_allclose(out, run([3, 1, 2], "reference"), **TOLERANCES["float32"])
    assert np.abs(out - run([3, 1, 2, 2], "reference")).max() > 0.05


def test_an_empty_batch_gives_an_empty_result():
    f32 = jnp.float32
    pool = jnp.ones((4, 16, 2, 16), f32)
    args = (jnp.ones((0, 3, 4, 16), f32), jnp.ones((0, 3, 2, 16), f32), jnp.ones((0, 3, 2, 16), f32), pool, pool,
            jnp.zeros((0, 2), jnp.int32), jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.int32))
    assert prefill_attention(*args, scale=0.25, implementation="pallas").shape == (0, 3, 4, 16)


# ---- static validation: errors name the argument --------------------------------------------

def _gqa_kwargs():
    args, _, scale = prefill_case("gqa4", 16, "float32")
    q, new, pools, table, cached, new_len = args
    return dict(q=q[0], k_new=new["a"], v_new=new["b"], k_blocks=pools["a"], v_blocks=pools["b"],
                block_table=table, cached_len=cached, new_len=new_len), scale


@pytest.mark.parametrize("field,change,implementation,pattern", [
    ("q", lambda a: a[0], "reference", "q: expected rank 4"),
    ("k_new", lambda a: a.astype(jnp.bfloat16), "reference", "k_new: dtype"),
    ("k_new", lambda a: a[:, :, :, :8], "reference", "k_new: expected shape"),
    ("v_new", lambda a: a[:, :3], "pallas", "v_new: expected shape"),
    ("v_blocks", lambda a: a[:, :, :1], "reference", "v_blocks: expected shape"),
    ("block_table", lambda a: a.astype(jnp.float32), "reference", "block_table: expected dtype int32"),
    ("block_table", lambda a: a[:2], "pallas", "block_table: expected shape"),
    ("cached_len", lambda a: a.at[0].set(100), "reference", "cached_len: entries must be in"),
    ("cached_len", lambda a: a[:, None], "reference", "cached_len: expected shape"),
    ("new_len", lambda a: a.at[1].set(T_NEW + 1), "pallas", "new_len: entries must be in"),
    ("new_len", lambda a: a.at[1].set(-1), "reference", "new_len: entries must be in"),
])
def test_validation_names_argument(field, change, implementation, pattern):
    kwargs, scale = _gqa_kwargs()
    kwargs[field] = change(kwargs[field])
    with pytest.raises(ValueError, match=pattern):
        prefill_attention(**kwargs, scale=scale, implementation=implementation)


def test_validation_of_other_arguments():
    kwargs, scale = _gqa_kwargs()
    with pytest.raises(ValueError, match="implementation: must be one of"):
        prefill_attention(**kwargs, scale=scale, implementation="cuda")
    with pytest.raises(ValueError, match="scale: must be finite and > 0"):
        prefill_attention(**kwargs, scale=-1.0, implementation="reference")
    with pytest.raises(ValueError, match="block_m: must be a power of two"):
        prefill_attention(**kwargs, scale=scale, implementation="pallas", block_m=24)
    with pytest.raises(ValueError, match="kv_splits: must be a positive int"):
        prefill_attention(**kwargs, scale=scale, implementation="pallas", kv_splits=0)
    small_z = dict(kwargs, k_blocks=kwargs["k_blocks"][:, :8], v_blocks=kwargs["v_blocks"][:, :8])
    with pytest.raises(ValueError, match="k_blocks: block size Z=8 must be a power of two >= 16"):
        prefill_attention(**small_z, scale=scale, implementation="pallas")
    bad_heads = dict(kwargs, q=jnp.zeros((5, T_NEW, 3, 16), jnp.float32))
    with pytest.raises(ValueError, match="q: query heads N=3 must be a positive multiple of KV heads K=2"):
        prefill_attention(**bad_heads, scale=scale, implementation="reference")


def test_mla_validation_names_argument():
    args, _, scale = prefill_case("mla", 16, "float32")
    (ql, qr), new, pools, table, cached, new_len = args
    with pytest.raises(ValueError, match="rope_blocks: expected shape"):
        prefill_attention_mla(ql, qr, new["a"], new["b"], pools["a"], pools["b"][:, :, :4], table, cached,
                              new_len, scale=scale, implementation="reference")
    with pytest.raises(ValueError, match="latent_new: dtype"):
        prefill_attention_mla(ql, qr, new["a"].astype(jnp.bfloat16), new["b"], pools["a"], pools["b"], table,
                              cached, new_len, scale=scale, implementation="pallas")
    with pytest.raises(ValueError, match="q_rope: expected shape"):
        prefill_attention_mla(ql, qr[:, :, :2], new["a"], new["b"], pools["a"], pools["b"], table, cached,
                              new_len, scale=scale, implementation="reference")
