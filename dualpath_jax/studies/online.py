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
others, whose max APS is a lower bound).

Each study takes its typed config (:mod:`.config`), the output folder, a log function and an
optional :class:`RunCache` (shared runs: the TTFT breakdown and the working set reuse the online
study's); every run uses ``config.scheduler``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dualpath_jax.metrics import writers
from dualpath_jax.metrics.latency import max_aps_under_slo
from dualpath_jax.sim import analysis
from dualpath_jax.studies.common import cluster_label, with_cluster
from dualpath_jax.studies.config import (OnlineRow, OnlineStudyConfig, Table3StudyConfig, TtftBreakdownStudyConfig,
                                         WorkingSetStudyConfig)
from dualpath_jax.studies.plots import plot_panels, plot_stacked
from dualpath_jax.studies.runs import TTFT_COMPONENTS, Log, RunCache, offline_runs, online_run, ratio

__all__ = ["online", "ttft_breakdown", "working_set", "table3"]


def _curve_row(row_label: str, run) -> dict:
    s = run.stats
    return {"model": row_label, "variant": run.variant, "aps": run.aps, "ttft_mean_s": s["ttft_mean_s"],
            "ttft_p99_s": s["ttft_p99_s"], "ttst_mean_s": s["ttst_mean_s"], "tpot_mean_ms": s["tpot_mean_s"] * 1e3,
            "tpot_p99_ms": s["tpot_p99_s"] * 1e3, "completion_mean_s": s["completion_mean_s"],
            "agents": run.stats.get("num_agents"), "requests": s["num_requests"]}


def _online(config, row_window, base, v: str, aps: float, log: Log | None, cache: RunCache):
    """One online run of a study at ``aps`` (``row_window``: how the run is sized)."""
    return online_run(base, v, row_window.workload(config.workload, aps), aps, config.arrival_seed, log,
                      warmup_s=row_window.warmup_s, scheduler_cls=config.scheduler, cache=cache)


def online(config: OnlineStudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 10/11 for each model row (``config.rows``: label, SimConfig, APS grid, the
    search's first rate and the run window) and variant. The curves hold the grid and every rate
    the max-APS search (``metrics.latency.max_aps_under_slo`` with ``config.slo`` and
    ``config.search``) evaluated; runs are memoised in ``cache`` (a fresh one if None), so the
    search reuses the grid. Writes ``online.json``, ``online_curves.md/.csv``,
    ``online_max_aps.md/.csv``, ``online_latency.png``, ``online_completion.png``; returns the max
    APS (agents/s) per row and variant, DualPath's gain over Basic and its ratio to Oracle."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    slo, search = config.slo, config.search
    wl = config.workload
    curves, max_rows, trials = [], [], {}
    found: dict[tuple, float] = {}
    lat_panels, comp_panels = [], []
    for rc in config.rows:
        row, base = rc.key, rc.sim

        def run(v, a, log=log, rc: OnlineRow = rc):
            return _online(config, rc.window, rc.sim, v, a, log, cache)

        log(f"{rc.label}: {base.model} {cluster_label(base)}, {rc.window.describe(wl)}")
        per_variant = {}
        for v in config.variants:
            rates = set(rc.aps_grid)
            for a in sorted(rates):
                run(v, a)
            if search.enabled:
                res = max_aps_under_slo(lambda a, v=v: run(v, a).table, slo, initial_aps=float(rc.initial_aps),
                                        min_aps=search.min_aps, max_aps=search.max_aps, rel_tol=search.rel_tol,
                                        max_runs=search.max_runs)
                found[(row, v)] = res.aps
                trials[f"{row}/{v}"] = res.trials
                rates |= {t.aps for t in res.trials}
                max_rows.append({"row": row, "model": rc.label, "variant": v, "max_aps": res.aps,
                                 "bracketed": res.bracketed, "runs": len(res.trials)})
                log(f"  {v}: max APS under SLO {res.aps:.4g} ({'bracketed' if res.bracketed else 'NOT bracketed'}, "
                    f"{len(res.trials)} runs)")
            per_variant[v] = [run(v, a, None) for a in sorted(rates)]
            curves += [_curve_row(rc.label, r) for r in per_variant[v]]
        x = {v: [r.aps for r in runs] for v, runs in per_variant.items()}

        def series(key, k=1.0, per_variant=per_variant):
            return {v: [r.stats[key] * k for r in runs] for v, runs in per_variant.items()}

        lat_panels += [
            {"title": f"{rc.label}: TTFT", "x": x, "series": series("ttft_mean_s"), "xlabel": "APS",
             "ylabel": "mean TTFT (s)", "hline": slo.ttft_s, "logx": True},
            {"title": f"{rc.label}: TTST", "x": x, "series": series("ttst_mean_s"), "xlabel": "APS",
             "ylabel": "mean TTST (s)", "logx": True},
            {"title": f"{rc.label}: TPOT", "x": x, "series": series("tpot_mean_s", 1e3), "xlabel": "APS",
             "ylabel": "mean TPOT (ms)", "hline": slo.tpot_s * 1e3, "logx": True}]
        comp_panels.append({"title": rc.label, "x": x, "series": series("completion_mean_s"), "xlabel": "APS",
                            "ylabel": "mean trajectory completion (s)", "logx": True})
    for r in max_rows:  # ratios of raw search results; see ``bracketed`` before reading them
        r["gain_vs_basic"] = ratio(r["max_aps"], found.get((r["row"], "basic"), float("nan")))
        r["over_oracle"] = ratio(r["max_aps"], found.get((r["row"], "oracle"), float("nan")))
    writers.write_table(workdir / "online_curves", curves, title=f"Online serving vs APS ({wl.label}; horizon and "
                        "warm-up per model in config.json; simulated)")
    writers.write_table(workdir / "online_max_aps", max_rows, title=f"Max APS under SLO (mean TTFT <= {slo.ttft_s:g} s,"
                        f" mean TPOT <= {slo.tpot_s * 1e3:g} ms; simulated)")
    plot_panels(workdir / "online_latency.png", lat_panels, ncols=3, title="Online latency vs APS (Fig. 10/11)")
    plot_panels(workdir / "online_completion.png", comp_panels, ncols=len(comp_panels),
                title="Trajectory completion time vs APS")
    writers.write_json(workdir / "online.json", {"curves": curves, "max_aps": max_rows, "trials": trials, "slo": slo})
    # a search that never failed gives a lower bound: a ratio is exact only when both ends are bracketed
    bracketed = {(r["row"], r["variant"]): r["bracketed"] for r in max_rows}
    named: dict = {}
    gains = []
    for row in (rc.key for rc in config.rows):
        for v in config.variants:
            if (row, v) in found:
                named[f"max_aps_{row}_{v}"] = found[(row, v)]
        for num, den, key in (("dualpath", "basic", f"aps_gain_{row}_dualpath_vs_basic"),
                              ("dualpath", "oracle", f"dualpath_over_oracle_aps_{row}")):
            if (row, num) not in found or (row, den) not in found:
                continue
            value = ratio(found[(row, num)], found[(row, den)])
            if bracketed[(row, num)] and bracketed[(row, den)]:
                named[key] = value
                if den == "basic":
                    gains.append(value)
            elif bracketed[(row, den)]:
                named[f"{key}_at_least"] = value  # numerator unbracketed: its max APS is a lower bound
            else:
                named[key] = float("nan")
    named["mean_aps_gain_dualpath_vs_basic"] = float(np.mean(gains)) if gains else float("nan")
    named["unbracketed_searches"] = sum(1 for r in max_rows if not r["bracketed"])
    return named


def ttft_breakdown(config: TtftBreakdownStudyConfig, workdir: Path, log: Log = print, *,
                   cache: RunCache | None = None) -> dict:
    """Paper Fig. 12 left: mean TTFT components (:func:`.runs.ttft_components`, seconds) vs APS
    (``config.aps_grid``) for each of ``config.variants``. Writes ``ttft_breakdown.json``,
    ``ttft_breakdown.md/.csv`` and ``ttft_breakdown_<variant>.png``; returns the mean TTFT and
    each component's share at the highest APS."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    base = config.sim
    wl = config.workload
    rows = []
    for v in config.variants:
        runs = [_online(config, config.window, base, v, a, log, cache) for a in config.aps_grid]
        for r in runs:
            row = {"variant": v, "aps": r.aps, "ttft_mean_s": r.stats["ttft_mean_s"]}
            for c in TTFT_COMPONENTS:
                row[c] = r.stats[f"{c}_mean"]
            rows.append(row)
        plot_stacked(workdir / f"ttft_breakdown_{v}.png", [f"{r.aps:g}" for r in runs],
                     {c: [r.stats[f"{c}_mean"] for r in runs] for c in TTFT_COMPONENTS}, xlabel="APS",
                     ylabel="mean TTFT (s)", title=f"TTFT breakdown, {v} ({base.model} {cluster_label(base)})")
    writers.write_table(workdir / "ttft_breakdown", rows, title=f"TTFT breakdown vs APS ({base.model} "
                        f"{cluster_label(base)}, {config.window.describe(wl)}; simulated)")
    writers.write_json(workdir / "ttft_breakdown.json", {"rows": rows, "components": TTFT_COMPONENTS})
    named: dict = {}
    for v in config.variants:
        top = max((r for r in rows if r["variant"] == v), key=lambda r: r["aps"])
        named[f"ttft_mean_s_{v}_at_aps_{top['aps']:g}"] = top["ttft_mean_s"]
        for c in TTFT_COMPONENTS:
            named[f"share_{c[:-2]}_{v}_at_aps_{top['aps']:g}"] = ratio(top[c], top["ttft_mean_s"])
    return named


def working_set(config: WorkingSetStudyConfig, workdir: Path, log: Log = print, *,
                cache: RunCache | None = None) -> dict:
    """Paper section 8.2: working set ``APS x mean completion x mean total / 2 x KV bytes/token``
    (``sim.analysis.working_set_bytes``) from online runs at ``config.aps_grid``, beside the
    simulated time-averaged hit KV of live agents over the measured window (warm-up to last
    arrival) and the cluster's DRAM buffer. Writes ``working_set.json``, ``working_set.md/.csv``,
    ``working_set.png``; returns the working set and the simulated live KV (GB) at the highest
    APS and the working set per APS."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    base = config.sim
    wl = config.workload
    dram = (base.prefill_nodes + base.decode_nodes) * base.hardware.dram_buffer_bytes
    rows = []
    for v in config.variants:
        for a in config.aps_grid:
            s = _online(config, config.window, base, v, a, log, cache).stats
            ws = analysis.working_set_bytes(float(a), s["completion_mean_s"], s["mean_total_tokens"],
                                            s["kv_bytes_per_token"])
            rows.append({"variant": v, "aps": float(a), "completion_mean_s": s["completion_mean_s"],
                         "mean_total_tokens": s["mean_total_tokens"], "kv_bytes_per_token": s["kv_bytes_per_token"],
                         "live_agents_est": float(a) * s["completion_mean_s"], "working_set_GB": ws / 1e9,
                         "sim_live_kv_GB": s["live_kv_bytes"] / 1e9, "working_set_over_cluster_dram": ws / dram})
    writers.write_table(workdir / "working_set", rows, title=f"Working set vs APS ({base.model} {cluster_label(base)},"
                        f" {wl.label}; estimate of paper section 8.2 from simulated completion times)")
    x = {v: [r["aps"] for r in rows if r["variant"] == v] for v in config.variants}
    series = {f"estimate {v}": [r["working_set_GB"] for r in rows if r["variant"] == v] for v in config.variants}
    series.update({f"sim live KV {v}": [r["sim_live_kv_GB"] for r in rows if r["variant"] == v]
                   for v in config.variants})
    plot_panels(workdir / "working_set.png", [{"title": "working set", "x": {k: x[k.split()[-1]] for k in series},
                                               "series": series, "xlabel": "APS", "ylabel": "GB", "logx": True,
                                               "hline": dram / 1e9}],
                ncols=1, title="Working set vs APS (dashed: cluster DRAM buffer)")
    writers.write_json(workdir / "working_set.json", {"rows": rows, "cluster_dram_buffer_bytes": dram})
    named: dict = {}
    for v in config.variants:
        vr = [r for r in rows if r["variant"] == v]
        top = max(vr, key=lambda r: r["aps"])
        named[f"working_set_GB_{v}_at_aps_{top['aps']:g}"] = top["working_set_GB"]
        named[f"sim_live_kv_GB_{v}_at_aps_{top['aps']:g}"] = top["sim_live_kv_GB"]
        named[f"working_set_GB_per_aps_{v}"] = float(np.mean([r["working_set_GB"] / r["aps"] for r in vr]))
    return named


def table3(config: Table3StudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Table 3: offline JCT of ``config.offline_cases`` (``(cluster, agents)``) and online
    mean TTFT / TTST / TPOT of ``config.online_cases`` (``(cluster, aps, agents)``) for each of
    ``config.variants``. Writes ``table3.json``, ``table3.md/.csv``, ``table3.png``; returns the
    JCT per offline case, the large / small JCT ratio and TTFT / TTST / TPOT per online case."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    rows = []
    keys = [(cluster, int(n), v) for cluster, n in config.offline_cases for v in config.variants]
    offline = offline_runs([with_cluster(config.sim, c, "offline_cases") for c, _, _ in keys],
                           [(v, config.workload.replace(num_agents=n)) for _, n, v in keys], log,
                           scheduler_cls=config.scheduler, cache=cache)
    for (cluster, n, v), s in zip(keys, offline):
        base = with_cluster(config.sim, cluster, "offline_cases")
        gpus = (base.prefill_nodes + base.decode_nodes) * base.hardware.gpus_per_node
        rows.append({"mode": "offline", "cluster": cluster, "gpus": gpus,
                     "agents": int(n), "aps": None, "variant": v, "jct_s": s["jct_s"],
                     "ttft_mean_s": s["ttft_mean_s"], "ttst_mean_s": s["ttst_mean_s"], "tpot_ms": s["tpot_s"] * 1e3,
                     "wall_s": s["wall_s"]})
    for cluster, aps, n in config.online_cases:
        base = with_cluster(config.sim, cluster, "online_cases")
        gpus = (base.prefill_nodes + base.decode_nodes) * base.hardware.gpus_per_node
        for v in config.variants:
            s = online_run(base, v, config.workload.replace(num_agents=n), aps, config.arrival_seed, log,
                           scheduler_cls=config.scheduler, cache=cache).stats
            rows.append({"mode": "online", "cluster": cluster, "gpus": gpus,
                         "agents": int(n), "aps": float(aps), "variant": v, "jct_s": None,
                         "ttft_mean_s": s["ttft_mean_s"], "ttst_mean_s": s["ttst_mean_s"],
                         "tpot_ms": s["tpot_mean_s"] * 1e3, "wall_s": s["wall_s"]})
    writers.write_table(workdir / "table3", rows, title=f"Table 3: scale-out ({config.sim.model}, "
                        f"{config.workload.label}; simulated)")
    off = [r for r in rows if r["mode"] == "offline"]
    on = [r for r in rows if r["mode"] == "online"]
    panels = []
    for v in config.variants:
        panels.append({"title": f"offline JCT ({v})", "x": [r["gpus"] for r in off if r["variant"] == v],
                       "series": {"JCT (s)": [r["jct_s"] for r in off if r["variant"] == v]}, "xlabel": "GPUs",
                       "ylabel": "s", "logx": True})
        panels.append({"title": f"online latency ({v})", "x": [r["gpus"] for r in on if r["variant"] == v],
                       "series": {"TTFT (s)": [r["ttft_mean_s"] for r in on if r["variant"] == v],
                                  "TTST (s)": [r["ttst_mean_s"] for r in on if r["variant"] == v],
                                  "TPOT (s)": [r["tpot_ms"] / 1e3 for r in on if r["variant"] == v]},
                       "xlabel": "GPUs", "ylabel": "s", "logx": True})
    plot_panels(workdir / "table3.png", panels, ncols=2, title="Scale-out (Table 3)")
    writers.write_json(workdir / "table3.json", {"rows": rows})
    named: dict = {}
    for v in config.variants:
        jct = [r for r in off if r["variant"] == v]
        for r in jct:
            named[f"jct_s_{r['cluster']}_{r['agents']}_{v}"] = r["jct_s"]
        if len(jct) >= 2:
            named[f"jct_ratio_large_over_small_{v}"] = ratio(jct[-1]["jct_s"], jct[0]["jct_s"])
        for r in (r for r in on if r["variant"] == v):
            tag = f"{r['cluster']}_{r['aps']:g}aps_{v}"
            named[f"ttft_s_{tag}"] = r["ttft_mean_s"]
            named[f"ttst_s_{tag}"] = r["ttst_mean_s"]
            named[f"tpot_ms_{tag}"] = r["tpot_ms"]
    return named
