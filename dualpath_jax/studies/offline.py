"""Offline studies of the paper (all agents start at t = 0; the metric is the batch JCT).

* :func:`fig7`  JCT vs agents; rows = models, columns = MALs; Basic / DualPath / Oracle.
* :func:`fig8`  P/D ratio study on DS 27B (1P1D, 2P1D, 1P2D).
* :func:`fig9`  append / generation length scaling on DS 660B.
* :func:`pd_sweep`  a P/D sweep of the storage read rate against the Eq. 9 bound (``sim.analysis``).
* :func:`balance`  Fig. 13 (SNIC traffic Max/Avg over time) and Fig. 14 (attention Max/Avg).

Each takes ``(config, workdir, log, cache=...)``: its typed config (:mod:`.config`, built from
``configs/sim_<name>.py``), the output folder, a log function and an optional :class:`RunCache`;
it writes ``<name>.json``, tables (Markdown + CSV) and PNG plots into ``workdir`` and returns its
``name: value`` headline figures. Every run uses ``config.scheduler``.
The numbers are predictions of the simulator with its public calibration (``sim.compute``); no
parameter is fitted to the paper's results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dualpath_jax.metrics import writers
from dualpath_jax.metrics.records import TransferTable
from dualpath_jax.metrics.traffic import storage_nic_max_avg
from dualpath_jax.sim import analysis
from dualpath_jax.sim.adapters import agents_from_trajectories, snic_transfers
from dualpath_jax.sim.cluster import Simulator
from dualpath_jax.sim.runs import attention_by_busy_members, attention_weighted, offline_starts, variant_config
from dualpath_jax.studies.common import cluster_label, parse_cluster, with_cluster
from dualpath_jax.studies.config import (BalanceStudyConfig, Fig7StudyConfig, Fig8StudyConfig, Fig9StudyConfig,
                                         PdSweepStudyConfig)
from dualpath_jax.studies.plots import plot_panels
from dualpath_jax.studies.runs import Log, RunCache, offline_runs, ratio, scheduler_label

__all__ = ["fig7", "fig8", "fig9", "pd_sweep", "balance"]


def _speedups(results: dict, key_of) -> None:
    """Add ``speedup_vs_basic`` (Basic JCT / JCT) and ``jct_over_oracle`` to every result."""
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


def fig7(config: Fig7StudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 7: offline JCT (seconds) vs number of agents for each model row (``config.rows``)
    and MAL (``config.mals``), one series per variant (``config.variants``). Writes ``fig7.json``,
    ``fig7.md/.csv``, ``fig7.png``; returns the max / mean DualPath speedup over Basic, where the
    max is, and DualPath / Oracle JCT per row."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    results: dict[tuple, dict] = {}
    for rc in config.rows:
        base = rc.sim
        log(f"{rc.label}: {base.model} {cluster_label(base)}, kv {base.kv_dtype}, weights {base.weight_dtype}")
        keys = [(rc.key, mal, int(n), v) for mal in config.mals for n in config.num_agents for v in config.variants]
        runs = [(v, config.workload.replace(mal=mal, num_agents=n)) for _, mal, n, v in keys]
        results.update(zip(keys, offline_runs(base, runs, log, scheduler_cls=config.scheduler, cache=cache)))
    _speedups(results, lambda k, v: (*k[:3], v))
    rows, panels = [], []
    row_order = [rc.key for rc in config.rows]
    for rc in config.rows:
        row, label = rc.key, rc.label
        for mal in config.mals:
            series = {v: [results[(row, mal, int(n), v)]["jct_s"] for n in config.num_agents] for v in config.variants}
            panels.append({"title": f"{label}, MAL {mal}", "x": [int(n) for n in config.num_agents], "series": series,
                           "xlabel": "agents", "ylabel": "JCT (s)", "logx": True})
            for n in config.num_agents:
                for v in config.variants:
                    s = results[(row, mal, int(n), v)]
                    rows.append(_row(s, model=label, cluster=s["cluster"], mal=mal, agents=int(n)))
    writers.write_table(workdir / "fig7", rows, title=f"Fig. 7: offline JCT vs agents ({config.workload.source} "
                        "workload; simulated)")
    plot_panels(workdir / "fig7.png", panels, ncols=len(config.mals), title="Offline JCT (Fig. 7)")
    writers.write_json(workdir / "fig7.json", {"results": [dict(r) for r in rows]})
    named: dict = {}
    if "basic" in config.variants and "dualpath" in config.variants:
        sp = {k[:3]: s["speedup_vs_basic"] for k, s in results.items() if k[3] == "dualpath"}
        best = max(sp, key=lambda k: sp[k] if sp[k] == sp[k] else -1.0)
        named["max_speedup_dualpath_vs_basic"] = sp[best]
        named["max_speedup_at"] = f"{best[0]} {best[1]} {best[2]} agents"
        named["mean_speedup_dualpath_vs_basic"] = _nanmean(sp.values())
        for row in row_order:
            named[f"max_speedup_{row}"] = max(v for k, v in sp.items() if k[0] == row)
    if "oracle" in config.variants and "dualpath" in config.variants:
        for row in row_order:
            named[f"dualpath_over_oracle_jct_{row}"] = _nanmean(
                s["jct_over_oracle"] for k, s in results.items() if k[0] == row and k[3] == "dualpath")
    return named


def fig8(config: Fig8StudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 8: P/D ratio study (``config.clusters``, e.g. 1P1D / 2P1D / 1P2D) at
    ``config.num_agents``, Basic vs DualPath. Writes ``fig8.json``, ``fig8.md/.csv``, ``fig8.png``;
    returns the JCT (seconds) per cluster at the largest batch and DualPath's speedup per cluster."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    keys = [(c, int(n), v) for c in config.clusters for n in config.num_agents for v in config.variants]
    bases = [with_cluster(config.sim, c) for c, _, _ in keys]
    runs = [(v, config.workload.replace(num_agents=n)) for _, n, v in keys]
    results = dict(zip(keys, offline_runs(bases, runs, log, scheduler_cls=config.scheduler, cache=cache)))
    _speedups(results, lambda k, v: (*k[:2], v))
    rows, panels = [], []
    for c in config.clusters:
        p, d = parse_cluster(c)
        panels.append({"title": f"{config.sim.model} {c}", "x": [int(n) for n in config.num_agents], "xlabel": "agents",
                       "ylabel": "JCT (s)", "logx": True,
                       "series": {v: [results[(c, int(n), v)]["jct_s"] for n in config.num_agents]
                                  for v in config.variants}})
        for n in config.num_agents:
            for v in config.variants:
                s = results[(c, int(n), v)]
                rows.append(_row(s, cluster=c, agents=int(n),
                                 agents_per_hour_per_node=int(n) / s["jct_s"] * 3600 / (p + d)))
    writers.write_table(workdir / "fig8", rows, title=f"Fig. 8: P/D ratio study ({config.sim.model}, "
                        f"{config.workload.label}; simulated)")
    plot_panels(workdir / "fig8.png", panels, ncols=len(config.clusters), title="P/D ratio (Fig. 8)")
    writers.write_json(workdir / "fig8.json", {"results": rows})
    named: dict = {}
    top = max(int(n) for n in config.num_agents)
    for c in config.clusters:
        for v in config.variants:
            named[f"jct_s_{v}_{c}_{top}"] = results[(c, top, v)]["jct_s"]
    if "basic" in config.variants and "dualpath" in config.variants:
        for c in config.clusters:
            named[f"speedup_dualpath_vs_basic_{c}_{top}"] = results[(c, top, "dualpath")]["speedup_vs_basic"]
        named["mean_speedup_dualpath_vs_basic"] = _nanmean(
            s["speedup_vs_basic"] for k, s in results.items() if k[2] == "dualpath")
    return named


def fig9(config: Fig9StudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 9: append (``config.scale`` contains "append") and generation ("gen") lengths
    multiplied by each of ``config.factors`` then truncated at the MAL, at ``config.num_agents``.
    Writes ``fig9.json``, ``fig9.md/.csv``, ``fig9.png``; returns DualPath's speedup over Basic per
    scaling and its mean JCT over Oracle's."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    base = config.sim
    keys = [(kind, float(f), v) for kind in config.scale for f in config.factors for v in config.variants]
    runs = [(v, config.workload.replace(num_agents=int(config.num_agents), **{f"{kind}_factor": f}))
            for kind, f, v in keys]
    results = dict(zip(keys, offline_runs(base, runs, log, scheduler_cls=config.scheduler, cache=cache)))
    _speedups(results, lambda k, v: (*k[:2], v))
    rows, panels = [], []
    for kind in config.scale:
        xs = [float(f) for f in config.factors]
        panels.append({"title": f"{kind} length scaled", "x": xs, "xlabel": f"{kind} factor", "ylabel": "JCT (s)",
                       "series": {v: [results[(kind, f, v)]["jct_s"] for f in xs] for v in config.variants}})
        for f in xs:
            for v in config.variants:
                rows.append(_row(results[(kind, f, v)], scaled=kind, factor=f))
    writers.write_table(workdir / "fig9", rows, title=f"Fig. 9: length scaling ({base.model} {cluster_label(base)}, "
                        f"{config.workload.label}, {config.num_agents} agents; simulated)")
    plot_panels(workdir / "fig9.png", panels, ncols=2, title="Append / generation scaling (Fig. 9)")
    writers.write_json(workdir / "fig9.json", {"results": rows})
    named: dict = {}
    for (kind, f, v), s in results.items():
        if v == "dualpath" and "basic" in config.variants:
            named[f"speedup_dualpath_vs_basic_{kind}_x{f:g}"] = s["speedup_vs_basic"]
    if "oracle" in config.variants and "dualpath" in config.variants:
        named["dualpath_over_oracle_jct_mean"] = _nanmean(s["jct_over_oracle"] for k, s in results.items()
                                                          if k[2] == "dualpath")
    return named


def pd_sweep(config: PdSweepStudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """P/D sweep (``config.clusters``): the simulated aggregate storage read rate while at least
    half of the agents run (``snic_read_bytes_per_s_busy`` of :func:`.runs.offline_run`, as a
    fraction of ``(P + D) s B``) of each variant against the Eq. 9 analysis
    (:mod:`dualpath_jax.sim.analysis`): DualPath's even-split fraction ``min(1, 1/max load)``
    and Basic's ``P / (P + D) * min(1, 1 / max load)`` (``analysis.basic_storage_fraction``); both
    with B = the CNIC rate left to KV. ``config.sim`` should make storage the bottleneck (the default
    config: fast compute, one generated token per round). Writes ``pd_sweep.json``,
    ``pd_sweep.md/.csv``, ``pd_sweep.png``; returns the Eq. 9 range and DualPath's simulated
    fraction inside / outside it."""
    workdir = Path(workdir)
    cache = RunCache() if cache is None else cache
    rows = []
    nominal = eff = None
    for c in config.clusters:
        parse_cluster(c, "clusters")
    keys = [(c, v) for c in config.clusters for v in config.variants]
    results = dict(zip(keys, offline_runs([with_cluster(config.sim, c) for c, _ in keys],
                                          [(v, config.workload) for _, v in keys], log,
                                          scheduler_cls=config.scheduler, cache=cache)))
    for c in config.clusters:
        p, d = parse_cluster(c, "clusters")
        base = with_cluster(config.sim, c)
        hw = base.hardware
        nominal, eff = analysis.pd_range_for_hardware(hw), analysis.pd_range_for_hardware(hw, kv_share=True)
        b_eff = hw.cnic_bytes_per_s * hw.cnic_kv_share
        s_eff = hw.node_snic_bytes_per_s / b_eff
        loads = analysis.link_loads(p / d, hw.gpus_per_node, s_eff, hw.dram_bytes_per_s / hw.node_snic_bytes_per_s)
        aggregate = (p + d) * min(hw.node_snic_bytes_per_s, hw.storage_bytes_per_s)
        row = {"cluster": c, "p_over_d": p / d, "in_eq9_range": nominal.contains(p / d),
               "in_eq9_range_kv_share": eff.contains(p / d), "busiest_link": max(loads, key=loads.get),
               "busiest_load": max(loads.values()),
               "bound_dualpath": analysis.even_split_storage_fraction(p / d, hw.gpus_per_node, s_eff,
                                                                       hw.dram_bytes_per_s / hw.node_snic_bytes_per_s),
               "bound_basic": analysis.basic_storage_fraction(p / d, hw.gpus_per_node, s_eff,
                                                              hw.dram_bytes_per_s / hw.node_snic_bytes_per_s)}
        for v in config.variants:
            s = results[(c, v)]
            row[f"sim_{v}"] = s["snic_read_bytes_per_s_busy"] / aggregate
            row[f"jct_s_{v}"] = s["jct_s"]
        if "basic" in config.variants and "dualpath" in config.variants:
            row["speedup_dualpath_vs_basic"] = ratio(row["jct_s_basic"], row["jct_s_dualpath"])
        rows.append(row)
    writers.write_table(workdir / "pd_sweep", rows, title=f"P/D sweep vs the Eq. 9 bound ({config.sim.model}, "
                        f"storage-bound probe workload; fractions of the aggregate SNIC bandwidth)")
    xs = [r["p_over_d"] for r in rows]
    series = {"bound dualpath (Eq. 1-9, even split)": [r["bound_dualpath"] for r in rows],
              "bound basic": [r["bound_basic"] for r in rows]}
    for v in config.variants:
        series[f"sim {v}"] = [r[f"sim_{v}"] for r in rows]
    vl = [x for x in (nominal.lower, nominal.upper) if np.isfinite(x)] if nominal else []
    plot_panels(workdir / "pd_sweep.png", [{"title": "storage read rate / (P+D) s B", "x": xs, "series": series,
                                            "xlabel": "P/D", "ylabel": "fraction", "logx": True, "vlines": vl}],
                ncols=1, title="P/D sweep vs the bottleneck-free range (dotted: Eq. 9)")
    writers.write_json(workdir / "pd_sweep.json", {"rows": rows, "eq9_nominal": nominal, "eq9_kv_share": eff})
    named = {"eq9_lower": nominal.lower, "eq9_upper": nominal.upper, "eq9_lower_kv_share": eff.lower,
             "eq9_upper_kv_share": eff.upper}
    if "dualpath" in config.variants:
        inside = [r["sim_dualpath"] for r in rows if r["in_eq9_range"]]
        outside = [r["sim_dualpath"] for r in rows if not r["in_eq9_range"]]
        named["sim_dualpath_fraction_inside_range_mean"] = _nanmean(inside)
        named["sim_dualpath_fraction_outside_range_mean"] = _nanmean(outside)
        named["max_abs_error_vs_bound_dualpath"] = max(abs(r["sim_dualpath"] - r["bound_dualpath"]) for r in rows)
        best = max(rows, key=lambda r: r["sim_dualpath"])
        named["best_cluster_dualpath"] = best["cluster"]
    return named


def balance(config: BalanceStudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 13-14: storage-NIC traffic Max/Avg across all SNICs in windows of
    ``config.window_s`` and attention-time Max/Avg across the engines of a PE group per forward,
    for each variant (``config.variants``: round-robin "dpl" vs "dualpath", both dual-path
    loading), offline. The attention plot shows the first ``config.head_fraction`` of the
    forwards; ``attn_max_avg_head_weighted`` is their Max/Avg weighted by attention time
    (:func:`attention_weighted`), ``chunks_per_forward`` the batch entries (whole requests or
    chunked-prefill pieces) per PE-unit forward over the run. ``full_forward_share[_head]`` is the
    share of forwards in which every member had attention work and ``attn_max_avg[_head]_full_mean``
    their mean Max/Avg: a member without ready work counts 0 s, so forwards of a partly idle group
    are far from 1 however well the busy members are balanced (``balance_busy.md/.csv`` splits the
    forwards by busy members, :func:`attention_by_busy_members`). Writes ``balance.json``,
    ``balance.md/.csv``, ``balance_busy.md/.csv``, ``balance_snic.csv``, ``balance_attention.csv``,
    ``balance_snic.png``, ``balance_attention.png``; returns those figures per variant. Its runs
    keep their full results (not memoised: ``cache`` is accepted for a uniform signature)."""
    del cache
    workdir = Path(workdir)
    base = config.sim
    wl = config.workload.replace(num_agents=int(config.num_agents))
    ts = wl.build()
    agents = agents_from_trajectories(ts, offline_starts(ts))
    rows, snic_series, attn_series, snic_rows, attn_rows, busy_rows = [], {}, {}, [], [], []
    for v in config.variants:
        cfg = variant_config(base, v)
        res = Simulator(cfg, agents, scheduler_cls=config.scheduler).run()
        links, starts, finishes, sizes = snic_transfers(res)
        tt = TransferTable(link=np.asarray(links, dtype=object), start_s=starts, finish_s=finishes, num_bytes=sizes,
                           path=np.asarray(["storage_read"] * len(starts), dtype=object))
        t, snic = storage_nic_max_avg(tt, sorted(res.snic_samples), float(config.window_s), start_s=0.0,
                                      end_s=res.end_s) if len(starts) else (np.zeros(0), np.zeros(0))
        attn = np.asarray(res.attention_ratio, np.float64)
        n_head = max(1, int(np.ceil(len(attn) * float(config.head_fraction))))
        head = attn[:n_head] if attn.size else attn
        pe_forwards = int(res.units["pe_forwards"].sum())  # of PE units (groups with ep_sync, else engines)
        chunks = float(res.units["pe_batch_requests"].sum())  # whole requests and chunked-prefill pieces
        finite = snic[np.isfinite(snic)]
        stat = lambda a, f: float(f(a)) if a.size else float("nan")  # noqa: E731
        full = res.attention_members[:, 0] == res.attention_members[:, 1]  # every member had attention work
        p90 = lambda a: np.percentile(a, 90)  # noqa: E731
        rows.append({"variant": v, "jct_s": res.end_s, "snic_max_avg_mean": stat(finite, np.mean),
                     "snic_max_avg_p50": stat(finite, np.median), "snic_max_avg_p90": stat(finite, p90),
                     "attn_max_avg_mean": stat(attn, np.mean), "attn_max_avg_head_mean": stat(head, np.mean),
                     "attn_max_avg_head_weighted": attention_weighted(res, n_head),
                     "attn_max_avg_weighted": attention_weighted(res),
                     "attn_max_avg_p90": stat(attn, p90), "forwards": int(attn.size),
                     "full_forward_share": stat(full, np.mean), "full_forward_share_head": stat(full[:n_head], np.mean),
                     "attn_max_avg_full_mean": stat(attn[full], np.mean),
                     "attn_max_avg_head_full_mean": stat(head[full[:n_head]], np.mean),
                     "chunks_per_forward": chunks / pe_forwards if pe_forwards else float("nan")})
        log(f"  {v + scheduler_label(config.scheduler):9s} JCT {res.end_s:8.1f} s  SNIC Max/Avg mean "
            f"{rows[-1]['snic_max_avg_mean']:.3f}  attention Max/Avg mean {rows[-1]['attn_max_avg_mean']:.3f}")
        head_rows = {(r["busy"], r["members"]): r for r in attention_by_busy_members(res, n_head)}
        for r in attention_by_busy_members(res):
            h = head_rows.get((r["busy"], r["members"]), {"forwards": 0, "max_avg_mean": float("nan")})
            busy_rows.append({"variant": v, **r, "head_forwards": h["forwards"], "head_max_avg_mean": h["max_avg_mean"]})
        snic_series[v] = (t, snic)
        attn_series[v] = head
        snic_rows += [{"variant": v, "window_start_s": float(a), "snic_max_avg": float(b)} for a, b in zip(t, snic)]
        attn_rows += [{"variant": v, "forward": i, "attention_max_avg": float(b)} for i, b in enumerate(head)]
    title = f"{base.model} {cluster_label(base)}, {wl.label}, {wl.num_agents} agents"
    writers.write_table(workdir / "balance", rows, title=f"Load balance (Fig. 13-14): {title}")
    writers.write_table(workdir / "balance_busy", busy_rows,
                        title=f"Attention Max/Avg by members with work per PE-group forward (whole run; head: first "
                              f"{float(config.head_fraction):.0%}): {title}")
    writers.write_table(workdir / "balance_snic", snic_rows)
    writers.write_table(workdir / "balance_attention", attn_rows)
    plot_panels(workdir / "balance_snic.png", [{
        "title": f"SNIC traffic Max/Avg, {float(config.window_s):g} s windows",
        "x": {v: a[0] for v, a in snic_series.items()},
        "series": {v: a[1] for v, a in snic_series.items()}, "xlabel": "time (s)", "ylabel": "Max/Avg", "marker": "",
        "hline": 1.0}], ncols=1, title=f"Fig. 13: {title}")
    plot_panels(workdir / "balance_attention.png", [{
        "title": f"attention time Max/Avg per PE-group forward (first {float(config.head_fraction):.0%})",
        "x": {v: list(range(len(a))) for v, a in attn_series.items()}, "series": attn_series, "xlabel": "forward",
        "ylabel": "Max/Avg", "marker": "", "hline": 1.0}], ncols=1, title=f"Fig. 14: {title}")
    writers.write_json(workdir / "balance.json", {"rows": rows, "window_s": float(config.window_s)})
    named = {}
    for r in rows:
        named[f"snic_max_avg_mean_{r['variant']}"] = r["snic_max_avg_mean"]
        named[f"snic_max_avg_p50_{r['variant']}"] = r["snic_max_avg_p50"]
        named[f"attn_max_avg_mean_{r['variant']}"] = r["attn_max_avg_mean"]
        named[f"attn_max_avg_head_mean_{r['variant']}"] = r["attn_max_avg_head_mean"]
        named[f"attn_max_avg_head_weighted_{r['variant']}"] = r["attn_max_avg_head_weighted"]
        named[f"attn_max_avg_weighted_{r['variant']}"] = r["attn_max_avg_weighted"]
        named[f"full_forward_share_head_{r['variant']}"] = r["full_forward_share_head"]
        named[f"attn_max_avg_head_full_mean_{r['variant']}"] = r["attn_max_avg_head_full_mean"]
        named[f"chunks_per_forward_{r['variant']}"] = r["chunks_per_forward"]
    return named
