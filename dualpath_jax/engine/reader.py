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
from collections.abc import Callable

from dualpath_jax.engine.network import Fabric, TransferFailed
from dualpath_jax.engine.request import RequestFailed, RequestState
from dualpath_jax.store import BlockFailure, FailureCause, KVStore
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


class NodeReader:
    """One node's reader thread (see module docstring).

    Args:
      node: node id; fabric, store: the cluster's; read_q: pending read tokens per node.
      on_done: ``on_done(job, blocks, failures, discarded_bytes)`` from the reader thread; or
        ``on_error(job, cause)`` when the job could not run (buffer timeout, link failure).
    """

    def __init__(self, node: int, fabric: Fabric, store: KVStore, read_q: ReadQueues,
                 on_done: Callable, on_error: Callable, timeout_s: float):
        self.node, self.fabric, self.store, self.read_q = node, fabric, store, read_q
        self.on_done, self.on_error, self.timeout_s = on_done, on_error, timeout_s
        self._queue: queue.Queue = queue.Queue()
        self.bypass_bytes = 0
        self._thread = threading.Thread(target=self._run, name=f"reader-node{node}", daemon=True)

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
            try:
                self._read(job)
            except (RequestFailed, TransferFailed, BufferTimeoutError, ValueError) as e:
                z = job.req.block_tokens
                self.read_q.add(self.node, -(job.last - job.first) * z)
                self.on_error(job, f"read on {job.side} side: {e}")

    def _read(self, job: ReadJob) -> None:
        req, z = job.req, job.req.block_tokens
        layout = self.store.layout
        n = job.last - job.first
        nbytes = n * layout.full_block_bytes
        lease = None
        if not self.fabric.bypass:
            lease = self.fabric.buffer_of(self.node).acquire(nbytes, timeout_s=self.timeout_s)
        if job.side == "pe":
            req.pe_lease = lease
        else:
            req.de_read_lease = lease
        keys = req.keys[job.first:job.last]
        futures = self.store.read_async(keys)
        blocks, failures, discarded = [], [], 0
        for key, fut in zip(keys, futures):
            try:
                res = fut.result(timeout=self.timeout_s)
            except cf.TimeoutError:
                res = None
                failures.append(BlockFailure(key, FailureCause.TIMEOUT, "read timed out"))
            if res is not None and not res.ok:
                failures.append(res.failure)
            elif res is not None and failures:
                discarded += res.block.nbytes  # read, but after a bad block: recomputed instead
            elif res is not None:
                self.fabric.carry(self.fabric.read_path(self.node), res.block.nbytes, tag=f"read/r{req.rid}")
                if lease is not None:
                    lease.hold(res.block)
                else:
                    self.bypass_bytes += res.block.nbytes
                blocks.append(res.block)
            self.read_q.add(self.node, -z)
        self.on_done(job, blocks, failures, discarded)
