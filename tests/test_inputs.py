"""Bad simulator inputs fail at once with one line naming the field (issue #22, item 6), instead of
being truncated silently or giving a result that looks real."""

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.sim import SimAgent, SimConfig, Simulator, simulate

CFG = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1)


def test_an_empty_agent_list_is_an_error_not_a_run_that_ends_at_zero():
    with pytest.raises(ConfigError, match=r"^agents: must hold at least one agent") as e:
        simulate(CFG, [])
    assert e.value.field == "agents"
    with pytest.raises(ConfigError, match=r"^agents: "):
        Simulator(CFG, ())


@pytest.mark.parametrize("field,append,gen,message", [
    ("append", [100.7, 50.0], [3, 4], r"round 0 has 100.7"),
    ("append", [100, 50.2], [3, 4], r"round 1 has 50.2"),
    ("gen", [100, 50], [3.5, 4], r"round 0 has 3.5"),
    ("gen", [100, 50], [3, float("nan")], r"round 1 has nan"),
    ("gen", [100, 50], [True, True], r"got bool values"),
])
def test_fractional_token_counts_are_rejected_not_truncated(field, append, gen, message):
    agents = [SimAgent(0.0, np.array([10, 10]), np.array([2, 2])),
              SimAgent(0.0, np.asarray(append), np.asarray(gen))]
    with pytest.raises(ConfigError, match=rf"^agents\[1\]\.{field}: token counts must be integers \({message}") as e:
        simulate(CFG, agents)
    assert e.value.field == f"agents[1].{field}"


@pytest.mark.parametrize("hit,message", [([0, 100.9], r"round 1 has 100.9"), ([0.5, 100], r"round 0 has 0.5")])
def test_fractional_hits_are_rejected_not_truncated(hit, message):
    agents = [SimAgent(0.0, np.array([10, 10]), np.array([2, 2])),
              SimAgent(0.0, np.array([500, 10]), np.array([3, 4]), None, np.asarray(hit))]
    with pytest.raises(ConfigError, match=rf"^agents\[1\]\.hit: token counts must be integers \({message}\)") as e:
        simulate(CFG, agents)
    assert e.value.field == "agents[1].hit"


def test_whole_valued_float_hits_are_token_counts():
    """Round 1's given hit of 100 tokens (of its 503-token previous context), as floats or ints:
    the same run, and the hit it reports is 100 rounded down to whole blocks."""
    runs = [simulate(CFG, [SimAgent(0.0, np.array([500, 10]), np.array([3, 4]), None, np.asarray(h))])
            for h in ([0, 100], [0.0, 100.0])]
    assert runs[0].end_s == runs[1].end_s
    np.testing.assert_array_equal(runs[0].requests["hit_tokens"], runs[1].requests["hit_tokens"])
    z = CFG.block_tokens
    assert runs[1].requests["hit_tokens"].tolist() == [0, 100 // z * z]


def test_whole_valued_floats_are_token_counts():
    as_int = simulate(CFG, [SimAgent(0.0, np.array([100, 50]), np.array([3, 4]))])
    as_float = simulate(CFG, [SimAgent(0.0, np.array([100.0, 50.0]), np.array([3.0, 4.0]))])
    assert as_float.end_s == as_int.end_s
    np.testing.assert_array_equal(as_float.requests["append_tokens"], as_int.requests["append_tokens"])
