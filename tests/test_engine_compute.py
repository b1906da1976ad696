"""Runtime compute (bucketed prefill layer, batched decode step) against the model's own functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.engine.compute import (bucket_blocks, bucket_tokens, check_supported, decode_step, get_block,
                                         last_token_logits, prefill_kv, prefill_layer, reference_greedy, set_blocks,
                                         top2_gap)
from dualpath_jax.engine.profile import ProfileSample, fit_time_model
from dualpath_jax.model import forward, forward_with_cache, get_spec, init_params
from dualpath_jax.model import cost

Z = 64


@pytest.fixture(scope="module")
def model():
    spec = get_spec("tiny-gqa")
    return spec, jax.tree.map(np.asarray, init_params(spec, jax.random.PRNGKey(0)))


def test_buckets():
    assert [bucket_tokens(n) for n in (1, 16, 17, 100, 128, 129)] == [16, 16, 32, 128, 128, 256]
    assert [bucket_blocks(p) for p in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]


def test_check_supported_names_field():
    check_supported(get_spec("tiny-gqa"))
    with pytest.raises(ConfigError, match="model.name"):
        check_supported(get_spec("tiny-mla"))


def _prefill(params, spec, tokens, cached_kv, start):
    """Run every layer of prefill_layer over tokens[start:] with cached_kv (per layer [start, K, H] x2)."""
    t = len(tokens) - start
    t_b, p_b = bucket_tokens(t), bucket_blocks(-(-start // Z))
    h = np.zeros((t_b, spec.d_model), np.float32)
    h[:t] = np.asarray(params["embed"])[tokens[start:]]
    h = jnp.asarray(h)
    pos = jnp.arange(start, start + t_b, dtype=jnp.int32)
    new = []
    for layer, lp in enumerate(params["layers"]):
        caches = []
        for x in (cached_kv[layer] if cached_kv else (np.zeros((0, 2, 16), np.float32),) * 2):
            buf = np.zeros((p_b * Z, spec.n_kv_heads, spec.head_dim), np.float32)
            buf[:start] = x
            caches.append(jnp.asarray(buf.reshape(p_b, Z, spec.n_kv_heads, spec.head_dim)))
        h, (k, v) = prefill_layer(lp, spec, h, pos, caches[0], caches[1], jnp.int32(start), jnp.int32(t))
        new.append((np.asarray(k)[:t], np.asarray(v)[:t]))
    return h, new, t


def test_prefill_layer_over_cached_prefix_matches_one_pass_forward(model):
    spec, params = model
    tokens = np.random.default_rng(1).integers(0, spec.vocab_size, 150).astype(np.int32)
    ref = np.asarray(forward(params, spec, jnp.asarray(tokens)))
    h1, kv1, t1 = _prefill(params, spec, tokens[:70], None, 0)  # 70 tokens, no cache
    h2, _, t2 = _prefill(params, spec, tokens, kv1, 70)  # 80 tokens over a 70-token cache (2 blocks padded)
    got1 = np.asarray(last_token_logits(params, spec, h1, jnp.int32(t1 - 1)))
    got2 = np.asarray(last_token_logits(params, spec, h2, jnp.int32(t2 - 1)))
    np.testing.assert_allclose(got1, ref[69], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got2, ref[149], atol=1e-5, rtol=1e-5)
    # the chunked KV equals the one-pass cached KV of the model
    _, kvs = forward_with_cache(params, spec, jnp.asarray(tokens[:70]), None)
    for (k, v), (rk, rv) in zip(kv1, kvs):
        np.testing.assert_allclose(k, np.asarray(rk), atol=1e-5)
        np.testing.assert_allclose(v, np.asarray(rv), atol=1e-5)


def test_prefill_kv_chunks_match_model_cache(model):
    spec, params = model
    tokens = np.random.default_rng(2).integers(0, spec.vocab_size, 200).astype(np.int32)
    got = prefill_kv(params, spec, tokens, jax.devices()[0], chunk_tokens=64, block_tokens=Z)
    _, ref = forward_with_cache(params, spec, jnp.asarray(tokens), None)
    for (k, v), (rk, rv) in zip(got, ref):
        assert k.shape == (200, spec.n_kv_heads, spec.head_dim)
        np.testing.assert_allclose(k, np.asarray(rk), atol=1e-5)
        np.testing.assert_allclose(v, np.asarray(rv), atol=1e-5)


def test_decode_step_matches_forward_and_leaves_idle_rows_alone(model):
    spec, params = model
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, spec.vocab_size, 100).astype(np.int32)
    _, kvs = forward_with_cache(params, spec, jnp.asarray(prompt), None)
    pt = 8
    shape = (pt, Z, spec.n_kv_heads, spec.head_dim)
    marker = np.full(shape, 7.0, np.float32)  # block 5 belongs to an idle row: must stay untouched
    k_pools = tuple(jnp.asarray(marker) for _ in range(spec.n_layers))
    v_pools = tuple(jnp.asarray(marker) for _ in range(spec.n_layers))
    ids = np.array([2, 0], np.int32)  # the request's blocks, out of order on purpose
    kb = np.zeros((spec.n_layers, 2, Z, spec.n_kv_heads, spec.head_dim), np.float32)
    vb = np.zeros_like(kb)
    for layer, (k, v) in enumerate(kvs):
        kb[layer].reshape(2 * Z, -1, spec.head_dim)[:100] = np.asarray(k)
        vb[layer].reshape(2 * Z, -1, spec.head_dim)[:100] = np.asarray(v)
    k_pools, v_pools = set_blocks(k_pools, v_pools, jnp.asarray(ids), jnp.asarray(kb), jnp.asarray(vb))
    seq = list(prompt) + [int(np.argmax(np.asarray(forward(params, spec, jnp.asarray(prompt)))[-1]))]
    table = np.zeros((4, 2), np.int32)
    table[0] = ids
    table[2] = [5, 5]
    got_gaps = []
    for _ in range(6):
        tokens = np.zeros(4, np.int32)
        tokens[0], tokens[2] = seq[-1], 3
        positions = np.zeros(4, np.int32)
        positions[0], positions[2] = len(seq) - 1, 10
        active = np.array([True, False, False, False])
        nxt, gaps, k_pools, v_pools = decode_step(params, spec, jnp.asarray(tokens), jnp.asarray(positions), k_pools,
                                                  v_pools, jnp.asarray(table), jnp.asarray(active))
        seq.append(int(nxt[0]))
        got_gaps.append(float(gaps[0]))
    # one no-cache forward over the decoded sequence: greedy at every decoded position
    ref = np.asarray(forward(params, spec, jnp.asarray(np.array(seq[:-1], np.int32))))[100:]
    assert seq[101:] == [int(t) for t in ref.argmax(axis=-1)]
    np.testing.assert_allclose(got_gaps, [top2_gap(r) for r in ref], atol=1e-5)
    k5, v5 = get_block(k_pools, v_pools, jnp.int32(5))
    assert np.all(np.asarray(k5) == 7.0) and np.all(np.asarray(v5) == 7.0)
    # the decoded tokens' KV landed at positions 100.. of the request's blocks (block 0 holds 64..127)
    _, kv_all = forward_with_cache(params, spec, jnp.asarray(np.array(seq[:106], np.int32)), None)
    k0, _ = get_block(k_pools, v_pools, jnp.int32(0))
    np.testing.assert_allclose(np.asarray(k0)[0, 100 - 64:106 - 64], np.asarray(kv_all[0][0])[100:106], atol=1e-5)


def test_reference_greedy_chunked_equals_full(model):
    spec, params = model
    rng = np.random.default_rng(4)
    prompt = rng.integers(0, spec.vocab_size, 90).astype(np.int32)
    gen = rng.integers(0, spec.vocab_size, 12).astype(np.int32)
    full = reference_greedy(params, spec, prompt, gen)
    chunked = reference_greedy(params, spec, prompt, gen, chunk_tokens=32)
    np.testing.assert_array_equal(full[0], chunked[0])
    np.testing.assert_allclose(full[1], chunked[1], atol=1e-5)
    # independent check of the first position: argmax of a plain forward over the prompt
    logits = np.asarray(forward(params, spec, jnp.asarray(prompt)))[-1]
    assert full[0][0] == int(np.argmax(logits))
    expected_margin = logits.max() - logits[gen[0]]
    np.testing.assert_allclose(full[2][0], expected_margin, atol=1e-5)


def test_fit_time_model_recovers_known_rates():
    spec = get_spec("tiny-gqa")
    fpk = 4 * spec.n_heads * spec.head_dim  # GQA attention FLOPs per (query, key) per layer
    assert float(cost.prefill_flops(spec, 0, 1)["attention"]) == spec.n_layers * fpk
    a, b = 2e-6, 5e-11
    pairs = [(0, 64), (512, 32), (1024, 256), (2048, 16)]
    keys = lambda c, n: (2 * c + n + 1) * n / 2  # noqa: E731  sum_{i<n} (c + i + 1)
    samples = [ProfileSample(c, n, a * n + b * fpk * keys(c, n)) for c, n in pairs]
    tm = fit_time_model(spec, samples)
    assert tm.flops_per_key == fpk
    np.testing.assert_allclose([tm.seconds_per_token, tm.seconds_per_flop], [a, b], rtol=1e-6)
    # a negative per-token fit is clipped to a non-negative model
    samples = [ProfileSample(c, n, 1e-10 * fpk * keys(c, n) - 1e-7 * n) for c, n in pairs]
    tm = fit_time_model(spec, samples)
    assert tm.seconds_per_token >= 0 and tm.seconds_per_flop > 0
    with pytest.raises(ValueError, match="samples"):
        fit_time_model(spec, samples[:1])
