"""The node side of the ``ray`` runtime: one node of the engine cluster in its own process.

:class:`NodeHost` is the Ray actor (:mod:`.ray_runtime` describes the runtime and starts it): it
runs the node's PE or DE workers and its reader over its own fabric, store and transfer endpoint,
takes the driver's numbered orders, posts the workers' events with the request fields each stage
filled in (``_PREFILLED``, ``_FINISHED``, ``_PERSISTED``; the driver's join order carries
``JOIN_FIELDS``), and serves what other nodes' PEs ask of it (:class:`~.ray_peers.RayPeers`: DE buffer reservations,
DE-side hit Layer Blocks, the hand-off; the PE side of those is :mod:`.ray_peers`, with
:class:`~.ray_peers.RequestInfo`, what a node needs to build its replica of a request).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import heapq
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import jax
import numpy as np

from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.context import RunContext
from dualpath_jax.engine.de import DecodeWorker
from dualpath_jax.engine.faults import FaultConfig, FaultInjector
from dualpath_jax.engine.network import Fabric, TransferFailed
from dualpath_jax.engine.pe import PrefillWorker
from dualpath_jax.engine.prefill import PrefillPath
from dualpath_jax.engine.profile import CompileClock, start_backends, warm_up_prefill
from dualpath_jax.engine.ray_peers import RayPeers, RequestInfo, _unpack
from dualpath_jax.engine.reader import NodeReader, ReadJob
from dualpath_jax.engine.request import RequestState
from dualpath_jax.kvcache import BlockLayout
from dualpath_jax.model.spec import ModelSpec
from dualpath_jax.store import KVStore, StoreConfig
from dualpath_jax.transfer.remote import ArraySpec, KVOffer, KVTransferEndpoint

__all__ = ["NodeHost", "snapshot", "apply_patch", "JOIN_FIELDS", "POLL_S"]

POLL_S = 2.0
"""Longest wait of one :meth:`NodeHost.poll` (seconds). A poll returns as soon as an event is
there, and :meth:`NodeHost.wake` ends one at the end of a run, so an idle node costs one actor
call per ``POLL_S`` (each call costs about a millisecond of CPU on either side)."""

_WAKE = ("wake",)  # ends a pending poll (not an event)


class _HeldReadQueues:
    """A node's side of the read queues: the reader's changes (one per block read) are summed
    here until the driver takes them, with the node's next events (:meth:`NodeHost.poll`) or when
    a scheduling tick needs them (:meth:`NodeHost.read_q_changes`). Thread-safe."""

    def __init__(self):
        self._held: dict[int, float] = {}
        self._lock = threading.Lock()

    def add(self, node: int, tokens: float) -> None:
        with self._lock:
            self._held[node] = self._held.get(node, 0.0) + float(tokens)

    def take(self) -> list:
        """The changes held, one ``("read_q", node, tokens)`` event per node with a nonzero sum
        (in node order), and none held after."""
        with self._lock:
            held, self._held = self._held, {}
        return [("read_q", n, t) for n, t in sorted(held.items()) if t]


# the RequestState fields each event carries back to the driver (and the join order to the DE)
_PREFILLED = ("generated", "gaps", "prefill_start_s", "prefill_finish_s", "first_token_s", "prefill_done",
              "handed_off")
_FINISHED = ("generated", "gaps", "decode_start_s", "second_token_s", "finish_s", "finished", "blocks_persisted",
             "persist_failures", "persisted_s")
_PERSISTED = ("blocks_persisted", "persist_failures", "persisted_s")
JOIN_FIELDS = ("generated", "gaps", "hit_blocks", "prefill_start_s", "prefill_finish_s", "first_token_s",
               "prefill_done", "handed_off", "side", "de_blocks")


def snapshot(req: RequestState, fields: Sequence[str]) -> dict:
    """Copies of ``req``'s ``fields`` (taken under its lock), for an event or an order."""
    with req.lock:
        return {f: copy.copy(getattr(req, f)) for f in fields}


def apply_patch(req: RequestState, patch: dict) -> None:
    """Set the fields of a :func:`snapshot` on ``req`` (the replica or the driver's record)."""
    with req.lock:
        for k, v in patch.items():
            setattr(req, k, v)


class NodeHost:
    """One node of the cluster in its own process (a Ray actor; module docstring).

    Args:
      node: node id (PE nodes first); role: ``"pe"`` or ``"de"``; engines: its engines' global ids.
      spec, layout, params: the model (host parameters; each engine puts a copy on its device).
      scheduler_cls: the scheduler class (its ``form_pe_batch`` runs on the PE).
      jit_cache_dir: JAX's persistent compilation cache ("" = none), shared with the driver.
    """

    def __init__(self, node: int, role: str, engines: Sequence[int], spec: ModelSpec, layout: BlockLayout,
                 params: dict, scheduler_cls: type, jit_cache_dir: str = ""):
        if jit_cache_dir:
            jax.config.update("jax_compilation_cache_dir", jit_cache_dir)
        CompileClock.start()  # this process's compilations, for warm_up_prefill's count
        self.node, self.role, self.engines = int(node), role, list(engines)
        self.spec, self.layout, self.params, self.scheduler_cls = spec, layout, params, scheduler_cls
        self.embed = np.asarray(params["embed"], np.float32)
        self.xla_threads = start_backends()  # (params are host arrays: nothing started a backend yet)
        self.devices = jax.devices()
        self.endpoint = KVTransferEndpoint(f"node{node}")
        self._outbox: queue.Queue = queue.Queue()
        self._reqs: dict[int, RequestState] = {}
        self._failed: dict[int, str] = {}
        self._lock = threading.Lock()
        self._cmds: list = []
        self._cmd_cond = threading.Condition()
        self._post_lock = threading.Lock()
        self._running = False
        self._run_id = None  # the run whose workers exist (begin_run .. end_run)
        self._read_q = _HeldReadQueues()
        self.ctx = None
        self._calls: Counter = Counter()  # this run's calls served, by method (end_run's "actor_calls")
        self._calls_lock = threading.Lock()

    def _served(self, *kinds: str) -> None:
        with self._calls_lock:
            self._calls.update(kinds)

    def _calls_served(self) -> dict:
        with self._calls_lock:
            return dict(self._calls)

    def ping(self) -> tuple[int, list[int]]:
        """This process's id (the actor is up) and its XLA threads' native ids
        (:func:`~dualpath_jax.engine.profile.start_backends`)."""
        return os.getpid(), sorted(self.xla_threads)

    def warm_up_prefill(self, shapes: Sequence[tuple[int, int]]) -> int:
        """Compile this PE node's prefill programs for ``(T bucket, P bucket)`` shapes on each of its
        engines' devices, as its PEs will call them (:func:`~.profile.warm_up_prefill`), so that no
        timed run compiles them. Returns the XLA programs this compiled (or loaded from the
        persistent cache) in this process: 0 when every one was already in memory, and on a DE node."""
        if self.role != "pe":
            return 0
        before = CompileClock.read()[1]
        for d in {self.devices[i % len(self.devices)] for i in range(len(self.engines))}:
            warm_up_prefill(self.params, self.spec, d, shapes,
                            path=PrefillPath(self.params, self.spec, self.layout, device=d))
        return CompileClock.read()[1] - before

    # ---- a run ----------------------------------------------------------------------------------
    def begin_run(self, run_id: str, config: ClusterConfig, store_config: StoreConfig, nodes: Sequence,
                  sched_args: tuple, time_model, max_blocks: int, faults: FaultConfig | None = None) -> dict:
        """Build this node's workers for run ``run_id`` (the DEs compile their decode steps; nothing
        runs until :meth:`start_run`); a run still active here (its driver gave up on it) is stopped
        first. ``faults``: what this node's workers, links and reader inject (its own
        :class:`~.faults.FaultInjector`, seeded with the node id as its stream). Returns
        ``{"pid", "max_kv_tokens": {pe: tokens}, "num_blocks": {de: blocks}}``."""
        if self._run_id is not None:
            self._stop_run()
        self._reqs, self._failed = {}, {}
        self._cmds, self._next_seq = [], 0
        with self._calls_lock:
            self._calls = Counter()
        # every callback of this run posts to this run's outbox: a worker of a run that outlived its
        # end (stopped with a timeout) cannot reach the next run's, whose request ids start again from 0
        outbox = self._outbox = queue.Queue()
        post = outbox.put
        self.config = config
        self._read_q = _HeldReadQueues()
        fabric = self.fabric = Fabric(config)
        self.store = KVStore(self.layout, store_config)
        sched = self.scheduler_cls(*sched_args)
        ctx = self.ctx = RunContext(
            config, self.spec, self.layout, self.params, self.embed, fabric, self.store, sched, time_model,
            on_prefilled=lambda r: self._post_patch("prefilled", r, _PREFILLED, outbox),
            on_finished=lambda r: self._post_patch("finished", r, _FINISHED, outbox),
            on_persisted=lambda r: self._post_patch("persisted", r, _PERSISTED, outbox),
            on_failed=lambda r, c, retry=True: post(("failed", r.rid, c, retry)),
            on_worker_error=lambda w, e, tb, fatal=False: post(("worker_error", w, e, tb, fatal)),
            clock=time.time, t0=time.time())
        ctx.peers = RayPeers(self.endpoint, nodes, fabric, self.layout, config, self.spec.n_layers, run_id=run_id)
        self.faults = FaultInjector(faults, now=ctx.now, stream=self.node) if faults is not None else None
        ctx.faults = fabric.faults = self.faults
        dev = {e: self.devices[i % len(self.devices)] for i, e in enumerate(self.engines)}
        self.pes = {e: PrefillWorker(ctx, e, dev[e]) for e in self.engines} if self.role == "pe" else {}
        self.des = {e: DecodeWorker(ctx, e, dev[e]) for e in self.engines} if self.role == "de" else {}
        for de in self.des.values():
            de.warm_up(max_blocks)
        self.reader = NodeReader(ctx, self.node, self._read_q, on_done=functools.partial(self._read_done, outbox),
                                 on_error=functools.partial(self._read_failed, post))
        self._pulled0 = self.endpoint.bytes_pulled
        self._dispatcher = None
        self._run_id = run_id
        return {"pid": os.getpid(), "max_kv_tokens": {e: w.max_kv_tokens for e, w in self.pes.items()},
                "num_blocks": {e: w.num_blocks for e, w in self.des.items()}}

    def start_run(self, t0: float) -> None:
        """Start the run's clock (``t0``: the driver's ``time.time()`` at its start) and workers."""
        self.ctx.t0 = float(t0)
        self._perf_t0 = time.perf_counter() - (time.time() - float(t0))  # t0 on the links' clock
        self._running = True
        self._dispatcher = self.ctx.thread(f"node{self.node}-orders", functools.partial(self._dispatch, self._outbox))
        for w in (*self.pes.values(), *self.des.values(), self.reader, self._dispatcher):
            w.start()

    def _post_patch(self, kind: str, req: RequestState, fields: Sequence[str], outbox: queue.Queue) -> None:
        """Post a stage's event with the fields it filled in to ``outbox`` (its run's); snapshot and
        post are one step, so events of one request leave in the order their snapshots were taken."""
        with self._post_lock:
            outbox.put((kind, req.rid, snapshot(req, fields)))

    def _stop_run(self) -> None:
        with self._cmd_cond:
            self._running = False
            self._cmd_cond.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=self.config.timeout_s)
        for w in (*self.pes.values(), *self.des.values(), self.reader):
            w.stop()
        self._run_id = None

    def end_run(self, run_id: str, orders: int) -> dict | None:
        """Run the ``orders`` orders the driver gave (waiting up to ``timeout_s`` for late ones),
        stop the workers; return what they measured and the events not yet polled (None: not
        this run)."""
        if run_id != self._run_id:
            return None
        with self._cmd_cond:
            self._cmd_cond.wait_for(lambda: self._next_seq >= orders or not self._running,
                                    timeout=self.config.timeout_s)
        self._stop_run()
        events = self._poll(0.0)
        fab, mine = self.fabric, set(self.engines)
        links = [fab.nodes[self.node].snic_read, fab.nodes[self.node].snic_write]
        links += [l for e in fab.engines if e.engine_id in mine for l in (e.cnic_in, e.cnic_out)]
        transfers = [dataclasses.replace(r, start_s=r.start_s - self._perf_t0, finish_s=r.finish_s - self._perf_t0)
                     for link in links for r in link.records()]
        names = {link.name for link in links}
        link_stats = {k: v for k, v in fab.link_stats().items() if k in names}
        buf = fab.buffer_of(self.node)
        out = {
            "events": events, "links": link_stats, "transfers": transfers,
            "buffer": {buf.name: buf.in_use_bytes},
            "forwards": [f for w in self.pes.values() for f in w.forwards],
            "steps": [s for w in self.des.values() for s in w.steps],
            "compute_s": {**{f"pe{e}": w.compute_s for e, w in self.pes.items()},
                          **{f"de{e}": w.compute_s for e, w in self.des.items()}},
            "shapes": {**{f"pe{e}": sorted(w.shapes) for e, w in self.pes.items()},
                       **{f"de{e}": sorted(w.shapes) for e, w in self.des.items()}},
            "join_s": {f"de{e}": w.join_s for e, w in self.des.items()},
            "join_count": {f"de{e}": w.join_count for e, w in self.des.items()},
            "free_blocks": {e: w.free_blocks for e, w in self.des.items()},
            "read_bytes_store": self.store.stats().read_bytes,
            "bypass_bytes": self.reader.bypass_bytes, "discarded_bytes": self.reader.discarded_bytes,
            "cross_process_kv_bytes": self.endpoint.bytes_pulled - self._pulled0,
            "faults": dict(self.faults.counts) if self.faults is not None else {},
            "actor_calls": self._calls_served(),
        }
        self.store.close()
        self.pes, self.des, self.reader, self.ctx, self.store = {}, {}, None, None, None
        self._reqs, self._failed = {}, {}
        return out

    def poll(self, timeout_s: float = POLL_S) -> list:
        """Events of this node's workers (waits up to ``timeout_s`` for the first, or until
        :meth:`wake`), then the read-queue changes held since the driver last took them.

        The reader's changes (one per block) do not end a wait: an answer per block would cost an
        actor call each, and only the scheduler's ticks read the queues. They leave with the next
        events, or when the driver asks for them because a tick is due (:meth:`read_q_changes`).
        Counted in this run's ``actor_calls`` (a poll names no run: the driver stops its pumps
        before it ends a run)."""
        self._served("poll")
        return self._poll(timeout_s)

    def read_q_changes(self, run_id: str) -> list:
        """The read-queue changes held (``[("read_q", node, tokens)]``; empty if none, or if
        ``run_id`` is not this node's run), taken now. The driver asks the nodes with reads in
        flight when a tick that may place requests is pending (``RemoteNodes.pull_for_tick``),
        one fetch period ahead when that tick was just scheduled: in the paper the engines report
        their node's read queue when their group fetches (PAPER.md 5.1). Counted in this run's
        ``actor_calls`` as ``read_q``."""
        if self._other_run(run_id):
            return []
        self._served("read_q")
        return self._read_q.take()

    def _poll(self, timeout_s: float) -> list:
        out = []
        try:
            out.append(self._outbox.get(timeout=timeout_s) if timeout_s > 0 else self._outbox.get_nowait())
            while True:
                out.append(self._outbox.get_nowait())
        except queue.Empty:
            pass
        return [ev for ev in out if ev != _WAKE] + self._read_q.take()

    def wake(self) -> None:
        """End a pending :meth:`poll` now (the driver stops its event pumps)."""
        self._outbox.put(_WAKE)

    # ---- the driver's orders, in the order it gave them -----------------------------------------
    def command(self, run_id: str, seq: int, orders: Sequence[tuple[str, tuple]]) -> None:
        """Orders number ``seq``, ``seq + 1``, ... of run ``run_id`` (numbered from 0), each
        ``(op, args)`` with op ``read``, ``enqueue``, ``join`` or ``fail``. Ray may run an actor's
        calls concurrently; orders run one at a time, in number order; orders of another run
        (late ones) are dropped."""
        with self._cmd_cond:
            if run_id != self._run_id:
                return
            self._served("command")
            for i, (op, args) in enumerate(orders):
                heapq.heappush(self._cmds, (int(seq) + i, op, tuple(args)))
            self._cmd_cond.notify_all()

    def _dispatch(self, outbox: queue.Queue) -> None:
        while True:
            with self._cmd_cond:
                self._cmd_cond.wait_for(
                    lambda: not self._running or (self._cmds and self._cmds[0][0] == self._next_seq))
                if not self._running:
                    return
                _, op, args = heapq.heappop(self._cmds)
                self._next_seq += 1
                self._cmd_cond.notify_all()  # (end_run waits for the last order)
            try:
                getattr(self, "_order_" + op)(*args)
            except Exception as e:  # noqa: BLE001 - supervision: report, fail the order's request, go on
                cause = self.ctx.worker_error(f"node{self.node}-orders", e)
                rid = args[0].rid if args and isinstance(args[0], RequestInfo) else None
                if rid is not None:
                    outbox.put(("failed", rid, f"{op} on node{self.node}: {cause}", True))

    def _replica(self, info: RequestInfo | int) -> RequestState:
        """The request's replica in this node, built from ``info`` the first time; a bare request
        id names one built already.

        Raises:
          KeyError: a request id this node holds no replica of.
        """
        with self._lock:
            if not isinstance(info, RequestInfo):
                if info not in self._reqs:
                    raise KeyError(f"request {info}: no replica on node{self.node}")
                return self._reqs[info]
            req = self._reqs.get(info.rid)
            if req is None:
                req = self._reqs[info.rid] = info.build()
                if info.rid in self._failed:
                    req.error = self._failed[info.rid]
            return req

    def _order_read(self, info: RequestInfo, side: str, first: int, last: int) -> None:
        self.reader.submit(ReadJob(self._replica(info), side, self.node, first, last))

    def _order_enqueue(self, info: RequestInfo, pe: int, hit_blocks: int, de_blocks: int) -> None:
        req = self._replica(info)
        req.hit_blocks = hit_blocks
        req.de_hit = [None] * de_blocks  # in the DE's buffer (RayPeers.de_hit pulls them)
        self.pes[pe].enqueue(req)

    def _order_join(self, info: RequestInfo, de: int, patch: dict) -> None:
        req = self._replica(info)
        apply_patch(req, patch)
        self.des[de].join(req)

    def _order_fail(self, rid: int, cause: str) -> None:
        with self._lock:
            req = self._reqs.get(rid)
            if req is None:
                self._failed[rid] = cause
                return
        req.fail(cause, self.ctx.now())

    def _read_done(self, outbox: queue.Queue, job: ReadJob, blocks: list, failures: list) -> None:
        req = job.req
        if job.side == "pe":
            req.pe_hit = blocks
        else:
            req.de_hit = blocks
        if req.error:
            req.release_buffers()
        outbox.put(("read_done", req.rid, job.side, job.node, job.first, job.last, len(blocks), failures))

    @staticmethod
    def _read_failed(post: Callable, job: ReadJob, cause: str, carried: int) -> None:
        post(("read_failed", job.req.rid, job.side, job.node, job.first, job.last, carried, cause))

    # ---- what other nodes' PEs ask of this (DE) node --------------------------------------------
    def _other_run(self, run_id: str) -> str:
        """Why a PE's call of run ``run_id`` finds nothing here ("" if it is this node's run): a
        late call of an earlier run must not touch the replicas of the next, whose request ids
        start again from 0."""
        return "" if run_id == self._run_id else f"node{self.node} is not in run {run_id} (a late call)"

    def reserve(self, run_id: str, info: RequestInfo, num_bytes: int) -> bool:
        """Hold ``num_bytes`` of this node's DE buffer for the request's hand-off in run ``run_id``
        (:meth:`~dualpath_jax.engine.request.RequestState.claim_send_space`: the first call takes a
        place in the buffer's FIFO); False while not granted (or another run's call)."""
        if self._other_run(run_id):
            return False
        self._served("reserve")
        req = self._replica(info)
        if req.de_send_lease is not None:  # held already (an earlier answer the PE did not wait for)
            return not req.error
        lease = req.claim_send_space(self.fabric.buffer_of(self.node), num_bytes)
        return lease is not None and req.attach_lease("de_send_lease", lease)

    def offer_hits(self, run_id: str, asks: Sequence[tuple[int, int]], out_bytes: dict[int, int] | None = None,
                   reply_to: tuple[int, int] | None = None) -> list[KVOffer]:
        """Offer the DE-side hit blocks of ``asks`` (``(request id, n blocks)``: its first n),
        stacked in that order, one ``uint8[sum n, Z, Bt]`` per layer. The offers are returned at
        once; a thread of this node carries each layer over its DEs' CNIC out (``out_bytes``:
        bytes per layer per DE engine, carried by all of them together) and only then makes the
        layer pullable, layer after layer, so the PE's pull of a layer waits for the DE side of
        the move (PAPER.md 2.4: DE buffer -> DE CNIC out -> PE CNIC in). A layer whose carry fails
        is never offered, nor the layers after it: ``reply_to`` (the asking PE's node, its group
        token) is told at once (:meth:`hits_failed`), so that PE's pull fails and its forward
        with it, instead of waiting for a timeout. Once the run has ended the layers not yet
        carried are dropped (nothing pulls them), leaving the CNIC to the next run.

        A request that failed meanwhile (the driver's fail order reached this node before the PE
        formed its batch; this node then freed its blocks, or forgot the request) gets zero blocks:
        its row of the PE's forward is discarded, as under ``threads``, and its batch-mates' forward
        goes on rather than losing an attempt with it.

        Raises:
          RuntimeError: a live request's blocks are not in the buffer, or the call is of another
            run than this node's (``run_id``).
        """
        if cause := self._other_run(run_id):
            raise RuntimeError(cause)
        self._served("offer_hits")
        blocks = []
        for rid, n in asks:
            with self._lock:
                req = self._reqs.get(rid)
            if req is None or req.error:  # failed meanwhile: nothing will use its row
                blocks += [np.zeros(self.layout.full_block_shape, np.uint8)] * n
                continue
            mine = list(req.de_hit[:n])
            if len(mine) < n or any(b is None for b in mine):
                raise RuntimeError(f"request {rid}: its DE-side hit blocks are not in node{self.node}'s buffer")
            blocks += mine
        full = np.stack(blocks)  # [sum n, L, Z, Bt]
        layers = [np.ascontiguousarray(full[:, layer]) for layer in range(full.shape[1])]
        ep = self.endpoint
        offers = [KVOffer(ep.address, ep.next_uuid(), (ArraySpec.of(a),), f"hit/node{self.node}/l{layer}")
                  for layer, a in enumerate(layers)]
        # the PE pulls them layer by layer through its forward: each waits up to timeout_s per layer
        t = self.config.timeout_s
        expire = t * len(layers)
        des = sorted(out_bytes or {})
        fabric, peers = self.fabric, self.ctx.peers

        def carry() -> None:
            for layer, (arr, offer) in enumerate(zip(layers, offers)):
                if self._run_id != run_id:  # the run ended (its PE pulls no more): free the DE's CNIC out
                    return
                try:
                    self._carry_nested([fabric.engines[de].cnic_out for de in des], [out_bytes[de] for de in des],
                                       lambda: None, f"layer{layer}", t)
                except TransferFailed as e:  # never offered: the PE's pulls of it and later layers fail
                    if reply_to is not None:
                        peers.nodes[reply_to[0]].hits_failed.remote(reply_to[1], layer, str(e))
                    return
                ep.offer([arr], uuid=offer.uuid, expire_s=expire, tag=offer.tag)

        threading.Thread(target=carry, name=f"node{self.node}-hits-out", daemon=True).start()
        return offers

    def hits_failed(self, token: int, layer: int, cause: str) -> None:
        """A DE node will never offer ``layer`` (and later ones) of this node PE's
        :meth:`offer_hits` group ``token``: see :meth:`~.ray_peers.RayPeers.hits_failed`."""
        ctx = self.ctx
        if ctx is not None and ctx.peers is not None:
            ctx.peers.hits_failed(token, layer, cause)

    def receive_batch(self, run_id: str, parts: list, meta: list, offer: KVOffer, num_bytes: int, tag: str) -> str:
        """Pull a PE's packed sends of run ``run_id`` (``parts``: per send ``(RequestInfo or request id, layer, segment
        starts, bytes)``; ``meta``: the packed arrays, two per segment) into the requests' DE
        buffers, each send's bytes under its DE's CNIC in (one send at a time); returns "" or
        the failure's cause, which fails every send of the call: also when a bare id names a
        request this node holds no replica of (never, while the PE names by id only requests this
        node granted a lease to or answered a send of: :meth:`RayPeers.send_batch
        <dualpath_jax.engine.ray_peers.RayPeers.send_batch>`), and for a call of another run."""
        if cause := self._other_run(run_id):
            return cause
        self._served("receive_batch")
        try:
            reqs = [self._replica(info) for info, *_ in parts]
        except KeyError as e:
            return str(e.args[0])
        t = self.config.timeout_s

        def pull():
            arrays = _unpack(np.asarray(self.endpoint.pull_offer(offer, timeout_s=t)[0]), meta)
            k = 0
            for req, (_, layer, starts, _) in zip(reqs, parts):
                got = []
                for start in starts:
                    got.append((start, arrays[k], arrays[k + 1]))
                    k += 2
                with req.lock:
                    if not req.error:
                        req.segments[layer].extend(got)

        try:  # each send's bytes over its DE's CNIC in, one send at a time (the pull within the first)
            self._carry_sends([(r.de, p[3]) for r, p in zip(reqs, parts)], pull, tag, t)
        except TransferFailed as e:
            return str(e)
        return ""

    def _carry_sends(self, sends: list, pull, tag: str, timeout_s: float) -> None:
        """One CNIC-in hop per send (``(de, bytes)``), in order, ``pull`` within the first: as the
        in-process engine carries a PE's sends one at a time, another PE's sends to the same DE
        interleave with these instead of waiting for the whole call (whose bytes may take longer
        than ``timeout_s``)."""
        first = True
        for de, nbytes in sends:
            self.fabric.carry([self.fabric.engines[de].cnic_in], nbytes, pull if first else None, tag=tag,
                              timeout_s=timeout_s)
            first = False

    def _carry_nested(self, links: list, num_bytes: list, fn, tag: str, timeout_s: float) -> None:
        """Carry ``num_bytes[i]`` over ``links[i]``, the hops nested in order (all held at once),
        ``fn`` innermost.

        Raises:
          TransferFailed: a hop timed out or failed.
        """
        if not links:
            fn()
            return
        self.fabric.carry([links[0]], num_bytes[0],
                          lambda: self._carry_nested(links[1:], num_bytes[1:], fn, tag, timeout_s),
                          tag=tag, timeout_s=timeout_s)
