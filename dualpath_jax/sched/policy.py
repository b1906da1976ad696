"""The cluster scheduler both runtimes drive, and the policy hooks a researcher overrides.

Protocol (run by :class:`~dualpath_jax.sched.driver.SchedulingDriver` for the real engine and the
simulator alike; a runtime never calls these in its own order):

1. ``submit(req)`` when an agent issues a round.
2. Each PE group's leader calls ``fetch_pe(group_id, loads, read_q)``; it returns the requests
   placed on the group's PEs. Placed requests move on to the DE stage.
3. Each DE group's leader calls ``report_de`` (its loads) and, with work, ``fetch_de(group_id,
   loads)``; it returns the requests placed on the group's DEs.
4. Once a request has both engines, ``read_plan(req, pe_node, de_node, read_q, hit_blocks,
   block_tokens)`` says which SNIC(s) read its hit blocks; the driver checks the plan with
   :func:`.read_side.check_read_plan` (so a subclass's own ``read_plan`` is held to the same rules).
5. PEs form forward batches with ``form_pe_batch`` (items named by ``request_id``, as placed). It
   runs where the PE runs: under the engine's ``ray`` runtime on the PE node process's own
   instance (same class and config), which sees none of the driver's state.

**Policy hooks** (a researcher's policy is a subclass that overrides any of them on its own; each
gets everything it needs as arguments, no private state; see the README's "Your own policy"):

==================  ==========================================================================
hook                decides
==================  ==========================================================================
``select_pe``       which waiting requests go to which PE of the fetching group (Algorithm 1)
``select_de_group`` DE phase 1: which group's private queue each waiting request joins
``select_de``       DE phase 2: which DE of the fetching group takes which queued request
``read_plan``       the read side(s) of a request's hit blocks (PAPER.md 5.4)
``form_pe_batch``   a PE's next forward batch from its FIFO (compute quota, PAPER.md 5.5)
==================  ==========================================================================

``round_robin`` places load-obliviously: PE and DE follow global cyclic orders fixed when a
request enters each stage (the fetch hands each group what is already its own; a request waits
until its DE has HBM). ``dualpath`` uses Algorithm 1 for PEs (:mod:`.pe`), the two-phase rule for
DEs (:mod:`.de`), the shorter read queue for the side (:mod:`.read_side`) and compute-quota
batches (:mod:`.batching`).

The class holds only scheduling state (queues, cursors, last reported loads); it never reads a
clock, touches I/O or imports a runtime. Same inputs, same decisions.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

from mypy_extensions import mypyc_attr

from dualpath_jax.config import ConfigError
from dualpath_jax.sched import batching, de, pe, read_side
from dualpath_jax.sched.errors import PolicyError
from dualpath_jax.sched.types import Assignment, EngineLoad, SchedRequest, SchedulerConfig

__all__ = ["ClusterScheduler"]


@mypyc_attr(allow_interpreted_subclasses=True)  # new policies subclass it in Python (see setup.py)
class ClusterScheduler:
    """Placement of requests on PEs and DEs, read-side choice and PE batch formation.

    Args:
      config: policy and knobs.
      pe_groups: group id -> engine ids (a group is all-PE; all engines of a node in one group).
      de_groups: group id -> engine ids (all-DE).

    Attributes:
      pe_groups, de_groups: as given (lists); group_of_engine: engine id -> its group id.

    Raises:
      ConfigError: no PE or no DE, an empty group, an engine in two groups, or a PE group id equal
        to a DE group id.
    """

    def __init__(self, config: SchedulerConfig, pe_groups: Mapping[int, Sequence[int]],
                 de_groups: Mapping[int, Sequence[int]]):
        if not pe_groups or not any(pe_groups.values()):
            raise ConfigError("sched.pe_groups", "needs at least one PE")
        if not de_groups or not any(de_groups.values()):
            raise ConfigError("sched.de_groups", "needs at least one DE")
        seen: set[int] = set()
        for field, groups in (("sched.pe_groups", pe_groups), ("sched.de_groups", de_groups)):
            for gid, engines in groups.items():
                if not engines:  # phase 1 would queue requests for it that no engine ever takes
                    raise ConfigError(field, f"group {gid} has no engine (every group needs at least one)")
                for e in engines:
                    if e in seen:
                        raise ConfigError(field, f"engine {e} appears in more than one group (group {gid})")
                    seen.add(e)
        if set(pe_groups) & set(de_groups):
            raise ConfigError("sched.de_groups", f"group ids overlap PE group ids: {set(pe_groups) & set(de_groups)}")
        self.config = config
        self.pe_groups = {g: list(v) for g, v in pe_groups.items()}
        self.de_groups = {g: list(v) for g, v in de_groups.items()}
        self.group_of_engine = {e: g for groups in (pe_groups, de_groups) for g, v in groups.items() for e in v}
        self._pe_cycle = [e for g in sorted(pe_groups) for e in pe_groups[g]]
        self._de_cycle = [e for g in sorted(de_groups) for e in de_groups[g]]
        self._pe_cursor = 0
        self._de_cursor = 0
        self._side_cursor = 0
        self._read_tokens: dict[int, float] = {}  # hit tokens each node's reads were planned for (ties)
        self._round_robin = config.policy == "round_robin"
        # round_robin: the engine each request was given in cyclic order, until it is placed
        self._rr_engine: dict[int, int] = {}
        self._lost: set[int] = set()  # engines gone for good (engine_lost)
        self._lost_groups: set[int] = set()  # DE groups with no engine left
        # requests waiting for a PE: round_robin per group, dualpath one global FIFO (round_robin
        # parks there the requests that came when no PE was left: nothing takes them)
        self._pending_pe: dict[int, collections.deque[SchedRequest]] = {g: collections.deque() for g in pe_groups}
        self._pe_queue: collections.deque[SchedRequest] = collections.deque()
        # requests with a PE waiting for a DE: dualpath's global queue (phase 1) and private queues
        # (phase 2); round_robin uses the private queues of the groups its cycle chose (and parks in
        # the global queue, never to be placed, the requests that came when no DE was left)
        self._de_queue: collections.deque[SchedRequest] = collections.deque()
        self._private: dict[int, collections.deque[SchedRequest]] = {g: collections.deque() for g in de_groups}
        self._private_tok: dict[int, float] = {g: 0.0 for g in de_groups}
        # last reported sum of tok_e over the group's live engines (inf: none is live)
        self._group_tok: dict[int, float] = {g: 0.0 for g in de_groups}
        self._n_pending_pe = 0
        self._n_pending_de = 0
        # a subclass's own hooks are checked (and may return any subset); the built-in dualpath ones
        # return a prefix of the queue on the group's engines, taken without a per-request check
        cls = type(self)
        self._own_select_pe = getattr(cls, "select_pe") is not getattr(ClusterScheduler, "select_pe")
        self._own_select_de_group = getattr(cls, "select_de_group") is not getattr(ClusterScheduler, "select_de_group")
        self._own_select_de = getattr(cls, "select_de") is not getattr(ClusterScheduler, "select_de")

    # ---- policy hooks (override any of them in a subclass) --------------------------------
    def select_pe(self, group_id: int, waiting: Sequence[SchedRequest], loads: Sequence[EngineLoad],
                  read_q: Mapping[int, float]) -> list[Assignment]:
        """Hook: place waiting requests on the fetching PE group (PAPER.md 5.2, Algorithm 1).

        Args:
          group_id: the fetching PE group.
          waiting: the requests this group may take, head first (``dualpath``: the global PE
            queue; ``round_robin``: the requests its cyclic order gave this group). Read-only.
          loads: the group's live engines (``tok``, ``seq``; ``node_id``): an engine named by
            :meth:`engine_lost` is left out, and the hook is not called when none is left. A
            runtime may also report an engine as full with infinite ``tok``.
          read_q: node id -> pending read tokens of the group's nodes.

        Returns:
          Assignments to engines of ``loads``, in any order; any subset of ``waiting`` (the
          rest keeps waiting). The default takes a prefix (Algorithm 1 / the cyclic order).
        """
        if self._round_robin:
            return [Assignment(r, self._rr_engine[r.request_id], "pe") for r in waiting]
        return pe.assign_pe(waiting, loads, read_q, alpha_tokens=self.config.alpha_tokens,
                            beta_tokens=self.config.beta_tokens)[0]

    def select_de_group(self, waiting: Sequence[SchedRequest], group_tok: Mapping[int, float]
                        ) -> Mapping[int, Sequence[SchedRequest]]:
        """Hook: DE phase 1 (PAPER.md 5.3): which group's private queue each waiting request joins.

        Args:
          waiting: the global DE queue, head first. Read-only.
          group_tok: DE group id -> its live engines' last reported ``tok`` sum plus the tokens
            already in its private queue; only groups with an engine left (see :meth:`engine_lost`;
            a lost engine, reported with infinite ``tok``, is left out of the sum).

        Returns:
          group id -> the requests it receives, in queue order (groups of ``group_tok`` only); a
          request left out keeps waiting.
          The default sends each request to the group with the smallest total (``de.de_phase1``).
          Not called under ``round_robin`` (its cyclic order chose the group).
        """
        return de.de_phase1(waiting, group_tok)[0]

    def select_de(self, group_id: int, waiting: Sequence[SchedRequest], loads: Sequence[EngineLoad]
                  ) -> list[Assignment]:
        """Hook: DE phase 2 (PAPER.md 5.3): place the group's queued requests on its engines.

        Args:
          group_id: the fetching DE group.
          waiting: the group's private queue, head first. Read-only.
          loads: the group's live engines (``tok``, ``seq``, ``free_hbm_bytes``; a request needs
            ``hbm_bytes`` of free HBM on its DE): an engine named by :meth:`engine_lost` is left
            out, and the hook is not called when none is left. A runtime may also report an
            engine as full (infinite ``tok``, no free HBM).

        Returns:
          Assignments to engines of ``loads`` with enough free HBM, in any order; any subset of
          ``waiting``. The default: ``dualpath`` the balance rule with slack Z over the engines
          (``de.assign_phase2``); ``round_robin`` each request's cyclic engine once it has HBM,
          in FIFO order per engine.
        """
        if self._round_robin:
            return self._round_robin_de(waiting, loads)
        return de.assign_phase2(waiting, loads, self.config.z_factor)[0]

    def read_plan(self, req: SchedRequest, pe_node: int, de_node: int, read_q: Mapping[int, float],
                  hit_blocks: int, block_tokens: int) -> read_side.ReadPlan:
        """Hook: which side reads ``req``'s ``hit_blocks`` blocks (PAPER.md 5.4), given node read
        queues in tokens. Must satisfy :func:`.read_side.check_read_plan` for the loading mode."""
        loading = self.config.loading
        if loading == "oracle" or hit_blocks == 0:
            return read_side.ReadPlan("none", 0)
        if loading == "pe_read":
            return read_side.ReadPlan("pe", 0)
        q_pe, q_de = read_q.get(pe_node, 0.0), read_q.get(de_node, 0.0)
        if loading == "split":
            n_de = read_side.split_de_blocks(hit_blocks, block_tokens, q_pe, q_de)
            side = "de" if n_de == hit_blocks else ("pe" if n_de == 0 else "split")
        elif self._round_robin:
            side = "pe" if self._side_cursor % 2 == 0 else "de"
            self._side_cursor += 1
            n_de = hit_blocks if side == "de" else 0
        else:
            done = self._read_tokens
            side = read_side.shorter_queue_side(q_pe, q_de, done.get(pe_node, 0.0), done.get(de_node, 0.0))
            n_de = hit_blocks if side == "de" else 0
        done = self._read_tokens
        done[de_node] = done.get(de_node, 0.0) + n_de * block_tokens
        done[pe_node] = done.get(pe_node, 0.0) + (hit_blocks - n_de) * block_tokens
        return read_side.ReadPlan(side, n_de)

    def form_pe_batch(self, fifo: Iterable[batching.BatchItem], *, time_model: batching.TimeModel | None,
                      max_tokens: float, max_kv_tokens: float = float("inf")) -> list[batching.BatchItem]:
        """Hook: a PE's next forward batch (PAPER.md 5.5). ``dualpath``: compute-quota batch (needs
        ``time_model``); ``round_robin``: FIFO under ``max_tokens``. Items must come from the head
        of ``fifo`` in order (the last one may be a chunk of its request).

        ``fifo`` is read head first and only as far as the batch reaches (a lazy iterator is fine).
        """
        if self.config.policy == "dualpath":
            if time_model is None:
                raise ValueError("time_model: required by the dualpath policy's compute-quota batching")
            return batching.form_batch(fifo, self.config.compute_quota_s, time_model, max_kv_tokens=max_kv_tokens)
        return batching.form_batch_fifo(fifo, max_tokens=max_tokens, max_kv_tokens=max_kv_tokens)

    # ---- stage 1: PE placement ------------------------------------------------------------
    def submit(self, req: SchedRequest) -> None:
        """Enter a new request. Under ``round_robin`` with every PE lost it waits unplaced (counted
        by :meth:`waiting`; the runtime's stall or abort handling reports it)."""
        if self._round_robin:
            if not self._pe_cycle:  # every PE is lost: no engine will ever take it
                self._pe_queue.append(req)
                return
            engine = self._pe_cycle[self._pe_cursor % len(self._pe_cycle)]
            self._pe_cursor += 1
            self._rr_engine[req.request_id] = engine
            self._pending_pe[self.group_of_engine[engine]].append(req)
            self._n_pending_pe += 1
        else:
            self._pe_queue.append(req)

    def fetch_pe(self, group_id: int, loads: Sequence[EngineLoad], read_q: Mapping[int, float]) -> list[Assignment]:
        """A PE group's fetch: ``select_pe`` over what waits for it. ``loads``: the group's engines;
        ``read_q``: node -> pending read tokens.

        Raises:
          KeyError: ``group_id`` is not a PE group.
          PolicyError: (a ``ValueError``) ``select_pe`` placed a request that was not waiting, or on an
            engine outside the group or lost.
        """
        if group_id not in self.pe_groups:
            raise KeyError(f"group_id: {group_id} is not a PE group")
        waiting = self._pending_pe[group_id] if self._round_robin else self._pe_queue
        if not waiting:
            return []
        loads = self._live_loads(loads)
        if not loads:
            return []
        out = self.select_pe(group_id, waiting, loads, read_q)
        if not out:
            return []
        if self._own_select_pe:
            _take(waiting, out, self._live(self.pe_groups[group_id]), f"{type(self).__name__}.select_pe")
        else:
            for _ in out:
                waiting.popleft()
        if self._round_robin:
            self._n_pending_pe -= len(out)
        for a in out:
            self._enter_de_stage(a.request)
        return out

    # ---- stage 2: DE placement ------------------------------------------------------------
    def _enter_de_stage(self, req: SchedRequest) -> None:
        if self._round_robin:
            if not self._de_cycle:  # every DE is lost: it waits unplaced (as in submit)
                self._de_queue.append(req)
                return
            engine = self._de_cycle[self._de_cursor % len(self._de_cycle)]
            self._de_cursor += 1
            self._rr_engine[req.request_id] = engine
            self._private[self.group_of_engine[engine]].append(req)
            self._n_pending_de += 1
        else:
            self._de_queue.append(req)

    def _round_robin_de(self, waiting: Sequence[SchedRequest], loads: Sequence[EngineLoad]) -> list[Assignment]:
        """``round_robin`` phase 2: each request's cyclic engine takes it once it has the HBM, in
        FIFO order per engine (a request that does not fit blocks the later ones of its engine)."""
        free = {e.engine_id: e.free_hbm_bytes for e in loads}
        blocked: set[int] = set()
        out = []
        for r in waiting:
            e = self._rr_engine[r.request_id]
            if e in blocked:
                continue
            if free[e] >= r.hbm_bytes:
                free[e] -= r.hbm_bytes
                out.append(Assignment(r, e, "de"))
            else:
                blocked.add(e)
                if len(blocked) == len(free):
                    break
        out.sort(key=lambda a: a.request.request_id)
        return out

    def fetch_de(self, group_id: int, loads: Sequence[EngineLoad]) -> list[Assignment]:
        """A DE group's fetch: phase 1 over all groups (``distribute_de``), then ``select_de`` over
        the group's private queue.

        Raises:
          KeyError: ``group_id`` is not a DE group.
          PolicyError: (a ``ValueError``) ``select_de`` placed a request that was not queued, on an
            engine outside the group or lost, or on an engine with less free HBM than its
            placements there need.
        """
        if group_id not in self.de_groups:
            raise KeyError(f"group_id: {group_id} is not a DE group")
        group_tok = self._live_tok(loads)
        self._group_tok[group_id] = group_tok
        if self._de_queue:
            self.distribute_de()
        private = self._private[group_id]
        if not private:
            return []
        loads = self._live_loads(loads)
        if not loads:
            return []
        out = self.select_de(group_id, private, loads)
        if not out:
            return []
        if self._own_select_de or self._round_robin:  # round robin's may skip a request blocked on HBM
            who = f"{type(self).__name__}.select_de"
            _take(private, out, self._live(self.de_groups[group_id]), who)
            if self._own_select_de:
                _check_hbm(out, loads, who)
        else:
            for _ in out:
                private.popleft()
        placed = 0
        for a in out:
            placed += a.request.num_tokens
            if self._round_robin:
                del self._rr_engine[a.request.request_id]
        if not self._round_robin:
            self._private_tok[group_id] -= placed
        self._n_pending_de -= len(out)
        self._group_tok[group_id] = group_tok + placed  # phase 2 adds len(r) to the chosen engine's tok
        return out

    def _live(self, engines: Sequence[int]) -> Sequence[int]:
        """``engines`` without those named by :meth:`engine_lost`."""
        return [e for e in engines if e not in self._lost] if self._lost else engines

    def _live_loads(self, loads: Sequence[EngineLoad]) -> Sequence[EngineLoad]:
        """``loads`` without the engines named by :meth:`engine_lost`."""
        return [e for e in loads if e.engine_id not in self._lost] if self._lost else loads

    def report_de(self, group_id: int, loads: Sequence[EngineLoad]) -> None:
        """A DE group's leader reports its engines' loads without pulling work (phase 1 then sees
        the group's current token total even while it has nothing queued)."""
        if group_id not in self.de_groups:
            raise KeyError(f"group_id: {group_id} is not a DE group")
        self._group_tok[group_id] = self._live_tok(loads)

    def _live_tok(self, loads: Sequence[EngineLoad]) -> float:
        """The sum of ``tok`` over the live engines of ``loads`` (a lost one reports infinite ``tok``
        or was named by :meth:`engine_lost`); infinite when none is live (phase 1 passes the group by)."""
        toks = [e.tok for e in self._live_loads(loads) if e.tok < math.inf]
        return sum(toks) if toks else math.inf

    def distribute_de(self) -> set[int]:
        """Phase 1 alone (``select_de_group``): move the global DE queue into private queues (by
        the groups' last reported loads; a group with no live engine is passed by). Returns the
        groups that received requests (``round_robin``: groups with queued requests).

        Raises:
          PolicyError: (a ``ValueError``) ``select_de_group`` named an unknown group or a request that was not waiting.
        """
        if self._round_robin:
            return {g for g, q in self._private.items() if q}
        if not self._de_queue:
            return set()
        # a group whose engines are all lost (engine_lost, or all reported with infinite tok) is
        # not offered to phase 1
        group_tok = {g: self._group_tok[g] + self._private_tok[g] for g in self.de_groups
                     if g not in self._lost_groups and self._group_tok[g] < math.inf}
        if not group_tok:
            return set()
        if not self._own_select_de_group:  # the built-in phase 1 places every request, in order
            additions, totals = de.de_phase1(self._de_queue, group_tok)
            self._de_queue.clear()
            for g, reqs in additions.items():  # only groups that received requests appear
                self._private[g].extend(reqs)
                self._private_tok[g] = totals[g] - self._group_tok[g]
                self._n_pending_de += len(reqs)
            return set(additions)
        chosen = self.select_de_group(self._de_queue, group_tok)
        who = f"{type(self).__name__}.select_de_group"
        for g in chosen:
            if g not in group_tok:
                raise PolicyError(f"{who}: group {g} is not a DE group with an engine left "
                                  f"(known: {sorted(group_tok)})")
        ids = {r.request_id for sent in chosen.values() for r in sent}
        if len(ids) != sum([len(sent) for sent in chosen.values()]) or \
                not ids <= {r.request_id for r in self._de_queue}:
            raise PolicyError(f"{who}: returned requests that are not waiting in the DE queue, or one twice")
        for g, sent in chosen.items():
            if not sent:
                continue
            self._private[g].extend(sent)
            self._private_tok[g] += sum([r.num_tokens for r in sent])
            self._n_pending_de += len(sent)
        kept = [r for r in self._de_queue if r.request_id not in ids]
        self._de_queue.clear()
        self._de_queue.extend(kept)
        return {g for g, sent in chosen.items() if sent}

    def engine_lost(self, engine_id: int) -> None:
        """Engine ``engine_id`` is gone for good (its process died): it takes no new request.

        ``round_robin``'s cyclic orders skip it from now on, and every request its cycle had given
        it moves to the next engine of the cycle (and that engine's group); with no engine of its
        role left, such a request (and every later one) waits unplaced, still counted by
        :meth:`waiting`. Under ``dualpath`` the runtime reports the engine as full (``tok``
        infinite, no free HBM); Algorithm 1 and phase 2 pass it by, and it counts in neither its
        group's phase-1 total nor phase 2's Z and ``|E|``; a DE group left with no engine gets an
        infinite token total (phase 1 passes it by; a researcher's ``select_de_group`` is no longer
        offered it) and hands its private queue back to the global DE queue, in order.
        Requests already placed on the engine are the runtime's to fail and resubmit.

        Raises:
          KeyError: ``engine_id`` is in no group.
        """
        group = self.group_of_engine[engine_id]
        lost = self._lost
        lost.add(engine_id)
        self._pe_cycle = [e for e in self._pe_cycle if e not in lost]
        self._de_cycle = [e for e in self._de_cycle if e not in lost]
        if self._round_robin:
            for queues, cycle, cursor, parked, count in (
                    (self._pending_pe, self._pe_cycle, "_pe_cursor", self._pe_queue, "_n_pending_pe"),
                    (self._private, self._de_cycle, "_de_cursor", self._de_queue, "_n_pending_de")):
                for g in list(queues):
                    moved = [r for r in queues[g] if self._rr_engine.get(r.request_id) == engine_id]
                    if not moved:
                        continue
                    kept = [r for r in queues[g] if self._rr_engine.get(r.request_id) != engine_id]
                    queues[g].clear()
                    queues[g].extend(kept)
                    if not cycle:  # no engine of this role is left: they wait unplaced (as in submit)
                        for r in moved:
                            del self._rr_engine[r.request_id]
                        parked.extend(moved)
                        setattr(self, count, getattr(self, count) - len(moved))
                        continue
                    for r in moved:
                        e = cycle[getattr(self, cursor) % len(cycle)]
                        setattr(self, cursor, getattr(self, cursor) + 1)
                        self._rr_engine[r.request_id] = e
                        queues[self.group_of_engine[e]].append(r)
            return
        if group in self.de_groups and set(self.de_groups[group]) <= lost:
            self._lost_groups.add(group)
            back = list(self._private[group])
            self._private[group].clear()
            self._n_pending_de -= len(back)
            self._private_tok[group] = 0.0
            self._group_tok[group] = float("inf")
            self._de_queue.extendleft(reversed(back))

    def has_de_work(self, group_id: int) -> bool:
        """Whether a DE group has requests waiting for it (after phase 1)."""
        return bool(self._private[group_id])

    # ---- introspection --------------------------------------------------------------------
    def waiting_pe(self) -> int:
        """Requests waiting for a PE (``waiting()["pe"]`` without building a dict)."""
        return len(self._pe_queue) + self._n_pending_pe

    def waiting_de(self) -> int:
        """Requests with a PE waiting for a DE (``waiting()["de"]``)."""
        return len(self._de_queue) + self._n_pending_de

    def waiting(self) -> dict[str, int]:
        """Requests not yet placed: ``{"pe": ..., "de": ...}`` (O(1))."""
        return {"pe": len(self._pe_queue) + self._n_pending_pe,
                "de": len(self._de_queue) + self._n_pending_de}


def _check_hbm(out: Sequence[Assignment], loads: Sequence[EngineLoad], who: str) -> None:
    """Raise PolicyError (a ``ValueError``) when the placements of ``out`` on one engine need more
    HBM (``hbm_bytes``) than its load has free (``free_hbm_bytes``), counted in ``out``'s order."""
    free: dict[int, float] = {e.engine_id: e.free_hbm_bytes for e in loads}
    for a in out:
        left = free[a.engine_id] - a.request.hbm_bytes
        if left < 0:
            raise PolicyError(f"{who}: placed request {a.request.request_id} ({a.request.hbm_bytes} B of HBM) on "
                              f"engine {a.engine_id}, which has {free[a.engine_id]:.6g} B free after the placements "
                              f"before it")
        free[a.engine_id] = left


def _take(queue: collections.deque, out: Sequence[Assignment], engines: Sequence[int], who: str) -> None:
    """Remove the requests of ``out`` from ``queue`` (a prefix in order: O(len(out)); else any subset).

    Raises:
      PolicyError: (a ``ValueError``) a request not in ``queue`` (or twice), or an engine not in
        ``engines`` (the group's live engines).
    """
    n = len(out)
    if n > len(queue):
        raise PolicyError(f"{who}: returned {n} assignments for {len(queue)} waiting requests")
    allowed = set(engines)
    prefix = True
    for a, r in zip(out, itertools.islice(queue, n)):
        if a.engine_id not in allowed:
            raise PolicyError(f"{who}: placed request {a.request.request_id} on engine {a.engine_id}, "
                             f"not one of the group's live engines {sorted(allowed)}")
        if a.request.request_id != r.request_id:
            prefix = False
    if prefix:
        for _ in range(n):
            queue.popleft()
        return
    ids = {a.request.request_id for a in out}
    kept = [r for r in queue if r.request_id not in ids]
    if len(ids) != n or len(kept) != len(queue) - n:
        raise PolicyError(f"{who}: returned requests that are not waiting, or one twice")
    queue.clear()
    queue.extend(kept)
