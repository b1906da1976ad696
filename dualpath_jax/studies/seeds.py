"""R seeds per configuration (a study's ``seeds``) and the mean with a 95% confidence interval over them.

A study runs every configuration once per seed ``r = 0 .. R-1``: seed ``r`` draws the workload with
the generator seed ``workload.seed + r`` (the paper's Table 2 trajectories, PAPER.md section 6.2)
and, online, the Poisson arrivals with ``arrival_seed + r``. A trace workload (agentic, Mooncake)
is the same trajectories for every seed, so offline it runs once (:func:`offline_seeds`: one run,
reported as "1 seed" with no interval, not R copies of one value with a zero-width one) and only
the arrivals of online runs vary.

Every figure is computed per seed first (a speedup is Basic's JCT over DualPath's within one seed),
then reduced to the mean over seeds with a two-sided Student-t interval
(:func:`dualpath_jax.metrics.stats.mean_ci`, level 0.95): ``half_width = t_{0.975, R-1} s / sqrt(R)``.
With one seed the interval is undefined (NaN half width; tables say "1 seed").

* :func:`seed_workloads`, :func:`arrival_seeds`: the workload and arrival seed of each seed;
  :func:`offline_seeds`: how many distinct seeds an offline study has.
* :class:`Estimate`, :func:`estimate`: the mean and interval of per-seed values.
* :func:`put`: a headline ``name`` (the mean) with ``name_ci95`` (half width), ``name_lo`` and
  ``name_hi``; :func:`printed` drops ``_lo``/``_hi`` from the ``name: value`` lines (they stay in
  ``metrics.json``).
* :func:`aggregate`: per-seed table rows grouped by key columns, every other number as mean and
  ``<column>_ci95``; :func:`write_table` writes them as Markdown (``mean ± half-width``) and CSV
  (mean and half-width columns).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from dualpath_jax.metrics import writers
from dualpath_jax.metrics.stats import mean_ci
from dualpath_jax.studies.common import WorkloadSpec

__all__ = ["LEVEL", "CI_SUFFIX", "Estimate", "estimate", "seed_workloads", "offline_seeds", "arrival_seeds", "put",
           "printed",
           "caption", "fmt", "aggregate", "write_table", "band"]

LEVEL = 0.95
"""Confidence level of every interval."""

CI_SUFFIX = "_ci95"
"""Suffix of a figure's half width (``jct_s`` -> ``jct_s_ci95``)."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean over seeds with its 95% Student-t interval.

    Attributes:
      mean: mean of the defined (non-NaN) per-seed values; NaN if none.
      lo, hi: ``mean -/+ half``.
      half: half width ``t_{0.975, n-1} s / sqrt(n)``; NaN for ``n < 2``.
      n: seeds with a defined value.
    """

    mean: float
    lo: float
    hi: float
    half: float
    n: int


def estimate(values: Iterable[float]) -> Estimate:
    """The :class:`Estimate` of per-seed ``values`` (floats, any unit). NaN values (a figure a
    seed does not define, e.g. a ratio to a variant that did not run) are left out; an infinite
    one makes the mean infinite and the interval NaN."""
    xs = [v for v in (float(x) for x in values if x is not None) if not math.isnan(v)]
    nan = float("nan")
    if not xs:
        return Estimate(nan, nan, nan, nan, 0)
    if not all(math.isfinite(v) for v in xs):
        return Estimate(math.fsum(xs) / len(xs), nan, nan, nan, len(xs))
    mean, lo, hi, half = mean_ci(xs, level=LEVEL)
    return Estimate(mean, lo, hi, half, len(xs))


def seed_workloads(wl: WorkloadSpec, seeds: int) -> list[WorkloadSpec]:
    """The workload of each seed ``r < seeds``: ``wl`` with generator seed ``wl.seed + r`` (the
    paper's generator); ``wl`` itself ``seeds`` times for a trace, whose trajectories no seed changes."""
    if wl.source != "synthetic":
        return [wl] * int(seeds)
    return [wl.replace(seed=wl.seed + r) for r in range(int(seeds))]


def offline_seeds(wl: WorkloadSpec, seeds: int) -> int:
    """The seeds an offline study of workload ``wl`` runs for ``seeds`` asked: ``seeds`` for the
    synthetic generator, 1 for a trace (every seed would replay the same trajectories from the
    same start: one deterministic run, whose copies are not independent samples)."""
    return int(seeds) if wl.source == "synthetic" else min(1, int(seeds))


def arrival_seeds(arrival_seed: int, seeds: int) -> list[int]:
    """The Poisson arrival seed of each seed ``r < seeds``: ``arrival_seed + r``."""
    return [int(arrival_seed) + r for r in range(int(seeds))]


def put(named: dict, name: str, values: Iterable[float]) -> Estimate:
    """Set headline ``name`` to the mean of per-seed ``values``, ``name_ci95`` to the half width,
    ``name_lo`` / ``name_hi`` to the interval's ends; returns the :class:`Estimate`."""
    e = estimate(values)
    named[name] = e.mean
    named[name + CI_SUFFIX] = e.half
    named[name + "_lo"] = e.lo
    named[name + "_hi"] = e.hi
    return e


def printed(named: Mapping) -> dict:
    """``named`` without the ``_lo`` / ``_hi`` companions of its :func:`put` figures: the
    ``name: value`` lines a script prints (``metrics.json`` keeps them all)."""
    drop = set()
    for k in named:
        if k.endswith(CI_SUFFIX):
            base = k[:-len(CI_SUFFIX)]
            drop |= {base + "_lo", base + "_hi"}
    return {k: v for k, v in named.items() if k not in drop}


_POLICY: contextvars.ContextVar[str] = contextvars.ContextVar("policy", default="")


@contextlib.contextmanager
def policy_caption(name: str):
    """Within the block, :func:`caption` also names the scheduler plug-in ``name`` (``"module:Class"``;
    ``""``: the built-in one, not named), so every table and plot of a study run with a
    researcher's policy says so."""
    token = _POLICY.set(name)
    try:
        yield
    finally:
        _POLICY.reset(token)


def caption(seeds: int) -> str:
    """What a table's numbers are: ``"mean ± 95% CI over 3 seeds"`` or ``"1 seed"``, followed by
    ``"; scheduler module:Class"`` inside :func:`policy_caption` of a plug-in."""
    text = "1 seed" if int(seeds) == 1 else f"mean ± 95% CI over {int(seeds)} seeds"
    return f"{text}; scheduler {_POLICY.get()}" if _POLICY.get() else text


def _two_digits(x: float) -> str:
    """``x`` to 2 significant digits, positional from 1e-4 to 1e6 (``140``, ``0.0012``), else ``6.4e-05``."""
    if x == 0 or not math.isfinite(x):
        return format(x, "g")
    exp = math.floor(math.log10(abs(x)))
    if not -4 <= exp < 6:
        return format(x, ".1e")
    r = round(x, 1 - exp)
    return format(r, f".{max(0, 1 - math.floor(math.log10(abs(r))))}f")  # 0.996 -> 1.0, not 1.00


def fmt(mean, half) -> str:
    """``"mean ± half"``: the half width to 2 significant digits, the mean to 4 significant digits or
    to the half width's last printed decimal place, whichever is finer, but at most 8 significant
    digits (``1470 ± 140``, ``12345.60 ± 0.80``, ``1.000120 ± 5.9e-06``: a mean is never shown
    coarser than its interval, and a rounding-noise width adds no float digits); positional from
    1e-4 to 1e6 (``1.235e+06 ± 89000`` above); the mean alone when the half width is NaN (one seed)."""
    if mean is None:
        return ""
    mean = float(mean)
    m = "nan" if math.isnan(mean) else format(mean, ".4g")
    exp = math.floor(math.log10(abs(mean))) if math.isfinite(mean) and mean != 0 else 0
    if "e" in m and -4 <= exp < 6:  # positional: 12345.6 -> 12346, not 1.235e+04
        m = format(mean, f".{max(0, 3 - exp)}f")
    if half is None or math.isnan(float(half)):
        return m
    h = _two_digits(float(half))
    if math.isfinite(mean) and float(half) > 0 and "e" not in m:
        places = min(_decimal_places(h), max(0, 7 - exp))
        if places > _decimal_places(m):
            m = format(mean, f".{places}f")
    return f"{m} ± {h}"


def _decimal_places(text: str) -> int:
    """The last decimal place a printed number shows (``"0.012"`` -> 3, ``"6.4e-05"`` -> 6, ``"140"`` -> 0)."""
    mantissa, _, exp = text.partition("e")
    places = len(mantissa.partition(".")[2]) - (int(exp) if exp else 0)
    return max(0, places)


def _number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def aggregate(rows: Sequence[Mapping], keys: Sequence[str], *, count: bool = False,
              drop: Sequence[str] = ("seed",)) -> list[dict]:
    """Per-seed ``rows`` reduced over seeds: one row per distinct value of the ``keys`` columns, in
    first-appearance order, with the rows' columns in their order. Every other column that holds
    numbers becomes its mean over the group (:func:`estimate`: NaN and None left out; a group of
    one keeps its value and type) followed by ``<column>_ci95``; booleans become ``all()``;
    anything else keeps its value when the group agrees, else the distinct values joined by ``/``.
    ``count``: add ``seeds``, the group's size, last. ``drop``: columns left out (the seed)."""
    groups: dict[tuple, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        row: dict = {}
        for c in dict.fromkeys(c for m in members for c in m if c not in drop):  # the rows' column order
            if c in keys:
                row[c] = key[list(keys).index(c)]
                continue
            vals = [m.get(c) for m in members]
            present = [v for v in vals if v is not None]
            if not present:
                row[c] = None
            elif all(_number(v) for v in present):
                e = estimate(present)
                row[c] = present[0] if len(present) == 1 else e.mean  # one seed: the value as it is
                row[c + CI_SUFFIX] = e.half
            elif all(isinstance(v, (bool, np.bool_)) for v in present):
                row[c] = bool(all(present))
            else:
                distinct = list(dict.fromkeys(str(v) for v in present))
                row[c] = present[0] if len(distinct) == 1 else "/".join(distinct)
        if count:
            row["seeds"] = len(members)
        out.append(row)
    return out


def write_table(path_stem, rows: Sequence[Mapping], *, seeds: int, title: str = "") -> tuple[Path, Path]:
    """``<path_stem>.md`` and ``.csv`` of :func:`aggregate` rows. The CSV holds every column (means
    and ``_ci95`` half widths, full precision); the Markdown shows each figure as ``mean ±
    half-width`` (:func:`fmt`) and its title ends with :func:`caption`."""
    stem = Path(path_stem)
    md_path, csv_path = writers.write_table(stem, rows)
    cols = [c for c in dict.fromkeys(c for r in rows for c in r)
            if not (c.endswith(CI_SUFFIX) and c[:-len(CI_SUFFIX)] in {k for r in rows for k in r})]
    shown = []
    for r in rows:
        cells = {}
        for c in cols:
            v = r.get(c)
            cells[c] = fmt(v, r.get(c + CI_SUFFIX)) if (c + CI_SUFFIX) in r and _number(v) else v
        shown.append(cells)
    head = f"{title} ({caption(seeds)})" if title else caption(seeds)
    md_path.write_text(f"# {head}\n\n" + writers.markdown_table(shown, cols))
    return md_path, csv_path


def band(series: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% half width at each index of per-seed series, over the indices every seed has
    (the shortest series' length); half widths NaN with one seed. Returns (f64[T], f64[T])."""
    if not series:
        return np.zeros(0), np.zeros(0)
    n = min(len(s) for s in series)
    mean, half = np.empty(n), np.empty(n)
    for i in range(n):
        e = estimate(s[i] for s in series)
        mean[i], half[i] = e.mean, e.half
    return mean, half
