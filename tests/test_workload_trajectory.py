"""Trajectory containers, the prefix-hit rule, length transforms and deterministic token ids."""

import numpy as np
import pytest

from dualpath_jax.workload import (BlockHashes, Trajectory, TrajectorySet, append_token_ids, block_token_ids,
                                   gen_token_ids, hit_blocks_from_hashes, offline_arrivals_s, poisson_arrivals_s,
                                   prompt_token_ids, recorded_arrivals_s, scale_lengths, scale_tokens,
                                   stream_token_ids, trajectory_start_times_s, truncate_at_mal)
from dualpath_jax.workload.tokens import scope_key, token_hash


def stream(agent="a", append=(10, 5, 7), gen=(2, 3, 1)):
    append, gen = np.array(append), np.array(gen)
    hit = np.concatenate([[0], np.cumsum(append + gen)[:-1]])
    return Trajectory(agent, append, gen, hit, np.zeros(len(append)))


def hashed(agent="h", rounds=((1, 2), (1, 2, 3)), prompts=(130, 200), gens=(4, 9), block_tokens=64, scope=""):
    hashes = BlockHashes.from_rounds([np.array(r) for r in rounds])
    prompt = np.array(prompts)
    hit = np.minimum(hit_blocks_from_hashes(hashes) * block_tokens, prompt - 1)
    return Trajectory(agent, prompt - hit, np.array(gens), hit, np.zeros(len(prompts)), token_scope=scope,
                      block_tokens=block_tokens, hashes=hashes)


def reference_hits(rounds):
    """Plain-Python README rule: leading ids already seen in any earlier round."""
    seen, out = set(), []
    for ids in rounds:
        run = 0
        for h in ids:
            if h not in seen:
                break
            run += 1
        out.append(run)
        seen.update(ids)
    return out


def test_block_hashes_roundtrip_and_hits_match_reference():
    rng = np.random.default_rng(0)
    rounds, cur, next_id = [], [], 0
    for _ in range(40):
        r = rng.random()
        if r < 0.15 and cur:          # compaction: keep a short prefix, rewrite the rest
            cur = cur[:rng.integers(0, len(cur) + 1)]
        elif r < 0.25 and len(rounds) > 2:  # return to an older round's prefix (branch)
            old = rounds[rng.integers(0, len(rounds))]
            cur = list(old[:rng.integers(0, len(old) + 1)])
        new = list(range(next_id, next_id + rng.integers(0, 6)))
        next_id += len(new)
        cur = cur + new
        rounds.append(list(cur))
    h = BlockHashes.from_rounds([np.array(r, dtype=np.int64) for r in rounds])
    for i, r in enumerate(rounds):
        np.testing.assert_array_equal(h.round_ids(i), r)
    for got, want in zip(h.iter_rounds(), rounds):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(hit_blocks_from_hashes(h), reference_hits(rounds))
    assert h.tail_ids.size < sum(len(r) for r in rounds)


def test_hashed_trajectory_hits_by_hand():
    t = hashed()
    # round 1 repeats blocks 1, 2 of round 0: 128 cached tokens, 72 appended.
    np.testing.assert_array_equal(t.num_hit_tokens, [0, 128])
    np.testing.assert_array_equal(t.num_append_tokens, [130, 72])
    np.testing.assert_array_equal(t.block_hash_ids(1), [1, 2, 3])


def test_hit_capped_so_one_token_is_prefilled():
    t = hashed(rounds=((5, 6), (5, 6)), prompts=(128, 128), gens=(1, 1))
    np.testing.assert_array_equal(t.num_hit_tokens, [0, 127])
    np.testing.assert_array_equal(t.num_append_tokens, [128, 1])


@pytest.mark.parametrize("change,match", [
    (dict(num_append_tokens=np.array([0, 5, 7])), r"round 0: num_append_tokens must be >= 1"),
    (dict(num_gen_tokens=np.array([2, -1, 1])), r"round 1: num_gen_tokens must be >= 1"),
    (dict(think_time_s=np.array([0.0, np.nan, 0.0])), r"round 1: think_time_s"),
    (dict(num_hit_tokens=np.array([0, 12, 99])), r"round 2: num_hit_tokens of a stream trajectory must equal "
                                                 r"its context 20"),
    (dict(num_gen_tokens=np.array([2, 3])), r"num_gen_tokens: length 2 != num_append_tokens length 3"),
])
def test_trajectory_validation_names_field(change, match):
    t = stream()
    fields = dict(agent_id="a", num_append_tokens=t.num_append_tokens, num_gen_tokens=t.num_gen_tokens,
                  num_hit_tokens=t.num_hit_tokens, think_time_s=t.think_time_s)
    with pytest.raises(ValueError, match=match):
        Trajectory(**{**fields, **change})


def test_hashed_block_count_must_match_prompt():
    hashes = BlockHashes.from_rounds([np.array([1, 2])])
    with pytest.raises(ValueError, match=r"h: round 0: hashes: 2 block ids for a 100-token prompt"):
        Trajectory("h", np.array([100]), np.array([1]), np.array([0]), np.zeros(1), hashes=hashes)


def test_set_roundtrip_select_concatenate():
    ts = TrajectorySet.from_trajectories([stream("a"), hashed("h"), stream("b", (3,), (4,))])
    assert len(ts) == 3 and ts.num_rounds_total == 6
    np.testing.assert_array_equal(ts.num_rounds, [3, 2, 1])
    np.testing.assert_array_equal(ts[1].num_hit_tokens, [0, 128])
    sel = ts.select(np.array([2, 0, 0]))
    assert sel.agent_ids == ("b", "a", "a")
    np.testing.assert_array_equal(sel.num_append_tokens, [3, 10, 5, 7, 10, 5, 7])
    cat = TrajectorySet.concatenate([ts, sel]).validate()
    assert len(cat) == 6 and cat[4].agent_id == "a" and cat[1].hashes is ts.hashes[1]


def test_truncate_at_mal_by_hand():
    # contexts after each round: 12, 20, 28
    t = truncate_at_mal(stream(), 20)
    np.testing.assert_array_equal(t.num_append_tokens, [10, 5])
    np.testing.assert_array_equal(t.num_hit_tokens, [0, 12])
    # first round alone too long: clipped to fit
    t = truncate_at_mal(stream(append=(50, 5), gen=(4, 1)), 20)
    np.testing.assert_array_equal(t.num_append_tokens, [16])
    np.testing.assert_array_equal(t.num_gen_tokens, [4])
    # hashed: prompt + gen of round 1 is 209 > 200: cut; round 0 alone too long: dropped from a set
    assert truncate_at_mal(hashed(), 200).num_rounds == 1
    ts = TrajectorySet.from_trajectories([hashed(), stream()])
    assert truncate_at_mal(ts, 100).agent_ids == ("a",)


def test_scale_lengths_fig9_by_hand():
    t = scale_lengths(stream(), append_factor=2.0, mal_tokens=40)
    # appends 20, 10, 14; contexts after rounds 22, 35, 50 -> the third round is cut
    np.testing.assert_array_equal(t.num_append_tokens, [20, 10])
    np.testing.assert_array_equal(t.num_hit_tokens, [0, 22])
    t = scale_lengths(stream(), gen_factor=0.1)
    np.testing.assert_array_equal(t.num_gen_tokens, [1, 1, 1])  # rint(0.2), rint(0.3), rint(0.1) -> >= 1
    with pytest.raises(ValueError, match="stream trajectories"):
        scale_lengths(hashed(), append_factor=2.0)
    with pytest.raises(ValueError, match="append_factor"):
        scale_lengths(stream(), append_factor=0.0)


def test_scale_tokens_keeps_block_structure():
    t = scale_tokens(hashed(), 4)
    # round 0: 2 blocks of 16 + ceil(2/4) = 33; round 1: 3*16 + ceil(8/4) = 50, hit 2 blocks = 32
    assert t.block_tokens == 16
    np.testing.assert_array_equal(t.num_prompt_tokens, [33, 50])
    np.testing.assert_array_equal(t.num_hit_tokens, [0, 32])
    np.testing.assert_array_equal(t.num_gen_tokens, [1, 3])
    v = 1000
    np.testing.assert_array_equal(prompt_token_ids(t, 1, v)[:32], prompt_token_ids(t, 0, v)[:32])
    orig = prompt_token_ids(hashed(), 0, v)
    np.testing.assert_array_equal(prompt_token_ids(t, 0, v)[:32], np.concatenate([orig[:16], orig[64:80]]))
    s = scale_tokens(stream(), 3)
    np.testing.assert_array_equal(s.num_append_tokens, [4, 2, 3])
    np.testing.assert_array_equal(s.num_hit_tokens, [0, 5, 8])
    with pytest.raises(ValueError, match="divisor=3 must divide block_tokens=64"):
        scale_tokens(hashed(), 3)


MASK = (1 << 64) - 1


def py_splitmix(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def py_token(scope, domain, major, minor, vocab):
    base = py_splitmix(scope_key(scope) ^ domain)
    mid = py_splitmix(base ^ py_splitmix(major))
    return py_splitmix((mid + minor) & MASK) % vocab


def test_token_hash_matches_pure_python_splitmix():
    major = np.array([0, 1, 7, 2**40 + 3])
    minor = np.array([0, 63, 5, 1])
    got = token_hash("trace_0002", 1, major, minor, 151_936)
    want = [py_token("trace_0002", 1, int(a), int(b), 151_936) for a, b in zip(major, minor)]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_equal_hashes_give_equal_tokens_across_trajectories_of_a_scope():
    v = 32_000
    a = hashed("x", rounds=((1, 2, 3),), prompts=(200,), gens=(3,), scope="trace_9")
    b = hashed("y", rounds=((1, 2, 9),), prompts=(192,), gens=(3,), scope="trace_9")
    c = hashed("z", rounds=((1, 2, 3),), prompts=(200,), gens=(3,), scope="trace_8")
    pa, pb, pc = (prompt_token_ids(t, 0, v) for t in (a, b, c))
    np.testing.assert_array_equal(pa[:128], pb[:128])
    assert np.mean(pa[128:192] == pb[128:192]) < 0.05
    assert np.mean(pa == pc) < 0.05
    np.testing.assert_array_equal(block_token_ids("trace_9", np.array([2]), 64, v)[0], pa[64:128])


def test_round_tokens_consistent_with_counts_and_prefix_reuse():
    v = 50_000
    t = stream(append=(70, 30, 90), gen=(5, 64, 2))
    for i in range(3):
        p = prompt_token_ids(t, i, v)
        assert p.shape == (t.num_prompt_tokens[i],) and p.dtype == np.int32 and p.min() >= 0 and p.max() < v
        np.testing.assert_array_equal(append_token_ids(t, i, v), p[t.num_hit_tokens[i]:])
        assert gen_token_ids(t, i, v).shape == (t.num_gen_tokens[i],)
    # the stream: round i+1's prompt starts with round i's prompt and generated tokens
    for i in range(2):
        nxt = prompt_token_ids(t, i + 1, v)
        np.testing.assert_array_equal(nxt, np.concatenate(
            [prompt_token_ids(t, i, v), gen_token_ids(t, i, v), append_token_ids(t, i + 1, v)]))
    np.testing.assert_array_equal(stream_token_ids("a", 64, 70, 64, v), prompt_token_ids(t, 0, v)[64:70])
    h = hashed()
    np.testing.assert_array_equal(prompt_token_ids(h, 1, v)[:128], prompt_token_ids(h, 0, v)[:128])
    np.testing.assert_array_equal(prompt_token_ids(h, 1, v, start=100), prompt_token_ids(h, 1, v)[100:])
    np.testing.assert_array_equal(prompt_token_ids(t, 2, v), prompt_token_ids(t, 2, v))
    with pytest.raises(IndexError):
        prompt_token_ids(t, 3, v)


def test_arrivals():
    np.testing.assert_array_equal(offline_arrivals_s(3), [0, 0, 0])
    arr = poisson_arrivals_s(20_000, aps=0.5, seed=1)
    assert np.all(np.diff(arr) > 0)
    gaps = np.diff(np.concatenate([[0.0], arr]))
    assert abs(gaps.mean() - 2.0) < 0.06  # mean gap 1/APS; sd of the mean 2/sqrt(2e4) = 0.014
    np.testing.assert_array_equal(arr, poisson_arrivals_s(20_000, aps=0.5, seed=1))
    parent = stream("p")
    child = Trajectory("p/c", np.array([5]), np.array([1]), np.array([0]), np.zeros(1), start_offset_s=30.0,
                       parent_id="p")
    ts = TrajectorySet.from_trajectories([parent, child, stream("q")])
    np.testing.assert_allclose(trajectory_start_times_s(ts, np.array([1.0, 2.0])), [1.0, 31.0, 2.0])
    np.testing.assert_allclose(trajectory_start_times_s(ts, np.array([1.0, 2.0]), 0.0), [1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="1 arrivals for 2 root"):
        trajectory_start_times_s(ts, np.array([1.0]))


def test_recorded_arrivals_count_from_the_earliest_and_divide_by_the_speedup():
    from dualpath_jax.config import ConfigError
    np.testing.assert_allclose(recorded_arrivals_s([7.5, 3.0, 3.0, 10.0]), [4.5, 0.0, 0.0, 7.0])
    np.testing.assert_allclose(recorded_arrivals_s(np.array([7.5, 3.0, 10.0]), speedup=4.0), [1.125, 0.0, 1.75])
    assert recorded_arrivals_s([]).shape == (0,)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="^speedup"):
            recorded_arrivals_s([1.0], speedup=bad)
    with pytest.raises(ConfigError, match="^start_offsets_s: must be finite"):
        recorded_arrivals_s([1.0, float("nan")])


def test_workload_and_metrics_layering():
    """workload/ and metrics/ import only the stdlib, numpy, config/shapes and their own package;
    matplotlib and scipy only inside a function."""
    import ast
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "dualpath_jax"
    for package in ("workload", "metrics"):
        allowed = {"numpy", "dualpath_jax.config", "dualpath_jax.shapes", "dualpath_jax.native",
                   f"dualpath_jax.{package}"}
        for path in sorted((root / package).glob("*.py")):
            tree = ast.parse(path.read_text())
            top_level = set(id(n) for n in tree.body)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    head = name.split(".")[0]
                    ok = head in sys.stdlib_module_names or any(name == a or name.startswith(a + ".")
                                                                for a in allowed)
                    if head in ("matplotlib", "scipy"):
                        ok = id(node) not in top_level
                    assert ok, f"{path.name} imports {name}"


def test_scale_tokens_keeps_a_nearly_full_tail_partial():
    # 2 full blocks + a 63-token tail: ceil(63 / 32) = 2 would make a third full 2-token block
    t = scale_tokens(hashed(rounds=((1, 2), (1, 2, 3)), prompts=(191, 200), gens=(4, 9)), 32)
    assert t.num_prompt_tokens.tolist() == [2 * 2 + 1, 3 * 2 + 1]
    assert [len(t.block_hash_ids(i)) for i in range(2)] == [2, 3]


def test_scale_tokens_by_the_block_size_names_a_prompt_shorter_than_a_block():
    # 1-token blocks keep whole blocks only: a 2-block prompt's tail goes, a 40-token prompt would be empty
    t = scale_tokens(hashed(rounds=((1, 2), (1, 2, 3)), prompts=(140, 200), gens=(4, 9)), 64)
    assert t.num_prompt_tokens.tolist() == [2, 3] and t.num_hit_tokens.tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"round 1: divisor=64 shrinks the 64-token blocks to 1 token.* "
                                         r"40-token prompt has no full block \(a divisor below 64 keeps it\)"):
        scale_tokens(hashed(rounds=((1, 2), ()), prompts=(140, 40), gens=(4, 9)), 64)
