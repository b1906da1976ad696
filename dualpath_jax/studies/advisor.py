"""P/D advisor: the P:D split, DRAM buffer, alpha/beta and compute quota to run for a workload.

PAPER.md section 7 (stated limitations): choosing the P/D ratio adaptively needs a simulator,
because one-off experiments on the real cluster are costly. :func:`advise` answers, for one model,
hardware, node budget ``N = P + D`` and workload, which configuration minimises the offline JCT
(``objective = "jct"``) or maximises the agents per second served under the TTFT/TPOT SLO
(``objective = "max_aps"``), and how sure the simulator is of it. Every candidate is a simulated
run of the configured variant (``dualpath`` by default) with the config's scheduler.

The search (:func:`advise`):

1. **Eq. 9 pruning.** The P:D splits ``P = 1 .. N - 1`` whose ratio lies inside the bottleneck-free
   range of PAPER.md Eq. 9 (:func:`dualpath_jax.sim.analysis.pd_range_for_hardware`) are kept,
   together with the nearest split outside each end (the range's edges): outside it some CNIC or
   DRAM, not the SNICs, bounds the loading rate, but compute can still favour an edge.
2. **Coarse to fine over P** at the knobs' first values: ``coarse_points`` evenly spread kept
   splits, then the midpoints between the best one and its evaluated neighbours until no
   unevaluated split is left between them (a discrete bisection that finds the optimum of a
   unimodal objective). A best split on a kept edge outside the range walks further out while the
   objective improves, so the pruning never hides an optimum beyond it.
3. **Secondary knobs** at the best split: each knob's other values with the others at their first
   values (one batch), then the combination of every knob's best; the best of these sets the knobs.
4. **P:D again** with the chosen knobs: the neighbouring splits, walking while the objective improves.
5. **Confidence.** The best configuration runs for ``seeds`` workload (and, online, arrival) seeds;
   its objective is the mean with a 95% Student-t interval (:mod:`.seeds`); the runners-up are the
   next best configurations of the search.

Each step's runs go out as one batch through the :class:`~.runs.RunCache`'s sweep (in parallel on
Ray with ``--workers``); the runs are counted (``advisor_runs``). Online, one configuration's
objective is a max-APS search (:func:`dualpath_jax.metrics.latency.max_aps_under_slo`), the searches
of one batch stepping together (:func:`.sweep.lockstep`).

Which resource binds (:func:`utilization`): in the recommended configuration's run, the busy share
of each resource over the run: the busiest node's SNIC read server, the busiest engine's CNIC
(in or out), the busiest node's DRAM, the busiest PE unit's forwards, and the busiest DE's HBM
(time-averaged KV held over the HBM left after weights). The highest is the binding one; the
neighbouring splits' objectives say whether a node more on the PE or on the DE side helps.

:func:`exhaustive` evaluates every configuration of the same space (every split, every knob
combination) for the validation (:func:`.advisor_report.validate`): ``advisor_regret`` is the
relative gap between
the advisor's choice and the sweep's best (on the first seed, the one both searched with) and
``advisor_run_fraction`` the advisor's simulated runs over the sweep's, both including the runs
that give the recommendation its interval (a sweep needs them too to state one).

What it does not model: everything the simulator does not (``sim.cluster``: no failures,
no network congestion beyond the per-link rates, public compute calibration), P:D splits within a
node, heterogeneous nodes, and knobs outside the searched lists. What the search can miss: a P:D
objective with several local optima (step 2 assumes one), and a knob value that is worse at the
first stage's split but better at another (step 3 tries knobs at one split only).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from dualpath_jax.config import ConfigError
from dualpath_jax.sim import analysis
from dualpath_jax.studies.advisor_runs import (OBJECTIVES, RESOURCES, AdvisorConfig, Choice, Evaluation, Evaluator,
                                               utilization)
from dualpath_jax.studies.runs import Log, RunCache
from dualpath_jax.studies.seeds import estimate

__all__ = ["OBJECTIVES", "RESOURCES", "Choice", "AdvisorConfig", "Evaluation", "Evaluator", "utilization", "Advice",
           "advise", "exhaustive", "regret"]


# ---- the search ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Advice:
    """What :func:`advise` found.

    Attributes:
      config: the request.
      best: the recommended configuration's evaluation on the first seed.
      per_seed: its objective on each of ``config.seeds`` seeds (f64, the unit of the objective);
        one value for an offline trace workload, which no seed changes.
      runners_up: the next best configurations of the search (first seed), best first.
      evaluated: every evaluation of the search on the first seed, in order.
      stages: the configurations each stage evaluated (``pd_coarse``, ``pd_fine``, ``pd_edge``,
        ``knobs``, ``pd_again``).
      eq9: the Eq. 9 range of the hardware (``sim.analysis.PDRange``); kept: the splits (P) the
        pruning kept.
      utilization, binding, why: :func:`utilization` of the recommended run, the resource with the
        highest share and a sentence on it.
      runs, search_runs: simulated runs in all, and before the recommendation's extra seeds.
    """

    config: AdvisorConfig
    best: Evaluation
    per_seed: list[float]
    runners_up: list[Evaluation]
    evaluated: list[Evaluation]
    stages: dict[str, list[Choice]]
    eq9: object
    kept: list[int]
    utilization: dict[str, float]
    binding: str
    why: str
    runs: int
    search_runs: int


_RESOURCE_NAMES = {"snic": "SNIC (storage reads)", "cnic": "CNIC", "dram": "DRAM bandwidth",
                   "pe_compute": "PE compute", "de_hbm": "DE HBM (KV capacity)"}


def _prune(nodes: int, rng) -> list[int]:
    """Splits P of ``nodes`` whose P/D lies in Eq. 9's range, with the nearest split outside each
    end; every split when the range is empty (no ratio is bottleneck-free)."""
    splits = list(range(1, nodes))
    if not rng.feasible:
        return splits
    ratio = {p: p / (nodes - p) for p in splits}
    inside = [p for p in splits if rng.contains(ratio[p])]
    below = [p for p in splits if ratio[p] < rng.lower]
    above = [p for p in splits if ratio[p] > rng.upper]
    return sorted(inside + ([max(below)] if below else []) + ([min(above)] if above else []))


class _Search:
    """The bookkeeping of one :func:`advise` call: what has been evaluated and which is best."""

    def __init__(self, config: AdvisorConfig, ev: Evaluator):
        self.config, self.ev = config, ev
        self.order = {c: i for i, c in enumerate(config.space())}
        self.seen: list[Choice] = []
        self.stages: dict[str, list[Choice]] = {}

    def run(self, stage: str, choices: Sequence[Choice]) -> None:
        new = [c for c in dict.fromkeys(choices) if c not in self.seen]
        if not new:
            return
        if self.ev.log:
            self.ev.log(f"  {stage}: {len(new)} configuration{'s' if len(new) > 1 else ''}")
        self.ev.evaluate(new)
        self.seen.extend(new)
        self.stages.setdefault(stage, []).extend(new)

    def key(self, c: Choice) -> tuple:
        """Sort key, higher is better: the score, then the earlier configuration of the space."""
        return self.ev.score(self.ev.values[(c, 0)]), -self.order.get(c, len(self.order))

    def best(self, choices: Sequence[Choice] | None = None) -> Choice:
        return max(self.seen if choices is None else choices, key=self.key)

    def walk(self, stage: str, start: Choice, step: int) -> Choice:
        """Move the split by ``step`` nodes at a time from ``start`` while the objective improves."""
        cur = start
        n = self.config.nodes
        while 1 <= cur.p + step <= n - 1:
            nxt = cur.with_split(cur.p + step, n)
            self.run(stage, [nxt])
            if self.key(nxt) <= self.key(cur):
                break
            cur = nxt
        return cur


def advise(config: AdvisorConfig, cache: RunCache | None = None, log: Log | None = print) -> Advice:
    """Recommend a configuration for ``config`` (module docstring: the search's five steps).

    Raises:
      ConfigError: no configuration of the space can hold the workload (the reason of the first).
    """
    cache = RunCache(max_entries=1 << 16) if cache is None else cache
    ev = Evaluator(config, cache, log)
    s = _Search(config, ev)
    n = config.nodes
    rng = analysis.pd_range_for_hardware(config.sim.hardware)
    kept = _prune(n, rng) if config.prune else list(range(1, n))
    base = config.base_choice
    if log:
        log(f"advising {config.name or config.sim.model}: {n} nodes, {config.workload.label}, objective "
            f"{config.objective} ({config.variant}); Eq. 9 range P/D in [{rng.lower:.3g}, {rng.upper:.3g}], splits "
            f"kept {', '.join(f'{p}P{n - p}D' for p in kept)} of {n - 1}")
    # 1-2: P:D, coarse then fine, at the knobs' first values
    m = min(config.coarse_points, len(kept))
    idx = sorted({round(i * (len(kept) - 1) / (m - 1)) for i in range(m)}) if m > 1 else [0]
    at = {i: base.with_split(kept[i], n) for i in range(len(kept))}
    s.run("pd_coarse", [at[i] for i in idx])
    done = set(idx)
    while True:
        b = max(done, key=lambda i: s.key(at[i]))
        left = max((i for i in done if i < b), default=None)
        right = min((i for i in done if i > b), default=None)
        cand = ([(left + b) // 2] if left is not None and b - left > 1 else []) + (
            [(b + right + 1) // 2] if right is not None and right - b > 1 else [])
        if not cand:
            break
        s.run("pd_fine", [at[i] for i in cand])
        done.update(cand)
    cur = at[max(done, key=lambda i: s.key(at[i]))]
    if config.prune and rng.feasible:
        if cur.p == kept[0] and cur.p / cur.d < rng.lower:
            cur = s.walk("pd_edge", cur, -1)
        elif cur.p == kept[-1] and cur.p / cur.d > rng.upper:
            cur = s.walk("pd_edge", cur, +1)
    if not ev.values[(cur, 0)].feasible:  # nothing evaluated fits: try every split before giving up
        s.run("pd_fine", [base.with_split(p, n) for p in range(1, n)])
        cur = s.best()
    if not ev.values[(cur, 0)].feasible:
        raise ConfigError("nodes", f"no configuration of {n} nodes holds the workload: "
                          f"{ev.values[(cur, 0)].reason}")
    # 3: the secondary knobs at the best split
    base_knobs = (cur.buffer_gb, (cur.alpha_s, cur.beta_s), cur.compute_quota_s)
    dims = [config.buffer_gb, config.alpha_beta, config.compute_quota_s]
    alternatives: list[list[Choice]] = []
    for d, values in enumerate(dims):
        row = []
        for v in values:
            k = list(base_knobs)
            k[d] = v
            row.append(cur.with_knobs(*k))
        alternatives.append(row)
    s.run("knobs", [c for row in alternatives for c in row])
    best_k = [s.best(row) for row in alternatives]
    combo = cur.with_knobs(best_k[0].buffer_gb, (best_k[1].alpha_s, best_k[1].beta_s), best_k[2].compute_quota_s)
    s.run("knobs", [combo])
    chosen = s.best([c for row in alternatives for c in row] + [combo, cur])
    # 4: P:D again with the chosen knobs
    if chosen != cur:
        s.run("pd_again", [chosen.with_split(chosen.p + step, n) for step in (-1, 1) if 1 <= chosen.p + step <= n - 1])
        up, down = (chosen.with_split(chosen.p + st, n) for st in (1, -1))
        for nxt, step in ((up, 1), (down, -1)):
            if nxt in s.seen and s.key(nxt) > s.key(chosen):
                chosen = s.walk("pd_again", nxt, step)
                break
    best = s.best()
    search_runs = ev.runs
    # 5: the recommendation's interval over seeds
    # an offline trace is the same run for every seed (only generated workloads and arrivals vary)
    seeds = config.seeds if config.maximise or config.workload.source == "synthetic" else 1
    per_seed = [ev.evaluate([best], seed=r)[0].objective for r in range(seeds)]
    ranked = sorted(s.seen, key=s.key, reverse=True)
    runners = [ev.values[(c, 0)] for c in ranked[1:4] if ev.values[(c, 0)].feasible]
    e = ev.values[(best, 0)]
    util = ev.utilization(e)
    known = _known(util)
    binding = max(known, key=known.get) if known else ""
    why = _why(config, s, best, util, binding, e)
    if log:
        log(f"  recommended {best.label}: {config.objective} {estimate(per_seed).mean:.4g} {config.unit}; "
            f"binding: {binding}; {ev.runs} simulated runs")
    return Advice(config, e, per_seed, runners, [ev.values[(c, 0)] for c in s.seen], s.stages, rng, kept, util,
                  binding, why, ev.runs, search_runs)


def _known(util: dict) -> dict[str, float]:
    """The defined shares of ``util``, in :data:`RESOURCES` order (the first of equal shares wins)."""
    return {r: float(util[r]) for r in RESOURCES if util.get(r) is not None and util[r] == util[r]}


def _why(config: AdvisorConfig, s: _Search, best: Choice, util: dict, binding: str, e: Evaluation) -> str:
    """One paragraph: the binding resource, the next one, and what a node more on either side did."""
    util = _known(util)
    if not util:
        return ""
    ranked = sorted(util, key=lambda r: -util[r])
    text = (f"{_RESOURCE_NAMES[binding]} binds: its busiest unit is busy {util[binding]:.0%} of the run"
            + (f" (next: {_RESOURCE_NAMES[ranked[1]]}, {util[ranked[1]]:.0%})" if len(ranked) > 1 else "") + ".")
    n, obj = config.nodes, e.objective
    for step, side in ((1, "prefill"), (-1, "decode")):
        other = best.with_split(best.p + step, n)
        if (other, 0) in s.ev.values and 1 <= other.p <= n - 1:
            o = s.ev.values[(other, 0)]
            change = f"{(o.objective / obj - 1):+.1%}" if o.feasible and obj else "infeasible"
            text += f" One node more for {side} ({other.cluster}): {config.objective} {change}."
    if e.limit:
        text += f" Above the max APS the SLO's {e.limit.upper()} bound breaks first."
    elif config.maximise and not e.bracketed:
        text += " No rate up to the search's max_aps missed the SLO: the max APS is a lower bound."
    return text


def exhaustive(config: AdvisorConfig, cache: RunCache | None = None, log: Log | None = None
               ) -> tuple[Evaluator, Evaluation]:
    """Every configuration of ``config.space()`` on the first seed, in one batch: the evaluator
    (its ``values`` and ``runs``) and the best evaluation (ties: the earlier configuration)."""
    cache = RunCache(max_entries=1 << 16) if cache is None else cache
    ev = Evaluator(config, cache, log)
    space = config.space()
    evs = ev.evaluate(space)
    best = max(zip(evs, range(len(space))), key=lambda t: (ev.score(t[0]), -t[1]))[0]
    return ev, best


def regret(config: AdvisorConfig, chosen: float, best: float) -> float:
    """Relative gap of the ``chosen`` objective to the ``best`` one (0 = as good; JCT: chosen /
    best - 1; max APS: 1 - chosen / best); NaN when the best is not finite and positive."""
    if not (math.isfinite(best) and best > 0):
        return float("nan")
    return (1.0 - chosen / best) if config.maximise else (chosen / best - 1.0)
