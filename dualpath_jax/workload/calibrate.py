"""Fit the synthetic generator's free parameters to the paper's Table 2.

Gauss-Newton in log-parameter space: the residual is ``log(mean stats / Table 2)`` for the five
columns (turns, append, gen, total, context), the stats being the mean over ``seeds`` of
:func:`~dualpath_jax.workload.stats.trace_stats` on ``num_trajectories`` generated trajectories
(common random numbers across evaluations, so finite differences are smooth). Produces the
``PAPER_PARAMS`` table of :mod:`dualpath_jax.workload.synthetic`; about a minute per MAL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dualpath_jax.workload.stats import trace_stats
from dualpath_jax.workload.synthetic import PAPER_PARAMS, TABLE2, GeneratorParams, generate_base_trajectories

__all__ = ["table2_relative_errors", "mean_relative_errors", "calibrate_generator"]

_COLUMNS = ("turns", "append", "gen", "total", "context")


def table2_relative_errors(stats, mal: str) -> np.ndarray:
    """f64[5] (measured / Table 2) - 1 for turns, append, gen, total, context."""
    row = TABLE2[mal]
    got = np.array([stats.turns_mean, stats.append_mean, stats.gen_mean, stats.total_mean, stats.context_mean])
    want = np.array([getattr(row, c) for c in _COLUMNS], dtype=np.float64)
    return got / want - 1.0


def mean_relative_errors(mal: str, params: GeneratorParams, seeds: Sequence[int],
                         num_trajectories: int = 500) -> np.ndarray:
    """f64[5] relative errors of the seed-averaged means."""
    errs = [table2_relative_errors(trace_stats(generate_base_trajectories(mal, num_trajectories, s, params)), mal)
            for s in seeds]
    return np.mean(errs, axis=0)


def calibrate_generator(mal: str, seeds: Sequence[int] = tuple(range(16)), num_trajectories: int = 500,
                        iterations: int = 12, tolerance: float = 1e-3, step_log: float = 0.02,
                        initial: GeneratorParams | None = None) -> tuple[GeneratorParams, np.ndarray]:
    """Fit the five free parameters to Table 2; returns (params, final f64[5] relative errors)."""
    params = initial or PAPER_PARAMS[mal]
    logp = np.log(params.free_vector())

    def residual(lp):
        return np.log1p(mean_relative_errors(mal, params.with_free(np.exp(lp)), seeds, num_trajectories))

    r = residual(logp)
    for _ in range(iterations):
        if np.max(np.abs(r)) < tolerance:
            break
        jac = np.zeros((5, 5))
        for j in range(5):
            lp = logp.copy()
            lp[j] += step_log
            jac[:, j] = (residual(lp) - r) / step_log
        logp = logp + np.clip(np.linalg.lstsq(jac, -r, rcond=None)[0], -0.3, 0.3)
        r = residual(logp)
    return params.with_free(np.exp(logp)), np.expm1(r)
