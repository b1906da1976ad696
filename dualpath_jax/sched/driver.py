"""The one scheduling driver: the protocol of a scheduling tick, shared by the engine and the simulator.

A runtime (the real engine's controller, the simulator's event loop) owns its state and its
clock; it hands the driver a small :class:`RuntimeView` of that state and tells it what changed
(``submit``, ``pe_released``, ``de_released``). The driver decides *when* a tick runs (one
``fetch_period_s`` after the first change since the last tick) and *what* a tick does, in one
place (PAPER.md 5.1-5.4):

1. **PE groups fetch**: every PE group when new requests arrived, else only the groups whose load
   dropped (the others' state is unchanged, so they would take nothing); the first leader to
   fetch rotates with the tick count so no group is always first. Each leader's ``fetch_pe`` sees
   its engines' loads and its nodes' read queues; placements go back to the runtime
   (``on_pe_placed``) before the next leader fetches. As in Algorithm 1, a leader takes queued
   requests until each of its engines is past beta, so when few requests wait (an offline batch
   smaller than a group's beta) the first leader takes them all and the other groups idle until
   their turn comes; with the paper's loads every group fills to beta.
2. **DE groups report and fetch**: groups whose load changed ``report_de`` (phase 1 then sees
   current totals even for groups with nothing queued); phase 1 distributes the global DE queue;
   groups with queued work and new work or a load change fetch, in rotated order; each placement
   goes back to the runtime (``on_de_placed``), which starts the request's reads with
   :meth:`SchedulingDriver.read_plan`.
3. **Read plans** ask the scheduler's ``read_plan`` with the two nodes' current read queues and
   check the answer (``read_side.check_read_plan``), so a custom policy is held to the same rules
   in both runtimes.

The agents' **next-round rule** (:func:`next_round_s`) is here too: a round is issued when the
previous one has finished and its KV is persisted (it reads that KV), plus think time.

Nothing here reads a clock or imports a runtime; ``now`` is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dualpath_jax.sched.errors import RunStalled
from dualpath_jax.sched.policy import ClusterScheduler
from dualpath_jax.sched.read_side import ReadPlan, check_read_plan
from dualpath_jax.sched.types import Assignment, EngineLoad, SchedRequest

__all__ = ["RunStalled", "RuntimeView", "SchedulingDriver", "next_round_s"]


class RuntimeView(Protocol):
    """What the driver reads of a runtime's state (read-only; each runtime provides one).

    ``group_loads(group_id)``: the group's engines' loads (``tok``/``seq`` per PAPER.md 5.1, DE
    free HBM in bytes), in engine-id order. ``read_queue_tokens(node)``: the node's pending disk
    reads in tokens (SNIC backlog plus reads waiting for buffer space).
    """

    def group_loads(self, group_id: int) -> Sequence[EngineLoad]: ...

    def read_queue_tokens(self, node: int) -> float: ...


def next_round_s(finish_s: float, persisted_s: float, think_s: float = 0.0) -> float:
    """When an agent's next round is issued (PAPER.md 6.2, A.3): after the previous round finished
    and its KV is persisted (the next prompt reads it), plus the agent's think time; seconds."""
    return (finish_s if finish_s >= persisted_s else persisted_s) + think_s


class SchedulingDriver:
    """Runs the scheduler's protocol for one runtime (see the module docstring).

    Args:
      sched: the scheduler (built-in or a researcher's subclass).
      view: the runtime's :class:`RuntimeView`.
      on_pe_placed, on_de_placed: the runtime applies a placement (records the engine, updates
        its loads; after a DE placement it starts the request's reads with :meth:`read_plan`).
      fetch_period_s: how long after a change the next tick runs, seconds.
      loading: the loading mode the read plans are checked against.
    """

    def __init__(self, sched: ClusterScheduler, view: RuntimeView, *, on_pe_placed: Callable[[Assignment], None],
                 on_de_placed: Callable[[Assignment], None], fetch_period_s: float, loading: str):
        self.sched = sched
        self.view = view
        self._on_pe_placed = on_pe_placed
        self._on_de_placed = on_de_placed
        self.fetch_period_s = float(fetch_period_s)
        self.loading = loading
        self._plan_who = f"{type(sched).__name__}.read_plan"
        self._group_of = sched.group_of_engine
        self._pe_group_ids = sorted(sched.pe_groups)
        self._pe_group_nodes = {gid: sorted({load.node_id for load in view.group_loads(gid)})
                                for gid in self._pe_group_ids}
        self._new_pe_work = False
        self._pe_dirty: set[int] = set()
        self._de_dirty: set[int] = set()
        self.tick_count = 0
        self.next_tick_s = math.inf  # when the pending tick is due (inf: none pending)

    # ---- what changed --------------------------------------------------------------------------
    def submit(self, req: SchedRequest, now: float) -> float | None:
        """A new request; returns the time of a newly scheduled tick (None if one is pending)."""
        self.sched.submit(req)
        self._new_pe_work = True
        return self.request_tick(now)

    def pe_released(self, engine_id: int) -> None:
        """A PE's load dropped (a request left it); its group fetches at the next tick."""
        self._pe_dirty.add(self._group_of[engine_id])

    def de_released(self, engine_id: int) -> None:
        """A DE's load or free memory changed; its group reports (and may fetch) at the next tick."""
        self._de_dirty.add(self._group_of[engine_id])

    def request_tick(self, now: float) -> float | None:
        """Ask for a tick ``fetch_period_s`` from ``now``; returns its time if newly scheduled, else None."""
        if self.next_tick_s < math.inf:
            return None
        self.next_tick_s = t = now + self.fetch_period_s
        return t

    def tick_due(self, now: float) -> bool:
        """Whether the pending tick's time has come."""
        return now >= self.next_tick_s

    def has_waiting(self) -> bool:
        """Whether requests wait for a PE or a DE."""
        return bool(self.sched.waiting_pe() or self.sched.waiting_de())

    # ---- the tick ------------------------------------------------------------------------------
    def tick(self) -> None:
        """One scheduling tick: PE leaders fetch, DE leaders report and fetch (module docstring)."""
        self.next_tick_s = math.inf
        self.tick_count += 1
        sched, view = self.sched, self.view
        if sched.waiting_pe():
            groups = self._pe_group_ids if self._new_pe_work else sorted(self._pe_dirty)
            self._new_pe_work = False
            self._pe_dirty.clear()
            if groups:
                read_q = view.read_queue_tokens
                on_placed = self._on_pe_placed
                k = self.tick_count % len(groups)  # the first leader to fetch rotates
                for gid in groups[k:] + groups[:k]:
                    if not sched.waiting_pe():
                        break  # the queue is empty: later leaders would take nothing
                    queues = {n: read_q(n) for n in self._pe_group_nodes[gid]}
                    for asg in sched.fetch_pe(gid, view.group_loads(gid), queues):
                        on_placed(asg)
        else:
            self._pe_dirty.clear()
        dirty = self._de_dirty
        for gid in dirty:  # leaders whose load changed report it, with or without work
            sched.report_de(gid, view.group_loads(gid))
        if sched.waiting_de():
            candidates = sched.distribute_de() | dirty
            dirty.clear()
            groups = sorted(g for g in candidates if sched.has_de_work(g))
            if not groups:
                return
            on_placed = self._on_de_placed
            k = self.tick_count % len(groups)
            for gid in groups[k:] + groups[:k]:
                for asg in sched.fetch_de(gid, view.group_loads(gid)):
                    on_placed(asg)
        else:
            dirty.clear()

    def read_plan(self, req: SchedRequest, pe_node: int, de_node: int, hit_blocks: int,
                  block_tokens: int) -> ReadPlan:
        """The checked read plan of a request placed on both engines, from the two nodes' current
        read queues (PAPER.md 5.4).

        Raises:
          ValueError / TypeError: the scheduler's ``read_plan`` broke the loading mode's rules
            (``read_side.check_read_plan``).
        """
        q = self.view.read_queue_tokens
        # Any: a policy may answer with a numpy int, which a compiled build's typed tuple would refuse
        plan: Any = self.sched.read_plan(req, pe_node, de_node, {pe_node: q(pe_node), de_node: q(de_node)},
                                         hit_blocks, block_tokens)
        check_read_plan(plan, hit_blocks, self.loading, who=self._plan_who)
        blocks = plan[1]  # read before any narrowing of ``plan`` to the typed ReadPlan
        if type(blocks) is int and type(plan) is ReadPlan:
            return plan
        return ReadPlan(plan[0], int(blocks))  # a policy may return a tuple or a numpy int
