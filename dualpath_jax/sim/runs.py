"""One simulator run's set-up and its reduction to the paper's metrics.

* :func:`variant_config`: a :class:`SimConfig` with the three switches of an ablation variant.
* :func:`offline_starts` / :func:`online_starts` / :func:`recorded_starts`: the agents' start
  times (f64[A], seconds).
* :func:`summarize`: JCT, TTFT/TTST/TPOT, SNIC bytes and balance, attention balance of a
  :class:`SimResult` as a plain dict (JSON / Markdown / CSV ready).
* :func:`attention_weighted` / :func:`attention_by_busy_members`: PE-group attention balance
  (paper Fig. 14).

The studies that combine runs into the paper's figures live above the runtimes, in
``dualpath_jax.studies``.
"""

from __future__ import annotations

import numpy as np

from dualpath_jax.metrics import latency
from dualpath_jax.metrics.records import TransferTable
from dualpath_jax.metrics.traffic import storage_nic_max_avg
from dualpath_jax.sched.variants import get_variant
from dualpath_jax.sim.adapters import request_table, snic_transfers
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.result import SimResult
from dualpath_jax.workload import (TrajectorySet, offline_arrivals_s, poisson_arrivals_s, recorded_arrivals_s,
                                   root_indices, trajectory_start_times_s)

__all__ = ["variant_config", "offline_starts", "online_starts", "recorded_starts", "summarize", "attention_weighted",
           "attention_by_busy_members", "forwards_in_head"]


def variant_config(base: SimConfig, variant: str) -> SimConfig:
    """``base`` with the three switches (loading, prefill, policy) of ablation variant ``variant``
    (``sched.variants``; paper section 7.4).

    Raises:
      ConfigError: naming ``variants`` for an unknown variant name.
    """
    v = get_variant(variant)
    return base.replace(loading=v.loading, prefill=v.prefill, policy=v.policy)


def _starts(ts: TrajectorySet, root_arrivals_s: np.ndarray, recorded_offsets: bool) -> np.ndarray:
    """Every trajectory's start: the roots at ``root_arrivals_s``, sub-agents with their root or,
    with ``recorded_offsets``, at their recorded offset from it."""
    return trajectory_start_times_s(ts, root_arrivals_s, subagent_offset_scale=1.0 if recorded_offsets else 0.0)


def offline_starts(ts: TrajectorySet, *, recorded_offsets: bool = False) -> np.ndarray:
    """Start times ``f64[A]`` (seconds, one per trajectory of ``ts``): every agent at t = 0, the
    offline setting of paper section 7.2 (sub-agents start with their root, or at their recorded
    offset from it with ``recorded_offsets``: a replay that keeps the trace's think times)."""
    return _starts(ts, offline_arrivals_s(len(root_indices(ts))), recorded_offsets)


def online_starts(ts: TrajectorySet, aps: float, seed: int = 0, *, recorded_offsets: bool = False) -> np.ndarray:
    """Start times ``f64[A]`` (seconds): root agents arrive as a Poisson process at ``aps`` agents
    per second (seeded by ``seed``), the online setting of paper section 7.3; sub-agents as
    :func:`offline_starts`."""
    return _starts(ts, poisson_arrivals_s(len(root_indices(ts)), aps, seed), recorded_offsets)


def recorded_starts(ts: TrajectorySet, speedup: float = 1.0, *, recorded_offsets: bool = False) -> np.ndarray:
    """Start times ``f64[A]`` (seconds): root agents at their recorded start times divided by
    ``speedup`` (:func:`~dualpath_jax.workload.arrivals.recorded_arrivals_s`: a Mooncake trace's
    open-loop replay); sub-agents as :func:`offline_starts`.

    Raises:
      ConfigError: ``speedup`` not a finite number > 0.
    """
    return _starts(ts, recorded_arrivals_s(ts.start_offset_s[root_indices(ts)], speedup), recorded_offsets)


def summarize(result: SimResult, ts: TrajectorySet | None, *, window_s: float = 10.0) -> dict:
    """Headline metrics of one run: JCT, TTFT/TTST/TPOT, SNIC bytes and balance, attention balance.

    Times are virtual seconds; latency statistics follow :mod:`dualpath_jax.metrics.latency`
    (PAPER.md section 6.4) over the requests that finished, NaN where none qualifies.

    Args:
      result: the run.
      ts: its trajectories (names the agents); None names them by index.
      window_s: width of the SNIC balance windows, seconds (paper Fig. 13).

    Returns:
      A flat dict:

      * ``jct_s``: last finish minus earliest arrival, seconds (unfinished requests left out).
      * ``num_requests``, ``num_unfinished``: requests issued, and those without a finish time.
      * ``ttft_mean_s``, ``ttft_p50_s``, ``ttft_p99_s``: TTFT mean / median / 99th percentile, s.
      * ``ttst_mean_s``: mean TTST, seconds.
      * ``tpot_s``, ``tpot_p99_s``: mean and 99th-percentile TPOT, seconds per token.
      * ``events``: events the simulator processed.
      * ``snic_bytes``, ``snic_busy_s``: per SNIC read server (``snic_read[n]``), bytes carried
        and seconds busy.
      * ``snic_max_avg_mean``: mean over ``window_s`` windows of the SNIC read traffic's
        Max/Avg across nodes (unitless; NaN without reads).
      * ``attention_max_avg_mean``: mean over PE-group forwards of the attention Max/Avg across
        members (unitless, paper Fig. 14; NaN without forwards).
      * ``attention_max_avg_weighted``: :func:`attention_weighted` (unitless).

    Raises:
      ValueError: the run issued no requests (from
        :func:`~dualpath_jax.metrics.latency.jct_s`).
    """
    table = request_table(result, ts)
    ttft = latency.ttft_s(table)
    out = {
        "jct_s": latency.jct_s(table),
        "num_requests": int(len(table)),
        "num_unfinished": int(np.sum(~table.ok)),
        "ttft_mean_s": latency.summarize(ttft, "mean"),
        "ttft_p50_s": latency.summarize(ttft, "p50"),
        "ttft_p99_s": latency.summarize(ttft, "p99"),
        "ttst_mean_s": latency.summarize(latency.ttst_s(table), "mean"),
        "tpot_s": latency.summarize(latency.tpot_s(table), "mean"),
        "tpot_p99_s": latency.summarize(latency.tpot_s(table), "p99"),
        "events": result.events,
    }
    snic = {k: v["bytes"] for k, v in result.links.items() if k.startswith("snic_read")}
    out["snic_bytes"] = snic
    out["snic_busy_s"] = {k: v["busy_s"] for k, v in result.links.items() if k.startswith("snic_read")}
    links, starts, finishes, sizes = snic_transfers(result)
    if len(starts):
        tt = TransferTable(link=np.asarray(links, dtype=object), start_s=starts, finish_s=finishes, num_bytes=sizes,
                           path=np.asarray(["storage_read"] * len(starts), dtype=object))
        _, ratio = storage_nic_max_avg(tt, sorted(snic), window_s)
        out["snic_max_avg_mean"] = float(np.nanmean(ratio)) if np.any(~np.isnan(ratio)) else float("nan")
    else:
        out["snic_max_avg_mean"] = float("nan")
    ar = result.attention_ratio
    out["attention_max_avg_mean"] = float(np.mean(ar)) if ar.size else float("nan")
    out["attention_max_avg_weighted"] = attention_weighted(result)
    return out


def attention_weighted(result, forwards: int | None = None) -> float:
    """Sum over PE-group forwards of the slowest member's attention seconds over the sum of the
    members' mean (1 = no time lost to imbalance); unlike the per-forward mean it is not dominated
    by many small forwards. ``forwards``: only the first that many forwards (default: all)."""
    return _weighted_max_avg(result.attention_s[:forwards])


def forwards_in_head(result, fraction: float) -> int:
    """How many of the run's first PE-group forwards started in its first ``fraction`` of virtual
    time, ``[0, fraction * result.end_s)`` (0 when none did): the paper's Fig. 14 reads the
    attention balance "during the first 5% of the task" (PAPER.md 5.5, section 7.5), a span of
    the run's time, not a count of forwards. Raises ValueError for a fraction outside [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    return int(np.searchsorted(result.attention_start_s, fraction * result.end_s, side="left"))


def _weighted_max_avg(attention_s: np.ndarray) -> float:
    """``sum(max) / sum(mean)`` over rows ``f64[forwards, 2]`` of (max, mean) attention seconds; NaN if none."""
    a = attention_s
    return float(a[:, 0].sum() / a[:, 1].sum()) if a.size and a[:, 1].sum() > 0 else float("nan")


def attention_by_busy_members(result, forwards: int | None = None) -> list[dict]:
    """PE-group forwards grouped by how many members had attention work (``result.attention_members``).

    Returns one row per (busy, members) pair, ascending: ``forwards`` (count), ``max_avg_mean``
    (mean per-forward Max/Avg) and ``max_avg_weighted`` (:func:`attention_weighted` over them).
    Members without work count as 0 s, so ``k`` of ``n`` equally busy members give exactly ``n / k``:
    the rows separate idle members (too little ready work) from uneven batches of busy ones.
    ``forwards``: only the first that many forwards (default: all)."""
    members, a = result.attention_members[:forwards], result.attention_s[:forwards]
    rows = []
    for busy, n in sorted({(int(b), int(m)) for b, m in members}):
        sel = (members[:, 0] == busy) & (members[:, 1] == n)
        part = a[sel]
        rows.append({"busy": busy, "members": n, "forwards": int(sel.sum()),
                     "max_avg_mean": float(np.mean(part[:, 0] / part[:, 1])),
                     "max_avg_weighted": _weighted_max_avg(part)})
    return rows
