"""Cases shared by the block-KV kernel suites (``test_kernels_prefill``, ``test_kernels_decode``).

Expected values come from a float64 NumPy dense causal attention over each sequence's
*contiguous* KV, built here before it is scattered into a NaN-poisoned block pool with a permuted
block table; nothing from the code under test produces them.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

IMPLEMENTATIONS = ["reference", "pallas"]
# f32: both paths accumulate in f32 (Pallas dots at IEEE precision), so errors are ~1e-7.
# bf16: outputs are rounded to bf16 (relative half-ulp 2**-9 ~ 2e-3) and the Pallas kernel feeds
# bf16 probabilities to the P @ V dot (another ~2e-3 relative per term); values are O(1).
TOLERANCES = {"float32": dict(atol=1e-5, rtol=1e-5), "bfloat16": dict(atol=2e-2, rtol=2e-2)}
VARIANTS = {"mha": dict(n=4, k=4, h=16), "gqa4": dict(n=8, k=2, h=16), "mqa": dict(n=4, k=1, h=16),
            "mla": dict(n=4, c=32, r=8)}
T_NEW = 10


def np_causal_attention(q, k, v, scale):
    """float64 attention of the last T of S positions: q [T, N, Hk], k [S, K, Hk], v [S, K, Hv]."""
    t, n, _ = q.shape
    s, kh, _ = k.shape
    group = n // kh
    out = np.zeros((t, n, v.shape[-1]))
    visible = np.arange(s)[None, :] <= (s - t + np.arange(t))[:, None]
    for head in range(n):
        logits = np.where(visible, q[:, head] @ k[:, head // group].T * scale, -np.inf)
        w = np.exp(logits - logits.max(axis=-1, keepdims=True))
        out[:, head] = (w / w.sum(axis=-1, keepdims=True)) @ v[:, head // group]
    return out


def piece_shapes(variant):
    """Per-token cache pieces: GQA (k, v) of [K, H]; MLA (latent [C], rope [R])."""
    cfg = VARIANTS[variant]
    if variant == "mla":
        return {"a": (cfg["c"],), "b": (cfg["r"],)}
    return {"a": (cfg["k"], cfg["h"]), "b": (cfg["k"], cfg["h"])}


def dense_qkv(variant, q_pieces, seq):
    """Dense (q, k, v) for np_causal_attention from per-piece arrays (MLA: absorbed form)."""
    if variant == "mla":
        return (np.concatenate(q_pieces, -1), np.concatenate([seq["a"], seq["b"]], -1)[:, None],
                seq["a"][:, None])
    return q_pieces[0], seq["a"], seq["b"]


def build_pool(rng, z, dtype, variant, cache_lens, spare_blocks=3):
    """Contiguous cached KV per sequence, scattered into a NaN pool through a shuffled table.

    Returns (pools {piece: [Pt, Z, ...]}, block_table i32[B, P], contiguous {piece: [list of
    [cached_b, ...]]}) with every slot not holding a cached token left NaN and unused table
    entries set to a huge id (they must be ignored).
    """
    shapes = piece_shapes(variant)
    needed = [-(-c // z) for c in cache_lens]
    p_cols = max(1, max(needed)) + 1
    total = sum(needed) + spare_blocks
    ids = rng.permutation(total).astype(np.int32)
    table = np.full((len(cache_lens), p_cols), 10**6, np.int32)
    pools = {name: np.full((total, z, *shape), np.nan, np.float32) for name, shape in shapes.items()}
    contiguous = {name: [] for name in shapes}
    nxt = 0
    for b, (clen, nb) in enumerate(zip(cache_lens, needed)):
        table[b, :nb] = ids[nxt:nxt + nb]
        nxt += nb
        for name, shape in shapes.items():
            rows = rounded(rng.standard_normal((clen, *shape)), dtype)
            contiguous[name].append(rows)
            for pos in range(clen):
                pools[name][table[b, pos // z], pos % z] = rows[pos]
    return pools, table, contiguous


def rounded(x, dtype):
    """Values exactly representable in ``dtype``, as float64 for the NumPy expectation."""
    return np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64)


def to_jnp(x, dtype):
    return jnp.asarray(x, dtype)


FULL_GRID = [(variant, z, dtype) for variant in VARIANTS for z in (16, 64) for dtype in ("float32", "bfloat16")]


def with_slow(default, full):
    return default + [pytest.param(*c, marks=pytest.mark.slow) for c in full if c not in default]
