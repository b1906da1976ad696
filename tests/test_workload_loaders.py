"""The agentic trace loader (and what both loaders share): hand-built fixtures, malformed files, and a
few files of the shared traces. The Mooncake loader's own tests are in test_workload_mooncake.py."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualpath_jax.workload import (TraceFormatError, agentic_dir, load_agentic_trace, load_agentic_traces,
                                   load_mooncake_trace, trace_stats)
from dualpath_jax.workload.agentic import trace_files
from dualpath_jax.workload.arrivals import trajectory_start_times_s

from trace_cases import jsonl, mc, same_trajectories


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
    with pytest.warns(TraceSkipWarning, match=r"requests\[1\]: in: 1 request\(s\) recorded"):
        (main,) = load_agentic_trace(path, subagents="drop")  # the dropped sub-agent's blank request: not counted
    np.testing.assert_array_equal(main.num_prompt_tokens, [130, 260])

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
    ("think", lambda d: d["requests"][1].update(think_time=1e300),
     r"requests\[1\]: think_time: must be below 2\*\*62 s .*\(got 1e\+300\)"),
    ("nestedt", lambda d: d["requests"][2]["requests"][0].update(t=2.0**62),
     r"requests\[2\]\.requests\[0\]: t: must be below 2\*\*62 s"),
])
def test_agentic_malformed_names_file_request_field(tmp_path, name, fn, pattern):
    path = mutate(tmp_path / f"{name}.json.gz", fn)
    for subagents in ("separate", "drop"):  # a dropped sub-agent is checked all the same (the engine drops them)
        with pytest.raises(TraceFormatError, match=pattern) as e:
            load_agentic_trace(path, subagents=subagents)
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


# ---- valid variants of the formats, as other writers produce them ------------------------------------
def test_agentic_writers_variants_read_as_the_canonical_file(tmp_path):
    base = load_agentic_trace(write_gz(tmp_path / "trace_x.json.gz", conversation()))

    def variant(name, fn):
        return load_agentic_trace(mutate(tmp_path / name / "trace_x.json.gz", fn) if (tmp_path / name).mkdir()
                                  is None else None)

    def with_partial_ids(d):  # one more id per request for the partial last block (130, 200, 260 tokens)
        for r in d["requests"]:
            if r["type"] != "subagent":
                r["hash_ids"] = r["hash_ids"] + [900 + len(r["hash_ids"])]
    same_trajectories(variant("ceil", with_partial_ids), base)
    # no block_size: 64-token blocks, the recorder's default
    same_trajectories(variant("noblock", lambda d: d.pop("block_size")), base)
    same_trajectories(variant("floats", lambda d: d["requests"][1].update(**{"in": 200.0, "out": 0.0})), base)
    same_trajectories(variant("floatids", lambda d: d["requests"][1].update(hash_ids=[float(i) for i in d["requests"][1]
                                                                          ["hash_ids"]])), base)
    # requests logged out of time order are taken in t order
    same_trajectories(variant("order", lambda d: d["requests"].reverse()), base)


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


def test_a_sub_agent_launched_before_its_conversation_s_first_kept_request_never_starts_before_it(tmp_path):
    # defect: the conversation's own requests before t = 7 were recorded with in = 0 (left out), so
    # its first kept request (t = 9) came after the sub-agent's launch (t = 6): the sub-agent got a
    # negative offset, an arrival before its conversation's (and a negative start offline)
    from dualpath_jax.sim.runs import offline_starts, online_starts

    def blank_first_two(d):
        for r in d["requests"][:2]:
            r["in"], r["hash_ids"] = 0, []
    with pytest.warns(Warning, match="recorded with no input tokens left out"):
        trajs = load_agentic_trace(mutate(tmp_path / "a.json.gz", blank_first_two))
    assert [t.start_offset_s for t in trajs] == [9.0, 6.0]
    ts = _set(trajs)
    np.testing.assert_allclose(trajectory_start_times_s(ts, [50.0]), [53.0, 50.0])  # recorded order kept
    np.testing.assert_allclose(trajectory_start_times_s(ts, [50.0], 0.0), [50.0, 50.0])
    np.testing.assert_allclose(offline_starts(ts, recorded_offsets=True), [3.0, 0.0])
    arrival = online_starts(ts, 1.0, 0)[0]
    np.testing.assert_allclose(online_starts(ts, 1.0, 0, recorded_offsets=True), [arrival + 3.0, arrival])


def test_a_sub_agent_named_as_an_earlier_file_s_conversation_gets_a_name_of_its_own(tmp_path):
    # defect: a.json.gz's conversation "x/agent_001" and b.json.gz's sub-agent agent_001 of "x" had
    # the same name, so the starts' and the tables' name lookups could take one for the other
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps(
        {"id": "x/agent_001", "requests": [req(0.0, 128, 5, [1, 2])]}).encode()))
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(json.dumps(
        {"id": "x", "requests": [req(0.0, 128, 5, [1, 2]), {"t": 50.0, "type": "subagent", "agent_id": "agent_001",
         "requests": [req(0.0, 128, 5, [3, 4]), {"t": 7.0, "type": "subagent", "agent_id": "inner",
                                                  "requests": [req(0.0, 64, 5, [9])]}]}]}).encode()))
    ts = load_agentic_traces(tmp_path)
    assert list(zip(ts.agent_ids, ts.parent_ids)) == [
        ("x/agent_001", None), ("x", None), ("x/agent_001~2", "x"), ("x/agent_001~2/inner", "x/agent_001~2")]
    np.testing.assert_allclose(trajectory_start_times_s(ts, [0.0, 10.0]), [0.0, 10.0, 60.0, 67.0])


def _set(trajs):
    from dualpath_jax.workload import TrajectorySet
    return TrajectorySet.from_trajectories(trajs)


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
