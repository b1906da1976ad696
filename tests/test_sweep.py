"""Studies' independent runs on Ray: the same results as one after another in this process."""

import math

import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.sim import SimConfig
from dualpath_jax.studies import RunCache, Sweep, WorkloadSpec, offline_runs


def _fingerprint(summary: dict) -> str:
    """Every figure of a run but its wall time (and the memo flag), exactly (repr: NaN equals NaN)."""
    return repr(sorted((k, v) for k, v in summary.items() if k not in ("wall_s", "cached")))


def test_runs_on_ray_equal_serial_runs():
    base = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1, fetch_period_s=0.02)
    runs = [(v, WorkloadSpec(mal="32K", num_agents=n)) for n in (8, 16) for v in ("basic", "dualpath", "oracle")]
    serial = offline_runs(base, runs, None)
    cache = RunCache(sweep=Sweep(workers=2))
    parallel = offline_runs(base, runs, None, cache=cache)
    assert [_fingerprint(s) for s in parallel] == [_fingerprint(s) for s in serial]
    assert all(not s["cached"] for s in parallel) and cache.misses == len(runs)
    again = offline_runs(base, runs[:2], None, cache=cache)  # memoised: nothing is sent to Ray again
    assert [s["cached"] for s in again] == [True, True] and cache.misses == len(runs)
    assert all(math.isfinite(s["jct_s"]) for s in serial)
    # a run that raises re-raises here (one Ray instance per test session: this test starts it)
    with pytest.raises(Exception, match="math domain error"):
        Sweep(workers=2).map(math.sqrt, [4.0, -1.0])


def test_serial_sweep_and_bad_worker_counts():
    assert Sweep().map(lambda x: x * x, [1, 2, 3]) == [1, 4, 9] and not Sweep().parallel
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="workers"):
            Sweep(workers=bad)
