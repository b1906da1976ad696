"""The real engine: prefill engines (PE) and decode engines (DE) over the store and transfer layers.

* :mod:`.prefill`   a standalone PE (store reads, layer-wise/full prefill, write-back, recompute fallback).
* :mod:`.cluster`   the runtime: P PEs and D DEs on JAX devices, node SNICs and DRAM buffers,
  engine CNICs (:mod:`.network`), storage readers (:mod:`.reader`), PE and DE workers
  (:mod:`.pe`, :mod:`.de`), driven by ``dualpath_jax.sched`` exactly as the simulator drives it.
* :mod:`.compute`   shape-bucketed prefill layer and batched decode step; no-cache reference.
* :mod:`.profile`   start-up profiling of the PE forward (time model of compute-quota batching).
* :mod:`.report`    metrics, byte conservation and the tie-aware token check of a run.
* :mod:`.ablation`  the five-variant ablation on agentic traces (``experiments/run_engine.py``).
"""

from dualpath_jax.engine.cluster import ClusterResult, EngineCluster
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.prefill import (PrefillConfig, PrefillEngine, PrefillReport, PrefillRequest, PrefillResult,
                                         PreparedBatch, compute_layers)

__all__ = ["ClusterConfig", "ClusterResult", "EngineCluster", "PrefillConfig", "PrefillEngine", "PrefillReport",
           "PrefillRequest", "PrefillResult", "PreparedBatch", "compute_layers"]
