"""The simulator ablation of paper Fig. 12 right (Basic, +Layerwise, +DPL, +Sched, Oracle)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dualpath_jax.metrics import writers
from dualpath_jax.sched import scheduler_name
from dualpath_jax.studies.common import cluster_label
from dualpath_jax.studies.config import AblationStudyConfig
from dualpath_jax.studies.plots import plot_ablation
from dualpath_jax.studies.runs import Log, RunCache, offline_runs, ratio
from dualpath_jax.studies.seeds import CI_SUFFIX, aggregate, caption, estimate, offline_seeds, put, seed_workloads
from dualpath_jax.studies.seeds import write_table as write_seed_table

__all__ = ["ablation"]


def ablation(config: AblationStudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 12 right: Basic, +Layerwise, +DPL, +Sched (DualPath) and Oracle (``config.variants``),
    offline, at each of ``config.num_agents`` agents of ``config.workload`` (MAL ``config.mal``; the
    paper's generator or a trace), with ``config.scheduler`` deciding every run; JCT (seconds)
    averaged over the batch sizes. Every run is repeated for ``config.seeds`` workload seeds
    (``config.seed + r``, :mod:`.seeds`); each figure is computed per seed (a speedup is Basic's
    JCT over the variant's within one seed), then its mean and 95% interval over the seeds.

    Writes ``ablation.json`` (per variant: the means and ``_ci95`` half widths of JCT, TTFT p50/p99,
    TTST, TPOT in seconds, speedup, Max/Avg ratios; SNIC bytes per link and JCT and requests per
    agent count averaged over seeds; ``by_seed``: each seed's JCT, speedup and JCT per agent count;
    the workload (seed: the first) and the scheduler's name), ``ablation.md/.csv`` and
    ``ablation.png`` (error bars: 95% intervals) into ``workdir``. Returns the ``name: value``
    figures (mean over seeds, each with ``_ci95``, ``_lo`` and ``_hi``): ``jct_s_<variant>``,
    ``speedup_<variant>_vs_basic``, ``dualpath_over_oracle_jct``. Runs are memoised in ``cache``
    (a fresh one if None), which other studies may share.
    """
    cache = RunCache() if cache is None else cache
    base = config.sim
    variants = list(config.variants)
    wl = config.workload.replace(mal=config.mal, seed=config.seed)
    seeds = offline_seeds(wl, config.seeds)
    wls = seed_workloads(wl, seeds)
    log(f"{base.model} {cluster_label(base)}, kv {base.kv_dtype}, weights {base.weight_dtype} "
        f"({base.peak_flops / 1e12:.0f} TFLOP/s peak), {wl.label}; "
        f"{', '.join(str(n) for n in config.num_agents)} agents; {seeds} seed{'s' if seeds > 1 else ''}")
    keys = [(r, int(n), v) for r in range(seeds) for n in config.num_agents for v in variants]
    runs = offline_runs(base, [(v, wls[r].replace(num_agents=n)) for r, n, v in keys], log,
                        scheduler_cls=config.scheduler, cache=cache)
    res = dict(zip(keys, runs))
    sizes = list(dict.fromkeys(int(n) for n in config.num_agents))
    pe_links = [f"snic_read[{i}]" for i in range(base.prefill_nodes)]
    # per seed: every figure of every variant, averaged over the batch sizes as in the paper
    per_seed: list[dict[str, dict]] = []
    for r in range(seeds):
        mean = lambda v, key, r=r: float(np.mean([res[(r, n, v)][key] for n in sizes]))  # noqa: E731
        seed_rows = {}
        for v in variants:
            snic: dict[str, float] = {}
            for n in sizes:
                for link, b in res[(r, n, v)]["snic_bytes"].items():
                    snic[link] = snic.get(link, 0.0) + b / len(sizes)
            seed_rows[v] = {"jct_s": mean(v, "jct_s"), "ttft_p50_s": mean(v, "ttft_p50_s"),
                            "ttft_p99_s": mean(v, "ttft_p99_s"), "ttst_s": mean(v, "ttst_mean_s"),
                            "tpot_s": mean(v, "tpot_s"), "snic_max_avg": mean(v, "snic_max_avg_mean"),
                            "attention_max_avg": mean(v, "attention_max_avg_mean"), "snic_bytes": snic,
                            "jct_s_by_agents": {str(n): res[(r, n, v)]["jct_s"] for n in sizes},
                            "requests_by_agents": {str(n): res[(r, n, v)]["num_requests"] for n in sizes}}
        basic = seed_rows.get("basic", {}).get("jct_s")
        for v in variants:
            s = seed_rows[v]
            s["speedup_vs_basic"] = ratio(basic, s["jct_s"]) if basic else float("nan")
            s["jct_reduction_vs_basic"] = 1 - 1 / s["speedup_vs_basic"] if basic else None
            s["pe_snic_TB"] = sum(s["snic_bytes"].get(l, 0.0) for l in pe_links) / 1e12
            s["de_snic_TB"] = sum(b for l, b in s["snic_bytes"].items() if l not in pe_links) / 1e12
        per_seed.append(seed_rows)
    summary, rows = {}, []
    figures = ("jct_s", "ttft_p50_s", "ttft_p99_s", "ttst_s", "tpot_s", "snic_max_avg", "attention_max_avg",
               "speedup_vs_basic")
    for v in variants:
        s: dict = {}
        for key in figures:
            e = estimate(p[v][key] for p in per_seed)
            s[key], s[key + CI_SUFFIX] = e.mean, e.half
        links = sorted({l for p in per_seed for l in p[v]["snic_bytes"]})
        s["snic_bytes"] = {l: float(np.mean([p[v]["snic_bytes"].get(l, 0.0) for p in per_seed])) for l in links}
        by_agents = {str(n): estimate(p[v]["jct_s_by_agents"][str(n)] for p in per_seed) for n in sizes}
        s["jct_s_by_agents"] = {n: e.mean for n, e in by_agents.items()}
        s["jct_s_by_agents" + CI_SUFFIX] = {n: e.half for n, e in by_agents.items()}
        s["requests_by_agents"] = {str(n): float(np.mean([p[v]["requests_by_agents"][str(n)] for p in per_seed]))
                                   for n in sizes}
        s["by_seed"] = [{"seed": wls[r].seed, "jct_s": per_seed[r][v]["jct_s"],
                         "speedup_vs_basic": per_seed[r][v]["speedup_vs_basic"],
                         "jct_s_by_agents": per_seed[r][v]["jct_s_by_agents"]} for r in range(seeds)]
        summary[v] = s
        rows += [{"variant": v, **{k: p[v][k] for k in ("jct_s", "jct_reduction_vs_basic", "speedup_vs_basic",
                                                          "ttft_p50_s", "ttft_p99_s", "ttst_s")},
                  "tpot_ms": p[v]["tpot_s"] * 1e3, "pe_snic_TB": p[v]["pe_snic_TB"], "de_snic_TB": p[v]["de_snic_TB"],
                  "snic_max_avg": p[v]["snic_max_avg"], "attn_max_avg": p[v]["attention_max_avg"]} for p in per_seed]
    workdir = Path(workdir)
    writers.write_json(workdir / "ablation.json", {"variants": summary, "tokens_identical": None,
                                                    "num_agents": sizes, "model": base.model,
                                                    "cluster": f"{base.prefill_nodes}P{base.decode_nodes}D",
                                                    "mal": config.mal, "seeds": seeds,
                                                    "workload": {k: v for k, v in dataclasses.asdict(wl).items()
                                                                 if k != "num_agents"},
                                                    "scheduler": scheduler_name(config.scheduler)})
    write_seed_table(workdir / "ablation", aggregate(rows, ("variant",)), seeds=seeds,
                     title=f"Ablation ({base.model}, {base.prefill_nodes}P{base.decode_nodes}D, {wl.label}, agents "
                           f"{sizes}; JCT averaged over the agent counts)")
    plot_ablation(summary, workdir / "ablation.png",
                  title=f"{base.model}, {base.prefill_nodes}P{base.decode_nodes}D, {wl.label}, offline; "
                        f"{caption(seeds)}")
    named: dict = {}
    for v in variants:
        put(named, f"jct_s_{v}", [p[v]["jct_s"] for p in per_seed])
    if "basic" in variants:
        for v in variants:
            if v != "basic":
                put(named, f"speedup_{v}_vs_basic", [p[v]["speedup_vs_basic"] for p in per_seed])
    if "dualpath" in variants and "oracle" in variants:
        put(named, "dualpath_over_oracle_jct", [ratio(p["dualpath"]["jct_s"], p["oracle"]["jct_s"]) for p in per_seed])
    return named
