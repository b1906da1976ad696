"""The P/D advisor's search space and the simulated runs behind its objectives.

* :class:`Choice`: one configuration (P, D, DRAM buffer per node, alpha/beta, compute quota);
  :class:`AdvisorConfig`: the request and the space (:meth:`AdvisorConfig.space`).
* :class:`Evaluator`: the objective of configurations (offline JCT, or the max APS under the SLO
  from a max-APS search), each from simulated runs memoised in a :class:`~.runs.RunCache` and
  sent in batches through its sweep (in parallel on Ray); it counts the runs it needed.
* :func:`utilization`: the busy share of each resource in one run (which resource binds).

The search itself is :mod:`.advisor`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence

import numpy as np

from dualpath_jax.config import ConfigError, check_in, check_positive
from dualpath_jax.metrics.latency import SLO, evaluate_slo, max_aps_under_slo
from dualpath_jax.model import cost
from dualpath_jax.sched import ClusterScheduler, get_variant, load_scheduler
from dualpath_jax.sim.compute import role_models
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.fit import kv_memory
from dualpath_jax.sim.runs import variant_config
from dualpath_jax.studies.common import OnlineWindow, WorkloadSpec, refuse_replay
from dualpath_jax.studies.config import SearchConfig
from dualpath_jax.studies.runs import Log, RunCache, _offline_run, _online_run, _run_missing
from dualpath_jax.studies.sweep import lockstep

__all__ = ["OBJECTIVES", "RESOURCES", "Choice", "AdvisorConfig", "Evaluation", "Evaluator", "utilization"]

OBJECTIVES = ("jct", "max_aps")
"""``jct``: offline batch JCT (seconds, lower is better); ``max_aps``: agents per second under the SLO."""

RESOURCES = ("snic", "cnic", "dram", "pe_compute", "de_hbm")
"""The resources :func:`utilization` reports, in the order ties are broken."""


@dataclasses.dataclass(frozen=True, order=True)
class Choice:
    """One configuration of the search space (hashable, ordered by P then the knobs).

    Attributes:
      p, d: prefill and decode nodes.
      buffer_gb: the DRAM buffer per node (GB, 1e9 B; ``hardware.dram_buffer_bytes``).
      alpha_s, beta_s: Algorithm 1's thresholds (seconds, PAPER.md 5.2).
      compute_quota_s: attention seconds per PE forward (PAPER.md 5.5).
    """

    p: int
    d: int
    buffer_gb: float
    alpha_s: float
    beta_s: float
    compute_quota_s: float

    @property
    def cluster(self) -> str:
        return f"{self.p}P{self.d}D"

    @property
    def label(self) -> str:
        """``"3P5D buffer 80 GB alpha 3 s beta 5 s quota 0.3 s"``."""
        return (f"{self.cluster} buffer {self.buffer_gb:g} GB alpha {self.alpha_s:g} s beta {self.beta_s:g} s "
                f"quota {self.compute_quota_s:g} s")

    def with_knobs(self, buffer_gb: float, alpha_beta: tuple[float, float], quota: float) -> "Choice":
        return dataclasses.replace(self, buffer_gb=float(buffer_gb), alpha_s=float(alpha_beta[0]),
                                   beta_s=float(alpha_beta[1]), compute_quota_s=float(quota))

    def with_split(self, p: int, nodes: int) -> "Choice":
        return dataclasses.replace(self, p=int(p), d=int(nodes - p))

    def sim(self, base: SimConfig) -> SimConfig:
        """``base`` on this cluster with these knobs."""
        hw = dataclasses.replace(base.hardware, dram_buffer_bytes=self.buffer_gb * 1e9)
        return base.replace(prefill_nodes=self.p, decode_nodes=self.d, hardware=hw, alpha_s=self.alpha_s,
                            beta_s=self.beta_s, compute_quota_s=self.compute_quota_s)


@dataclasses.dataclass(frozen=True)
class AdvisorConfig:
    """What to advise on, and the search's space and settings (``configs/advise.py``).

    Attributes:
      sim: the base :class:`SimConfig` (model, hardware, other fields); the advisor sets the
        cluster, the DRAM buffer, alpha/beta, the compute quota and the variant's switches.
      nodes: the node budget N = P + D (>= 2).
      workload: the workload (offline: its agents all start at t = 0, or at a Mooncake trace's
        recorded arrivals with ``workload.replay_timestamps``; online: Poisson arrivals).
      objective: ``jct`` or ``max_aps`` (:data:`OBJECTIVES`).
      variant: the ablation variant every run uses (``sched.VARIANTS``; default ``dualpath``).
      scheduler: the ClusterScheduler subclass of every run.
      buffer_gb, alpha_beta, compute_quota_s: each knob's values (GB per node, ``(alpha s, beta
        s)`` pairs, seconds); the first is the one the P:D stage uses.
      prune: keep only Eq. 9's range and its edges in the P:D stage.
      coarse_points: splits of the first P:D batch (>= 2).
      seeds: seeds of the recommendation's interval (>= 1).
      slo, window, initial_aps, aps_search: the online objective (the SLO, how a run is sized, the
        max-APS search's first rate and settings).

    Raises:
      ConfigError: naming the field.
    """

    sim: SimConfig
    nodes: int
    workload: WorkloadSpec
    objective: str = "jct"
    variant: str = "dualpath"
    scheduler: type = ClusterScheduler
    buffer_gb: tuple[float, ...] = (80.0,)
    alpha_beta: tuple[tuple[float, float], ...] = ((3.0, 5.0),)
    compute_quota_s: tuple[float, ...] = (0.3,)
    prune: bool = True
    coarse_points: int = 4
    seeds: int = 3
    slo: SLO = SLO()
    window: OnlineWindow = OnlineWindow()
    initial_aps: float = 1.0
    aps_search: SearchConfig = SearchConfig()
    name: str = ""

    def __post_init__(self):
        check_positive("nodes", self.nodes, integer=True)
        if self.nodes < 2:
            raise ConfigError("nodes", f"must be >= 2 (one PE node and one DE node; got {self.nodes})")
        check_in("objective", self.objective, OBJECTIVES)
        if self.objective == "max_aps":
            refuse_replay(self.workload, "objective='jct' replays the trace's timestamps")
        get_variant(self.variant)
        object.__setattr__(self, "scheduler", load_scheduler(self.scheduler, field="scheduler"))
        for name in ("buffer_gb", "compute_quota_s"):
            raw = getattr(self, name)
            example = "(40, 80)" if name == "buffer_gb" else "(0.2, 0.3)"
            if isinstance(raw, str):
                raise ConfigError(name, f"must be a tuple of numbers, e.g. {example} (got the text {raw!r})")
            try:
                values = tuple(float(v) for v in raw)
            except (TypeError, ValueError):  # e.g. --config.compute_quota_s=(nan,): a tuple of one string
                raise ConfigError(name, f"must be a tuple of numbers, e.g. {example} (got {raw!r})") from None
            if not values:
                raise ConfigError(name, "must hold at least one value")
            for v in values:
                check_positive(name, v)
            object.__setattr__(self, name, values)
        pairs = []
        for pair in self.alpha_beta:
            try:
                a, b = (float(x) for x in pair)
            except (TypeError, ValueError):
                raise ConfigError("alpha_beta", f"expected (alpha_s, beta_s) pairs (got {pair!r})") from None
            check_positive("alpha_beta", a)
            check_positive("alpha_beta", b)
            pairs.append((a, b))
        if not pairs:
            raise ConfigError("alpha_beta", "must hold at least one (alpha_s, beta_s) pair")
        object.__setattr__(self, "alpha_beta", tuple(pairs))
        check_positive("coarse_points", self.coarse_points, integer=True)
        if self.coarse_points < 2:
            raise ConfigError("coarse_points", f"must be >= 2 (got {self.coarse_points})")
        check_positive("seeds", self.seeds, integer=True)
        check_positive("initial_aps", self.initial_aps)

    @property
    def maximise(self) -> bool:
        return self.objective == "max_aps"

    @property
    def unit(self) -> str:
        return "agents/s" if self.maximise else "s"

    @property
    def knob_space(self) -> list[tuple]:
        """Every ``(buffer_gb, (alpha_s, beta_s), compute_quota_s)``, first values first."""
        return [(b, ab, q) for b in self.buffer_gb for ab in self.alpha_beta for q in self.compute_quota_s]

    @property
    def base_choice(self) -> Choice:
        """The first split with every knob's first value."""
        return Choice(1, self.nodes - 1, 0.0, 0.0, 0.0, 0.0).with_knobs(
            self.buffer_gb[0], self.alpha_beta[0], self.compute_quota_s[0])

    def space(self) -> list[Choice]:
        """Every configuration: each split ``P = 1 .. N - 1`` with each knob combination."""
        base = self.base_choice
        return [base.with_split(p, self.nodes).with_knobs(*k) for p in range(1, self.nodes) for k in self.knob_space]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One configuration's objective on one seed.

    Attributes:
      choice, seed: what ran (seed index r: workload seed ``workload.seed + r``, arrival seed r).
      objective: JCT (s) or max APS (agents/s); ``inf`` / 0 when infeasible.
      feasible: False when the configuration cannot hold the workload (``reason`` says why).
      stats: the run's figures (offline: :func:`.runs.summarize`'s; online: the run at the max APS)
        with ``utilization`` (:func:`utilization`).
      runs: simulated runs behind this value (online: the search's trials).
      limit: online, the SLO term the first failing rate broke (``ttft`` / ``tpot`` / ``failed``).
      bracketed: online, False when no failing rate was found (the max APS is a lower bound).
    """

    choice: Choice
    seed: int
    objective: float
    feasible: bool = True
    reason: str = ""
    stats: dict = dataclasses.field(default_factory=dict)
    runs: int = 1
    limit: str = ""
    bracketed: bool = True


def utilization(res, cfg: SimConfig) -> dict[str, float]:
    """Busy share of each resource over one simulated run (``0 .. 1``; :data:`RESOURCES`).

    ``snic``: the busiest node's SNIC read server; ``cnic``: the busiest engine's CNIC in or out;
    ``dram``: the busiest node's DRAM; ``pe_compute``: the busiest PE unit's forwards (with
    layer-wise prefill a forward also waits for layers still loading, which counts here); each as
    busy seconds over the run's end time. ``de_hbm``: the busiest DE's time-averaged KV (every request
    holds ``(hit + append + gen) x`` KV bytes per token from its placement to its finish, as the
    simulator allocates it) over the HBM left to KV after weights (``sim.fit.kv_memory``).
    """
    t = float(res.end_s)
    if not t > 0:
        return dict.fromkeys(RESOURCES, float("nan"))
    links = res.links

    def busiest(prefix: str) -> float:
        vals = [v["busy_s"] for k, v in links.items() if k.startswith(prefix)]
        return max(vals) / t if vals else float("nan")

    out = {"snic": busiest("snic_read"), "cnic": max(busiest("cnic_in"), busiest("cnic_out")),
           "dram": busiest("dram"),
           "pe_compute": float(np.max(res.units["pe_busy_s"])) / t if len(res.units.get("pe_busy_s", ())) else
           float("nan")}
    g = cfg.hardware.gpus_per_node
    n_pe, n_de = cfg.prefill_nodes * g, cfg.decode_nodes * g
    kvb = float(cost.stored_kv_bytes_per_token(cfg.spec, cfg.kv_dtype))
    de_hbm = kv_memory(cfg, *role_models(cfg), kvb)[1]  # as the simulator sizes it
    r = res.requests
    de = np.asarray(r["de"], np.int64)
    ctx = (np.asarray(r["hit_tokens"], np.float64) + np.asarray(r["append_tokens"], np.float64)
           + np.asarray(r["gen_tokens"], np.float64))
    held = np.nan_to_num(np.asarray(r["finish_s"], np.float64) - np.asarray(r["placed_s"], np.float64))
    ok = de >= n_pe
    per_de = np.bincount(de[ok] - n_pe, weights=ctx[ok] * kvb * held[ok], minlength=n_de)
    out["de_hbm"] = float(per_de.max()) / (t * de_hbm) if n_de and de_hbm > 0 else float("nan")
    return out


# ---- simulated runs (picklable tasks) -------------------------------------------------------------
def _infeasible(error: ConfigError) -> dict:
    """``{"infeasible": why}`` for a configuration the simulator rejects (weights, KV or a read that
    do not fit); an error in the workload itself is no property of the configuration: re-raised."""
    if error.field.startswith("workload."):
        raise error
    return {"infeasible": str(error)}


def _offline_task(spec: tuple) -> dict:
    """One offline run of ``spec = (cfg, scheduler_cls, wl)``: :func:`.runs.offline_run`'s figures
    and ``utilization``, or ``{"infeasible": why}`` when the configuration cannot hold the workload."""
    try:
        s, res = _offline_run(spec)
    except ConfigError as e:
        return _infeasible(e)
    s["utilization"] = utilization(res, spec[0])
    return s


def _online_task(spec: tuple) -> dict:
    """One online run of ``spec = (cfg, scheduler_cls, wl, aps, arrival_seed, warmup_s, slo)``
    judged against the SLO where it ran: ``meets``, ``slo_stats``, the run's ``stats`` (without
    the request table) with its ``utilization``, or ``{"infeasible": why}``."""
    *run_spec, slo = spec
    try:
        run, res = _online_run(tuple(run_spec))
    except ConfigError as e:
        return _infeasible(e)
    meets, slo_stats = evaluate_slo(run.table, slo)
    return {"meets": bool(meets), "slo_stats": slo_stats,
            "stats": {**run.stats, "utilization": utilization(res, run_spec[0])}}


class _Infeasible(Exception):
    """A configuration that cannot hold the workload (ends its max-APS search)."""


class Evaluator:
    """Objectives of configurations, each from simulated runs memoised in ``cache``; counts the
    distinct runs it asked for (:attr:`runs`), whether the cache held them or not, so that two
    evaluators sharing a cache (the advisor and the exhaustive sweep) each count their own."""

    def __init__(self, config: AdvisorConfig, cache: RunCache, log: Log | None = None):
        self.config, self.cache, self.log = config, cache, log
        self.values: dict[tuple[Choice, int], Evaluation] = {}
        self._keys: set = set()
        self._lock = threading.Lock()

    @property
    def runs(self) -> int:
        """Distinct simulated runs this evaluator needed."""
        return len(self._keys)

    def _workload(self, seed: int) -> WorkloadSpec:
        wl = self.config.workload
        return wl.replace(seed=wl.seed + seed) if wl.source == "synthetic" else wl

    def _sim(self, choice: Choice) -> SimConfig:
        return variant_config(choice.sim(self.config.sim), self.config.variant)

    def evaluate(self, choices: Sequence[Choice], seed: int = 0) -> list[Evaluation]:
        """The :class:`Evaluation` of each of ``choices`` on seed index ``seed`` (one batch)."""
        todo = [c for c in dict.fromkeys(choices) if (c, seed) not in self.values]
        if todo:
            fresh = self._offline(todo, seed) if not self.config.maximise else self._online(todo, seed)
            for e in fresh:
                self.values[(e.choice, seed)] = e
                if self.log:
                    v = (f"{e.objective:10.4g} {self.config.unit}" if e.feasible
                         else f"infeasible: {e.reason if len(e.reason) <= 120 else e.reason[:116] + ' ...'}")
                    self.log(f"    {e.choice.label:52s} seed {seed}: {v}")
        return [self.values[(c, seed)] for c in choices]

    def _offline(self, choices: list[Choice], seed: int) -> list[Evaluation]:
        wl = self._workload(seed)
        keys = [("advise-offline", self._sim(c), self.config.scheduler, wl) for c in choices]
        self._keys.update(keys)
        known, computed = _run_missing(keys, _offline_task, self.cache, "advisor runs")
        out = []
        for c, k in zip(choices, keys):
            s = known.get(k) or computed[k]
            if "infeasible" in s:
                out.append(Evaluation(c, seed, math.inf, False, s["infeasible"], runs=1))
            else:
                out.append(Evaluation(c, seed, float(s["jct_s"]), stats=s, runs=1))
        return out

    def _online(self, choices: list[Choice], seed: int) -> list[Evaluation]:
        cfg = self.config
        search, window = cfg.aps_search, cfg.window
        wl = self._workload(seed)
        results: dict = {}

        def run_batch(keys: list) -> list:
            specs = [("advise-online", self._sim(c), cfg.scheduler, window.workload(wl, a), float(a), seed,
                      window.warmup_s, cfg.slo) for c, a in keys]
            with self._lock:
                self._keys.update(specs)
            known, computed = _run_missing(specs, _online_task, self.cache, "advisor runs")
            out = [known.get(k) or computed[k] for k in specs]
            results.update(zip(keys, out))
            return out

        def task(c: Choice):
            def search_one(request):
                def run(aps):
                    r = request((c, float(aps)))
                    if "infeasible" in r:
                        raise _Infeasible(r["infeasible"])
                    return r["meets"], r["slo_stats"]
                try:
                    return max_aps_under_slo(run, cfg.slo, initial_aps=cfg.initial_aps, min_aps=search.min_aps,
                                             max_aps=search.max_aps, rel_tol=search.rel_tol,
                                             max_runs=search.max_runs, judged=True)
                except _Infeasible as e:
                    return str(e)
            return search_one

        found = lockstep([task(c) for c in choices], run_batch)
        out = []
        for c, res in zip(choices, found):
            if isinstance(res, str):
                out.append(Evaluation(c, seed, 0.0, False, res, runs=1))
                continue
            at = results.get((c, float(res.aps)))
            stats = dict(at["stats"]) if at and "stats" in at else {}
            failing = [t for t in res.trials if not t.meets_slo and t.aps > res.aps]
            limit = ""
            if failing:
                t = min(failing, key=lambda t: t.aps)
                ttft_over = not t.ttft_s <= cfg.slo.ttft_s or t.ttft_worst_window_s > cfg.slo.ttft_s
                limit = ("ttft" if ttft_over else "tpot" if not (
                    math.isnan(t.tpot_s) or t.tpot_s <= cfg.slo.tpot_s) else "failed")
            out.append(Evaluation(c, seed, float(res.aps), stats=stats, runs=len(res.trials), limit=limit,
                                  bracketed=res.bracketed))
        return out

    @staticmethod
    def utilization(e: Evaluation) -> dict[str, float]:
        """:func:`utilization` of ``e``'s run (online: the run at its max APS); {} if infeasible."""
        return e.stats.get("utilization", {}) if e.feasible else {}

    def score(self, e: Evaluation) -> float:
        """Higher is better: ``-JCT`` or the max APS; ``-inf`` when infeasible."""
        if not e.feasible:
            return -math.inf
        return e.objective if self.config.maximise else -e.objective
