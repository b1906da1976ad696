import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualpath_jax.model import get_spec, init_params
from dualpath_jax.model.checkpoint import restore_params, save_params


@pytest.mark.parametrize("name,dtype", [("tiny-gqa", jnp.float32), ("tiny-mla", jnp.bfloat16)])
def test_orbax_round_trip_bit_exact(tmp_path, name, dtype):
    params = init_params(get_spec(name), jax.random.PRNGKey(7), dtype=dtype)
    save_params(tmp_path / "ckpt", params)
    for restored in (restore_params(tmp_path / "ckpt", like=params), restore_params(tmp_path / "ckpt")):
        assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(params)
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(restored)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_save_refuses_overwrite_and_restore_missing(tmp_path):
    params = init_params(get_spec("tiny-gqa"), jax.random.PRNGKey(0))
    save_params(tmp_path / "c", params)
    with pytest.raises(FileExistsError):
        save_params(tmp_path / "c", params)
    with pytest.raises(FileNotFoundError):
        restore_params(tmp_path / "missing")
