"""The Mooncake loader: session rules by hand, named sessions, malformed lines, other writers'
variants, and the shared conversation trace."""

import gzip
import json

import numpy as np
import pytest

from dualpath_jax.workload import (TraceFormatError, agentic_dir, load_mooncake_trace, load_mooncake_traces,
                                   mooncake_file, reconstruct_sessions)

from trace_cases import jsonl, mc, same_trajectories

needs_data = pytest.mark.skipif(not agentic_dir().is_dir(), reason="shared traces not available")


MC_ROWS = [
    mc(0, 1500, 10, [0, 1, 2]),     # session 0 (introduces blocks 0, 1, 2)
    mc(10, 1200, 5, [0, 3, 4]),     # shares only block 0 (not a prefix of request 0's full blocks): new session
    mc(20, 2000, 0, [0, 1, 5, 6]),  # request 0's full blocks [0, 1] are its prefix: continues session 0
    mc(30, 600, 8, [0, 7]),         # only block 0 (introduced by session 0): new session, never continued
    mc(40, 700, 9, [0, 8]),         # must not chain to the previous one through block 0
]


def test_mooncake_sessions_by_hand(tmp_path):
    assert reconstruct_sessions([r["hash_ids"] for r in MC_ROWS], [r["input_length"] for r in MC_ROWS]) == \
        [0, 1, 0, 2, 3]
    trajs = load_mooncake_trace(jsonl(tmp_path / "t.jsonl", MC_ROWS))
    assert [t.agent_id for t in trajs] == ["t/s00000", "t/s00001", "t/s00002", "t/s00003"]
    s0 = trajs[0]
    np.testing.assert_array_equal(s0.num_prompt_tokens, [1500, 2000])
    np.testing.assert_array_equal(s0.num_hit_tokens, [0, 1024])
    np.testing.assert_array_equal(s0.num_gen_tokens, [10, 1])
    np.testing.assert_allclose(s0.think_time_s, [0.0, 0.020])
    np.testing.assert_array_equal(s0.block_hash_ids(1), [0, 1, 5])   # partial last block dropped
    assert trajs[3].start_offset_s == 0.040 and s0.block_tokens == 512
    assert s0.token_scope == trajs[1].token_scope == "mooncake:t"


P = list(range(46, 58))  # a 12-block prefix many requests share (a tool-agent's tools, an arXiv paper)


SHARED_PREFIX_ROWS = [
    mc(0, 6200, 500, P + [900]),            # opens session 0 (introduces P)
    mc(0, 6900, 40, P + [100, 901]),        # sent with it: cannot follow it, a session of its own
    mc(3000, 6300, 60, P + [902]),          # shares P but cannot hold request 0 and its 500-token answer
    mc(6000, 7000, 30, P + [102, 903]),     # 7000 >= 6200 + 500: request 0's next turn
    mc(6000, 7100, 30, P + [103, 904]),     # would hold it too, but session 0 already has a request at 6 s
]


def test_mooncake_requests_sharing_a_prefix_are_not_chained_into_one_session(tmp_path):
    rows = SHARED_PREFIX_ROWS
    got = reconstruct_sessions([r["hash_ids"] for r in rows], [r["input_length"] for r in rows],
                               output_lengths=[r["output_length"] for r in rows],
                               timestamps=[r["timestamp"] for r in rows])
    assert got == [0, 1, 2, 0, 3]
    trajs = load_mooncake_trace(jsonl(tmp_path / "t.jsonl", rows))
    assert [t.num_prompt_tokens.tolist() for t in trajs] == [[6200, 7000], [6900], [6300], [7100]]
    assert trajs[0].num_hit_tokens.tolist() == [0, 12 * 512] and trajs[2].start_offset_s == 3.0


def test_mooncake_lines_that_name_their_sessions_keep_them(tmp_path):
    # AIPerf's multi-turn form: session_id groups the turns (file order); each turn's input_length is
    # its new tokens on top of the session's context (earlier inputs and answers), delay its think time
    rows = [{"session_id": "alpha", "input_length": 600, "output_length": 20},
            {"session_id": 7, "timestamp": 250, "input_length": 900, "output_length": 5, "hash_ids": [7, 9]},
            {"session_id": "alpha", "delay": 1500, "input_length": 150, "output_length": 4},
            {"session_id": "7", "input_length": 100, "output_length": 3},  # not session 7
            {"session_id": 7, "input_length": 80, "output_length": 0}]
    trajs = load_mooncake_trace(jsonl(tmp_path / "mt.jsonl", rows))
    assert [t.agent_id for t in trajs] == ["mt/alpha", "mt/7", "mt/7~2"]
    alpha, seven, other = trajs
    assert alpha.num_prompt_tokens.tolist() == [600, 600 + 20 + 150] and alpha.num_hit_tokens.tolist() == [0, 620]
    assert alpha.think_time_s.tolist() == [0.0, 1.5] and alpha.start_offset_s == 0.0
    assert seven.num_prompt_tokens.tolist() == [900, 985] and seven.num_gen_tokens.tolist() == [5, 1]
    assert seven.think_time_s.tolist() == [0.0, 0.0] and seven.start_offset_s == 0.25  # no delay, one timestamp
    assert other.num_prompt_tokens.tolist() == [100] and len({t.token_scope for t in trajs}) == 3
    bad = rows[:2] + [{k: v for k, v in rows[2].items() if k != "session_id"} | {"timestamp": 9, "hash_ids": []}]
    with pytest.raises(TraceFormatError, match=r"line 3: session_id: missing \(line 1 names its session"):
        load_mooncake_trace(jsonl(tmp_path / "mixed.jsonl", bad))
    with pytest.raises(TraceFormatError, match=r"line 1: delay: must be a finite number >= 0 \(milliseconds\)"):
        load_mooncake_trace(jsonl(tmp_path / "neg.jsonl", [{**rows[0], "delay": -1}]))
    with pytest.raises(TraceFormatError, match=r"line 1: timestamp: missing required field \(a request without"):
        load_mooncake_trace(jsonl(tmp_path / "nots.jsonl", [{"input_length": 5, "output_length": 1,
                                                               "hash_ids": []}]))
    # a writer that logs whole prompts under session_id: each turn's ids extend the previous turn's
    whole = [{"session_id": "w", "input_length": n, "output_length": 30, "hash_ids": list(range(1, -(-n // 512) + 1))}
             for n in (8228, 9000, 9800)]
    (w,) = load_mooncake_trace(jsonl(tmp_path / "whole.jsonl", whole))
    assert w.num_prompt_tokens.tolist() == [8228, 9000, 9800]
    assert w.num_hit_tokens.tolist() == [0, 16 * 512, 17 * 512]  # the full blocks the turn before had
    # ... also when the first prompt has no full block, or a turn has no ids (its blocks count as new)
    short = [dict(whole[0], input_length=n, hash_ids=list(range(1, -(-n // 512) + 1))) for n in (300, 900, 1600)]
    (w2,) = load_mooncake_trace(jsonl(tmp_path / "short.jsonl", short))
    assert w2.num_prompt_tokens.tolist() == [300, 900, 1600] and w2.num_hit_tokens.tolist() == [0, 0, 512]
    gap = [whole[0], {k: v for k, v in whole[1].items() if k != "hash_ids"}, whole[2]]
    (w3,) = load_mooncake_trace(jsonl(tmp_path / "gap.jsonl", gap))
    assert w3.num_prompt_tokens.tolist() == [8228, 9000, 9800] and w3.num_hit_tokens.tolist() == [0, 0, 16 * 512]
    deltas = [{"session_id": "d", "input_length": 600, "output_length": 30, "hash_ids": [1, 2]},
              {"session_id": "d", "input_length": 700, "output_length": 30, "hash_ids": [3, 4]},
              {"session_id": "d", "input_length": 50, "output_length": 30, "hash_ids": None}]
    (d,) = load_mooncake_trace(jsonl(tmp_path / "deltas.jsonl", deltas))
    assert d.num_prompt_tokens.tolist() == [600, 630 + 700, 1360 + 50]  # new blocks only: deltas
    back = [{"session_id": "a", "timestamp": 900, "input_length": 5, "output_length": 1},
            {"session_id": "b", "input_length": 5, "output_length": 1},  # no timestamp: lines keep file order
            {"session_id": "a", "timestamp": 100, "input_length": 5, "output_length": 1}]
    with pytest.raises(TraceFormatError, match=r"session 'a', turn 1: timestamp: earlier than the turn before"):
        load_mooncake_trace(jsonl(tmp_path / "back.jsonl", back))


def test_a_gzip_mooncake_file_reads_as_the_plain_one(tmp_path):
    plain = load_mooncake_trace(jsonl(tmp_path / "t.jsonl", MC_ROWS))
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress((tmp_path / "t.jsonl").read_bytes()))
    trajs = load_mooncake_trace(packed)
    assert [t.agent_id for t in trajs] == [t.agent_id for t in plain]  # the name less .gz and .jsonl: "t"
    for a, b in zip(trajs, plain):
        np.testing.assert_array_equal(a.num_prompt_tokens, b.num_prompt_tokens)
        np.testing.assert_array_equal(a.num_hit_tokens, b.num_hit_tokens)
    packed.write_bytes(gzip.compress((tmp_path / "t.jsonl").read_bytes())[:-12])  # cut short
    with pytest.raises(TraceFormatError, match=r"t\.jsonl\.gz: truncated or corrupt gzip stream"):
        load_mooncake_trace(packed)


def test_two_mooncake_files_of_one_name_keep_their_sessions_and_scopes_apart(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ts = load_mooncake_traces([jsonl(tmp_path / "a" / "m.v1.jsonl", MC_ROWS), jsonl(tmp_path / "b" / "m.v1.jsonl",
                                                                                   MC_ROWS)])
    assert ts.agent_ids[:5] == ("m.v1/s00000", "m.v1/s00001", "m.v1/s00002", "m.v1/s00003", "m.v1~2/s00000")
    assert set(ts.token_scopes) == {"mooncake:m.v1", "mooncake:m.v1~2"} and len(set(ts.agent_ids)) == 8


@pytest.mark.parametrize("lines,pattern", [
    (['{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}', '{"timestamp": 1,'],
     r"line 2: invalid JSON"),
    (['{"timestamp": 0, "input_length": 10, "hash_ids": [1]}'], r"line 1: output_length: missing required field"),
    (['{"timestamp": 0, "input_length": -4, "output_length": 1, "hash_ids": []}'],
     r"line 1: input_length: must be >= 1 \(got -4\)"),
    (['{"timestamp": 0, "input_length": 1100, "output_length": 1, "hash_ids": [1]}'],
     r"line 1: hash_ids: has 1 ids but 1100 tokens make 2 full 512-token blocks: expected 2 \(full blocks\) or 3"),
    (['{"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2, 3]}'],
     r"line 1: hash_ids: has 3 ids but 1024 tokens make 2 full 512-token blocks: expected 2 ids"),
    (['{"timestamp": 0, "input_length": 600.5, "output_length": 1, "hash_ids": [1, 2]}'],
     r"line 1: input_length: must be an integer \(got 600.5\)"),
    ([], r"empty file"),
    (["", "  "], r"empty file"),
])
def test_mooncake_malformed_names_file_line_field(tmp_path, lines, pattern):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(TraceFormatError, match=pattern) as e:
        load_mooncake_trace(path)
    assert str(e.value).startswith(str(path))


@needs_data
def test_real_mooncake_conversation_trace():
    path = mooncake_file("conversation")
    rows = sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                  key=lambda r: r["timestamp"])
    trajs = load_mooncake_trace(path)
    assert sum(t.num_rounds for t in trajs) == len(rows) == 12_031
    # every session is a chain a client could have sent: each later request arrives after the one
    # before it and resends an earlier request of the session (its full blocks) and that one's answer
    lookup = {(r["timestamp"], r["input_length"], tuple(r["hash_ids"][:r["input_length"] // 512])): r for r in rows}
    for t in trajs:
        start_ms = t.start_offset_s * 1000
        times = start_ms + np.cumsum(t.think_time_s) * 1000
        members = [lookup[(round(ms, 3), int(n), tuple(t.block_hash_ids(i).tolist()))]
                   for i, (ms, n) in enumerate(zip(times, t.num_prompt_tokens))]
        assert all(b["timestamp"] > a["timestamp"] for a, b in zip(members, members[1:]))
        for k, r in enumerate(members[1:], start=1):
            assert any(r["hash_ids"][:q["input_length"] // 512] == q["hash_ids"][:q["input_length"] // 512]
                       and r["input_length"] >= q["input_length"] + q["output_length"] for q in members[:k])
    assert max(t.num_rounds for t in trajs) > 10  # long conversations are found


@pytest.mark.parametrize("ids,problem", [
    ([1, 2**70], r"ids must be 64-bit integers, in \[-2\*\*63, 2\*\*64\) \(got 1180591620717411303424\)"),
    ([[1], 2], r"must contain only integers \(got \[1\]\)"),
    ("1,2", r"must be a list of integers \(got 'str'\)")])
def test_mooncake_bad_block_ids_name_file_line_and_value(tmp_path, ids, problem):
    path = jsonl(tmp_path / "big.jsonl", [mc(0, 600, 1, [5, 6]), mc(1, 1000, 1, ids)])
    with pytest.raises(TraceFormatError, match=rf"line 2: hash_ids: {problem}") as e:
        load_mooncake_trace(path)
    assert str(e.value).startswith(f"{path}: ")


def test_mooncake_writers_variants_read_as_the_canonical_file(tmp_path):
    base = load_mooncake_trace(jsonl(tmp_path / "t.jsonl", MC_ROWS))

    def variant(name, rows, text=None):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "t.jsonl"
        if text is None:
            jsonl(path, rows)
        else:
            path.write_text(text, encoding="utf-8")
        return load_mooncake_trace(path)

    floor = [dict(r, hash_ids=r["hash_ids"][:r["input_length"] // 512]) for r in MC_ROWS]
    same_trajectories(variant("floor", floor), base)  # without the partial block's id
    same_trajectories(variant("shuffled", [MC_ROWS[i] for i in (3, 0, 4, 2, 1)]), base)  # lines out of time order
    same_trajectories(variant("floats", [dict(r, input_length=float(r["input_length"])) for r in MC_ROWS]), base)
    same_trajectories(variant("bom", None, "\ufeff" + "".join(json.dumps(r) + "\n" for r in MC_ROWS)), base)
    unsigned = [dict(r, hash_ids=[h + 2**63 for h in r["hash_ids"]]) for r in MC_ROWS]  # top bit dropped
    same_trajectories(variant("unsigned", unsigned), base)


def test_mooncake_block_size_other_than_512(tmp_path):
    rows = [mc(0, 150, 3, [7, 8, 9]), mc(1000, 200, 3, [7, 8, 9, 10])]  # 64-token blocks
    with pytest.raises(TraceFormatError, match=r"line 1: hash_ids: has 3 ids but 150 tokens make 0 full 512-token.*"
                       r"the ids fit 64-token blocks \(the trace's block size is mooncake_block_tokens"):
        load_mooncake_trace(jsonl(tmp_path / "b64.jsonl", rows))
    (s,) = load_mooncake_trace(tmp_path / "b64.jsonl", block_tokens=64)
    np.testing.assert_array_equal(s.num_hit_tokens, [0, 128])  # round 0's full blocks 7, 8
    np.testing.assert_array_equal(s.think_time_s, [0.0, 1.0])
    assert s.block_tokens == 64


def test_a_json_array_instead_of_json_lines_says_so(tmp_path):
    path = tmp_path / "array.json"
    path.write_text(json.dumps([mc(0, 150, 3, [7, 8, 9])]))
    with pytest.raises(TraceFormatError, match=r"line 1: must be a JSON object \(a JSON-lines file holds one request"):
        load_mooncake_trace(path)
