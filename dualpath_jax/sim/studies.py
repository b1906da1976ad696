"""The paper's simulator studies as importable functions (one per figure / table).

Each study takes an ``ml_collections.ConfigDict`` (see ``configs/sim_*.py``), a workdir and a log
function, writes its table (Markdown + CSV), plot (PNG) and JSON to the workdir, and returns the
headline figures as an ordered ``{name: value}`` dict that the entry point prints last.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from dualpath_jax.config import from_mapping
from dualpath_jax.metrics import writers
from dualpath_jax.sched.variants import ABLATION_VARIANTS
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.experiment import paper_workload, run_offline
from dualpath_jax.sim.hardware import HardwareConfig

__all__ = ["STUDIES", "sim_config_from", "ablation"]


def sim_config_from(config) -> SimConfig:
    """The :class:`SimConfig` described by ``config.sim`` (a ConfigDict or dict)."""
    sim = dict(config.sim.to_dict() if hasattr(config.sim, "to_dict") else config.sim)
    hw = sim.pop("hardware", {}) or {}
    return from_mapping(SimConfig, {**sim, "hardware": from_mapping(HardwareConfig, hw, prefix="sim.hardware.")},
                        prefix="sim.")


def ablation(config, workdir: Path, log: Callable[[str], None] = print) -> dict:
    """Fig. 12 right: Basic, +Layerwise, +DPL, +Sched (DualPath) and Oracle, offline, at the
    paper's batch sizes; JCT averaged over the batch sizes; writes ``ablation.json``."""
    base = sim_config_from(config)
    variants = list(config.variants)
    per_size: dict[int, dict] = {}
    for n in config.num_agents:
        ts = paper_workload(config.mal, int(n), seed=config.seed)
        log(f"{base.model} {base.prefill_nodes}P{base.decode_nodes}D, MAL {config.mal}, {n} agents "
            f"({int(ts.round_offsets[-1])} requests)")
        per_size[int(n)] = run_offline(base, ts, variants, log=log)
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
                      "jct_s_by_agents": {str(n): per_size[n][v]["jct_s"] for n in per_size}}
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
                                                    "mal": config.mal})
    writers.write_table(workdir / "ablation", rows, title=f"Ablation ({base.model}, {base.prefill_nodes}P"
                        f"{base.decode_nodes}D, MAL {config.mal}, agents {list(per_size)}; JCT averaged)")
    plot_ablation(summary, workdir / "ablation.png",
                  title=f"{base.model}, {base.prefill_nodes}P{base.decode_nodes}D, MAL {config.mal}, offline")
    named = {f"jct_s_{v}": summary[v]["jct_s"] for v in variants}
    for v in variants:
        if v != "basic" and basic_jct:
            named[f"speedup_{v}_vs_basic"] = summary[v]["speedup_vs_basic"]
    if "dualpath" in summary and "oracle" in summary:
        named["dualpath_over_oracle_jct"] = summary["dualpath"]["jct_s"] / summary["oracle"]["jct_s"]
    return named


def plot_ablation(summary: dict, path, *, title: str = "") -> Path:
    """Grouped bars: JCT of each variant at each agent count (``summary`` as in ablation.json)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(ABLATION_VARIANTS)
    variants = sorted(summary, key=lambda v: order.index(v) if v in order else len(order))
    sizes = sorted(summary[variants[0]]["jct_s_by_agents"], key=int)
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=120)
    width = 0.8 / max(len(sizes), 1)
    for i, n in enumerate(sizes):
        xs = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(variants))]
        ax.bar(xs, [summary[v]["jct_s_by_agents"][n] for v in variants], width, label=f"{n} agents")
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("JCT (s)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


STUDIES = {"ablation": ablation}

from dualpath_jax.sim.studies_paper import PAPER_STUDIES  # noqa: E402  (the other figures and tables)

STUDIES.update(PAPER_STUDIES)
