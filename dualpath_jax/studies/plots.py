"""Plots of the studies (matplotlib with the Agg backend, imported on first use).

* :func:`plot_panels`: a grid of line plots, with 95% error bars or bands.
* :func:`plot_stacked`: stacked bars, with a 95% error bar on each total.
* :func:`plot_ablation`: grouped bars of the ablation's JCT per variant and agent count, with error bars.
* :func:`plot_variant_bars`: grouped bars of a few figures per variant, variants named on the axis.

Error bars are the half widths of the studies' 95% intervals over seeds (:mod:`.seeds`); a NaN half
width (one seed) draws none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dualpath_jax.sched.variants import ABLATION_VARIANTS

__all__ = ["plot_panels", "plot_stacked", "plot_ablation", "plot_variant_bars"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _spread_ticks(xs: Sequence[float], max_ticks: int = 7) -> list[float]:
    """The sorted positive ``xs`` thinned so that ticks on a log axis are at least 1 / ``max_ticks``
    of the axis span apart (the first point is always kept)."""
    logs = [math.log10(v) for v in xs]
    gap = (logs[-1] - logs[0]) / max_ticks
    ticks, last = [], -math.inf
    for v, lv in zip(xs, logs):
        if lv - last >= gap or not ticks:
            ticks.append(v)
            last = lv
    return ticks


def _half_widths(err: Sequence[float] | None, n: int) -> np.ndarray | None:
    """``err`` as f64[n] with NaN (no interval: one seed) as 0; None when there is no finite one."""
    if err is None:
        return None
    e = np.asarray([np.nan if v is None else float(v) for v in err], np.float64)[:n]
    if not np.any(np.isfinite(e) & (e > 0)):
        return None
    return np.nan_to_num(e, nan=0.0)


def plot_panels(path, panels: Sequence[Mapping], *, ncols: int = 3, title: str = "") -> Path:
    """A PNG grid of line plots. Each panel: ``{"title", "x": [...] or {label: [...]},
    "series": {label: [...]}, "err": {label: [...]}, "band", "xlabel", "ylabel", "logx", "logy",
    "hline", "vlines"}``. ``err`` holds each series' 95% half widths (NaN: none, e.g. one seed),
    drawn as error bars, or as a shaded band around the line when ``band`` is true."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(panels), 1)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), dpi=110, squeeze=False)
    try:
        for ax, p in zip(axes.flat, panels):
            for label, y in p["series"].items():
                x = p["x"][label] if isinstance(p["x"], Mapping) else p["x"]
                x, y = list(x), [np.nan if v is None else float(v) for v in y]
                err = _half_widths((p.get("err") or {}).get(label), len(y))
                if err is None:
                    ax.plot(x, y, marker=p.get("marker", "o"), markersize=3, label=label)
                elif p.get("band"):
                    (line,) = ax.plot(x, y, marker=p.get("marker", "o"), markersize=3, label=label)
                    ya = np.asarray(y, np.float64)
                    ax.fill_between(x, ya - err, ya + err, color=line.get_color(), alpha=0.25, linewidth=0)
                else:
                    ax.errorbar(x, y, yerr=err, marker=p.get("marker", "o"), markersize=3, capsize=2,
                                elinewidth=0.8, label=label)
            if p.get("hline") is not None:
                ax.axhline(p["hline"], color="k", linestyle="--", linewidth=0.8)
            for xv in p.get("vlines", ()):
                ax.axvline(xv, color="grey", linestyle=":", linewidth=0.8)
            ax.set_title(p.get("title", ""), fontsize=9)
            ax.set_xlabel(p.get("xlabel", ""), fontsize=8)
            ax.set_ylabel(p.get("ylabel", ""), fontsize=8)
            if p.get("logx"):
                ax.set_xscale("log")
                xs = sorted({float(v) for xv in (p["x"].values() if isinstance(p["x"], Mapping) else [p["x"]])
                             for v in xv if float(v) > 0})
                if xs:  # label data points (not log decades), skipping those too close to read
                    ticks = _spread_ticks(xs)
                    ax.set_xticks(ticks)
                    ax.set_xticklabels([f"{v:.3g}" for v in ticks])
                    ax.xaxis.set_minor_formatter(plt.NullFormatter())
            if p.get("logy"):
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=7)
            if len(p["series"]) > 1:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_stacked(path, labels: Sequence[str], parts: Mapping[str, Sequence[float]], *, xlabel: str = "",
                 ylabel: str = "", title: str = "", total_err: Sequence[float] | None = None) -> Path:
    """A PNG stacked bar chart: one bar per label, one colour per entry of ``parts``;
    ``total_err``: a 95% half width per bar, drawn as an error bar on top of the stack (NaN: none)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 4), dpi=110)
    try:
        bottom = np.zeros(len(labels))
        for name, values in parts.items():
            v = np.nan_to_num(np.asarray(values, np.float64))
            ax.bar(range(len(labels)), v, bottom=bottom, label=name)
            bottom += v
        err = _half_widths(total_err, len(labels))
        if err is not None:
            ax.errorbar(range(len(labels)), bottom, yerr=err, fmt="none", ecolor="k", capsize=3, elinewidth=0.8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=7, rotation=30)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_ablation(summary: dict, path, *, title: str = "") -> Path:
    """Grouped bars: JCT of each variant at each agent count (``summary`` as in ablation.json), with
    95% error bars from ``jct_s_by_agents_ci95`` where the summary has them."""
    plt = _pyplot()
    order = list(ABLATION_VARIANTS)
    variants = sorted(summary, key=lambda v: order.index(v) if v in order else len(order))
    sizes = sorted(summary[variants[0]]["jct_s_by_agents"], key=int)
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=120)
    width = 0.8 / max(len(sizes), 1)
    for i, n in enumerate(sizes):
        xs = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(variants))]
        err = _half_widths([summary[v].get("jct_s_by_agents_ci95", {}).get(n) for v in variants], len(variants))
        ax.bar(xs, [summary[v]["jct_s_by_agents"][n] for v in variants], width, label=f"{n} agents",
               yerr=err, capsize=3 if err is not None else 0)
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


def plot_variant_bars(path, variants: Sequence[str], series: Mapping[str, Sequence[float]], *, ylabel: str = "",
                      title: str = "", errors: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Grouped bars: one group per variant (named on a categorical axis), one bar per entry of
    ``series`` (label -> one value per variant); ``errors``: label -> 95% half width per variant,
    drawn as error bars (NaN: none)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(variants) + 2), 3.6), dpi=120)
    try:
        width = 0.8 / max(len(series), 1)
        for i, (label, values) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(variants))]
            err = _half_widths((errors or {}).get(label), len(variants))
            ax.bar(xs, [float(v) for v in values], width, label=label, yerr=err, capsize=3 if err is not None else 0)
        ax.set_xticks(range(len(variants)), list(variants))
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
