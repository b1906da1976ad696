"""Simulated runs of the paper's studies, memoised in an explicit :class:`RunCache`.

* :func:`offline_run` / :func:`online_run`: one simulated run (all agents at t = 0, or Poisson
  arrivals at an APS) reduced to the studies' metrics, with the study's scheduler class;
  :func:`offline_runs` / :func:`online_runs`: many at once, those not memoised through the
  cache's :class:`~.sweep.Sweep` (in this process, or in parallel on Ray).
* :class:`RunCache`: a bounded LRU table of runs keyed on everything that determines a run
  (kind, :class:`SimConfig`, scheduler class, :class:`WorkloadSpec`, APS, seeds, warm-up). The
  caller creates it and passes it on: ``experiments/reproduce_paper.py`` shares one across its
  studies, so the online study, the TTFT breakdown and the working set read the same runs and the
  max-APS search reuses the APS grid; a study called without one makes its own. The simulator is
  deterministic, so a cached result equals a fresh one.
* :func:`run_offline`: every variant on one trajectory set (the notebook's entry point).
* :func:`ttft_components`: the TTFT split of paper Fig. 12 left.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from dualpath_jax.config import check_positive
from dualpath_jax.metrics import latency
from dualpath_jax.metrics.records import RequestTable
from dualpath_jax.model import cost
from dualpath_jax.sched import VARIANTS, ClusterScheduler, scheduler_name
from dualpath_jax.sim.adapters import agents_from_trajectories, request_table
from dualpath_jax.sim.cluster import Simulator
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.result import SimResult
from dualpath_jax.sim.runs import offline_starts, online_starts, recorded_starts, summarize, variant_config
from dualpath_jax.studies.common import WorkloadSpec, cluster_label, refuse_replay, replay_online_error
from dualpath_jax.studies.sweep import Sweep
from dualpath_jax.workload import TrajectorySet, paper_dataset, root_indices

__all__ = ["Log", "TTFT_COMPONENTS", "RunCache", "offline_run", "offline_runs", "OnlineRun", "online_run",
           "online_runs", "run_offline",
           "paper_workload", "ttft_components", "mean_total_tokens", "ratio", "scheduler_label", "run_label",
           "workload_tag"]

Log = Callable[[str], None]

TTFT_COMPONENTS = ("schedule_s", "read_wait_s", "read_transfer_s", "prefill_queue_s", "prefill_compute_s")
"""TTFT parts (:func:`ttft_components`), in order; they sum to TTFT."""


class RunCache:
    """Memoised simulated runs: a bounded LRU table, created by the caller and passed to studies.

    Args:
      max_entries: runs kept (the least recently used is dropped first); online runs hold their
        request tables, so the bound limits memory.
      sweep: where runs not memoised execute (:class:`~.sweep.Sweep`: serially in this process,
        or in parallel on Ray); None: in this process.
      store: a :class:`~.runstore.RunStore`: every run computed is also written there, and a run
        not held in memory is read back from it before it is computed (``restored`` counts them):
        a study that stopped resumes with its finished runs. None: memory only.

    Raises:
      ConfigError: naming ``max_entries`` when it is not a positive integer.
    """

    def __init__(self, max_entries: int = 24, *, sweep=None, store=None):
        check_positive("max_entries", max_entries, integer=True)
        self.max_entries = max_entries
        self.sweep = sweep
        self.store = store
        self._runs: collections.OrderedDict = collections.OrderedDict()
        self.hits = 0
        self.misses = 0
        self.restored = 0
        self._made: set = set()  # keys computed in this process (read back after eviction: not restored)

    def _hold(self, key: Hashable, value: object) -> None:
        self._runs[key] = value
        self._runs.move_to_end(key)
        while len(self._runs) > self.max_entries:
            self._runs.popitem(last=False)

    def _lookup(self, key: Hashable) -> object | None:
        """The run in memory, else on disk (then held in memory again), else None."""
        if key in self._runs:
            self._runs.move_to_end(key)
            return self._runs[key]
        value = self.store.get(key) if self.store is not None else None
        if value is not None:
            self.restored += key not in self._made
            self._hold(key, value)
        return value

    def get_or_run(self, key: Hashable, compute: Callable[[], object]) -> tuple[object, bool]:
        """``(value, cached)``: the value stored under ``key``, else ``compute()`` stored under it."""
        value = self._lookup(key)
        if value is not None:
            self.hits += 1
            return value, True
        value = compute()
        self.misses += 1
        self._hold(key, value)
        self._keep(key, value)
        return value, False

    def _keep(self, key: Hashable, value: object) -> None:
        """Write a run to the store; a store that cannot be written (disk full, its directory gone, a
        value that does not pickle) is given up with a warning: the study goes on, only its resume
        loses the later runs."""
        self._made.add(key)
        if self.store is None:
            return
        try:
            self.store.put(key, value)
        except Exception as e:  # noqa: BLE001 - disk full, a value that does not pickle: the run itself is fine
            warnings.warn(f"run store {self.store.directory}: {type(e).__name__}: {e}; later runs are not kept "
                          f"for --resume", RuntimeWarning, stacklevel=3)
            self.store = None

    def peek(self, key: Hashable) -> object | None:
        """The value stored under ``key`` (counted as a hit and made most recent), or None."""
        value = self._lookup(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: Hashable, value: object) -> None:
        """Store a run computed elsewhere (counted as a miss), dropping the least recent beyond the
        bound (and writing it to the store)."""
        self.misses += 1
        self._hold(key, self._in_memory(value))
        self._keep(key, value)

    def _in_memory(self, value: object) -> object:
        """What :meth:`put` holds in memory of ``value`` (the store keeps it whole): all of it."""
        return value

    def items(self) -> list[tuple[Hashable, object]]:
        """``(key, value)`` of every run held, least recently used first. Keys of
        :func:`offline_run`: ``("offline", SimConfig, scheduler class, WorkloadSpec)``; of
        :func:`online_run` / :func:`online_runs`: ``("online", SimConfig, scheduler class,
        WorkloadSpec, aps, arrival_seed, warmup_s)``; of the balance study's runs: ``("balance",
        SimConfig, scheduler class, WorkloadSpec, window_s, head_fraction)``. A study's seeds are
        runs with other ``WorkloadSpec.seed`` and ``arrival_seed``."""
        return list(self._runs.items())

    def clear(self) -> None:
        """Forget every run."""
        self._runs.clear()

    def __len__(self) -> int:
        return len(self._runs)


def _run_missing(keys: Sequence[tuple], run: Callable, cache: RunCache | None, desc: str) -> tuple[dict, dict]:
    """``(known, computed)``: the cache's runs of ``keys`` (``(kind, *spec)``), and ``run(spec)`` of
    each distinct key it lacks, computed on the cache's sweep (in parallel on Ray when it has
    workers) and stored in the cache as each one ends (so a run store keeps it at once)."""
    known = {k: cache.peek(k) for k in keys} if cache is not None else {}
    todo = list(dict.fromkeys(k for k in keys if known.get(k) is None))
    if not todo:
        return known, {}
    sweep = cache.sweep if cache is not None else None
    specs = [k[1:] for k in todo]
    keep = (lambda i, v: cache.put(todo[i], v)) if cache is not None else None
    fresh = (sweep or Sweep(progress=False)).map(run, specs, desc=desc, on_result=keep)
    return known, dict(zip(todo, fresh))


def _cached(cache: RunCache | None, key: Hashable, compute: Callable[[], object]) -> tuple[object, bool]:
    return cache.get_or_run(key, compute) if cache is not None else (compute(), False)


def scheduler_label(scheduler_cls: type) -> str:
    """``""`` for the built-in scheduler, else `` [module:Class]`` (for log lines)."""
    name = scheduler_name(scheduler_cls)
    return f" [{name}]" if name else ""


def run_label(variant: str, scheduler_cls: type) -> str:
    """A run's variant and scheduler for a log line, padded so that the runs of one study (every
    variant with one scheduler) line up: to the longest variant name plus the scheduler's label."""
    label = scheduler_label(scheduler_cls)
    return f"{variant + label:{max(map(len, VARIANTS)) + len(label)}s}"


def workload_tag(wl: WorkloadSpec) -> str:
    """The workload in a log line: its MAL and generator seed with the Fig. 9 length factors
    (``64K s0 x1/x1``: append x gen), or its source and MAL for a trace (``agentic 64K``), then a
    token divisor (``/32``), recorded think times (``think``) and recorded arrivals (``replay``,
    ``replay x2``) when set."""
    tag = (f"{wl.mal} s{wl.seed} x{wl.append_factor:g}/x{wl.gen_factor:g}" if wl.source == "synthetic"
           else f"{wl.source} {wl.mal}")
    replay = (" replay" + (f" x{wl.timestamp_speedup:g}" if wl.timestamp_speedup != 1.0 else "")
              if wl.replay_timestamps else "")
    return (tag + (f" /{wl.token_divisor}" if wl.token_divisor != 1 else "") + (" think" if wl.use_think_time else "")
            + replay)


def workload_agents(ts: TrajectorySet, use_think_time: bool = False, *, aps: float | None = None,
                    arrival_seed: int = 0, replay_timestamps: bool = False,
                    timestamp_speedup: float = 1.0) -> tuple[list, np.ndarray]:
    """The simulator's agents for ``ts`` and their start times ``f64[A]``: offline (every agent at
    t = 0), with ``aps`` Poisson arrivals seeded by ``arrival_seed``, or with ``replay_timestamps``
    the recorded arrivals sped up by ``timestamp_speedup`` (:attr:`WorkloadSpec.replay_timestamps`);
    with ``use_think_time`` (:attr:`WorkloadSpec.use_think_time`) each round waits its recorded
    think time and each sub-agent starts at its recorded offset.

    Raises:
      ConfigError: naming ``workload.replay_timestamps`` when given with ``aps`` (the two set the
        same arrivals).
    """
    if aps is not None and replay_timestamps:
        raise replay_online_error()
    if replay_timestamps:
        starts = recorded_starts(ts, timestamp_speedup, recorded_offsets=use_think_time)
    elif aps is None:
        starts = offline_starts(ts, recorded_offsets=use_think_time)
    else:
        starts = online_starts(ts, aps, arrival_seed, recorded_offsets=use_think_time)
    return agents_from_trajectories(ts, starts, use_think_time=use_think_time), starts


def spec_agents(wl: WorkloadSpec, ts: TrajectorySet, *, aps: float | None = None,
                arrival_seed: int = 0) -> tuple[list, np.ndarray]:
    """:func:`workload_agents` of ``ts`` (built from ``wl``) with ``wl``'s think-time and replay fields."""
    return workload_agents(ts, wl.use_think_time, aps=aps, arrival_seed=arrival_seed,
                           replay_timestamps=wl.replay_timestamps, timestamp_speedup=wl.timestamp_speedup)


def paper_workload(mal: str, num_agents: int, seed: int = 0) -> TrajectorySet:
    """The paper's synthetic dataset for ``mal`` with ``num_agents`` agents (PAPER.md section 6.2).

    Raises:
      ConfigError: naming the field: ``mal`` not ``"32K"|"48K"|"64K"``, ``num_agents`` not an
        integer in [1, :data:`~dualpath_jax.workload.synthetic.MAX_AGENTS`], or ``seed`` negative or not an integer
        (:func:`~dualpath_jax.workload.synthetic.paper_dataset`).
    """
    return paper_dataset(mal, num_agents=num_agents, seed=seed)


def mean_total_tokens(ts: TrajectorySet) -> float:
    """Mean over agents of the total tokens (appended + generated) of a trajectory (Table 2 "Total")."""
    per_round = ts.num_append_tokens + ts.num_gen_tokens
    totals = np.add.reduceat(per_round, ts.round_offsets[:-1]) if len(per_round) else np.zeros(0)
    return float(np.mean(totals)) if len(totals) else 0.0


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when either is NaN or ``b`` is 0."""
    if b is None or a is None or not b or math.isnan(a) or math.isnan(b):
        return float("nan")
    return float(a) / float(b)


# ---- runs ---------------------------------------------------------------------------------------
def _busy_read_rate(r: Mapping[str, np.ndarray], num_agents: int) -> dict:
    """Storage read rate while at least half of the agents are still running: hit bytes whose
    read finished by ``busy_window_s`` (the median over agents of their last finish) divided by
    it. Unlike bytes / JCT it is not set by the few longest trajectories' serial chains."""
    agent = np.asarray(r["agent"], np.int64)
    finish = np.asarray(r["finish_s"], np.float64)
    last = np.full(num_agents, -np.inf)
    np.maximum.at(last, agent, np.nan_to_num(finish, nan=np.inf))
    window = float(np.median(last)) if num_agents else 0.0
    nbytes = np.asarray(r["read_bytes_pe"], np.float64) + np.asarray(r["read_bytes_de"], np.float64)
    done = np.asarray(r["read_done_s"], np.float64) <= window
    rate = float(np.sum(nbytes[done])) / window if window > 0 else float("nan")
    return {"busy_window_s": window, "snic_read_bytes_per_s_busy": rate}


def _offline_summary(spec: tuple) -> dict:
    """The simulated offline run of ``spec = (cfg, scheduler_cls, wl)`` (a picklable task)."""
    return _offline_run(spec)[0]


def _offline_run(spec: tuple) -> tuple[dict, SimResult]:
    """:func:`_offline_summary` of ``spec`` and the run's :class:`SimResult` (for figures the
    summary does not hold)."""
    cfg, scheduler_cls, wl = spec
    ts = wl.build()
    t0 = time.perf_counter()
    res = Simulator(cfg, spec_agents(wl, ts)[0], scheduler_cls=scheduler_cls).run()
    s = summarize(res, ts)
    r = res.requests
    s.update(snic_read_bytes=float(sum(s["snic_bytes"].values())), hit_tokens=float(np.sum(r["hit_tokens"])),
             tokens=float(np.sum(r["hit_tokens"]) + np.sum(r["append_tokens"]) + np.sum(r["gen_tokens"])),
             wall_s=time.perf_counter() - t0, **_busy_read_rate(r, len(ts)))
    return s, res


def _offline_out(s: dict, cfg: SimConfig, variant: str, wl: WorkloadSpec, scheduler_cls: type, cached: bool,
                 log: Log | None) -> dict:
    out = dict(s, variant=variant, cluster=cluster_label(cfg), num_agents=wl.num_agents, cached=cached)
    if log:
        log(f"  {cfg.model} {out['cluster']} {workload_tag(wl)} "
            f"{wl.num_agents:6d} agents {run_label(variant, scheduler_cls)} JCT {out['jct_s']:9.1f} s  "
            f"TTFT {out['ttft_mean_s']:7.2f} s  TPOT {out['tpot_s'] * 1e3:6.1f} ms  "
            + ("(memoised)" if cached else f"({out['wall_s']:.1f} s wall)"))
    return out


def offline_run(base: SimConfig, variant: str, wl: WorkloadSpec, log: Log | None = print, *,
                scheduler_cls: type = ClusterScheduler, cache: RunCache | None = None) -> dict:
    """Offline run (all agents at t = 0, paper section 7.2) of ablation ``variant`` on ``base``
    with ``scheduler_cls`` deciding: the :func:`dualpath_jax.sim.runs.summarize` figures plus
    ``variant``, ``cluster``, ``num_agents``, ``snic_read_bytes`` (all SNICs), ``hit_tokens``,
    ``tokens`` (hit + append + gen of every request), ``busy_window_s`` and
    ``snic_read_bytes_per_s_busy`` (:func:`_busy_read_rate`), ``wall_s`` (of the simulation) and
    ``cached``. Memoised in ``cache`` (None: not memoised). Returns a fresh dict.

    Raises:
      ConfigError: naming ``variants`` for an unknown variant.
    """
    return offline_runs(base, [(variant, wl)], log, scheduler_cls=scheduler_cls, cache=cache)[0]


def offline_runs(base: SimConfig | Sequence[SimConfig], runs: Sequence[tuple[str, WorkloadSpec]],
                 log: Log | None = print, *, scheduler_cls: type = ClusterScheduler,
                 cache: RunCache | None = None) -> list[dict]:
    """:func:`offline_run` of every ``(variant, workload)`` in ``runs`` (on ``base``, or on
    ``base[i]`` for run ``i``), in order. The runs not memoised in ``cache`` go through its
    :class:`~.sweep.Sweep` (``cache.sweep``: in this process, or in parallel on Ray), with the
    same results either way.

    Raises:
      ConfigError: naming ``variants`` for an unknown variant.
    """
    bases = list(base) if isinstance(base, (list, tuple)) else [base] * len(runs)
    if len(bases) != len(runs):
        raise ValueError(f"base: {len(bases)} configs for {len(runs)} runs")
    specs = [(variant_config(b, v), scheduler_cls, wl) for b, (v, wl) in zip(bases, runs)]
    keys = [("offline", *spec) for spec in specs]
    known, computed = _run_missing(keys, _offline_summary, cache, "offline runs")
    out, shown = [], set()
    for k, (cfg, _, wl), (v, _) in zip(keys, specs, runs):
        s = known.get(k)
        cached = s is not None or k in shown  # a run listed twice is computed once
        out.append(_offline_out(computed[k] if s is None else s, cfg, v, wl, scheduler_cls, cached, log))
        shown.add(k)
    return out


def ttft_components(r: Mapping[str, np.ndarray], snic_read_bytes_per_s: float) -> dict[str, np.ndarray]:
    """Per-request TTFT split (f64[B] each, seconds; they sum to ``first_token_s - arrival_s``):

    * ``schedule_s``: arrival -> placed (waiting for a PE and a DE, including DE HBM allocation);
    * ``read_wait_s``: placed -> read_done minus the transfer time (DRAM-buffer allocation and
      SNIC queueing);
    * ``read_transfer_s``: the larger side's hit bytes / one node's SNIC read rate (the read's
      own transfer time, storage -> SNIC -> DRAM; 0 for Oracle);
    * ``prefill_queue_s``: read_done -> first forward of the request;
    * ``prefill_compute_s``: first forward -> first token (all chunks, including waits for
      layer loads).

    ``r`` holds the simulator's request columns (``SimResult.requests``).
    """
    arrival, placed, done = (np.asarray(r[k], np.float64) for k in ("arrival_s", "placed_s", "read_done_s"))
    start, first = np.asarray(r["prefill_start_s"], np.float64), np.asarray(r["first_token_s"], np.float64)
    side_bytes = np.maximum(np.asarray(r["read_bytes_pe"], np.float64), np.asarray(r["read_bytes_de"], np.float64))
    read = done - placed
    transfer = np.minimum(np.nan_to_num(side_bytes) / snic_read_bytes_per_s, read)
    return {"schedule_s": placed - arrival, "read_wait_s": read - transfer, "read_transfer_s": transfer,
            "prefill_queue_s": start - done, "prefill_compute_s": first - start}


@dataclasses.dataclass(frozen=True)
class OnlineRun:
    """One online run: its request table and summary figures.

    ``stats`` keys: ``ttft_mean_s``, ``ttft_p50_s``, ``ttft_p99_s``, ``ttst_mean_s``,
    ``tpot_mean_s``, ``tpot_p99_s``, ``completion_mean_s`` (mean completion time of the
    trajectories that completed), ``num_agents`` (trajectories, sub-agents included),
    ``trajectories_per_agent`` (trajectories per root agent, the agents APS counts: 1 without
    sub-agents), ``num_requests`` (measured), ``num_requests_total``, ``num_failed``,
    ``mean_total_tokens``, ``kv_bytes_per_token``, ``live_kv_bytes`` (time-averaged hit KV of live
    agents over the measured window), ``arrival_window_s`` (its length), ``end_s``, ``wall_s`` and
    ``<component>_mean`` for each TTFT component (measured requests).
    ``table`` is None for runs of more than ``TABLE_MAX_REQUESTS`` requests (memory; only the
    max-APS search needs the table, and its runs are smaller).
    """

    aps: float
    variant: str
    table: RequestTable | None
    stats: dict


TABLE_MAX_REQUESTS = 2_000_000


def _online_summary(spec: tuple) -> OnlineRun:
    """The simulated online run of ``spec = (cfg, scheduler_cls, wl, aps, arrival_seed, warmup_s)``
    (a picklable task; :func:`online_runs`)."""
    return _online_run(spec)[0]


def _online_run(spec: tuple) -> tuple[OnlineRun, SimResult]:
    """:func:`_online_summary` of ``spec`` and the run's :class:`SimResult` (for figures the
    summary does not hold)."""
    cfg, scheduler_cls, wl, aps, arrival_seed, warmup_s = spec
    ts = wl.build()
    agents, starts = spec_agents(wl, ts, aps=float(aps), arrival_seed=arrival_seed)
    t0 = time.perf_counter()
    res = Simulator(cfg, agents, scheduler_cls=scheduler_cls).run()
    wall = time.perf_counter() - t0
    full = request_table(res, ts)
    r = res.requests
    kvb = float(cost.stored_kv_bytes_per_token(cfg.spec, cfg.kv_dtype))
    rate = min(cfg.hardware.node_snic_bytes_per_s, cfg.hardware.storage_bytes_per_s)
    done = np.fromiter(latency.trajectory_completion_s(full).values(), np.float64)
    lo, hi = max(float(np.min(starts)), float(warmup_s)), float(np.max(starts))
    arrival, finish = np.asarray(r["arrival_s"], np.float64), np.asarray(r["finish_s"], np.float64)
    overlap = np.clip(np.minimum(finish, hi) - np.maximum(arrival, lo), 0.0, None)
    live = float(np.sum(np.asarray(r["hit_tokens"], np.float64) * overlap)) * kvb / (hi - lo) if hi > lo else 0.0
    window = (arrival >= warmup_s) & (arrival <= hi)  # issued while agents arrive, after the warm-up
    table = full.where(window)
    comp = {k: v[window] for k, v in ttft_components(r, rate).items()}
    ttft, tpot = latency.ttft_s(table), latency.tpot_s(table)
    stats = {"ttft_mean_s": latency.summarize(ttft, "mean"), "ttft_p50_s": latency.summarize(ttft, "p50"),
             "ttft_p99_s": latency.summarize(ttft, "p99"),
             "ttst_mean_s": latency.summarize(latency.ttst_s(table), "mean"),
             "tpot_mean_s": latency.summarize(tpot, "mean"), "tpot_p99_s": latency.summarize(tpot, "p99"),
             "completion_mean_s": float(np.mean(done[np.isfinite(done)])) if np.isfinite(done).any() else math.nan,
             "num_agents": int(len(ts)), "trajectories_per_agent": len(ts) / max(1, len(root_indices(ts))),
             "num_requests": int(len(table)), "num_requests_total": int(len(full)),
             "num_failed": int(np.sum(~table.ok)),
             "mean_total_tokens": mean_total_tokens(ts), "kv_bytes_per_token": kvb, "live_kv_bytes": live,
             "arrival_window_s": hi - lo, "last_arrival_s": hi, "end_s": res.end_s, "wall_s": wall}
    for k, v in comp.items():
        stats[f"{k}_mean"] = float(np.nanmean(v)) if v.size else float("nan")
    return OnlineRun(float(aps), "", table if len(table) <= TABLE_MAX_REQUESTS else None, stats), res


def online_run(base: SimConfig, variant: str, wl: WorkloadSpec, aps: float, arrival_seed: int = 0,
               log: Log | None = print, *, warmup_s: float = 0.0, scheduler_cls: type = ClusterScheduler,
               cache: RunCache | None = None) -> OnlineRun:
    """Online run (paper section 7.3): ``wl.num_agents`` agents arriving as a Poisson process at
    ``aps`` agents per second (:func:`dualpath_jax.sim.runs.online_starts`, seeded by
    ``arrival_seed``), each replaying its rounds back to back, ``scheduler_cls`` deciding.
    Latency figures and ``table`` cover the requests issued from ``warmup_s`` (seconds) until the
    last agent arrives (the loaded period: the ramp-up before and the drain after are left out);
    completion times and the live KV cover every agent. Memoised in ``cache`` (None: not memoised).

    Raises:
      ConfigError: naming ``aps`` when it is not positive, ``variants`` for an unknown variant.
    """
    return online_runs([(base, variant, wl, aps, arrival_seed, warmup_s)], log, scheduler_cls=scheduler_cls,
                       cache=cache)[0]


def online_runs(runs: Sequence[tuple[SimConfig, str, WorkloadSpec, float, int, float]], log: Log | None = print, *,
                scheduler_cls: type = ClusterScheduler, cache: RunCache | None = None) -> list[OnlineRun]:
    """:func:`online_run` of every ``(base, variant, workload, aps, arrival_seed, warmup_s)`` in
    ``runs``, in order. The runs not memoised in ``cache`` go through its :class:`~.sweep.Sweep`
    (``cache.sweep``: in this process, or in parallel on Ray), with the same results either way;
    a run listed twice is computed once.

    Raises:
      ConfigError: naming ``aps`` when one is not positive, ``variants`` for an unknown variant.
    """
    specs = []
    for base, variant, wl, aps, arrival_seed, warmup_s in runs:
        check_positive("aps", aps)
        refuse_replay(wl)  # before any run (workload_agents refuses it in each)
        specs.append((variant_config(base, variant), scheduler_cls, wl, float(aps), int(arrival_seed),
                      float(warmup_s)))
    keys = [("online", *spec) for spec in specs]
    known, computed = _run_missing(keys, _online_summary, cache, "online runs")
    out, shown = [], set()
    for k, (cfg, _, wl, aps, _seed, warmup_s), (_, variant, *_rest) in zip(keys, specs, runs):
        run = known.get(k)
        cached = run is not None or k in shown
        run = computed[k] if run is None else run
        run = dataclasses.replace(run, variant=variant)
        shown.add(k)
        out.append(run)
        if not log:
            continue
        s = run.stats
        if not cached and s["num_requests"] == 0:
            log(f"  warning: no request issued between warm-up {warmup_s:g} s and the last arrival "
                f"{s['last_arrival_s']:.1f} s ({s['num_agents']} agents at {aps:g} APS): nothing measured (a max-APS "
                f"search ends at such a rate, unbracketed: its capacity is unknown above the rates before)")
        log(f"  {cfg.model} {cluster_label(cfg)} {workload_tag(wl)} {wl.num_agents} agents @ {aps:.4g} APS "
            f"(arrivals s{_seed}) "
            f"{run_label(variant, scheduler_cls)} "
            f"TTFT {s['ttft_mean_s']:7.2f} s  TTST {s['ttst_mean_s']:6.3f} s  TPOT {s['tpot_mean_s'] * 1e3:6.1f} ms  "
            + ("(memoised)" if cached else f"({s['wall_s']:.1f} s wall)"))
    return out


def run_offline(base: SimConfig, ts: TrajectorySet, variants: Sequence[str], *, log: Log | None = print,
                scheduler_cls: type = ClusterScheduler, use_think_time: bool = False, replay_timestamps: bool = False,
                timestamp_speedup: float = 1.0) -> dict[str, dict]:
    """Offline runs (all agents of ``ts`` at t = 0, or at their recorded arrivals with
    ``replay_timestamps``) of each of ``variants`` on ``base``, with
    ``scheduler_cls`` (a :class:`~dualpath_jax.sched.ClusterScheduler` subclass: a new policy;
    ``use_think_time``, ``replay_timestamps``, ``timestamp_speedup``: as the fields of
    :class:`WorkloadSpec <dualpath_jax.studies.common.WorkloadSpec>`) deciding in every run.

    Returns:
      ``{variant: summary}`` in the order of ``variants``; each summary is the dict of
      :func:`dualpath_jax.sim.runs.summarize` (virtual seconds: ``jct_s``, ``ttft_mean_s``,
      ``ttft_p50_s``, ``ttft_p99_s``, ``ttst_mean_s``, ``tpot_s``, ``tpot_p99_s``; counts:
      ``num_requests``, ``num_unfinished``, ``events``; per SNIC read server ``snic_bytes``
      (bytes) and ``snic_busy_s`` (seconds); unitless Max/Avg ratios ``snic_max_avg_mean``,
      ``attention_max_avg_mean``, ``attention_max_avg_weighted``) plus ``wall_s``, wall-clock
      seconds of the simulation and its summary.

    Raises:
      ConfigError: naming ``variants`` for an unknown variant, before any run; or as
        :class:`~dualpath_jax.sim.cluster.Simulator` (e.g. a request that cannot fit the hardware).
      RunStalled: (a ``RuntimeError``) a run stalled with requests unfinished.
    """
    configs = {name: variant_config(base, name) for name in variants}  # unknown names fail before any run
    agents, _ = workload_agents(ts, use_think_time, replay_timestamps=replay_timestamps,
                                timestamp_speedup=timestamp_speedup)
    label = scheduler_label(scheduler_cls)
    out = {}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        res = Simulator(cfg, agents, scheduler_cls=scheduler_cls).run()
        summary = summarize(res, ts)
        summary["wall_s"] = time.perf_counter() - t0
        out[name] = summary
        if log:
            log(f"  {name + label:10s} JCT {summary['jct_s']:9.1f} s  TTFT p50 {summary['ttft_p50_s']:7.2f} s  "
                f"TPOT {summary['tpot_s'] * 1e3:6.1f} ms  ({summary['wall_s']:.1f} s wall, {res.events} events)")
    return out
