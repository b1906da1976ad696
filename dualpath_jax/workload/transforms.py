"""Length transforms of trajectories: MAL truncation, the paper's Fig. 9 scaling, downscaling.

All functions take a :class:`TrajectorySet` (vectorised over every round) or a single
:class:`Trajectory` and return the same kind; inputs are never modified.

* :func:`truncate_at_mal`: keep the longest prefix of rounds whose context after the round
  (prompt + generated tokens) stays within the MAL (Max Agent Length, PAPER.md section 6.2).
* :func:`scale_lengths`: the sensitivity study of paper Fig. 9 (section 7.3): multiply every
  round's append and/or generation length by a constant, then truncate at the MAL. Stream
  trajectories only (a trace's hash ids fix its lengths).
* :func:`scale_tokens`: divide all token counts by an integer so that a tiny CPU model can replay
  a trajectory, keeping its block-hash structure (see the function).
"""

from __future__ import annotations

import numpy as np

from dualpath_jax.workload.trajectory import (Trajectory, TrajectorySet, hit_tokens_from_hashes,
                                              segment_exclusive_cumsum, segment_ids)

__all__ = ["truncate_at_mal", "scale_lengths", "scale_tokens", "restream"]


def _as_set(x):
    if isinstance(x, Trajectory):
        return TrajectorySet.from_trajectories([x], source=x.source), True
    if isinstance(x, TrajectorySet):
        return x, False
    raise TypeError(f"expected Trajectory or TrajectorySet, got {type(x).__name__}")


def _rebuild(ts: TrajectorySet, keep_rows: np.ndarray, **cols) -> TrajectorySet:
    """A set with only ``keep_rows`` (bool[R]) of each agent, agents left without rounds dropped;
    ``cols`` (append, gen, hit, block_tokens) replace the columns first."""
    append = cols.get("append", ts.num_append_tokens)
    gen = cols.get("gen", ts.num_gen_tokens)
    hit = cols.get("hit", ts.num_hit_tokens)
    think = ts.think_time_s
    hashes = ts.hashes
    block_tokens = cols.get("block_tokens", ts.block_tokens)
    counts = np.zeros(len(ts), np.int64)
    if len(append):
        counts = np.add.reduceat(keep_rows.astype(np.int64), ts.round_offsets[:-1])
    agents = counts > 0
    seg = segment_ids(ts.round_offsets)
    rows = keep_rows & agents[seg]
    idx = np.flatnonzero(agents)
    new_counts = counts[idx]
    new_hashes = tuple(None if hashes[k] is None else hashes[k].head(int(counts[k])) for k in idx)
    pick = lambda tup: tuple(tup[k] for k in idx)  # noqa: E731
    return TrajectorySet.unchecked(
        round_offsets=np.concatenate([[0], np.cumsum(new_counts)]).astype(np.int64),
        num_append_tokens=append[rows], num_gen_tokens=gen[rows], num_hit_tokens=hit[rows],
        think_time_s=think[rows], agent_ids=pick(ts.agent_ids), token_scopes=pick(ts.token_scopes),
        block_tokens=np.asarray(block_tokens)[idx], start_offset_s=ts.start_offset_s[idx],
        parent_ids=pick(ts.parent_ids), hashes=new_hashes, source=ts.source)


def restream(append: np.ndarray, gen: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """i64[R] stream hits (running context) for new append/gen columns."""
    return segment_exclusive_cumsum(append + gen, offsets)


def truncate_at_mal(trajectories, mal_tokens: int):
    """Cut each trajectory before its first round whose prompt + generated tokens exceed MAL.

    A stream trajectory whose first round alone is too long keeps that round with its append
    clipped to ``mal_tokens - g_0`` (and ``g_0`` clipped to ``mal_tokens - 1`` if needed), so
    every stream trajectory keeps at least one round; a hashed trajectory in that case is dropped
    (its hash ids fix the prompt length).

    Args:
      trajectories: TrajectorySet or Trajectory.
      mal_tokens: the MAL in tokens (e.g. 65536 for "64K"), >= 2.
    Returns:
      The same kind as the input. Raises ValueError if a single Trajectory would be dropped.
    """
    if int(mal_tokens) < 2:
        raise ValueError(f"mal_tokens: must be >= 2 (got {mal_tokens})")
    ts, single = _as_set(trajectories)
    offsets = ts.round_offsets
    append, gen = ts.num_append_tokens.copy(), ts.num_gen_tokens.copy()
    stream = np.array([h is None for h in ts.hashes], dtype=bool)
    first = offsets[:-1]
    clip = stream & (ts.num_hit_tokens[first] + append[first] + gen[first] > mal_tokens)
    rows = first[clip]
    gen[rows] = np.minimum(gen[rows], mal_tokens - 1)
    append[rows] = mal_tokens - gen[rows]
    hit = np.where(stream[segment_ids(offsets)], restream(append, gen, offsets), ts.num_hit_tokens)
    over = hit + append + gen > mal_tokens
    row_index = np.arange(len(append))
    first_bad = np.minimum.reduceat(np.where(over, row_index, len(append)), first)
    keep = row_index < np.repeat(first_bad, np.diff(offsets))
    out = _rebuild(ts, keep, append=append, gen=gen, hit=hit)
    if single:
        if len(out) == 0:
            raise ValueError(f"{ts.agent_ids[0]}: first round exceeds mal_tokens={mal_tokens}")
        return out[0]
    return out


def scale_lengths(trajectories, append_factor: float = 1.0, gen_factor: float = 1.0,
                  mal_tokens: int | None = None):
    """Paper Fig. 9: multiply each round's append / generation length, then truncate at the MAL.

    ``a_i -> max(1, rint(a_i * append_factor))``, ``g_i -> max(1, rint(g_i * gen_factor))``, the
    stream context is recomputed, and :func:`truncate_at_mal` applies when ``mal_tokens`` is given.

    Raises:
      ValueError: a factor <= 0, or a hashed (trace) trajectory in the input.
    """
    for name, f in (("append_factor", append_factor), ("gen_factor", gen_factor)):
        if not (np.isfinite(f) and f > 0):
            raise ValueError(f"{name}: must be > 0 (got {f})")
    ts, single = _as_set(trajectories)
    if not ts.all_stream:
        bad = next(a for a, h in zip(ts.agent_ids, ts.hashes) if h is not None)
        raise ValueError(f"{bad}: scale_lengths needs stream trajectories; trace trajectories keep their "
                         "hash-id lengths (use scale_tokens to downscale them)")
    append = np.maximum(1, np.rint(ts.num_append_tokens * append_factor)).astype(np.int64)
    gen = np.maximum(1, np.rint(ts.num_gen_tokens * gen_factor)).astype(np.int64)
    hit = restream(append, gen, ts.round_offsets)
    out = _rebuild(ts, np.ones(len(append), bool), append=append, gen=gen, hit=hit)
    if mal_tokens is not None:
        out = truncate_at_mal(out, mal_tokens)
    return out[0] if single else out


def scale_tokens(trajectories, divisor: int):
    """Divide every token count by ``divisor`` (ceil, so counts stay >= 1), keeping block structure.

    * Stream trajectory: ``a_i -> ceil(a_i / d)``, ``g_i -> ceil(g_i / d)``, context recomputed;
      it stays a stream, so prefix reuse is still total.
    * Hashed trajectory (trace): every hash block shrinks from Z to ``Z / d`` tokens
      (``d`` must divide ``block_tokens``); the hash ids are unchanged, so rounds that shared
      blocks still share exactly the same (fewer) tokens. A round with P full blocks and a
      t-token partial tail becomes ``P * Z/d + min(ceil(t / d), Z/d - 1)`` tokens, its hit
      ``min(L * Z/d, prompt - 1)`` with L its hit blocks, and ``g -> ceil(g / d)``.
      Token ids of a block (:func:`dualpath_jax.workload.tokens.block_token_ids`) depend only on
      (scope, hash id, position), so a shrunk block holds the first ``Z/d`` tokens of the original.

    Think times are unchanged. ``divisor = 1`` returns an equal copy.

    Raises:
      ValueError: ``divisor < 1``; it does not divide a hashed trajectory's ``block_tokens``; or it
        equals them and a round's prompt is shorter than one block (nothing would be left of it).
    """
    d = int(divisor)
    if d != divisor or d < 1:
        raise ValueError(f"divisor: must be an integer >= 1 (got {divisor})")
    ts, single = _as_set(trajectories)
    ceil_div = lambda x: -(-x // d)  # noqa: E731
    append = ceil_div(ts.num_append_tokens)
    gen = ceil_div(ts.num_gen_tokens)
    hit = restream(append, gen, ts.round_offsets)
    block_tokens = ts.block_tokens.copy()
    for k, h in enumerate(ts.hashes):
        if h is None:
            continue
        z = int(ts.block_tokens[k])
        if z % d:
            raise ValueError(f"{ts.agent_ids[k]}: divisor={d} must divide block_tokens={z}")
        lo, hi = ts.round_offsets[k], ts.round_offsets[k + 1]
        blocks = h.num_blocks()
        tail = ts.num_prompt_tokens[lo:hi] - blocks * z
        # a partial tail stays partial (at most Z/d - 1 tokens), so the block count is unchanged
        prompt = blocks * (z // d) + np.minimum(ceil_div(tail), z // d - 1)
        empty = np.flatnonzero(prompt < 1)
        if empty.size:  # d == z: 1-token blocks keep no partial tail, and this prompt has only one
            i = int(empty[0])
            raise ValueError(f"{ts.agent_ids[k]}: round {i}: divisor={d} shrinks the {z}-token blocks to 1 token, "
                             f"which leaves no room for a partial block, and this round's {int(tail[i])}-token "
                             f"prompt has no full block (a divisor below {z} keeps it)")
        hit[lo:hi] = hit_tokens_from_hashes(h, prompt, z // d)
        append[lo:hi] = prompt - hit[lo:hi]
        block_tokens[k] = z // d
    out = _rebuild(ts, np.ones(len(append), bool), append=append, gen=gen, hit=hit, block_tokens=block_tokens)
    return out[0] if single else out
