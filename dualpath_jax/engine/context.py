"""What every engine thread of one run shares: model, layout, fabric, scheduler, clock, callbacks."""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.faults import FaultInjector
from dualpath_jax.engine.network import Fabric
from dualpath_jax.kvcache import BlockLayout
from dualpath_jax.model.spec import ModelSpec
from dualpath_jax.sched import ClusterScheduler
from dualpath_jax.sched.batching import TimeModel
from dualpath_jax.store import KVStore

__all__ = ["RunContext"]


@dataclasses.dataclass
class RunContext:
    """Shared, read-mostly state of one run.

    Attributes:
      params: host (numpy-backed) parameters; engines put their own copy on their device.
      embed_table: ``f32[V, D]`` host embedding table (token embedding is a row gather).
      t0: ``time.perf_counter()`` at the run's start; :meth:`now` is relative to it.
      time_model: fitted forward time of the PEs (``sched.batching.AttentionTimeModel``; its
        ``time_s``, a forward's attention seconds, is what the compute quota bounds).
      on_prefilled(req): a request's prefill and its KV hand-off to the DE buffer are complete.
      on_finished(req): a request generated its last token.
      on_persisted(req): every block the request's DE persists is in the store.
      on_failed(req, cause, retry=True): a stage gave up on the request's attempt; ``retry``
        False when running it again cannot help (it can never fit).
      on_worker_error(worker, error, text): a worker's job raised unexpectedly (``error`` the
        one-line ``Type: message``, ``text`` the traceback); ``fatal`` events come from a thread
        that died (see :meth:`thread`).
      faults: the run's fault injector (None: no faults).
      peers: what a PE does to a DE's node (:mod:`.peers`: ``LocalPeers`` in one process,
        ``RayPeers`` across processes).
      clock: the clock of :meth:`now` and ``t0``, in seconds (``time.perf_counter`` in one
        process; ``time.time`` when engines run in several processes or hosts).
    """

    config: ClusterConfig
    spec: ModelSpec
    layout: BlockLayout
    params: dict
    embed_table: np.ndarray
    fabric: Fabric
    store: KVStore
    sched: ClusterScheduler
    time_model: TimeModel | None
    on_prefilled: Callable
    on_finished: Callable
    on_persisted: Callable
    on_failed: Callable
    on_worker_error: Callable = lambda worker, error, text, fatal=False: None
    faults: FaultInjector | None = None
    peers: Any = None
    clock: Callable[[], float] = time.perf_counter
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def now(self) -> float:
        """Seconds since the run started."""
        return self.clock() - self.t0

    def job(self, worker: str) -> None:
        """Start of one job of ``worker``: where an injected crash may land."""
        if self.faults is not None:
            self.faults.job(worker)

    def worker_error(self, worker: str, exc: BaseException) -> str:
        """Report ``exc`` raised by a job of ``worker``; returns the cause recorded on the requests
        the job held (``"<worker> raised Type: message"``)."""
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        self.on_worker_error(worker, error, "".join(traceback.format_exception(exc)))
        return f"{worker} raised {error}"

    def thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """A daemon thread running ``target`` under supervision: an exception that escapes the
        worker's own per-job handling (a bug in its loop) is reported as fatal, so the controller
        ends the run at once instead of waiting for requests the dead thread held."""

        def run():
            try:
                target()
            except BaseException as e:  # noqa: BLE001 - the thread is gone; tell the controller why
                error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                self.on_worker_error(name, error, "".join(traceback.format_exception(e)), fatal=True)

        return threading.Thread(target=run, name=name, daemon=True)

    @property
    def bytes_per_token(self) -> int:
        """KV bytes of one token over all layers (layout)."""
        return self.layout.bytes_per_token

    @property
    def bytes_per_token_per_layer(self) -> int:
        return self.layout.bytes_per_token_per_layer
