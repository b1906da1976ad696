"""What one :class:`~dualpath_jax.engine.cluster.EngineCluster` run measured, and how it is
gathered once the workers have stopped.

* :class:`ClusterResult`: everything a run measured (the input of :mod:`.report`).
* :class:`ResourceLeakError`: a run ended with resources still held.
* :func:`local_measures` (``threads``: read off this process's fabric and workers) and
  :func:`remote_measures` (``ray``: summed over the node actors' ``end_run`` answers) give the
  same :class:`RunMeasures`; :func:`absorb` puts the node actors' per-engine records on the
  driver's engine handles, so both runtimes build their result the same way (:func:`build_result`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence

from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.de import StepRecord
from dualpath_jax.engine.pe import ForwardRecord
from dualpath_jax.engine.request import RequestState
from dualpath_jax.transfer import TransferRecord

__all__ = ["ClusterResult", "ResourceLeakError", "RunMeasures", "absorb", "build_result", "local_measures",
           "remote_measures"]


class ResourceLeakError(RuntimeError):
    """A run ended with resources still held (``leaks``: what and how much)."""

    def __init__(self, leaks: dict):
        self.leaks = leaks
        super().__init__("resources still held after the run: " + ", ".join(f"{k}={v}" for k, v in leaks.items()))


@dataclasses.dataclass
class ClusterResult:
    """Everything one run measured (times in seconds since the run's start).

    Attributes:
      requests: every request, finished or failed (``error`` set).
      forwards: PE forwards; steps: DE decode steps.
      links: per link ``{"bytes", "busy_s", "transfers", "failed"}``.
      transfers: every link transfer record (times relative to the run's start).
      compute_s: seconds each engine spent computing (``"pe0"``, ``"de1"``, ...).
      join_s: seconds each DE's decode thread spent admitting requests (``"de1"``, ...), with the
        H2D copy over the emulated CNIC; join_count: requests each DE admitted.
      read_bytes_store: bytes the store returned to reads; bypass_read_bytes: of those, read
        without a link (``oracle``); discarded_read_bytes: read after a failed block, not used.
      runtime_shapes: compiled shapes used during the run, per engine.
      failed_attempts: attempts that failed and were run again (``retried`` set), not in ``requests``.
      worker_errors: every unexpected exception of a worker's job: ``{"time_s", "worker",
        "error", "traceback", "fatal"}``.
      faults: injected faults by kind (:mod:`~dualpath_jax.engine.faults`); empty without fault injection.
      leaks: resources still held at the end (empty after every clean run; see ResourceLeakError).
      runtime: ``"threads"`` or ``"ray"``; processes: engine processes (node actors; 1 for
        ``threads``, where every engine shares the driver's process).
      cross_process_kv_bytes: KV bytes that crossed a process boundary through JAX's transfer
        server (0 under ``threads``).
      lost_nodes: node id -> cause, for every node whose process died during the run.
      actor_calls: Ray actor calls the node actors served during the run, by method (``poll``,
        ``read_q``: the driver's requests for read-queue changes before a tick, ``command``,
        ``reserve``, ``offer_hits``, ``receive_batch``; not the few that start and end a run),
        summed over the nodes that lived to the end; empty under ``threads``.
    """

    config: ClusterConfig
    requests: list[RequestState]
    forwards: list[ForwardRecord]
    steps: list[StepRecord]
    links: dict
    transfers: list[TransferRecord]
    compute_s: dict
    read_bytes_store: int
    bypass_read_bytes: int
    discarded_read_bytes: int
    alpha_tokens: float
    beta_tokens: float
    wall_s: float
    runtime_shapes: dict
    join_s: dict = dataclasses.field(default_factory=dict)
    join_count: dict = dataclasses.field(default_factory=dict)
    failed_attempts: list = dataclasses.field(default_factory=list)
    worker_errors: list = dataclasses.field(default_factory=list)
    faults: dict = dataclasses.field(default_factory=dict)
    leaks: dict = dataclasses.field(default_factory=dict)
    runtime: str = "threads"
    processes: int = 1
    cross_process_kv_bytes: int = 0
    lost_nodes: dict = dataclasses.field(default_factory=dict)
    actor_calls: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunMeasures:
    """The fabric-, store- and pool-side figures of one run, from either runtime.

    ``buffers``: in-use bytes per DRAM buffer name; ``free_blocks``: free pool blocks per DE;
    ``links``, ``transfers``, ``read_bytes``, ``bypass_bytes``, ``discarded_bytes``,
    ``cross_process_kv_bytes``, ``processes``, ``faults``, ``actor_calls``, ``runtime``: as
    :class:`ClusterResult`'s fields of those names.
    """

    buffers: dict
    free_blocks: dict
    links: dict
    transfers: list
    read_bytes: int
    bypass_bytes: int
    discarded_bytes: int
    cross_process_kv_bytes: int = 0
    processes: int = 1
    faults: dict = dataclasses.field(default_factory=dict)
    actor_calls: dict = dataclasses.field(default_factory=dict)
    runtime: str = "threads"


def local_measures(fabric, t0: float, read_bytes: int, des: Mapping, readers: Mapping, num_nodes: int,
                   faults: Mapping | None = None) -> RunMeasures:
    """The ``threads`` runtime's figures, read off this process's ``fabric`` (a
    :class:`~.network.Fabric`), DE workers and node readers; transfer times become relative to
    the run's start ``t0``; ``read_bytes``: bytes the store returned during the run; ``faults``:
    the injector's counts."""
    return RunMeasures(
        buffers={fabric.buffer_of(n).name: fabric.buffer_of(n).in_use_bytes for n in range(num_nodes)},
        free_blocks={e: de.free_blocks for e, de in des.items()},
        links=fabric.link_stats(),
        transfers=[dataclasses.replace(r, start_s=r.start_s - t0, finish_s=r.finish_s - t0) for r in fabric.records()],
        read_bytes=read_bytes, bypass_bytes=sum(r.bypass_bytes for r in readers.values()),
        discarded_bytes=sum(r.discarded_bytes for r in readers.values()), faults=dict(faults or {}))


def remote_measures(nodes: Sequence[dict | None], processes: int) -> RunMeasures:
    """The ``ray`` runtime's figures, summed over the node actors' ``end_run`` answers (None: a
    node that died; its figures died with it)."""
    live = [out for out in nodes if out is not None]
    faults: Counter = Counter()
    calls: Counter = Counter()
    for out in live:
        faults.update(out["faults"])
        calls.update(out["actor_calls"])
    return RunMeasures(
        buffers={k: v for out in live for k, v in out["buffer"].items()},
        free_blocks={e: v for out in live for e, v in out["free_blocks"].items()},
        links={k: v for out in live for k, v in out["links"].items()},
        transfers=sorted((r for out in live for r in out["transfers"]), key=lambda r: r.start_s),
        read_bytes=sum(out["read_bytes_store"] for out in live),
        bypass_bytes=sum(out["bypass_bytes"] for out in live),
        discarded_bytes=sum(out["discarded_bytes"] for out in live),
        cross_process_kv_bytes=sum(out["cross_process_kv_bytes"] for out in live), processes=processes,
        faults=dict(faults), actor_calls=dict(calls), runtime="ray")


def absorb(nodes: Sequence[dict | None], pes: Mapping, des: Mapping) -> None:
    """Put the node actors' measurements (their ``end_run`` answers) on the driver's engine
    handles ``pes``/``des`` (engine id -> handle): compute seconds, shapes, forwards or steps,
    joins (``ray``)."""
    for out in nodes:
        if out is None:
            continue
        by_engine: dict = {}
        for f in out["forwards"]:
            by_engine.setdefault(f.engine, []).append(f)
        for s in out["steps"]:
            by_engine.setdefault(s.engine, []).append(s)
        for e, w in (*pes.items(), *des.items()):
            name = f"{'pe' if e in pes else 'de'}{e}"
            if name not in out["compute_s"]:
                continue
            w.compute_s, w.shapes = out["compute_s"][name], set(map(tuple, out["shapes"][name]))
            if e in pes:
                w.forwards = by_engine.get(e, [])
            else:
                w.steps = by_engine.get(e, [])
                w.join_s, w.join_count = out["join_s"][name], out["join_count"][name]


def build_result(config: ClusterConfig, requests: Sequence[RequestState], pes: Mapping, des: Mapping, m: RunMeasures,
                 *, leaks: dict, worker_errors: list, alpha_tokens: float, beta_tokens: float, wall_s: float,
                 lost_nodes: dict) -> ClusterResult:
    """The :class:`ClusterResult` of a run: its requests (the retried attempts apart), the
    engine handles' records (``pes``/``des``: engine id -> worker or, under ``ray``, handle
    :func:`absorb` has filled) and the run's measures ``m``; the other arguments are the result's
    fields of those names (``wall_s`` in seconds)."""
    compute = {f"pe{e}": w.compute_s for e, w in pes.items()}
    compute.update({f"de{e}": w.compute_s for e, w in des.items()})
    return ClusterResult(
        config=config, requests=[r for r in requests if not r.retried],
        failed_attempts=[r for r in requests if r.retried], worker_errors=worker_errors,
        faults=m.faults, leaks=leaks,
        forwards=[f for w in pes.values() for f in w.forwards],
        steps=[s for w in des.values() for s in w.steps], links=m.links, transfers=m.transfers,
        compute_s=compute, read_bytes_store=m.read_bytes, bypass_read_bytes=m.bypass_bytes,
        discarded_read_bytes=m.discarded_bytes, alpha_tokens=alpha_tokens, beta_tokens=beta_tokens,
        join_s={f"de{e}": w.join_s for e, w in des.items()},
        join_count={f"de{e}": w.join_count for e, w in des.items()},
        wall_s=wall_s, runtime_shapes={**{f"pe{e}": sorted(w.shapes) for e, w in pes.items()},
                                       **{f"de{e}": sorted(w.shapes) for e, w in des.items()}},
        runtime=m.runtime, processes=m.processes, cross_process_kv_bytes=m.cross_process_kv_bytes,
        actor_calls=m.actor_calls, lost_nodes=lost_nodes)
