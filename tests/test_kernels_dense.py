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


@pytest.mark.parametrize("implementation", ["reference", "pallas"])
def test_both_paths_refuse_the_same_inputs(implementation):
    """``auto`` takes the reference on CPU and Pallas on GPU: a call must not pass on one and
    fail on the other, so both check scale, dtypes, ranks and heads alike."""
    q, k = jnp.zeros((2, 4, 16)), jnp.zeros((3, 2, 16))
    for bad, match in ((-1.0, "scale: must be finite and > 0"), (float("nan"), "scale: must be finite and > 0"),
                       (jnp.float32(0.25) * jnp.ones(()), None)):
        if match is None:  # a traced scale is not a static number
            import jax
            with pytest.raises(ValueError, match="scale: must be a static positive number"):
                jax.jit(lambda s: dense.attention(q, k, k, scale=s, implementation=implementation))(bad)
            continue
        with pytest.raises(ValueError, match=match):
            dense.attention(q, k, k, scale=bad, implementation=implementation)
    with pytest.raises(ValueError, match="q: query heads N=4 must be a positive multiple of KV heads K=0"):
        dense.attention(q, jnp.zeros((3, 0, 16)), jnp.zeros((3, 0, 16)), scale=0.25, implementation=implementation)
    with pytest.raises(ValueError, match="q: expected an array"):
        dense.attention([[[0.0]]], k, k, scale=0.25, implementation=implementation)
    with pytest.raises(ValueError, match="k: expected a floating dtype"):
        dense.attention(q, k.astype(jnp.int32), k, scale=0.25, implementation=implementation)
