"""The simulator replays a trace's requests as the trace gives them: every prompt keeps its length.

A traced conversation may leave a thread and return to it later (a side request between two
turns of the main thread, or two models' threads interleaved): the returning request's cached
prefix reaches past the previous round's context to an earlier, longer one, whose KV is still in
storage. The prompt lengths are read from the trace file itself.
"""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from dualpath_jax.sim import SimAgent, SimConfig, agents_from_trajectories, offline_starts, simulate
from dualpath_jax.workload import TrajectorySet, load_agentic_trace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "agentic_traces"
CFG = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=2, fetch_period_s=0.005)


def _replay(ts):
    res = simulate(CFG, agents_from_trajectories(ts, offline_starts(ts)))
    r = res.requests
    assert not np.isnan(np.asarray(r["finish_s"], np.float64)).any()
    return r


def test_a_request_returning_to_an_earlier_thread_keeps_its_prompt(tmp_path):
    main = list(range(1, 101))  # 100 blocks of 64 tokens
    reqs = [{"t": 0.0, "type": "n", "in": 6400, "out": 10, "hash_ids": main},
            {"t": 5.0, "type": "n", "in": 640, "out": 10, "hash_ids": list(range(900, 910))},  # a side thread
            {"t": 9.0, "type": "n", "in": 7040, "out": 10, "hash_ids": main + list(range(101, 111))}]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps({"id": "conv", "block_size": 64, "hash_id_scope": "local", "requests": reqs}))
    r = _replay(TrajectorySet.from_trajectories(load_agentic_trace(path)))
    order = np.argsort(r["round"])
    prompt = (np.asarray(r["hit_tokens"]) + np.asarray(r["append_tokens"]))[order]
    assert prompt.tolist() == [6400, 640, 7040]
    # the third request reads the main thread's 100 blocks (round 0 stored 6,409 of its 6,410 tokens)
    assert np.asarray(r["hit_tokens"])[order].tolist() == [0, 0, 6400]


def test_hits_beyond_every_earlier_context_mean_the_previous_context():
    # a hand-made agent: 99,999 means "all of it"; round 2 compacts to 2,000; round 3 then hits the
    # 2,350-token context it has, not the 5,450 of round 1 (below 99,999, but not as long as it)
    a = SimAgent(0.0, np.array([5000, 300, 300, 200]), np.array([100, 50, 50, 40]), None,
                 np.array([0, 99_999, 2000, 99_999]))
    r = simulate(CFG, [a]).requests
    order = np.argsort(r["round"])
    prompt = (np.asarray(r["hit_tokens"]) + np.asarray(r["append_tokens"]))[order]
    assert prompt.tolist() == [5000, 5100 + 300, 2000 + 300, 2350 + 200]


@pytest.mark.skipif(not (DATA / "trace_0300.json.gz").exists(), reason="shared traces not present")
def test_interleaved_threads_of_a_real_trace_keep_every_prompt():
    # trace_0300 interleaves two models' threads: some requests return to a thread whose context
    # is longer than the previous request's
    path = DATA / "trace_0300.json.gz"
    raw = json.loads(gzip.decompress(path.read_bytes()))
    top = [q for q in raw["requests"] if q.get("type") != "subagent"]
    ts = TrajectorySet.from_trajectories(load_agentic_trace(path, subagents="drop"))
    assert len(ts.agent_ids) == 1 and len(ts.num_append_tokens) == len(top)
    context = ts.num_hit_tokens + ts.num_append_tokens + ts.num_gen_tokens
    assert (ts.num_hit_tokens[1:] > context[:-1]).sum() == 2  # of 140 requests
    r = _replay(ts)
    order = np.argsort(r["round"])
    prompt = (np.asarray(r["hit_tokens"]) + np.asarray(r["append_tokens"]))[order]
    want = sorted(top, key=lambda q: q["t"])
    np.testing.assert_array_equal(prompt, [q["in"] for q in want])
    # and every request reads all that the trace says is cached, to whole blocks of what is stored
    assert (np.asarray(r["hit_tokens"])[order] <= ts.num_hit_tokens).all()
    assert (np.asarray(r["hit_tokens"])[order] >= ts.num_hit_tokens - 64).all()


def test_use_think_time_replays_recorded_think_times_and_subagent_offsets(tmp_path):
    from dualpath_jax.config import ConfigError
    from dualpath_jax.studies.common import WorkloadSpec
    from dualpath_jax.studies.runs import workload_agents

    reqs = [{"t": 0.0, "type": "n", "in": 700, "out": 5, "hash_ids": list(range(1, 11)), "think_time": 0.0},
            {"t": 4.0, "type": "n", "in": 900, "out": 5, "hash_ids": list(range(1, 15)), "think_time": 3.5},
            {"t": 6.0, "type": "subagent", "agent_id": "helper", "requests": [
                {"t": 0.0, "type": "n", "in": 300, "out": 2, "hash_ids": [80, 81, 82, 83]}]}]
    (tmp_path / "conv.json").write_text(json.dumps({"id": "conv", "block_size": 64, "requests": reqs}))
    with pytest.raises(ConfigError, match="workload.use_think_time: replays a trace's recorded think times"):
        WorkloadSpec(use_think_time=True)
    for recorded in (False, True):
        wl = WorkloadSpec(source="agentic", path=str(tmp_path), num_agents=1, use_think_time=recorded)
        ts = wl.build()
        r = simulate(CFG, workload_agents(ts, wl.use_think_time)[0]).requests
        agent, rnd = np.asarray(r["agent"]), np.asarray(r["round"])
        arrival, persisted = np.asarray(r["arrival_s"]), np.asarray(r["persisted_s"])
        main = [int(np.flatnonzero((agent == 0) & (rnd == k))[0]) for k in (0, 1)]
        sub = int(np.flatnonzero(agent == 1)[0])
        gap = arrival[main[1]] - persisted[main[0]]  # round 1 waits its think time after round 0's KV is stored
        assert gap == pytest.approx(3.5 if recorded else 0.0, abs=1e-9)
        assert arrival[sub] == pytest.approx(6.0 if recorded else 0.0)  # launched 6 s into the conversation


def test_replay_timestamps_starts_each_mooncake_session_at_its_recorded_arrival(tmp_path):
    from dualpath_jax.config import ConfigError
    from dualpath_jax.studies.common import WorkloadSpec
    from dualpath_jax.studies.runs import online_runs, run_offline, spec_agents
    from trace_cases import jsonl, mc

    # three sessions (no request resends another's prompt and answer): first requests at 2 s, 6 s
    # and 11 s of the trace; the second session returns at 9 s
    path = jsonl(tmp_path / "t.jsonl", [mc(2000, 1024, 8, [1, 2]), mc(6000, 1536, 8, [7, 8, 9]),
                                        mc(9000, 2048, 8, [7, 8, 9, 10]), mc(11000, 512, 8, [20])])
    base = dict(source="mooncake", path=str(path), num_agents=3, mal="32K")
    for speedup, want in ((1.0, [0.0, 4.0, 9.0]), (2.0, [0.0, 2.0, 4.5])):
        wl = WorkloadSpec(**base, replay_timestamps=True, timestamp_speedup=speedup)
        ts = wl.build()
        _, starts = spec_agents(wl, ts)
        np.testing.assert_allclose(starts, want)
        r = simulate(CFG, spec_agents(wl, ts)[0]).requests
        agent, rnd, arrival = np.asarray(r["agent"]), np.asarray(r["round"]), np.asarray(r["arrival_s"])
        first = [float(arrival[(agent == a) & (rnd == 0)][0]) for a in range(3)]
        np.testing.assert_allclose(first, want)  # each session's first request arrives at its recorded time
    offline = WorkloadSpec(**base)
    np.testing.assert_array_equal(spec_agents(offline, offline.build())[1], [0.0, 0.0, 0.0])
    # with think times the session's second request also keeps its recorded gap (9 s - 6 s after the first)
    wl = WorkloadSpec(**base, replay_timestamps=True, use_think_time=True)
    r = simulate(CFG, spec_agents(wl, wl.build())[0]).requests
    agent, rnd = np.asarray(r["agent"]), np.asarray(r["round"])
    second, first_done = (agent == 1) & (rnd == 1), (agent == 1) & (rnd == 0)
    assert float(np.asarray(r["arrival_s"])[second][0] - np.asarray(r["persisted_s"])[first_done][0]) == \
        pytest.approx(3.0)
    # the public offline entry point takes the same switches: the last session starts 4.5 s in
    ts = WorkloadSpec(**base).build()
    replayed = run_offline(CFG, ts, ["basic"], log=None, replay_timestamps=True, timestamp_speedup=2.0)["basic"]
    batch = run_offline(CFG, ts, ["basic"], log=None)["basic"]
    assert replayed["num_requests"] == batch["num_requests"] == 4
    assert batch["jct_s"] < 4.5 < replayed["jct_s"]
    assert wl.label.endswith("recorded think times, recorded arrivals")
    assert WorkloadSpec(**base, replay_timestamps=True, timestamp_speedup=2.0).label.endswith("recorded arrivals x2")

    # refused where it cannot mean anything, naming the field
    for fields, match in (
            (dict(replay_timestamps=True), "workload.replay_timestamps: .*generator records no timestamps"),
            (dict(replay_timestamps=True, source="agentic"), "workload.replay_timestamps: .*share no clock"),
            (dict(base, timestamp_speedup=2.0), "workload.timestamp_speedup: speeds up a replay"),
            (dict(base, replay_timestamps=True, timestamp_speedup=0.0), "workload.timestamp_speedup"),
            (dict(base, replay_timestamps="yes"), "workload.replay_timestamps: must be true or false")):
        with pytest.raises(ConfigError, match=match):
            WorkloadSpec(**fields)
    with pytest.raises(ConfigError, match="workload.replay_timestamps: the online runs' arrivals are Poisson"):
        online_runs([(CFG, "basic", WorkloadSpec(**base, replay_timestamps=True), 1.0, 0, 0.0)], log=None)


def test_replay_timestamps_refuses_a_session_without_a_recorded_arrival_and_the_online_studies(tmp_path):
    from dualpath_jax.config import ConfigError
    from dualpath_jax.studies.advisor_runs import AdvisorConfig
    from dualpath_jax.studies.common import WorkloadSpec
    from dualpath_jax.studies.config import from_config_dict
    from dualpath_jax.studies.sensitivity_plan import sensitivity_config
    from dualpath_jax.workload import untimed_session
    from config_files import get_config, load_sim_config
    from trace_cases import jsonl

    def turn(sid, n_in, **extra):
        return {"session_id": sid, "input_length": n_in, "output_length": 4, **extra}

    # named sessions: "b" has no timestamp on its first turn (its start would be its delay, 0)
    mixed = jsonl(tmp_path / "mixed.jsonl", [turn("a", 600, timestamp=3_600_000), turn("b", 700, delay=50),
                                             turn("b", 64, timestamp=3_601_000), turn("c", 500, timestamp=3_602_000)])
    timed = jsonl(tmp_path / "timed.jsonl", [turn("a", 600, timestamp=1000), turn(7, 700, timestamp=3000)])
    assert untimed_session(mixed) == "b" and untimed_session(timed) is None
    base = dict(source="mooncake", mal="32K", replay_timestamps=True)
    with pytest.raises(ConfigError, match=r"^workload\.replay_timestamps: .*session 'b' of .*mixed\.jsonl has no "
                                          r"timestamp on its first turn"):
        WorkloadSpec(**base, path=str(mixed), num_agents=2).build()
    ts = WorkloadSpec(**base, path=str(timed), num_agents=2).build()
    np.testing.assert_allclose(spec_starts(WorkloadSpec(**base, path=str(timed), num_agents=2), ts), [0.0, 2.0])

    # the studies whose runs have Poisson arrivals refuse it at their config, before any run
    for study in ("online", "ttft_breakdown", "working_set", "table3"):
        config = load_sim_config(study)
        config.workload.source, config.workload.path, config.workload.replay_timestamps = "mooncake", str(timed), True
        with pytest.raises(ConfigError, match=r"^workload\.replay_timestamps: the online runs' arrivals are Poisson"):
            from_config_dict(config)
    config = get_config("sensitivity", "tiny")
    config.online.workload.source, config.online.workload.path = "mooncake", str(timed)
    config.online.workload.replay_timestamps = True
    with pytest.raises(ConfigError, match=r"^online\.workload\.replay_timestamps"):
        sensitivity_config(config)
    wl = WorkloadSpec(**base, path=str(timed), num_agents=2)
    with pytest.raises(ConfigError, match=r"^workload\.replay_timestamps: .*objective='jct' replays"):
        AdvisorConfig(sim=CFG, nodes=3, workload=wl, objective="max_aps")
    assert AdvisorConfig(sim=CFG, nodes=3, workload=wl, objective="jct").workload.replay_timestamps


def spec_starts(wl, ts):
    from dualpath_jax.studies.runs import spec_agents
    return spec_agents(wl, ts)[1]
