"""Reading the numbers of a trace record: whole lengths and per-block hash ids.

Both trace formats (agentic and Mooncake) give a request's prompt as one hash id per block of
``block_tokens`` tokens. Writers differ in details that do not change the meaning, and every
loader accepts them alike:

* a length written as a whole float (``"in": 16003.0``) is that integer (at most
  :data:`MAX_TOKENS`), and so is a hash id up to ``2**53`` (a float beyond has lost its low bits:
  refused);
* a hash id may be any 64-bit integer, signed (``[-2**63, 2**63)``, e.g. Python's ``hash``) or
  unsigned (``[0, 2**64)``); its low 63 bits are kept (``id & (2**63 - 1)``), so the two spellings
  of one 64-bit pattern stay one id and every id fits ``int64`` >= 0. Two distinct ids of a file
  that differ only in the top bit would become one: for hashes this is as likely as a hash
  collision itself;
* the list holds one id per *full* block (``in // block_tokens`` ids), or one more for a last,
  partial block (``ceil(in / block_tokens)``; its id is dropped: engines cache whole blocks only);
* an empty list for a prompt of one or more full blocks (a recorder that saw no hashes) makes
  every block new: each gets an id derived from the trace's name and the request's place in it
  (the same wherever the file lies), never equal to another block's (up to 64-bit hash
  collisions), so none of them is ever a hit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from dualpath_jax.workload.tokens import splitmix64

__all__ = ["ID_MASK", "MAX_TOKENS", "whole_int", "token_count", "full_block_ids"]

ID_MASK = 2**63 - 1
MAX_TOKENS = 100_000_000
"""The longest prompt or generation a trace record may give, in tokens (far beyond any model's
context: a larger length is a typo, not a request)."""
_ID_LO, _ID_HI = -2**63, 2**64


def whole_int(v) -> int | None:
    """``v`` as an ``int`` when it is an integer or a float with an integral value (never a bool),
    else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def token_count(value, lo: int, fail: Callable[[str, object], None]) -> int:
    """``value`` as a length in tokens: a whole number (:func:`whole_int`) in ``[lo, MAX_TOKENS]``.

    Raises:
      whatever ``fail(problem, value)`` raises (it names the file, record and field): not a whole
      number, below ``lo`` or above :data:`MAX_TOKENS`.
    """
    n = whole_int(value)
    if n is None:
        fail("must be an integer", value)
    elif n < lo:
        fail(f"must be >= {lo}", value)
    elif n > MAX_TOKENS:
        fail(f"must be <= {MAX_TOKENS:,} tokens", value)
    return n


def _fresh_ids(seed: str, n: int) -> np.ndarray:
    """``int64[n]`` ids in ``[0, 2**63)`` derived from ``seed`` and the block index (SplitMix64 of a
    BLAKE2b key of ``seed`` plus the index)."""
    key = np.uint64(int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "little"))
    with np.errstate(over="ignore"):
        ids = splitmix64(splitmix64(np.array([key]))[0] + np.arange(n, dtype=np.uint64))
    return (ids & np.uint64(ID_MASK)).astype(np.int64)


def full_block_ids(value, in_tokens: int, block_tokens: int, fail: Callable[[str, object], None],
                   fresh_seed: str) -> np.ndarray:
    """The ids of a request's full blocks, ``int64[in_tokens // block_tokens]`` in ``[0, 2**63)``.

    Args:
      value: the record's ``hash_ids`` (module docstring for what is accepted).
      in_tokens: the prompt's tokens; block_tokens: tokens per hash id.
      fail: ``fail(problem, value)`` raises the loader's error naming the file, record and field.
      fresh_seed: names the record uniquely in the load (trace name and position): the seed of
        the ids of an empty list's blocks.

    Raises:
      whatever ``fail`` raises: not a list, a non-integer id or one outside ``[-2**63, 2**64)``,
      or a count other than the full blocks (or one more; or none).
    """
    if not isinstance(value, list):
        fail("must be a list of integers", type(value).__name__)
    full, ceil = in_tokens // block_tokens, -(-in_tokens // block_tokens)
    if not value and full:
        return _fresh_ids(fresh_seed, full)
    if len(value) not in (full, ceil):
        counts = f"{full}" if full == ceil else f"{full} (full blocks) or {ceil} (with the partial last block)"
        fail(f"has {len(value)} ids but {in_tokens} tokens make {full} full {block_tokens}-token blocks: "
             f"expected {counts} ids, or [] when none were recorded", None)
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):  # ragged nesting, or ids numpy cannot hold
        arr = None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind == "i":
        return arr[:full].astype(np.int64) & ID_MASK
    if arr is not None and arr.ndim == 1 and arr.dtype.kind == "u":
        return (arr[:full].astype(np.uint64) & np.uint64(ID_MASK)).astype(np.int64)
    for v in value:  # ids of both signs beyond int64, or not integers: name the first bad one
        if isinstance(v, float) and v.is_integer() and abs(v) > 2**53:
            fail("a hash id written as a float above 2**53 has lost its low bits (write ids as integers)", v)
        if isinstance(v, bool) or not (isinstance(v, int) or isinstance(v, float) and v.is_integer()):
            fail("must contain only integers", v)
        if not _ID_LO <= v < _ID_HI:
            fail("ids must be 64-bit integers, in [-2**63, 2**64)", v)
    return np.asarray([int(v) & ID_MASK for v in value[:full]], dtype=np.int64)
