"""Deterministic token ids for replay, so that equal block hashes give equal tokens.

The real engine caches KV per 64-token Full Block keyed by a hash chain over token ids, so prefix
reuse in the engine is exact only if a trajectory's token ids repeat wherever its workload says
the prefix repeats. Every token id here is a pure function of (scope, domain, major, minor):

* ``scope``: a string namespace, the trajectory's ``token_scope`` (the trace id for agentic
  traces, so a conversation's sub-agents share it; the file for Mooncake; the agent id for
  synthetic agents). It is reduced to 64 bits with BLAKE2b (stable across runs and platforms).
* block tokens (domain 1): token ``j`` of the block with hash id ``h`` is ``f(scope, 1, h, j)``.
  A stream trajectory's block ``b`` has hash id ``b``, so its whole context is one stream.
  Because ``f`` does not depend on the block length, a block shrunk by
  :func:`dualpath_jax.workload.transforms.scale_tokens` holds a prefix of the original's tokens.
* a hashed round's partial tail (domain 2, major = round index) and the reference generated
  tokens of a hashed round (domain 3, major = round index).

``f`` is SplitMix64 (Steele, Lea and Flood, OOPSLA 2014; constants of ``java.util.SplittableRandom``)
applied three times, ``id = f(...) mod V``; vectorised uint64 numpy, int32 output.

Generated tokens: the paper forces exactly ``g_i`` generated tokens (A.3). For a stream
trajectory the reference generated tokens are the stream's next ``g_i`` tokens, so an engine that
forces them (teacher-forced replay) reproduces a context identical across loading/scheduling
variants; an engine may instead append its own greedy tokens, in which case its cache still
reuses exactly what it generated. In a hashed (trace) round the next prompt is defined by its
hash ids, so the previous round's generated tokens are not part of it (they count as appended).
"""

from __future__ import annotations

import hashlib

import numpy as np

from dualpath_jax.workload.trajectory import Trajectory

__all__ = [
    "scope_key",
    "splitmix64",
    "token_hash",
    "block_token_ids",
    "stream_token_ids",
    "prompt_token_ids",
    "append_token_ids",
    "gen_token_ids",
]

DOMAIN_BLOCK = 1
DOMAIN_TAIL = 2
DOMAIN_GEN = 3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def scope_key(scope: str) -> int:
    """64-bit key of a scope string: the first 8 bytes (little endian) of BLAKE2b(scope)."""
    return int.from_bytes(hashlib.blake2b(scope.encode("utf-8"), digest_size=8).digest(), "little")


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 output function on u64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def token_hash(scope: str, domain: int, major: np.ndarray, minor: np.ndarray, vocab_size: int) -> np.ndarray:
    """i32 token ids ``f(scope, domain, major, minor) mod vocab_size`` (major/minor broadcast)."""
    if int(vocab_size) < 1 or int(vocab_size) > 2**31 - 1:
        raise ValueError(f"vocab_size: must be in [1, 2^31 - 1] (got {vocab_size})")
    base = splitmix64(np.array([scope_key(scope) ^ domain], dtype=np.uint64))[0]
    major = np.asarray(major).astype(np.uint64)
    minor = np.asarray(minor).astype(np.uint64)
    with np.errstate(over="ignore"):
        mid = splitmix64(base ^ splitmix64(major))
        z = splitmix64(mid + minor)
    return (z % np.uint64(vocab_size)).astype(np.int32)


def block_token_ids(scope: str, hash_ids: np.ndarray, block_tokens: int, vocab_size: int) -> np.ndarray:
    """i32[P, Z] tokens of the blocks with hash ids i64[P] (Z = ``block_tokens``)."""
    ids = np.asarray(hash_ids, dtype=np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError("hash_ids: must be >= 0")
    return token_hash(scope, DOMAIN_BLOCK, ids[:, None], np.arange(block_tokens)[None, :], vocab_size)


def stream_token_ids(scope: str, start: int, stop: int, block_tokens: int, vocab_size: int) -> np.ndarray:
    """i32[stop - start] tokens at positions [start, stop) of a stream (block b = hash id b)."""
    pos = np.arange(start, stop, dtype=np.int64)
    return token_hash(scope, DOMAIN_BLOCK, pos // block_tokens, pos % block_tokens, vocab_size)


def _check_round(traj: Trajectory, i: int) -> int:
    if not 0 <= i < traj.num_rounds:
        raise IndexError(f"{traj.agent_id}: round {i} out of range for {traj.num_rounds} rounds")
    return int(i)


def prompt_token_ids(traj: Trajectory, i: int, vocab_size: int, start: int = 0) -> np.ndarray:
    """i32[prompt_i - start]: round ``i``'s prompt tokens from position ``start`` on.

    Stream: the stream's first ``prompt_i`` tokens. Hashed: the tokens of the round's hash blocks
    followed by its partial tail (domain 2 keyed by the round index).
    """
    i = _check_round(traj, i)
    prompt = int(traj.num_prompt_tokens[i])
    z = traj.block_tokens
    if traj.hashes is None:
        return stream_token_ids(traj.token_scope, start, prompt, z, vocab_size)
    ids = traj.hashes.round_ids(i)
    full = len(ids) * z
    first_block = min(start // z, len(ids))
    blocks = block_token_ids(traj.token_scope, ids[first_block:], z, vocab_size).reshape(-1)
    tail = token_hash(traj.token_scope, DOMAIN_TAIL, i, np.arange(prompt - full), vocab_size)
    return np.concatenate([blocks, tail])[start - first_block * z:]


def append_token_ids(traj: Trajectory, i: int, vocab_size: int) -> np.ndarray:
    """i32[a_i]: the tokens round ``i`` appends after its cached prefix (prompt[hit_i:])."""
    i = _check_round(traj, i)
    return prompt_token_ids(traj, i, vocab_size, start=int(traj.num_hit_tokens[i]))


def gen_token_ids(traj: Trajectory, i: int, vocab_size: int) -> np.ndarray:
    """i32[g_i]: reference generated tokens of round ``i`` (see the module docstring)."""
    i = _check_round(traj, i)
    g = int(traj.num_gen_tokens[i])
    if traj.hashes is None:
        start = int(traj.num_prompt_tokens[i])
        return stream_token_ids(traj.token_scope, start, start + g, traj.block_tokens, vocab_size)
    return token_hash(traj.token_scope, DOMAIN_GEN, i, np.arange(g), vocab_size)
