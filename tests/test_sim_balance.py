"""Fig. 14's head of the run: the attention balance over the forwards that start in the run's first
share of time ("during the first 5% of the task", PAPER.md 5.5), checked against hand-made
results and an independent mask over a simulated run."""

import types

import numpy as np
import pytest
from config_files import load_sim_config

from dualpath_jax.sched import ClusterScheduler
from dualpath_jax.sim import HardwareConfig, SimAgent, SimConfig, simulate
from dualpath_jax.sim.adapters import agents_from_trajectories
from dualpath_jax.sim.compute import ComputeModel
from dualpath_jax.sim.runs import forwards_in_head, offline_starts, variant_config
from dualpath_jax.studies.config import from_config_dict
from dualpath_jax.studies.offline import _balance_summary

FETCH = 0.05


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
