"""writers.significant: the rounding the benchmarks apply so that what they print is what they write."""

import math

from dualpath_jax.metrics import writers


def test_significant_rounds_to_significant_digits_and_keeps_non_finite_values():
    assert writers.significant(123.456789) == 123.457
    assert writers.significant(0.000123456789, 4) == 0.0001235
    assert writers.significant(98765432.1, 3) == 98800000.0
    assert math.isnan(writers.significant(float("nan")))
    assert writers.significant(float("inf")) == float("inf")
    # printed and written alike: the line a script prints parses back to the same number
    x = writers.significant(2 / 3)
    assert float(writers.format_named_values({"x": x}).split(": ")[1]) == x
