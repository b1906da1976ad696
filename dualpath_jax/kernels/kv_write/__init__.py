"""Scatter the new tokens' KV into a block (paged) pool, exactly. See :func:`kv_write`."""

from dualpath_jax.kernels.kv_write.api import kv_write
from dualpath_jax.kernels.kv_write.kernel import kv_write_pallas
from dualpath_jax.kernels.kv_write.reference import kv_write_reference

__all__ = ["kv_write", "kv_write_pallas", "kv_write_reference"]
