"""Online studies of the paper and the scale-out table.

* :func:`online`  Fig. 10/11: TTFT, TTST, TPOT and trajectory completion time vs APS per
  system; max APS under the SLO (TTFT <= 4 s, TPOT <= 50 ms on the mean) per system.
* :func:`ttft_breakdown`  Fig. 12 left: TTFT split into scheduling, read wait, read transfer,
  prefill queue and prefill compute vs APS.
* :func:`working_set`  paper section 8.2: working set vs APS from the online runs.
* :func:`table3`  Table 3: offline JCT and online TTFT/TTST/TPOT of a small and a large cluster.

Online runs (:func:`.runs.online_run`) replay agents arriving as a Poisson process at the
APS and measure the requests issued while agents still arrive. With ``horizon_s > 0`` a
run is an open system observed for a fixed time: ``ceil(APS x horizon_s)`` agents
(:meth:`.common.OnlineWindow.workload`), measured after ``warmup_s`` (the ramp-up, about one
trajectory lifetime), so above capacity the backlog, and TTFT, grow over the window and the
max-APS search brackets the capacity. Without it a run replays a fixed
``workload.num_agents``: an agent stays until its trajectory ends, so a run never holds more than
that many agents and, as APS grows, its latency tends to the offline batch's; the search then
brackets a capacity only if that batch misses the SLO (``unbracketed_searches`` counts the
others, whose max APS is a lower bound; ``unresolved_searches`` those bracketed less tightly than
``search.rel_tol`` when ``search.max_runs`` ran out). A run meets the SLO when its TTFT does over the
measured span and over every sliding window of it (``metrics.latency.SLO``: 150 s windows, the
paper's steadiness window, or a quarter of a shorter span), so a rate whose TTFT climbs past the
bound as its backlog grows fails.

Each study takes its typed config (:mod:`.config`), the output folder, a log function and an
optional :class:`RunCache` (shared runs: the TTFT breakdown and the working set reuse the online
study's); every run uses ``config.scheduler``. Every configuration runs for ``config.seeds`` seeds
(workload seed and arrival seed offset by the seed index); figures are computed within a seed,
then reported as the mean over seeds with a 95% interval (:mod:`.seeds`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from dualpath_jax.metrics import writers
from dualpath_jax.metrics.latency import max_aps_under_slo
from dualpath_jax.sim import analysis
from dualpath_jax.studies.common import cluster_label, with_cluster
from dualpath_jax.studies.config import (OnlineRow, OnlineStudyConfig, Table3StudyConfig, TtftBreakdownStudyConfig,
                                         WorkingSetStudyConfig)
from dualpath_jax.studies.plots import plot_panels, plot_stacked
from dualpath_jax.studies.runs import TTFT_COMPONENTS, Log, RunCache, offline_runs, online_runs, ratio
from dualpath_jax.studies.seeds import (CI_SUFFIX, aggregate, arrival_seeds, caption, offline_seeds, put,
                                        seed_workloads)
from dualpath_jax.studies.seeds import write_table as write_seed_table
from dualpath_jax.studies.sweep import lockstep

__all__ = ["online", "ttft_breakdown", "working_set", "table3"]


def _curve_row(row_label: str, run, seed: int, arrival_seed: int) -> dict:
    s = run.stats
    return {"model": row_label, "variant": run.variant, "aps": run.aps, "seed": seed, "arrival_seed": arrival_seed,
            "ttft_mean_s": s["ttft_mean_s"], "ttft_p99_s": s["ttft_p99_s"], "ttst_mean_s": s["ttst_mean_s"],
            "tpot_mean_ms": s["tpot_mean_s"] * 1e3, "tpot_p99_ms": s["tpot_p99_s"] * 1e3,
            "completion_mean_s": s["completion_mean_s"], "agents": s.get("num_agents"), "requests": s["num_requests"]}


def _exact_ratio(res, other) -> float:
    """Max APS of search ``res`` over that of ``other`` (a ``MaxApsResult`` or None): nan unless
    both searches bracketed their maximum (an unbracketed one is only a bound, e.g. every rate
    tried met the SLO, and two such bounds make a meaningless ratio of 1)."""
    if other is None or not (res.bracketed and other.bracketed):
        return float("nan")
    return ratio(res.aps, other.aps)


def _lowest_failing(res) -> float:
    """The lowest rate that failed the SLO above a bracketed search's max APS (its capacity lies
    below it)."""
    return min(t.aps for t in res.trials if not t.meets_slo and t.aps > res.aps)


def _least_ratio(num, den) -> float:
    """The smallest ratio of search ``num``'s max APS over ``den``'s that the searches allow
    (``den`` bracketed; ``num``'s capacity is at least its passing rate): ``num``'s passing rate
    over ``den``'s lowest failing one."""
    return ratio(num.aps, _lowest_failing(den))


def _most_ratio(num, den) -> float:
    """The largest such ratio (both bracketed): ``num``'s lowest failing rate over ``den``'s
    passing one (NaN where that is 0)."""
    return ratio(_lowest_failing(num), den.aps)


def _seeds(config) -> tuple[list, list[int]]:
    """The workload and the arrival seed of each of ``config.seeds`` seeds (:mod:`.seeds`)."""
    return seed_workloads(config.workload, config.seeds), arrival_seeds(config.arrival_seed, config.seeds)


def _runs(config, window, base_of, keys: list[tuple], log: Log | None, cache: RunCache) -> list:
    """Online runs of ``keys`` (``(row, variant, seed index, aps)``) in one batch
    (:func:`.runs.online_runs`: memoised in ``cache``, the others through its sweep); ``window(row)``
    sizes a run and ``base_of(row)`` is its SimConfig."""
    wls, arr = _seeds(config)
    return online_runs([(base_of(row), v, window(row).workload(wls[r], a), a, arr[r], window(row).warmup_s)
                        for row, v, r, a in keys], log, scheduler_cls=config.scheduler, cache=cache)


def online(config: OnlineStudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 10/11 for each model row (``config.rows``: label, SimConfig, APS grid, the
    search's first rate and the run window) and variant, each for ``config.seeds`` seeds (seed r:
    workload seed ``workload.seed + r``, arrival seed ``arrival_seed + r``; :mod:`.seeds`). Every
    seed and variant has its own max-APS search (``metrics.latency.max_aps_under_slo`` with
    ``config.slo`` and ``config.search``); the searches advance together, each step's runs in one
    batch (:func:`.sweep.lockstep`), so they run in parallel on the cache's sweep. The curves hold
    the grid and every rate a search evaluated, each rate averaged over the seeds that ran it
    (``seeds``); runs are memoised in ``cache`` (a fresh one if None), so a search reuses the grid.
    Writes ``online.json`` (curves, max APS, every seed's runs and search trials),
    ``online_curves.md/.csv``, ``online_max_aps.md/.csv``, ``online_latency.png``,
    ``online_completion.png`` (95% error bars); returns, as means over seeds with ``_ci95`` /
    ``_lo`` / ``_hi``, the max APS (agents/s) per row and variant (``max_aps_<row>_<variant>``, or
    ``..._at_least`` where some seed's search never failed: a lower bound), DualPath's gain over
    Basic and its ratio to Oracle (each taken within a seed), their mean over the rows
    (``mean_aps_gain_dualpath_vs_basic``: NaN unless every row's gain is exact), and the number of
    unbracketed searches over all seeds. Each exact ratio also gets ``<name>_search_lo`` /
    ``_search_hi``: the mean over seeds of the range the two searches leave it in (each max APS
    lies between its highest passing and lowest failing rate), the resolution of a figure whose
    spread over seeds may be 0 only because every seed's searches tried the same rates."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    slo, search = config.slo, config.search
    wl = config.workload
    seeds = int(config.seeds)
    wls, arr = _seeds(config)
    rows_by_key = {rc.key: rc for rc in config.rows}
    runs: dict[tuple, object] = {}

    def batch(keys: list[tuple]) -> list:
        out = _runs(config, lambda row: rows_by_key[row].window, lambda row: rows_by_key[row].sim, keys, log, cache)
        runs.update(zip(keys, out))
        return out

    for rc in config.rows:
        log(f"{rc.label}: {rc.sim.model} {cluster_label(rc.sim)}, {rc.window.describe(wl)}, {seeds} seed"
            f"{'s' if seeds > 1 else ''}")
    batch([(rc.key, v, r, float(a)) for rc in config.rows for r in range(seeds) for v in config.variants
           for a in sorted(set(rc.aps_grid))])
    found: dict[tuple, object] = {}  # (row, variant, seed index) -> MaxApsResult
    if search.enabled:
        order = [(rc, v, r) for rc in config.rows for r in range(seeds) for v in config.variants]

        def task(rc: OnlineRow, v: str, r: int):
            return lambda request: max_aps_under_slo(
                lambda a: request((rc.key, v, r, float(a))).table, slo, initial_aps=float(rc.initial_aps),
                min_aps=search.min_aps, max_aps=search.max_aps, rel_tol=search.rel_tol, max_runs=search.max_runs)

        def evaluate(keys: list[tuple]) -> list:
            new = [k for k in keys if k not in runs]
            if new:
                batch(new)
            out = [runs[k] for k in keys]
            for k in keys:  # only its search (one per row, variant and seed) asks for a run, once: keep the figures
                runs[k] = dataclasses.replace(runs[k], table=None)
            return out

        for (rc, v, r), res in zip(order, lockstep([task(*o) for o in order], evaluate)):
            found[(rc.key, v, r)] = res
            capped = rc.window.capped_above_aps
            log(f"  {rc.key} {v} seed {wls[r].seed}/arrivals {arr[r]}: max APS under SLO {res.aps:.4g} "
                f"({'bracketed' if res.bracketed else 'NOT bracketed'}, {len(res.trials)} runs)"
                + (f"; WARNING: above {capped:g} APS a run's agents are capped (max_agents_per_run), so this rate "
                   f"was not sustained for the whole horizon" if res.aps > capped else ""))
    runs = {k: dataclasses.replace(run, table=None) for k, run in runs.items()}  # the figures are in run.stats
    per_seed_curves, max_seed_rows, trials = [], [], {}
    lat_panels, comp_panels = [], []
    for rc in config.rows:
        row = rc.key
        for v in config.variants:
            for r in range(seeds):
                for (k_row, k_v, k_r, a), run in sorted(runs.items(), key=lambda kv: kv[0][3]):
                    if (k_row, k_v, k_r) == (row, v, r):
                        per_seed_curves.append(_curve_row(rc.label, run, wls[r].seed, arr[r]))
                if (row, v, r) in found:
                    res = found[(row, v, r)]
                    trials[f"{row}/{v}/seed{r}"] = res.trials
                    max_seed_rows.append({"row": row, "model": rc.label, "variant": v, "seed": wls[r].seed,
                                          "arrival_seed": arr[r], "max_aps": res.aps, "bracketed": res.bracketed,
                                          "runs": len(res.trials),
                                          "gain_vs_basic": _exact_ratio(res, found.get((row, "basic", r))),
                                          "over_oracle": _exact_ratio(res, found.get((row, "oracle", r)))})
        curve = aggregate([c for c in per_seed_curves if c["model"] == rc.label],
                          ("model", "variant", "aps"), count=seeds > 1, drop=("seed", "arrival_seed"))
        x = {v: [c["aps"] for c in curve if c["variant"] == v] for v in config.variants}

        def series(key, curve=curve):
            return ({v: [c[key] for c in curve if c["variant"] == v] for v in config.variants},
                    {v: [c[key + CI_SUFFIX] for c in curve if c["variant"] == v] for v in config.variants})

        def panel(title, key, ylabel, **extra):
            ys, err = series(key)
            return {"title": f"{rc.label}: {title}", "x": x, "series": ys, "err": err, "xlabel": "APS",
                    "ylabel": ylabel, "logx": True, **extra}

        lat_panels += [panel("TTFT", "ttft_mean_s", "mean TTFT (s)", hline=slo.ttft_s),
                       panel("TTST", "ttst_mean_s", "mean TTST (s)"),
                       panel("TPOT", "tpot_mean_ms", "mean TPOT (ms)", hline=slo.tpot_s * 1e3)]
        comp_panels.append({**panel("", "completion_mean_s", "mean trajectory completion (s)"), "title": rc.label})
    curves = aggregate(per_seed_curves, ("model", "variant", "aps"), count=seeds > 1, drop=("seed", "arrival_seed"))
    max_rows = aggregate(max_seed_rows, ("row", "model", "variant"), drop=("seed", "arrival_seed"))
    for m in max_rows:  # runs: over every seed's search
        members = [x for x in max_seed_rows if (x["row"], x["variant"]) == (m["row"], m["variant"])]
        m["runs"] = sum(x["runs"] for x in members)
        m.pop("runs" + CI_SUFFIX, None)
        for c in ("gain_vs_basic", "over_oracle"):  # a ratio is the seeds' mean only where every seed has it
            if any(math.isnan(x[c]) for x in members):
                m[c], m[c + CI_SUFFIX] = float("nan"), float("nan")
    write_seed_table(workdir / "online_curves", curves, seeds=seeds, title=f"Online serving vs APS ({wl.label}; "
                     "horizon and warm-up per model in config.json; simulated; seeds: the seeds that ran the rate)")
    window = (f", also over every sliding window of issue times of min({slo.window_s:g} s, a quarter of the measured "
              f"span)" if slo.window_s else "")
    write_seed_table(workdir / "online_max_aps", max_rows, seeds=seeds, title=f"Max APS under SLO (mean TTFT <= "
                     f"{slo.ttft_s:g} s{window}, mean TPOT <= {slo.tpot_s * 1e3:g} ms; simulated; bracketed: in "
                     f"every seed, else max_aps is a lower bound; gain and ratio within each seed, nan unless both "
                     f"searches bracketed their maximum in every seed)")
    plot_panels(workdir / "online_latency.png", lat_panels, ncols=3,
                title=f"Online latency vs APS (Fig. 10/11)\n{caption(seeds)}")
    plot_panels(workdir / "online_completion.png", comp_panels, ncols=len(comp_panels),
                title=f"Trajectory completion time vs APS\n{caption(seeds)}")
    writers.write_json(workdir / "online.json", {"curves": curves, "max_aps": max_rows, "runs": per_seed_curves,
                                                  "max_aps_by_seed": max_seed_rows, "trials": trials, "slo": slo,
                                                  "seeds": seeds})
    named: dict = {}
    gains: dict[str, list[float]] = {}
    ranges: dict[str, tuple[list[float], list[float]]] = {}  # row -> per-seed (lowest, highest) gain
    gain_rows = []  # the rows where both DualPath and Basic were searched
    for row in (rc.key for rc in config.rows):
        for v in config.variants:
            if all((row, v, r) in found for r in range(seeds)):  # unbracketed in some seed: a lower bound
                exact = all(found[(row, v, r)].bracketed for r in range(seeds))
                put(named, f"max_aps_{row}_{v}{'' if exact else '_at_least'}", [found[(row, v, r)].aps
                                                                                for r in range(seeds)])
        for num, den, key in (("dualpath", "basic", f"aps_gain_{row}_dualpath_vs_basic"),
                              ("dualpath", "oracle", f"dualpath_over_oracle_aps_{row}")):
            if not all((row, x, r) in found for x in (num, den) for r in range(seeds)):
                continue
            if den == "basic":
                gain_rows.append(row)
            pairs = [(found[(row, num, r)], found[(row, den, r)]) for r in range(seeds)]
            values = [ratio(a.aps, b.aps) for a, b in pairs]
            num_ok = all(a.bracketed for a, _ in pairs)
            den_ok = all(b.bracketed for _, b in pairs)
            # a search that never failed gives a lower bound: a ratio is exact only when both ends are bracketed
            if num_ok and den_ok:
                undefined = [r for r in range(seeds) if math.isnan(values[r])]
                if undefined:  # a search that failed even at search.min_aps: no ratio, and no mean leaving it out
                    log(f"{key}: nan; seed(s) {', '.join(map(str, undefined))} have no ratio ({den}'s search failed "
                        f"even at its lowest rate)")
                    values = [float("nan")] * seeds
                put(named, key, values)
                lo, hi = [_least_ratio(a, b) for a, b in pairs], [_most_ratio(a, b) for a, b in pairs]
                named[f"{key}_search_lo"], named[f"{key}_search_hi"] = float(np.mean(lo)), float(np.mean(hi))
                if den == "basic":
                    gains[row] = values
                    ranges[row] = (lo, hi)
            elif den_ok:  # a numerator unbracketed in some seed: a lower bound, over the denominator's
                # lowest failing rate (its capacity lies below it), not its highest passing one
                put(named, f"{key}_at_least", [_least_ratio(a, b) for a, b in pairs])
            else:
                put(named, key, [float("nan")] * seeds)
    # over every row with both searches, or none: a mean over the rows that happened to bracket would
    # change its meaning with the outcome of the searches
    exact_rows = gain_rows and set(gains) == set(gain_rows)
    if gain_rows and not exact_rows:
        log(f"mean_aps_gain_dualpath_vs_basic: nan; not every row's gain is exact (bracketed: "
            f"{', '.join(gains) or 'none'} of {', '.join(gain_rows)})")
    put(named, "mean_aps_gain_dualpath_vs_basic",
        [float(np.mean([gains[row][r] for row in gain_rows])) if exact_rows else float("nan") for r in range(seeds)])
    if exact_rows:  # (a mean over rows and seeds of each seed's range)
        for end, i in (("lo", 0), ("hi", 1)):
            per_row = [ranges[row][i] for row in gain_rows]
            named[f"mean_aps_gain_dualpath_vs_basic_search_{end}"] = float(np.mean(per_row))
    named["unbracketed_searches"] = sum(1 for res in found.values() if not res.bracketed)
    # bracketed, but search.max_runs ran out before search.rel_tol: the max APS is only known to its bracket
    named["unresolved_searches"] = sum(1 for res in found.values() if res.bracketed and not res.resolved)
    return named


def ttft_breakdown(config: TtftBreakdownStudyConfig, workdir: Path, log: Log = print, *,
                   cache: RunCache | None = None) -> dict:
    """Paper Fig. 12 left: mean TTFT components (:func:`.runs.ttft_components`, seconds) vs APS
    (``config.aps_grid``) for each of ``config.variants``, each rate run for ``config.seeds`` seeds
    (workload and arrival seed ``+ r``, :mod:`.seeds`). Writes ``ttft_breakdown.json`` (``rows``:
    means and ``_ci95``; ``runs``: every seed's), ``ttft_breakdown.md/.csv`` and
    ``ttft_breakdown_<variant>.png`` (mean components stacked, 95% error bar on the total);
    returns, as means over seeds with ``_ci95`` / ``_lo`` / ``_hi``, the mean TTFT and each
    component's share of it (within each seed) at the highest APS."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    base = config.sim
    wl = config.workload
    seeds = int(config.seeds)
    wls, arr = _seeds(config)
    keys = [(None, v, r, float(a)) for v in config.variants for r in range(seeds) for a in config.aps_grid]
    per_seed = []
    for (_, v, r, a), run in zip(keys, _runs(config, lambda row: config.window, lambda row: base, keys, log, cache)):
        row = {"variant": v, "aps": run.aps, "seed": wls[r].seed, "arrival_seed": arr[r],
               "ttft_mean_s": run.stats["ttft_mean_s"]}
        for c in TTFT_COMPONENTS:
            row[c] = run.stats[f"{c}_mean"]
        per_seed.append(row)
    rows = aggregate(per_seed, ("variant", "aps"), drop=("seed", "arrival_seed"))
    for v in config.variants:
        mine = [r for r in rows if r["variant"] == v]
        plot_stacked(workdir / f"ttft_breakdown_{v}.png", [f"{r['aps']:g}" for r in mine],
                     {c: [r[c] for r in mine] for c in TTFT_COMPONENTS}, xlabel="APS", ylabel="mean TTFT (s)",
                     total_err=[r["ttft_mean_s" + CI_SUFFIX] for r in mine],
                     title=f"TTFT breakdown, {v} ({base.model} {cluster_label(base)})\n{caption(seeds)}")
    write_seed_table(workdir / "ttft_breakdown", rows, seeds=seeds, title=f"TTFT breakdown vs APS ({base.model} "
                     f"{cluster_label(base)}, {config.window.describe(wl)}; simulated)")
    writers.write_json(workdir / "ttft_breakdown.json", {"rows": rows, "runs": per_seed, "seeds": seeds,
                                                          "components": TTFT_COMPONENTS})
    named: dict = {}
    for v in config.variants:
        top = max(float(a) for a in config.aps_grid)
        mine = [r for r in per_seed if r["variant"] == v and r["aps"] == top]
        put(named, f"ttft_mean_s_{v}_at_aps_{top:g}", [r["ttft_mean_s"] for r in mine])
        for c in TTFT_COMPONENTS:
            put(named, f"share_{c[:-2]}_{v}_at_aps_{top:g}", [ratio(r[c], r["ttft_mean_s"]) for r in mine])
    return named


def working_set(config: WorkingSetStudyConfig, workdir: Path, log: Log = print, *,
                cache: RunCache | None = None) -> dict:
    """Paper section 8.2: working set ``APS x mean completion x mean total / 2 x KV bytes/token``
    (``sim.analysis.working_set_bytes``; with sub-agents, APS times the trajectories per root agent,
    since ``mean completion`` and ``mean total`` are per trajectory) from online runs at
    ``config.aps_grid``, beside the
    simulated time-averaged hit KV of live agents over the measured window (warm-up to last
    arrival) and the cluster's DRAM buffer, each rate run for ``config.seeds`` seeds (workload and
    arrival seed ``+ r``, :mod:`.seeds`). Writes ``working_set.json`` (``rows``: means and
    ``_ci95``; ``runs``: every seed's), ``working_set.md/.csv``, ``working_set.png`` (95% error
    bars); returns, as means over seeds with ``_ci95`` / ``_lo`` / ``_hi``, the working set and the
    simulated live KV (GB) at the highest APS and the working set per APS."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    base = config.sim
    wl = config.workload
    seeds = int(config.seeds)
    wls, arr = _seeds(config)
    dram = (base.prefill_nodes + base.decode_nodes) * base.hardware.dram_buffer_bytes
    keys = [(None, v, r, float(a)) for v in config.variants for r in range(seeds) for a in config.aps_grid]
    per_seed = []
    for (_, v, r, a), run in zip(keys, _runs(config, lambda row: config.window, lambda row: base, keys, log, cache)):
        s = run.stats
        # Little's law over trajectories: APS counts root agents, each of which brings its sub-agents
        rate = float(a) * s["trajectories_per_agent"]
        ws = analysis.working_set_bytes(rate, s["completion_mean_s"], s["mean_total_tokens"], s["kv_bytes_per_token"])
        per_seed.append({"variant": v, "aps": float(a), "seed": wls[r].seed, "arrival_seed": arr[r],
                         "completion_mean_s": s["completion_mean_s"], "mean_total_tokens": s["mean_total_tokens"],
                         "kv_bytes_per_token": s["kv_bytes_per_token"],
                         "live_agents_est": rate * s["completion_mean_s"], "working_set_GB": ws / 1e9,
                         "sim_live_kv_GB": s["live_kv_bytes"] / 1e9, "working_set_over_cluster_dram": ws / dram})
    rows = aggregate(per_seed, ("variant", "aps", "kv_bytes_per_token"), drop=("seed", "arrival_seed"))
    write_seed_table(workdir / "working_set", rows, seeds=seeds, title=f"Working set vs APS ({base.model} "
                     f"{cluster_label(base)}, {wl.label}; estimate of paper section 8.2 from simulated completion "
                     "times)")
    x, series, err = {}, {}, {}
    for v in config.variants:
        mine = [r for r in rows if r["variant"] == v]
        for label, key in ((f"estimate {v}", "working_set_GB"), (f"sim live KV {v}", "sim_live_kv_GB")):
            x[label] = [r["aps"] for r in mine]
            series[label] = [r[key] for r in mine]
            err[label] = [r[key + CI_SUFFIX] for r in mine]
    plot_panels(workdir / "working_set.png", [{"title": "working set", "x": x, "series": series, "err": err,
                                               "xlabel": "APS", "ylabel": "GB", "logx": True, "hline": dram / 1e9}],
                ncols=1, title=f"Working set vs APS (dashed: cluster DRAM buffer)\n{caption(seeds)}")
    writers.write_json(workdir / "working_set.json", {"rows": rows, "runs": per_seed, "seeds": seeds,
                                                       "cluster_dram_buffer_bytes": dram})
    named: dict = {}
    top = max(float(a) for a in config.aps_grid)
    for v in config.variants:
        mine = [r for r in per_seed if r["variant"] == v and r["aps"] == top]
        put(named, f"working_set_GB_{v}_at_aps_{top:g}", [r["working_set_GB"] for r in mine])
        put(named, f"sim_live_kv_GB_{v}_at_aps_{top:g}", [r["sim_live_kv_GB"] for r in mine])
        put(named, f"working_set_GB_per_aps_{v}", [
            float(np.mean([r["working_set_GB"] / r["aps"] for r in per_seed if r["variant"] == v
                           and r["seed"] == wls[i].seed and r["arrival_seed"] == arr[i]])) for i in range(seeds)])
    return named


def table3(config: Table3StudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Table 3: offline JCT of ``config.offline_cases`` (``(cluster, agents)``) and online
    mean TTFT / TTST / TPOT of ``config.online_cases`` (``(cluster, aps, agents)``) for each of
    ``config.variants``, each case run for ``config.seeds`` seeds (workload and arrival seed
    ``+ r``, :mod:`.seeds`). Writes ``table3.json`` (``rows``: means and ``_ci95``; ``runs``: every
    seed's), ``table3.md/.csv``, ``table3.png`` (95% error bars); returns, as means over seeds with
    ``_ci95`` / ``_lo`` / ``_hi``, the JCT per offline case, the large / small JCT ratio (within
    each seed) and TTFT / TTST / TPOT per online case, over the requests issued after
    ``config.online_warmup_fraction`` of the case's arrival window."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    seeds = int(config.seeds)
    off_seeds = offline_seeds(config.workload, seeds)  # (a trace: one offline run, :mod:`.seeds`)
    wls, arr = _seeds(config)
    per_seed = []
    keys = [(cluster, int(n), v, r) for r in range(off_seeds) for cluster, n in config.offline_cases
            for v in config.variants]
    offline = offline_runs([with_cluster(config.sim, c, "offline_cases") for c, _, _, _ in keys],
                           [(v, wls[r].replace(num_agents=n)) for _, n, v, r in keys], log,
                           scheduler_cls=config.scheduler, cache=cache)
    for (cluster, n, v, r), s in zip(keys, offline):
        base = with_cluster(config.sim, cluster, "offline_cases")
        gpus = (base.prefill_nodes + base.decode_nodes) * base.hardware.gpus_per_node
        per_seed.append({"mode": "offline", "cluster": cluster, "gpus": gpus, "agents": int(n), "aps": None,
                         "variant": v, "seed": wls[r].seed, "arrival_seed": None, "jct_s": s["jct_s"],
                         "ttft_mean_s": s["ttft_mean_s"], "ttst_mean_s": s["ttst_mean_s"],
                         "tpot_ms": s["tpot_s"] * 1e3, "wall_s": s["wall_s"]})
    okeys = [(cluster, float(aps), int(n), v, r) for r in range(seeds) for cluster, aps, n in config.online_cases
             for v in config.variants]
    warmup = float(config.online_warmup_fraction)  # of each case's arrival window, n / aps seconds
    online = online_runs([(with_cluster(config.sim, c, "online_cases"), v, wls[r].replace(num_agents=n), aps, arr[r],
                           warmup * n / aps) for c, aps, n, v, r in okeys], log, scheduler_cls=config.scheduler,
                         cache=cache)
    for (cluster, aps, n, v, r), run in zip(okeys, online):
        base = with_cluster(config.sim, cluster, "online_cases")
        gpus = (base.prefill_nodes + base.decode_nodes) * base.hardware.gpus_per_node
        s = run.stats
        per_seed.append({"mode": "online", "cluster": cluster, "gpus": gpus, "agents": int(n), "aps": aps,
                         "variant": v, "seed": wls[r].seed, "arrival_seed": arr[r], "jct_s": None,
                         "ttft_mean_s": s["ttft_mean_s"], "ttst_mean_s": s["ttst_mean_s"],
                         "tpot_ms": s["tpot_mean_s"] * 1e3, "wall_s": s["wall_s"]})
    mixed = off_seeds != seeds  # then each row says over how many seeds it is
    rows = aggregate(per_seed, ("mode", "cluster", "gpus", "agents", "aps", "variant"), drop=("seed", "arrival_seed"),
                     count=mixed)
    runs_note = f"; offline rows: {off_seeds} run of the trace" if mixed else ""
    write_seed_table(workdir / "table3", rows, seeds=seeds, title=f"Table 3: scale-out ({config.sim.model}, "
                     f"{config.workload.label}; simulated{runs_note})")
    off = [r for r in rows if r["mode"] == "offline"]
    on = [r for r in rows if r["mode"] == "online"]
    panels = []
    for v in config.variants:
        mine_off = [r for r in off if r["variant"] == v]
        mine_on = [r for r in on if r["variant"] == v]
        panels.append({"title": f"offline JCT ({v})", "x": [r["gpus"] for r in mine_off],
                       "series": {"JCT (s)": [r["jct_s"] for r in mine_off]},
                       "err": {"JCT (s)": [r["jct_s" + CI_SUFFIX] for r in mine_off]}, "xlabel": "GPUs",
                       "ylabel": "s", "logx": True})
        panels.append({"title": f"online latency ({v})", "x": [r["gpus"] for r in mine_on],
                       "series": {"TTFT (s)": [r["ttft_mean_s"] for r in mine_on],
                                  "TTST (s)": [r["ttst_mean_s"] for r in mine_on],
                                  "TPOT (s)": [r["tpot_ms"] / 1e3 for r in mine_on]},
                       "err": {"TTFT (s)": [r["ttft_mean_s" + CI_SUFFIX] for r in mine_on],
                               "TTST (s)": [r["ttst_mean_s" + CI_SUFFIX] for r in mine_on],
                               "TPOT (s)": [r["tpot_ms" + CI_SUFFIX] / 1e3 for r in mine_on]},
                       "xlabel": "GPUs", "ylabel": "s", "logx": True})
    plot_panels(workdir / "table3.png", panels, ncols=2, title=f"Scale-out (Table 3)\n{caption(seeds)}{runs_note}")
    writers.write_json(workdir / "table3.json", {"rows": rows, "runs": per_seed, "seeds": seeds,
                                                 "offline_seeds": off_seeds})
    named: dict = {}
    cases = list(dict.fromkeys((c, int(n)) for c, n in config.offline_cases))
    for v in config.variants:
        for cluster, n in cases:
            put(named, f"jct_s_{cluster}_{n}_{v}", [s["jct_s"] for (c, k, x, _), s in zip(keys, offline)
                                                    if (c, k, x) == (cluster, n, v)])
        if len(cases) >= 2:
            put(named, f"jct_ratio_large_over_small_{v}", [ratio(_offline_jct(keys, offline, cases[-1], v, r),
                                                                 _offline_jct(keys, offline, cases[0], v, r))
                                                           for r in range(off_seeds)])
        for cluster, aps, n in dict.fromkeys((c, float(a), int(n)) for c, a, n in config.online_cases):
            mine = [run.stats for (c, a, k, x, _), run in zip(okeys, online) if (c, a, k, x) == (cluster, aps, n, v)]
            tag = f"{cluster}_{aps:g}aps_{v}"
            put(named, f"ttft_s_{tag}", [s["ttft_mean_s"] for s in mine])
            put(named, f"ttst_s_{tag}", [s["ttst_mean_s"] for s in mine])
            put(named, f"tpot_ms_{tag}", [s["tpot_mean_s"] * 1e3 for s in mine])
    return named


def _offline_jct(keys: list[tuple], runs: list[dict], case: tuple[str, int], variant: str, r: int) -> float:
    """JCT (seconds) of offline ``case`` ``(cluster, agents)`` for ``variant`` and seed index ``r``."""
    return next(s["jct_s"] for (c, n, v, rr), s in zip(keys, runs) if (c, n, v, rr) == (*case, variant, r))
