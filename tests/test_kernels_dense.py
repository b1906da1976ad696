"""dense_pallas.attention_pallas (the model's Pallas path) against a float64 NumPy dense attention."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from dualpath_jax.kernels import dense
from dualpath_jax.kernels.dense_pallas import attention_pallas

TOLERANCES = {"float32": dict(atol=1e-5, rtol=1e-5), "bfloat16": dict(atol=2e-2, rtol=2e-2)}


def np_causal_attention(q, k, v, scale):
    """float64: query t sits at position S - T + t and sees keys 0 .. S - T + t."""
    t, n, _ = q.shape
    s, kh, _ = k.shape
    group = n // kh
    visible = np.arange(s)[None, :] <= (s - t + np.arange(t))[:, None]
    out = np.zeros((t, n, v.shape[-1]))
    for head in range(n):
        logits = np.where(visible, q[:, head] @ k[:, head // group].T * scale, -np.inf)
        w = np.exp(logits - logits.max(axis=-1, keepdims=True))
        out[:, head] = (w / w.sum(axis=-1, keepdims=True)) @ v[:, head // group]
    return out


# (T, S, N, K, Hk, Hv, dtype): GQA prefill over a cached prefix not a multiple of Z = 64;
# MLA-shaped absorbed decode (K = 1, key [latent 32 | rope 8], value = latent); no cache (T = S).
CASES = [(5, 70, 4, 2, 16, 16, "float32"), (1, 130, 4, 1, 40, 32, "bfloat16"), (9, 9, 4, 4, 16, 16, "float32")]


@pytest.mark.parametrize("t,s,n,kh,hk,hv,dtype", CASES)
def test_attention_pallas_matches_dense(t, s, n, kh, hk, hv, dtype):
    rng = np.random.default_rng(t + s)
    q, k = rng.standard_normal((t, n, hk)), rng.standard_normal((s, kh, hk))
    v = k[:, :, :hv] if hk != hv else rng.standard_normal((s, kh, hv))
    q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
    scale = hk ** -0.5
    expected = np_causal_attention(*(np.asarray(x.astype(jnp.float32), np.float64) for x in (q, k, v)), scale)
    out = attention_pallas(q, k, v, scale=scale)
    assert out.dtype == jnp.dtype(dtype) and out.shape == (t, n, hv)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), expected, **TOLERANCES[dtype])
    routed = dense.attention(q, k, v, scale=scale, implementation="pallas")
    np.testing.assert_array_equal(np.asarray(routed), np.asarray(out))


def test_attention_pallas_empty_and_invalid():
    q = jnp.zeros((0, 4, 16))
    k = jnp.zeros((3, 2, 16))
    assert attention_pallas(q, k, k, scale=0.25).shape == (0, 4, 16)
    with pytest.raises(ValueError, match="k: S=3 must be >= T=4"):
        attention_pallas(jnp.zeros((4, 4, 16)), k, k, scale=0.25)
    with pytest.raises(ValueError, match="block_tokens: block size Z=48"):
        attention_pallas(jnp.zeros((2, 4, 16)), k, k, scale=0.25, block_tokens=48)
    with pytest.raises(ValueError, match="v: expected shape"):
        attention_pallas(jnp.zeros((2, 4, 16)), k, k[:2], scale=0.25)
