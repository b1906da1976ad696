"""Prefill engine worker of the runtime: batches, layer-wise or full prefill, KV to the DE buffer.

One thread per PE (one JAX device). Its FIFO holds requests whose hit KV has been read (PE
buffer, DE buffer or both). Each forward (PAPER.md sections 2.3, 2.4, 3, 5.5):

1. **Batch** from the FIFO with ``sched.ClusterScheduler.form_pe_batch`` (``dualpath``: compute
   quota with chunked prefill under the fitted time model; ``round_robin``: FIFO under a token
   cap), within the PE's device KV budget (all L layers for ``full``, ``depth`` layers for
   ``layerwise``). A chunked request keeps its computed chunks' KV on the PE host and loads it
   like hit KV in its next forward (``cached`` = hit + earlier chunks).
2. **Reserve** the DE buffer for what this PE will send (before the first chunk): all hit and
   new KV for PE-side reads, the new tokens' KV only for DE-side reads (the hit is already
   there). A request whose DE buffer is full waits in the FIFO without blocking the others.
3. **Load and compute** with the one prefill path, :meth:`~dualpath_jax.engine.prefill.PrefillPath.forward`
   (the code the standalone PE, the data-path benchmark and the notebook run): ``layerwise``
   keeps ``depth`` layers of cached KV on the device and frees each after use; ``full`` loads all
   layers, then computes. A layer's cached KV enters the device over the PE's CNIC (PE buffer ->
   HBM loopback) and, for DE-side blocks, over the DE's CNIC out and the PE's CNIC in.
4. **Send** each finished layer's KV to the DE buffer on a per-PE sender thread (PE CNIC out ->
   DE CNIC in; the path's ``on_layer`` hook), overlapping with the next layers' compute.
5. The last chunk's logits give the **first token** (greedy). Once every send has landed the
   request is handed to its DE and the PE buffer holding its hit blocks is released.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time

import jax
import numpy as np

from dualpath_jax.engine.compute import top2_gap
from dualpath_jax.engine.context import RunContext
from dualpath_jax.engine.network import TransferFailed
from dualpath_jax.engine.prefill import PrefillChunk, PrefillPath
from dualpath_jax.engine.request import RequestState
from dualpath_jax.kvcache import gather_layer
from dualpath_jax.sched import BatchItem
from dualpath_jax.transfer import LoaderError, Medium, Outcome, TransferRecord, TransferResult

__all__ = ["PrefillItem", "PrefillWorker", "ForwardRecord"]

_BUFFER_POLL_S = 0.005


@dataclasses.dataclass
class PrefillItem:
    """A request in a PE's FIFO: ``cached`` tokens with KV (hit + computed chunks), ``remaining`` to compute."""

    req: RequestState
    cached: int
    remaining: int
    first: bool = True
    chunk_kv: list | None = None  # per layer, the host LayerKV of the computed chunks' tokens
    buffer_wait_since: float | None = None
    # the hit blocks this PE reads (``req.pe_hit``/``req.de_hit`` when it was queued): a failure
    # handled by the controller meanwhile drops the request's lists, not these
    pe_hit: list = dataclasses.field(default_factory=list)
    de_hit: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ForwardRecord:
    """One PE forward: ``items`` = ``(request id, cached, bsz)``; seconds since the run start."""

    engine: int
    items: tuple
    start_s: float
    wall_s: float
    compute_s: float
    load_wait_s: float
    loaded_bytes: int


class _KVInLink:
    """The loader's link for one batch: a layer's cached KV over the PE's CNIC in (PE-side bytes)
    and over DE CNIC out -> PE CNIC in (DE-side bytes, per DE). Same interface as ``Link.transfer``."""

    def __init__(self, ctx: RunContext, pe: int, pe_bytes: int, de_bytes: dict[int, int]):
        self.ctx, self.pe, self.pe_bytes, self.de_bytes = ctx, pe, pe_bytes, de_bytes
        self.name = f"kv_in/pe{pe}"

    def transfer(self, num_bytes, fn=None, *, timeout_s=None, tag=""):
        fab, t0 = self.ctx.fabric, time.perf_counter()
        value, outcome, cause = None, Outcome.OK, ""
        try:
            for de, nbytes in sorted(self.de_bytes.items()):
                self.ctx.peers.carry_de_to_pe(de, self.pe, nbytes, tag=tag, timeout_s=timeout_s)
            value = fab.carry(fab.pe_h2d(self.pe), self.pe_bytes, fn, tag=tag, timeout_s=timeout_s)
        except TransferFailed as e:  # a hop's timeout stays a timeout (the caller tells it from a failure)
            outcome, cause = (Outcome.TIMEOUT if e.cause.startswith("timeout") else Outcome.ERROR), str(e)
        rec = TransferRecord(self.name, Medium.PE_BUFFER, Medium.PE_HBM, int(num_bytes), t0, time.perf_counter(),
                             outcome, cause, tag)
        return TransferResult(value, rec)


class PrefillWorker:
    """One PE (see module docstring). ``enqueue`` items once their reads are done."""

    def __init__(self, ctx: RunContext, engine_id: int, device: jax.Device):
        self.ctx, self.engine_id, self.device = ctx, engine_id, device
        cfg, spec = ctx.config, ctx.spec
        self.path = PrefillPath(ctx.params, spec, ctx.layout, device=device, mode=cfg.prefill,
                                depth=cfg.layerwise_depth, timeout_s=cfg.timeout_s, embed_table=ctx.embed_table)
        self.depth = self.path.depth
        share = self.depth / spec.n_layers
        self.max_kv_tokens = cfg.pe_hbm_kv_bytes / (ctx.bytes_per_token * share)
        self._ready: collections.deque[PrefillItem] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._sends: queue.Queue = queue.Queue()
        self.forwards: list[ForwardRecord] = []
        self.compute_s = 0.0
        self.name = f"pe{engine_id}"
        self._thread = ctx.thread(self.name, self._run)
        self._sender = ctx.thread(f"{self.name}-send", self._send_loop)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "PrefillWorker":
        self._thread.start()
        self._sender.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=self.ctx.config.timeout_s)
        self._sends.put(None)
        self._sender.join(timeout=self.ctx.config.timeout_s)

    def enqueue(self, req: RequestState) -> None:
        """Add a request whose hit KV is in the buffers (``req.hit_blocks`` final)."""
        item = PrefillItem(req, req.hit_tokens, req.prompt_tokens - req.hit_tokens, pe_hit=req.pe_hit,
                           de_hit=req.de_hit)
        with self._cond:
            self._ready.append(item)
            self._cond.notify_all()

    # ---- main loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._ready)
                if self._stop:
                    return
                for it in [it for it in self._ready if it.req.error]:
                    self._ready.remove(it)
                fifo = list(self._ready)
            fifo = [it for it in fifo if self._reserve_sends(it)]
            if not fifo:  # every waiting request still needs DE buffer space: poll, never block the PE
                with self._cond:
                    self._cond.wait(timeout=_BUFFER_POLL_S)
                continue
            entries: list[tuple[PrefillItem, int]] = []
            try:
                self.ctx.job(self.name)
                entries = self._form_batch(fifo)
                if entries:
                    self._forward(entries)
            except Exception as e:  # noqa: BLE001 - supervision: fail this forward's requests, go on
                cause = self.ctx.worker_error(self.name, e)
                for it in [it for it, _ in entries] or fifo[:1]:
                    if not it.req.handed_off:  # one already handed to its DE is the DE's now
                        self._drop(it, f"prefill: {cause}")

    def _form_batch(self, fifo: list[PrefillItem]) -> list[tuple[PrefillItem, int]]:
        ctx = self.ctx
        items = [BatchItem(it.req.rid, it.cached, it.remaining) for it in fifo]  # the ids the policy placed
        try:
            batch = ctx.sched.form_pe_batch(items, time_model=ctx.time_model,
                                            max_tokens=ctx.config.basic_max_batch_tokens,
                                            max_kv_tokens=self.max_kv_tokens)
        except ValueError as e:  # the head's cached KV can never fit this PE's device budget
            self._drop(fifo[0], f"PE device KV budget: {e}", retry=False)
            return []
        by_id = {it.req.rid: it for it in fifo}
        return [(by_id[b.request_id], b.remaining) for b in batch]

    def _drop(self, item: PrefillItem, cause: str, *, retry: bool = True) -> None:
        with self._cond:
            if item in self._ready:
                self._ready.remove(item)
        self.ctx.on_failed(item.req, cause, retry=retry)

    def _reserve_sends(self, item: PrefillItem) -> bool:
        """Hold DE buffer space for what this PE will send of the request (before its first chunk),
        unless its DE-side read already reserved it with the hit's (``engine/reader.py``).

        Never blocks the PE: the first poll takes the request's place in the DE buffer's FIFO
        (with the DE-side reads queued there), and a request whose space is not granted yet is
        left out of this batch (FIFO order among the others is kept); it fails once it has waited
        ``timeout_s``. Returns whether the request may join a batch now.
        """
        ctx, req = self.ctx, item.req
        if not item.first or ctx.fabric.bypass or req.de_send_lease is not None:
            return True
        pe_hit = self._pe_hit_tokens(item)
        nbytes = (pe_hit + req.prompt_tokens - req.hit_tokens) * ctx.bytes_per_token
        pool = ctx.peers.de_buffer(req)
        if nbytes > pool.capacity_bytes:
            self._drop(item, f"DE buffer for the PE->DE hand-off: {nbytes} B exceed buffer {pool.name}'s "
                             f"capacity {pool.capacity_bytes} B", retry=False)
            return False
        lease = pool.reserve(nbytes)
        if lease is not None:
            return req.attach_lease("de_send_lease", lease)
        if item.buffer_wait_since is None:
            item.buffer_wait_since = ctx.now()
        elif ctx.now() - item.buffer_wait_since > ctx.config.timeout_s:
            self._drop(item, f"DE buffer for the PE->DE hand-off: {pool.name} had no {nbytes} B free for "
                             f"{ctx.config.timeout_s} s")
        return False

    def _pe_hit_tokens(self, it: PrefillItem) -> int:
        """Hit tokens whose blocks sit in the PE buffer (the rest, if any, in the DE buffer)."""
        return max(0, it.req.hit_blocks - len(it.de_hit)) * it.req.block_tokens

    def _de_hit_tokens(self, it: PrefillItem) -> int:
        return min(len(it.de_hit), it.req.hit_blocks) * it.req.block_tokens

    @property
    def shapes(self) -> set:
        """``(T bucket, P bucket)`` prefill shapes this PE has run."""
        return self.path.shapes

    # ---- one forward ----------------------------------------------------------------------------
    def _forward(self, entries: list[tuple[PrefillItem, int]]) -> None:
        ctx, spec = self.ctx, self.ctx.spec
        start = ctx.now()
        for it, _ in entries:
            if it.first:
                it.req.prefill_start_s = start
        bt = ctx.bytes_per_token_per_layer
        pe_bytes, de_bytes = 0, {}
        for it, _ in entries:
            de_tok = self._de_hit_tokens(it)
            pe_bytes += (it.cached - de_tok) * bt
            if de_tok:
                de_bytes[it.req.de] = de_bytes.get(it.req.de, 0) + de_tok * bt
        chunks = [PrefillChunk(it.req.prompt[it.cached:it.cached + bsz], it.cached,
                               logits="last" if bsz == it.remaining else "none") for it, bsz in entries]
        # the DE-side hit blocks of each request, in its DE buffer (another process under ``ray``)
        de_hits = ctx.peers.de_hits([(it.req, it.de_hit[:self._de_hit_tokens(it) // it.req.block_tokens])
                                     for it, _ in entries])

        def fetch(layer: int):
            return [self._cached_pieces(it, layer, de_hits[b]) for b, (it, _) in enumerate(entries)]

        def on_layer(layer: int, b: int, kv: tuple) -> None:
            self._send_layer(entries[b][0], layer, kv)

        try:
            out = self.path.forward(chunks, fetch, _KVInLink(ctx, self.engine_id, pe_bytes, de_bytes),
                                    on_layer=on_layer)
        except (LoaderError, TransferFailed) as e:
            for it, _ in entries:
                self._drop(it, f"prefill on pe{self.engine_id}: {e}")
            return
        self.compute_s += out.compute_s
        end = ctx.now()
        self.forwards.append(ForwardRecord(self.engine_id, tuple((it.req.rid, it.cached, bsz) for it, bsz in entries),
                                           start, end - start, out.compute_s, out.load_wait_s, out.loaded_bytes))
        for b, (it, bsz) in enumerate(entries):
            req, new_kv = it.req, out.new_kv[b]
            prev = it.chunk_kv
            it.chunk_kv = [tuple(np.concatenate([prev[l][i], new_kv[l][i]]) for i in range(2)) if prev
                           else new_kv[l] for l in range(spec.n_layers)]
            it.cached += bsz
            it.remaining -= bsz
            it.first = False
            if it.remaining > 0:
                continue  # chunked prefill: stays at the head of the FIFO
            with self._cond:
                self._ready.remove(it)
            logits = out.logits[b]
            req.generated, req.gaps = [int(np.argmax(logits))], [top2_gap(logits)]
            req.prefill_finish_s = req.first_token_s = end
            with req.lock:
                req.prefill_done = True
            self._maybe_hand_off(req)

    def _cached_pieces(self, it: PrefillItem, layer: int, de_hit) -> list[tuple]:
        """Host LayerKVs of the item's cached tokens in ``layer``, in token order: DE-side hit
        blocks (``de_hit``, from ``ctx.peers.de_hit``), PE-side hit blocks, then the KV of its
        computed chunks."""
        layout, req = self.ctx.layout, it.req
        parts = []
        n_de = min(len(it.de_hit), req.hit_blocks)
        if n_de:
            parts.append(de_hit.layer(layer))
        if req.hit_blocks > n_de:
            parts.append(gather_layer(layout, it.pe_hit[:req.hit_blocks - n_de], layer, dtype=np.float32))
        if it.chunk_kv:
            parts.append(it.chunk_kv[layer])
        return parts

    # ---- hand-off to the DE buffer --------------------------------------------------------------
    def _send_layer(self, it: PrefillItem, layer: int, new: tuple) -> None:
        """Queue layer ``layer``'s KV for the DE buffer: the chunk's new tokens, plus (first chunk,
        PE-side reads) the hit tokens whose blocks are in the PE buffer."""
        req = it.req
        with req.lock:
            req.pending_sends += 1
        self._sends.put((it, layer, new, it.cached, it.first))

    def _send_loop(self) -> None:
        while True:
            job = self._sends.get()
            if job is None:
                return
            jobs = [job]
            while True:  # the layers already waiting go out together where the transport allows
                try:
                    nxt = self._sends.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._sends.put(None)  # stop after this batch
                    break
                jobs.append(nxt)
            self._send_jobs(jobs)

    def _send_jobs(self, jobs: list) -> None:
        """Send ``jobs`` (``(item, layer, new KV, start, first)``) through ``ctx.peers.send_batch``;
        each job's request is released (and handed off if it was its last send) as soon as that
        send completes or fails, whatever happens to the others. ``send_batch`` may answer after
        it returns (``ray``: once the DE node has the bytes), from another thread."""
        ctx = self.ctx
        bt = ctx.bytes_per_token_per_layer
        sends, owners, done, lock = [], [], set(), threading.Lock()

        def finish(i: int) -> None:  # job i's send is over (sent, failed or skipped)
            with lock:
                if i in done:
                    return
                done.add(i)
            req = jobs[i][0].req
            with req.lock:
                req.pending_sends -= 1
            self._maybe_hand_off(req)

        def on_done(k: int, e: BaseException | None) -> None:
            req, i = owners[k]
            if isinstance(e, TransferFailed):
                ctx.on_failed(req, f"PE->DE hand-off: {e}")
            elif e is not None:  # supervision: fail this request, go on
                ctx.on_failed(req, f"PE->DE hand-off: {ctx.worker_error(f'{self.name}-send', e)}")
            finish(i)

        try:
            for i, (it, layer, new, start, first) in enumerate(jobs):
                req = it.req
                try:
                    if not req.error:
                        ctx.job(f"{self.name}-send")
                        segments = self._segments(it, layer, new, start, first)
                        ntok = sum(len(seg[1]) for seg in segments)
                        sends.append((req, layer, segments, ntok * bt, f"kv_out/r{req.rid}"))
                        owners.append((req, i))
                        continue
                except Exception as e:  # noqa: BLE001 - supervision: fail this request, go on
                    ctx.on_failed(req, f"PE->DE hand-off: {ctx.worker_error(f'{self.name}-send', e)}")
                finish(i)
            if sends:
                ctx.peers.send_batch(self.engine_id, sends, on_done)
        except Exception as e:  # noqa: BLE001 - supervision: the sends not yet over fail, the sender goes on
            cause = ctx.worker_error(f"{self.name}-send", e)
            for req, i in owners:
                if i not in done:
                    ctx.on_failed(req, f"PE->DE hand-off: {cause}")
                    finish(i)
        finally:  # jobs that never reached send_batch (on_done finishes the others)
            sent = {i for _, i in owners}
            for i in range(len(jobs)):
                if i not in sent:
                    finish(i)

    def _segments(self, it: PrefillItem, layer: int, new: tuple, start: int, first: bool) -> list:
        """Layer ``layer``'s KV this send carries to the DE buffer: ``(start token, a, b)`` of the
        chunk's new tokens, after (first chunk, PE-side reads) the hit tokens in the PE buffer."""
        req = it.req
        segments = []
        n_de = self._de_hit_tokens(it) // req.block_tokens
        if first and req.hit_blocks > n_de:
            hit = gather_layer(self.ctx.layout, it.pe_hit[:req.hit_blocks - n_de], layer, dtype=np.float32)
            segments.append((n_de * req.block_tokens, hit[0], hit[1]))
        segments.append((start, new[0], new[1]))
        return segments

    def _maybe_hand_off(self, req: RequestState) -> None:
        with req.lock:
            ready = req.prefill_done and req.pending_sends == 0 and not req.handed_off and not req.error
            if ready:
                req.handed_off = True
        if ready:
            if req.pe_lease is not None:
                req.pe_lease.release()
            req.pe_hit = []
            self.ctx.on_prefilled(req)
