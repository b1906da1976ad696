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
from dualpath_jax.studies.runs import Log, RunCache, offline_runs

__all__ = ["ablation"]


def ablation(config: AblationStudyConfig, workdir: Path, log: Log = print, *, cache: RunCache | None = None) -> dict:
    """Paper Fig. 12 right: Basic, +Layerwise, +DPL, +Sched (DualPath) and Oracle (``config.variants``),
    offline, at each of ``config.num_agents`` agents of ``config.workload`` (MAL ``config.mal``; the
    paper's generator or a trace), with ``config.scheduler`` deciding every run; JCT (seconds)
    averaged over the batch sizes.

    Writes ``ablation.json`` (per variant: JCT, TTFT p50/p99, TTST, TPOT in seconds, SNIC bytes per
    link, Max/Avg ratios, JCT and requests per agent count; the workload and the scheduler's name),
    ``ablation.md/.csv`` and ``ablation.png`` into ``workdir``. Returns the ``name: value`` figures: ``jct_s_<variant>``,
    ``speedup_<variant>_vs_basic``, ``dualpath_over_oracle_jct``. Runs are memoised in ``cache``
    (a fresh one if None), which other studies may share.
    """
    cache = RunCache() if cache is None else cache
    base = config.sim
    variants = list(config.variants)
    per_size: dict[int, dict] = {}
    wl = config.workload.replace(mal=config.mal, seed=config.seed)
    log(f"{base.model} {cluster_label(base)}, {wl.label}, {', '.join(str(n) for n in config.num_agents)} agents")
    keys = [(int(n), v) for n in config.num_agents for v in variants]
    runs = offline_runs(base, [(v, wl.replace(num_agents=n)) for n, v in keys], log, scheduler_cls=config.scheduler,
                        cache=cache)
    for (n, v), s in zip(keys, runs):
        per_size.setdefault(n, {})[v] = s
    rows, summary = [], {}
    basic_jct = None
    for v in variants:
        jcts = [per_size[n][v]["jct_s"] for n in per_size]
        mean = lambda key: float(np.mean([per_size[n][v][key] for n in per_size]))  # noqa: E731
        snic = {}
        for n in per_size:
            for link, b in per_size[n][v]["snic_bytes"].items():
                snic[link] = snic.get(link, 0.0) + b / len(per_size)
        summary[v] = {"jct_s": float(np.mean(jcts)), "ttft_p50_s": mean("ttft_p50_s"), "ttft_p99_s": mean("ttft_p99_s"),
                      "ttst_s": mean("ttst_mean_s"), "tpot_s": mean("tpot_s"), "snic_bytes": snic,
                      "snic_max_avg": mean("snic_max_avg_mean"), "attention_max_avg": mean("attention_max_avg_mean"),
                      "jct_s_by_agents": {str(n): per_size[n][v]["jct_s"] for n in per_size},
                      "requests_by_agents": {str(n): per_size[n][v]["num_requests"] for n in per_size}}
        if v == "basic":
            basic_jct = summary[v]["jct_s"]
    for v in variants:
        s = summary[v]
        s["speedup_vs_basic"] = basic_jct / s["jct_s"] if basic_jct else float("nan")
        pe_links = [f"snic_read[{i}]" for i in range(base.prefill_nodes)]
        rows.append({"variant": v, "jct_s": s["jct_s"], "jct_reduction_vs_basic": 1 - 1 / s["speedup_vs_basic"]
                     if basic_jct else None, "speedup_vs_basic": s["speedup_vs_basic"], "ttft_p50_s": s["ttft_p50_s"],
                     "ttft_p99_s": s["ttft_p99_s"], "ttst_s": s["ttst_s"], "tpot_ms": s["tpot_s"] * 1e3,
                     "pe_snic_TB": sum(s["snic_bytes"].get(l, 0.0) for l in pe_links) / 1e12,
                     "de_snic_TB": sum(b for l, b in s["snic_bytes"].items() if l not in pe_links) / 1e12,
                     "snic_max_avg": s["snic_max_avg"], "attn_max_avg": s["attention_max_avg"]})
    workdir = Path(workdir)
    writers.write_json(workdir / "ablation.json", {"variants": summary, "tokens_identical": None,
                                                    "num_agents": list(per_size), "model": base.model,
                                                    "cluster": f"{base.prefill_nodes}P{base.decode_nodes}D",
                                                    "mal": config.mal,
                                                    "workload": {k: v for k, v in dataclasses.asdict(wl).items()
                                                                 if k != "num_agents"},
                                                    "scheduler": scheduler_name(config.scheduler)})
    writers.write_table(workdir / "ablation", rows, title=f"Ablation ({base.model}, {base.prefill_nodes}P"
                        f"{base.decode_nodes}D, {wl.label}, agents {list(per_size)}; JCT averaged)")
    plot_ablation(summary, workdir / "ablation.png",
                  title=f"{base.model}, {base.prefill_nodes}P{base.decode_nodes}D, {wl.label}, offline")
    named = {f"jct_s_{v}": summary[v]["jct_s"] for v in variants}
    for v in variants:
        if v != "basic" and basic_jct:
            named[f"speedup_{v}_vs_basic"] = summary[v]["speedup_vs_basic"]
    if "dualpath" in summary and "oracle" in summary:
        named["dualpath_over_oracle_jct"] = summary["dualpath"]["jct_s"] / summary["oracle"]["jct_s"]
    return named
