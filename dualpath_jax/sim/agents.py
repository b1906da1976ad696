"""The simulator's agents: their trajectories (:class:`SimAgent`), checked and laid out flat.

:func:`flatten_agents` validates every agent at once and computes each round's exact hit
(:func:`round_hits`), from which the simulator checks at start that every request fits its
cluster; :func:`typical_round` gives the mean round the scheduler thresholds are sized for.
"""

from __future__ import annotations

import array
import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from dualpath_jax.config import ConfigError

__all__ = ["SimAgent", "FlatRounds", "as_typed_array", "flatten_agents", "round_hits", "typical_round"]


@dataclasses.dataclass(frozen=True)
class SimAgent:
    """An agent's trajectory as the simulator needs it.

    Attributes:
      arrival_s: when round 0 is issued (seconds, finite, >= 0).
      append: ``i64[rounds]`` appended tokens per round (>= 1: a round computes at least one token,
        as the engine does, whose hit ends one token before the prompt's end).
      gen: ``i64[rounds]`` generated tokens per round (>= 1).
      think_s: optional ``f64[rounds]`` seconds from the moment round ``r - 1``'s new KV is persisted
        (it has finished and its KV is in storage, which round ``r`` reads) to round ``r``'s issue;
        ``think_s[0]`` is not used (round 0 is issued at ``arrival_s``).
      hit: optional ``i64[rounds]`` cached tokens per round (default: the whole previous context).
        A round hits ``hit`` tokens when the previous context or an earlier, longer one of the agent
        (its initial context included) is that long: a traced conversation may return to a thread
        it left, whose KV is still in storage (``hit`` then reaches past the previous context). A
        larger ``hit`` means the whole previous context (``min(hit, context)``: a hit below the
        previous context models a compaction). A round reads only whole Full Blocks of what is
        stored of its hit: the partial tail block is recomputed, i.e. moved to its append tokens.
      initial_context: tokens already in storage before round 0 (a warm store); round 0 may hit them.

    The prompt of a round is its hit plus its append tokens, the context after it that and its
    generated tokens; all of a context but the last generated token has KV in storage (that token
    is never fed back), which bounds what a later round reads of it.
    """

    arrival_s: float
    append: np.ndarray
    gen: np.ndarray
    think_s: np.ndarray | None = None
    hit: np.ndarray | None = None
    initial_context: int = 0


class FlatRounds(NamedTuple):
    """Every round of every agent, agents one after another (``R`` rounds, ``A`` agents)."""

    append: np.ndarray  # i64[R] appended tokens
    gen: np.ndarray  # i64[R] generated tokens
    offsets: np.ndarray  # i64[A + 1] each agent's first round
    hit: np.ndarray  # i64[R] the prompt's cached prefix (round_hits), before the whole-block rounding

    def where(self, k: int) -> str:
        """Flat round ``k`` as ``"agents[i] round r"``."""
        i = int(np.searchsorted(self.offsets, k, side="right") - 1)
        return f"agents[{i}] round {k - int(self.offsets[i])}"


def flatten_agents(agents: Sequence[SimAgent]) -> FlatRounds:
    """Check every agent's rounds (vectorised over all of them) and lay them out flat.

    Raises:
      ConfigError: naming ``agents[i].<field>`` for a bad trajectory.
    """
    optional = {"hit": [], "think_s": []}  # agents that give the optional per-round values
    for i, a in enumerate(agents):
        rounds = len(a.append)
        if len(a.gen) != rounds or rounds == 0:
            raise ConfigError(f"agents[{i}]", f"append and gen must be non-empty and equally long "
                              f"(got {rounds} and {len(a.gen)})")
        if not (isinstance(a.arrival_s, (int, float, np.integer, np.floating)) and math.isfinite(a.arrival_s)
                and a.arrival_s >= 0):
            raise ConfigError(f"agents[{i}].arrival_s", f"must be a finite number >= 0 s (got {a.arrival_s!r})")
        if not (isinstance(a.initial_context, (int, np.integer)) and 0 <= a.initial_context < 2**62):
            raise ConfigError(f"agents[{i}].initial_context", f"must be an int >= 0 tokens "
                              f"(got {a.initial_context!r})")
        for name, given in optional.items():
            v = getattr(a, name)
            if v is not None:
                if np.shape(v) != (rounds,):
                    raise ConfigError(f"agents[{i}].{name}", f"needs {rounds} values, one per round "
                                      f"(got shape {np.shape(v)})")
                given.append(i)
    if not agents:
        empty = np.zeros(0, np.int64)
        return FlatRounds(empty, empty, np.zeros(1, np.int64), empty)
    lens = np.fromiter((len(a.append) for a in agents), np.int64, len(agents))
    offsets = np.concatenate([[0], np.cumsum(lens)])
    values = {}
    for name, given in optional.items():  # one finite value in [0, 2**62) per round
        if not given:
            continue
        arr = values[name] = np.concatenate([np.asarray(getattr(agents[i], name), np.float64) for i in given])
        bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0) | (arr >= 2.0**62))
        if bad.size:
            i = given[int(np.searchsorted(np.cumsum(lens[given]), bad[0], side="right"))]
            raise ConfigError(f"agents[{i}].{name}", f"needs {lens[i]} finite values in [0, 2**62), one per round "
                              f"(got {np.asarray(getattr(agents[i], name)).tolist()!r:.80})")
    for i, a in enumerate(agents):  # token counts are whole: int64 would truncate 10.7 to 10 silently
        for name in ("append", "gen", "hit"):
            if getattr(a, name) is None:
                continue
            v = np.asarray(getattr(a, name))
            if v.dtype.kind in "iu":
                continue
            if v.dtype.kind != "f":
                raise ConfigError(f"agents[{i}].{name}", f"token counts must be integers (got {v.dtype} values)")
            bad = np.flatnonzero(~np.isfinite(v) | (v != np.rint(v)))
            if bad.size:
                raise ConfigError(f"agents[{i}].{name}", f"token counts must be integers (round {int(bad[0])} "
                                  f"has {float(v[bad[0]])!r})")
    append = np.concatenate([np.asarray(a.append, np.int64) for a in agents])
    gen = np.concatenate([np.asarray(a.gen, np.int64) for a in agents])
    for name, values_, low in (("append", append, 1), ("gen", gen, 1)):  # >= 1 computed token, as the engine
        bad = np.flatnonzero((values_ < low) | (values_ >= 2**40))
        if bad.size:
            i = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            raise ConfigError(f"agents[{i}].{name}", f"every round needs {low} <= {name} < 2**40 (round "
                              f"{int(bad[0] - offsets[i])} has {int(values_[bad[0]])})")
    has_hit = np.zeros(len(agents), bool)
    has_hit[optional["hit"]] = True
    init = np.fromiter((int(a.initial_context) for a in agents), np.int64, len(agents))
    hit = round_hits(append + gen, lens, offsets, init, np.repeat(has_hit, lens), values.get("hit"))
    return FlatRounds(append, gen, offsets, hit)


def round_hits(tokens: np.ndarray, lens: np.ndarray, offsets: np.ndarray, init: np.ndarray, given: np.ndarray,
               hits: np.ndarray | None) -> np.ndarray:
    """``i64[rounds]`` cached tokens of every round of every agent as the run computes them (before
    the rounding to whole blocks, which moves tokens from hit to append and leaves the prompt as is;
    the run also reads at most the context's stored part, all but its last generated token, whose
    KV is never computed, so what it reads can be up to one block less than this).

    Args:
      tokens: ``i64[rounds]`` append + generated tokens per round, agents one after another.
      lens, offsets: ``i64[A]`` rounds per agent and ``i64[A + 1]`` their start offsets.
      init: ``i64[A]`` initial contexts (tokens in storage before round 0).
      given: ``bool[rounds]``, rounds whose agent gives hits (all of its rounds); ``hits``: those
        hits, in order.

    Without given hits a round hits its whole previous context (``T[r] + c0``, ``T[r]``: the agent's
    tokens before round r, ``c0``: its initial context). With them (:class:`SimAgent`), round r
    hits ``hit[r]`` when it is at most ``M[r]``, the longest of ``c0`` and the agent's earlier
    contexts (each its hit plus the round's tokens), else its previous context. Vectorised on the
    assumption that no round takes the second branch, then the agents where one does again in a
    plain loop (a hit beyond every context the agent has had: rare outside hand-made agents).
    """
    n = len(lens)
    before = np.cumsum(tokens) - tokens
    T = before - np.repeat(before[offsets[:-1]], lens)  # the agent's tokens before each round
    c0 = np.repeat(init, lens)
    out = T + c0
    if hits is None or not given.any():
        return out
    g = np.flatnonzero(given)  # every round of the agents that give hits, agents in order
    h = hits.astype(np.int64)
    seg = np.repeat(np.arange(n, dtype=np.int64), lens)[g]
    ctx = h + tokens[g]  # each round's context if no round takes the second branch
    first = np.ones(g.size, bool)
    first[1:] = seg[1:] != seg[:-1]
    floor = c0[g]
    span = int(max(int(ctx.max()), int(floor.max()))) + 1
    if span * n < 2**62:  # running maximum inside each agent: lift later agents above earlier ones
        lift = seg * span
        run = np.maximum.accumulate(ctx + lift) - lift
    else:  # values too wide to lift within int64: one agent at a time
        run = np.concatenate([np.maximum.accumulate(part) for part in np.split(ctx, np.flatnonzero(first)[1:])])
    longest = np.where(first, floor, np.maximum(np.roll(run, 1), floor))  # before each round
    out[g] = h
    starts = np.searchsorted(g, offsets[:-1])  # each agent's first position in g (its rounds are contiguous)
    for a in np.unique(seg[h > longest]):  # agents where a hit passes every earlier context
        context = longest_a = int(init[a])
        for j in range(int(starts[a]), int(starts[a]) + int(lens[a])):
            hit = int(h[j])
            if hit > longest_a:
                hit = context
            out[g[j]] = hit
            context = hit + int(tokens[g[j]])
            longest_a = max(longest_a, context)
    return out


def typical_round(flat: FlatRounds) -> tuple[int, int]:
    """Mean (cached, append) tokens per round over the agents (for alpha/beta in tokens).

    A round's cached tokens are its hit as :func:`round_hits` computes it: the agent's previous
    context (its initial one and earlier rounds' append + generated tokens), or the round's given hit.
    """
    rounds = int(flat.append.size)
    if rounds == 0:
        return 16384, 512
    return max(int(int(flat.hit.sum()) / rounds), 1), max(int(int(flat.append.sum()) / rounds), 1)


def as_typed_array(values, typecode: str) -> array.array:
    """``values`` as an ``array.array`` of int64 (``"q"``) or float64 (``"d"``): its items read as
    Python ints / floats, faster per item than numpy scalars in the simulator's event loop."""
    return array.array(typecode, np.ascontiguousarray(values, np.int64 if typecode == "q" else np.float64).tobytes())
