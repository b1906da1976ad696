"""What every engine thread of one run shares: model, layout, fabric, scheduler, clock, callbacks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from dualpath_jax.engine.config import ClusterConfig
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
      time_model: fitted per-layer forward time of the PEs (``sched.batching.TimeModel``).
      on_prefilled(req): a request's prefill and its KV hand-off to the DE buffer are complete.
      on_finished(req): a request generated its last token.
      on_persisted(req): every block the request's DE persists is in the store.
      on_failed(req, cause): a stage gave up on the request.
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
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def now(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.t0

    @property
    def bytes_per_token(self) -> int:
        """KV bytes of one token over all layers (layout)."""
        return self.layout.bytes_per_token

    @property
    def bytes_per_token_per_layer(self) -> int:
        return self.layout.bytes_per_token_per_layer
