"""Attention kernels: plain-jnp references, Pallas kernels and dispatchers.

The model calls :func:`attention` for one sequence with contiguous KV; block-KV kernels for
ragged batches (prefill over a cached prefix, decode, KV scatter) live in their own sub-packages.
"""

from dualpath_jax.kernels._flash import check_block_tokens, resolve_implementation
from dualpath_jax.kernels.decode_attention import decode_attention, decode_attention_mla
from dualpath_jax.kernels.dense import attention, attention_reference
from dualpath_jax.kernels.kv_write import kv_write
from dualpath_jax.kernels.prefill_attention import prefill_attention, prefill_attention_mla

__all__ = ["attention", "attention_reference", "check_block_tokens", "decode_attention", "decode_attention_mla",
           "kv_write", "prefill_attention", "prefill_attention_mla", "resolve_implementation"]
