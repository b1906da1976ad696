"""The cluster scheduler both runtimes drive: ``round_robin`` or ``dualpath`` placement.

Protocol (same for the real engine and the simulator):

1. ``submit(req)`` when an agent issues a round.
2. Each PE group's leader periodically calls ``fetch_pe(group_id, loads, read_q)``; it returns
   the requests placed on the group's PEs. Placed requests move on to the DE stage.
3. Each DE group's leader periodically calls ``fetch_de(group_id, loads)``; it returns the
   requests placed on the group's DEs.
4. Once a request has both engines, ``read_plan(req, pe_node, de_node, read_q, hit_blocks,
   block_tokens)`` says which SNIC(s) read its hit blocks; both runtimes check the plan with
   :func:`.read_side.check_read_plan` (so a subclass's own ``read_plan`` is held to the same rules).
5. PEs form forward batches with ``form_pe_batch``.

``round_robin`` places load-obliviously: PE and DE follow global cyclic orders fixed at submit
time (the fetch only hands each group what is already its own). ``dualpath`` uses Algorithm 1 for
PEs (:mod:`.pe`), the two-phase rule for DEs (:mod:`.de`), the shorter read queue for the side
(:mod:`.read_side`) and compute-quota batches (:mod:`.batching`).

The class holds only scheduling state (queues, cursors, last reported loads); it never reads a
clock, touches I/O or imports a runtime. Same inputs, same decisions.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence

from mypy_extensions import mypyc_attr

from dualpath_jax.config import ConfigError
from dualpath_jax.sched import batching, de, pe, read_side
from dualpath_jax.sched.types import Assignment, EngineLoad, SchedRequest, SchedulerConfig

__all__ = ["ClusterScheduler"]


@mypyc_attr(allow_interpreted_subclasses=True)  # new policies subclass it in Python (see setup.py)
class ClusterScheduler:
    """Placement of requests on PEs and DEs, read-side choice and PE batch formation.

    Args:
      config: policy and knobs.
      pe_groups: group id -> engine ids (a group is all-PE; all engines of a node in one group).
      de_groups: group id -> engine ids (all-DE).

    Raises:
      ConfigError: empty groups, an engine in two groups, or a PE group id equal to a DE group id.
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
                for e in engines:
                    if e in seen:
                        raise ConfigError(field, f"engine {e} appears in more than one group (group {gid})")
                    seen.add(e)
        if set(pe_groups) & set(de_groups):
            raise ConfigError("sched.de_groups", f"group ids overlap PE group ids: {set(pe_groups) & set(de_groups)}")
        self.config = config
        self.pe_groups = {g: list(v) for g, v in pe_groups.items()}
        self.de_groups = {g: list(v) for g, v in de_groups.items()}
        self._group_of = {e: g for groups in (pe_groups, de_groups) for g, v in groups.items() for e in v}
        self._pe_cycle = [e for g in sorted(pe_groups) for e in pe_groups[g]]
        self._de_cycle = [e for g in sorted(de_groups) for e in de_groups[g]]
        self._pe_cursor = 0
        self._de_cursor = 0
        self._side_cursor = 0
        # round_robin: per-group pending (req, engine); dualpath: global and private FIFO queues
        self._pending_pe: dict[int, collections.deque] = {g: collections.deque() for g in pe_groups}
        # round_robin DE placements: group -> engine -> FIFO of requests waiting for that engine's HBM
        self._pending_de: dict[int, dict[int, collections.deque]] = {
            g: {e: collections.deque() for e in engines} for g, engines in de_groups.items()}
        self._pe_queue: collections.deque[SchedRequest] = collections.deque()
        self._de_queue: collections.deque[SchedRequest] = collections.deque()
        self._private: dict[int, collections.deque[SchedRequest]] = {g: collections.deque() for g in de_groups}
        self._private_tok: dict[int, float] = {g: 0.0 for g in de_groups}
        self._group_tok: dict[int, float] = {g: 0.0 for g in de_groups}  # last reported sum of tok_e
        self._n_pending_pe = 0
        self._n_pending_de = 0

    # ---- stage 1: PE placement ------------------------------------------------------------
    def submit(self, req: SchedRequest) -> None:
        """Enter a new request."""
        if self.config.policy == "round_robin":
            engine = self._pe_cycle[self._pe_cursor % len(self._pe_cycle)]
            self._pe_cursor += 1
            self._pending_pe[self._group_of[engine]].append((req, engine))
            self._n_pending_pe += 1
        else:
            self._pe_queue.append(req)

    def fetch_pe(self, group_id: int, loads: Sequence[EngineLoad], read_q: Mapping[int, float]) -> list[Assignment]:
        """A PE group's periodic fetch. ``loads``: the group's engines; ``read_q``: node -> tokens."""
        if group_id not in self.pe_groups:
            raise KeyError(f"group_id: {group_id} is not a PE group")
        if self.config.policy == "round_robin":
            pending = self._pending_pe[group_id]
            out = [Assignment(r, e, "pe") for r, e in pending]
            self._n_pending_pe -= len(out)
            pending.clear()
        else:
            out = pe.assign_pe(self._pe_queue, loads, read_q, alpha_tokens=self.config.alpha_tokens,
                               beta_tokens=self.config.beta_tokens)[0]
            for _ in out:
                self._pe_queue.popleft()
        for a in out:
            self._enter_de_stage(a.request)
        return out

    # ---- stage 2: DE placement ------------------------------------------------------------
    def _enter_de_stage(self, req: SchedRequest) -> None:
        if self.config.policy == "round_robin":
            engine = self._de_cycle[self._de_cursor % len(self._de_cycle)]
            self._de_cursor += 1
            self._pending_de[self._group_of[engine]][engine].append(req)
            self._n_pending_de += 1
        else:
            self._de_queue.append(req)

    def fetch_de(self, group_id: int, loads: Sequence[EngineLoad]) -> list[Assignment]:
        """A DE group's periodic fetch (phase 1 over all groups, then phase 2 for this one)."""
        if group_id not in self.de_groups:
            raise KeyError(f"group_id: {group_id} is not a DE group")
        if self.config.policy == "round_robin":
            # cyclic placement was fixed at PE time; a request still waits until its DE has HBM,
            # in FIFO order per engine
            out = []
            for load in loads:
                queue = self._pending_de[group_id].get(load.engine_id)
                free = load.free_hbm_bytes
                while queue and free >= queue[0].hbm_bytes:
                    r = queue.popleft()
                    free -= r.hbm_bytes
                    out.append(Assignment(r, load.engine_id, "de"))
            out.sort(key=lambda a: a.request.request_id)
            self._n_pending_de -= len(out)
            return out
        group_tok = sum([e.tok for e in loads])
        self._group_tok[group_id] = group_tok
        if self._de_queue:
            self.distribute_de()
        private = self._private[group_id]
        if not private:
            return []
        out = de.assign_phase2(private, loads, self.config.z_factor)[0]
        placed = 0
        for a in out:
            private.popleft()
            placed += a.request.num_tokens
        self._private_tok[group_id] -= placed
        self._n_pending_de -= len(out)
        self._group_tok[group_id] = group_tok + placed  # phase 2 adds len(r) to the chosen engine's tok
        return out

    def report_de(self, group_id: int, loads: Sequence[EngineLoad]) -> None:
        """A DE group's leader reports its engines' loads without pulling work (phase 1 then sees
        the group's current token total even while it has nothing queued)."""
        if group_id not in self.de_groups:
            raise KeyError(f"group_id: {group_id} is not a DE group")
        self._group_tok[group_id] = sum([e.tok for e in loads])

    def distribute_de(self) -> set[int]:
        """Phase 1 alone: move the global DE queue into private queues (by the groups' last
        reported loads). Returns the groups that received requests. ``fetch_de`` calls it first;
        a runtime may call it to learn which groups have new work (``round_robin``: groups with
        pending placements)."""
        if self.config.policy == "round_robin":
            return {g for g, per_engine in self._pending_de.items() if any(per_engine.values())}
        if not self._de_queue:
            return set()
        group_tok = {g: self._group_tok[g] + self._private_tok[g] for g in self.de_groups}
        additions, totals = de.de_phase1(self._de_queue, group_tok)
        self._de_queue.clear()
        for g, reqs in additions.items():  # only groups that received requests appear
            self._private[g].extend(reqs)
            self._private_tok[g] = totals[g] - self._group_tok[g]
            self._n_pending_de += len(reqs)
        return set(additions)

    def has_de_work(self, group_id: int) -> bool:
        """Whether a DE group has requests waiting for it (after phase 1)."""
        return bool(self._private[group_id] or any(self._pending_de[group_id].values()))

    # ---- stage 3: read side ---------------------------------------------------------------
    def read_plan(self, req: SchedRequest, pe_node: int, de_node: int, read_q: Mapping[int, float],
                  hit_blocks: int, block_tokens: int) -> read_side.ReadPlan:
        """Which side reads ``req``'s ``hit_blocks`` blocks, given node read queues (tokens)."""
        loading = self.config.loading
        if loading == "oracle" or hit_blocks == 0:
            return read_side.ReadPlan("none", 0)
        if loading == "pe_read":
            return read_side.ReadPlan("pe", 0)
        q_pe, q_de = read_q.get(pe_node, 0.0), read_q.get(de_node, 0.0)
        if loading == "split":
            n_de = read_side.split_de_blocks(hit_blocks, block_tokens, q_pe, q_de)
            side = "de" if n_de == hit_blocks else ("pe" if n_de == 0 else "split")
            return read_side.ReadPlan(side, n_de)
        if self.config.policy == "round_robin":
            side = "pe" if self._side_cursor % 2 == 0 else "de"
            self._side_cursor += 1
        else:
            side = read_side.shorter_queue_side(q_pe, q_de)
        return read_side.ReadPlan(side, hit_blocks if side == "de" else 0)

    # ---- PE batches -----------------------------------------------------------------------
    def form_pe_batch(self, fifo: Iterable[batching.BatchItem], *, time_model: batching.TimeModel | None,
                      max_tokens: float, max_kv_tokens: float = float("inf")) -> list[batching.BatchItem]:
        """``dualpath``: compute-quota batch (needs ``time_model``); ``round_robin``: FIFO under ``max_tokens``.

        ``fifo`` is read head first and only as far as the batch reaches (a lazy iterator is fine).
        """
        if self.config.policy == "dualpath":
            if time_model is None:
                raise ValueError("time_model: required by the dualpath policy's compute-quota batching")
            return batching.form_batch(fifo, self.config.compute_quota_s, time_model, max_kv_tokens=max_kv_tokens)
        return batching.form_batch_fifo(fifo, max_tokens=max_tokens, max_kv_tokens=max_kv_tokens)

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
