"""Attention kernels: plain-jnp references, Pallas kernels and dispatchers.

The model calls :func:`attention` for one sequence with contiguous KV; block-KV kernels for
ragged batches (prefill over a cached prefix, decode, KV scatter) live in their own sub-packages.
"""

from dualpath_jax.kernels.dense import attention, attention_reference

__all__ = ["attention", "attention_reference"]
