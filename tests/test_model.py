"""Model invariants: prefix consistency (layer-by-layer over cached KV == one pass), batching,
and independent plain-numpy references for the GQA family's forward and DeepSeek's MoE layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualpath_jax.model import (empty_layer_kv, forward, forward_batch, forward_with_cache, get_spec,
                                init_params, kv_concat)
from dualpath_jax.model.layers import moe_mlp

PREFIXES = [0, 1, 63, 64, 65, 300]


@pytest.fixture(scope="module", params=["tiny-gqa", "tiny-mla", "tiny-moe"])
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


def test_forward_rejects_non_1d_tokens(model):
    """A batch (or a scalar) given to ``forward`` is named as ``tokens`` and pointed to ``forward_batch``."""
    spec, params, tokens, _ = model
    for bad in (jnp.stack([tokens[:8], tokens[8:16]]), tokens[0]):
        with pytest.raises(ValueError, match=r"^tokens: .*forward_batch"):
            forward(params, spec, bad)


def test_init_params_rejects_non_floating_dtype():
    """An integer dtype would round every N(0, 0.02) weight to 0: refused, naming ``dtype``."""
    spec = get_spec("tiny-gqa")
    for bad in (jnp.int32, "int8", jnp.bool_):
        with pytest.raises(ValueError, match=r"^dtype: "):
            init_params(spec, jax.random.PRNGKey(0), bad)
    for ok in (jnp.float32, jnp.bfloat16):
        params = init_params(spec, jax.random.PRNGKey(0), ok)
        leaves = jax.tree_util.tree_leaves(params)
        assert all(x.dtype == ok for x in leaves)
        assert float(jnp.abs(params["embed"].astype(jnp.float32)).max()) > 0


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


def _np_swiglu(x, w_gate, w_up, w_down):
    g = x @ w_gate
    return ((g / (1 + np.exp(-g))) * (x @ w_up)) @ w_down


def _np_moe(mlp, spec, x):
    """DeepSeek's MoE token by token, as the reference code states it (float64)."""
    e, k, g = spec.n_routed_experts, spec.n_activated_experts, spec.moe_n_group
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        logits = x[t] @ mlp["router"]
        s = 1 / (1 + np.exp(-logits)) if spec.moe_scoring == "sigmoid" else np.exp(logits) / np.exp(logits).sum()
        choice = s + mlp["router_bias"] if spec.moe_topk_method == "noaux_tc" else s.copy()
        if spec.moe_topk_method != "greedy":
            groups = choice.reshape(g, e // g)
            rank = (np.sort(groups, -1)[:, -2:].sum(-1) if spec.moe_topk_method == "noaux_tc" else groups.max(-1))
            kept = np.argsort(-rank)[:spec.moe_topk_group]
            allowed = np.isin(np.arange(e) // (e // g), kept)
            choice = np.where(allowed, choice, -np.inf)
        top = np.argsort(-choice)[:k]
        w = s[top] / (s[top].sum() + 1e-20) if spec.moe_norm_topk else s[top]
        for j, wj in zip(top, w * spec.moe_routed_scale):
            out[t] += wj * _np_swiglu(x[t], mlp["w_gate"][j], mlp["w_up"][j], mlp["w_down"][j])
    if spec.n_shared_experts:
        out += _np_swiglu(x, mlp["shared"]["w_gate"], mlp["shared"]["w_up"], mlp["shared"]["w_down"])
    return out


@pytest.mark.parametrize("routing", [
    dict(moe_scoring="softmax", moe_topk_method="greedy", moe_norm_topk=False, moe_routed_scale=1.0),
    dict(moe_scoring="softmax", moe_topk_method="group_limited_greedy", moe_n_group=4, moe_topk_group=1),
    dict(moe_scoring="softmax", moe_topk_method="greedy", n_activated_experts=3, n_shared_experts=0),
    dict(moe_scoring="sigmoid", moe_topk_method="noaux_tc", moe_n_group=4, moe_topk_group=2, moe_norm_topk=True,
         moe_routed_scale=2.5),
    dict(moe_scoring="sigmoid", moe_topk_method="noaux_tc", moe_n_group=1, moe_topk_group=1, moe_norm_topk=True,
         n_shared_experts=2),
], ids=["v2-lite-greedy", "v2-group-limited", "top3-no-shared", "v3-noaux-tc", "v3-one-group-two-shared"])
def test_moe_layer_matches_a_per_token_numpy_reference(routing):
    spec = get_spec("tiny-moe").replace(**routing)
    mlp = init_params(spec, jax.random.PRNGKey(4))["layers"][1]["mlp"]
    mlp["router"] = mlp["router"] * 50  # clear margins between experts (no near-ties for top-k to break)
    if "router_bias" in mlp:
        mlp["router_bias"] = mlp["router_bias"] * 5
    for key in ("w_gate", "w_up", "w_down"):  # experts' outputs of order 0.1, not 1e-3
        mlp[key] = mlp[key] * 3
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (37, spec.d_model)))
    want = _np_moe(jax.tree.map(lambda a: np.asarray(a, np.float64), mlp), spec, x.astype(np.float64))
    got = np.asarray(jax.jit(moe_mlp, static_argnums=1)(mlp, spec, jnp.asarray(x)))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # the routed experts' share of the output is large: doubling their weights moves it
    other = spec.replace(moe_routed_scale=spec.moe_routed_scale * 2)
    assert np.abs(np.asarray(moe_mlp(mlp, other, jnp.asarray(x))) - want).max() > 1e-2


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones():
    """YaRN (arXiv 2309.00071 section 3): below the ramp the trained frequency, above it that frequency
    over the factor, linear in between; linear scaling divides every frequency."""
    from dualpath_jax.model.layers import rope_inv_freq
    from dualpath_jax.model.spec import RopeScaling

    rope = RopeScaling(kind="yarn", factor=40.0, original_max_position=4096)
    base = 10000.0 ** (-np.arange(0, 64, 2) / 64)
    got = np.asarray(rope_inv_freq(64, 10000.0, rope))
    low, high = rope.yarn_ramp_bounds(64, 10000.0)
    assert 0 < low < high < 32
    np.testing.assert_allclose(got[:low + 1], base[:low + 1], rtol=1e-6)
    np.testing.assert_allclose(got[high:], base[high:] / 40, rtol=1e-6)
    mid = (low + high) // 2
    ramp = (mid - low) / (high - low)
    np.testing.assert_allclose(got[mid], base[mid] * (1 - ramp) + base[mid] / 40 * ramp, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(rope_inv_freq(64, 10000.0, RopeScaling(kind="linear", factor=4.0))),
                               base / 4, rtol=1e-6)
