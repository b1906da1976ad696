"""The model's layer-by-layer prefill and decode give the same logits on the Pallas kernels
(interpret mode off GPU) as on the plain-jnp reference attention."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dualpath_jax.model import forward_with_cache, get_spec, init_params, kv_concat

CACHED = 70  # a prefix that ends inside the second 64-token block
NEW = 6


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-mla"])
def test_pallas_prefill_and_decode_match_reference(name):
    spec = get_spec(name)
    params = init_params(spec, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (CACHED + NEW + 1,), 0, spec.vocab_size)
    _, caches = forward_with_cache(params, spec, tokens[:CACHED], None, implementation="reference")

    prefill = {impl: forward_with_cache(params, spec, tokens[CACHED:CACHED + NEW], caches, implementation=impl)
               for impl in ("reference", "pallas")}
    ref_logits, ref_kv = prefill["reference"]
    pallas_logits, pallas_kv = prefill["pallas"]
    np.testing.assert_allclose(np.asarray(pallas_logits), np.asarray(ref_logits), atol=1e-5, rtol=1e-5)
    for ref_layer, pallas_layer in zip(ref_kv, pallas_kv):
        for a, b in zip(ref_layer, pallas_layer):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)

    grown = [kv_concat(c, n) for c, n in zip(caches, ref_kv)]
    step = tokens[CACHED + NEW:]
    ref_step, _ = forward_with_cache(params, spec, step, grown, implementation="reference")
    pallas_step, _ = forward_with_cache(params, spec, step, grown, implementation="pallas")
    assert pallas_step.shape == (1, spec.vocab_size)
    np.testing.assert_allclose(np.asarray(pallas_step), np.asarray(ref_step), atol=1e-5, rtol=1e-5)
