"""The weights fingerprint that scopes the KV store's keys (dualpath_jax.model.fingerprint)."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from dualpath_jax.model import get_spec, init_params, weights_fingerprint
from dualpath_jax.model.checkpoint import restore_params, save_params


@pytest.fixture(scope="module")
def params():
    return init_params(get_spec("tiny-gqa"), jax.random.PRNGKey(0))


def _host(params):
    return jax.tree.map(np.array, params)


def test_equal_weights_loaded_twice_have_one_fingerprint(params, tmp_path):
    fp = weights_fingerprint(params)
    assert len(fp) == 32 and int(fp, 16) >= 0
    path = save_params(tmp_path / "ckpt", params)
    first, second = restore_params(path, like=params), restore_params(path, like=params)
    assert weights_fingerprint(first) == weights_fingerprint(second) == fp
    assert weights_fingerprint(_host(params)) == fp  # host numpy copies: the same bits, the same fingerprint
    assert weights_fingerprint(init_params(get_spec("tiny-gqa"), jax.random.PRNGKey(0))) == fp  # same seed


def test_any_change_of_the_weights_changes_the_fingerprint(params):
    fp = weights_fingerprint(params)
    assert weights_fingerprint(init_params(get_spec("tiny-gqa"), jax.random.PRNGKey(1))) != fp  # another seed
    one = _host(params)  # one element, by one ulp
    w = one["layers"][3]["wv"]
    w[5, 7] = np.nextafter(w[5, 7], np.float32(np.inf))
    assert weights_fingerprint(one) != fp
    swapped = _host(params)  # two elements swapped: the sum of the values is the same
    w = swapped["layers"][0]["wq"]
    w[0, 0], w[1, 2] = w[1, 2].copy(), w[0, 0].copy()
    assert w[0, 0] != w[1, 2] and weights_fingerprint(swapped) != fp
    transposed = _host(params)  # a square matrix transposed: same shape, same multiset of values
    transposed["layers"][0]["wo"] = np.ascontiguousarray(transposed["layers"][0]["wo"].T)
    assert transposed["layers"][0]["wo"].shape == params["layers"][0]["wo"].shape
    assert weights_fingerprint(transposed) != fp
    moved = _host(params)  # two leaves of one shape exchanged
    moved["layers"][0]["wk"], moved["layers"][0]["wv"] = moved["layers"][0]["wv"], moved["layers"][0]["wk"]
    assert weights_fingerprint(moved) != fp
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)  # another dtype
    assert weights_fingerprint(bf16) != fp
    assert weights_fingerprint(jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), params)) == \
        weights_fingerprint(bf16)


def test_fingerprint_of_odd_leaves():
    a = {"x": np.arange(4, dtype=np.float64), "n": np.arange(3, dtype=np.int32), "b": np.array([True, False])}
    fp = weights_fingerprint(a)
    b = {**a, "x": a["x"].copy()}
    b["x"][2] += 2.0**-40  # below float32 resolution: 8-byte leaves are hashed as their own bits
    assert weights_fingerprint(b) != fp
    assert weights_fingerprint({**a, "b": np.array([False, True])}) != fp
    with pytest.raises(ValueError, match="no array leaves"):
        weights_fingerprint({})


def test_int4_leaves_are_fingerprinted_and_other_leaves_named():
    """4-bit integers (quantized checkpoints) hash by value, host and device alike; a string or a
    complex leaf is a ValueError naming its path, not a JAX tracing error."""
    q = np.arange(-8, 8, dtype=np.int8).astype(ml_dtypes.int4)
    fp = weights_fingerprint({"q": q})
    assert weights_fingerprint({"q": jnp.asarray(q)}) == fp
    assert weights_fingerprint({"q": q[::-1].copy()}) != fp
    with pytest.raises(ValueError, match=r"params\['meta'\]: a str\d* leaf"):
        weights_fingerprint({"w": np.ones(2, np.float32), "meta": "step 1000"})
    with pytest.raises(ValueError, match=r"params\['z'\]: a complex64 leaf"):
        weights_fingerprint({"z": np.ones(2, np.complex64)})
