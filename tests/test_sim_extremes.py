"""The simulator far outside the paper's range: runs of absurd length finish (the clock's float
resolution never stalls a decode) and their traffic windows fit in memory."""

import math

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.metrics.records import TransferTable
from dualpath_jax.metrics.traffic import MAX_WINDOWS, link_bytes_in_windows
from dualpath_jax.sim import SimAgent, SimConfig, Simulator
from dualpath_jax.sim.units import Unit


def test_a_completion_below_the_clocks_resolution_is_due_now():
    # at 1e9 s a float64 step is 1.2e-7 s: 1e-8 of a 10 ms decode step (1e-10 s) cannot move the clock
    u = Unit([0])
    u.last_t, u.step_s, u.steps = 1e9, 0.01, 100.0
    u.heap = [(100.0 + 1e-8, 7, 0, 10.0)]
    assert 1e9 + 1e-8 * 0.01 == 1e9
    assert u.next_completion() == 1e9 and u.steps >= u.heap[0][0]  # due at once, not rescheduled forever
    # a completion the clock can resolve keeps its time and the step count
    v = Unit([0])
    v.last_t, v.step_s, v.steps = 1e3, 0.01, 100.0
    v.heap = [(102.5, 7, 0, 10.0)]
    assert v.next_completion() == pytest.approx(1e3 + 0.025, abs=1e-12) and v.steps == 100.0


@pytest.mark.parametrize("change", [{"de_join_s": 1e30}, {"fetch_period_s": 1e9}])
def test_runs_of_absurd_length_finish(change):
    agents = [SimAgent(0.0, np.array([300, 40, 40]), np.array([20, 20, 20])) for _ in range(6)]
    res = Simulator(SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1, **change), agents).run(
        max_events=200_000)  # a stalled clock spins far beyond this; the run needs a few hundred events
    r = res.requests
    assert len(r["finish_s"]) == 18 and np.all(np.isfinite(r["finish_s"]))
    assert np.all(r["finish_s"] >= r["first_token_s"]) and res.events < 5_000
    # every admission holds its DE for de_join_s; every placement waits for a tick of fetch_period_s
    assert res.end_s >= 3 * next(iter(change.values()))


def test_a_span_of_too_many_windows_gets_wider_ones():
    span = 1e12  # 3e4 years of 10 s windows
    t = TransferTable(link=np.array(["a", "b"], dtype=object), start_s=np.array([0.0, span / 2]),
                      finish_s=np.array([span / 4, span]), num_bytes=np.array([100.0, 300.0]),
                      path=np.array(["p", "p"], dtype=object))
    w = link_bytes_in_windows(t, 10.0)
    assert w.bytes.shape == (2, MAX_WINDOWS) and math.isclose(w.window_s, span / (MAX_WINDOWS - 1), rel_tol=1e-9)
    assert w.bytes[0].sum() == pytest.approx(100.0) and w.bytes[1].sum() == pytest.approx(300.0)
    assert w.edges_s[-1] >= span
    small = link_bytes_in_windows(t, span / 10)  # within the cap: windows as asked
    assert small.bytes.shape == (2, 11) and small.window_s == pytest.approx(span / 10)
    for bad in (1, 0, -3, 2.5):
        with pytest.raises(ConfigError, match="max_windows: must be an integer >= 2"):
            link_bytes_in_windows(t, 10.0, max_windows=bad)


@pytest.mark.parametrize("de_join_s", [0.0, 0.01])
def test_the_second_token_comes_when_the_decode_counter_passes_it(de_join_s):
    # joins after a request's own change its DE's step time (and stall it for de_join_s): its second
    # token is when its first decode step ends, not what the step time at its join predicted
    from dualpath_jax.sim.adapters import request_table

    rng = np.random.default_rng(0)
    agents = [SimAgent(float(rng.uniform(0, 2.0)), rng.integers(500, 3000, 3).astype(np.int64),
                       np.array([2, rng.integers(3, 200), 2], np.int64)) for _ in range(60)]
    cfg = SimConfig(loading="dual", prefill="layerwise", policy="dualpath", fetch_period_s=0.005, de_join_s=de_join_s)
    res = Simulator(cfg, agents).run()
    r = res.requests
    gen = np.asarray(r["gen_tokens"])
    first, second = np.asarray(r["first_token_s"]), np.asarray(r["second_token_s"])
    start, finish = np.asarray(r["decode_start_s"]), np.asarray(r["finish_s"])
    two = gen == 2  # the second token is the last: its time is the completion's
    assert two.sum() > 50 and np.allclose(second[two], finish[two], rtol=0, atol=1e-9)
    assert (start[gen >= 2] <= second[gen >= 2]).all() and (second[gen >= 2] <= finish[gen >= 2]).all()
    assert (first[gen >= 2] < second[gen >= 2]).all()
    request_table(res).to_records()  # every record's timeline is valid
