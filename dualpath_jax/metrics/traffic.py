"""Traffic and balance metrics: bytes per link over time windows, storage-NIC Max/Avg (paper
Fig. 13), bytes per path, link utilisation, and per-group attention-time Max/Avg (Fig. 14).

A transfer moves its bytes at a uniform rate over ``[start_s, finish_s]`` (a zero-length transfer
deposits them at ``start_s``). The bytes a link carries by time ``t`` is then piecewise linear,
``F(t) = sum_i bytes_i * clip((t - start_i) / (finish_i - start_i), 0, 1)``, and a window
``[e_w, e_{w+1})`` gets ``F(e_{w+1}) - F(e_w)``. ``F`` is evaluated at all window edges at once
from the sorted rate-change events (O((N + W) log N) per link), never as an N x W matrix.

Max/Avg across a set of links (or engines) in one window is ``max / mean`` over the set: 1 is
perfect balance, ``len(set)`` all load on one member; NaN where the mean is 0 (idle window).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from dualpath_jax.config import ConfigError, check_positive
from dualpath_jax.metrics.records import AttentionRecord, as_transfer_table

__all__ = [
    "WindowedTraffic",
    "cumulative_bytes",
    "link_bytes_in_windows",
    "max_avg_ratio",
    "storage_nic_max_avg",
    "bytes_per_path",
    "bytes_per_link",
    "link_utilization",
    "attention_max_avg",
]


def cumulative_bytes(start_s: np.ndarray, finish_s: np.ndarray, num_bytes: np.ndarray,
                     at_s: np.ndarray) -> np.ndarray:
    """``f64[times]`` bytes carried strictly before each time in ``at_s`` (``f64[times]``, seconds) by
    the transfers given as ``start_s``, ``finish_s`` (seconds) and ``num_bytes``, each ``f64[transfers]``;
    a transfer carries its bytes at a constant rate over ``[start, finish)``, a zero-length one at once."""
    start = np.asarray(start_s, np.float64)
    finish = np.asarray(finish_s, np.float64)
    size = np.asarray(num_bytes, np.float64)
    at = np.asarray(at_s, np.float64)
    if start.size and at.size:  # measure time from the earliest instant to limit cancellation
        origin = min(float(start.min()), float(at.min()))
        start, finish, at = start - origin, finish - origin, at - origin
    duration = finish - start
    ramp = duration > 0
    out = np.zeros(at.shape)
    # Zero-length transfers: steps at start (counted for t > start).
    steps_t = np.sort(start[~ramp])
    steps_cum = np.concatenate([[0.0], np.cumsum(size[~ramp][np.argsort(start[~ramp], kind="stable")])])
    out += steps_cum[np.searchsorted(steps_t, at, side="left")]
    # Ramps: rate r on [s, f): F(t) = sum over events e <= t of dr_e * (t - t_e).
    rate = size[ramp] / duration[ramp]
    ev_t = np.concatenate([start[ramp], finish[ramp]])
    ev_dr = np.concatenate([rate, -rate])
    order = np.argsort(ev_t, kind="stable")
    ev_t, ev_dr = ev_t[order], ev_dr[order]
    cum_dr = np.concatenate([[0.0], np.cumsum(ev_dr)])
    cum_drt = np.concatenate([[0.0], np.cumsum(ev_dr * ev_t)])
    k = np.searchsorted(ev_t, at, side="right")
    out += at * cum_dr[k] - cum_drt[k]
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class WindowedTraffic:
    """Bytes per link per window: ``links`` (one name per link), ``edges_s`` ``f64[W + 1]`` (window
    edges, seconds), ``bytes`` ``f64[links, W]`` (bytes each link carried in each window)."""

    links: tuple[str, ...]
    edges_s: np.ndarray
    bytes: np.ndarray

    @property
    def window_s(self) -> float:
        return float(self.edges_s[1] - self.edges_s[0])

    def bytes_per_s(self) -> np.ndarray:
        """``f64[links, W]`` average rate of every link in every window, bytes per second."""
        return self.bytes / np.diff(self.edges_s)[None, :]


MAX_WINDOWS = 1_000_000
"""The most windows :func:`link_bytes_in_windows` makes (116 days of 10 s windows)."""


def link_bytes_in_windows(transfers, window_s: float, *, links: Sequence[str] | None = None,
                          start_s: float | None = None, end_s: float | None = None,
                          max_windows: int = MAX_WINDOWS) -> WindowedTraffic:
    """Bytes each link carried in consecutive windows of ``window_s`` seconds.

    Args:
      transfers: TransferTable or sequence of TransferRecord.
      links: the links to report, in this order, including idle ones (they matter for Max/Avg);
        default: every link that appears, sorted. Transfers on other links are ignored.
      start_s, end_s: the span covered (default: first start to last finish). Windows start at
        ``start_s``; the last one reaches past ``end_s`` so that every transfer is counted.
      max_windows: a span longer than this many windows of ``window_s`` gets wider windows, this
        many (the result's ``window_s`` says how wide), so that a run of absurd length (a link of
        a few bytes per second) still fits in memory.
    Raises:
      ConfigError: ``window_s <= 0``; ValueError: no transfers and no span.
    """
    check_positive("window_s", window_s)
    if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 2:
        raise ConfigError("max_windows", f"must be an integer >= 2 (got {max_windows!r})")
    t = as_transfer_table(transfers)
    names = tuple(sorted(set(t.link.tolist()))) if links is None else tuple(links)
    if start_s is None or end_s is None:
        if len(t) == 0:
            raise ValueError("link_bytes_in_windows: no transfers; give start_s and end_s")
    lo = float(np.min(t.start_s)) if start_s is None else float(start_s)
    hi = float(np.max(t.finish_s)) if end_s is None else float(end_s)
    if (hi - lo) / window_s >= max_windows:
        window_s = (hi - lo) / (max_windows - 1)
    num_windows = int(np.floor((hi - lo) / window_s)) + 1
    edges = lo + window_s * np.arange(num_windows + 1)
    out = np.zeros((len(names), num_windows))
    for row, name in enumerate(names):
        sel = t.link == name
        if np.any(sel):
            out[row] = np.diff(cumulative_bytes(t.start_s[sel], t.finish_s[sel], t.num_bytes[sel], edges))
    return WindowedTraffic(names, edges, out)


def max_avg_ratio(values: np.ndarray) -> np.ndarray:
    """``f64[W]`` max over axis 0 divided by mean over axis 0 of ``f64[links, W]``; NaN where the mean is 0."""
    v = np.asarray(values, dtype=np.float64)
    mean = v.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, v.max(axis=0) / mean, np.nan)


def storage_nic_max_avg(transfers, snic_links: Sequence[str], window_s: float, *,
                        start_s: float | None = None, end_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paper Fig. 13: (window start times f64[W], SNIC traffic Max/Avg f64[W]) over ``snic_links``
    (every storage NIC of the cluster, idle ones included)."""
    w = link_bytes_in_windows(transfers, window_s, links=snic_links, start_s=start_s, end_s=end_s)
    return w.edges_s[:-1], max_avg_ratio(w.bytes)


def _sum_by(keys: np.ndarray, values: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    if len(keys) == 0:
        return out
    uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(uniq))
    return {str(k): float(s) for k, s in zip(uniq, sums)}


def bytes_per_path(transfers) -> dict[str, float]:
    """Total bytes per ``path`` label."""
    t = as_transfer_table(transfers)
    return _sum_by(t.path, t.num_bytes)


def bytes_per_link(transfers) -> dict[str, float]:
    """Total bytes per link."""
    t = as_transfer_table(transfers)
    return _sum_by(t.link, t.num_bytes)


def link_utilization(transfers, capacity_bytes_per_s: Mapping[str, float] | float, *,
                     start_s: float | None = None, end_s: float | None = None) -> dict[str, float]:
    """Fraction of each link's capacity used over ``[start_s, end_s]``: bytes carried in the span
    divided by ``capacity * (end_s - start_s)``.

    ``capacity_bytes_per_s`` is one value for every link that appears, or a mapping (whose links
    are all reported, idle ones as 0.0; transfers on unmapped links are ignored).

    Raises:
      ConfigError: a non-positive capacity; ValueError: an empty span.
    """
    t = as_transfer_table(transfers)
    if isinstance(capacity_bytes_per_s, Mapping):
        caps = dict(capacity_bytes_per_s)
    else:
        caps = {name: float(capacity_bytes_per_s) for name in sorted(set(t.link.tolist()))}
    for name, c in caps.items():
        check_positive(f"capacity_bytes_per_s[{name}]", c)
    lo = float(np.min(t.start_s)) if start_s is None and len(t) else float(start_s or 0.0)
    hi = float(np.max(t.finish_s)) if end_s is None and len(t) else float(end_s or 0.0)
    if not hi > lo:
        raise ValueError(f"link_utilization: empty span [{lo}, {hi}]")
    out = {}
    for name, cap in caps.items():
        sel = t.link == name
        carried = np.diff(cumulative_bytes(t.start_s[sel], t.finish_s[sel], t.num_bytes[sel],
                                           np.array([lo, np.nextafter(hi, np.inf)])))[0]
        out[name] = float(carried / (cap * (hi - lo)))
    return out


def attention_max_avg(records: Sequence[AttentionRecord]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Paper Fig. 14: per group, (step ids ``i64[steps]``, attention-time Max/Avg across its engines
    ``f64[steps]``).

    Each engine of a group writes one record per forward step (0.0 when idle); a step's ratio is
    max over the group's records of that step divided by their mean (NaN if all are 0).
    """
    groups: dict[str, list[AttentionRecord]] = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    out = {}
    for group, recs in groups.items():
        step = np.array([r.step for r in recs], dtype=np.int64)
        value = np.array([r.attention_s for r in recs], dtype=np.float64)
        steps, inverse = np.unique(step, return_inverse=True)
        total = np.bincount(inverse, weights=value, minlength=len(steps))
        count = np.bincount(inverse, minlength=len(steps))
        peak = np.full(len(steps), -np.inf)
        np.maximum.at(peak, inverse, value)
        mean = total / count
        with np.errstate(divide="ignore", invalid="ignore"):
            out[group] = (steps, np.where(mean > 0, peak / mean, np.nan))
    return out
