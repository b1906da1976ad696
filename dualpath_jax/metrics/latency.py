"""Latency metrics of PAPER.md section 6.4: JCT, TTFT, TTST, TPOT, completion time, APS under SLO.

Definitions (per request = one round of one trajectory; successful requests only):

* TTFT = ``first_token_s - arrival_s``.
* TTST = ``second_token_s - first_token_s``: the gap between the first token (from the PE) and
  the second (the first decode step on the DE, after the KV hand-off). The paper reports it
  separately and explains SGL(MC)'s low TTST by its first two tokens arriving almost together,
  which fits this gap definition. NaN for 1-token requests.
* TPOT = ``(finish_s - second_token_s) / (num_gen_tokens - 2)``: the mean decode step after the
  second token, so the PD hand-off counts in TTST only. NaN below 3 tokens.
  ``tpot_s(..., include_second_token=True)`` gives the common ``(finish - first) / (g - 1)``.
* JCT (offline) = time from the batch start (default: earliest arrival) until the last request
  finishes.
* Trajectory completion time = last round's ``finish_s`` minus first round's ``arrival_s``.
* Statistics over requests (``statistic``): ``"mean"``, ``"max"`` or ``"pNN"`` (a percentile,
  e.g. ``"p50"``, ``"p99"``, ``"p99.9"``); NaNs are ignored.
* Max APS under an SLO: the largest agent arrival rate whose run meets
  ``statistic(TTFT) <= ttft_s and statistic(TPOT) <= tpot_s`` (defaults 4 s and 50 ms on the mean,
  the paper's SLO), with TTFT held to its bound in every sliding window of issue times too
  (:class:`SLO`), found by bracketing and geometric bisection over runs, assuming latency grows
  with load.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from dualpath_jax.config import ConfigError, check_non_negative, check_positive
from dualpath_jax.metrics.records import as_request_table

__all__ = [
    "ttft_s", "ttst_s", "tpot_s", "jct_s", "trajectory_completion_s", "summarize", "latency_summary",
    "SLO", "evaluate_slo", "worst_window", "ApsTrial", "MaxApsResult", "max_aps_under_slo",
]


def _ok(records):
    t = as_request_table(records)
    return t.where(t.ok)


def ttft_s(records) -> np.ndarray:
    """f64[B] time to first token of every successful request."""
    t = _ok(records)
    return t.first_token_s - t.arrival_s


def ttst_s(records) -> np.ndarray:
    """f64[B] first-to-second token gap (NaN for 1-token requests)."""
    t = _ok(records)
    return np.where(t.num_gen_tokens >= 2, t.second_token_s - t.first_token_s, np.nan)


def tpot_s(records, include_second_token: bool = False) -> np.ndarray:
    """f64[B] time per output token (see the module docstring; NaN when undefined)."""
    t = _ok(records)
    g = t.num_gen_tokens.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if include_second_token:
            return np.where(g >= 2, (t.finish_s - t.first_token_s) / (g - 1), np.nan)
        return np.where(g >= 3, (t.finish_s - t.second_token_s) / (g - 2), np.nan)


def jct_s(records, start_s: float | None = None) -> float:
    """Job completion time of an offline batch: last ``finish_s`` minus ``start_s`` (default the
    earliest arrival). Failed requests count with the time they finished; a request that never
    finished (NaN, e.g. a simulation stopped by ``max_events``) is left out, so the figure is then
    a lower bound: the run summaries count such requests (``num_unfinished``, ``num_failed``).
    Raises ValueError if there are no records."""
    t = as_request_table(records)
    if len(t) == 0:
        raise ValueError("jct_s: no request records")
    start = float(np.min(t.arrival_s)) if start_s is None else float(start_s)
    return float(np.nanmax(t.finish_s)) - start


def trajectory_completion_s(records) -> dict[str, float]:
    """Per trajectory id: last round's finish minus first round's arrival, seconds; NaN for a
    trajectory that did not complete (a round failed, was not run, or never finished): its last
    successful round is not its completion."""
    t = as_request_table(records)
    if len(t) == 0:
        return {}
    ids, inverse = np.unique(t.trajectory_id.astype(str), return_inverse=True)
    first = np.full(len(ids), np.inf)
    last = np.full(len(ids), -np.inf)
    failed = np.zeros(len(ids), dtype=bool)
    np.minimum.at(first, inverse, t.arrival_s)
    np.fmax.at(last, inverse, t.finish_s)  # (a NaN finish marks the trajectory failed below)
    np.logical_or.at(failed, inverse, ~t.ok | ~np.isfinite(t.finish_s))
    return {str(i): math.nan if bad else float(b - a) for i, a, b, bad in zip(ids, first, last, failed)}


def summarize(values: np.ndarray, statistic: str = "mean") -> float:
    """``"mean"``, ``"max"`` or ``"pNN"`` of the non-NaN values (NaN if none).

    Raises:
      ValueError: an unknown statistic or a percentile outside [0, 100].
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    q = _percentile_of(statistic)
    if v.size == 0:
        return float("nan")
    if statistic == "mean":
        return float(v.mean())
    if statistic == "max":
        return float(v.max())
    return float(np.percentile(v, q))


def _percentile_of(statistic: str) -> float | None:
    if statistic in ("mean", "max"):
        return None
    if isinstance(statistic, str) and statistic.startswith("p"):
        try:
            q = float(statistic[1:])
        except ValueError:
            q = -1.0
        if 0.0 <= q <= 100.0:
            return q
    raise ValueError(f"statistic: must be 'mean', 'max' or 'pNN' with 0 <= NN <= 100 (got {statistic!r})")


def latency_summary(records, statistics: tuple[str, ...] = ("mean", "p50", "p90", "p99")) -> dict[str, float]:
    """``{"ttft_mean_s": ..., "ttst_p99_s": ..., "tpot_p50_s": ..., "num_requests": ...}``."""
    t = as_request_table(records)
    series = {"ttft": ttft_s(t), "ttst": ttst_s(t), "tpot": tpot_s(t)}
    out: dict[str, float] = {"num_requests": float(len(t)), "num_failed": float(np.sum(~t.ok))}
    for name, values in series.items():
        for stat in statistics:
            out[f"{name}_{stat}_s"] = summarize(values, stat)
    return out


@dataclasses.dataclass(frozen=True)
class SLO:
    """Service-level objective: ``statistic`` of TTFT and of TPOT must not exceed the bounds.

    Defaults: the paper's TTFT <= 4 s and TPOT <= 50 ms (section 7.4), on the mean over requests.
    TTFT is also held to its bound over every sliding window of ``window_s`` seconds of issue
    times (half-overlapping; narrowed to a quarter of the measured span when that is shorter).
    The paper stops a run as failed once TTFT exceeds the bound, and otherwise once it is steady,
    its TTFT over a 150 s sliding window within 5% of its value 30 minutes before (section 7.4);
    a fixed-horizon run cannot wait for steadiness, so here a rate whose TTFT climbs past the
    bound within the measured span (an overloaded system) fails although its mean over the span
    may meet it. ``window_s = 0`` judges the span as a whole.

    Raises:
      ConfigError: naming the field, for non-positive bounds or an unknown statistic.
    """

    ttft_s: float = 4.0
    tpot_s: float = 0.050
    statistic: str = "mean"
    window_s: float = 150.0

    def __post_init__(self):
        check_positive("slo.ttft_s", self.ttft_s)
        check_positive("slo.tpot_s", self.tpot_s)
        check_non_negative("slo.window_s", self.window_s)
        if 0 < self.window_s < 1.0:
            raise ConfigError("slo.window_s", f"must be 0 (the span as a whole) or at least 1 s (got {self.window_s})")
        try:
            _percentile_of(self.statistic)
        except ValueError as e:
            raise ConfigError("slo.statistic", str(e).split(": ", 1)[1]) from None


def evaluate_slo(records, slo: SLO = SLO()) -> tuple[bool, dict[str, float]]:
    """(meets the SLO, {"ttft_s", "ttft_worst_window_s", "tpot_s", "num_failed", "num_requests"}).
    A run with failed requests or with no measurable TTFT fails (with no request at all,
    ``num_requests`` 0, it is not judged: :func:`max_aps_under_slo`); TPOT NaN (no request with
    >= 3 tokens) counts as met. ``ttft_worst_window_s`` is the TTFT statistic of the worst sliding window
    (:class:`SLO`; the whole span's when ``slo.window_s`` is 0)."""
    t = as_request_table(records)
    values = ttft_s(t)
    ttft = summarize(values, slo.statistic)
    worst = worst_window(_ok(t).arrival_s, values, slo.window_s, slo.statistic)
    tpot = summarize(tpot_s(t), slo.statistic)
    failed = int(np.sum(~t.ok))
    ok = (failed == 0 and not math.isnan(ttft) and max(ttft, worst) <= slo.ttft_s
          and (math.isnan(tpot) or tpot <= slo.tpot_s))
    return ok, {"ttft_s": ttft, "ttft_worst_window_s": worst, "tpot_s": tpot, "num_failed": float(failed),
                "num_requests": float(len(t))}


MAX_SLO_WINDOWS = 5000
"""Most windows :func:`worst_window` slides over one span (wider windows beyond that)."""


def worst_window(times_s: np.ndarray, values: np.ndarray, window_s: float, statistic: str = "mean") -> float:
    """Largest ``statistic`` of ``values`` over sliding windows of ``times_s`` (seconds). With
    ``span`` from the first to the last time with a value, the windows are ``w = min(window_s,
    span / 4)`` wide (at least ``span /`` :data:`MAX_SLO_WINDOWS`), start every ``w / 2`` from the
    first time, the last ending at the last time, and hold the values whose times lie in
    ``[start, start + w]``; empty windows are skipped. ``window_s = 0`` (or a zero span): the
    statistic over every value. NaN values (e.g. failed requests) are left out; NaN when none is
    left."""
    t, v = np.asarray(times_s, np.float64), np.asarray(values, np.float64)
    keep = ~np.isnan(v) & ~np.isnan(t)
    t, v = t[keep], v[keep]
    if v.size == 0:
        return float("nan")
    lo, hi = float(t.min()), float(t.max())
    if float(window_s) <= 0 or hi <= lo:
        return summarize(v, statistic)
    w = max(min(float(window_s), (hi - lo) / 4.0), (hi - lo) / MAX_SLO_WINDOWS)
    starts = np.append(np.arange(lo, hi - w, w / 2.0), hi - w)
    worst = -math.inf
    for s in starts:
        sel = (t >= s) & (t <= s + w)
        if np.any(sel):
            worst = max(worst, summarize(v[sel], statistic))
    return float(worst)


@dataclasses.dataclass(frozen=True)
class ApsTrial:
    """One evaluated run: its APS, whether it met the SLO, and the measured statistics
    (``ttft_worst_window_s``: the TTFT statistic of its worst sliding window, :func:`evaluate_slo`)."""

    aps: float
    meets_slo: bool
    ttft_s: float
    tpot_s: float
    ttft_worst_window_s: float = float("nan")


@dataclasses.dataclass(frozen=True)
class MaxApsResult:
    """``aps``: the largest passing rate found (0.0 if none passed); ``bracketed``: a failing rate
    above it was found and it is a tried passing rate, or ``min_aps`` failed (False when
    ``max_aps`` itself passed, or ``max_runs`` ran out while doubling before any rate failed, or
    while halving before any passed, or a run measured nothing: ``aps`` is then only a lower
    bound); ``resolved``: bracketed to within ``rel_tol`` (False when ``max_runs`` ran out first,
    or unbracketed); ``trials`` in evaluation order."""

    aps: float
    bracketed: bool
    trials: tuple[ApsTrial, ...]
    resolved: bool = True


def max_aps_under_slo(run: Callable[[float], object], slo: SLO = SLO(), *, initial_aps: float = 0.1,
                      min_aps: float = 1e-3, max_aps: float = 1e3, rel_tol: float = 0.05,
                      max_runs: int = 24, judged: bool = False) -> MaxApsResult:
    """Largest APS whose run meets ``slo``, by bracketing then bisection.

    ``run(aps)`` performs one online run at ``aps`` agent arrivals per second and returns its
    request records (a :class:`RequestTable` or a sequence of RequestRecord); with ``judged``, the
    run has already applied :func:`evaluate_slo` (where the records are, e.g. a remote worker)
    and returns its ``(meets the SLO, {"ttft_s", "tpot_s", ...})``. The search
    doubles (or halves) from ``initial_aps`` until a passing rate ``lo`` and a failing rate
    ``hi`` bracket the capacity, then bisects geometrically until ``hi / lo <= 1 + rel_tol``.
    Each rate is run at most once. A run that measured no request (``num_requests`` 0, e.g. every
    agent of a capped run arrived within the warm-up) is neither a pass nor a failure: above a
    passing rate the search ends there, unbracketed (the capacity is unknown above ``lo``); while
    halving, it goes on to the lower rates.

    Raises:
      ConfigError: non-positive rates, ``min_aps > initial_aps``, ``initial_aps > max_aps``, or
        ``rel_tol <= 0``.
    """
    for name, v in (("initial_aps", initial_aps), ("min_aps", min_aps), ("max_aps", max_aps),
                    ("rel_tol", rel_tol)):
        check_positive(name, v)
    if not min_aps <= initial_aps <= max_aps:
        raise ConfigError("initial_aps", f"must lie in [min_aps, max_aps] = [{min_aps}, {max_aps}] "
                          f"(got {initial_aps})")
    check_positive("max_runs", max_runs, integer=True)
    trials: list[ApsTrial] = []
    cache: dict[float, bool | None] = {}

    def passes(aps: float) -> bool | None:
        """Whether the run at ``aps`` meets the SLO; None: it measured nothing."""
        if aps not in cache:
            ok, stats = run(aps) if judged else evaluate_slo(run(aps), slo)
            measured = stats.get("num_requests", 1.0) > 0
            trials.append(ApsTrial(aps, bool(ok and measured), stats["ttft_s"], stats["tpot_s"],
                                   stats.get("ttft_worst_window_s", float("nan"))))
            cache[aps] = bool(ok) if measured else None
        return cache[aps]

    def unbracketed(lo: float) -> MaxApsResult:
        return MaxApsResult(lo, False, tuple(trials), resolved=False)

    lo: float | None = None
    hi: float | None = None
    aps = float(initial_aps)
    first = passes(aps)
    if first:
        lo = aps
        while len(trials) < max_runs:
            nxt = min(lo * 2.0, max_aps)
            if nxt == lo:
                return unbracketed(lo)
            ok = passes(nxt)
            if ok is None:  # nothing measured at nxt: above lo the capacity is unknown
                return unbracketed(lo)
            if ok:
                lo = nxt
            else:
                hi = nxt
                break
    else:
        hi = aps if first is False else None
        cur = aps
        while len(trials) < max_runs:
            nxt = max(cur / 2.0, min_aps)
            if nxt == cur:  # min_aps tried: no rate passed
                return MaxApsResult(0.0, True, tuple(trials)) if hi is not None else unbracketed(0.0)
            ok = passes(nxt)
            if ok:
                lo = nxt
                break
            if ok is False:
                hi = nxt
            cur = nxt
    if lo is None:  # max_runs ran out while halving: no rate passed, none as low as min_aps tried
        return unbracketed(0.0)
    if hi is None:
        return unbracketed(lo)
    while hi / lo > 1.0 + rel_tol and len(trials) < max_runs:
        mid = math.sqrt(lo * hi)
        ok = passes(mid)
        if ok is None:
            return unbracketed(lo)
        if ok:
            lo = mid
        else:
            hi = mid
    return MaxApsResult(lo, True, tuple(trials), resolved=hi / lo <= 1.0 + rel_tol)
