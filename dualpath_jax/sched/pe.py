"""PE selection: Algorithm 1 of the paper (PAPER.md section 5.2).

Engines are split by their unfinished tokens ``tok_e`` against ``beta`` and by their node's disk
read queue ``read_q`` against ``alpha``:

* C1 = {tok_e > beta}: overloaded, never receives new requests;
* C2 = {tok_e <= beta, read_q <= alpha}: short disk queue, preferred (an idle SNIC is lost
  bandwidth);
* C3 = {tok_e <= beta, read_q > alpha}: long disk queue.

The head request goes to argmin tok_e of C2, else of C3, else the fetch ends. The chosen engine's
``tok_e`` grows by ``len(r)`` before the next request. The paper does not say whether ``read_q``
grows inside one fetch; this implementation adds the request's hit tokens to the chosen node's
queue (``update_read_q=True``, the default), since that is the read the request will cause.
Ties break on the lower engine id, so the result is deterministic.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Mapping, Sequence

from dualpath_jax.sched.types import Assignment, EngineLoad, SchedRequest

__all__ = ["pe_fetch", "assign_pe", "classify_pe"]

_ENGINE_ID = operator.attrgetter("engine_id")


def classify_pe(engine: EngineLoad, read_q: Mapping[int, float], alpha_tokens: float, beta_tokens: float) -> str:
    """Return ``"C1"``, ``"C2"`` or ``"C3"`` for one PE (Algorithm 1's candidate sets, PAPER.md section 5.2).

    ``"C1"`` if ``engine.tok > beta_tokens``; else ``"C2"`` if its node's ``read_q`` (tokens; an
    absent node counts as 0) is ``<= alpha_tokens``; else ``"C3"``. All quantities in tokens.
    """
    if engine.tok > beta_tokens:
        return "C1"
    return "C2" if read_q.get(engine.node_id, 0.0) <= alpha_tokens else "C3"


def pe_fetch(queue: Sequence[SchedRequest], group: Sequence[EngineLoad], read_q: Mapping[int, float], *,
             alpha_tokens: float, beta_tokens: float, update_read_q: bool = True
             ) -> tuple[list[Assignment], dict[int, EngineLoad], dict[int, float]]:
    """Assign requests from the head of the FIFO ``queue`` to the fetching PE ``group``
    (Algorithm 1 of the paper, PAPER.md section 5.2; rules in the module docstring).

    Args:
      queue: global waiting queue, head first. Not modified.
      group: loads of the engines of the fetching PE group (``tok`` in tokens).
      read_q: node id -> pending read tokens.
      alpha_tokens, beta_tokens: thresholds of Algorithm 1, tokens (PAPER.md 5.2: alpha = tokens
        readable in 3 s, beta = tokens one GPU prefills in 5 s; A.4).
      update_read_q: add each assigned request's hit tokens to its engine's node queue (the
        paper does not say whether ``read_q`` grows within a fetch).

    Returns:
      ``(assignments, loads, read_q)``: assignments in queue order (a prefix of ``queue``), the
      group's loads after the fetch (engine id -> EngineLoad copy) and the updated read queues.
    """
    out, ordered, tok, seq, rq = assign_pe(queue, group, read_q, alpha_tokens=alpha_tokens, beta_tokens=beta_tokens,
                                           update_read_q=update_read_q)
    loads = {e.engine_id: EngineLoad(e.engine_id, e.node_id, tok[i], seq[i], e.free_hbm_bytes)
             for i, e in enumerate(ordered)}
    return out, loads, rq


def assign_pe(queue: Sequence[SchedRequest], group: Sequence[EngineLoad], read_q: Mapping[int, float], *,
              alpha_tokens: float, beta_tokens: float, update_read_q: bool = True):
    """:func:`pe_fetch`'s assignments plus the engines (by id), their updated ``tok`` and ``seq`` as
    lists and the updated read queues, without building new load records (the scheduler's hot path)."""
    ordered = sorted(group, key=_ENGINE_ID)
    tok = [e.tok for e in ordered]
    seq = [e.seq for e in ordered]
    nodes = [e.node_id for e in ordered]
    rq = dict(read_q)
    is_long = [rq.get(n, 0.0) > alpha_tokens for n in nodes]  # node in C3 (if not C1)
    out: list[Assignment] = []

    def ranked() -> list:
        """Candidates keyed (in C3, tok_e, position): C2 before C3, then min tok_e, then the lower
        engine id; C1 (tok_e > beta) is left out. The head is the engine the next request goes to."""
        heap = [(is_long[i], t, i) for i, t in enumerate(tok) if t <= beta_tokens]
        heapq.heapify(heap)
        return heap

    cand = ranked()
    for req in queue:
        if not cand:
            break
        long_b, t, best = cand[0]
        tok[best] = t = t + req.num_tokens
        seq[best] += 1
        out.append(Assignment(req, ordered[best].engine_id, "pe"))
        if update_read_q:
            node = nodes[best]
            q = rq[node] = rq.get(node, 0.0) + req.hit_tokens
            if q > alpha_tokens and not long_b:  # the node's engines move to C3: re-rank them all
                for i, n in enumerate(nodes):
                    if n == node:
                        is_long[i] = True
                cand = ranked()
                continue
        if t <= beta_tokens:
            heapq.heapreplace(cand, (long_b, t, best))
        else:  # now in C1
            heapq.heappop(cand)
    return out, ordered, tok, seq, rq
