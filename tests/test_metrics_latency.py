"""Latency metrics on hand-computed cases, and the max-APS search on a synthetic system."""

import math

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.metrics import (SLO, RequestRecord, RequestTable, evaluate_slo, jct_s, latency_summary,
                                  max_aps_under_slo, summarize, tpot_s, trajectory_completion_s, ttft_s, ttst_s)


def rec(traj="a", rnd=0, arrival=1.0, start=1.5, pdone=2.0, first=2.0, second=2.5, finish=3.5, g=6, **kw):
    return RequestRecord(traj, rnd, arrival, start, pdone, first, second, finish, g, **kw)


def test_ttft_ttst_tpot_by_hand():
    records = [rec(), rec("b", 0, 0.0, 0.0, 0.5, 0.75, math.nan, 0.75, 1), rec("c", 0, 0.0, 0.1, 0.2, 0.3, 0.9, 0.9, 2)]
    np.testing.assert_allclose(ttft_s(records), [1.0, 0.75, 0.3])
    np.testing.assert_allclose(ttst_s(records), [0.5, np.nan, 0.6])
    # g = 6: 4 decode steps after the second token in 1.0 s
    np.testing.assert_allclose(tpot_s(records), [0.25, np.nan, np.nan])
    np.testing.assert_allclose(tpot_s(records, include_second_token=True), [0.3, np.nan, 0.6])


def test_failed_requests_are_excluded_and_counted():
    bad = rec("z", error="store read failed", first=math.nan, second=math.nan, finish=math.nan)
    records = [rec(), bad]
    np.testing.assert_allclose(ttft_s(records), [1.0])
    summary = latency_summary(records)
    assert summary["num_requests"] == 2 and summary["num_failed"] == 1 and summary["ttft_mean_s"] == 1.0
    ok, _ = evaluate_slo(records)
    assert not ok


def test_jct_and_trajectory_completion_by_hand():
    records = [rec("a", 0, 0.0, 0.0, 1.0, 1.0, 1.5, 3.0), rec("a", 1, 4.0, 4.0, 4.5, 4.5, 5.0, 6.0),
               rec("b", 0, 1.0, 1.0, 1.5, 1.5, 1.6, 2.0)]
    assert jct_s(records) == 6.0
    assert jct_s(records, start_s=-1.0) == 7.0
    assert trajectory_completion_s(records) == {"a": 6.0, "b": 1.0}
    # a trajectory whose later round failed did not complete: its round 0's finish is not its completion
    failed = records + [rec("b", 1, 3.0, 3.0, math.nan, math.nan, math.nan, math.nan, error="read failed")]
    done = trajectory_completion_s(failed)
    assert done["a"] == 6.0 and math.isnan(done["b"])
    table = RequestTable.from_records(records)
    assert jct_s(table) == 6.0 and table.to_records() == records


def test_summarize_statistics():
    v = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert summarize(v, "mean") == 2.5
    assert summarize(v, "p50") == 2.5            # linear interpolation between 2 and 3
    assert summarize(v, "max") == 4.0
    assert summarize(np.arange(101.0), "p99") == 99.0
    assert summarize(np.arange(1001.0), "p99.9") == pytest.approx(999.0)
    assert math.isnan(summarize(np.array([np.nan]), "mean"))
    with pytest.raises(ValueError, match="statistic"):
        summarize(v, "median")


@pytest.mark.parametrize("kw,match", [
    (dict(first=0.5), r"first_token_s: must be finite and >= prefill_finish_s"),
    (dict(finish=2.2), r"finish_s: must be finite and >= second_token_s"),
    (dict(second=math.nan), r"second_token_s: required when num_gen_tokens >= 2"),
    (dict(read_side="both"), r"read_side: must be one of"),
    (dict(read_bytes=-1), r"read_bytes: must be >= 0"),
])
def test_request_record_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        rec(**kw)


def test_slo_defaults_and_validation():
    slo = SLO()
    assert (slo.ttft_s, slo.tpot_s, slo.statistic) == (4.0, 0.05, "mean")
    with pytest.raises(ConfigError, match=r"slo\.statistic"):
        SLO(statistic="p101")
    with pytest.raises(ConfigError, match=r"slo\.tpot_s"):
        SLO(tpot_s=0.0)
    # TTFT 1.0 s and TPOT 0.25 s: fails 50 ms TPOT, passes a 0.3 s one
    assert evaluate_slo([rec()], SLO())[0] is False
    assert evaluate_slo([rec()], SLO(tpot_s=0.3))[0] is True


def synthetic_system(capacity_aps):
    """Records whose mean TTFT is 4 s exactly at ``capacity_aps`` and grows with the rate."""
    calls = []

    def run(aps):
        calls.append(aps)
        ttft = 4.0 * aps / capacity_aps
        return [rec("a", 0, 0.0, 0.0, ttft, ttft, ttft + 0.01, ttft + 0.05, 6),
                rec("b", 0, 0.0, 0.0, ttft, ttft, ttft + 0.01, ttft + 0.05, 6)]
    return run, calls


def test_max_aps_search_brackets_and_bisects():
    run, calls = synthetic_system(0.37)
    res = max_aps_under_slo(run, initial_aps=0.1, rel_tol=0.01)
    assert res.bracketed and 0.37 / 1.01 <= res.aps <= 0.37
    assert len(calls) == len(set(calls)) == len(res.trials)
    assert all(t.meets_slo == (t.aps <= 0.37) for t in res.trials)
    # starting above the capacity halves first
    run, _ = synthetic_system(0.37)
    res = max_aps_under_slo(run, initial_aps=5.0, rel_tol=0.01)
    assert 0.37 / 1.01 <= res.aps <= 0.37
    # p99 statistic and TPOT bound: TPOT here is (0.05 - 0.01) / 4 = 10 ms, so TPOT never binds
    run, _ = synthetic_system(2.0)
    assert max_aps_under_slo(run, SLO(statistic="p99"), rel_tol=0.02).aps == pytest.approx(2.0, rel=0.02)


def test_a_search_on_judged_runs_equals_the_search_on_records():
    # a remote run judges its own records (evaluate_slo where they are) and returns the verdict
    run, _ = synthetic_system(0.37)
    on_records = max_aps_under_slo(run, initial_aps=0.1, rel_tol=0.01)
    run, calls = synthetic_system(0.37)
    judged = max_aps_under_slo(lambda a: evaluate_slo(run(a), SLO()), initial_aps=0.1, rel_tol=0.01, judged=True)
    assert judged == on_records and len(calls) == len(judged.trials)


def test_max_aps_search_edges():
    run, _ = synthetic_system(1e-6)
    res = max_aps_under_slo(run, initial_aps=0.1, min_aps=0.01)
    assert res.aps == 0.0 and res.bracketed and res.resolved  # min_aps failed: below it
    run, _ = synthetic_system(1e9)
    res = max_aps_under_slo(run, initial_aps=1.0, max_aps=8.0)
    assert res.aps == 8.0 and not res.bracketed and not res.resolved
    # max_runs out while halving from 4 (4, 2, 1, 0.5, 0.25, 0.125 all fail; 0.05 is never tried):
    # 0.0 is a lower bound, not a bracketed capacity
    run, _ = synthetic_system(0.05)
    res = max_aps_under_slo(run, initial_aps=4.0, max_runs=6)
    assert [t.aps for t in res.trials] == [4.0, 2.0, 1.0, 0.5, 0.25, 0.125]
    assert res.aps == 0.0 and not res.bracketed and not res.resolved
    # max_runs out while bisecting: bracketed (0.25 passes, 0.5 fails) but not to rel_tol
    run, _ = synthetic_system(0.37)
    res = max_aps_under_slo(run, initial_aps=0.25, rel_tol=0.01, max_runs=4)
    assert res.bracketed and not res.resolved and 0.25 <= res.aps <= 0.37
    assert max_aps_under_slo(synthetic_system(0.37)[0], initial_aps=0.1, rel_tol=0.01).resolved
    with pytest.raises(ConfigError, match="initial_aps"):
        max_aps_under_slo(run, initial_aps=10.0, max_aps=8.0)


def test_a_rate_that_measured_nothing_is_neither_a_pass_nor_a_failure():
    """A run with no request in its window (e.g. a capped run whose agents all arrive in the
    warm-up) says nothing about the SLO: above a passing rate the search ends unbracketed there
    (not a bracket whose failing end was never measured); while halving, it goes on down."""
    def system(capacity_aps, empty_from_aps):
        run, calls = synthetic_system(capacity_aps)
        return (lambda aps: [] if aps >= empty_from_aps else run(aps)), calls

    assert evaluate_slo([], SLO()) == (False, {"ttft_s": pytest.approx(float("nan"), nan_ok=True),
                                               "ttft_worst_window_s": pytest.approx(float("nan"), nan_ok=True),
                                               "tpot_s": pytest.approx(float("nan"), nan_ok=True),
                                               "num_failed": 0.0, "num_requests": 0.0})
    run, calls = system(10.0, 1.0)  # 0.1 .. 0.8 pass; 1.6 measures nothing
    res = max_aps_under_slo(run, initial_aps=0.1, rel_tol=0.01)
    assert [t.aps for t in res.trials] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert res.aps == pytest.approx(0.8) and not res.bracketed and not res.resolved
    assert not res.trials[-1].meets_slo
    # halving from an unmeasured rate: 4, 2, 1 measure nothing, 0.5 fails, 0.25 passes: bracketed by 0.5
    run, calls = system(0.37, 1.0)
    res = max_aps_under_slo(run, initial_aps=4.0, rel_tol=0.01)
    assert res.bracketed and res.resolved and 0.37 / 1.01 <= res.aps <= 0.37
    # nothing measured down to min_aps: no rate is known to fail, so 0 is only a lower bound
    run, _ = system(0.37, 0.0)
    res = max_aps_under_slo(run, initial_aps=0.4, min_aps=0.1)
    assert res.aps == 0.0 and not res.bracketed and not res.resolved


def test_request_record_accepts_every_read_plan_of_the_scheduler():
    from dualpath_jax.metrics import READ_SIDES
    from dualpath_jax.sched.types import READ_SIDES as SCHED_READ_SIDES
    assert set(READ_SIDES) == set(SCHED_READ_SIDES)
    for side in SCHED_READ_SIDES:
        assert rec(read_side=side).read_side == side


def test_worst_window_by_hand():
    from dualpath_jax.metrics.latency import worst_window

    t = np.arange(9.0)  # values equal to their times: a window's mean is its middle
    # span 8: w = min(4, 8 / 4) = 2, windows [0, 2], [1, 3], ..., [6, 8]: the last's mean is 7
    assert worst_window(t, t, 4.0) == 7.0
    # w = 1: windows [0, 1], [0.5, 1.5], ..., [7, 8]: means 0.5, 1 (one value), ..., 7.5
    assert worst_window(t, t, 1.0) == 7.5
    assert worst_window(t, t, 0.0) == 4.0 and worst_window(t, t, 1.0, "max") == 8.0
    assert math.isnan(worst_window(t, np.full(9, np.nan), 1.0))
    # windows far narrower than the span are widened to span / MAX_SLO_WINDOWS: two values 3000 s apart
    from dualpath_jax.metrics.latency import MAX_SLO_WINDOWS
    assert worst_window(np.array([0.0, 3000.0]), np.array([1.0, 2.0]), 1e-9) == 2.0 and MAX_SLO_WINDOWS <= 10_000


def test_a_ttft_that_climbs_through_the_span_fails_although_its_mean_meets_the_bound():
    """100 requests issued 1 s apart whose TTFT rises from 2 to 6 s (an overloaded system): the
    mean is 4.0 s, the bound; the last quarter-span window (24.75 s) averages about 5.5 s."""
    times = np.arange(100.0)
    ttft = 2.0 + 4.0 * times / 99.0
    climbing = [rec(f"t{i}", 0, a, a, a + x, a + x, a + x + 0.01, a + x + 0.1, 6) for i, (a, x) in
                enumerate(zip(times, ttft))]
    ok, stats = evaluate_slo(climbing)
    stats_climbing = stats
    assert stats["ttft_s"] == pytest.approx(4.0) and not ok
    assert stats["ttft_worst_window_s"] == pytest.approx(2.0 + 4.0 * (99 - 24.75 / 2) / 99, abs=0.05)
    assert evaluate_slo(climbing, SLO(window_s=0))[0]  # the span as a whole: the mean alone
    flat = [rec(f"t{i}", 0, a, a, a + 3.9, a + 3.9, a + 3.91, a + 4.0, 6) for i, a in enumerate(times)]
    ok, stats = evaluate_slo(flat)
    assert ok and stats["ttft_worst_window_s"] == pytest.approx(3.9)
    with pytest.raises(ConfigError, match="slo.window_s"):
        SLO(window_s=-1.0)
    with pytest.raises(ConfigError, match=r"slo.window_s: must be 0 \(the span as a whole\) or at least 1 s"):
        SLO(window_s=1e-3)
    # a search's trials carry the worst window (the advisor names TTFT as the bound that broke)
    res = max_aps_under_slo(lambda aps: climbing, initial_aps=1.0, max_aps=1.0)
    assert res.trials[0].ttft_worst_window_s == pytest.approx(stats_climbing["ttft_worst_window_s"])
