"""DE selection in two phases (PAPER.md section 5.3).

Phase 1 (across DE groups): every request of the global DE queue goes to the private queue of the
group with the smallest total ``tok``; that group's total grows by ``len(r)``.

Phase 2 (inside the fetching group E): ``R`` = the longest prefix of the private queue whose HBM
need fits in the group's total free HBM (no fragmentation assumed);
``Z = z_factor * (sum len(R) + sum tok_e) / |E|``. For each head request, among engines with
enough free HBM: those with ``tok_e + len(r) <= Z`` take it by min ``seq_e`` (balances request
count), otherwise min ``tok_e`` (limits HBM exhaustion). No engine fits -> the fetch ends.
Ties break on the lower engine id.

A lost engine (its process died) is reported with infinite ``tok_e``: phase 2 leaves it out of E
(of the free HBM, the token sum and ``|E|`` of ``Z``) and never places on it, whatever its
reported free HBM (a request with ``hbm_bytes`` 0, "not modelled", fits anywhere). Phase 1 takes
the group totals as given: the scheduler sums ``tok_e`` over a group's live engines only.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections.abc import Mapping, Sequence

from dualpath_jax.sched.types import Assignment, EngineLoad, SchedRequest

__all__ = ["de_phase1", "de_phase2", "balance_target"]

_ENGINE_ID = operator.attrgetter("engine_id")


def de_phase1(queue: Sequence[SchedRequest], group_tok: Mapping[int, float]
              ) -> tuple[dict[int, list[SchedRequest]], dict[int, float]]:
    """Distribute ``queue`` over groups by min total tokens (phase 1 of PAPER.md section 5.3).

    Each request in turn goes to the group with the smallest total (ties: the lower group id), whose
    total then grows by ``len(r)`` = ``r.num_tokens`` (hit + append tokens; the paper implies this
    bookkeeping without stating it).

    Args:
      queue: global DE queue, head first.
      group_tok: group id -> sum of its engines' ``tok`` plus requests already in its private
        queue, tokens.

    Returns:
      ``(additions, totals)``: group id -> requests appended to its private queue (in order; only
      groups that received requests appear), and the updated totals.

    Raises:
      ValueError: ``queue`` holds requests and ``group_tok`` no group.
    """
    if queue and not group_tok:
        raise ValueError(f"group_tok: no DE group to distribute {len(queue)} request(s) over")
    totals = dict(group_tok)
    additions: dict[int, list[SchedRequest]] = {}
    heap = [(t, g) for g, t in totals.items()]  # min total first, ties on the lower group id
    heapq.heapify(heap)
    for req in queue:
        t, g = heap[0]
        if g in additions:
            additions[g].append(req)
        else:
            additions[g] = [req]
        t += req.num_tokens
        totals[g] = t
        heapq.heapreplace(heap, (t, g))
    return additions, totals


def balance_target(private_queue: Sequence[SchedRequest], engines: Sequence[EngineLoad], z_factor: float) -> float:
    """``Z`` of phase 2 (PAPER.md section 5.3): ``z_factor * (sum len(R) + sum tok_e) / |E|``, tokens.

    As computed: ``E`` is the live engines of ``engines`` (finite ``tok``); ``R`` is the longest
    prefix of ``private_queue`` whose summed ``hbm_bytes`` is at most the summed ``free_hbm_bytes``
    of ``E`` (the group's free HBM, no fragmentation assumed); ``len(r)`` is ``r.num_tokens``
    (hit + append tokens); ``tok_e`` is summed over ``E``; the divisor is ``max(|E|, 1)``. The paper
    uses ``z_factor = 1.05`` without explaining it."""
    live = [e for e in engines if e.tok < math.inf]
    return _target(private_queue, sum([e.free_hbm_bytes for e in live]), sum([e.tok for e in live]),
                   len(live), z_factor)


def _target(private_queue: Sequence[SchedRequest], free: float, tok: float, n_engines: int, z_factor: float) -> float:
    """:func:`balance_target` from the group's total free HBM and total ``tok``."""
    fitting, used = 0, 0.0
    for req in private_queue:
        need = req.hbm_bytes
        if used + need > free:
            break
        used += need
        fitting += req.num_tokens
    return z_factor * (fitting + tok) / max(n_engines, 1)


def de_phase2(private_queue: Sequence[SchedRequest], engines: Sequence[EngineLoad], *, z_factor: float = 1.05
              ) -> tuple[list[Assignment], dict[int, EngineLoad]]:
    """Assign from the head of the fetching group's private queue to its engines (phase 2 of
    PAPER.md section 5.3; rules in the module docstring, ``Z`` from :func:`balance_target`).

    Args:
      private_queue: the group's private queue, head first. Not modified.
      engines: loads of the group's engines (``tok`` in tokens, ``free_hbm_bytes`` in bytes).
      z_factor: the factor of ``Z`` (the paper's 1.05).

    Returns:
      ``(assignments, loads)``: a prefix of ``private_queue`` with their DEs (never a lost engine,
      one with infinite ``tok``), and every engine's load after the fetch (engine id ->
      EngineLoad; ``tok``, ``seq`` and ``free_hbm_bytes`` updated).
    """
    out, ordered, tok, seq, free = assign_phase2(private_queue, engines, z_factor)
    loads = {e.engine_id: EngineLoad(e.engine_id, e.node_id, tok[i], seq[i], free[i]) for i, e in enumerate(ordered)}
    return out, loads


def assign_phase2(private_queue: Sequence[SchedRequest], engines: Sequence[EngineLoad], z_factor: float):
    """:func:`de_phase2`'s assignments plus the engines (by id) and their updated ``tok``, ``seq`` and
    free HBM as lists, without building new load records (the scheduler's hot path)."""
    ordered = sorted(engines, key=_ENGINE_ID)
    tok = [e.tok for e in ordered]
    seq = [e.seq for e in ordered]
    free = [e.free_hbm_bytes for e in ordered]
    idx = [i for i in range(len(ordered)) if tok[i] < math.inf]  # E: lost engines out of Z, |E| and placement
    z = _target(private_queue, sum([free[i] for i in idx]), sum([tok[i] for i in idx]), len(idx), z_factor)
    most_free = max([free[i] for i in idx]) if idx else -math.inf
    out: list[Assignment] = []
    for req in private_queue:
        need = req.hbm_bytes
        if need > most_free:
            break  # no engine has room: the fetch ends
        length = req.num_tokens
        # the low set (tok + len <= Z) by min seq; if it is empty, the high set by min tok; the
        # engine must have the HBM; ties keep the lower id
        best, best_seq, best_tok = -1, 0, 0.0
        for i in idx:
            if tok[i] + length <= z and free[i] >= need and (best < 0 or seq[i] < best_seq):
                best, best_seq = i, seq[i]
        if best < 0:
            for i in idx:
                if free[i] >= need and (best < 0 or tok[i] < best_tok):
                    best, best_tok = i, tok[i]
        tok[best] += length
        seq[best] += 1
        free[best] -= need
        most_free = max([free[i] for i in idx])
        out.append(Assignment(req, ordered[best].engine_id, "de"))
    return out, ordered, tok, seq, free
