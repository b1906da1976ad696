"""Prefill attention over a block (paged) KV cache: new tokens attend fully to their cached
prefix and causally to themselves. GQA (any N/K, incl. MHA and MQA) and MLA (absorbed latent
form). See :func:`prefill_attention` and :func:`prefill_attention_mla`."""

from dualpath_jax.kernels.prefill_attention.api import prefill_attention, prefill_attention_mla
from dualpath_jax.kernels.prefill_attention.kernel import prefill_pallas
from dualpath_jax.kernels.prefill_attention.reference import prefill_reference, prefill_reference_mla

__all__ = ["prefill_attention", "prefill_attention_mla", "prefill_pallas", "prefill_reference",
           "prefill_reference_mla"]
