"""A fingerprint of a model's weights from their content (the KV store's ``namespace``).

Cached KV is a function of the tokens *and the weights*: two parameter sets of one architecture
(another seed, another checkpoint of the same ``config.json``) must never read each other's
blocks. The store's key scope (:attr:`dualpath_jax.kvcache.BlockLayout.scope`) therefore includes
:func:`weights_fingerprint`, which depends only on the parameters' values, tree paths, shapes and
dtypes: two processes or hosts that load the same weights get the same fingerprint (and share
their cache), weights that differ in one element or one leaf's position do not.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["weights_fingerprint"]

# odd multipliers / constants of MurmurHash3's 32-bit finalizer and the golden ratio
_M1, _M2, _GOLD, _SEED2 = 0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9, 0x27D4EB2F


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finalizer: a bijection of uint32 that mixes every input bit into every output bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(_M1)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(_M2)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The bits of ``x`` as a flat ``uint32[n]`` (1- and 2-byte elements widened, 8-byte ones split;
    4-bit integers by value)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    elif jnp.issubdtype(x.dtype, jnp.integer) and jnp.iinfo(x.dtype).bits < 8:  # int4 / uint4: no bitcast
        x = x.astype(jnp.int8 if jnp.issubdtype(x.dtype, jnp.signedinteger) else jnp.uint8)
    size = x.dtype.itemsize
    if size < 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32).reshape(-1)
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)  # 8 bytes: a trailing axis of 2 words


def _on_device(x) -> jax.Array:
    """``x`` as a jax.Array of the same bits (a host array of 8-byte elements as 32-bit words, which
    JAX without x64 would otherwise round to 4-byte values)."""
    if isinstance(x, jax.Array):
        return x
    a = np.ascontiguousarray(x)
    return jnp.asarray(a.view(np.uint32) if a.dtype.itemsize == 8 else a)


@jax.jit
def _leaf_checksum(x: jax.Array) -> jax.Array:
    """``uint32[2]``: two position-keyed sums (mod 2**32) of mixed 32-bit words of ``x``.

    Word ``w`` at flat position ``i`` contributes ``fmix(w * M1 ^ fmix(i + GOLD))`` to the first
    lane and ``fmix((w ^ fmix(i * GOLD + SEED2)) * M2)`` to the second: each term is a bijection
    of ``w`` for a fixed ``i``, so changing one element always changes both sums, and the
    position key makes permutations (e.g. a transposed matrix of the same shape) differ. Integer
    sums do not depend on the reduction order, so every device and host gets the same value."""
    w = _words(x)
    i = jnp.arange(w.shape[0], dtype=jnp.uint32)
    a = _fmix32((w * jnp.uint32(_M1)) ^ _fmix32(i + jnp.uint32(_GOLD)))
    b = _fmix32((w ^ _fmix32(i * jnp.uint32(_GOLD) + jnp.uint32(_SEED2))) * jnp.uint32(_M2))
    return jnp.stack([jnp.sum(a, dtype=jnp.uint32), jnp.sum(b, dtype=jnp.uint32)])


def weights_fingerprint(params) -> str:
    """Fingerprint of a parameter pytree's content: 32 lowercase hex characters.

    Covers, for every array leaf in tree order: its path (``jax.tree_util.keystr``), shape,
    dtype and a 64-bit checksum of its bits (two 32-bit position-keyed sums, computed on the
    device holding the leaf, or the default device for host arrays: one pass over the weights,
    cheap next to a forward); the per-leaf records are hashed with BLAKE2b-128 (person
    ``dpkv-weights``). Equal weights give equal fingerprints whatever device, host or process
    loaded them; weights that differ in any element, a shape, a dtype or a leaf's name differ
    (except with probability about 2**-64 per changed leaf).

    Args:
      params: a pytree of real or boolean arrays or scalars (numpy or ``jax.Array``: float64 to
        fp8, bfloat16, integers down to int4, bool), e.g.
        :func:`~dualpath_jax.model.params.init_params`'s output or a loaded checkpoint.

    Raises:
      ValueError: ``params`` has no leaves, or a leaf that is not a real or boolean array (a
        string, a complex array), named by its path.
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError("params: no array leaves to fingerprint")
    dtypes = [np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype) for _, x in leaves]
    for (path, _), dtype in zip(leaves, dtypes):
        if not (dtype == np.bool_ or jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
            raise ValueError(f"params{jax.tree_util.keystr(path)}: a {dtype.name} leaf has no weights "
                             "fingerprint (real or boolean arrays only)")
    # one leaf at a time: a host leaf's device copy is freed before the next is made (a whole model's
    # weights are never copied to the device at once)
    sums = [np.asarray(_leaf_checksum(_on_device(x))) if np.size(x) else np.zeros(2, np.uint32) for _, x in leaves]
    h = hashlib.blake2b(digest_size=16, person=b"dpkv-weights")
    for (path, x), dtype, s in zip(leaves, dtypes, sums):
        h.update(f"{jax.tree_util.keystr(path)}|{tuple(np.shape(x))}|{dtype.name}|".encode())
        h.update(np.asarray(s, np.uint32).astype("<u4").tobytes())
    return h.hexdigest()
