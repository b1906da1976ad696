"""The paper's dataset generator against Table 2, agent expansion, Fig. 9 scaling, trace_stats script."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.workload import (MAL_TOKENS, expand_agents, generate_base_trajectories, paper_dataset,
                                   scale_lengths, trace_stats)

# Paper Table 2 (section 7.2), typed in again here from PAPER.md section 6.2, independently of the
# module's copy: MAL -> (turns, append/turn, gen/turn, total, context).
PAPER_TABLE2 = {
    "32K": (60, 608, 148, 28639, 17183),
    "48K": (106, 474, 172, 42607, 25120),
    "64K": (157, 429, 176, 55958, 32721),
}


@pytest.mark.parametrize("mal", ["32K", "48K", "64K"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generator_matches_table2_within_5_percent(mal, seed):
    ts = generate_base_trajectories(mal, 500, seed)
    st = trace_stats(ts)
    got = np.array([st.turns_mean, st.append_mean, st.gen_mean, st.total_mean, st.context_mean])
    rel = got / np.array(PAPER_TABLE2[mal]) - 1
    assert len(ts) == 500
    assert np.all(np.abs(rel) < 0.05), dict(zip(["turns", "append", "gen", "total", "context"], rel.round(4)))


def test_generated_trajectories_are_valid_streams_within_mal():
    ts = generate_base_trajectories("32K", 500, 7)
    ts.validate()
    assert ts.all_stream
    assert np.max(ts.num_prompt_tokens + ts.num_gen_tokens) <= MAL_TOKENS["32K"]
    assert np.all(ts.think_time_s == 0)
    # the paper's section 3 hit rate, context / (context + append), is 96.6% for the 32K set
    assert abs(trace_stats(ts).hit_rate_of_means - 17183 / (17183 + 608)) < 0.005


def test_generator_is_deterministic_and_seeded():
    a = generate_base_trajectories("48K", 50, 3)
    b = generate_base_trajectories("48K", 50, 3)
    c = generate_base_trajectories("48K", 50, 4)
    np.testing.assert_array_equal(a.num_append_tokens, b.num_append_tokens)
    np.testing.assert_array_equal(a.num_gen_tokens, b.num_gen_tokens)
    assert a.num_rounds_total != c.num_rounds_total or not np.array_equal(a.num_append_tokens, c.num_append_tokens)
    with pytest.raises(ConfigError, match="mal"):
        generate_base_trajectories("16K")


def test_expand_agents_prepends_a_round_and_uses_bases_evenly():
    base = generate_base_trajectories("64K", 20, 0)
    ts = expand_agents(base, 50, seed=5, prefix_append_tokens=64, mal_tokens=MAL_TOKENS["64K"],
                       id_prefix="x-")
    ts.validate()
    assert len(ts) == 50 and len(set(ts.agent_ids)) == 50 and ts.agent_ids[20] == "x-00020"
    for k in range(20):
        np.testing.assert_array_equal(ts[k].num_append_tokens, base[k].num_append_tokens)
    used = []
    for k in range(20, 50):
        t = ts[k]
        assert (t.num_append_tokens[0], t.num_gen_tokens[0]) == (64, 1)
        match = [b for b in range(20) if np.array_equal(base[b].num_append_tokens[:t.num_rounds - 1],
                                                        t.num_append_tokens[1:])
                 and base[b].num_rounds >= t.num_rounds - 1]
        assert match, k
        used.append(match[0])
        assert t.total_tokens <= MAL_TOKENS["64K"]
        np.testing.assert_array_equal(t.num_hit_tokens[1:], base[match[0]].num_hit_tokens[:t.num_rounds - 1] + 65)
    counts = np.bincount(used, minlength=20)
    assert counts.min() >= 1 and counts.max() <= 2       # 30 extras over 20 bases: each once or twice


def test_paper_dataset_48k_agents_is_vectorised():
    ts = paper_dataset("64K", num_agents=48_000, seed=0)
    assert len(ts) == 48_000
    assert np.max(ts.num_prompt_tokens + ts.num_gen_tokens) <= MAL_TOKENS["64K"]
    st = trace_stats(ts)
    assert abs(st.turns_mean / PAPER_TABLE2["64K"][0] - 1) < 0.05


def test_fig9_scaling_on_generated_set():
    base = generate_base_trajectories("64K", 100, 0)
    scaled = scale_lengths(base, append_factor=2.0, mal_tokens=MAL_TOKENS["64K"])
    assert len(scaled) == 100
    assert np.max(scaled.num_prompt_tokens + scaled.num_gen_tokens) <= MAL_TOKENS["64K"]
    for k in (0, 50, 99):
        n = scaled[k].num_rounds
        assert 1 <= n <= base[k].num_rounds
        np.testing.assert_array_equal(scaled[k].num_append_tokens, np.rint(2.0 * base[k].num_append_tokens[:n]))
    assert trace_stats(scaled).append_mean > 1.5 * trace_stats(base).append_mean


def test_trace_stats_script_synthetic(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "experiments" / "trace_stats.py"), "--source=synthetic",
                          "--mal=32K", f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=repo,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    names = [line.split(":")[0] for line in lines[-5:]]
    assert names == ["turns_mean", "append_mean", "gen_mean", "context_mean", "hit_rate"]
    st = trace_stats(generate_base_trajectories("32K", 500, 0))
    assert float(lines[-5].split(": ")[1]) == pytest.approx(st.turns_mean, rel=1e-5)
    assert float(lines[-1].split(": ")[1]) == pytest.approx(st.hit_rate, rel=1e-5)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["context_mean"] == pytest.approx(st.context_mean)
    for name in ("trace_stats.json", "trace_stats.md", "config.json", "env.json"):
        assert (tmp_path / name).is_file()
