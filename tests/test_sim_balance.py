"""Fig. 14: an EP group's attention-time Max/Avg per forward (hand-computed forwards, idle members,
weighting), and the run's head: the forwards that start in its first share of time ("during the
first 5% of the task", PAPER.md 5.5), checked against hand-made results and an independent mask."""

import types

import numpy as np
import pytest
from config_files import load_sim_config

from dualpath_jax.sched import ClusterScheduler
from dualpath_jax.sim import HardwareConfig, SimAgent, SimConfig, Simulator, simulate
from dualpath_jax.sim.adapters import agents_from_trajectories
from dualpath_jax.sim.compute import ComputeModel
from dualpath_jax.sim.runs import forwards_in_head, offline_starts, variant_config
from dualpath_jax.studies.config import from_config_dict
from dualpath_jax.studies.offline import _balance_summary
from sim_cases import FETCH


def test_forwards_in_head_counts_the_forwards_started_in_the_time_head():
    res = types.SimpleNamespace(attention_start_s=np.array([0.0, 1.0, 2.0, 2.0, 5.0, 9.0]), end_s=10.0)
    assert forwards_in_head(res, 0.2) == 2  # [0, 2 s): a forward starting at 2 s is outside
    assert forwards_in_head(res, 0.21) == 4
    assert forwards_in_head(res, 0.0) == 0
    assert forwards_in_head(res, 1.0) == 6
    late = types.SimpleNamespace(attention_start_s=np.array([3.0]), end_s=10.0)
    assert forwards_in_head(late, 0.05) == 0  # no forward in the head: no figure, not the first forward's
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            forwards_in_head(res, bad)


def test_each_group_forward_records_its_start():
    """Two two-round agents on a two-engine PE group (oracle loading, so a request is ready when
    placed): one attention row per group forward, started when its requests' prefill started."""
    model = ComputeModel(prefill_overhead_s=0.01, s_per_token=0.0, s_per_key=1e-6)
    cfg = SimConfig(loading="oracle", compute=model, fetch_period_s=FETCH, prefill_nodes=1, decode_nodes=1,
                    hardware=HardwareConfig(gpus_per_node=2), ep_sync=True)
    agents = [SimAgent(0.0, np.array([100, 40]), np.array([2, 2])),
              SimAgent(0.0, np.array([300, 20]), np.array([5, 1]))]
    res = simulate(cfg, agents)
    start = res.attention_start_s
    assert start.shape == (len(res.attention_s),) and np.all(np.diff(start) >= 0)
    assert start[0] == FETCH  # both first rounds are placed in the first tick and run together
    # every forward here holds the first (only) chunk of its requests
    assert sorted(set(start.tolist())) == sorted(set(res.requests["prefill_start_s"].tolist()))


def test_balance_time_head_matches_an_independent_mask():
    """The balance study's time head is the mean (and attention-weighted) Max/Avg over the forwards
    whose start lies before head_fraction x JCT, however many forwards that is."""
    config = from_config_dict(load_sim_config("balance", "tiny"))
    wl = config.workload.replace(num_agents=int(config.num_agents))
    cfg = variant_config(config.sim, "dualpath")
    out = _balance_summary((cfg, ClusterScheduler, wl, 1.0, 0.3))
    ts = wl.build()
    res = simulate(cfg, agents_from_trajectories(ts, offline_starts(ts)))
    mask = res.attention_start_s < 0.3 * res.end_s
    assert 0 < mask.sum() < len(mask)
    row = out["row"]
    assert row["head_time_forwards"] == int(mask.sum())
    assert row["attn_max_avg_head_time_mean"] == pytest.approx(float(np.mean(res.attention_ratio[mask])), rel=1e-12)
    a = res.attention_s[mask]
    assert row["attn_max_avg_head_time_weighted"] == pytest.approx(a[:, 0].sum() / a[:, 1].sum(), rel=1e-12)
    assert out["head_time_end_s"] == pytest.approx(0.3 * res.end_s)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_balance_head_fraction_outside_0_1_is_one_config_error(value):
    from dualpath_jax.config import ConfigError
    config = load_sim_config("balance", "tiny")
    config.head_fraction = value
    with pytest.raises(ConfigError, match="head_fraction"):
        from_config_dict(config)


def test_attention_balance_of_a_group_forward_hand_computed():
    """Two requests placed in one tick on the two engines of a PE group run in one forward; the
    group's attention Max/Avg is the slower member's attention seconds over the members' mean."""
    from dualpath_jax.sim.compute import ComputeModel
    from dualpath_jax.sim.runs import attention_weighted
    model = ComputeModel(prefill_overhead_s=0.01, s_per_token=0.0, s_per_key=1e-6)
    cfg = SimConfig(loading="oracle", compute=model, fetch_period_s=FETCH, prefill_nodes=1, decode_nodes=1,
                    hardware=HardwareConfig(gpus_per_node=2), ep_sync=True)
    res = simulate(cfg, [SimAgent(0.0, np.array([100]), np.array([1])),
                         SimAgent(0.0, np.array([300]), np.array([1]))])
    r = res.requests
    assert sorted(r["pe"]) == [0, 1] and r["prefill_start_s"][0] == r["prefill_start_s"][1] == FETCH
    a_small, a_big = 1e-6 * 100 * 101 / 2, 1e-6 * 300 * 301 / 2  # keys of 100 and 300 new tokens
    assert res.attention_s.shape == (1, 2)
    assert res.attention_s[0].tolist() == pytest.approx([a_big, (a_small + a_big) / 2], rel=1e-12)
    assert res.attention_ratio.tolist() == pytest.approx([2 * a_big / (a_small + a_big)], rel=1e-12)
    assert res.attention_members.tolist() == [[2, 2]]
    assert attention_weighted(res) == pytest.approx(2 * a_big / (a_small + a_big), rel=1e-12)
    # the group waits for its slowest member: both first tokens come at the end of the longer forward
    assert r["first_token_s"].tolist() == pytest.approx([FETCH + 0.01 + a_big] * 2, rel=1e-12)


def test_idle_group_members_count_as_zero_attention():
    """Three equal requests on a four-engine PE group: one forward with three busy members, so
    Max/Avg = a / (3a / 4) = 4/3 exactly, and the busy-member split reports that forward."""
    from dualpath_jax.sim.compute import ComputeModel
    from dualpath_jax.sim.runs import attention_by_busy_members
    model = ComputeModel(prefill_overhead_s=0.01, s_per_token=0.0, s_per_key=1e-6)
    cfg = SimConfig(loading="oracle", compute=model, fetch_period_s=FETCH, prefill_nodes=1, decode_nodes=1,
                    hardware=HardwareConfig(gpus_per_node=4), ep_sync=True)
    res = simulate(cfg, [SimAgent(0.0, np.array([200]), np.array([1])) for _ in range(3)])
    assert sorted(res.requests["pe"]) == [0, 1, 2]
    a = 1e-6 * 200 * 201 / 2
    assert res.attention_s.shape == (1, 2)
    assert res.attention_s[0].tolist() == pytest.approx([a, 3 * a / 4], rel=1e-12)
    assert res.attention_members.tolist() == [[3, 4]]
    assert attention_by_busy_members(res) == [pytest.approx(
        {"busy": 3, "members": 4, "forwards": 1, "max_avg_mean": 4 / 3, "max_avg_weighted": 4 / 3}, rel=1e-12)]


def test_attention_by_busy_members_groups_forwards():
    from dualpath_jax.sim.runs import attention_by_busy_members
    res = types.SimpleNamespace(attention_s=np.array([[2.0, 1.0], [4.0, 1.0], [6.0, 3.0], [8.0, 1.0]]),
                                attention_members=np.array([[4, 8], [2, 8], [4, 8], [1, 8]]))
    rows = attention_by_busy_members(res)
    assert [(r["busy"], r["members"], r["forwards"]) for r in rows] == [(1, 8, 1), (2, 8, 1), (4, 8, 2)]
    assert rows[2]["max_avg_mean"] == pytest.approx(2.0)
    assert rows[2]["max_avg_weighted"] == pytest.approx((2.0 + 6.0) / (1.0 + 3.0))
    assert [r["busy"] for r in attention_by_busy_members(res, 2)] == [2, 4]
    assert attention_by_busy_members(types.SimpleNamespace(attention_s=np.zeros((0, 2)),
                                                           attention_members=np.zeros((0, 2), np.int64))) == []


def test_attention_weighted_over_the_first_forwards():
    """Attention-time-weighted Max/Avg: sum of the slowest members' seconds over the sum of the means."""
    from dualpath_jax.sim.runs import attention_weighted
    res = types.SimpleNamespace(attention_s=np.array([[2.0, 1.0], [3.0, 1.0], [9.0, 1.0]]))
    assert attention_weighted(res) == pytest.approx(14.0 / 3.0, rel=1e-12)
    assert attention_weighted(res, 1) == pytest.approx(2.0, rel=1e-12)
    assert attention_weighted(res, 2) == pytest.approx(2.5, rel=1e-12)
    assert np.isnan(attention_weighted(res, 0))
    assert np.isnan(attention_weighted(types.SimpleNamespace(attention_s=np.zeros((0, 2)))))


def test_an_attention_time_estimate_error_unbalances_a_group_forward_by_its_draws():
    """sim.attention_time_error: each engine's forward attends for the estimate times exp(g), g a
    normal of mean -sigma^2/2 (mean-one factor) drawn in engine order from Random(the run's
    noise_seed), a seed the workload sets: the same workload repeats, another draws another stream."""
    import math
    import random

    from dualpath_jax.config import ConfigError

    model = ComputeModel(prefill_overhead_s=0.01, s_per_token=0.0, s_per_key=1e-6)
    base = SimConfig(loading="oracle", compute=model, fetch_period_s=FETCH, prefill_nodes=1, decode_nodes=1,
                     hardware=HardwareConfig(gpus_per_node=2), ep_sync=True)
    agents = [SimAgent(0.0, np.array([300]), np.array([2])), SimAgent(0.0, np.array([300]), np.array([2]))]
    exact = simulate(base, agents)
    est = float(exact.attention_s[0][0])
    assert exact.attention_s[0].tolist() == [est, est]  # one request each, the same shape: balanced
    sigma = 0.5
    sim = Simulator(base.replace(attention_time_error=sigma), agents)
    rng = random.Random(sim.noise_seed)
    a1, a2 = (est * math.exp(rng.gauss(-sigma * sigma / 2, sigma)) for _ in range(2))
    noisy = sim.run()
    assert noisy.attention_s[0].tolist() == pytest.approx([max(a1, a2), (a1 + a2) / 2], rel=1e-12)
    assert noisy.end_s != exact.end_s  # the forward lasts as long as its slowest member's actual time
    # the workload sets the stream: the same agents repeat it, other agents (another seed's) do not
    assert Simulator(base, agents).noise_seed == sim.noise_seed
    other = [SimAgent(0.0, np.array([301]), np.array([2])), agents[1]]
    assert Simulator(base, other).noise_seed != sim.noise_seed
    later = [SimAgent(0.5, np.array([300]), np.array([2])), agents[1]]
    assert Simulator(base, later).noise_seed != sim.noise_seed
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="sim.attention_time_error"):
            base.replace(attention_time_error=bad)
