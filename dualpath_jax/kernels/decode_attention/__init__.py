"""Decode attention over a block (paged) KV cache: one query token per sequence, split over KV
blocks (flash-decoding). GQA (any N/K) and MLA (absorbed latent form). See
:func:`decode_attention` and :func:`decode_attention_mla`."""

from dualpath_jax.kernels.decode_attention.api import decode_attention, decode_attention_mla
from dualpath_jax.kernels.decode_attention.kernel import decode_pallas
from dualpath_jax.kernels.decode_attention.reference import decode_reference, decode_reference_mla

__all__ = ["decode_attention", "decode_attention_mla", "decode_pallas", "decode_reference",
           "decode_reference_mla"]
