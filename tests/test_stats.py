"""The repeat statistics helper against printed Student-t tables and hand-computed intervals."""

import math

import pytest

from dualpath_jax.metrics import mean_ci, t_quantile


# Two-sided critical values from a standard t table (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2).
@pytest.mark.parametrize("level,dof,expected", [
    (0.95, 1, 12.706), (0.95, 2, 4.303), (0.95, 3, 3.182), (0.95, 4, 2.776), (0.95, 5, 2.571),
    (0.95, 9, 2.262), (0.95, 10, 2.228), (0.95, 30, 2.042), (0.90, 2, 2.920), (0.90, 7, 1.895),
    (0.99, 4, 4.604), (0.99, 11, 3.106), (0.80, 6, 1.440),
])
def test_t_quantile_matches_table(level, dof, expected):
    assert t_quantile(level, dof) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_tends_to_normal():
    # z_{0.975} = 1.959964; t_{0.975, 1000} = 1.962339 (table value)
    assert t_quantile(0.95, 1000) == pytest.approx(1.962339, abs=2e-5)


def test_mean_ci_by_hand():
    mean, lo, hi, half = mean_ci([1.0, 2.0, 3.0])
    # s = 1, n = 3: half = 4.3027 / sqrt(3)
    assert mean == 2.0
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (lo, hi) == pytest.approx((2.0 - half, 2.0 + half))
    mean, lo, hi, half = mean_ci([10.0, 12.0, 11.0, 13.0, 9.0], level=0.95)
    # s = sqrt(2.5), n = 5, t = 2.7764
    assert mean == 11.0 and half == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)


def test_mean_ci_degenerate_and_errors():
    mean, lo, hi, half = mean_ci([4.0])
    assert mean == 4.0 and math.isnan(lo) and math.isnan(hi) and math.isnan(half)
    assert mean_ci([2.0, 2.0, 2.0])[1:] == (2.0, 2.0, 0.0)
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1.0, math.nan])
    with pytest.raises(ValueError):
        mean_ci([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError):
        t_quantile(0.95, 0)
