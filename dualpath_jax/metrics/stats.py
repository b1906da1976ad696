"""Repeat statistics: the mean of R repeated measurements with a Student-t confidence interval.

The t quantile is SciPy's (``scipy.stats.t.ppf``; SciPy is already a dependency of JAX).

* :func:`t_quantile`  the two-sided critical value ``t_{(1+level)/2, nu}`` (e.g. 4.303 for
  ``nu = 2``, 2.776 for ``nu = 4``, 1.960 as ``nu -> inf`` at ``level = 0.95``).
* :func:`mean_ci`     ``(mean, lo, hi, half_width)`` of a sample, ``half_width = t * s / sqrt(n)``
  with ``s`` the sample standard deviation (``n - 1`` in the denominator).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["t_quantile", "mean_ci"]


def t_quantile(level: float, dof: int) -> float:
    """Two-sided Student-t critical value: the ``t > 0`` with ``P(|T| <= t) = level``.

    That is the ``(1 + level) / 2`` quantile, e.g. ``t_quantile(0.95, 2) = 4.3027``,
    ``t_quantile(0.95, 4) = 2.7764`` (any t table). ``dof`` is an integer >= 1; ``level`` in
    (0, 1). Raises ``ValueError`` otherwise.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if int(dof) != dof or dof < 1:
        raise ValueError(f"dof must be an integer >= 1, got {dof!r}")
    from scipy import stats  # noqa: PLC0415 (imported on first use: metrics/ loads only numpy)

    return float(stats.t.ppf((1.0 + level) / 2.0, int(dof)))


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean of ``values`` with a two-sided Student-t confidence interval over them.

    Returns ``(mean, lo, hi, half_width)`` (floats, in the unit of ``values``) with
    ``half_width = t_quantile(level, n - 1) * s / sqrt(n)``, ``s`` the sample standard deviation
    (``n - 1`` denominator), ``lo = mean - half_width``, ``hi = mean + half_width``. With a single
    value the interval is undefined: ``lo``, ``hi`` and ``half_width`` are NaN. Raises
    ``ValueError`` for no values, a non-finite value, or ``level`` outside (0, 1).
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci needs at least one value")
    if not all(math.isfinite(v) for v in xs):
        raise ValueError(f"mean_ci needs finite values, got {xs}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan, math.nan, math.nan
    var = math.fsum((v - mean) ** 2 for v in xs) / (n - 1)
    half = t_quantile(level, n - 1) * math.sqrt(var) / math.sqrt(n)
    return mean, mean - half, mean + half, half
