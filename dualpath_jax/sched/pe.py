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

import operator
from collections.abc import Mapping, Sequence

from dualpath_jax.sched.types import Assignment, EngineLoad, SchedRequest

__all__ = ["pe_fetch", "classify_pe"]

_ENGINE_ID = operator.attrgetter("engine_id")


def classify_pe(engine: EngineLoad, read_q: Mapping[int, float], alpha_tokens: float, beta_tokens: float) -> str:
    """Return ``"C1"``, ``"C2"`` or ``"C3"`` for one PE (Algorithm 1's candidate sets)."""
    if engine.tok > beta_tokens:
        return "C1"
    return "C2" if read_q.get(engine.node_id, 0.0) <= alpha_tokens else "C3"


def pe_fetch(queue: Sequence[SchedRequest], group: Sequence[EngineLoad], read_q: Mapping[int, float], *,
             alpha_tokens: float, beta_tokens: float, update_read_q: bool = True
             ) -> tuple[list[Assignment], dict[int, EngineLoad], dict[int, float]]:
    """Assign requests from the head of the FIFO ``queue`` to the fetching PE ``group``.

    Args:
      queue: global waiting queue, head first. Not modified.
      group: loads of the engines of the fetching PE group.
      read_q: node id -> pending read tokens.
      alpha_tokens, beta_tokens: thresholds of Algorithm 1.

    Returns:
      ``(assignments, loads, read_q)``: assignments in queue order (a prefix of ``queue``), the
      group's loads after the fetch (engine id -> EngineLoad copy) and the updated read queues.
    """
    loads = {e.engine_id: EngineLoad(e.engine_id, e.node_id, e.tok, e.seq, e.free_hbm_bytes) for e in group}
    engines = sorted(loads.values(), key=_ENGINE_ID)
    rq = dict(read_q)
    long_q = {e.node_id: rq.get(e.node_id, 0.0) > alpha_tokens for e in engines}  # node in C3 (if not C1)
    out: list[Assignment] = []
    for req in queue:
        # one pass: C2 before C3, then min tok_e, then lower engine id; C1 (tok_e > beta) skipped
        best, best_long, best_tok = None, True, 0
        for e in engines:
            tok = e.tok
            if tok > beta_tokens:
                continue
            is_long = long_q[e.node_id]
            if best is None or is_long < best_long or (is_long == best_long and tok < best_tok):
                best, best_long, best_tok = e, is_long, tok
        if best is None:
            break
        best.tok += req.num_tokens
        best.seq += 1
        if update_read_q:
            node = best.node_id
            rq[node] = rq.get(node, 0.0) + req.hit_tokens
            long_q[node] = rq[node] > alpha_tokens
        out.append(Assignment(req, best.engine_id, "pe"))
    return out, loads, rq
