"""Offline studies of the paper (all agents start at t = 0; the metric is the batch JCT).

* :func:`fig7`  JCT vs agents; rows = models, columns = MALs; Basic / DualPath / Oracle.
* :func:`fig8`  P/D ratio study on DS 27B (1P1D, 2P1D, 1P2D).
* :func:`fig9`  append / generation length scaling on DS 660B.
* :func:`pd_sweep`  a P/D sweep of the storage read rate against the Eq. 9 bound (``sim.analysis``).
* :func:`balance`  Fig. 13 (SNIC traffic Max/Avg over time) and Fig. 14 (attention Max/Avg).

Each takes ``(config, workdir, log, cache=...)``: its typed config (:mod:`.config`, built from
``configs/sim_<name>.py``), the output folder, a log function and an optional :class:`RunCache`;
it writes ``<name>.json``, tables (Markdown + CSV) and PNG plots into ``workdir`` and returns its
``name: value`` headline figures. Every run uses ``config.scheduler``. Every configuration runs for
``config.seeds`` workload seeds, all in one batch (in parallel on the cache's sweep); figures are
computed within a seed, then reported as the mean over seeds with a 95% interval (:mod:`.seeds`).
The numbers are predictions of the simulator with its public calibration (``sim.compute``); no
parameter is fitted to the paper's results.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dualpath_jax.metrics import writers
from dualpath_jax.metrics.records import TransferTable
from dualpath_jax.metrics.traffic import storage_nic_max_avg
from dualpath_jax.sim import analysis
from dualpath_jax.sim.adapters import snic_transfers
from dualpath_jax.sim.cluster import Simulator
from dualpath_jax.sim.runs import attention_by_busy_members, attention_weighted, forwards_in_head, variant_config
from dualpath_jax.studies.common import cluster_label, parse_cluster, with_cluster
from dualpath_jax.studies.config import (BalanceStudyConfig, Fig7StudyConfig, Fig8StudyConfig, Fig9StudyConfig,
                                         PdSweepStudyConfig)
from dualpath_jax.studies.plots import plot_panels
from dualpath_jax.studies.runs import Log, RunCache, _run_missing, offline_runs, ratio, scheduler_label, spec_agents
from dualpath_jax.studies.seeds import (CI_SUFFIX, aggregate, band, caption, estimate, offline_seeds, put,
                                       seed_workloads)
from dualpath_jax.studies.seeds import write_table as write_seed_table

__all__ = ["fig7", "fig8", "fig9", "pd_sweep", "balance"]


def _speedups(results: dict, key_of) -> None:
    """Add ``speedup_vs_basic`` (Basic JCT / JCT) and ``jct_over_oracle`` to every result, each
    against the Basic and Oracle runs of the same configuration and seed (``key_of(key, variant)``)."""
    for k, s in results.items():
        basic = results.get(key_of(k, "basic"))
        oracle = results.get(key_of(k, "oracle"))
        s["speedup_vs_basic"] = ratio(basic["jct_s"], s["jct_s"]) if basic else float("nan")
        s["jct_over_oracle"] = ratio(s["jct_s"], oracle["jct_s"]) if oracle else float("nan")


def _row(s: dict, **extra) -> dict:
    return {**extra, "variant": s["variant"], "jct_s": s["jct_s"], "speedup_vs_basic": s["speedup_vs_basic"],
            "jct_over_oracle": s["jct_over_oracle"], "ttft_mean_s": s["ttft_mean_s"], "ttft_p99_s": s["ttft_p99_s"],
            "tpot_ms": s["tpot_s"] * 1e3, "snic_read_TB": s["snic_read_bytes"] / 1e12, "requests": s["num_requests"]}


def _nanmean(values) -> float:
    v = np.asarray([x for x in values if x == x], np.float64)
    return float(v.mean()) if v.size else float("nan")


def _panel_points(results: dict, seeds: int, xs, key_of) -> tuple[list[float], list[float]]:
    """One series of a panel: the mean JCT (seconds) over seeds and its 95% half width at each x
    (the runs ``results[key_of(x, seed)]``)."""
    points = [estimate(results[key_of(x, r)]["jct_s"] for r in range(seeds)) for x in xs]
    return [e.mean for e in points], [e.half for e in points]


def _best(cells: dict) -> tuple:
    """The key of ``cells`` (key -> per-seed values) with the highest mean (NaN cells last)."""
    means = {k: estimate(v).mean for k, v in cells.items()}
    return max(means, key=lambda k: means[k] if means[k] == means[k] else -math.inf)


def fig7(config: Fig7StudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 7: offline JCT (seconds) vs number of agents for each model row (``config.rows``)
    and MAL (``config.mals``), one series per variant (``config.variants``), each configuration run
    for ``config.seeds`` workload seeds (:mod:`.seeds`). Writes ``fig7.json`` (``results``: mean
    and ``_ci95`` per cell; ``runs``: every seed's), ``fig7.md/.csv``, ``fig7.png`` (95% error
    bars). Returns, as means over seeds with ``_ci95`` / ``_lo`` / ``_hi``: the DualPath speedup
    over Basic of the cell with the highest mean speedup (``max_speedup_dualpath_vs_basic``, at
    ``max_speedup_at``) and of each row's best cell, the speedup averaged over the grid, and
    DualPath / Oracle JCT averaged over each row's cells; every ratio is taken within a seed."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    seeds = offline_seeds(config.workload, config.seeds)
    wls = seed_workloads(config.workload, seeds)
    results: dict[tuple, dict] = {}
    for rc in config.rows:
        base = rc.sim
        log(f"{rc.label}: {base.model} {cluster_label(base)}, kv {base.kv_dtype}, weights {base.weight_dtype}")
        keys = [(rc.key, mal, int(n), v, r) for r in range(seeds) for mal in config.mals for n in config.num_agents
                for v in config.variants]
        runs = [(v, wls[r].replace(mal=mal, num_agents=n)) for _, mal, n, v, r in keys]
        results.update(zip(keys, offline_runs(base, runs, log, scheduler_cls=config.scheduler, cache=cache)))
    _speedups(results, lambda k, v: (*k[:3], v, k[4]))
    per_seed, panels = [], []
    row_order = [rc.key for rc in config.rows]
    agents = [int(n) for n in config.num_agents]
    for rc in config.rows:
        row, label = rc.key, rc.label
        for mal in config.mals:
            series, err = {}, {}
            for v in config.variants:
                series[v], err[v] = _panel_points(results, seeds, agents, lambda n, r, v=v: (row, mal, n, v, r))
            panels.append({"title": f"{label}, MAL {mal}", "x": agents, "series": series, "err": err,
                           "xlabel": "agents", "ylabel": "JCT (s)", "logx": True})
    for r in range(seeds):
        for rc in config.rows:
            for mal in config.mals:
                for n in agents:
                    for v in config.variants:
                        s = results[(rc.key, mal, n, v, r)]
                        per_seed.append(_row(s, model=rc.label, cluster=s["cluster"], mal=mal, agents=n,
                                             seed=wls[r].seed))
    rows = aggregate(per_seed, ("model", "cluster", "mal", "agents", "variant"))
    write_seed_table(workdir / "fig7", rows, seeds=seeds, title=f"Fig. 7: offline JCT vs agents "
                     f"({config.workload.source} workload; simulated)")
    plot_panels(workdir / "fig7.png", panels, ncols=len(config.mals),
                title=f"Offline JCT (Fig. 7)\n{caption(seeds)}")
    writers.write_json(workdir / "fig7.json", {"results": rows, "runs": per_seed, "seeds": seeds})
    named: dict = {}
    if "basic" in config.variants and "dualpath" in config.variants:
        cells = {k[:3]: [results[(*k[:3], "dualpath", r)]["speedup_vs_basic"] for r in range(seeds)]
                 for k in results if k[3] == "dualpath" and k[4] == 0}
        best = _best(cells)
        put(named, "max_speedup_dualpath_vs_basic", cells[best])
        named["max_speedup_at"] = f"{best[0]} {best[1]} {best[2]} agents"
        put(named, "mean_speedup_dualpath_vs_basic", [_nanmean(v[r] for v in cells.values()) for r in range(seeds)])
        for row in row_order:
            put(named, f"max_speedup_{row}", cells[_best({k: v for k, v in cells.items() if k[0] == row})])
    if "oracle" in config.variants and "dualpath" in config.variants:
        for row in row_order:
            put(named, f"dualpath_over_oracle_jct_{row}", [_nanmean(
                s["jct_over_oracle"] for k, s in results.items() if k[0] == row and k[3] == "dualpath" and k[4] == r)
                for r in range(seeds)])
    return named


def fig8(config: Fig8StudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 8: P/D ratio study (``config.clusters``, e.g. 1P1D / 2P1D / 1P2D) at
    ``config.num_agents``, Basic vs DualPath, each configuration run for ``config.seeds`` workload
    seeds (:mod:`.seeds`). Writes ``fig8.json`` (``results``: means and ``_ci95``; ``runs``: every
    seed's), ``fig8.md/.csv``, ``fig8.png`` (95% error bars); returns, as means over seeds with
    ``_ci95`` / ``_lo`` / ``_hi``, the JCT (seconds) per cluster at the largest batch and DualPath's
    speedup (within each seed) per cluster and averaged over the grid."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    seeds = offline_seeds(config.workload, config.seeds)
    wls = seed_workloads(config.workload, seeds)
    keys = [(c, int(n), v, r) for r in range(seeds) for c in config.clusters for n in config.num_agents
            for v in config.variants]
    bases = [with_cluster(config.sim, c) for c, _, _, _ in keys]
    runs = [(v, wls[r].replace(num_agents=n)) for _, n, v, r in keys]
    results = dict(zip(keys, offline_runs(bases, runs, log, scheduler_cls=config.scheduler, cache=cache)))
    _speedups(results, lambda k, v: (*k[:2], v, k[3]))
    per_seed, panels = [], []
    agents = [int(n) for n in config.num_agents]
    for c in config.clusters:
        series, err = {}, {}
        for v in config.variants:
            series[v], err[v] = _panel_points(results, seeds, agents, lambda n, r, v=v, c=c: (c, n, v, r))
        panels.append({"title": f"{config.sim.model} {c}", "x": agents, "xlabel": "agents", "ylabel": "JCT (s)",
                       "logx": True, "series": series, "err": err})
    for r in range(seeds):
        for c in config.clusters:
            p, d = parse_cluster(c)
            for n in agents:
                for v in config.variants:
                    s = results[(c, n, v, r)]
                    per_seed.append(_row(s, cluster=c, agents=n, seed=wls[r].seed,
                                         agents_per_hour_per_node=n / s["jct_s"] * 3600 / (p + d)))
    rows = aggregate(per_seed, ("cluster", "agents", "variant"))
    write_seed_table(workdir / "fig8", rows, seeds=seeds, title=f"Fig. 8: P/D ratio study ({config.sim.model}, "
                     f"{config.workload.label}; simulated)")
    plot_panels(workdir / "fig8.png", panels, ncols=len(config.clusters), title=f"P/D ratio (Fig. 8)\n{caption(seeds)}")
    writers.write_json(workdir / "fig8.json", {"results": rows, "runs": per_seed, "seeds": seeds})
    named: dict = {}
    top = max(agents)
    for c in config.clusters:
        for v in config.variants:
            put(named, f"jct_s_{v}_{c}_{top}", [results[(c, top, v, r)]["jct_s"] for r in range(seeds)])
    if "basic" in config.variants and "dualpath" in config.variants:
        for c in config.clusters:
            put(named, f"speedup_dualpath_vs_basic_{c}_{top}",
                [results[(c, top, "dualpath", r)]["speedup_vs_basic"] for r in range(seeds)])
        put(named, "mean_speedup_dualpath_vs_basic",
            [_nanmean(s["speedup_vs_basic"] for k, s in results.items() if k[2] == "dualpath" and k[3] == r)
             for r in range(seeds)])
    return named


def fig9(config: Fig9StudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 9: append (``config.scale`` contains "append") and generation ("gen") lengths
    multiplied by each of ``config.factors`` then truncated at the MAL, at ``config.num_agents``,
    each configuration run for ``config.seeds`` workload seeds (:mod:`.seeds`). Writes
    ``fig9.json`` (``results``: means and ``_ci95``; ``runs``: every seed's), ``fig9.md/.csv``,
    ``fig9.png`` (95% error bars); returns, as means over seeds with ``_ci95`` / ``_lo`` / ``_hi``,
    DualPath's speedup over Basic per scaling and its JCT over Oracle's averaged over the grid
    (both within each seed)."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    base = config.sim
    seeds = offline_seeds(config.workload, config.seeds)
    wls = seed_workloads(config.workload, seeds)
    keys = [(kind, float(f), v, r) for r in range(seeds) for kind in config.scale for f in config.factors
            for v in config.variants]
    runs = [(v, wls[r].replace(num_agents=int(config.num_agents), **{f"{kind}_factor": f})) for kind, f, v, r in keys]
    results = dict(zip(keys, offline_runs(base, runs, log, scheduler_cls=config.scheduler, cache=cache)))
    _speedups(results, lambda k, v: (*k[:2], v, k[3]))
    per_seed, panels = [], []
    xs = [float(f) for f in config.factors]
    for kind in config.scale:
        series, err = {}, {}
        for v in config.variants:
            series[v], err[v] = _panel_points(results, seeds, xs, lambda f, r, v=v, kind=kind: (kind, f, v, r))
        panels.append({"title": f"{kind} length scaled", "x": xs, "xlabel": f"{kind} factor", "ylabel": "JCT (s)",
                       "series": series, "err": err})
    for r in range(seeds):
        for kind in config.scale:
            for f in xs:
                for v in config.variants:
                    per_seed.append(_row(results[(kind, f, v, r)], scaled=kind, factor=f, seed=wls[r].seed))
    rows = aggregate(per_seed, ("scaled", "factor", "variant"))
    write_seed_table(workdir / "fig9", rows, seeds=seeds, title=f"Fig. 9: length scaling ({base.model} "
                     f"{cluster_label(base)}, {config.workload.label}, {config.num_agents} agents; simulated)")
    plot_panels(workdir / "fig9.png", panels, ncols=2, title=f"Append / generation scaling (Fig. 9)\n{caption(seeds)}")
    writers.write_json(workdir / "fig9.json", {"results": rows, "runs": per_seed, "seeds": seeds})
    named: dict = {}
    if "basic" in config.variants and "dualpath" in config.variants:
        for kind in config.scale:
            for f in xs:
                put(named, f"speedup_dualpath_vs_basic_{kind}_x{f:g}",
                    [results[(kind, f, "dualpath", r)]["speedup_vs_basic"] for r in range(seeds)])
    if "oracle" in config.variants and "dualpath" in config.variants:
        put(named, "dualpath_over_oracle_jct_mean",
            [_nanmean(s["jct_over_oracle"] for k, s in results.items() if k[2] == "dualpath" and k[3] == r)
             for r in range(seeds)])
    return named


def pd_sweep(config: PdSweepStudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """P/D sweep (``config.clusters``): the simulated aggregate storage read rate while at least
    half of the agents run (``snic_read_bytes_per_s_busy`` of :func:`.runs.offline_run`, as a
    fraction of ``(P + D) s B``) of each variant against the Eq. 9 analysis
    (:mod:`dualpath_jax.sim.analysis`): DualPath's even-split fraction ``min(1, 1/max load)``
    and Basic's ``P / (P + D) * min(1, 1 / max load)`` (``analysis.basic_storage_fraction``); both
    with B = the CNIC rate left to KV. ``config.sim`` should make storage the bottleneck (the default
    config: fast compute, one generated token per round). Each cluster runs for ``config.seeds``
    workload seeds (:mod:`.seeds`). Writes ``pd_sweep.json`` (``rows``: means and ``_ci95``;
    ``runs``: every seed's), ``pd_sweep.md/.csv``, ``pd_sweep.png`` (95% error bars); returns the
    Eq. 9 range (analytic: no interval) and, as means over seeds with ``_ci95`` / ``_lo`` /
    ``_hi``, DualPath's simulated fraction inside / outside it and its largest gap to the bound;
    ``best_cluster_dualpath`` has the highest mean fraction."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    seeds = offline_seeds(config.workload, config.seeds)
    wls = seed_workloads(config.workload, seeds)
    by_seed: list[list[dict]] = [[] for _ in range(seeds)]
    nominal = eff = None
    for c in config.clusters:
        parse_cluster(c, "clusters")
    keys = [(c, v, r) for r in range(seeds) for c in config.clusters for v in config.variants]
    results = dict(zip(keys, offline_runs([with_cluster(config.sim, c) for c, _, _ in keys],
                                          [(v, wls[r]) for _, v, r in keys], log,
                                          scheduler_cls=config.scheduler, cache=cache)))
    for r in range(seeds):
        for c in config.clusters:
            p, d = parse_cluster(c, "clusters")
            base = with_cluster(config.sim, c)
            hw = base.hardware
            nominal, eff = analysis.pd_range_for_hardware(hw), analysis.pd_range_for_hardware(hw, kv_share=True)
            b_eff = hw.cnic_bytes_per_s * hw.cnic_kv_share
            s_eff = hw.node_snic_bytes_per_s / b_eff
            loads = analysis.link_loads(p / d, hw.gpus_per_node, s_eff, hw.dram_bytes_per_s / hw.node_snic_bytes_per_s)
            aggregate_bw = (p + d) * min(hw.node_snic_bytes_per_s, hw.storage_bytes_per_s)
            row = {"cluster": c, "p_over_d": p / d, "in_eq9_range": nominal.contains(p / d),
                   "in_eq9_range_kv_share": eff.contains(p / d), "busiest_link": max(loads, key=loads.get),
                   "busiest_load": max(loads.values()),
                   "bound_dualpath": analysis.even_split_storage_fraction(
                       p / d, hw.gpus_per_node, s_eff, hw.dram_bytes_per_s / hw.node_snic_bytes_per_s),
                   "bound_basic": analysis.basic_storage_fraction(p / d, hw.gpus_per_node, s_eff,
                                                                  hw.dram_bytes_per_s / hw.node_snic_bytes_per_s)}
            for v in config.variants:
                s = results[(c, v, r)]
                row[f"sim_{v}"] = s["snic_read_bytes_per_s_busy"] / aggregate_bw
                row[f"jct_s_{v}"] = s["jct_s"]
            if "basic" in config.variants and "dualpath" in config.variants:
                row["speedup_dualpath_vs_basic"] = ratio(row["jct_s_basic"], row["jct_s_dualpath"])
            by_seed[r].append({**row, "seed": wls[r].seed})
    per_seed = [row for part in by_seed for row in part]
    analytic = ("cluster", "p_over_d", "in_eq9_range", "in_eq9_range_kv_share", "busiest_link", "busiest_load",
                "bound_dualpath", "bound_basic")
    rows = aggregate(per_seed, analytic)
    write_seed_table(workdir / "pd_sweep", rows, seeds=seeds, title=f"P/D sweep vs the Eq. 9 bound "
                     f"({config.sim.model}, storage-bound probe workload; fractions of the aggregate SNIC bandwidth)")
    xs = [r["p_over_d"] for r in rows]
    series = {"bound dualpath (Eq. 1-9, even split)": [r["bound_dualpath"] for r in rows],
              "bound basic": [r["bound_basic"] for r in rows]}
    err = {}
    for v in config.variants:
        series[f"sim {v}"] = [r[f"sim_{v}"] for r in rows]
        err[f"sim {v}"] = [r[f"sim_{v}{CI_SUFFIX}"] for r in rows]
    vl = [x for x in (nominal.lower, nominal.upper) if np.isfinite(x)] if nominal else []
    plot_panels(workdir / "pd_sweep.png", [{"title": "storage read rate / (P+D) s B", "x": xs, "series": series,
                                            "err": err, "xlabel": "P/D", "ylabel": "fraction", "logx": True,
                                            "vlines": vl}],
                ncols=1, title=f"P/D sweep vs the bottleneck-free range (dotted: Eq. 9)\n{caption(seeds)}")
    writers.write_json(workdir / "pd_sweep.json", {"rows": rows, "runs": per_seed, "seeds": seeds,
                                                    "eq9_nominal": nominal, "eq9_kv_share": eff})
    named = {"eq9_lower": nominal.lower, "eq9_upper": nominal.upper, "eq9_lower_kv_share": eff.lower,
             "eq9_upper_kv_share": eff.upper}
    if "dualpath" in config.variants:
        put(named, "sim_dualpath_fraction_inside_range_mean",
            [_nanmean(x["sim_dualpath"] for x in part if x["in_eq9_range"]) for part in by_seed])
        put(named, "sim_dualpath_fraction_outside_range_mean",
            [_nanmean(x["sim_dualpath"] for x in part if not x["in_eq9_range"]) for part in by_seed])
        put(named, "max_abs_error_vs_bound_dualpath",
            [max(abs(x["sim_dualpath"] - x["bound_dualpath"]) for x in part) for part in by_seed])
        best = max(rows, key=lambda x: x["sim_dualpath"] if x["sim_dualpath"] == x["sim_dualpath"] else -math.inf)
        named["best_cluster_dualpath"] = best["cluster"]
    return named


def _balance_summary(spec: tuple) -> dict:
    """One offline run of ``spec = (cfg, scheduler_cls, wl, window_s, head_fraction)`` reduced to
    the balance study's figures (a picklable task): ``row`` (the study's table row), ``busy`` (rows
    of :func:`attention_by_busy_members` with the head's), ``snic`` (window starts, Max/Avg per
    window), ``head`` (per-forward attention Max/Avg of the first forwards) with their start times
    ``head_start_s``, ``head_time_end_s`` (the end of the run's first ``head_fraction`` of time) and
    ``early`` (start times and Max/Avg of the forwards in twice that span)."""
    cfg, scheduler_cls, wl, window_s, head_fraction = spec
    ts = wl.build()
    res = Simulator(cfg, spec_agents(wl, ts)[0], scheduler_cls=scheduler_cls).run()
    links, starts, finishes, sizes = snic_transfers(res)
    tt = TransferTable(link=np.asarray(links, dtype=object), start_s=starts, finish_s=finishes, num_bytes=sizes,
                       path=np.asarray(["storage_read"] * len(starts), dtype=object))
    t, snic = storage_nic_max_avg(tt, sorted(res.snic_samples), float(window_s), start_s=0.0,
                                  end_s=res.end_s) if len(starts) else (np.zeros(0), np.zeros(0))
    attn = np.asarray(res.attention_ratio, np.float64)
    n_head = max(1, int(np.ceil(len(attn) * float(head_fraction))))
    head = attn[:n_head] if attn.size else attn
    n_time = forwards_in_head(res, float(head_fraction))  # the forwards of the run's first fraction of time
    n_early = forwards_in_head(res, min(1.0, 2 * float(head_fraction)))  # twice that span, for the plot over time
    pe_forwards = int(res.units["pe_forwards"].sum())  # of PE units (EP groups with ep_sync, else engines)
    chunks = float(res.units["pe_batch_requests"].sum())  # whole requests and chunked-prefill pieces
    finite = snic[np.isfinite(snic)]
    # the loaded phase: windows that end before half the agents have finished their trajectories;
    # the paper leaves out the tail, where ever fewer agents' reads make the ratios "meaningless due
    # to underloaded system" (Fig. 13)
    last = np.full(len(ts), -np.inf)
    np.maximum.at(last, np.asarray(res.requests["agent"], np.int64), np.asarray(res.requests["finish_s"]))
    loaded_s = float(np.median(last)) if len(ts) else 0.0
    width = float(t[1] - t[0]) if len(t) > 1 else float(window_s)  # (wider than asked in a run of absurd length)
    loaded = snic[(np.asarray(t) + width <= loaded_s) & np.isfinite(snic)]
    stat = lambda a, f: float(f(a)) if a.size else float("nan")  # noqa: E731
    full = res.attention_members[:, 0] == res.attention_members[:, 1]  # every member had attention work
    p90 = lambda a: np.percentile(a, 90)  # noqa: E731
    row = {"jct_s": res.end_s, "snic_max_avg_mean": stat(finite, np.mean),
           "snic_max_avg_loaded_mean": stat(loaded, np.mean), "loaded_s": loaded_s,
           "snic_max_avg_p50": stat(finite, np.median), "snic_max_avg_p90": stat(finite, p90),
           "attn_max_avg_mean": stat(attn, np.mean), "attn_max_avg_head_mean": stat(head, np.mean),
           "attn_max_avg_head_weighted": attention_weighted(res, n_head),
           "attn_max_avg_head_time_mean": stat(attn[:n_time], np.mean),
           "attn_max_avg_head_time_weighted": attention_weighted(res, n_time) if n_time else float("nan"),
           "head_time_forwards": n_time,
           "attn_max_avg_weighted": attention_weighted(res),
           "attn_max_avg_p90": stat(attn, p90), "forwards": int(attn.size),
           "full_forward_share": stat(full, np.mean), "full_forward_share_head": stat(full[:n_head], np.mean),
           "attn_max_avg_full_mean": stat(attn[full], np.mean),
           "attn_max_avg_head_full_mean": stat(head[full[:n_head]], np.mean),
           "chunks_per_forward": chunks / pe_forwards if pe_forwards else float("nan")}
    head_rows = {(r["busy"], r["members"]): r for r in attention_by_busy_members(res, n_head)}
    busy = []
    for r in attention_by_busy_members(res):
        h = head_rows.get((r["busy"], r["members"]), {"forwards": 0, "max_avg_mean": float("nan")})
        busy.append({**r, "head_forwards": h["forwards"], "head_max_avg_mean": h["max_avg_mean"]})
    return {"row": row, "busy": busy, "snic": (np.asarray(t, np.float64), np.asarray(snic, np.float64)),
            "head": head, "head_start_s": np.asarray(res.attention_start_s[:len(head)], np.float64),
            "head_time_end_s": float(head_fraction) * res.end_s,
            "early": (np.asarray(res.attention_start_s[:n_early], np.float64), attn[:n_early])}


def balance(config: BalanceStudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 13-14: storage-NIC traffic Max/Avg across all SNICs in windows of
    ``config.window_s`` and attention-time Max/Avg across the engines of a PE group per forward,
    for each variant (``config.variants``: round-robin "dpl" vs "dualpath", both dual-path
    loading), offline, each run for ``config.seeds`` workload seeds (:mod:`.seeds`). The attention
    figures of the run's head come two ways: ``attn_max_avg_head_time_mean`` / ``_weighted`` over
    the forwards that start in the first ``config.head_fraction`` of the run's time (its JCT; the
    paper's "during the first 5% of the task", :func:`forwards_in_head`; ``head_time_forwards``
    counts them), and ``attn_max_avg_head_mean`` / ``_weighted`` over the first
    ``config.head_fraction`` of the forwards (the plot's top panel; its bottom panel shows the
    first seed's forwards over time). ``_weighted`` is Max/Avg weighted by attention time
    (:func:`attention_weighted`),
    ``chunks_per_forward`` the batch entries (whole requests or chunked-prefill pieces) per PE-unit
    forward over the run. ``snic_max_avg_loaded_mean`` is the SNIC Max/Avg over the loaded phase
    only: the windows that end before half the agents have finished their trajectories
    (``loaded_s``); the paper's Fig. 13 leaves out the tail, where a few agents' reads make any
    ratio large. ``full_forward_share[_head]`` is the share of forwards in which every
    member had attention work and ``attn_max_avg[_head]_full_mean`` their mean Max/Avg: a member
    without ready work counts 0 s, so forwards of a partly idle group are far from 1 however well
    the busy members are balanced (``balance_busy.md/.csv`` splits the forwards by busy members,
    :func:`attention_by_busy_members`; a (busy, members) bucket is averaged over the seeds that
    have it, ``seeds``). Writes ``balance.json`` (``rows``: means and ``_ci95``; ``runs``: every
    seed's), ``balance.md/.csv``, ``balance_busy.md/.csv``, ``balance_snic.csv``,
    ``balance_attention.csv`` (every seed's series), ``balance_snic.png``,
    ``balance_attention.png`` (mean over seeds with a shaded 95% band, over the windows or forwards
    every seed has); returns those figures per variant as means over seeds with ``_ci95`` /
    ``_lo`` / ``_hi``. Runs go through ``cache`` (its sweep, and memoised; a fresh one if None)."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    base = config.sim
    seeds = offline_seeds(config.workload, config.seeds)
    wls = [w.replace(num_agents=int(config.num_agents)) for w in seed_workloads(config.workload, seeds)]
    keys = [(v, r) for r in range(seeds) for v in config.variants]
    specs = [(variant_config(base, v), config.scheduler, wls[r], float(config.window_s), float(config.head_fraction))
             for v, r in keys]
    out = _balance_runs(specs, cache)
    results = dict(zip(keys, out))
    per_seed, busy_rows, snic_rows, attn_rows = [], [], [], []
    for (v, r), (res, cached) in results.items():
        seed = wls[r].seed
        row = res["row"]
        per_seed.append({"variant": v, "seed": seed, **row})
        log(f"  {v + scheduler_label(config.scheduler):9s} seed {seed}  JCT {row['jct_s']:8.1f} s  SNIC Max/Avg mean "
            f"{row['snic_max_avg_mean']:.3f}  attention Max/Avg mean {row['attn_max_avg_mean']:.3f}"
            + ("  (memoised)" if cached else ""))
        busy_rows += [{"variant": v, "seed": seed, **b} for b in res["busy"]]
        t, snic = res["snic"]
        snic_rows += [{"variant": v, "seed": seed, "window_start_s": float(a), "snic_max_avg": float(b)}
                      for a, b in zip(t, snic)]
        attn_rows += [{"variant": v, "seed": seed, "forward": i, "start_s": float(t0), "attention_max_avg": float(b)}
                      for i, (t0, b) in enumerate(zip(res["head_start_s"], res["head"]))]
    rows = aggregate(per_seed, ("variant",))
    title = f"{base.model} {cluster_label(base)}, {wls[0].label}, {int(config.num_agents)} agents"
    write_seed_table(workdir / "balance", rows, seeds=seeds, title=f"Load balance (Fig. 13-14): {title}")
    write_seed_table(workdir / "balance_busy", aggregate(busy_rows, ("variant", "busy", "members"), count=seeds > 1),
                     seeds=seeds, title=f"Attention Max/Avg by members with work per PE-group forward (whole run; "
                                        f"head: first {float(config.head_fraction):.0%}): {title}")
    writers.write_table(workdir / "balance_snic", snic_rows)
    writers.write_table(workdir / "balance_attention", attn_rows)
    snic_x, snic_y, snic_err, attn_x, attn_y, attn_err = {}, {}, {}, {}, {}, {}
    for v in config.variants:
        runs = [results[(v, r)][0] for r in range(seeds)]
        snic_y[v], snic_err[v] = band([x["snic"][1] for x in runs])
        snic_x[v] = runs[0]["snic"][0][:len(snic_y[v])]
        attn_y[v], attn_err[v] = band([x["head"] for x in runs])
        attn_x[v] = list(range(len(attn_y[v])))
    plot_panels(workdir / "balance_snic.png", [{
        "title": f"SNIC traffic Max/Avg, {float(config.window_s):g} s windows", "x": snic_x, "series": snic_y,
        "err": snic_err, "band": True, "xlabel": "time (s)", "ylabel": "Max/Avg", "marker": "", "hline": 1.0}],
        ncols=1, title=f"Fig. 13: {title}\n{caption(seeds)}")
    first = {v: results[(v, 0)][0] for v in config.variants}  # the first seed's run over time
    frac = float(config.head_fraction)
    plot_panels(workdir / "balance_attention.png", [{
        "title": f"per PE-group forward, first {frac:.0%} of the forwards",
        "x": attn_x, "series": attn_y, "err": attn_err, "band": True, "xlabel": "forward", "ylabel": "Max/Avg",
        "marker": "", "hline": 1.0}, {
        "title": f"over time, seed {wls[0].seed} (dotted: {frac:.0%} of each JCT)",
        "x": {v: r["early"][0].tolist() for v, r in first.items()},
        "series": {v: r["early"][1].tolist() for v, r in first.items()}, "xlabel": "time (s)",
        "ylabel": "Max/Avg", "marker": "", "hline": 1.0, "vlines": [r["head_time_end_s"] for r in first.values()]}],
        ncols=2, title=f"Fig. 14, attention time Max/Avg: {title}\n{caption(seeds)}")
    writers.write_json(workdir / "balance.json", {"rows": rows, "runs": per_seed, "seeds": seeds,
                                                   "window_s": float(config.window_s)})
    named: dict = {}
    for v in config.variants:
        mine = [x for x in per_seed if x["variant"] == v]
        for key in ("snic_max_avg_mean", "snic_max_avg_loaded_mean", "snic_max_avg_p50", "attn_max_avg_mean",
                    "attn_max_avg_head_mean", "attn_max_avg_head_time_mean", "attn_max_avg_head_time_weighted",
                    "attn_max_avg_head_weighted", "attn_max_avg_weighted", "full_forward_share_head",
                    "attn_max_avg_head_full_mean", "chunks_per_forward"):
            put(named, f"{key}_{v}", [x[key] for x in mine])
    return named


def _balance_runs(specs: list[tuple], cache: RunCache) -> list[tuple[dict, bool]]:
    """``(summary, memoised)`` of :func:`_balance_summary` for every spec: memoised in ``cache``
    under ``("balance", *spec)``, the others computed through ``cache.sweep`` (or in this process)."""
    keys = [("balance", *spec) for spec in specs]
    known, computed = _run_missing(keys, _balance_summary, cache, "balance runs")
    out, seen = [], set()
    for k in keys:
        out.append((computed[k] if known[k] is None else known[k], known[k] is not None or k in seen))
        seen.add(k)
    return out
