"""The runtime cluster: agents, the scheduler's protocol, readers, PE and DE workers, one store.

Design: one controller loop (the caller's thread) owns all scheduling state; every other
thread (one per PE, one per DE, a reader per node, sender and persist threads) reports back by
putting events on the controller's queue. Scheduling runs through the same
:class:`~dualpath_jax.sched.driver.SchedulingDriver` as the simulator's, over this runtime's
:class:`~.view.EngineView` (loads, free pool memory, read queues):

1. **Agents** (PAPER.md 6.2/A.3): trajectory k issues round 0 at its start time and round i+1
   when ``sched.driver.next_round_s`` says (round i finished and persisted, plus think time if
   enabled). The controller builds the prompt's token ids (``workload.prompt_token_ids``), its
   block keys, asks the store for the longest stored prefix (the hit; at least one token is
   always computed) and submits a ``SchedRequest`` to the driver.
2. **Placement**: the driver's ticks (``fetch_period_s`` after a change) run the group leaders'
   fetches, load reports and phase 1 in the driver's order; each placement comes back here
   (``_on_pe_placed`` / ``_on_de_placed``).
3. **Read side**: once a request has both engines, the driver's ``read_plan`` picks the SNIC(s);
   the read jobs go to the node readers (:mod:`.reader`), and the nodes' pending read tokens are
   the ``read_q`` of the next decisions.
4. **Prefill** on the PE (:mod:`.pe`; ``form_pe_batch`` inside), **decode** and **persist** on
   the DE (:mod:`.de`).

**Supervision.** Every worker thread's job runs under a handler: an unexpected exception (a
bug, an out-of-memory error, an injected crash, :mod:`.faults`) is reported to the controller
(``ClusterResult.worker_errors``), the attempts the job held fail with that cause and release
what they held (a persister's job holds only the block it writes, which is then not stored), and
the worker goes on with its next job. A failed attempt is run again from
the start (lookup, placement, reads) up to ``max_attempts`` times; the KV it already persisted
is reused like any other hit. Only a request that can never fit (a prompt larger than the PE's
device KV budget, the DE buffer or a DE's block pool) or that exhausts its attempts fails, with
its cause; an agent whose round failed reports its later rounds failed too. A thread that dies outside its
job handler ends the run at once (its requests fail with the cause), never at the deadline.
After every run the pools are reconciled: DRAM buffers, read queues, DE block pools and the
scheduler's loads must all be back to empty (:class:`ResourceLeakError` otherwise).
"""

from __future__ import annotations

import heapq
import math
import queue
import sys
import time
import warnings
from collections.abc import Sequence

import jax
import numpy as np
import tqdm

from dualpath_jax.config import ConfigError
from dualpath_jax.engine.compute import check_kernel_block_tokens
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.context import RunContext
from dualpath_jax.engine.de import DecodeWorker, blocks_needed
from dualpath_jax.engine.faults import FaultConfig, FaultInjector
from dualpath_jax.engine.network import Fabric
from dualpath_jax.engine.pe import PrefillWorker
from dualpath_jax.engine.peers import LocalPeers
from dualpath_jax.engine.prefill import check_store_layout
from dualpath_jax.engine.reader import NodeReader, ReadJob, ReadQueues
from dualpath_jax.engine.request import RequestState
from dualpath_jax.engine.result import (ClusterResult, ResourceLeakError, absorb, build_result, local_measures,
                                       remote_measures)
from dualpath_jax.engine.view import EngineView
from dualpath_jax.kvcache import BlockLayout, block_keys
from dualpath_jax.model.spec import ContextBeyondModelWarning, ModelSpec
from dualpath_jax.sched import ClusterScheduler, SchedRequest, SchedulerConfig
from dualpath_jax.sched.driver import RunStalled, SchedulingDriver, next_round_s
from dualpath_jax.sched.batching import TimeModel
from dualpath_jax.store import KVStore
from dualpath_jax.workload import Trajectory, gen_token_ids, prompt_token_ids

__all__ = ["ClusterResult", "EngineCluster", "ResourceLeakError"]


_IDLE_WAIT_S = 0.05
"""Longest controller wait for an event when no tick or arrival is due (seconds)."""


class EngineCluster:
    """P prefill and D decode engines over a shared store (see module docstring).

    Args:
      config: the cluster and the run's switches.
      spec, params: the model (host parameters; each engine puts a copy on its device).
      layout: the KV block layout (must match ``spec``).
      store: the shared KV store (normally empty at the start of a run).
      time_model: fitted PE forward-time model (``sched.batching.TimeModel``; required by the ``dualpath`` policy).
      prefill_tokens_per_s: one PE's prefill rate in prompt tokens/s (for beta).
      devices: JAX devices; engine e runs on ``devices[e % len(devices)]`` (default all).
      scheduler_cls: the :class:`~dualpath_jax.sched.ClusterScheduler` (sub)class that decides
        (a researcher's policy, ``sched.load_scheduler``); the built-in one by default.
      faults: faults to inject (:mod:`.faults`); None or all-off = none.
      runtime: None (``threads``: every engine a thread of this process) or a
        :class:`~dualpath_jax.engine.ray_runtime.RayRuntime` (``ray``: every node an actor in its
        own process, KV between them over JAX's transfer server; ``devices`` is then each
        process's own).

    Raises:
      ConfigError: a buffer/pool cannot hold one Full Block; ``layout`` is not ``spec``'s, its
        namespace is not the fingerprint of ``params`` (``engine.prefill.store_layout``), or its
        block size does not suit the attention kernels (``engine.compute.check_kernel_block_tokens``).
    """

    def __init__(self, config: ClusterConfig, spec: ModelSpec, params: dict, layout: BlockLayout, store: KVStore, *,
                 time_model: TimeModel | None, prefill_tokens_per_s: float, devices: Sequence | None = None,
                 scheduler_cls: type = ClusterScheduler, faults: FaultConfig | None = None, runtime=None):
        config.check_layout(layout.full_block_bytes)
        check_store_layout(spec, params, layout)  # the store's keys name these weights: no other model's KV
        if runtime is None:  # (under ray each node process checks for its own backend as it starts)
            check_kernel_block_tokens(layout.block_tokens)
        self.faults = faults if faults is not None and faults.enabled else None
        self.runtime = runtime
        self.config, self.spec, self.layout, self.store = config, spec, layout, store
        self.params = params
        self.devices = list(devices or jax.devices())
        self.time_model = time_model
        self.scheduler_cls = scheduler_cls
        self.alpha_tokens = config.alpha_s * config.snic_bytes_per_s / layout.bytes_per_token
        self.beta_tokens = config.beta_s * float(prefill_tokens_per_s)

    def device_of(self, engine_id: int):
        return self.devices[engine_id % len(self.devices)]

    # ---- the run --------------------------------------------------------------------------------
    def run(self, trajectories: Sequence[Trajectory], start_s: Sequence[float], *,
            use_think_time: bool = False, progress: bool | None = None, desc: str = "engine") -> ClusterResult:
        """Replay ``trajectories`` (trajectory k starts at ``start_s[k]`` seconds) to completion.

        ``progress``: a tqdm bar of finished requests with rate and ETA, labelled ``desc``
        (default: only when stderr is a terminal, so logs and CI stay quiet).

        Raises:
          ValueError: ``len(start_s) != len(trajectories)``, before anything starts.
          ConfigError: naming ``runtime``: a ray runtime with a store whose backend is not
            ``"file"`` (node processes cannot share a memory store), before any node starts.
          ResourceLeakError: the run ended normally but left a buffer, read queue, DE pool or
            scheduler load non-empty (a bookkeeping bug; the result is attached as ``result``).
          RunStalled: no event, tick or arrival is pending and no engine holds a request, yet
            requests wait for a PE or a DE (e.g. a custom scheduler that never places one); the
            message says what the first one waits for. The workers are stopped first.

        Warns:
          ContextBeyondModelWarning: some requests' contexts (prompt + generated tokens) exceed the
            model's ``max_position_embeddings`` (their count and the longest); they run all the same.
        """
        cfg, spec, layout = self.config, self.spec, self.layout
        if len(trajectories) != len(start_s):
            raise ValueError(f"start_s: {len(start_s)} start times for {len(trajectories)} trajectories")
        self._events: queue.Queue = queue.Queue()
        fabric = Fabric(cfg)
        pe_groups, de_groups = cfg.groups()
        sched = self.scheduler_cls(SchedulerConfig(policy=cfg.policy, loading=cfg.loading,
                                                   alpha_tokens=self.alpha_tokens, beta_tokens=self.beta_tokens,
                                                   z_factor=cfg.z_factor, compute_quota_s=cfg.compute_quota_s),
                                   pe_groups, de_groups)
        put = self._events.put
        remote = self._remote = None
        if self.runtime is not None:
            from dualpath_jax.engine.ray_runtime import RemoteNodes  # noqa: PLC0415 (the ray runtime only)

            if self.store.config.backend != "file":
                raise ConfigError("runtime", "ray: the store must be a file store (StoreConfig.backend='file') at a "
                                  "path every node process can open")
            actors = self.runtime.nodes(cfg, spec, layout, self.params, self.scheduler_cls)
            remote = self._remote = RemoteNodes(self.runtime, actors, cfg, spec.n_layers, self._events)
        ctx = RunContext(cfg, spec, layout, self.params, np.asarray(self.params["embed"], np.float32), fabric,
                         self.store, sched, self.time_model,
                         on_prefilled=lambda r: put(("prefilled", r)), on_finished=lambda r: put(("finished", r)),
                         on_persisted=lambda r: put(("persisted", r)),
                         on_failed=lambda r, c, retry=True: put(("failed", r, c, retry)),
                         on_worker_error=lambda w, e, tb, fatal=False: put(("worker_error", w, e, tb, fatal)),
                         clock=time.perf_counter if remote is None else time.time)
        ctx.peers = LocalPeers(fabric, layout)
        # under ray every node process injects its own faults (NodeHost.begin_run), none here
        injector = FaultInjector(self.faults, now=ctx.now) if self.faults is not None and remote is None else None
        ctx.faults = fabric.faults = injector
        self.ctx, self.fabric, self.sched = ctx, fabric, sched
        self.worker_errors: list[dict] = []
        self._aborted = ""
        self.read_q = ReadQueues(cfg.num_nodes)
        over = [(int(t.num_prompt_tokens[r] + t.num_gen_tokens[r]), t.agent_id, int(r)) for t in trajectories
                for r in np.flatnonzero(t.num_prompt_tokens + t.num_gen_tokens > spec.max_position)]
        if over:  # as the simulator's check (sim.fit): RoPE goes on past it, the trained model does not
            longest, name, r = max(over)
            warnings.warn(f"engine: {len(over)} requests run past {spec.name}'s max_position_embeddings "
                          f"({spec.max_position} tokens; the longest, {name} round {r}, reaches {longest}): "
                          f"the model was not trained that far (cut the workload, e.g. workload.mal)",
                          ContextBeyondModelWarning, stacklevel=2)
        z = layout.block_tokens
        max_blocks = max(blocks_needed(int(t.num_prompt_tokens.max()) + 1, int(t.num_gen_tokens.max()), z)
                         for t in trajectories)
        n_eng = cfg.num_pe + cfg.num_de
        self.node_of = [fabric.node_of(e) for e in range(n_eng)]
        if remote is None:
            self.pes = {e: PrefillWorker(ctx, e, self.device_of(e)) for e in range(cfg.num_pe)}
            self.des = {e: DecodeWorker(ctx, e, self.device_of(e)) for e in range(cfg.num_pe, n_eng)}
            for de in self.des.values():
                de.warm_up(max_blocks)
            self.readers = {n: NodeReader(ctx, n, self.read_q, on_done=lambda *a: put(("read_done", *a)),
                                          on_error=lambda job, why, carried: put(("read_failed", job, carried, why)))
                            for n in range(cfg.num_nodes)}
        else:
            try:
                self.pes, self.des, self.readers, self.processes = remote.begin(
                    self.store.config, (sched.config, pe_groups, de_groups), self.time_model, max_blocks,
                    self.node_of, self.faults)
            except BaseException:
                remote.end()
                raise
        self.view = EngineView({**pe_groups, **de_groups}, self.node_of, self.read_q,
                               {e: w.num_blocks for e, w in self.des.items()}, layout.full_block_bytes,
                               cfg.max_decode_batch)
        self.driver = SchedulingDriver(sched, self.view, on_pe_placed=self._on_pe_placed,
                                       on_de_placed=self._on_de_placed, fetch_period_s=cfg.fetch_period_s,
                                       loading=cfg.loading)
        self.trajectories = list(trajectories)
        self.requests: list[RequestState] = []
        self._agents_open = len(self.trajectories)
        self._done = 0  # requests finished or reported as not run
        total = sum(int(t.num_rounds) for t in self.trajectories)
        self._bar = tqdm.tqdm(total=total, unit="req", desc=desc, leave=False, mininterval=0.5,
                              disable=not (sys.stderr.isatty() if progress is None else progress))
        self._use_think = use_think_time
        store_before = self.store.stats()
        workers = () if remote is not None else (*self.pes.values(), *self.des.values(), *self.readers.values())
        arrivals = [(float(s), k, 0) for k, s in enumerate(start_s)]
        heapq.heapify(arrivals)
        self._arrivals = arrivals
        try:
            ctx.t0 = ctx.clock()
            if remote is not None:
                remote.start(ctx.t0)
            for w in workers:
                w.start()
            self._loop()
        except BaseException:
            self._stop_workers(workers)
            self._drop_run_state()
            raise
        nodes = self._stop_workers(workers)
        leftover = []
        while not self._events.empty():  # errors of jobs that ran while the workers stopped
            leftover.append(self._events.get_nowait())
        for out in nodes:
            leftover += out["events"] if out is not None else []
        for ev in leftover:  # worker errors, and (ray) the read queues' last changes and deaths
            if ev[0] in ("worker_error", "read_q", "node_died"):
                self._take(ev)
        wall = ctx.now()
        if remote is None:
            m = local_measures(fabric, ctx.t0, self.store.stats().read_bytes - store_before.read_bytes, self.des,
                               self.readers, cfg.num_nodes, injector.counts if injector is not None else None)
        else:
            absorb(nodes, self.pes, self.des)
            m = remote_measures(nodes, self.processes)
        leaks = self._reconcile(m.buffers, m.free_blocks)
        result = build_result(cfg, self.requests, self.pes, self.des, m, leaks=leaks, worker_errors=self.worker_errors,
                              alpha_tokens=self.alpha_tokens, beta_tokens=self.beta_tokens, wall_s=wall,
                              lost_nodes=dict(remote.dead) if remote is not None else {})
        self._drop_run_state()
        if leaks and not self._ended_early:
            err = ResourceLeakError(leaks)
            err.result = result
            raise err
        return result

    def _stop_workers(self, workers: Sequence) -> list:
        """Close the progress bar, stop this process's ``workers`` and (``ray``) the node actors'
        run; returns each node's ``end_run`` answer (empty under ``threads``)."""
        self._bar.close()
        for w in workers:
            w.stop()
        return self._remote.end() if self._remote is not None else []  # (the pumps stop first: no event is lost)

    def _drop_run_state(self) -> None:
        """Let the run's workers go: the driver's callbacks refer back to this cluster, so without
        this the workers' device pools and parameter copies would live until a full garbage
        collection (resident memory grew ~100 MB per run of the soak test)."""
        self.pes = self.des = self.readers = {}
        self.driver = self.view = self.ctx = self.fabric = self.sched = self._remote = None

    def _reconcile(self, buffers: dict, free_blocks: dict) -> dict:
        """What is still held after the workers stopped (``buffers``: in-use bytes per buffer name,
        ``free_blocks``: per DE); every entry should be 0 (module docstring). A lost node's
        resources died with it and are not counted."""
        leaks: dict = {k + ".bytes": v for k, v in buffers.items() if v}
        lost_nodes = set(self._remote.dead) if self._remote is not None else set()
        for n in range(self.config.num_nodes):
            if self.read_q.tokens(n) and n not in lost_nodes:
                leaks[f"read_q/node{n}.tokens"] = self.read_q.tokens(n)
        for e, de in self.des.items():
            if e in free_blocks and free_blocks[e] != de.num_blocks:
                leaks[f"de{e}.pool_blocks"] = de.num_blocks - free_blocks[e]
        for e in range(len(self.node_of)):
            if self.view.tok[e] or self.view.seq[e]:
                leaks[f"sched_load/engine{e}"] = (self.view.tok[e], self.view.seq[e])
        return leaks

    def _loop(self) -> None:
        cfg, ctx = self.config, self.ctx
        deadline = cfg.run_timeout_s
        self._ended_early = False
        pulled_for = math.inf  # (ray) the tick whose read queues were asked for (RemoteNodes.pull_for_tick)
        while self._agents_open > 0:
            now = ctx.now()
            # an aborted run (e.g. the last PE's node died) issues nothing more: _expire reports the
            # rounds still due as not run (the scheduler may have no engine left to give them)
            while self._arrivals and self._arrivals[0][0] <= now and not self._aborted:
                _, k, r = heapq.heappop(self._arrivals)
                self._arrive(k, r)
            if now > deadline or self._aborted:
                self._expire(self._aborted or f"timeout: run exceeded run_timeout_s={cfg.run_timeout_s}")
                self._ended_early = True
                return
            if self._remote is not None:
                pulled_for = self._remote.pull_for_tick(self.driver, self.read_q, pulled_for)
            if self.driver.tick_due(now):
                if self._remote is not None:
                    self._read_queues_in()
                    if self._aborted or self._agents_open == 0:
                        continue  # (an event taken in ended the run: the loop's top handles it)
                self.driver.tick()
            # sleep until the next event, arrival or tick (at most _IDLE_WAIT_S: the deadline is checked)
            wait = min(_IDLE_WAIT_S, self.driver.next_tick_s - now)
            if self._arrivals:
                wait = min(wait, self._arrivals[0][0] - now)
            if self._remote is not None:
                self._remote.flush()  # (ray) the orders given since the last wait leave now
            try:
                self._take(self._events.get(timeout=max(0.0, wait)))
            except queue.Empty:
                pass
            self._take_queued()
            if stalled := self._stalled():
                raise RunStalled(stalled) from None
            if self._done != self._bar.n:
                self._bar.update(self._done - self._bar.n)

    def _stalled(self) -> str:
        """Why the run can make no more progress, or ``""``: no tick and no arrival is pending,
        and every open agent's live attempt waits for a PE or a DE, so no worker holds a request
        whose events could change that (e.g. a custom scheduler that never places one; a round
        that finished waits for its persist, which is on its way). Checked whenever the event
        queue is empty; an abort (a dead worker) ends the run at the loop's top instead."""
        if self._aborted or self.driver.next_tick_s < math.inf or self._arrivals or not self.driver.has_waiting():
            return ""
        live = [r for r in self.requests if not r.finished and not r.error]
        if not live or len(live) != self._agents_open or any(r.pe >= 0 and r.de >= 0 for r in live):
            return ""
        for_pe = sum(r.pe < 0 for r in live)
        first = min(live, key=lambda r: r.rid)
        waits = f"{len(live)} request{'s wait' if len(live) > 1 else ' waits'}"
        return (f"engine run stalled at t = {self.ctx.now():.3f} s: no tick or arrival is pending and no engine "
                f"holds a request, yet {waits} (for a PE: {for_pe}, for a DE: {len(live) - for_pe}; "
                f"{self._done} of {self._bar.total} rounds done); the first, request {first.rid} "
                f"(agents[{first.agent}] round {first.round_index}, {first.sched.hit_tokens} hit tokens), waits for a "
                f"{'PE' if first.pe < 0 else 'DE'}. Scheduler: {type(self.sched).__name__}")

    def _read_queues_in(self) -> None:
        """(``ray``) Before a tick: wait up to one fetch period for the answers to read-queue asks
        still out (a request that began to wait just before its tick), then take the events that
        came in, those answers among them, so the tick reads queues at most about a fetch period
        old."""
        self._remote.await_pulls(self.config.fetch_period_s)
        self._take_queued()

    def _take_queued(self) -> None:
        """Take every event already in the queue, without waiting for more."""
        try:
            while True:
                self._take(self._events.get_nowait())
        except queue.Empty:
            pass

    # ---- agents ---------------------------------------------------------------------------------
    def _arrive(self, k: int, r: int, attempt: int = 1, arrival_s: float | None = None) -> None:
        """Issue round ``r`` of agent ``k`` (``attempt`` > 1: again, first issued at ``arrival_s``)."""
        traj, spec, layout = self.trajectories[k], self.spec, self.layout
        prompt = prompt_token_ids(traj, r, spec.vocab_size)
        keys = block_keys(layout, prompt)
        z = layout.block_tokens
        eligible = min(len(keys), (len(prompt) - 1) // z)  # at least one token is computed
        looked = self.store.lookup(keys[:eligible]) if eligible else None
        found = looked.num_blocks if looked is not None else 0
        rid = len(self.requests)
        req = RequestState(rid, k, r, traj.agent_id, prompt, keys, int(traj.num_gen_tokens[r]), found, z,
                           forced=gen_token_ids(traj, r, spec.vocab_size), attempt=attempt)
        if looked is not None and looked.failure is not None:  # the store could not say: those blocks recompute
            req.read_failures.append(looked.failure)
        req.segments = [[] for _ in range(spec.n_layers)]
        req.attempt_s = self.ctx.now()
        req.arrival_s = req.attempt_s if arrival_s is None else arrival_s  # latencies count from the first
        hbm = blocks_needed(len(prompt), req.gen_target, layout.block_tokens) * layout.full_block_bytes
        req.sched = SchedRequest(rid, found * z, len(prompt) - found * z, req.gen_target, int(hbm))
        self.requests.append(req)
        budget = self.pes[0].max_kv_tokens
        if len(prompt) > budget:  # its last token's forward needs the whole prompt's KV on the PE
            self._handle(("failed", req, f"PE device KV budget: a {len(prompt)}-token prompt exceeds "
                          f"max_kv_tokens={budget:.0f} (cluster.pe_hbm_kv_bytes; it can never run)", False))
            return
        pool = max((w.num_blocks for e, w in self.des.items() if e not in self.view.lost), default=0)
        if hbm > pool * layout.full_block_bytes:  # no DE's whole pool holds its prompt and generation
            self._handle(("failed", req, f"DE pool: a {len(prompt)}-token prompt with {req.gen_target} tokens to "
                          f"generate needs {hbm // layout.full_block_bytes} blocks, a DE holds {pool} "
                          f"(cluster.de_hbm_kv_bytes; it can never run)", False))
            return
        kv = len(prompt) * layout.bytes_per_token
        if not self.fabric.bypass and kv > self.config.buffer_bytes:  # its whole prompt's KV passes the DE buffer
            self._handle(("failed", req, f"DE buffer: a {len(prompt)}-token prompt's KV ({kv} B: its DE-side hits and "
                          f"the PE's hand-off) exceeds buffer_bytes={self.config.buffer_bytes} "
                          f"(cluster.buffer_bytes; it can never run)", False))
            return
        self.driver.submit(req.sched, req.attempt_s)

    def _next_round(self, req: RequestState, failed: bool) -> None:
        traj = self.trajectories[req.agent]
        nxt = req.round_index + 1
        self._done += 1
        if nxt >= traj.num_rounds:
            self._agents_open -= 1
            return
        if failed:  # later rounds depend on this one's context: report them, do not run them
            self._done += traj.num_rounds - nxt
            now, cause = self.ctx.now(), f"round {req.round_index} failed ({req.error})"
            for r in range(nxt, traj.num_rounds):
                self.requests.append(RequestState.not_run(len(self.requests), req.agent, r, traj,
                                                          self.layout.block_tokens, now, cause))
            self._agents_open -= 1
            return
        think = float(traj.think_time_s[nxt]) if self._use_think else 0.0
        heapq.heappush(self._arrivals, (next_round_s(req.finish_seen_s, req.persist_seen_s, think), req.agent, nxt))

    # ---- events ---------------------------------------------------------------------------------
    def _take(self, ev) -> None:
        """One event from the queue: a worker's (``threads``) or a node actor's (``ray``: request
        ids resolved by :func:`~.ray_runtime.translate`; read-queue changes; a node's death)."""
        if self._remote is None:
            self._handle(ev)
        elif ev[0] == "read_q":
            if ev[1] not in self._remote.dead:
                self.read_q.add(ev[1], ev[2])
        elif ev[0] == "node_died":
            self._node_died(ev[1], ev[2])
        else:
            self._handle(self._remote.translate(ev, self.requests))

    def _node_died(self, node: int, error: str) -> None:
        """Node ``node``'s process is gone (``ray``): record it, take its engines out of placement
        and run its unfinished requests again on the others (see ``ray_runtime``)."""
        if node in self._remote.dead:
            return
        self._remote.dead[node] = error
        cause = f"node{node} died: {error}"
        self.worker_errors.append({"time_s": self.ctx.now(), "worker": f"node{node}", "error": cause,
                                   "traceback": "", "fatal": False})
        lost = [e for e, n in enumerate(self.node_of) if n == node]
        self.view.lost.update(lost)
        for e in lost:
            self.sched.engine_lost(e)
        self.read_q.add(node, -self.read_q.tokens(node))  # its reads died with it
        cfg = self.config
        if all(e in self.view.lost for e in range(cfg.num_pe)) or \
                all(e in self.view.lost for e in range(cfg.num_pe, cfg.num_pe + cfg.num_de)):
            self._aborted = f"{cause}; no {'PE' if node < cfg.prefill_nodes else 'DE'} is left"
        for req in list(self.requests):
            if req.retried or not ((req.pe in lost and not req.pe_released) or req.de in lost):
                continue  # (a request its PE has handed off no longer needs that PE)
            if not req.finished and not req.error:
                self._handle(("failed", req, cause, True))
            elif req.finished and req.de in lost and math.isnan(req.persist_seen_s):
                # finished, but the blocks it was persisting died with the node: the next round
                # recomputes what is missing (as after any failed persist)
                req.persist_failures = [*req.persist_failures, cause]
                self._handle(("persisted", req))
        self.driver.request_tick(self.ctx.now())

    def _broadcast_fail(self, req: RequestState, cause: str) -> None:
        """Tell the nodes that hold parts of ``req`` (``ray``) that it failed: they drop it and
        release what it held (in one process the request's own ``fail`` did that)."""
        if self._remote is not None:
            for node in {self.node_of[e] for e in (req.pe, req.de) if e >= 0}:
                self._remote.command(node, "fail", req.rid, cause)

    def _handle(self, ev) -> None:
        kind = ev[0]
        req = ev[1].req if kind in ("read_done", "read_failed") else ev[1]
        if kind == "read_done":
            self._read_done(*ev[1:])
        elif kind == "read_failed":  # what the job carried before it stopped was read for this attempt
            _, job, carried, cause = ev
            self._book_read(job, carried)
            self._handle(("failed", req, cause, True))
        elif kind == "prefilled":
            if not req.error:
                self._release_pe(req)
                self.des[req.de].join(req)
        elif kind == "finished":
            self._release_de(req)
            if req.error:  # (cannot happen: a request is finished or failed, never both)
                return
            req.finish_seen_s = self.ctx.now()
            if not math.isnan(req.persist_seen_s):
                self._next_round(req, failed=False)
        elif kind == "persisted":
            if req.error:
                return
            req.persist_seen_s = self.ctx.now()
            if not math.isnan(req.finish_seen_s):
                self._next_round(req, failed=False)
        elif kind == "failed":
            if req.fail(ev[2], self.ctx.now()):
                self._broadcast_fail(req, ev[2])
                self._release_pe(req)
                self._release_de(req)
                if ev[3] and req.attempt < self.config.max_attempts and not self._aborted:
                    req.retried = True  # run the round again from the start
                    self._arrive(req.agent, req.round_index, req.attempt + 1, req.arrival_s)
                else:
                    self._next_round(req, failed=True)
        elif kind == "worker_error":
            _, worker, error, text, fatal = ev
            self.worker_errors.append({"time_s": self.ctx.now(), "worker": worker, "error": error,
                                       "traceback": text, "fatal": fatal})
            if fatal and not self._aborted:
                self._aborted = f"worker {worker} died: {error}"

    def _release_pe(self, req: RequestState) -> None:
        if req.pe >= 0 and not req.pe_released:
            req.pe_released = True
            self.view.release(req.pe, req.sched)
            self.driver.pe_released(req.pe)
            self.driver.request_tick(self.ctx.now())

    def _release_de(self, req: RequestState) -> None:
        if req.de >= 0 and not req.de_released:
            req.de_released = True
            self.view.release(req.de, req.sched)
            self.driver.de_released(req.de)
            self.driver.request_tick(self.ctx.now())

    def _expire(self, cause: str) -> None:
        """End the run now (deadline or a dead worker): unfinished requests fail with ``cause``,
        rounds never issued are reported not run."""
        now = self.ctx.now()
        for req in self.requests:
            if not req.finished and not req.error:
                req.fail(cause, now)
                self._broadcast_fail(req, cause)
                self._release_pe(req)
                self._release_de(req)
        for k, traj in enumerate(self.trajectories):
            issued = {r.round_index for r in self.requests if r.agent == k}
            for r in range(traj.num_rounds):
                if r not in issued:
                    self.requests.append(RequestState.not_run(len(self.requests), k, r, traj,
                                                              self.layout.block_tokens, now, cause))

    # ---- placement and reads (decided by the shared driver) ------------------------------------
    def _on_pe_placed(self, asg) -> None:
        req = self.requests[asg.request.request_id]
        req.pe = asg.engine_id
        self.view.place(req.pe, asg.request)
        if req.error:  # failed while it waited (its node died): the placement is given back at once
            self._release_pe(req)

    def _on_de_placed(self, asg) -> None:
        req = self.requests[asg.request.request_id]
        req.de = asg.engine_id
        self.view.place(req.de, asg.request)
        if req.error:  # failed while it waited for a DE (its PE's node died): no reads, no load
            self._release_de(req)
            return
        self._start_read(req)

    def _start_read(self, req: RequestState) -> None:
        z = self.layout.block_tokens
        req.placed_s = self.ctx.now()
        hit = req.lookup_blocks
        pn, dn = self.node_of[req.pe], self.node_of[req.de]
        plan = self.driver.read_plan(req.sched, pn, dn, hit, z)
        req.side, req.de_blocks = plan
        if self.config.loading == "oracle":  # no KV I/O: no read queue either (as in the simulator)
            jobs = [ReadJob(req, "pe", pn, 0, hit)] if hit else []
        else:
            jobs = [j for j in (ReadJob(req, "de", dn, 0, plan.de_blocks), ReadJob(req, "pe", pn, plan.de_blocks, hit))
                    if j.last > j.first]
            for j in jobs:  # the reader takes them out again as it reads
                self.read_q.add(j.node, (j.last - j.first) * z)
        req.pending_reads = len(jobs)
        for j in jobs:
            self.readers[j.node].submit(j)
        if not jobs:
            self._reads_complete(req)

    def _read_done(self, job: ReadJob, blocks: list, failures: list) -> None:
        req = job.req
        self._book_read(job, len(blocks))
        if job.side == "pe":
            req.pe_hit = blocks
        else:
            req.de_hit = blocks
        req.read_failures.extend(failures)
        req.pending_reads -= 1
        if req.error:
            req.release_buffers()
        if req.pending_reads == 0 and not req.error:
            self._reads_complete(req)

    def _book_read(self, job: ReadJob, blocks: int) -> None:
        """Count ``blocks`` Full Blocks read by ``job`` among its request's reads (an ``oracle`` read
        crosses no link and counts none)."""
        nbytes = 0 if self.fabric.bypass else blocks * self.layout.full_block_bytes
        if job.side == "pe":
            job.req.read_bytes_pe += nbytes
        else:
            job.req.read_bytes_de += nbytes

    def _reads_complete(self, req: RequestState) -> None:
        de_part = req.de_blocks if self.config.loading != "oracle" else 0
        if len(req.de_hit) < de_part:  # a DE-side block failed: the hit ends there
            req.hit_blocks = len(req.de_hit)
        else:
            req.hit_blocks = len(req.de_hit) + len(req.pe_hit)
        req.read_done_s = self.ctx.now()
        self.pes[req.pe].enqueue(req)

