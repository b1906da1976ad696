"""The engine's :class:`~dualpath_jax.sched.driver.RuntimeView`: scheduler loads and read queues.

The controller thread owns these counters (PAPER.md 5.1): ``tok_e`` and ``seq_e`` of every
engine (prompt tokens and requests assigned but not finished on it), each DE's free block-pool
memory and decode rows, and the nodes' pending read tokens (:class:`~.reader.ReadQueues`, which the
reader threads drain). The shared driver reads them through :meth:`group_loads` and
:meth:`read_queue_tokens`; the controller changes them through :meth:`place` and :meth:`release`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from dualpath_jax.engine.reader import ReadQueues
from dualpath_jax.sched import EngineLoad, SchedRequest

__all__ = ["EngineView"]


class EngineView:
    """Loads of the engine cluster's PEs and DEs.

    Args:
      groups: group id -> engine ids (PE and DE groups).
      node_of: node id of every engine (indexed by engine id).
      read_q: the nodes' pending read tokens.
      pool_blocks: DE engine id -> blocks of its KV pool (engines absent here are PEs).
      full_block_bytes: bytes of one Full Block (a request's ``hbm_bytes`` is a multiple of it).
      max_decode_batch: decode rows per DE; a DE with every row taken reports no free memory.
    """

    def __init__(self, groups: Mapping[int, Sequence[int]], node_of: Sequence[int], read_q: ReadQueues,
                 pool_blocks: Mapping[int, int], full_block_bytes: int, max_decode_batch: int):
        self.groups = {g: list(v) for g, v in groups.items()}
        self.node_of = list(node_of)
        self.read_q = read_q
        self.full_block_bytes = int(full_block_bytes)
        self.max_decode_batch = int(max_decode_batch)
        n = len(self.node_of)
        self.tok = [0] * n
        self.seq = [0] * n
        self.pool_free = dict(pool_blocks)
        self.rows_used = {e: 0 for e in pool_blocks}
        self.lost: set[int] = set()  # engines whose process died: reported full from then on

    def de_free_bytes(self, e: int) -> float:
        """Free pool bytes of DE ``e`` for a new request (0 when all its decode rows are taken)."""
        if self.rows_used[e] >= self.max_decode_batch or e in self.lost:
            return 0.0
        return float(self.pool_free[e] * self.full_block_bytes)

    # ---- RuntimeView ----------------------------------------------------------------------------
    def group_loads(self, group_id: int) -> list[EngineLoad]:
        """The group's engines' loads (fresh records), in engine-id order; a lost engine reports
        infinite ``tok`` and no free memory, so no policy places on it."""
        return [EngineLoad(e, self.node_of[e], math.inf if e in self.lost else self.tok[e], self.seq[e],
                           self.de_free_bytes(e) if e in self.pool_free else float("inf"))
                for e in self.groups[group_id]]

    def read_queue_tokens(self, node: int) -> float:
        """Pending read tokens of node ``node``."""
        return self.read_q.tokens(node)

    # ---- accounting (controller thread) ---------------------------------------------------------
    def place(self, e: int, req: SchedRequest) -> None:
        """Engine ``e`` takes ``req`` (a DE also its pool blocks and a decode row)."""
        self.tok[e] += req.num_tokens
        self.seq[e] += 1
        if e in self.pool_free:
            self.pool_free[e] -= req.hbm_bytes // self.full_block_bytes
            self.rows_used[e] += 1

    def release(self, e: int, req: SchedRequest) -> None:
        """``req`` leaves engine ``e`` (finished or failed)."""
        self.tok[e] -= req.num_tokens
        self.seq[e] -= 1
        if e in self.pool_free:
            self.pool_free[e] += req.hbm_bytes // self.full_block_bytes
            self.rows_used[e] -= 1
