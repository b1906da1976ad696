"""Decode engine worker of the runtime: join from the DE buffer, continuous batching, persist.

One thread per DE (one JAX device) owns a block pool of KV on its device: per layer a pair of
pools ``[Pt, Z, ...]`` for the two arrays of the model's LayerKV (GQA ``k, v [Pt, Z, K, H]``, MLA
``latent [Pt, Z, C]`` and ``k_rope [Pt, Z, R]``), ``Pt`` = ``de_hbm_kv_bytes`` / Full Block bytes
of the layout. PAPER.md section 2.5:

* **Join**: a request whose prompt KV is complete in the DE buffer (DE-side hit blocks read
  from storage, plus what its PE sent: all layers' hit and new KV for PE-side reads, the new
  tokens' KV only for DE-side reads) gets its blocks, goes DE buffer -> device over the DE's
  CNIC (H2D), and its DRAM is released.
* **Decode**: every step runs :func:`dualpath_jax.engine.compute.decode_step` (the model's
  layers over the paged decode attention) over all active requests (up to ``max_decode_batch``
  rows, padded to a power of two; greedy, float32); a request leaves when it has generated its
  ``g`` tokens (the PE produced the first).
* **Persist**: each completed 64-token block - the prompt's blocks that were not hits at join,
  each block completed by decoding afterwards - goes device -> DRAM over the DE's CNIC (D2H)
  and DRAM -> storage over the node's SNIC (write direction), on a per-DE persist thread.
  The last, partial block is not persisted.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time

import jax
import numpy as np

from dualpath_jax.engine.compute import bucket_blocks, check_kernel_block_tokens, decode_step, get_block, set_blocks
from dualpath_jax.engine.context import RunContext
from dualpath_jax.engine.network import TransferFailed
from dualpath_jax.engine.request import RequestFailed, RequestState
from dualpath_jax.kvcache import chain_key, gather_layer, pack_full_blocks
from dualpath_jax.model.forward import layer_kv_shapes

__all__ = ["DecodeWorker", "StepRecord", "blocks_needed"]

_JOIN_CHUNK_BLOCKS = 16
MIN_DECODE_ROWS = 4
"""Smallest padded batch of a decode step (steps pad the active rows to a power of two)."""


def blocks_needed(prompt_tokens: int, gen_tokens: int, block_tokens: int) -> int:
    """Pool blocks a request holds on its DE: KV of its prompt and all but its last generated token."""
    return -(-(prompt_tokens + max(gen_tokens - 1, 0)) // block_tokens)


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One DE decode step: rows active, their summed context tokens, seconds (since run start)."""

    engine: int
    start_s: float
    wall_s: float
    batch: int
    context_tokens: int


@dataclasses.dataclass
class _Row:
    req: RequestState
    blocks: list            # pool block ids, in token order
    chain: list             # keys of the sequence's complete blocks so far


class DecodeWorker:
    """One DE (see module docstring). ``join(req)`` once the request's prompt KV is in the DE buffer."""

    def __init__(self, ctx: RunContext, engine_id: int, device: jax.Device):
        self.ctx, self.engine_id, self.device = ctx, engine_id, device
        cfg, spec, layout = ctx.config, ctx.spec, ctx.layout
        check_kernel_block_tokens(layout.block_tokens)  # (decode_step's kernels: "auto")
        self.node = ctx.fabric.node_of(engine_id)
        self.params = jax.device_put(ctx.params, device)
        self.num_blocks = cfg.de_hbm_kv_bytes // layout.full_block_bytes
        self.kv_shapes = layer_kv_shapes(spec)
        pool_shapes = [(self.num_blocks, layout.block_tokens, *s) for s in self.kv_shapes]
        self.pools = tuple(tuple(jax.device_put(np.zeros(shape, np.float32), device) for shape in pool_shapes)
                           for _ in range(spec.n_layers))
        self.rows = cfg.max_decode_batch
        self._free = list(range(self.num_blocks - 1, -1, -1))
        self._active: list[_Row] = []
        self._joins: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._stop = False
        self._persists: queue.Queue = queue.Queue()
        self.steps: list[StepRecord] = []
        self.compute_s = 0.0
        self.join_s = 0.0
        self.join_count = 0
        self.shapes: set = set()
        self.name = f"de{engine_id}"
        self._thread = ctx.thread(self.name, self._run)
        self._persister = ctx.thread(f"{self.name}-persist", self._persist_loop)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "DecodeWorker":
        self._thread.start()
        self._persister.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=self.ctx.config.timeout_s)
        self._persists.put(None)
        self._persister.join(timeout=self.ctx.config.timeout_s)
        if not self._thread.is_alive():  # rows left at a deadline or an abort: their requests failed
            for row in [r for r in self._active if r.req.error]:  # (any other row is a leak to report)
                self._active.remove(row)
                self._free_row(row)

    @property
    def free_blocks(self) -> int:
        """Pool blocks no request holds."""
        return len(self._free)

    def _free_row(self, row: "_Row") -> None:
        self._free.extend(reversed(row.blocks))
        row.blocks = []

    def blocks_needed(self, prompt_tokens: int, gen_tokens: int) -> int:
        """Pool blocks a request holds (:func:`blocks_needed`)."""
        return blocks_needed(prompt_tokens, gen_tokens, self.ctx.layout.block_tokens)

    def join(self, req: RequestState) -> None:
        self._joins.put(req)
        self._wake.set()

    def warm_up(self, max_blocks: int) -> None:
        """Compile this device's decode step for every block-table width up to ``max_blocks`` (all
        rows idle, the pools unchanged) and the join/persist block copies."""
        for b in self.row_buckets():
            p = 1
            while p <= bucket_blocks(max_blocks):
                self._step_arrays(p, [], b)
                p *= 2
        spec, z = self.ctx.spec, self.ctx.layout.block_tokens
        ids = jax.device_put(np.full(_JOIN_CHUNK_BLOCKS, self.num_blocks, np.int32), self.device)  # all dropped
        zeros = tuple(jax.device_put(np.zeros((spec.n_layers, _JOIN_CHUNK_BLOCKS, z, *s), np.float32), self.device)
                      for s in self.kv_shapes)
        self.pools = set_blocks(self.pools, ids, zeros)
        jax.block_until_ready(get_block(self.pools, jax.device_put(np.int32(0), self.device)))
        self.shapes.clear()

    # ---- main loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            self._take_joins()
            for row in [r for r in self._active if r.req.error]:  # failed elsewhere (deadline): drop
                self._active.remove(row)
                self._free_row(row)
            if not self._active:
                self._wake.wait(timeout=0.05)
                self._wake.clear()
                continue
            rows = self._active[:self.rows]
            try:
                self.ctx.job(self.name)
                self._step(rows)
            except Exception as e:  # noqa: BLE001 - supervision: fail the step's requests, go on
                cause = self.ctx.worker_error(self.name, e)
                for row in rows:
                    if row in self._active:
                        self._active.remove(row)
                        self._free_row(row)
                        self.ctx.on_failed(row.req, f"decode: {cause}")

    def _take_joins(self) -> None:
        while True:
            try:
                req = self._joins.get_nowait()
            except queue.Empty:
                return
            if req.error:
                continue
            try:
                self.ctx.job(self.name)
                self._join(req)
            except RequestFailed:
                continue  # failed elsewhere meanwhile: it released what it held, nothing to report
            except (TransferFailed, ValueError) as e:
                self.ctx.on_failed(req, f"join on {self.name}: {e}")
            except Exception as e:  # noqa: BLE001 - supervision: fail this request, go on
                self.ctx.on_failed(req, f"join: {self.ctx.worker_error(self.name, e)}")

    def _join(self, req: RequestState) -> None:
        ctx, spec, z = self.ctx, self.ctx.spec, self.ctx.layout.block_tokens
        t0 = time.perf_counter()
        s = req.prompt_tokens
        n_prompt_blocks = -(-s // z)
        kv = self._assemble(req)  # per layer, the prompt's LayerKV
        need = self.blocks_needed(s, req.gen_target)
        if need > len(self._free):
            raise ValueError(f"needs {need} pool blocks, {len(self._free)} free")
        blocks = [self._free.pop() for _ in range(need)]
        fields = []  # per LayerKV array: [L, n_prompt_blocks, Z, ...], zero past the prompt
        for i, shape in enumerate(self.kv_shapes):
            buf = np.zeros((spec.n_layers, n_prompt_blocks * z, *shape), np.float32)
            for layer, pair in enumerate(kv):
                buf[layer, :s] = pair[i]
            fields.append(buf.reshape(spec.n_layers, n_prompt_blocks, z, *shape))

        def h2d():
            put = lambda x: jax.device_put(x, self.device)  # noqa: E731
            for lo in range(0, n_prompt_blocks, _JOIN_CHUNK_BLOCKS):
                hi = min(lo + _JOIN_CHUNK_BLOCKS, n_prompt_blocks)
                ids = np.full(_JOIN_CHUNK_BLOCKS, self.num_blocks, np.int32)  # out of range: dropped
                ids[:hi - lo] = blocks[lo:hi]
                values = []
                for f in fields:
                    chunk = np.zeros((spec.n_layers, _JOIN_CHUNK_BLOCKS, *f.shape[2:]), np.float32)
                    chunk[:, :hi - lo] = f[:, lo:hi]
                    values.append(put(chunk))
                self.pools = set_blocks(self.pools, put(ids), tuple(values))
            jax.block_until_ready(self.pools)

        try:
            ctx.fabric.carry(ctx.fabric.de_h2d(self.engine_id), s * ctx.bytes_per_token, h2d, tag=f"join/r{req.rid}")
        except BaseException:
            self._free.extend(reversed(blocks))
            raise
        for lease in (req.de_read_lease, req.de_send_lease):
            if lease is not None:
                lease.release()
        req.de_hit, req.segments = [], []
        req.decode_start_s = ctx.now()
        row = _Row(req, blocks, list(req.keys[:s // z]))
        try:
            for j in range(req.hit_blocks, s // z):  # the prompt's new complete blocks
                self._queue_persist(row, j, tuple(f[:, j] for f in fields))
        except BaseException:
            self._free_row(row)
            raise
        self.join_s += time.perf_counter() - t0
        self.join_count += 1
        if len(req.generated) >= req.gen_target:
            self._finish(row)
        else:
            self._active.append(row)  # from here on the row's blocks are freed with the row

    def _assemble(self, req: RequestState) -> list[tuple[np.ndarray, np.ndarray]]:
        """The prompt's KV per layer from the DE buffer: DE-side hit blocks + segments the PE sent.

        Raises:
          ValueError: the pieces do not tile ``[0, S)`` exactly (a hand-off bug, never silent).
        """
        layout, s = self.ctx.layout, req.prompt_tokens
        with req.lock:  # a failure elsewhere drops the pieces (release_buffers): take them or stop
            if req.error:
                raise RequestFailed(req.error)
            segments, de_hit = req.segments, req.de_hit
        n_de = min(len(de_hit), req.hit_blocks)
        out = []
        for layer in range(self.ctx.spec.n_layers):
            pieces = list(segments[layer])
            if n_de:
                k, v = gather_layer(layout, de_hit[:n_de], layer, dtype=np.float32)
                pieces.append((0, k, v))
            pieces.sort(key=lambda p: p[0])
            pos = 0
            for start, k, _ in pieces:
                if start != pos:
                    raise ValueError(f"request {req.rid} layer {layer}: KV pieces leave a gap or overlap at token "
                                     f"{pos} (next piece starts at {start})")
                pos += len(k)
            if pos != s:
                raise ValueError(f"request {req.rid} layer {layer}: KV of {pos} tokens for a {s}-token prompt")
            out.append((np.concatenate([p[1] for p in pieces]), np.concatenate([p[2] for p in pieces])))
        return out

    # ---- decode ---------------------------------------------------------------------------------
    def row_buckets(self) -> list[int]:
        """Padded batch sizes of a decode step: powers of two from :data:`MIN_DECODE_ROWS` up to
        ``max_decode_batch`` (rounded up)."""
        out, b = [], MIN_DECODE_ROWS
        while True:
            out.append(b)
            if b >= self.rows:
                return out
            b *= 2

    def _step_arrays(self, p: int, rows: list[_Row], b: int):
        tokens = np.zeros(b, np.int32)
        positions = np.zeros(b, np.int32)
        table = np.zeros((b, p), np.int32)
        active = np.zeros(b, bool)
        for i, row in enumerate(rows):
            tokens[i] = row.req.forced[len(row.req.generated) - 1]  # teacher-forced (request.py)
            positions[i] = row.req.prompt_tokens + len(row.req.generated) - 1
            table[i, :len(row.blocks)] = row.blocks
            active[i] = True
        self.shapes.add((b, p))
        put = lambda x: jax.device_put(x, self.device)  # noqa: E731
        nxt, gaps, self.pools = decode_step(self.params, self.ctx.spec, put(tokens), put(positions), self.pools,
                                            put(table), put(active))
        return np.asarray(nxt), np.asarray(gaps), positions

    def _step(self, rows: list[_Row]) -> None:
        ctx, z = self.ctx, self.ctx.layout.block_tokens
        p = bucket_blocks(max(len(r.blocks) for r in rows))
        start = ctx.now()
        t0 = time.perf_counter()
        b = next(x for x in self.row_buckets() if x >= len(rows))
        nxt, gaps, positions = self._step_arrays(p, rows, b)
        dt = time.perf_counter() - t0
        self.compute_s += dt
        now = ctx.now()
        context = int(positions[:len(rows)].sum()) + len(rows)
        self.steps.append(StepRecord(self.engine_id, start, dt, len(rows), context))
        for i, row in enumerate(rows):
            req = row.req
            req.generated.append(int(nxt[i]))
            req.gaps.append(float(gaps[i]))
            if len(req.generated) == 2:
                req.second_token_s = now
            ctx_tokens = int(positions[i]) + 1  # tokens with KV after this step
            if ctx_tokens % z == 0:
                j = ctx_tokens // z - 1
                kv = get_block(self.pools, jax.device_put(np.int32(row.blocks[j]), self.device))
                self._queue_persist(row, j, tuple(np.asarray(x) for x in kv))
            if len(req.generated) >= req.gen_target:
                self._active.remove(row)
                self._finish(row)

    def _finish(self, row: _Row) -> None:
        req = row.req
        self._free_row(row)
        with req.lock:
            if req.error:  # failed meanwhile (its attempt is already being run again): not finished
                return
            req.finished = True
            req.finish_s = self.ctx.now()
            done = req.pending_persists == 0
        self.ctx.on_finished(req)
        if done:
            req.persisted_s = self.ctx.now()
            self.ctx.on_persisted(req)

    # ---- persist --------------------------------------------------------------------------------
    def _queue_persist(self, row: _Row, j: int, kv: tuple[np.ndarray, np.ndarray]) -> None:
        """Persist block ``j`` (``kv``: the pair ``([L, Z, ...], [L, Z, ...])``) under the sequence's chain key."""
        req, z = row.req, self.ctx.layout.block_tokens
        seq = np.concatenate([req.prompt, req.forced])
        while len(row.chain) <= j:
            i = len(row.chain)
            parent = row.chain[-1] if row.chain else self.ctx.layout.scope
            row.chain.append(chain_key(parent, seq[i * z:(i + 1) * z]))
        with req.lock:
            req.pending_persists += 1
        self._persists.put((req, row.chain[j], kv))

    def _persist_loop(self) -> None:
        ctx = self.ctx
        nbytes = ctx.layout.full_block_bytes
        while True:
            job = self._persists.get()
            if job is None:
                return
            req, key, (a, b) = job
            try:
                ctx.job(f"{self.name}-persist")
                ctx.fabric.carry(ctx.fabric.de_d2h(self.engine_id), nbytes, tag=f"persist/r{req.rid}")
                block = pack_full_blocks(ctx.layout, [(a[l], b[l]) for l in range(ctx.spec.n_layers)])[0]
                (res,) = ctx.fabric.carry(ctx.fabric.write_path(self.node), nbytes,
                                          lambda: ctx.store.write([key], [block]), tag=f"persist/r{req.rid}")
                if res.ok:
                    req.blocks_persisted += 1
                else:
                    req.persist_failures.append(res.failure)
            except TransferFailed as e:
                req.persist_failures.append(str(e))
            except Exception as e:  # noqa: BLE001 - supervision: this block is not persisted, go on
                req.persist_failures.append(ctx.worker_error(f"{self.name}-persist", e))
            with req.lock:
                req.pending_persists -= 1
                done = req.finished and req.pending_persists == 0
            if done:
                req.persisted_s = ctx.now()
                ctx.on_persisted(req)
