"""One-at-a-time sensitivity of the headline figures to the simulator's assumed quantities.

The paper leaves some quantities unstated (PAPER.md 8.6: GPU SKU, HBM capacity and bandwidth,
kernel throughput, the attention time model, HBM reservations, how Basic batches, the groups'
fetch period, how alpha and beta were measured); the simulator fills them with datasheet values
or assumptions (``experiments/results/paper_quick/REPORT.md``, "Calibration inputs and their
sources"). This study moves each such quantity alone by ``-change`` and ``+change`` (a factor
``1 -/+ change`` on its value, 25% by default) and reruns the headline figures:

* the ablation's speedups over Basic of each step (+Layerwise, +DPL, +Sched = DualPath; paper
  Fig. 12 right, :func:`.ablation.ablation`);
* Fig. 7's DualPath-over-Basic speedup of one cell (:func:`.offline.fig7`; the default config:
  DS 660B 2P4D, MAL 64K, 1,024 agents);
* the online max-APS gain of DualPath over Basic (paper Fig. 10/11, :func:`.online.online`).

A quantity's values: ``low = base x (1 - change)``, ``high = base x (1 + change)``, clipped to the
quantity's bound (a share such as ``eff_memory`` 0.9 goes up to 1.0 at most: the applied factor,
1.11, is what the tables show), rounded for an integer. A quantity whose default is not a finite
number gets a finite base (``hardware.peak_flops``: None, the catalog peak of the model's compute
dtype; ``hardware.storage_bytes_per_s``: inf, one node's SNIC rate). Each case (the base, then
every quantity at low and at high) runs the studies of :class:`SensitivityConfig` through
:func:`.registry.run_study` with its own :class:`~.runs.RunCache`. All cases advance together
(:func:`.sweep.lockstep`): each step's runs of every case form one batch through the given
:class:`~.sweep.Sweep` (in this process, or in parallel on Ray), so the perturbations run side by
side. A case whose configuration the simulator rejects (e.g. HBM too small for the weights) is
reported as infeasible, with the error, and the others go on.

For every headline ``h`` and quantity: ``rel_low = h(low) / h(base) - 1``, ``rel_high`` likewise,
and the swing ``max(|rel_low|, |rel_high|)`` (a side that failed is left out). The tornado plot
draws both relative changes per quantity, the largest swing on top (:func:`tornado_order`).

The plan (quantities, headlines, config, perturbations, cases, relative changes) lives in
:mod:`dualpath_jax.studies.sensitivity_plan` and is re-exported here; this module runs the cases
and writes the report.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dualpath_jax.metrics import writers
from dualpath_jax.sched import scheduler_name
from dualpath_jax.studies.config import AblationStudyConfig, Fig7StudyConfig, OnlineStudyConfig, StudyConfig
from dualpath_jax.studies.registry import run_study
from dualpath_jax.studies.runs import Log, OnlineRun, RunCache
from dualpath_jax.studies.sensitivity_plan import (DEFAULT_QUANTITIES, LEFT_OUT, QUANTITIES, SECTIONS, Case,
                                                   Headline, Quantity, SensitivityConfig, headline_sims, headlines,
                                                   is_finite, perturb_sim, perturb_study, plan_cases,
                                                   relative_changes, sensitivity_config, tornado_order)
from dualpath_jax.studies.sweep import lockstep

__all__ = ["Quantity", "QUANTITIES", "LEFT_OUT", "DEFAULT_QUANTITIES", "Headline", "SensitivityConfig", "Case",
           "sensitivity_config", "headlines", "perturb_sim", "perturb_study", "plan_cases", "relative_changes",
           "tornado_order", "plot_tornado", "run_sensitivity", "RunFailed", "SECTIONS"]


# ---- running the cases side by side ---------------------------------------------------------------
class RunFailed(RuntimeError):
    """A simulated run of a case raised (its message: the run's error line)."""


@dataclasses.dataclass(frozen=True)
class _Failure:
    message: str


def _guarded(task: tuple) -> object:
    """``fn(x)`` of ``task = (fn, x)``, or a :class:`_Failure` with its error line (a picklable task)."""
    fn, x = task
    try:
        return fn(x)
    except Exception as e:  # noqa: BLE001 (a case's run that fails fails that case only)
        return _Failure(f"{type(e).__name__}: {' '.join(str(e).split())}")


class _Batched:
    """A case's sweep: its runs wait for the batch of every case's runs (:func:`.sweep.lockstep`).

    While a case waits it gives up ``gate``, which a case holds while its study code runs, so that
    the studies' table and plot writing never runs in two threads at once."""

    def __init__(self, request: Callable, gate: threading.Lock, abort: list):
        self.request, self.gate, self.abort = request, gate, abort

    def map(self, fn, items, *, desc: str = "runs", on_result: Callable | None = None) -> list:
        """:meth:`.sweep.Sweep.map` (``on_result`` called for each value once the batch is back)."""
        if self.abort:
            raise RunFailed(f"not run: {self.abort[0]}")
        if not items:
            return []
        self.gate.release()
        try:
            out = self.request((fn, tuple(items), desc))
        finally:
            self.gate.acquire()
        for v in out:
            if isinstance(v, _Failure):
                raise RunFailed(v.message)
        if on_result is not None:
            for i, v in enumerate(out):
                on_result(i, v)
        return list(out)


class _FigureCache(RunCache):
    """A :class:`RunCache` that keeps an online run's figures in memory but not its request table
    (each search asks for a rate's table once, from the fresh run): memory stays bounded with many
    cases side by side. Its run store keeps the whole run (a resumed search asks for the table)."""

    def _in_memory(self, value):
        if isinstance(value, OnlineRun) and value.table is not None:
            return dataclasses.replace(value, table=None)
        return value


def _case_log(path: Path) -> Log:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")

    def log(line: str) -> None:
        with path.open("a") as f:
            f.write(line + "\n")
    return log


def _run_cases(cases: Sequence[Case], root: Path, sweep, log: Log, store=None) -> dict[str, dict]:
    """Run every distinct case (identical configs run once) side by side; returns per case label
    ``{study: named values or {"error": line}}``. A failure of the base case re-raises."""
    distinct: dict[tuple, Case] = {}
    for c in cases:
        if not c.error:
            distinct.setdefault(c.studies, c)
    todo = list(distinct.values())
    gate = threading.Lock()
    abort: list[str] = []  # set when the base case fails: the other cases stop at their next batch
    done = [0]
    t0 = time.perf_counter()

    def task(case: Case):
        def search(request):
            with gate:
                cache = _FigureCache(max_entries=64, sweep=_Batched(request, gate, abort), store=store)
                case_log = _case_log(root / case.label / "log.txt")
                out: dict[str, dict] = {}
                for study in case.studies:
                    name = type(study).study
                    try:
                        out[name] = run_study(study, root / case.label / name, log=case_log, cache=cache)
                    except Exception as e:  # noqa: BLE001 (the case is reported infeasible; the others go on)
                        if case.quantity is None:
                            abort.append(f"the base case failed ({type(e).__name__})")
                            raise
                        out[name] = {"error": str(e) if isinstance(e, RunFailed)
                                     else f"{type(e).__name__}: {' '.join(str(e).split())}"}
                        case_log(f"{name}: {out[name]['error']}")
                done[0] += 1
                log(f"[{done[0]}/{len(todo)}] {case.label} done ({time.perf_counter() - t0:.0f} s)")
                return out
        return search

    batches = [0]

    def evaluate(keys: list) -> list:
        tasks = list(dict.fromkeys((fn, x) for fn, items, _ in keys for x in items))
        batches[0] += 1
        descs = sorted({d for _, _, d in keys})
        log(f"batch {batches[0]}: {len(tasks)} {', '.join(descs)} of {len(keys)} studies "
            f"({time.perf_counter() - t0:.0f} s)")
        results = sweep.map(_guarded, tasks, desc=f"batch {batches[0]}") if sweep is not None \
            else [_guarded(t) for t in tasks]
        value = dict(zip(tasks, results))
        return [[value[(fn, x)] for x in items] for fn, items, _ in keys]

    outs = lockstep([task(c) for c in todo], evaluate)
    by_config = {c.studies: o for c, o in zip(todo, outs)}
    return {c.label: ({} if c.error else by_config[c.studies]) for c in cases}


# ---- outputs ------------------------------------------------------------------------------------------
def _fmt_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, ".4g")
    return str(v)


def _values(q: Quantity, studies: Sequence[StudyConfig], change: float) -> dict:
    """Base, low and high values of ``q`` in ``studies``' run configs (distinct ones joined by
    ``/``) and the factors applied."""
    sims = [s for st in studies for s in headline_sims(st)]
    base = list(dict.fromkeys(q.base(s) for s in sims))
    low = list(dict.fromkeys(q.scaled(s, 1.0 - change) for s in sims))
    high = list(dict.fromkeys(q.scaled(s, 1.0 + change) for s in sims))
    fl = list(dict.fromkeys(round(q.scaled(s, 1.0 - change) / q.base(s), 6) for s in sims))
    fh = list(dict.fromkeys(round(q.scaled(s, 1.0 + change) / q.base(s), 6) for s in sims))
    one = lambda xs: xs[0] if len(xs) == 1 else " / ".join(_fmt_value(x) for x in xs)  # noqa: E731
    return {"base_value": one(base), "low_value": one(low), "high_value": one(high),
            "low_factor": one(fl), "high_factor": one(fh)}


def _headline_value(results: Mapping[str, dict], h: Headline) -> tuple[float, str]:
    """``(value, note)`` of headline ``h`` in one case's results (NaN and the error when it failed)."""
    named = results.get(h.study)
    if named is None:
        return float("nan"), "not run"
    if "error" in named:
        return float("nan"), named["error"]
    v = named.get(h.key)
    note = ""
    if h.study == "online" and named.get("unbracketed_searches"):
        note = f"{named['unbracketed_searches']} unbracketed max-APS searches"
    return (float(v) if is_finite(v) else float("nan")), note


def _case_value(case: Case, results: Mapping[str, dict], h: Headline) -> tuple[float, str]:
    """``(value, note)`` of headline ``h`` in ``case`` (NaN and why when its configs or runs failed)."""
    if case.error:
        return float("nan"), case.error
    return _headline_value(results[case.label], h)


def plot_tornado(path, rows: Sequence[Mapping], *, title: str, change: float) -> Path:
    """A PNG tornado: per quantity (``rows`` in :func:`tornado_order`, largest swing on top) a bar
    from 0 to ``rel_low`` and one to ``rel_high`` (relative change of the headline, %), labelled
    with the factors applied; a failed side is marked ``failed``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(tornado_order(rows))
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(8.0, 0.42 * n + 1.6), dpi=110)
    try:
        y = list(range(n))[::-1]  # the first row on top
        for yi, r in zip(y, rows):
            for side, color, label in (("low", "tab:blue", f"-{change:.0%}"), ("high", "tab:red", f"+{change:.0%}")):
                v = r.get(f"rel_{side}")
                if v is None or not is_finite(v):
                    ax.text(0, yi + (0.18 if side == "high" else -0.18), f" {side}: failed", va="center",
                            fontsize=7, color=color)
                    continue
                ax.barh(yi + (0.18 if side == "high" else -0.18), 100.0 * v, height=0.34, color=color,
                        label=label if yi == y[0] else None)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r['quantity']} (x{_fmt_value(r['low_factor'])} / x{_fmt_value(r['high_factor'])})"
                            for r in rows], fontsize=8)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("relative change of the headline (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def run_sensitivity(config: SensitivityConfig, workdir: Path | str, *, log: Log = print, sweep=None,
                    store=None) -> dict:
    """Run every case of ``config`` (:func:`plan_cases`) and write the tables and plots.

    Args:
      config: the quantities, the change and the studies.
      workdir: output folder (created); each case's studies write into ``runs/<case>/<study>/``
        with the case's log in ``runs/<case>/log.txt``.
      log: progress lines (batches, finished cases).
      sweep: where the runs execute (:class:`~.sweep.Sweep`; None: in this process).
      store: a :class:`~.runstore.RunStore` every case's runs are kept in and read back from
        (``--resume``); None: memory only.

    Writes ``sensitivity.json`` (quantities with why and values, every case's headline values and
    errors, the left-out fields), ``sensitivity.md`` (one table per headline, by swing, and the
    quantities with their reasons), ``sensitivity.csv`` (one row per headline and quantity) and
    ``tornado_<headline>.png``.

    Returns:
      ``name: value`` figures per headline: its base value (``<headline>``), the largest swing
      (``max_swing_<headline>``, relative) and its quantity (``max_swing_quantity_<headline>``);
      ``cases`` (distinct configurations run) and ``failed_cases`` (case-study pairs that failed).

    Raises:
      Any error of the base case (nothing can be compared without it).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cases = plan_cases(config)
    heads = headlines(config.studies)
    distinct = len({c.studies for c in cases if not c.error})
    log(f"{len(config.quantities)} quantities x (-{config.change:.0%}, +{config.change:.0%}) + base: {len(cases)} "
        f"cases ({distinct} distinct), studies {', '.join(type(s).study for s in config.studies)}")
    results = _run_cases(cases, workdir / "runs", sweep, log, store)
    by_label = {c.label: c for c in cases}
    base_vals = {h.name: _headline_value(results["base"], h)[0] for h in heads}
    rows, quantities, errors = [], [], []
    for name in config.quantities:
        q = QUANTITIES[name]
        vals = _values(q, config.studies, config.change)
        quantities.append({"quantity": name, "label": q.label, "why": q.why, "upper": q.upper,
                           "finite_base": q.finite_base, **vals})
        low_case, high_case = by_label[f"{name}_low"], by_label[f"{name}_high"]
        for h in heads:
            hv = _values(q, [st for st in config.studies if type(st).study == h.study], config.change)
            lo, lo_note = _case_value(low_case, results, h)
            hi, hi_note = _case_value(high_case, results, h)
            rows.append({"headline": h.name, "quantity": name, **hv, "value_low": lo, "value_base": base_vals[h.name],
                         "value_high": hi, **relative_changes(base_vals[h.name], lo, hi),
                         "note_low": lo_note, "note_high": hi_note})
    for c in cases:
        if c.error:
            errors.append({"case": c.label, "study": "*", "error": c.error})
        for study, named in results[c.label].items():
            if "error" in named:
                errors.append({"case": c.label, "study": study, "error": named["error"]})
    left_out = {n: f"not selected ({QUANTITIES[n].why})" for n in QUANTITIES if n not in config.quantities}
    left_out.update(LEFT_OUT)
    named: dict = {}
    md = ["# Sensitivity of the headline figures to the simulator's assumed quantities (PAPER.md 8.6)\n",
          f"Each quantity alone at x{1 - config.change:g} and x{1 + config.change:g} of its base value (clipped to "
          f"its bound; the factors applied are shown); relative change = value / base value - 1; swing = the larger "
          f"absolute relative change. Studies: "
          + "; ".join(_describe_study(s) for s in config.studies) + ".\n"]
    for h in heads:
        mine = tornado_order([r for r in rows if r["headline"] == h.name])
        named[h.name] = base_vals[h.name]
        top = next((r for r in mine if is_finite(r["swing"])), None)
        named[f"max_swing_{h.name}"] = top["swing"] if top else float("nan")
        named[f"max_swing_quantity_{h.name}"] = top["quantity"] if top else "none"
        plot_tornado(workdir / f"tornado_{h.name}.png", mine, change=config.change,
                     title=f"{h.label}\nbase {base_vals[h.name]:.4g}; each quantity at -{config.change:.0%} / "
                           f"+{config.change:.0%} (factors applied in brackets)")
        md.append(f"\n## {h.name}: {h.label} (base {base_vals[h.name]:.4g})\n")
        if h.study == "online":
            md.append(_online_note(config))
        md.append(writers.markdown_table([{
            "quantity": r["quantity"], "base value": _fmt_value(r["base_value"]),
            "low (factor)": f"{_fmt_value(r['low_value'])} (x{_fmt_value(r['low_factor'])})",
            "high (factor)": f"{_fmt_value(r['high_value'])} (x{_fmt_value(r['high_factor'])})",
            "at low": r["value_low"], "at base": r["value_base"], "at high": r["value_high"],
            "change low": _pct(r["rel_low"]), "change high": _pct(r["rel_high"]), "swing": _pct(r["swing"], sign=False),
            "note": "; ".join(x for x in (r["note_low"] and f"low: {r['note_low']}",
                                          r["note_high"] and f"high: {r['note_high']}") if x)} for r in mine]))
    md.append("\n## Quantities\n")
    md.append(writers.markdown_table([{"quantity": q["quantity"], "label": q["label"],
                                       "base value": _fmt_value(q["base_value"]),
                                       "why an assumption": q["why"] + (f" (finite base: {q['finite_base']})"
                                                                        if q["finite_base"] else ""),
                                       "bound": _fmt_value(q["upper"])} for q in quantities]))
    md.append("\n## Left out\n")
    md.append(writers.markdown_table([{"field": k, "why": v} for k, v in left_out.items()]))
    if errors:
        md.append("\n## Failed cases\n")
        md.append(writers.markdown_table(errors))
    writers.write_table(workdir / "sensitivity", rows)  # the CSV (and a plain .md, replaced below)
    (workdir / "sensitivity.md").write_text("\n".join(md))
    writers.write_json(workdir / "sensitivity.json", {
        "change": config.change, "quantities": quantities, "headlines": [dataclasses.asdict(h) for h in heads],
        "rows": rows, "left_out": left_out, "errors": errors,
        "cases": [{"label": c.label, "quantity": c.quantity, "side": c.side, "factor": c.factor, "error": c.error,
                   "results": results[c.label]} for c in cases]})
    named["cases"] = distinct
    named["failed_cases"] = len(errors)
    return named


def _pct(x, *, sign: bool = True) -> str:
    return "" if x is None or not is_finite(x) else f"{100.0 * x:{'+' if sign else ''}.1f}%"


def _describe_study(s: StudyConfig) -> str:
    policy = scheduler_name(s.scheduler)
    return _describe_runs(s) + (f" (scheduler {policy})" if policy else "")


def _describe_runs(s: StudyConfig) -> str:
    sims = headline_sims(s)
    models = ", ".join(dict.fromkeys(f"{m.model} {m.prefill_nodes}P{m.decode_nodes}D" for m in sims))
    if isinstance(s, AblationStudyConfig):
        return (f"ablation {models}, MAL {s.mal}, {'/'.join(map(str, s.num_agents))} agents, "
                f"variants {', '.join(s.variants)}")
    if isinstance(s, Fig7StudyConfig):
        return f"Fig. 7 {models}, MAL {'/'.join(s.mals)}, {'/'.join(map(str, s.num_agents))} agents"
    if isinstance(s, OnlineStudyConfig):
        return (f"online {models}, MAL {s.workload.mal}, {', '.join(r.window.describe(s.workload) for r in s.rows)}, "
                f"max-APS search rel_tol {s.search.rel_tol:g}")
    return type(s).study


def _online_note(config: SensitivityConfig) -> str:
    online = next(s for s in config.studies if isinstance(s, OnlineStudyConfig))
    tol = online.search.rel_tol
    return (f"The max-APS search stops when its bracket is within a factor {1 + tol:g} (search.rel_tol): each max "
            f"APS, and so the gain, is resolved to about ±{100 * tol:.0f}%; smaller changes of the gain may be the "
            f"search's granularity.\n")
