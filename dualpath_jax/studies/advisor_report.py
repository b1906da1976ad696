"""The P/D advisor's outputs, its validation against an exhaustive sweep, and its config files.

* :func:`write_advice`: ``advise.md/.csv`` (the recommendation with its 95% interval and the
  runners-up), ``advise_runs.md/.csv``, ``advise.png`` (the objective over P/D) and ``advise.json``.
* :func:`validate`: :func:`~.advisor.advise` and :func:`~.advisor.exhaustive` on each case:
  ``advisor_regret`` and ``advisor_run_fraction`` (the :mod:`.advisor` docstring says how they count).
* :func:`advisor_config`, :func:`validation_cases`: ``configs/advise.py`` into
  :class:`~.advisor_runs.AdvisorConfig`; :func:`advisor_sim_dict`, :func:`hardware_dict`: the
  blocks such a file holds.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from dualpath_jax.config import ConfigError, from_mapping
from dualpath_jax.metrics import writers
from dualpath_jax.metrics.latency import SLO
from dualpath_jax.sched import ClusterScheduler, scheduler_name
from dualpath_jax.studies.advisor import Advice, advise, exhaustive, regret
from dualpath_jax.studies.advisor_runs import AdvisorConfig, Evaluation, Evaluator
from dualpath_jax.studies.common import OnlineWindow, WorkloadSpec, _merge, as_dict
from dualpath_jax.studies.config import SearchConfig
from dualpath_jax.studies.plots import plot_panels
from dualpath_jax.studies.runs import Log, RunCache
from dualpath_jax.studies.seeds import caption, put

__all__ = ["write_advice", "validate", "advisor_config", "validation_cases", "advisor_sim_dict", "hardware_dict",
           "describe_advisor_config"]


def validate(cases: Sequence[AdvisorConfig], workdir: Path, cache: RunCache | None = None,
             log: Log = print) -> dict:
    """:func:`~.advisor.advise` and :func:`~.advisor.exhaustive` on each case; writes each case's outputs into
    ``workdir/<case name>/`` (:func:`write_advice`, with the sweep) and ``validate.md/.csv``.
    Returns per case ``<name>_regret``, ``<name>_run_fraction`` (advisor runs over the sweep's,
    both with the recommendation's extra seeds), ``<name>_search_run_fraction`` (without them),
    and over the cases the worst: ``advisor_regret``, ``advisor_run_fraction``,
    ``advisor_search_run_fraction``."""
    workdir = Path(workdir)
    cache = RunCache(max_entries=1 << 16) if cache is None else cache
    named: dict = {}
    rows = []
    for case in cases:
        advice = advise(case, cache, log)
        log(f"  exhaustive sweep of {len(case.space())} configurations")
        sweep, best = exhaustive(case, cache)
        mine = sweep.values[(advice.best.choice, 0)]
        g = regret(case, mine.objective, best.objective)
        extra = advice.runs - advice.search_runs
        fraction = advice.runs / (sweep.runs + extra)
        search_fraction = advice.search_runs / sweep.runs
        named[f"{case.name}_regret"] = g
        named[f"{case.name}_run_fraction"] = fraction
        named[f"{case.name}_search_run_fraction"] = search_fraction
        rows.append({"case": case.name, "model": case.sim.model, "nodes": case.nodes,
                     "workload": case.workload.label, "objective": case.objective,
                     "advisor_choice": advice.best.choice.label, "advisor_value": mine.objective,
                     "sweep_best": best.choice.label, "sweep_value": best.objective, "regret": g,
                     "advisor_runs": advice.runs, "advisor_search_runs": advice.search_runs,
                     "sweep_runs": sweep.runs, "space": len(case.space()), "run_fraction": fraction,
                     "search_run_fraction": search_fraction})
        write_advice(workdir / case.name, advice, sweep=sweep)
        log(f"  {case.name}: advisor {advice.best.choice.label} = {mine.objective:.4g} {case.unit}, sweep best "
            f"{best.choice.label} = {best.objective:.4g}; regret {g:.3f}; runs {advice.runs} vs "
            f"{sweep.runs} + {extra} ({fraction:.3f})")
    writers.write_table(workdir / "validate", rows)
    finite = [r["regret"] for r in rows if r["regret"] == r["regret"]]
    named["advisor_regret"] = max(finite) if finite else float("nan")
    named["advisor_run_fraction"] = max(r["run_fraction"] for r in rows)
    named["advisor_search_run_fraction"] = max(r["search_run_fraction"] for r in rows)
    writers.write_json(workdir / "validate.json", {"rows": rows})
    return named


# ---- output ----------------------------------------------------------------------------------------
def _row(e: Evaluation, rank: str) -> dict:
    c = e.choice
    return {"rank": rank, "cluster": c.cluster, "p_over_d": c.p / c.d, "buffer_gb": c.buffer_gb, "alpha_s": c.alpha_s,
            "beta_s": c.beta_s, "compute_quota_s": c.compute_quota_s,
            "objective": e.objective if e.feasible else float("nan"), "feasible": e.feasible, "runs": e.runs}


def write_advice(workdir: Path, advice: Advice, *, sweep: Evaluator | None = None) -> dict:
    """``advise.json`` (every evaluation, the stages, the interval, the utilization),
    ``advise.md/.csv`` (the recommendation and the runners-up), ``advise_runs.md/.csv`` (every
    evaluated configuration) and ``advise.png`` (the objective over P/D, Eq. 9's range dotted; with
    ``sweep`` also the exhaustive sweep's best per split). Returns the ``name: value`` figures:
    ``recommended_*``, ``predicted_<objective>`` (mean over seeds, ``_ci95`` / ``_lo`` / ``_hi``),
    ``runners_up_within_ci`` (runners-up closer to the recommendation on the first seed than the
    interval's half width), ``binding_resource``, ``advisor_runs``, ``eq9_lower`` / ``eq9_upper``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg, best = advice.config, advice.best
    seeds = len(advice.per_seed)
    named: dict = {"recommended_cluster": best.choice.cluster, "recommended_p": best.choice.p,
                   "recommended_d": best.choice.d, "recommended_buffer_gb": best.choice.buffer_gb,
                   "recommended_alpha_s": best.choice.alpha_s, "recommended_beta_s": best.choice.beta_s,
                   "recommended_compute_quota_s": best.choice.compute_quota_s}
    est = put(named, f"predicted_{cfg.objective}" + ("_s" if cfg.objective == "jct" else ""), advice.per_seed)
    # runners-up whose first-seed objective differs from the recommendation's by less than its
    # interval's half width: the seeds' spread cannot tell them apart
    named["runners_up_within_ci"] = sum(abs(e.objective - best.objective) < est.half for e in advice.runners_up
                                        if est.half == est.half)
    named.update({"binding_resource": advice.binding, "advisor_runs": advice.runs,
                  "eq9_lower": advice.eq9.lower, "eq9_upper": advice.eq9.upper})
    top = [dict(_row(best, "recommended"), objective=est.mean, objective_ci95=est.half, seeds=seeds)]
    top += [dict(_row(e, f"runner-up {i + 1}"), objective_ci95=float("nan"), seeds=1)
            for i, e in enumerate(advice.runners_up)]
    writers.write_table(workdir / "advise", top)
    by_choice = {e.choice: e for e in advice.evaluated}
    every = [dict(_row(by_choice[c], stage), stage=stage) for stage, cs in advice.stages.items() for c in cs]
    writers.write_table(workdir / "advise_runs", every)
    _plot(workdir / "advise.png", advice, sweep)
    writers.write_json(workdir / "advise.json", {
        "recommended": best.choice.label, "scheduler": scheduler_name(cfg.scheduler),
        "per_seed": advice.per_seed, "estimate": dataclasses.asdict(est),
        "caption": caption(seeds), "utilization": advice.utilization, "binding": advice.binding, "why": advice.why,
        "eq9": advice.eq9, "kept_splits": advice.kept, "runs": advice.runs, "search_runs": advice.search_runs,
        "evaluated": [dict(_row(e, ""), reason=e.reason, limit=e.limit) for e in advice.evaluated],
        "sweep": ([dict(_row(e, ""), reason=e.reason) for (c, r), e in sorted(sweep.values.items()) if r == 0]
                  if sweep is not None else None)})
    return named


def _plot(path: Path, advice: Advice, sweep: Evaluator | None) -> None:
    cfg, n = advice.config, advice.config.nodes
    base_knobs = (cfg.buffer_gb[0], cfg.alpha_beta[0], cfg.compute_quota_s[0])
    chosen = advice.best.choice
    chosen_knobs = (chosen.buffer_gb, (chosen.alpha_s, chosen.beta_s), chosen.compute_quota_s)
    splits = list(range(1, n))
    x = [p / (n - p) for p in splits]

    def line(values: dict, knobs) -> list[float]:
        out = []
        for p in splits:
            c = cfg.base_choice.with_split(p, n).with_knobs(*knobs)
            e = values.get((c, 0))
            out.append(e.objective if e is not None and e.feasible else float("nan"))
        return out

    values = {(e.choice, 0): e for e in advice.evaluated}
    series = {"advisor, first knob values": line(values, base_knobs)}
    if chosen_knobs != base_knobs:
        series["advisor, chosen knobs"] = line(values, chosen_knobs)
    if sweep is not None:
        best_per_split = []
        for p in splits:
            vals = [e.objective for (c, r), e in sweep.values.items() if r == 0 and c.p == p and e.feasible]
            best_per_split.append((max(vals) if cfg.maximise else min(vals)) if vals else float("nan"))
        series["exhaustive sweep, best knobs"] = best_per_split
    series["recommended"] = [advice.best.objective if p == chosen.p else float("nan") for p in splits]
    rng = advice.eq9
    vl = [v for v in (rng.lower, rng.upper) if math.isfinite(v) and v > 0] if rng.feasible else []
    plot_panels(path, [{"title": f"{cfg.name or cfg.sim.model}: {n} nodes, {cfg.workload.label}", "x": x,
                        "series": series, "xlabel": "P/D", "ylabel": "JCT (s)" if cfg.objective == "jct" else
                        "max APS under the SLO", "logx": True, "vlines": vl}],
                ncols=1, title=textwrap.fill(f"recommended {chosen.label} (dotted: Eq. 9 range)", 52))


# ---- config files ----------------------------------------------------------------------------------
_SET_BY_ADVISOR = ("model", "hardware", "prefill_nodes", "decode_nodes", "alpha_s", "beta_s", "compute_quota_s",
                   "loading", "prefill", "policy")
"""SimConfig fields the advisor sets (a config's ``sim`` block leaves them out)."""


def advisor_sim_dict(**fields):
    """A config file's ``sim`` block for the advisor: every :class:`SimConfig` field the advisor
    does not set (:func:`dualpath_jax.sim.config.sim_config_dict` without ``model``, ``hardware``,
    the cluster, the knobs it searches and the switches), updated with ``fields``."""
    from dualpath_jax.sim.config import sim_config_dict

    sim = sim_config_dict()
    for key in _SET_BY_ADVISOR:
        del sim[key]
    for key, value in fields.items():
        if key not in sim:
            raise ConfigError(f"sim.{key}", f"is not a field the advisor leaves to the config; known: {sorted(sim)}")
        sim[key] = value
    return sim


def hardware_dict(gpu: str = "h800", **overrides):
    """A config file's ``hardware`` block: ``gpu`` (a :mod:`dualpath_jax.sim.catalog` key) and
    every other :class:`~dualpath_jax.sim.hardware.HardwareConfig` field as an override, None
    meaning the catalog's value for the GPU (or the field's default); ``dram_buffer_bytes`` is
    set by the config's ``buffer_gb`` for each run."""
    import ml_collections
    from ml_collections import config_dict

    from dualpath_jax.sim.hardware import HardwareConfig

    out = {"gpu": gpu}
    for f in dataclasses.fields(HardwareConfig):
        if f.name != "gpu":
            out[f.name] = config_dict.placeholder(int if f.name in ("gpus_per_node", "snics_per_node") else float)
    for key, value in overrides.items():
        if key not in out:
            raise ConfigError(f"hardware.{key}", f"unknown field for HardwareConfig; known: {sorted(out)}")
        out[key] = value
    return ml_collections.ConfigDict(out)


def advisor_config(data, *, name: str = "") -> AdvisorConfig:
    """The :class:`AdvisorConfig` of a config file's fields (``configs/advise.py``; ``cases`` left out).

    Raises:
      ConfigError: naming the field (``hardware.<field>``, ``sim.<field>``, ``workload.<field>``, ...).
    """
    from dualpath_jax.sim import catalog
    from dualpath_jax.studies.common import sim_config

    d = as_dict(data)
    known = {"model", "hardware", "sim", "nodes", "workload", "objective", "variant", "scheduler", "seed",
             "buffer_gb", "alpha_beta", "compute_quota_s", "prune", "coarse_points", "seeds", "slo", "online",
             "aps_search", "cases", "validate"}
    for key in d:
        if key not in known:
            raise ConfigError(key, f"unknown advisor field; known: {sorted(known)}")
    hw_fields = dict(d.get("hardware") or {})
    gpu = hw_fields.pop("gpu", "h800")
    hw = catalog.hardware_for(gpu, **{k: v for k, v in hw_fields.items() if v is not None})
    try:
        sim = sim_config({"model": d.get("model", "deepseek-v3.2"), **(d.get("sim") or {}),
                          "hardware": dataclasses.asdict(hw)})
    except ConfigError as e:  # the model is a top-level field of this config, not sim.model
        if e.field != "sim.model":
            raise
        raise ConfigError("model", str(e).split(": ", 1)[-1]) from None
    wl = from_mapping(WorkloadSpec, {**(d.get("workload") or {}), "seed": int(d.get("seed", 0))}, prefix="workload.")
    online = dict(d.get("online") or {})
    initial_aps = online.pop("initial_aps", 1.0)
    window = from_mapping(OnlineWindow, online, prefix="online.")
    return AdvisorConfig(
        sim=sim, nodes=d.get("nodes", 6), workload=wl, objective=d.get("objective", "jct"),
        variant=d.get("variant", "dualpath"), scheduler=d.get("scheduler") or ClusterScheduler,
        buffer_gb=tuple(d.get("buffer_gb", (80.0,))),
        alpha_beta=tuple(tuple(p) for p in d.get("alpha_beta", ((3, 5),))),
        compute_quota_s=tuple(d.get("compute_quota_s", (0.3,))), prune=bool(d.get("prune", True)),
        coarse_points=d.get("coarse_points", 4), seeds=d.get("seeds", 3),
        slo=from_mapping(SLO, d.get("slo") or {}, prefix="slo."), window=window, initial_aps=initial_aps,
        aps_search=_aps_search(d.get("aps_search") or {}), name=name)


def _aps_search(data) -> SearchConfig:
    """The advisor's ``aps_search`` block; its errors name ``aps_search.<field>`` (a
    :class:`SearchConfig` names its fields ``search.<field>``, as the studies hold it)."""
    try:
        return from_mapping(SearchConfig, data, prefix="aps_search.")
    except ConfigError as e:
        if e.field.startswith("search."):
            raise ConfigError("aps_search." + e.field[len("search."):], e.message) from None
        raise


def validation_cases(data) -> list[AdvisorConfig]:
    """One :class:`AdvisorConfig` per entry of the config's ``cases`` (each entry's fields merged
    over the config's own), for each name in ``validate`` (default: every entry, in order).

    Raises:
      ConfigError: naming ``cases.<name>.<field>``.
    """
    d = as_dict(data)
    cases = d.get("cases") or {}
    order = list(d.get("validate") or cases)
    base = {k: v for k, v in d.items() if k not in ("cases", "validate")}
    out = []
    for name in order:
        if name not in cases:
            raise ConfigError("validate", f"names no case {name!r}; known: {sorted(cases)}")
        try:
            out.append(advisor_config(_merge(base, cases[name]), name=name))
        except ConfigError as e:
            raise ConfigError(f"cases.{name}.{e.field}", str(e).split(": ", 1)[-1]) from None
    return out


_DOCS = {
    "model": "a model preset (dualpath_jax.model.preset_names()) or a Hugging Face config.json path",
    "hardware.gpu": "the GPU of every node: a dualpath_jax.sim.catalog key (h800, h100, h200, b200, a100)",
    "hardware.*": "a HardwareConfig override (None: the catalog's value for the GPU, or the field's default)",
    "seed": "the workload's generator seed (seed r of the interval: seed + r)",
    "online.initial_aps": "the max-APS search's first rate (agents/s)",
    "cases": "validation workloads: each entry's fields merged over this config's",
    "validate": "case names: run the advisor and an exhaustive sweep of the same space on each",
}


def describe_advisor_config(config) -> str:
    """Every field of ``configs/advise.py`` (after overrides), one per line with its value, type,
    default and meaning (:func:`dualpath_jax.config.describe_config`).

    Raises:
      ConfigError: naming the field, for a config :func:`advisor_config` rejects.
    """
    from dualpath_jax.config import describe_config
    from dualpath_jax.sim.config import SimConfig
    from dualpath_jax.sim.hardware import HardwareConfig

    advisor_config(config)
    schema = [("", AdvisorConfig), ("sim.", SimConfig), ("hardware.", HardwareConfig), ("workload.", WorkloadSpec),
              ("slo.", SLO), ("online.", OnlineWindow), ("aps_search.", SearchConfig)]
    return describe_config(config, schema, docs=_DOCS,
                           title="# P/D advisor (AdvisorConfig); set a field with --config.<name>=<value>")
