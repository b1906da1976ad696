"""Block keys: a prefix hash chain over each Z-token block's token ids.

The paper stores KV as a trie whose nodes are Full Blocks (PAPER.md section 2.2, appendix A.5).
A hash chain gives the same structure without a central index: the key of block ``i`` is

    key_i = BLAKE2b-128(key_{i-1} || int32-LE token ids of block i),  key_{-1} = layout scope

so a block's key depends on every token before it (two sequences share block i's key iff they
share the first ``(i+1)*Z`` tokens), and keys of different model specs, weights or layouts never
collide because the chain is rooted at :attr:`BlockLayout.scope` (which covers the whole ModelSpec,
the byte layout and the ``namespace``, the weights fingerprint; :mod:`dualpath_jax.kvcache.layout`).
Keys are 32-character lowercase hex strings. Only complete blocks get keys; a trailing partial block has none.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dualpath_jax.kvcache.layout import BlockLayout

__all__ = ["BlockKey", "block_keys", "chain_key", "KEY_HEX_CHARS"]

BlockKey = str
"""A block key: 32 lowercase hex characters (128-bit BLAKE2b digest)."""

KEY_HEX_CHARS = 32
_PERSON = b"dpkv-chain"


def chain_key(parent: BlockKey, block_token_ids: np.ndarray) -> BlockKey:
    """Key of a block given its parent's key (or the scope for block 0) and its token ids.

    Raises:
      ValueError: a token id outside ``[0, 2**31)``.
    """
    ids = np.asarray(block_token_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= 2**31):
        raise ValueError(f"tokens: ids must be in [0, 2**31) (got min {ids.min()}, max {ids.max()})")
    h = hashlib.blake2b(digest_size=KEY_HEX_CHARS // 2, person=_PERSON)
    h.update(bytes.fromhex(parent))
    h.update(ids.astype("<i4").tobytes())
    return h.hexdigest()


def block_keys(layout: BlockLayout, tokens, *, max_blocks: int | None = None) -> list[BlockKey]:
    """Keys of the complete Z-token blocks of ``tokens i32[S]``, in order.

    Args:
      layout: gives Z and the scope (the chain's root).
      tokens: token ids, 1-D.
      max_blocks: optional cap on the number of keys returned.

    Returns:
      ``min(S // Z, max_blocks)`` keys.

    Raises:
      ValueError: ``tokens`` is not 1-D integers or holds an id outside ``[0, 2**31)``.
    """
    ids = np.asarray(tokens)
    if ids.ndim == 1 and ids.size == 0:  # ([] is float64 to numpy) no tokens: no block
        return []
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"tokens: expected a 1-D integer array, got {ids.dtype}{list(ids.shape)}")
    z = layout.block_tokens
    n = ids.shape[0] // z
    if max_blocks is not None:
        n = min(n, max(0, int(max_blocks)))
    keys, parent = [], layout.scope
    for i in range(n):
        parent = chain_key(parent, ids[i * z:(i + 1) * z])
        keys.append(parent)
    return keys
