"""The real engine: prefill engines (PE) and decode engines (DE) over the store and transfer layers.

* :mod:`.prefill`   the one prefill path (layer-wise/full KV loading, per-layer compute and hand-off)
  that every PE runs.
* :mod:`.standalone`  a standalone PE over a store (store reads, the prefill path, write-back,
  recompute fallback).
* :mod:`.cluster`   the runtime: P PEs and D DEs on JAX devices, node SNICs and DRAM buffers,
  engine CNICs (:mod:`.network`), storage readers (:mod:`.reader`), PE and DE workers
  (:mod:`.pe`, :mod:`.de`), driven by ``dualpath_jax.sched`` exactly as the simulator drives it;
  what a PE does to a DE's node goes through :mod:`.peers`.
* :mod:`.ray_runtime`  the ``ray`` runtime: every node a Ray actor in its own process running the
  same workers, KV between them over JAX's transfer server (:class:`RayRuntime`, the driver's
  side); :mod:`.ray_node` the node's side (the actor, ``NodeHost``); :mod:`.ray_peers` what a
  node's PE reaches in other processes (``RayPeers``, ``RequestInfo``).
* :mod:`.remote_read`  the standalone PE's DE read path across processes (a DE reader actor).
* :mod:`.compute`   shape-bucketed prefill layer and batched decode step (the model's layers over
  paged attention); no-cache reference.
* :mod:`.profile`   start-up profiling of the PE forward (time model of compute-quota batching).
* :mod:`.result`    what a run measured (``ClusterResult``) and how both runtimes gather it.
* :mod:`.report`    metrics, byte conservation and the tie-aware token check of a run.
* :mod:`.config`    the emulated cluster's config (JAX-free: config files import it).
* The five-variant ablation on agentic traces lives above the runtimes: ``dualpath_jax.studies.engine_ablation``.

Importing this package loads no JAX; the names below load their modules on first use.
"""

from dualpath_jax.lazy import lazy_exports

_LAZY = {  # public name -> the submodule that defines it (loaded on first use: PEP 562)
    "EngineCluster": "cluster",
    **dict.fromkeys(["ClusterResult", "ResourceLeakError"], "result"),
    "ClusterConfig": "config",
    "RayRuntime": "ray_runtime",
    **dict.fromkeys(["ForwardOutput", "PrefillChunk", "PrefillPath", "prefill_kv", "store_layout"], "prefill"),
    **dict.fromkeys(["PrefillConfig", "PrefillEngine", "PrefillReport", "PrefillRequest", "PrefillResult",
                     "PreparedBatch"], "standalone"),
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
