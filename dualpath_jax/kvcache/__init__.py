"""KV-cache block layouts (Full / Layer Blocks), packing, and prefix-hash-chain block keys.

Imports only :mod:`dualpath_jax.model.spec`, :mod:`dualpath_jax.config`, numpy, ml_dtypes and the
stdlib: no JAX (``tests/test_layering.py`` checks what importing it loads).
"""

from dualpath_jax.kvcache.blocks import (decode_tokens, encode_tokens, full_block_from_layer_blocks, gather_layer,
                                         layer_block, num_full_blocks, pack_full_blocks, unpack_full_blocks)
from dualpath_jax.kvcache.keys import KEY_HEX_CHARS, BlockKey, block_keys, chain_key
from dualpath_jax.kvcache.layout import FP8_SCALE_GROUP, KV_DTYPES, BlockLayout, KVField, layout_for, spec_digest

__all__ = [
    "BlockKey", "BlockLayout", "FP8_SCALE_GROUP", "KEY_HEX_CHARS", "KVField", "KV_DTYPES", "block_keys",
    "chain_key", "decode_tokens", "encode_tokens", "full_block_from_layer_blocks", "gather_layer",
    "layer_block", "layout_for", "num_full_blocks", "pack_full_blocks", "spec_digest", "unpack_full_blocks",
]
