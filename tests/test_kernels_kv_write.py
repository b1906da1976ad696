"""kv_write on every implementation: bit-exact against a NumPy loop scatter, and argument checks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from dualpath_jax.kernels.kv_write import kv_write

IMPLEMENTATIONS = ["reference", "pallas"]
LAYOUTS = {"gqa": (2, 16), "latent": (32,), "odd": (3, 8)}  # odd: 24 values/token, parts 16 + 8
T_NEW = 20


def make_case(layout, z, dtype, seed=0):
    """A pool of random values, ragged writes, and the NumPy-scattered expectation."""
    rng = np.random.default_rng(seed)
    feat = LAYOUTS[layout]
    cached = np.array([5, z, 0, 2 * z - 3, 7], np.int32)
    new_len = np.array([T_NEW, 1, 0, T_NEW, 3], np.int32)
    needed = -(-(cached + new_len) // z)
    total = int(needed.sum()) + 2
    ids = rng.permutation(total).astype(np.int32)
    table = np.full((len(cached), int(needed.max()) + 1), 10**6, np.int32)
    start = 0
    for b, nb in enumerate(needed):
        table[b, :nb] = ids[start:start + nb]
        start += nb
    pool = np.asarray(jnp.asarray(rng.standard_normal((total, z, *feat)), dtype))
    new = np.asarray(jnp.asarray(rng.standard_normal((len(cached), T_NEW, *feat)), dtype))
    expected = np_scatter(pool, new, table, cached, new_len)
    return (jnp.asarray(pool), jnp.asarray(new), jnp.asarray(table), jnp.asarray(cached),
            jnp.asarray(new_len)), expected


def np_scatter(pool, new, table, cached, new_len):
    """Token t of sequence b to block table[b, p // Z], slot p % Z, p = cached[b] + t (a loop)."""
    out = np.array(pool, copy=True)
    z = out.shape[1]
    for b in range(len(cached)):
        for t in range(int(new_len[b])):
            pos = int(cached[b]) + t
            out[int(table[b, pos // z]), pos % z] = np.asarray(new)[b, t]
    return out


CASES = [("gqa", 16, "float32"), ("gqa", 64, "bfloat16"), ("latent", 16, "bfloat16"), ("odd", 64, "float32")]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("layout,z,dtype", CASES)
def test_kv_write_is_exact(layout, z, dtype, implementation):
    args, expected = make_case(layout, z, dtype)
    out = kv_write(*args, implementation=implementation)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(out).view(np.uint8), expected.view(np.uint8))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_shared_read_only_prefix_block_is_allowed(implementation):
    args, _ = make_case("gqa", 16, "float32")
    pool, new, table, cached, new_len = args
    # Sequence 4 now starts with sequence 1's full cached block (read-only, shared) and writes
    # its 3 new tokens into its own former block.
    shared = table.at[4, 0].set(table[1, 0]).at[4, 1].set(table[4, 0])
    cached = cached.at[4].set(16)
    out = kv_write(pool, new, shared, cached, new_len, implementation=implementation)
    np.testing.assert_array_equal(np.asarray(out), np_scatter(pool, new, shared, cached, new_len))


def _args():
    return make_case("gqa", 16, "float32")[0]


def test_kv_write_validation_names_argument():
    pool, new, table, cached, new_len = _args()
    with pytest.raises(ValueError, match="new: dtype bfloat16 must equal the pool's float32"):
        kv_write(pool, new.astype(jnp.bfloat16), table, cached, new_len, implementation="pallas")
    with pytest.raises(ValueError, match="new: expected shape"):
        kv_write(pool, new[..., :8], table, cached, new_len, implementation="reference")
    with pytest.raises(ValueError, match="block_table: expected dtype int32"):
        kv_write(pool, new, table.astype(jnp.int16), cached, new_len, implementation="reference")
    with pytest.raises(ValueError, match="cached_len: expected shape"):
        kv_write(pool, new, table, cached[:3], new_len, implementation="reference")
    with pytest.raises(ValueError, match=r"new_len: entries must be in \[0, T=20\]"):
        kv_write(pool, new, table, cached, new_len.at[0].set(21), implementation="pallas")
    with pytest.raises(ValueError, match="new_len: cached_len \\+ new_len must be <= P\\*Z"):
        kv_write(pool, new, table, cached.at[1].set(80), new_len, implementation="reference")
    with pytest.raises(ValueError, match=r"block_table: entry \[0, 1\] = -3 is outside"):
        kv_write(pool, new, table.at[0, 1].set(-3), cached, new_len, implementation="pallas")
    clash = table.at[3, 1].set(table[0, 1])
    with pytest.raises(ValueError, match="block_table: block .* is written by sequences 0 and 3"):
        kv_write(pool, new, clash, cached, new_len, implementation="reference")
    # row 3 (cached 2Z - 3, T_NEW = 20 new tokens) writes its entries 1 and 2: one block for both
    twice = table.at[3, 2].set(table[3, 1])
    with pytest.raises(ValueError, match=r"block_table: block \d+ appears twice among the entries row 3 writes"):
        kv_write(pool, new, twice, cached, new_len, implementation="pallas")
    odd = jnp.zeros((4, 24, 2, 16), jnp.float32)  # Z = 24: the reference only
    with pytest.raises(ValueError, match="blocks: block size Z=24 must be a power of two for the Pallas kernel"):
        kv_write(odd, new, table, cached, new_len, implementation="pallas")
    with pytest.raises(ValueError, match="implementation: must be one of"):
        kv_write(pool, new, table, cached, new_len, implementation="triton")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nothing_to_write_returns_the_pool(implementation):
    """An empty batch or a zero-width pool writes nothing: the pool comes back as it was."""
    pool, new, table, cached, new_len = _args()
    out = kv_write(pool, new[:0], table[:0], cached[:0], new_len[:0], implementation=implementation)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(pool))
    flat = jnp.zeros((pool.shape[0], 16, 0), jnp.float32)
    out = kv_write(flat, jnp.zeros((5, T_NEW, 0), jnp.float32), table, cached, new_len, implementation=implementation)
    assert out.shape == flat.shape


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_unchecked_writes_before_the_sequence_start_are_dropped(implementation):
    """With check_values off, positions below 0 (a negative cached_len) name no block: they are
    dropped, as the docstring says of out-of-range writes, by both implementations alike."""
    pool, new, table, cached, new_len = _args()
    cached = cached.at[0].set(-3).at[1].set(-1)  # sequence 0: positions -3 .. 16 (3 dropped); 1: -1 (dropped)
    out = kv_write(pool, new, table, cached, new_len, implementation=implementation, check_values=False)
    expected = np.array(pool, copy=True)
    for b in range(len(cached)):
        for t in range(int(new_len[b])):
            pos = int(cached[b]) + t
            if pos >= 0:
                expected[int(table[b, pos // 16]), pos % 16] = np.asarray(new)[b, t]
    np.testing.assert_array_equal(np.asarray(out), expected)
