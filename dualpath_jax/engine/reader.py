"""Storage reads of hit KV into a node's DRAM buffer (PE buffer or DE buffer), one FIFO per node.

A read job is one request's blocks on one side (PAPER.md sections 2.3 step (1)-(2), 2.4 step
(1)-(2)): reserve the bytes in the node's buffer (FIFO back-pressure, as the paper's bounded
DRAM buffers), start all block reads on the store's I/O pool, then take the results in order,
carrying each Full Block over the node's SNIC (read direction). The hit stops at the first
block that fails (missing, checksum, truncated, unreadable, timeout): later blocks of the job
are not used, that part of the prompt is recomputed, and the failure is kept on the request.

The node's pending read tokens (``read_q``, the scheduler's input) drop as blocks are carried.
With ``oracle`` loading the job uses no buffer and no link (the KV is "already there").
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import queue
import threading
import time
from collections.abc import Callable

from dualpath_jax.engine.network import TransferFailed
from dualpath_jax.engine.request import RequestFailed, RequestState
from dualpath_jax.store import BlockFailure, FailureCause
from dualpath_jax.transfer import BufferTimeoutError

__all__ = ["ReadJob", "NodeReader", "ReadQueues"]


class ReadQueues:
    """Pending read tokens per node (thread-safe); the ``read_q`` of Algorithm 1 and the read side."""

    def __init__(self, num_nodes: int):
        self._lock = threading.Lock()
        self._tokens = {n: 0.0 for n in range(num_nodes)}

    def add(self, node: int, tokens: float) -> None:
        with self._lock:
            self._tokens[node] += tokens

    def tokens(self, node: int) -> float:
        """Pending read tokens of one node."""
        with self._lock:
            return self._tokens[node]

    def snapshot(self) -> dict[int, float]:
        with self._lock:
            return dict(self._tokens)


@dataclasses.dataclass
class ReadJob:
    """Blocks ``[first, last)`` of ``req.keys`` read on ``side`` (``"pe"`` or ``"de"``) at ``node``."""

    req: RequestState
    side: str
    node: int
    first: int
    last: int


@dataclasses.dataclass
class _Progress:
    """How far a read job got: blocks taken out of ``read_q`` and blocks carried over the SNIC."""

    dequeued: int = 0
    carried: int = 0


class NodeReader:
    """One node's reader thread (see module docstring).

    Args:
      ctx: the run (fabric, store, clock, fault injector, supervision).
      node: node id; read_q: pending read tokens per node.
      on_done: ``on_done(job, blocks, failures)`` from the reader thread; or
        ``on_error(job, cause, carried)`` when the job could not run (buffer timeout, link failure,
        an unexpected exception of the job, which is also reported to the controller); ``carried``:
        blocks of the job already carried over the node's SNIC before it stopped (they crossed the
        link for the request's attempt and count among its reads).

    Every job takes its tokens out of ``read_q`` exactly once, whatever happens to it (``oracle``
    jobs never enter it).
    ``bypass_bytes``: bytes read without a link (``oracle``); ``discarded_bytes``: bytes the
    store returned that were not used (after a failed block, of an interrupted job, or of a read
    that finished after the job gave up on it at its deadline, counted when it finishes).
    """

    def __init__(self, ctx, node: int, read_q: ReadQueues, on_done: Callable, on_error: Callable):
        self.ctx, self.node, self.read_q = ctx, node, read_q
        self.fabric, self.store, self.timeout_s = ctx.fabric, ctx.store, ctx.config.timeout_s
        self.on_done, self.on_error = on_done, on_error
        self.name = f"reader{node}"
        self._queue: queue.Queue = queue.Queue()
        self.bypass_bytes = 0
        self._discarded = 0
        self._discarded_lock = threading.Lock()  # (late reads are counted from the store's I/O threads)
        self._thread = ctx.thread(self.name, self._run)

    @property
    def discarded_bytes(self) -> int:
        with self._discarded_lock:
            return self._discarded

    def _discard_bytes(self, nbytes: int) -> None:
        with self._discarded_lock:
            self._discarded += nbytes

    def _late_read(self, fut: cf.Future) -> None:
        """Count the block of a read nobody carries (the job stopped waiting for it, or was
        interrupted) once the store returns it."""
        try:
            res = fut.result()
        except Exception:  # noqa: BLE001 - a read that failed returned nothing
            return
        if res.ok:
            self._discard_bytes(res.block.nbytes)

    def start(self) -> "NodeReader":
        self._thread.start()
        return self

    def submit(self, job: ReadJob) -> None:
        self._queue.put(job)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.timeout_s)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            done = _Progress()
            try:
                self._read(job, done)
            except (RequestFailed, TransferFailed, BufferTimeoutError, ValueError) as e:
                self.on_error(job, f"read on {job.side} side: {e}", done.carried)
            except Exception as e:  # noqa: BLE001 - supervision: report, fail the job, go on
                self.on_error(job, f"read on {job.side} side: {self.ctx.worker_error(self.name, e)}", done.carried)
            finally:
                self._dequeue(job, job.last - job.first - done.dequeued)

    def _dequeue(self, job: ReadJob, blocks: int) -> None:
        """Take ``blocks`` of ``job`` out of the node's read queue (``oracle`` reads never enter it)."""
        if blocks and not self.fabric.bypass:
            self.read_q.add(self.node, -blocks * job.req.block_tokens)

    def _read(self, job: ReadJob, done: "_Progress") -> None:
        req = job.req
        layout = self.store.layout
        n = job.last - job.first
        nbytes = n * layout.full_block_bytes
        if req.error:  # failed meanwhile: nothing to read for it
            self.on_done(job, [], [])
            return
        self.ctx.job(self.name)
        lease = send = None
        if not self.fabric.bypass:
            pool = self.fabric.buffer_of(self.node)
            # DE side: the hand-off's space (the rest of the prompt's KV) is reserved with the hit's, in
            # one wait. Holding the hit while waiting for more of the same buffer could deadlock
            # requests that each fit alone; the simulator reserves the whole prompt up front too.
            rest = (req.prompt_tokens - n * req.block_tokens) * self.ctx.bytes_per_token if job.side == "de" else 0
            if rest and req.de_send_lease is None and nbytes + rest <= pool.capacity_bytes:
                lease = pool.acquire(nbytes + rest, timeout_s=self.timeout_s)
                send = lease.split(rest)
            else:  # (a prompt larger than the DE buffer fails at its hand-off, naming the buffer)
                lease = pool.acquire(nbytes, timeout_s=self.timeout_s)
        if send is not None and not req.attach_lease("de_send_lease", send):
            lease.release()
            self.on_done(job, [], [])
            return
        if not req.attach_lease("pe_lease" if job.side == "pe" else "de_read_lease", lease):
            self.on_done(job, [], [])  # the request failed meanwhile: nothing to read for it
            return
        keys = req.keys[job.first:job.last]
        t0 = time.monotonic()
        if self.ctx.faults is not None:
            self.ctx.faults.before_read(self.store, keys)
        waited = time.monotonic() - t0
        if waited > self.timeout_s:  # a slow storage read: past its deadline, it counts as failed
            self.on_done(job, [], [BlockFailure(keys[0], FailureCause.TIMEOUT,
                                                f"read did not start within {self.timeout_s} s ({waited:.1f} s)")])
            return
        deadline = t0 + self.timeout_s  # for the job's store reads together (issued at once)
        futures = self.store.read_async(keys)
        blocks, failures = [], []
        counted = 0  # blocks [0, counted) are accounted for: carried, discarded or failed
        try:
            for i, (key, fut) in enumerate(zip(keys, futures)):
                try:
                    res = fut.result(timeout=max(deadline - time.monotonic(), 0.0))
                except cf.TimeoutError:
                    res = None
                    failures.append(BlockFailure(key, FailureCause.TIMEOUT, "read timed out"))
                    fut.add_done_callback(self._late_read)  # its bytes, if it still returns them: discarded
                if res is not None and not res.ok:
                    failures.append(res.failure)
                elif res is not None and failures:
                    self._discard_bytes(res.block.nbytes)  # read, but after a bad block: recomputed instead
                elif res is not None:
                    self.fabric.carry(self.fabric.read_path(self.node), res.block.nbytes, tag=f"read/r{req.rid}")
                    done.carried += not self.fabric.bypass
                    counted = i + 1  # on the link now, whatever happens to it next (a released lease)
                    if lease is not None:
                        lease.hold(res.block)
                    else:
                        self.bypass_bytes += res.block.nbytes
                    blocks.append(res.block)
                counted = i + 1
                self._dequeue(job, 1)
                done.dequeued += 1
        except BaseException:
            self._discard(futures[counted:])
            raise
        self.on_done(job, blocks, failures)

    def _discard(self, futures: list) -> None:
        """Count the blocks of an interrupted job that the store read but nobody carried: each read
        is waited for up to ``timeout_s`` (so that it is counted before the run's figures are
        taken), and counted when it returns."""
        for fut in futures:
            cf.wait([fut], timeout=self.timeout_s)
            fut.add_done_callback(self._late_read)  # (at once for a read that has returned)
