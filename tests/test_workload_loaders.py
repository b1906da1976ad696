"""Trace loaders: hand-built fixtures, malformed files, and a few files of the shared traces."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualpath_jax.workload import (TraceFormatError, agentic_dir, load_agentic_trace, load_agentic_traces,
                                   load_mooncake_trace, load_mooncake_traces, mooncake_file, reconstruct_sessions,
                                   trace_stats)
from dualpath_jax.workload.agentic import trace_files
from dualpath_jax.workload.arrivals import trajectory_start_times_s


def req(t, n_in, out, ids, kind="n", **extra):
    return {"t": t, "type": kind, "in": n_in, "out": out, "hash_ids": ids, **extra}


def conversation():
    return {
        "id": "trace_x", "block_size": 64, "hash_id_scope": "local",
        "requests": [
            req(0.0, 130, 7, [1, 2], think_time=0.0, api_time=2.0),
            req(5.0, 200, 0, [1, 2, 3], kind="s", api_time=1.5),   # no think_time: 5 - 0 - 2 = 3 s
            {"t": 6.0, "type": "subagent", "agent_id": "agent_001", "requests": [
                req(0.0, 100, 3, [50], think_time=0.0),
                req(2.0, 150, 4, [50, 51], think_time=1.0)]},
            req(9.0, 260, 5, [1, 2, 3, 4], think_time=2.5),
        ]}


def write_gz(path, obj):
    path.write_bytes(gzip.compress(json.dumps(obj).encode()))
    return path


def test_agentic_fixture_by_hand(tmp_path):
    trajs = load_agentic_trace(write_gz(tmp_path / "trace_x.json.gz", conversation()))
    main, sub = trajs
    assert (main.agent_id, sub.agent_id, sub.parent_id) == ("trace_x", "trace_x/agent_001", "trace_x")
    np.testing.assert_array_equal(main.num_prompt_tokens, [130, 200, 260])
    np.testing.assert_array_equal(main.num_hit_tokens, [0, 128, 192])
    np.testing.assert_array_equal(main.num_gen_tokens, [7, 1, 5])        # out = 0 -> 1
    np.testing.assert_allclose(main.think_time_s, [0.0, 3.0, 2.5])
    np.testing.assert_array_equal(sub.num_hit_tokens, [0, 64])
    assert sub.start_offset_s == 6.0 and sub.token_scope == main.token_scope == "trace_x"
    np.testing.assert_array_equal(main.block_hash_ids(2), [1, 2, 3, 4])
    dropped = load_agentic_trace(tmp_path / "trace_x.json.gz", subagents="drop", token_scope="trajectory")
    assert [t.agent_id for t in dropped] == ["trace_x"] and dropped[0].token_scope == "trace_x"


def test_a_request_recorded_with_no_input_tokens_is_left_out_with_a_warning(tmp_path):
    from dualpath_jax.workload import TraceSkipWarning

    def blank(d):  # the recorder lost a request's token counts: in 0, no ids
        d["requests"][1].update(**{"in": 0, "out": 0, "hash_ids": []})
        d["requests"][2]["requests"][0].update(**{"in": 0, "hash_ids": []})

    path = mutate(tmp_path / "blank.json.gz", blank)
    with pytest.warns(TraceSkipWarning, match=r"blank\.json\.gz: requests\[1\]: in: 2 request\(s\) recorded "
                                             r"with no input tokens left out"):
        main, sub = load_agentic_trace(path)
    np.testing.assert_array_equal(main.num_prompt_tokens, [130, 260])
    np.testing.assert_array_equal(main.num_hit_tokens, [0, 128])  # blocks 1, 2 seen in round 0
    np.testing.assert_allclose(main.think_time_s, [0.0, 2.5])
    np.testing.assert_array_equal(sub.num_prompt_tokens, [150])
    assert sub.start_offset_s == 6.0 + 2.0  # its first kept request, 2 s after the launch

    def all_blank(d):
        for i in (0, 1, 3):
            d["requests"][i].update(**{"in": 0, "hash_ids": []})

    with pytest.raises(TraceFormatError, match=r"\(top level\): requests: holds no 'n'/'s' requests .* \(its 3 "
                                              r"were all recorded with in = 0\)"):
        load_agentic_trace(mutate(tmp_path / "allblank.json.gz", all_blank))


def test_trace_stats_script_reads_the_agentic_folder_it_is_given(tmp_path):
    traces = tmp_path / "traces"
    traces.mkdir()
    write_gz(traces / "trace_x.json.gz", conversation())
    repo = Path(__file__).resolve().parents[1]
    script = [sys.executable, str(repo / "experiments" / "trace_stats.py"), "--source=agentic"]
    out = subprocess.run(script + [f"--traces_dir={traces}", f"--workdir={tmp_path / 'w'}"], capture_output=True,
                         text=True, cwd=repo, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads((tmp_path / "w" / "metrics.json").read_text())
    want = trace_stats(load_agentic_traces(traces))
    assert (got["turns_mean"], got["append_mean"], got["hit_rate"]) == pytest.approx(
        (want.turns_mean, want.append_mean, want.hit_rate), rel=1e-9)
    assert want.turns_mean == 2.5  # the fixture: a main agent of 3 rounds and a sub-agent of 2
    bad = subprocess.run(script + [f"--traces_dir={tmp_path / 'none'}", f"--workdir={tmp_path / 'w2'}"],
                         capture_output=True, text=True, cwd=repo, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
        f"ConfigError: traces_dir: {tmp_path / 'none'}: neither a folder nor a trace file (it does not exist)")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no \*\.json\.gz or \*\.json trace files$"):
        load_agentic_traces(tmp_path / "empty")
    # a flag of another source would be ignored: refused in one line
    other = subprocess.run(script + [f"--traces_dir={traces}", "--mooncake=synthetic", f"--workdir={tmp_path / 'w3'}"],
                           capture_output=True, text=True, cwd=repo, timeout=300)
    assert other.returncode == 1 and other.stderr.strip().splitlines()[-1] == (
        "ConfigError: mooncake: applies to --source=mooncake; this run reads --source=agentic")


def test_plain_json_traces_load_as_their_gzip_copies_and_a_stem_counts_once(tmp_path):
    plain, packed, both = tmp_path / "plain", tmp_path / "packed", tmp_path / "both"
    for d in (plain, packed, both):
        d.mkdir()
    doc = conversation()
    (plain / "trace_x.json").write_text(json.dumps(doc))
    write_gz(packed / "trace_x.json.gz", doc)
    (both / "trace_x.json").write_text(json.dumps(doc))  # as `gzip -k` leaves them: one trace, not two
    write_gz(both / "trace_x.json.gz", doc)
    want = load_agentic_traces(packed)
    for d in (plain, both):
        got = load_agentic_traces(d)
        assert got.agent_ids == want.agent_ids == ("trace_x", "trace_x/agent_001")
        np.testing.assert_array_equal(got.num_hit_tokens, want.num_hit_tokens)
        np.testing.assert_array_equal(got.num_append_tokens, want.num_append_tokens)
    assert load_agentic_traces(plain, names=["trace_x"]).agent_ids == want.agent_ids  # a stem finds the .json
    assert [f.name for f in trace_files(both)] == ["trace_x.json.gz"]
    (plain / "notes.txt").write_text("x")
    assert [f.name for f in trace_files(plain)] == ["trace_x.json"]


def test_names_are_unique_within_a_load(tmp_path):
    """A repeated trace id (two files, or a file without ``id`` named like another) and a repeated
    sub-agent name get distinct names, and (local hash scope) distinct token scopes, so that
    neither start times nor the engine's cache mix two conversations."""
    doc = conversation()
    doc["requests"].append(dict(doc["requests"][2], t=9.0))  # the sub-agent twice, under one agent_id
    write_gz(tmp_path / "a.json.gz", doc)
    write_gz(tmp_path / "b.json.gz", doc)  # the same id "trace_x"
    anonymous = conversation()
    del anonymous["id"]
    write_gz(tmp_path / "run.1.json.gz", anonymous)
    write_gz(tmp_path / "run.2.json.gz", anonymous)
    ts = load_agentic_traces(tmp_path)
    assert ts.agent_ids == ("trace_x", "trace_x/agent_001", "trace_x/agent_001~2",
                            "trace_x@b.json.gz", "trace_x@b.json.gz/agent_001", "trace_x@b.json.gz/agent_001~2",
                            "run.1", "run.1/agent_001", "run.2", "run.2/agent_001")
    assert ts.parent_ids[3:6] == (None, "trace_x@b.json.gz", "trace_x@b.json.gz")
    assert ts.token_scopes[:6] == ("trace_x",) * 3 + ("trace_x@b.json.gz",) * 3
    assert ts.start_offset_s[1:3].tolist() == [6.0, 9.0]
    starts = trajectory_start_times_s(ts, np.array([0.0, 100.0, 200.0, 300.0]))
    np.testing.assert_allclose(starts[3:6], [100.0, 106.0, 109.0])  # b's sub-agents start with b's root


def test_an_unknown_hash_scope_a_conversation_of_only_sub_agents_and_an_empty_sub_agent(tmp_path):
    typo = mutate(tmp_path / "typo.json.gz", lambda d: d.update(hash_id_scope="Local"))
    with pytest.raises(TraceFormatError, match=r"typo.json.gz: \(top level\): hash_id_scope: must be 'local'"):
        load_agentic_trace(typo)
    only_subs = mutate(tmp_path / "subs.json.gz", lambda d: d.update(requests=[d["requests"][2]]))
    with pytest.raises(TraceFormatError, match=r"requests: holds no 'n'/'s' requests of the conversation itself"):
        load_agentic_trace(only_subs)
    empty = mutate(tmp_path / "empty.json.gz", lambda d: d["requests"][2].update(requests=[]))
    assert [t.agent_id for t in load_agentic_trace(empty)] == ["trace_x"]  # nothing recorded, nothing replayed
    nested = mutate(tmp_path / "nested.json.gz",  # a sub-agent of only sub-agents: theirs are the root's
                    lambda d: d["requests"][2].update(requests=[dict(d["requests"][2], t=0.5)]))
    got = load_agentic_trace(nested)
    assert [(t.agent_id, t.parent_id) for t in got] == [("trace_x", None),
                                                        ("trace_x/agent_001/agent_001", "trace_x")]


def mutate(path, fn):
    doc = conversation()
    fn(doc)
    return write_gz(path, doc)


@pytest.mark.parametrize("name,fn,pattern", [
    ("missing", lambda d: d["requests"][1].pop("in"), r"requests\[1\]: in: missing required field"),
    ("negative", lambda d: d["requests"][3].update(out=-3), r"requests\[3\]: out: must be >= 0 \(got -3\)"),
    ("nested", lambda d: d["requests"][2]["requests"][1].update(**{"in": "150"}),
     r"requests\[2\]\.requests\[1\]: in: must be an integer \(got '150'\)"),
    ("hashlen", lambda d: d["requests"][0].update(hash_ids=[1]),
     r"requests\[0\]: hash_ids: has 1 ids but 130 tokens make 2 full 64-token blocks: expected 2 \(full blocks\) "
     r"or 3 \(with the partial last block\) ids, or \[\] when none were recorded"),
    ("hashlong", lambda d: d["requests"][1].update(hash_ids=[1, 2, 3, 4, 5]),
     r"requests\[1\]: hash_ids: has 5 ids but 200 tokens make 3 full 64-token blocks"),
    ("fraction", lambda d: d["requests"][0].update(**{"in": 130.5}), r"requests\[0\]: in: must be an integer"),
    ("blocksize", lambda d: d.update(block_size=0), r"\(top level\): block_size: must be >= 1"),
    ("hashtype", lambda d: d["requests"][0].update(hash_ids=[1, 2.5]),
     r"requests\[0\]: hash_ids: must contain only integers \(got 2.5\)"),
    ("type", lambda d: d["requests"][0].update(type="x"), r"requests\[0\]: type: must be 'n', 's' or 'subagent'"),
    ("noreq", lambda d: d.update(requests=[]), r"requests: must be a non-empty list"),
])
def test_agentic_malformed_names_file_request_field(tmp_path, name, fn, pattern):
    path = mutate(tmp_path / f"{name}.json.gz", fn)
    with pytest.raises(TraceFormatError, match=pattern) as e:
        load_agentic_trace(path)
    assert str(path) in str(e.value) and e.value.path == str(path)


def test_agentic_truncated_empty_and_invalid_files(tmp_path):
    good = gzip.compress(json.dumps(conversation()).encode())
    cases = {
        "truncated.json.gz": (good[: len(good) // 2], "truncated or corrupt gzip stream"),
        "empty.json.gz": (b"", r"empty file \(0 bytes\)"),
        "emptygz.json.gz": (gzip.compress(b""), "empty file"),
        "notgz.json.gz": (b"{\"id\": 1}", r"id: must be a non-empty string"),  # plain JSON, whatever the name
        "badjson.json.gz": (gzip.compress(b'{"id": "x",\n "requests": [1,]}'),
                            r"line 2 column 17: invalid JSON"),
    }
    for fname, (data, pattern) in cases.items():
        path = tmp_path / fname
        path.write_bytes(data)
        with pytest.raises(TraceFormatError, match=pattern) as e:
            load_agentic_trace(path)
        assert str(e.value).startswith(str(path))


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mc(ts, n_in, out, ids):
    return {"timestamp": ts, "input_length": n_in, "output_length": out, "hash_ids": ids}


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


needs_data = pytest.mark.skipif(not agentic_dir().is_dir(), reason="shared traces not available")


@needs_data
def test_real_agentic_files_match_their_json():
    path = agentic_dir() / "trace_0004.json.gz"
    trajs = load_agentic_trace(path)
    doc = json.loads(gzip.decompress(path.read_bytes()))
    own = [r for r in doc["requests"] if r["type"] != "subagent"]
    subs = [r for r in doc["requests"] if r["type"] == "subagent"]
    assert len(trajs) == 1 + len(subs) == 3
    main = trajs[0]
    assert main.num_rounds == len(own)
    np.testing.assert_array_equal(main.num_prompt_tokens, [r["in"] for r in own])
    np.testing.assert_array_equal(main.num_gen_tokens, [max(r["out"], 1) for r in own])
    for i in (0, 1, 37, 38, len(own) - 1):
        np.testing.assert_array_equal(main.block_hash_ids(i), own[i]["hash_ids"])
    hits = np.array([_hit_blocks(own, i) for i in range(len(own))]) * 64
    np.testing.assert_array_equal(main.num_hit_tokens, np.minimum(hits, main.num_prompt_tokens - 1))
    assert trajs[1].num_rounds == len(subs[0]["requests"]) and trajs[1].start_offset_s == subs[0]["t"]


def _hit_blocks(requests, i):
    seen = {h for r in requests[:i] for h in r["hash_ids"]}
    run = 0
    for h in requests[i]["hash_ids"]:
        if h not in seen:
            break
        run += 1
    return run


@needs_data
def test_real_agentic_few_files_stats():
    ts = load_agentic_traces(names=["trace_0002", "trace_0004"])
    st = trace_stats(ts)
    assert st.num_trajectories == 4 and 0.9 < st.hit_rate < 1.0


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


@pytest.mark.slow
@needs_data
def test_full_agentic_corpus_loads():
    ts = load_agentic_traces()
    assert len(ts) == 661 and ts.num_rounds_total == 41_479
    assert sum(p is not None for p in ts.parent_ids) == 52


# ---- bad ids end in one clear line (issue #22), not in numpy's errors --------------------------------------
@pytest.mark.parametrize("ids,pattern", [
    ([[1, 2], [3]], r"requests\[0\]: hash_ids: must contain only integers \(got \[1, 2\]\)"),  # numpy: inhomogeneous
    ([[1], [3]], r"requests\[0\]: hash_ids: must contain only integers \(got \[1\]\)"),  # numpy: a 2-D array
    ([1, 2**70], r"requests\[0\]: hash_ids: ids must be 64-bit integers, in \[-2\*\*63, 2\*\*64\) "
                 r"\(got 1180591620717411303424\)"),
    ([-2**63 - 1, 2], r"requests\[0\]: hash_ids: ids must be 64-bit integers, in \[-2\*\*63, 2\*\*64\) "
                      r"\(got -9223372036854775809\)"),
    ([True, False], r"requests\[0\]: hash_ids: must contain only integers \(got True\)"),
    ([1.0, 2.0**60], r"requests\[0\]: hash_ids: a hash id written as a float above 2\*\*53 has lost its low bits"),
])
def test_agentic_bad_hash_ids_name_file_request_and_value(tmp_path, ids, pattern):
    path = mutate(tmp_path / "ids.json.gz", lambda d: d["requests"][0].update(hash_ids=ids))
    with pytest.raises(TraceFormatError, match=pattern) as e:
        load_agentic_trace(path)
    assert str(e.value).startswith(f"{path}: ")


@pytest.mark.parametrize("ids,problem", [
    ([1, 2**70], r"ids must be 64-bit integers, in \[-2\*\*63, 2\*\*64\) \(got 1180591620717411303424\)"),
    ([[1], 2], r"must contain only integers \(got \[1\]\)"),
    ("1,2", r"must be a list of integers \(got 'str'\)")])
def test_mooncake_bad_block_ids_name_file_line_and_value(tmp_path, ids, problem):
    path = jsonl(tmp_path / "big.jsonl", [mc(0, 600, 1, [5, 6]), mc(1, 1000, 1, ids)])
    with pytest.raises(TraceFormatError, match=rf"line 2: hash_ids: {problem}") as e:
        load_mooncake_trace(path)
    assert str(e.value).startswith(f"{path}: ")


# ---- valid variants of the formats, as other writers produce them ------------------------------------
def _same(a, b):
    """Two lists of trajectories describe the same rounds."""
    assert [t.agent_id for t in a] == [t.agent_id for t in b]
    for x, y in zip(a, b):
        for field in ("num_prompt_tokens", "num_hit_tokens", "num_gen_tokens", "think_time_s"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
        assert x.start_offset_s == y.start_offset_s and x.block_tokens == y.block_tokens
        for i in range(x.num_rounds):
            np.testing.assert_array_equal(x.block_hash_ids(i), y.block_hash_ids(i))


def test_agentic_writers_variants_read_as_the_canonical_file(tmp_path):
    base = load_agentic_trace(write_gz(tmp_path / "trace_x.json.gz", conversation()))

    def variant(name, fn):
        return load_agentic_trace(mutate(tmp_path / name / "trace_x.json.gz", fn) if (tmp_path / name).mkdir()
                                  is None else None)

    def with_partial_ids(d):  # one more id per request for the partial last block (130, 200, 260 tokens)
        for r in d["requests"]:
            if r["type"] != "subagent":
                r["hash_ids"] = r["hash_ids"] + [900 + len(r["hash_ids"])]
    _same(variant("ceil", with_partial_ids), base)
    _same(variant("noblock", lambda d: d.pop("block_size")), base)  # 64-token blocks, the recorder's default
    _same(variant("floats", lambda d: d["requests"][1].update(**{"in": 200.0, "out": 0.0})), base)
    _same(variant("floatids", lambda d: d["requests"][1].update(hash_ids=[float(i) for i in d["requests"][1]
                                                                          ["hash_ids"]])), base)
    # requests logged out of time order are taken in t order
    _same(variant("order", lambda d: d["requests"].reverse()), base)


def test_agentic_hash_ids_of_either_64_bit_spelling_are_one_id(tmp_path):
    def spell(d):  # request 1 writes its ids unsigned (top bit set), request 3 signed: the same 64-bit patterns
        d["requests"][0]["hash_ids"] = [-1, 2]
        d["requests"][1]["hash_ids"] = [2**64 - 1, 2, 2**63 + 3]
        d["requests"][3]["hash_ids"] = [-1, 2, -2**63 + 3, 4]
    (main, _) = load_agentic_trace(mutate(tmp_path / "ids.json.gz", spell))
    np.testing.assert_array_equal(main.num_hit_tokens, [0, 128, 192])  # as with ids 1, 2, 3, 4
    np.testing.assert_array_equal(main.block_hash_ids(2), [2**63 - 1, 2, 3, 4])


def test_an_empty_hash_ids_list_makes_every_block_of_its_request_new(tmp_path):
    path = mutate(tmp_path / "noids.json.gz", lambda d: d["requests"][1].update(hash_ids=[]))
    (main, _) = load_agentic_trace(path)
    # round 1 hits nothing of round 0 (its blocks are unknown), and round 2 ([1, 2, 3, 4]) hits only
    # round 0's blocks 1, 2: round 1's block 3 was never recorded
    np.testing.assert_array_equal(main.num_hit_tokens, [0, 0, 128])
    ids = main.block_hash_ids(1)
    assert len(ids) == 3 and len(set(ids.tolist())) == 3 and not set(ids.tolist()) & {1, 2, 3, 4}
    again = load_agentic_trace(path)[0].block_hash_ids(1)  # deterministic
    np.testing.assert_array_equal(ids, again)


def test_a_sub_agent_starts_at_its_launch_after_its_conversation_s_first_request(tmp_path):
    def shift(d, by=1000.0):  # the same conversation whose clock starts at t = 1000 s
        for r in d["requests"]:
            r["t"] += by
    base = load_agentic_trace(write_gz(tmp_path / "a.json.gz", conversation()))
    shifted = load_agentic_trace(mutate(tmp_path / "b.json.gz", shift))
    for ts in (base, shifted):
        start = trajectory_start_times_s(_set(ts), [50.0])
        np.testing.assert_allclose(start, [50.0, 56.0])  # launched 6 s after the first request
    assert shifted[0].start_offset_s == 1000.0 and shifted[1].start_offset_s == 1006.0


def _set(trajs):
    from dualpath_jax.workload import TrajectorySet
    return TrajectorySet.from_trajectories(trajs)


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
    _same(variant("floor", floor), base)  # without the partial block's id
    _same(variant("shuffled", [MC_ROWS[i] for i in (3, 0, 4, 2, 1)]), base)  # lines out of time order
    _same(variant("floats", [dict(r, input_length=float(r["input_length"])) for r in MC_ROWS]), base)
    _same(variant("bom", None, "\ufeff" + "".join(json.dumps(r) + "\n" for r in MC_ROWS)), base)
    unsigned = [dict(r, hash_ids=[h + 2**63 for h in r["hash_ids"]]) for r in MC_ROWS]  # top bit dropped
    _same(variant("unsigned", unsigned), base)


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


def test_sub_agents_nested_beyond_the_parser_are_one_line(tmp_path):
    turn = '{"t": 0.0, "type": "n", "in": 64, "out": 1, "hash_ids": [1]}'
    for depth in (300, 2000):  # one parses and walks; the other is deeper than Python's JSON parser goes
        opened = "".join(f'{{"t": 0.0, "type": "subagent", "agent_id": "s{i}", "requests": [{turn}, '
                         for i in range(depth))
        text = f'{{"id": "deep", "block_size": 64, "requests": [{turn}, {opened}{turn}{"]}" * depth}]}}'
        path = tmp_path / f"deep{depth}.json"
        path.write_text(text)
        if depth == 300:
            assert len(load_agentic_trace(path)) == depth + 1
        else:
            with pytest.raises(TraceFormatError, match=r"deep2000.json: .*nested too deeply"):
                load_agentic_trace(path)


def test_absurd_lengths_and_a_file_with_names_are_one_line(tmp_path):
    path = mutate(tmp_path / "huge.json.gz", lambda d: d["requests"][1].update(**{"in": 1e30, "hash_ids": []}))
    with pytest.raises(TraceFormatError, match=r"requests\[1\]: in: must be <= 100,000,000 tokens"):
        load_agentic_trace(path)
    big = jsonl(tmp_path / "big.jsonl", [mc(0, 10**9, 1, [])])
    with pytest.raises(TraceFormatError, match=r"line 1: input_length: must be <= 100,000,000 tokens"):
        load_mooncake_trace(big)
    one = write_gz(tmp_path / "trace_x.json.gz", conversation())
    with pytest.raises(ValueError, match="names: .* is one trace file"):
        load_agentic_traces(one, names=["trace_x"])
    assert list(load_agentic_traces(one).agent_ids) == ["trace_x", "trace_x/agent_001"]
    (s,) = load_mooncake_trace(jsonl(tmp_path / "b.jsonl", [mc(0, 150, 3, [7, 8])]), block_tokens=64.0)
    assert s.block_tokens == 64
