"""Agent trajectories: the rounds an agent issues, one class per agent and one columnar set.

A *round* (paper appendix A.3) is one request of an agent: a prompt made of the tokens already
in the agent's context plus ``a_i`` newly appended tokens, followed by ``g_i`` generated tokens.
Every round carries four numbers (all token counts are i64, times f64 seconds):

* ``num_hit_tokens``    tokens of the prompt whose KV-Cache an earlier round of the same
  trajectory produced (the cached prefix; hits are limited to within a trajectory, PAPER.md
  section 2.5 / paper A.4);
* ``num_append_tokens`` prompt tokens to prefill (``a_i``, >= 1); prompt = hit + append;
* ``num_gen_tokens``    tokens to generate (``g_i``, >= 1);
* ``think_time_s``      client delay before the round is issued, counted from the end of the
  previous round (for round 0 from the trajectory's start); zero in the paper's evaluation
  (PAPER.md section 6.2).

Two kinds of trajectories share these columns:

* **stream** trajectories (the paper's model and the synthetic generator): the context is one
  growing token stream, ``Context_{i+1} = concat(A_1, G_1, ..., A_i, G_i)``, so
  ``hit_i = sum_{j<i} (a_j + g_j)`` exactly. Their block ``b`` (``block_tokens`` tokens) has hash
  id ``b``.
* **hashed** trajectories (trace replay): every round lists the hash ids of its prompt's full
  blocks (:class:`BlockHashes`); the cached prefix is the longest run of leading hash ids seen in
  earlier rounds of the trajectory (the rule of ``../shared/data/README.md``), times
  ``block_tokens``, capped at ``prompt - 1`` so that at least one token is prefilled.

:class:`Trajectory` is one agent; :class:`TrajectorySet` holds many in ragged columnar arrays
(``round_offsets`` i64[A+1] plus flat per-round columns i64[R]) so that 48K agents of the
simulator stay vectorised numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = [
    "BlockHashes",
    "Trajectory",
    "TrajectorySet",
    "hit_blocks_from_hashes",
    "hit_tokens_from_hashes",
    "segment_ids",
    "segment_exclusive_cumsum",
]


def segment_ids(offsets: np.ndarray) -> np.ndarray:
    """i64[R] index of the segment (trajectory) each flat row belongs to, from i64[A+1] offsets."""
    lengths = np.diff(offsets)
    return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)


def segment_exclusive_cumsum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-segment exclusive cumulative sum of flat ``values`` (i64[R]): row i gets the sum of
    the rows before it in its own segment. Used for the stream context ``hit_i``."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return values.copy()
    inclusive = np.cumsum(values)
    exclusive = inclusive - values
    starts = offsets[:-1]
    base = exclusive[np.minimum(starts, len(values) - 1)]
    return exclusive - np.repeat(base, np.diff(offsets))


@dataclasses.dataclass(frozen=True, eq=False)
class BlockHashes:
    """Per-round block hash ids of a hashed trajectory, delta-encoded against the previous round.

    Round ``i``'s ids are ``ids_{i-1}[:shared_prefix_blocks[i]] ++ tail_i`` where ``tail_i`` is
    ``tail_ids[tail_offsets[i]:tail_offsets[i+1]]``. Consecutive agent rounds share almost all
    of their prefix, so this stores about one block per appended block instead of the whole
    prompt per round (the agentic corpus holds ~70M ids in full, ~1M delta-encoded).

    Fields: ``shared_prefix_blocks`` i64[R] (0 for round 0), ``tail_offsets`` i64[R+1],
    ``tail_ids`` i64[M] (non-negative).
    """

    shared_prefix_blocks: np.ndarray
    tail_offsets: np.ndarray
    tail_ids: np.ndarray

    def __post_init__(self):
        shared = np.asarray(self.shared_prefix_blocks, dtype=np.int64)
        offsets = np.asarray(self.tail_offsets, dtype=np.int64)
        tail = np.asarray(self.tail_ids, dtype=np.int64)
        object.__setattr__(self, "shared_prefix_blocks", shared)
        object.__setattr__(self, "tail_offsets", offsets)
        object.__setattr__(self, "tail_ids", tail)
        if offsets.shape != (len(shared) + 1,) or offsets[0] != 0 or offsets[-1] != len(tail):
            raise ValueError("BlockHashes.tail_offsets: must be i64[R+1] from 0 to len(tail_ids)")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("BlockHashes.tail_offsets: must be non-decreasing")
        if len(shared) and shared[0] != 0:
            raise ValueError("BlockHashes.shared_prefix_blocks: round 0 shares nothing (must be 0)")
        counts = self.num_blocks()
        if np.any(shared < 0) or np.any(shared[1:] > counts[:-1]):
            raise ValueError("BlockHashes.shared_prefix_blocks: must lie in [0, blocks of the previous round]")
        if tail.size and tail.min() < 0:
            raise ValueError("BlockHashes.tail_ids: hash ids must be >= 0")

    @classmethod
    def from_rounds(cls, rounds: Sequence[np.ndarray]) -> "BlockHashes":
        """Encode a list of per-round hash-id arrays (i64[P_i] each)."""
        shared = np.zeros(len(rounds), dtype=np.int64)
        tails = []
        prev = np.zeros(0, dtype=np.int64)
        for i, ids in enumerate(rounds):
            ids = np.asarray(ids, dtype=np.int64)
            n = min(len(prev), len(ids))
            diff = np.flatnonzero(prev[:n] != ids[:n])
            k = int(diff[0]) if diff.size else n
            shared[i] = k
            tails.append(ids[k:])
            prev = ids
        lengths = np.array([len(t) for t in tails], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate(tails) if tails else np.zeros(0, dtype=np.int64)
        return cls(shared, offsets, flat.astype(np.int64))

    @property
    def num_rounds(self) -> int:
        return len(self.shared_prefix_blocks)

    def num_blocks(self) -> np.ndarray:
        """i64[R] number of full blocks in each round's prompt."""
        return self.shared_prefix_blocks + np.diff(self.tail_offsets)

    def tail(self, i: int) -> np.ndarray:
        return self.tail_ids[self.tail_offsets[i]:self.tail_offsets[i + 1]]

    def round_ids(self, i: int) -> np.ndarray:
        """i64[P_i]: the hash ids of round ``i``'s full blocks (walks back through the deltas)."""
        if not 0 <= i < self.num_rounds:
            raise IndexError(f"round {i} out of range for {self.num_rounds} rounds")
        parts = [self.tail(i)]
        need = int(self.shared_prefix_blocks[i])
        j = i
        while need > 0:
            j -= 1
            lo = int(self.shared_prefix_blocks[j])
            if need > lo:
                parts.append(self.tail(j)[:need - lo])
            need = min(need, lo)
        return np.concatenate(parts[::-1]) if len(parts) > 1 else parts[0].copy()

    def iter_rounds(self) -> Iterator[np.ndarray]:
        """Yield every round's i64[P_i] ids in order (O(total ids), no walking back)."""
        prev = np.zeros(0, dtype=np.int64)
        for i in range(self.num_rounds):
            ids = np.concatenate([prev[:self.shared_prefix_blocks[i]], self.tail(i)])
            yield ids
            prev = ids

    def head(self, num_rounds: int) -> "BlockHashes":
        """The first ``num_rounds`` rounds."""
        end = int(self.tail_offsets[num_rounds])
        return BlockHashes(self.shared_prefix_blocks[:num_rounds], self.tail_offsets[:num_rounds + 1],
                           self.tail_ids[:end])


def hit_blocks_from_hashes(hashes: BlockHashes) -> np.ndarray:
    """i64[R] cached-prefix length in blocks: the longest run of round i's leading hash ids that
    appeared in any earlier round of the same trajectory (``../shared/data/README.md``).

    The ids a round shares with the previous round are seen by construction, so only the tail is
    looked up: O(total tail ids).
    """
    seen: set[int] = set()
    out = np.zeros(hashes.num_rounds, dtype=np.int64)
    for i in range(hashes.num_rounds):
        tail = hashes.tail(i).tolist()
        run = 0
        for h in tail:
            if h not in seen:
                break
            run += 1
        out[i] = int(hashes.shared_prefix_blocks[i]) + run
        seen.update(tail)
    return out


def hit_tokens_from_hashes(hashes: BlockHashes, prompt: np.ndarray, block_tokens: int) -> np.ndarray:
    """i64[R] cached tokens of each round: its hit blocks (:func:`hit_blocks_from_hashes`) times
    ``block_tokens``, capped at ``prompt - 1`` (``prompt``: i64[R]) so that at least one token is
    prefilled."""
    return np.minimum(hit_blocks_from_hashes(hashes) * block_tokens, prompt - 1)


@dataclasses.dataclass(frozen=True, eq=False)
class Trajectory:
    """One agent's rounds (see the module docstring for the column semantics).

    Fields (R = number of rounds): ``num_append_tokens``, ``num_gen_tokens``, ``num_hit_tokens``
    i64[R]; ``think_time_s`` f64[R]; ``agent_id``; ``token_scope`` (namespace of the
    deterministic token ids, :mod:`dualpath_jax.workload.tokens`); ``block_tokens`` (Z of the
    hash ids: 64 for the agentic traces and stream trajectories, 512 for Mooncake);
    ``hashes`` (None for a stream trajectory); ``start_offset_s`` (start relative to the trace
    start, e.g. a sub-agent's launch time); ``parent_id`` (the spawning conversation of a
    sub-agent); ``source`` (free text: file or generator).

    Raises:
      ValueError: naming the agent and field, for mismatched lengths, append/gen < 1, negative
        hits or think times, a stream whose hits are not its running context, or a hashed round
        whose block count is not ``prompt // block_tokens``.
    """

    agent_id: str
    num_append_tokens: np.ndarray
    num_gen_tokens: np.ndarray
    num_hit_tokens: np.ndarray
    think_time_s: np.ndarray
    token_scope: str = ""
    block_tokens: int = 64
    hashes: BlockHashes | None = None
    start_offset_s: float = 0.0
    parent_id: str | None = None
    source: str = ""

    def __post_init__(self):
        for name in ("num_append_tokens", "num_gen_tokens", "num_hit_tokens"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        object.__setattr__(self, "think_time_s", np.asarray(self.think_time_s, dtype=np.float64))
        if not self.token_scope:
            object.__setattr__(self, "token_scope", self.agent_id)
        n = len(self.num_append_tokens)
        offsets = np.array([0, n], dtype=np.int64)
        validate_rounds(offsets, self.num_append_tokens, self.num_gen_tokens, self.num_hit_tokens,
                        self.think_time_s, (self.agent_id,), np.array([self.block_tokens]),
                        (self.hashes,))

    @classmethod
    def unchecked(cls, **fields) -> "Trajectory":
        """Build without validation (a view of an already validated set); all fields required."""
        obj = object.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(obj, f.name, fields[f.name])
        return obj

    @property
    def num_rounds(self) -> int:
        return len(self.num_append_tokens)

    @property
    def is_stream(self) -> bool:
        return self.hashes is None

    @property
    def num_prompt_tokens(self) -> np.ndarray:
        """i64[R] prompt length (hit + append) of each round."""
        return self.num_hit_tokens + self.num_append_tokens

    @property
    def total_tokens(self) -> int:
        """Largest context the trajectory reaches: max over rounds of prompt + generated."""
        return int(np.max(self.num_prompt_tokens + self.num_gen_tokens))

    def block_hash_ids(self, i: int) -> np.ndarray:
        """i64[P_i] hash ids of round ``i``'s full prompt blocks (``arange`` for a stream)."""
        if self.hashes is None:
            return np.arange(int(self.num_prompt_tokens[i]) // self.block_tokens, dtype=np.int64)
        return self.hashes.round_ids(i)

    def head(self, num_rounds: int) -> "Trajectory":
        """The first ``num_rounds`` (>= 1) rounds."""
        if not 1 <= num_rounds <= self.num_rounds:
            raise ValueError(f"{self.agent_id}: num_rounds must be in [1, {self.num_rounds}] (got {num_rounds})")
        return dataclasses.replace(
            self, num_append_tokens=self.num_append_tokens[:num_rounds],
            num_gen_tokens=self.num_gen_tokens[:num_rounds], num_hit_tokens=self.num_hit_tokens[:num_rounds],
            think_time_s=self.think_time_s[:num_rounds],
            hashes=None if self.hashes is None else self.hashes.head(num_rounds))


def validate_rounds(offsets, append, gen, hit, think, agent_ids, block_tokens, hashes) -> None:
    """Shared validation of ragged round columns; raises ValueError naming agent and field."""
    lengths = np.diff(offsets)
    num_rows = len(append)
    for name, col in (("num_gen_tokens", gen), ("num_hit_tokens", hit), ("think_time_s", think)):
        if len(col) != num_rows:
            raise ValueError(f"{name}: length {len(col)} != num_append_tokens length {num_rows}")
    if offsets[0] != 0 or offsets[-1] != num_rows:
        raise ValueError(f"round_offsets: must run from 0 to {num_rows} (got {offsets[0]}..{offsets[-1]})")
    if np.any(lengths < 1):
        k = int(np.flatnonzero(lengths < 1)[0])
        raise ValueError(f"{agent_ids[k]}: a trajectory needs at least one round")
    if np.any(block_tokens < 1):
        k = int(np.flatnonzero(block_tokens < 1)[0])
        raise ValueError(f"{agent_ids[k]}: block_tokens must be >= 1 (got {block_tokens[k]})")
    seg = None
    for name, col, bad in (("num_append_tokens", append, append < 1), ("num_gen_tokens", gen, gen < 1),
                           ("num_hit_tokens", hit, hit < 0),
                           ("think_time_s", think, ~(np.isfinite(think) & (think >= 0)))):
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            seg = segment_ids(offsets) if seg is None else seg
            k = int(seg[row])
            limit = ">= 0 and finite" if name in ("num_hit_tokens", "think_time_s") else ">= 1"
            raise ValueError(f"{agent_ids[k]}: round {row - offsets[k]}: {name} must be {limit} "
                             f"(got {col[row]})")
    stream = np.array([h is None for h in hashes], dtype=bool)
    if stream.any():
        expected = segment_exclusive_cumsum(append + gen, offsets)
        seg = segment_ids(offsets) if seg is None else seg
        bad = stream[seg] & (hit != expected)
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            k = int(seg[row])
            raise ValueError(f"{agent_ids[k]}: round {row - offsets[k]}: num_hit_tokens of a stream "
                             f"trajectory must equal its context {expected[row]} (got {hit[row]})")
    for k in np.flatnonzero(~stream):
        h = hashes[k]
        lo, hi = offsets[k], offsets[k + 1]
        if h.num_rounds != hi - lo:
            raise ValueError(f"{agent_ids[k]}: hashes: {h.num_rounds} rounds != {hi - lo} rounds")
        prompt = hit[lo:hi] + append[lo:hi]
        blocks = h.num_blocks()
        bad = np.flatnonzero(blocks != prompt // block_tokens[k])
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{agent_ids[k]}: round {i}: hashes: {blocks[i]} block ids for a "
                             f"{prompt[i]}-token prompt (expected {prompt[i] // block_tokens[k]})")


@dataclasses.dataclass(frozen=True, eq=False)
class TrajectorySet:
    """Many trajectories in ragged columnar form (A agents, R rounds in all).

    Fields: ``round_offsets`` i64[A+1]; per-round ``num_append_tokens``, ``num_gen_tokens``,
    ``num_hit_tokens`` i64[R] and ``think_time_s`` f64[R]; per-agent ``agent_ids``,
    ``token_scopes``, ``parent_ids``, ``hashes`` (tuples of length A), ``block_tokens`` i64[A],
    ``start_offset_s`` f64[A]; ``source``. ``set[k]`` is a :class:`Trajectory` view.

    Raises:
      ValueError: as :class:`Trajectory`, naming the agent, round and field.
    """

    round_offsets: np.ndarray
    num_append_tokens: np.ndarray
    num_gen_tokens: np.ndarray
    num_hit_tokens: np.ndarray
    think_time_s: np.ndarray
    agent_ids: tuple[str, ...]
    token_scopes: tuple[str, ...] | None = None
    block_tokens: np.ndarray | None = None
    start_offset_s: np.ndarray | None = None
    parent_ids: tuple[str | None, ...] | None = None
    hashes: tuple[BlockHashes | None, ...] | None = None
    source: str = ""

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("round_offsets", np.asarray(self.round_offsets, dtype=np.int64))
        for name in ("num_append_tokens", "num_gen_tokens", "num_hit_tokens"):
            set_(name, np.asarray(getattr(self, name), dtype=np.int64))
        set_("think_time_s", np.asarray(self.think_time_s, dtype=np.float64))
        n = len(self.round_offsets) - 1
        set_("agent_ids", tuple(self.agent_ids))
        if len(self.agent_ids) != n:
            raise ValueError(f"agent_ids: {len(self.agent_ids)} ids for {n} trajectories")
        set_("token_scopes", self.agent_ids if self.token_scopes is None else tuple(self.token_scopes))
        set_("block_tokens", np.full(n, 64, np.int64) if self.block_tokens is None
             else np.asarray(self.block_tokens, dtype=np.int64))
        set_("start_offset_s", np.zeros(n) if self.start_offset_s is None
             else np.asarray(self.start_offset_s, dtype=np.float64))
        set_("parent_ids", (None,) * n if self.parent_ids is None else tuple(self.parent_ids))
        set_("hashes", (None,) * n if self.hashes is None else tuple(self.hashes))
        for name in ("token_scopes", "block_tokens", "start_offset_s", "parent_ids", "hashes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: length {len(getattr(self, name))} != {n} trajectories")
        validate_rounds(self.round_offsets, self.num_append_tokens, self.num_gen_tokens,
                        self.num_hit_tokens, self.think_time_s, self.agent_ids, self.block_tokens,
                        self.hashes)

    @classmethod
    def unchecked(cls, **fields) -> "TrajectorySet":
        """Build without validation, for transforms whose output is valid by construction.

        Every field must be given in its final form (i64/f64 arrays, tuples)."""
        obj = object.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(obj, f.name, fields[f.name])
        return obj

    def validate(self) -> "TrajectorySet":
        """Run the constructor's checks again (for sets built with :meth:`unchecked`)."""
        validate_rounds(self.round_offsets, self.num_append_tokens, self.num_gen_tokens,
                        self.num_hit_tokens, self.think_time_s, self.agent_ids, self.block_tokens,
                        self.hashes)
        return self

    @classmethod
    def from_trajectories(cls, trajectories: Sequence[Trajectory], source: str = "") -> "TrajectorySet":
        """Stack single trajectories (their order is kept)."""
        if not trajectories:
            raise ValueError("from_trajectories: no trajectories")
        lengths = np.array([t.num_rounds for t in trajectories], dtype=np.int64)
        cat = lambda name: np.concatenate([getattr(t, name) for t in trajectories])  # noqa: E731
        return cls(
            round_offsets=np.concatenate([[0], np.cumsum(lengths)]),
            num_append_tokens=cat("num_append_tokens"), num_gen_tokens=cat("num_gen_tokens"),
            num_hit_tokens=cat("num_hit_tokens"), think_time_s=cat("think_time_s"),
            agent_ids=tuple(t.agent_id for t in trajectories),
            token_scopes=tuple(t.token_scope for t in trajectories),
            block_tokens=np.array([t.block_tokens for t in trajectories], dtype=np.int64),
            start_offset_s=np.array([t.start_offset_s for t in trajectories], dtype=np.float64),
            parent_ids=tuple(t.parent_id for t in trajectories),
            hashes=tuple(t.hashes for t in trajectories),
            source=source or ",".join(sorted({t.source for t in trajectories if t.source}))[:200])

    @classmethod
    def concatenate(cls, sets: Sequence["TrajectorySet"], source: str = "") -> "TrajectorySet":
        """One set holding the trajectories of ``sets`` in order."""
        if not sets:
            raise ValueError("concatenate: no sets")
        shifts = np.cumsum([0] + [s.num_rounds_total for s in sets[:-1]])
        offsets = np.concatenate([sets[0].round_offsets[:1]] + [s.round_offsets[1:] + sh
                                                                 for s, sh in zip(sets, shifts)])
        cat = lambda name: np.concatenate([getattr(s, name) for s in sets])  # noqa: E731
        tup = lambda name: tuple(x for s in sets for x in getattr(s, name))  # noqa: E731
        return cls.unchecked(
            round_offsets=offsets, num_append_tokens=cat("num_append_tokens"),
            num_gen_tokens=cat("num_gen_tokens"), num_hit_tokens=cat("num_hit_tokens"),
            think_time_s=cat("think_time_s"), agent_ids=tup("agent_ids"), token_scopes=tup("token_scopes"),
            block_tokens=cat("block_tokens"), start_offset_s=cat("start_offset_s"),
            parent_ids=tup("parent_ids"), hashes=tup("hashes"), source=source or sets[0].source)

    def __len__(self) -> int:
        return len(self.round_offsets) - 1

    @property
    def num_rounds_total(self) -> int:
        return len(self.num_append_tokens)

    @property
    def num_rounds(self) -> np.ndarray:
        """i64[A] rounds per trajectory."""
        return np.diff(self.round_offsets)

    @property
    def num_prompt_tokens(self) -> np.ndarray:
        return self.num_hit_tokens + self.num_append_tokens

    @property
    def all_stream(self) -> bool:
        return all(h is None for h in self.hashes)

    def __getitem__(self, k: int) -> Trajectory:
        if not -len(self) <= k < len(self):
            raise IndexError(f"trajectory {k} out of range for {len(self)}")
        k %= len(self)
        lo, hi = self.round_offsets[k], self.round_offsets[k + 1]
        return Trajectory.unchecked(
            agent_id=self.agent_ids[k], num_append_tokens=self.num_append_tokens[lo:hi],
            num_gen_tokens=self.num_gen_tokens[lo:hi], num_hit_tokens=self.num_hit_tokens[lo:hi],
            think_time_s=self.think_time_s[lo:hi], token_scope=self.token_scopes[k],
            block_tokens=int(self.block_tokens[k]), hashes=self.hashes[k],
            start_offset_s=float(self.start_offset_s[k]), parent_id=self.parent_ids[k], source=self.source)

    def __iter__(self) -> Iterator[Trajectory]:
        return (self[k] for k in range(len(self)))

    def select(self, indices: np.ndarray) -> "TrajectorySet":
        """The trajectories at ``indices`` (i64[A'], any order, repeats allowed)."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.num_rounds[idx]
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        rows = np.repeat(self.round_offsets[idx] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
        pick = lambda tup: tuple(tup[i] for i in idx)  # noqa: E731
        return TrajectorySet.unchecked(
            round_offsets=new_offsets, num_append_tokens=self.num_append_tokens[rows],
            num_gen_tokens=self.num_gen_tokens[rows], num_hit_tokens=self.num_hit_tokens[rows],
            think_time_s=self.think_time_s[rows], agent_ids=pick(self.agent_ids),
            token_scopes=pick(self.token_scopes), block_tokens=self.block_tokens[idx],
            start_offset_s=self.start_offset_s[idx], parent_ids=pick(self.parent_ids),
            hashes=pick(self.hashes), source=self.source)
