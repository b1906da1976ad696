"""Model invariants: prefix consistency (layer-by-layer over cached KV == one pass), batching,
and an independent plain-numpy reference forward for the GQA family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualpath_jax.model import (empty_layer_kv, forward, forward_batch, forward_with_cache, get_spec,
                                init_params, kv_concat)

PREFIXES = [0, 1, 63, 64, 65, 300]


@pytest.fixture(scope="module", params=["tiny-gqa", "tiny-mla"])
def model(request):
    spec = get_spec(request.param)
    params = init_params(spec, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (320,), 0, spec.vocab_size)
    return spec, params, tokens, forward(params, spec, tokens)


@pytest.mark.parametrize("cached", PREFIXES)
def test_prefix_consistency(model, cached):
    """Logits of the last tokens run against the cached KV of the prefix equal the one-pass logits."""
    spec, params, tokens, full = model
    caches = None
    if cached:
        _, caches = forward_with_cache(params, spec, tokens[:cached], None)
    logits, new_kv = forward_with_cache(params, spec, tokens[cached:], caches)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(full[cached:]), atol=1e-5, rtol=0)
    assert len(new_kv) == spec.n_layers and new_kv[0][0].shape[0] == tokens.shape[0] - cached


def test_incremental_decode_matches_one_pass(model):
    """Prefill 64 tokens, then decode 5 tokens one at a time, growing the cache each step."""
    spec, params, tokens, full = model
    _, caches = forward_with_cache(params, spec, tokens[:64], None)
    for t in range(64, 69):
        logits, new = forward_with_cache(params, spec, tokens[t:t + 1], caches)
        np.testing.assert_allclose(np.asarray(logits[0]), np.asarray(full[t]), atol=1e-5, rtol=0)
        caches = [kv_concat(c, n) for c, n in zip(caches, new)]


def test_empty_cache_equals_no_cache(model):
    spec, params, tokens, full = model
    caches = [empty_layer_kv(spec) for _ in range(spec.n_layers)]
    logits, _ = forward_with_cache(params, spec, tokens[:20], caches)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:20]), atol=1e-5, rtol=0)


def test_forward_batch(model):
    spec, params, tokens, full = model
    batch = jnp.stack([tokens[:32], tokens[32:64]])
    out = forward_batch(params, spec, batch)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(full[:32]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(forward(params, spec, tokens[32:64])), atol=1e-5)


def test_cache_layer_count_checked(model):
    spec, params, tokens, _ = model
    with pytest.raises(ValueError, match="caches"):
        forward_with_cache(params, spec, tokens[:4], [empty_layer_kv(spec)])


def _np_rms(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps))


def _np_rope(x, pos, theta):
    dim = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    ang = pos[:, None] * inv[None]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def test_gqa_matches_plain_numpy_reference():
    """An independent float64 numpy transcription of Qwen2's forward (explicit loops over heads)."""
    spec = get_spec("tiny-gqa")
    params = init_params(spec, jax.random.PRNGKey(3))
    tokens = np.arange(40) * 7 % spec.vocab_size
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    t = len(tokens)
    h = p["embed"][tokens]
    pos = np.arange(t, dtype=np.float64)
    group = spec.n_heads // spec.n_kv_heads
    for lp in p["layers"]:
        x = _np_rms(h, lp["attn_norm"], spec.rms_norm_eps)
        q = (x @ lp["wq"] + lp["bq"]).reshape(t, spec.n_heads, spec.head_dim)
        k = (x @ lp["wk"] + lp["bk"]).reshape(t, spec.n_kv_heads, spec.head_dim)
        v = (x @ lp["wv"] + lp["bv"]).reshape(t, spec.n_kv_heads, spec.head_dim)
        q, k = _np_rope(q, pos, spec.rope_theta), _np_rope(k, pos, spec.rope_theta)
        out = np.zeros((t, spec.n_heads, spec.head_dim))
        for n in range(spec.n_heads):
            s = q[:, n] @ k[:, n // group].T / np.sqrt(spec.head_dim)
            s = np.where(np.tril(np.ones((t, t))) > 0, s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            out[:, n] = (w / w.sum(-1, keepdims=True)) @ v[:, n // group]
        h = h + out.reshape(t, -1) @ lp["wo"]
        x = _np_rms(h, lp["mlp_norm"], spec.rms_norm_eps)
        g = x @ lp["mlp"]["w_gate"]
        h = h + ((g / (1 + np.exp(-g))) * (x @ lp["mlp"]["w_up"])) @ lp["mlp"]["w_down"]
    want = _np_rms(h, p["final_norm"], spec.rms_norm_eps) @ p["lm_head"]
    got = np.asarray(forward(params, spec, jnp.asarray(tokens, jnp.int32)))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_bfloat16_params_run_close_to_f32():
    spec = get_spec("tiny-mla")
    params = init_params(spec, jax.random.PRNGKey(0))
    tokens = jnp.arange(30) % spec.vocab_size
    f32 = np.asarray(forward(params, spec, tokens))
    bf = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    got = np.asarray(forward(bf, spec, tokens))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, f32, atol=3e-2, rtol=0)
