"""Shared machinery of the paper's simulator studies (:mod:`.studies_offline`, :mod:`.studies_online`).

* :class:`WorkloadSpec`: one workload of the paper's generator (PAPER.md section 6.2) with the
  Fig. 9 length scaling and an optional token divisor (tiny test workloads); hashable.
* :func:`sim_config`: a :class:`SimConfig` from layered mappings (study base + row overrides);
  errors name the field (``sim.<field>`` / ``sim.hardware.<field>``).
* :func:`offline_run` / :func:`online_run`: one simulated run reduced to the studies' metrics.
  Both are memoised on ``(SimConfig, WorkloadSpec, APS, seed)`` (a bounded LRU table), so studies
  run in one process (``experiments/reproduce_paper.py``) share identical runs: the online study,
  the TTFT breakdown and the working set read the same runs, and the max-APS search reuses the
  APS grid. The simulator is deterministic, so a memoised result equals a fresh one.
* Plot helpers (matplotlib Agg, imported lazily): panels of lines and stacked bars.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from dualpath_jax.config import ConfigError, argv_flag_values, check_in, check_positive, from_mapping
from dualpath_jax.metrics import latency
from dualpath_jax.metrics.records import RequestTable
from dualpath_jax.model import cost
from dualpath_jax.sim.adapters import agents_from_trajectories, request_table
from dualpath_jax.sim.cluster import Simulator
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.experiment import offline_starts, online_starts, summarize, variant_config
from dualpath_jax.sim.hardware import HardwareConfig
from dualpath_jax.workload import MAL_TOKENS, TrajectorySet, paper_dataset, scale_lengths, scale_tokens

__all__ = ["WorkloadSpec", "workload_for", "online_workload", "online_warmup_s", "sim_config", "per_run_sim_fields",
           "check_sim_overrides", "cluster_label", "parse_cluster", "offline_run", "OnlineRun", "online_run",
           "ttft_components", "mean_total_tokens", "clear_cache", "ratio", "plot_panels", "plot_stacked", "Log",
           "as_dict", "TTFT_COMPONENTS"]

Log = Callable[[str], None]

TTFT_COMPONENTS = ("schedule_s", "read_wait_s", "read_transfer_s", "prefill_queue_s", "prefill_compute_s")
"""TTFT parts (:func:`ttft_components`), in order; they sum to TTFT."""


def as_dict(mapping) -> dict:
    """A plain (deep) dict from a ConfigDict / mapping / None."""
    if mapping is None:
        return {}
    if hasattr(mapping, "to_dict"):
        return mapping.to_dict()
    return {k: as_dict(v) if isinstance(v, Mapping) else v for k, v in dict(mapping).items()}


# ---- workloads -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """The paper's dataset for ``mal`` with ``num_agents`` agents (PAPER.md section 6.2).

    Attributes:
      mal: ``"32K"|"48K"|"64K"``.
      num_agents: agents (trajectories).
      seed: generator seed.
      append_factor, gen_factor: Fig. 9 scaling of every round's append / generation length,
        followed by truncation at the MAL (``workload.scale_lengths``); 1 = unscaled.
      token_divisor: divide every token count by this (``workload.scale_tokens``; 1 = off) to
        make tiny test workloads.
      num_base: base trajectories of the generator (the paper: 500).
    """

    mal: str = "64K"
    num_agents: int = 512
    seed: int = 0
    append_factor: float = 1.0
    gen_factor: float = 1.0
    token_divisor: int = 1
    num_base: int = 500

    def __post_init__(self):
        check_in("workload.mal", self.mal, MAL_TOKENS)
        check_positive("workload.num_agents", self.num_agents, integer=True)
        check_positive("workload.append_factor", self.append_factor)
        check_positive("workload.gen_factor", self.gen_factor)
        check_positive("workload.token_divisor", self.token_divisor, integer=True)
        check_positive("workload.num_base", self.num_base, integer=True)

    def build(self) -> TrajectorySet:
        ts = paper_dataset(self.mal, self.num_agents, self.seed, num_base=self.num_base)
        if self.append_factor != 1.0 or self.gen_factor != 1.0:
            ts = scale_lengths(ts, self.append_factor, self.gen_factor, mal_tokens=MAL_TOKENS[self.mal])
        if self.token_divisor != 1:
            ts = scale_tokens(ts, self.token_divisor)
        return ts

    def replace(self, **changes) -> "WorkloadSpec":
        return dataclasses.replace(self, **changes)


def workload_for(config, **changes) -> WorkloadSpec:
    """:class:`WorkloadSpec` from ``config.workload`` (mal, token_divisor, num_base, ...) and
    ``config.seed``, with ``changes`` applied."""
    fields = as_dict(config.get("workload", {}))
    fields.setdefault("seed", int(config.get("seed", 0)))
    fields.update(changes)
    return from_mapping(WorkloadSpec, fields, prefix="workload.")


def mean_total_tokens(ts: TrajectorySet) -> float:
    """Mean over agents of the total tokens (appended + generated) of a trajectory (Table 2 "Total")."""
    per_round = ts.num_append_tokens + ts.num_gen_tokens
    totals = np.add.reduceat(per_round, ts.round_offsets[:-1]) if len(per_round) else np.zeros(0)
    return float(np.mean(totals)) if len(totals) else 0.0


# ---- simulator configs ---------------------------------------------------------------------------
def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def sim_config(*layers) -> SimConfig:
    """A :class:`SimConfig` from mappings merged left to right (``hardware`` merged key by key).

    Raises:
      ConfigError: naming ``sim.<field>`` or ``sim.hardware.<field>``.
    """
    merged: dict = {}
    for layer in layers:
        merged = _merge(merged, as_dict(layer))
    hw = merged.pop("hardware", {}) or {}
    return from_mapping(SimConfig, {**merged, "hardware": from_mapping(HardwareConfig, hw, prefix="sim.hardware.")},
                        prefix="sim.")


def per_run_sim_fields(config) -> dict[str, str]:
    """``sim`` fields that a study sets for each of its runs, so that a ``--config.sim.<field>``
    override would be overwritten: field (dotted, e.g. ``hardware.dram_buffer_bytes``) -> the
    config entry that sets it (``variants``: the ablation switches; ``rows.<row>.sim``; the
    cluster lists ``clusters``, ``offline_cases``, ``online_cases``)."""
    out: dict[str, str] = {}
    if "variants" in config:
        out.update(dict.fromkeys(("loading", "prefill", "policy"), "config.variants"))
    if "rows" in config and "row_order" in config:
        for row in config.row_order:
            stack = [("", as_dict(config.rows[row]).get("sim", {}))]
            while stack:
                prefix, node = stack.pop()
                for key, value in node.items():
                    if isinstance(value, dict):
                        stack.append((f"{prefix}{key}.", value))
                    else:
                        out.setdefault(f"{prefix}{key}", f"config.rows.{row}.sim")
    lists = [f"config.{name}" for name in ("clusters", "offline_cases", "online_cases") if name in config]
    if lists:
        out.update(dict.fromkeys(("prefill_nodes", "decode_nodes"), " and ".join(lists)))
    return out


def check_sim_overrides(config, argv) -> None:
    """Reject ``--config.sim.<field>`` overrides in ``argv`` that the study would overwrite in each
    run (:func:`per_run_sim_fields`), instead of ignoring them silently.

    Raises:
      ConfigError: naming ``sim.<field>`` and the config entry to change instead.
    """
    per_run = per_run_sim_fields(config)
    for flag in argv_flag_values(argv):
        if flag.startswith("--config.sim."):
            field = flag[len("--config.sim."):]
            if field in per_run:
                raise ConfigError(f"sim.{field}", f"study {config.study!r} sets it for each run from "
                                  f"{per_run[field]}; change that instead")


def cluster_label(cfg: SimConfig) -> str:
    """``"<P>P<D>D"``, e.g. ``"2P4D"``."""
    return f"{cfg.prefill_nodes}P{cfg.decode_nodes}D"


def parse_cluster(text: str, field: str = "cluster") -> tuple[int, int]:
    """(P, D) of ``"<P>P<D>D"``; raises ConfigError naming ``field``."""
    t = str(text).strip().upper()
    try:
        p, rest = t.split("P", 1)
        d = rest[:-1] if rest.endswith("D") else None
        if d is None:
            raise ValueError
        out = int(p), int(d)
    except ValueError:
        raise ConfigError(field, f"expected '<P>P<D>D' such as '2P4D' (got {text!r})") from None
    if min(out) < 1:
        raise ConfigError(field, f"P and D must be >= 1 (got {text!r})")
    return out


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when either is NaN or ``b`` is 0."""
    if b is None or a is None or not b or math.isnan(a) or math.isnan(b):
        return float("nan")
    return float(a) / float(b)


# ---- memoised runs -------------------------------------------------------------------------------
_MEMO: collections.OrderedDict = collections.OrderedDict()
_MEMO_MAX = 24


def clear_cache() -> None:
    """Forget memoised runs."""
    _MEMO.clear()


def _memo(key, compute):
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key], True
    value = compute()
    _MEMO[key] = value
    while len(_MEMO) > _MEMO_MAX:
        _MEMO.popitem(last=False)
    return value, False


def _busy_read_rate(r: Mapping[str, np.ndarray], num_agents: int) -> dict:
    """Storage read rate while at least half of the agents are still running: hit bytes whose
    read finished by ``busy_window_s`` (the median over agents of their last finish) divided by
    it. Unlike bytes / JCT it is not set by the few longest trajectories' serial chains."""
    agent = np.asarray(r["agent"], np.int64)
    finish = np.asarray(r["finish_s"], np.float64)
    last = np.full(num_agents, -np.inf)
    np.maximum.at(last, agent, np.nan_to_num(finish, nan=np.inf))
    window = float(np.median(last)) if num_agents else 0.0
    nbytes = np.asarray(r["read_bytes_pe"], np.float64) + np.asarray(r["read_bytes_de"], np.float64)
    done = np.asarray(r["read_done_s"], np.float64) <= window
    rate = float(np.sum(nbytes[done])) / window if window > 0 else float("nan")
    return {"busy_window_s": window, "snic_read_bytes_per_s_busy": rate}


def offline_run(base: SimConfig, variant: str, wl: WorkloadSpec, log: Log | None = print) -> dict:
    """Offline run (all agents at t = 0) of ablation ``variant`` on ``base``: the
    :func:`dualpath_jax.sim.experiment.summarize` figures plus ``variant``, ``cluster``,
    ``num_agents``, ``snic_read_bytes`` (all SNICs), ``hit_tokens``, ``tokens`` (hit + append +
    gen of every request), ``busy_window_s`` and ``snic_read_bytes_per_s_busy``
    (:func:`_busy_read_rate`), ``wall_s`` (of the simulation) and ``cached``. Returns a fresh dict."""
    cfg = variant_config(base, variant)

    def compute():
        ts = wl.build()
        t0 = time.perf_counter()
        res = Simulator(cfg, agents_from_trajectories(ts, offline_starts(ts))).run()
        s = summarize(res, ts)
        r = res.requests
        s.update(snic_read_bytes=float(sum(s["snic_bytes"].values())), hit_tokens=float(np.sum(r["hit_tokens"])),
                 tokens=float(np.sum(r["hit_tokens"]) + np.sum(r["append_tokens"]) + np.sum(r["gen_tokens"])),
                 wall_s=time.perf_counter() - t0, **_busy_read_rate(r, len(ts)))
        return s

    s, cached = _memo(("offline", cfg, wl), compute)
    out = dict(s, variant=variant, cluster=cluster_label(cfg), num_agents=wl.num_agents, cached=cached)
    if log:
        log(f"  {cfg.model} {out['cluster']} {wl.mal} x{wl.append_factor:g}/x{wl.gen_factor:g} {wl.num_agents:6d} "
            f"agents {variant:9s} JCT {out['jct_s']:9.1f} s  TTFT {out['ttft_mean_s']:7.2f} s  "
            f"TPOT {out['tpot_s'] * 1e3:6.1f} ms  " + ("(memoised)" if cached else f"({out['wall_s']:.1f} s wall)"))
    return out


def ttft_components(r: Mapping[str, np.ndarray], snic_read_bytes_per_s: float) -> dict[str, np.ndarray]:
    """Per-request TTFT split (f64[B] each, seconds; they sum to ``first_token_s - arrival_s``):

    * ``schedule_s``: arrival -> placed (waiting for a PE and a DE, including DE HBM allocation);
    * ``read_wait_s``: placed -> read_done minus the transfer time (DRAM-buffer allocation and
      SNIC queueing);
    * ``read_transfer_s``: the larger side's hit bytes / one node's SNIC read rate (the read's
      own transfer time, storage -> SNIC -> DRAM; 0 for Oracle);
    * ``prefill_queue_s``: read_done -> first forward of the request;
    * ``prefill_compute_s``: first forward -> first token (all chunks, including waits for
      layer loads).

    ``r`` holds the simulator's request columns (``SimResult.requests``).
    """
    arrival, placed, done = (np.asarray(r[k], np.float64) for k in ("arrival_s", "placed_s", "read_done_s"))
    start, first = np.asarray(r["prefill_start_s"], np.float64), np.asarray(r["first_token_s"], np.float64)
    side_bytes = np.maximum(np.asarray(r["read_bytes_pe"], np.float64), np.asarray(r["read_bytes_de"], np.float64))
    read = done - placed
    transfer = np.minimum(np.nan_to_num(side_bytes) / snic_read_bytes_per_s, read)
    return {"schedule_s": placed - arrival, "read_wait_s": read - transfer, "read_transfer_s": transfer,
            "prefill_queue_s": start - done, "prefill_compute_s": first - start}


@dataclasses.dataclass(frozen=True)
class OnlineRun:
    """One online run: its request table and summary figures.

    ``stats`` keys: ``ttft_mean_s``, ``ttft_p50_s``, ``ttft_p99_s``, ``ttst_mean_s``,
    ``tpot_mean_s``, ``tpot_p99_s``, ``completion_mean_s`` (mean trajectory completion time),
    ``num_agents``, ``num_requests`` (measured), ``num_requests_total``, ``num_failed``,
    ``mean_total_tokens``, ``kv_bytes_per_token``, ``live_kv_bytes`` (time-averaged hit KV of live
    agents over the measured window), ``arrival_window_s`` (its length), ``end_s``, ``wall_s`` and
    ``<component>_mean`` for each TTFT component (measured requests).
    ``table`` is None for runs of more than ``TABLE_MAX_REQUESTS`` requests (memory; only the
    max-APS search needs the table, and its runs are smaller).
    """

    aps: float
    variant: str
    table: RequestTable | None
    stats: dict


TABLE_MAX_REQUESTS = 2_000_000


def online_warmup_s(config) -> float:
    """``config.warmup_s`` (default 0): requests issued earlier are not measured."""
    warmup = float(config.get("warmup_s", 0.0) or 0.0)
    if warmup < 0:
        raise ConfigError("warmup_s", f"must be >= 0 (got {warmup:g})")
    return warmup


def online_workload(config, aps: float) -> WorkloadSpec:
    """The workload of one online run at ``aps``: with ``config.horizon_s > 0`` (an open system
    observed for a fixed time) ``ceil(aps * horizon_s)`` agents, at most
    ``config.max_agents_per_run``; else ``config.workload.num_agents`` (a bounded batch).

    Raises:
      ConfigError: ``warmup_s`` set without a horizon, or not below it.
    """
    horizon = float(config.get("horizon_s", 0.0) or 0.0)
    warmup = online_warmup_s(config)
    if horizon <= 0:
        if warmup:
            raise ConfigError("warmup_s", "needs horizon_s > 0 (a fixed batch has no steady period to measure)")
        return workload_for(config)
    if warmup >= horizon:
        raise ConfigError("warmup_s", f"must be < horizon_s = {horizon:g} (got {warmup:g})")
    cap = int(config.get("max_agents_per_run", 1 << 20))
    check_positive("max_agents_per_run", cap, integer=True)
    return workload_for(config, num_agents=int(min(cap, max(1, math.ceil(float(aps) * horizon)))))


def online_run(base: SimConfig, variant: str, wl: WorkloadSpec, aps: float, arrival_seed: int = 0,
               log: Log | None = print, *, warmup_s: float = 0.0) -> OnlineRun:
    """Online run: ``wl.num_agents`` agents arriving as a Poisson process at ``aps`` per second
    (``sim.experiment.online_starts``), each replaying its rounds back to back. Latency figures
    and ``table`` cover the requests issued from ``warmup_s`` until the last agent arrives (the
    loaded period: the ramp-up before and the drain after are left out); completion times and
    the live KV cover every agent. Memoised."""
    check_positive("aps", aps)
    cfg = variant_config(base, variant)

    def compute():
        ts = wl.build()
        starts = online_starts(ts, float(aps), arrival_seed)
        t0 = time.perf_counter()
        res = Simulator(cfg, agents_from_trajectories(ts, starts)).run()
        wall = time.perf_counter() - t0
        full = request_table(res, ts)
        r = res.requests
        kvb = float(cost.kv_bytes_per_token(cfg.spec, cfg.kv_dtype))
        rate = min(cfg.hardware.node_snic_bytes_per_s, cfg.hardware.storage_bytes_per_s)
        done = np.fromiter(latency.trajectory_completion_s(full).values(), np.float64)
        lo, hi = max(float(np.min(starts)), float(warmup_s)), float(np.max(starts))
        arrival, finish = np.asarray(r["arrival_s"], np.float64), np.asarray(r["finish_s"], np.float64)
        overlap = np.clip(np.minimum(finish, hi) - np.maximum(arrival, lo), 0.0, None)
        live = float(np.sum(np.asarray(r["hit_tokens"], np.float64) * overlap)) * kvb / (hi - lo) if hi > lo else 0.0
        window = (arrival >= warmup_s) & (arrival <= hi)  # issued while agents arrive, after the warm-up
        table = full.where(window)
        comp = {k: v[window] for k, v in ttft_components(r, rate).items()}
        if log and not np.any(window):
            log(f"  warning: no request issued between warm-up {warmup_s:g} s and the last arrival {hi:.1f} s "
                f"({len(ts)} agents at {aps:g} APS): nothing measured, the run counts as missing the SLO")
        ttft, tpot = latency.ttft_s(table), latency.tpot_s(table)
        stats = {"ttft_mean_s": latency.summarize(ttft, "mean"), "ttft_p50_s": latency.summarize(ttft, "p50"),
                 "ttft_p99_s": latency.summarize(ttft, "p99"),
                 "ttst_mean_s": latency.summarize(latency.ttst_s(table), "mean"),
                 "tpot_mean_s": latency.summarize(tpot, "mean"), "tpot_p99_s": latency.summarize(tpot, "p99"),
                 "completion_mean_s": float(np.mean(done)) if done.size else float("nan"),
                 "num_agents": int(len(ts)), "num_requests": int(len(table)), "num_requests_total": int(len(full)),
                 "num_failed": int(np.sum(~table.ok)),
                 "mean_total_tokens": mean_total_tokens(ts), "kv_bytes_per_token": kvb, "live_kv_bytes": live,
                 "arrival_window_s": hi - lo, "end_s": res.end_s, "wall_s": wall}
        for k, v in comp.items():
            stats[f"{k}_mean"] = float(np.nanmean(v)) if v.size else float("nan")
        return OnlineRun(float(aps), variant, table if len(table) <= TABLE_MAX_REQUESTS else None, stats)

    run, cached = _memo(("online", cfg, wl, float(aps), int(arrival_seed), float(warmup_s)), compute)
    if log:
        s = run.stats
        log(f"  {cfg.model} {cluster_label(cfg)} {wl.mal} {wl.num_agents} agents @ {aps:.4g} APS {variant:9s} "
            f"TTFT {s['ttft_mean_s']:7.2f} s  TTST {s['ttst_mean_s']:6.3f} s  TPOT {s['tpot_mean_s'] * 1e3:6.1f} ms  "
            + ("(memoised)" if cached else f"({s['wall_s']:.1f} s wall)"))
    return run


# ---- plots ---------------------------------------------------------------------------------------
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


def plot_panels(path, panels: Sequence[Mapping], *, ncols: int = 3, title: str = "") -> Path:
    """A PNG grid of line plots. Each panel: ``{"title", "x": [...] or {label: [...]},
    "series": {label: [...]}, "xlabel", "ylabel", "logx", "logy", "hline", "vlines"}``."""
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
                ax.plot(list(x), list(y), marker=p.get("marker", "o"), markersize=3, label=label)
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
                 ylabel: str = "", title: str = "") -> Path:
    """A PNG stacked bar chart: one bar per label, one colour per entry of ``parts``."""
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
