"""The ``ray`` runtime: every node of the engine cluster a Ray actor in its own process, KV between
them over JAX's transfer server. Same worker code as ``threads``: same tokens (and those of a
no-cache recompute), same stored-KV reads; a killed DE node loses no request."""

import functools
import os
import threading
from collections import Counter

import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.engine.cluster import EngineCluster
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.faults import FaultConfig
from dualpath_jax.engine.ray_runtime import RayRuntime
from dualpath_jax.engine.report import check_tokens, conservation
from dualpath_jax.store import KVStore, StoreConfig

from engine_cases import FAST, TIME_MODEL, stream, tiny_model

pytestmark = pytest.mark.xdist_group("ray")

# 4 agents x 3 rounds whose later rounds hit their whole context; prompts of 2-6 Full Blocks
AGENTS = [stream(f"a{i}", [150 + 40 * i, 20 + i, 30], [5, 4, 3]) for i in range(4)]


@functools.cache
def _model():
    """One ``(spec, params, layout)`` for the module: the runtime keeps its node actors (and what they
    compiled) from test to test only while the params are the same object."""
    return tiny_model()


@pytest.fixture(scope="module")
def runtime(ray_session):
    rt = RayRuntime()
    yield rt
    rt.close()


def _run(tmp_path, name, cfg, runtime, agents=AGENTS, model=None, starts=None, **kw):
    spec, params, layout = model or _model()
    store = KVStore(layout, StoreConfig(backend="file", path=str(tmp_path / name), fsync=False))
    cluster = EngineCluster(cfg, spec, params, layout, store, time_model=TIME_MODEL, prefill_tokens_per_s=1e4,
                            runtime=runtime, **kw)
    try:
        return cluster.run(agents, [0.0] * len(agents) if starts is None else starts, progress=False)
    finally:
        store.close()


def _tokens(result) -> dict:
    return {(r.trajectory_id, r.round_index): list(r.generated) for r in result.requests}


def _moved_bytes(result) -> int:
    """KV bytes the links carried between engines: every PE CNIC out (the hand-off to DE buffers)
    plus the DE CNIC out bytes that went to a PE (the DE read path; the rest is persist D2H)."""
    pe_out = sum(v["bytes"] for k, v in result.links.items() if k.startswith("cnic_out/pe"))
    de_to_pe = sum(r.num_bytes for r in result.transfers
                   if r.link.startswith("cnic_out/de") and not r.tag.startswith("persist/") and r.outcome.value == "ok")
    return int(pe_out + de_to_pe)


def test_ray_runs_the_same_requests_as_threads_across_three_processes(tmp_path, runtime):
    model = _model()
    spec, params, _ = model
    cfg = ClusterConfig(**FAST).for_variant("dualpath")
    threads = _run(tmp_path, "threads", cfg, None, model=model)
    ray = _run(tmp_path, "ray", cfg, runtime, model=model)
    assert (ray.runtime, ray.processes, threads.processes) == ("ray", 3, 1)
    assert len(set(runtime.pids)) == 3
    # glibc's arenas are capped in every node process (its resident memory stays flat from run to run)
    for pid in runtime.pids:
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', '2')}".encode() in f.read().split(b"\0")
    # each node started JAX's backend itself and knows its XLA threads (for bench_runtime's split)
    assert set(runtime.xla_threads) == set(runtime.pids) and all(runtime.xla_threads.values())
    # the calls the nodes served: orders, polls, the PE's reservations, hit offers and hand-offs
    calls = ray.actor_calls
    assert threads.actor_calls == {} and {"poll", "command", "reserve", "offer_hits", "receive_batch"} <= set(calls)
    # every request reserved DE buffer space and was handed off: at least one call each
    assert calls["reserve"] >= 12 and calls["receive_batch"] >= len(ray.forwards)
    for res in (threads, ray):
        assert not [r.error for r in res.requests if r.error] and not res.worker_errors and not res.leaks
        assert conservation(res)["bytes_conserved"]
    tokens = check_tokens({"threads": threads, "ray": ray}, params, spec)
    assert tokens["tokens_identical"] and tokens["compared_requests"] == 12, tokens["reference_mismatches"]
    # every hit block was read from the store once per request in both runtimes
    assert ray.read_bytes_store == threads.read_bytes_store > 0
    snic = lambda res: sum(v["bytes"] for k, v in res.links.items() if k.startswith("snic_read/"))  # noqa: E731
    assert snic(ray) == snic(threads) == ray.read_bytes_store
    # the KV that moved between engines is exactly what crossed process boundaries through the
    # transfer server (the links count it on one side, the endpoints on the other)
    assert ray.cross_process_kv_bytes == _moved_bytes(ray) > 0
    assert threads.cross_process_kv_bytes == 0
    # a DE-side read happened, so both directions crossed
    assert any(r.side in ("de", "split") for r in ray.requests)
    # the engines' measurements came back from their processes
    assert {f.engine for f in ray.forwards} == {0} and {s.engine for s in ray.steps} <= {1, 2} and ray.steps
    assert all(v > 0 for k, v in ray.compute_s.items() if k == "pe0")
    assert sum(ray.join_count.values()) == 12
    assert all(0 <= r.start_s <= r.finish_s <= ray.wall_s + 1.0 for r in ray.transfers)


def test_basic_and_oracle_on_ray_match_a_recompute(tmp_path, runtime):
    model = _model()
    spec, params, _ = model
    results = {v: _run(tmp_path, v, ClusterConfig(**FAST).for_variant(v), runtime, model=model)
               for v in ("basic", "oracle")}
    tokens = check_tokens(results, params, spec)
    assert tokens["tokens_identical"], tokens["reference_mismatches"]
    assert all(not r.error for res in results.values() for r in res.requests)
    assert results["basic"].cross_process_kv_bytes == _moved_bytes(results["basic"])
    assert all(r.side == "pe" for r in results["basic"].requests if r.hit_blocks)
    # oracle moves KV without link costs, so the links count none of it but the processes still do
    assert results["oracle"].cross_process_kv_bytes > 0 and _moved_bytes(results["oracle"]) == 0


def test_read_queue_changes_held_in_the_nodes_all_reach_the_driver(tmp_path, runtime, monkeypatch):
    """At a slow SNIC a block takes longer than a fetch period: the reader's changes are held in
    its node. While a long stored prompt is read, other agents arrive; the driver asks the
    reading nodes for their changes before placing them, and gets some. Every change reaches the
    driver exactly once (its read queues end at 0: no leak) and the requests run as under
    ``threads``."""
    from dualpath_jax.engine.ray_runtime import RemoteNodes

    model = _model()
    spec, params, layout = model
    cfg = ClusterConfig(**{**FAST, "snic_bytes_per_s": 2e6}).for_variant("dualpath")
    assert layout.full_block_bytes / cfg.snic_bytes_per_s > cfg.fetch_period_s
    long = stream("long", [1200], [4])
    for name in ("slow", "slow-threads"):  # its KV stored: the next run reads 18 blocks of it (~0.3 s)
        _run(tmp_path, name, cfg, None, agents=[long], model=model)
    agents, starts = [long, *AGENTS[:3]], [0.0, 0.1, 0.15, 0.2]
    answers = []
    pulled = RemoteNodes._pulled

    def count(self, n, fut):
        answers.append(fut.result() if fut.exception() is None else None)
        pulled(self, n, fut)

    monkeypatch.setattr(RemoteNodes, "_pulled", count)
    res = _run(tmp_path, "slow", cfg, runtime, agents=agents, model=model, starts=starts)
    monkeypatch.undo()
    # the driver asked before some ticks, and answers brought changes held in a node: blocks read
    assert res.actor_calls.get("read_q", 0) == len(answers) and any(answers) and not res.leaks
    assert all(ev[0] == "read_q" and ev[2] < 0 and ev[2] % layout.block_tokens == 0
               for evs in answers if evs for ev in evs)
    assert not [r.error for r in res.requests if r.error]
    threads = _run(tmp_path, "slow-threads", cfg, None, agents=agents, model=model, starts=starts)
    assert _tokens(res) == _tokens(threads)
    assert res.read_bytes_store == threads.read_bytes_store >= 18 * layout.full_block_bytes


def test_a_killed_de_node_loses_no_request(tmp_path, runtime, ray_session, monkeypatch):
    """The DE node of engine 2 is killed while a request is placed on it: the death is recorded,
    the request runs again on the other DE, every request finishes with the tokens of a
    no-cache recompute, and the next run gets a fresh node process."""
    model = _model()
    spec, params, _ = model
    cfg = ClusterConfig(**{**FAST, "snic_bytes_per_s": 2e7}).for_variant("dualpath")
    agents = [stream(f"k{i}", [200 + 30 * i, 40, 30], [6, 5, 4]) for i in range(6)]
    _run(tmp_path, "warm", cfg, runtime, agents=agents[:1], model=model)  # nodes up and compiled
    old_pid = runtime.pids[2]
    killed = []
    start_read = EngineCluster._start_read

    def kill_on_second_placement(self, req):
        start_read(self, req)
        if req.de == 2 and not killed:
            placed_on_2 = sum(r.de == 2 for r in self.requests)
            if placed_on_2 >= 2:
                killed.append(req.rid)
                ray_session.kill(runtime.actors[2])

    monkeypatch.setattr(EngineCluster, "_start_read", kill_on_second_placement)
    res = _run(tmp_path, "kill", cfg, runtime, agents=agents, model=model)
    monkeypatch.undo()
    assert killed and list(res.lost_nodes) == [2]
    assert [w["worker"] for w in res.worker_errors] == ["node2"] and "died" in res.worker_errors[0]["error"]
    assert len(res.requests) == 18 and not [r.error for r in res.requests if r.error]
    rerun = [r for r in res.failed_attempts if "node2 died" in r.error]
    assert rerun and any(r.rid == killed[0] for r in rerun)
    retried = {(r.trajectory_id, r.round_index) for r in rerun}
    assert all(r.de == 1 for r in res.requests if (r.trajectory_id, r.round_index) in retried)
    tokens = check_tokens({"ray": res}, params, spec)
    assert tokens["tokens_identical"], tokens["reference_mismatches"]
    assert not res.leaks
    again = _run(tmp_path, "after", cfg, runtime, agents=agents[:2], model=model)
    assert runtime.pids[2] != old_pid and again.processes == 3 and not again.lost_nodes
    assert all(not r.error for r in again.requests)


def test_ray_runtime_refuses_what_it_cannot_run(tmp_path, runtime):
    spec, params, layout = _model()
    cfg = ClusterConfig(**FAST).for_variant("dualpath")
    memory = KVStore(layout, StoreConfig(backend="memory"))
    cluster = EngineCluster(cfg, spec, params, layout, memory, time_model=TIME_MODEL, prefill_tokens_per_s=1e4,
                            runtime=runtime)
    with pytest.raises(ConfigError, match="runtime.*file store"):
        cluster.run(AGENTS[:1], [0.0], progress=False)


@pytest.mark.parametrize("kw, match", [
    ({"gpus_per_engine": 1}, r"ray\.gpus_per_engine: 1 GPU\(s\) per engine for 3 engines needs 3 GPU\(s\); "
                             r"the Ray cluster has 0"),
    ({"de_resource": "decode_host"}, r"ray\.de_resource: 2 DE node\(s\) need one unit each of 'decode_host'"),
])
def test_ray_runtime_names_the_resource_the_cluster_lacks_instead_of_waiting(ray_session, kw, match):
    # this host has no GPU and no custom resource: Ray would queue the node actors forever
    spec, params, layout = _model()
    rt = RayRuntime(**kw)
    try:
        with pytest.raises(ConfigError, match=match):
            rt.nodes(ClusterConfig(**FAST), spec, layout, params, object)
        assert rt.actors == []  # nothing was started
        with pytest.raises(ConfigError, match=match):  # and a retry checks again instead of waiting
            rt.nodes(ClusterConfig(**FAST), spec, layout, params, object)
    finally:
        rt.close()


def test_pe_node_warm_up_compiles_in_its_own_process_what_its_pe_then_runs(runtime):
    """The driver's compilation never reaches a node actor's process: RayRuntime.warm_up_prefill
    compiles the PE's prefill programs there, through a new PrefillPath as each run's PE builds
    one, so a second warm-up (another new PrefillPath) finds every program in memory."""
    from dualpath_jax.sched import ClusterScheduler

    spec, params, layout = _model()
    runtime.nodes(ClusterConfig(**FAST).for_variant("dualpath"), spec, layout, params, ClusterScheduler)
    shape = (1024, 32)  # (T bucket, P bucket): longer than any run of this module uses
    assert runtime.warm_up_prefill([shape]) > 0  # compiled (or loaded) in the PE node's process
    assert runtime.warm_up_prefill([shape]) == 0  # a new PrefillPath, as each run's PE builds, finds it in memory
    assert runtime.warm_up_prefill([(1024, 64)]) > 0  # a new shape compiles


def test_random_faults_of_every_kind_land_in_the_node_processes_and_lose_nothing(tmp_path, runtime):
    model = _model()
    spec, params, _ = model
    faults = FaultConfig(read_corruption_rate=0.2, slow_read_rate=0.5, slow_read_s=0.01, transfer_failure_rate=0.04,
                         crash_rate=0.05, seed=4)
    cfg = ClusterConfig(**{**FAST, "max_attempts": 50}).for_variant("dualpath")
    res = _run(tmp_path, "faults", cfg, runtime, model=model, faults=faults)
    assert len(res.requests) == 12 and not [r.error for r in res.requests if r.error] and not res.leaks
    tokens = check_tokens({"ray": res}, params, spec)
    assert tokens["tokens_identical"], tokens["reference_mismatches"]
    # the nodes' counts came back and were summed; every kind landed somewhere
    assert set(res.faults) == {"read_corruption", "slow_read", "transfer_failure", "crash"}
    assert res.faults["crash"] == len(res.worker_errors)
    assert [f for r in (*res.requests, *res.failed_attempts) for f in r.read_failures]  # caught, recomputed
    # a failed move ends its attempt at once: nothing waited for a timeout (a pull's costs 2 x 30 s)
    assert not [r.error for r in res.failed_attempts if "Timeout" in r.error] and res.wall_s < 2 * cfg.timeout_s


def test_a_named_worker_crashes_once_in_its_own_node_process(tmp_path, runtime):
    model = _model()
    spec, params, _ = model
    faults = FaultConfig(crash_worker="pe0-send", crash_after_jobs=1)
    res = _run(tmp_path, "crash", ClusterConfig(**FAST).for_variant("dualpath"), runtime, model=model, faults=faults)
    assert res.faults == {"crash": 1} and [e["worker"] for e in res.worker_errors] == ["pe0-send"]
    assert len(res.failed_attempts) == 1 and "injected crash of pe0-send" in res.failed_attempts[0].error
    assert len(res.requests) == 12 and not [r.error for r in res.requests if r.error] and not res.leaks
    tokens = check_tokens({"ray": res}, params, spec)
    assert tokens["tokens_identical"], tokens["reference_mismatches"]


def test_a_killed_pe_node_reruns_only_what_it_still_held(tmp_path, runtime, ray_session, monkeypatch):
    """2P1D under round robin: PE 0 gets agents 0, 2 and 4, and a 256-token FIFO batch cap makes it
    prefill them one forward each. PE node 0 is killed when agent 0's first round is handed off:
    agent 0 decodes on undisturbed, agents 2 and 4 (still held by PE 0) run again on PE 1, and no
    request, buffer or load is lost."""
    model = _model()
    spec, params, _ = model
    cfg = ClusterConfig(**{**FAST, "prefill_nodes": 2, "decode_nodes": 1, "snic_bytes_per_s": 2e7,
                           "max_decode_batch": 8, "basic_max_batch_tokens": 256}).for_variant("dpl")
    agents = [stream(f"p{i}", [180 + 30 * i, 40, 30], [60, 6, 5]) for i in range(6)]
    _run(tmp_path, "warm", cfg, runtime, agents=agents[:2], model=model)
    killed = []
    handle = EngineCluster._handle

    def kill_at_pe0s_first_hand_off(self, ev):
        handle(self, ev)
        if ev[0] == "prefilled" and ev[1].pe == 0 and not killed:
            killed.append((ev[1].trajectory_id, ev[1].round_index))
            ray_session.kill(runtime.actors[0])

    monkeypatch.setattr(EngineCluster, "_handle", kill_at_pe0s_first_hand_off)
    res = _run(tmp_path, "kill_pe", cfg, runtime, agents=agents, model=model)
    monkeypatch.undo()
    assert killed == [("p0", 0)] and list(res.lost_nodes) == [0]
    assert len(res.requests) == 18 and not [r.error for r in res.requests if r.error]
    rerun = {(r.trajectory_id, r.round_index) for r in res.failed_attempts if "node0 died" in r.error}
    assert rerun == {("p2", 0), ("p4", 0)}  # held by PE 0; agent 0, already on the DE, kept going
    assert all(r.pe == 1 for r in res.requests if r.attempt > 1)
    tokens = check_tokens({"ray": res}, params, spec)
    assert tokens["tokens_identical"], tokens["reference_mismatches"]
    assert not res.leaks


def _bare_node(**fields):
    """A NodeHost with only ``fields`` set (no actor, no JAX device, no run), to test one method,
    and the counter of served calls that every method serving the driver or a PE touches."""
    from dualpath_jax.engine.ray_node import NodeHost

    node = object.__new__(NodeHost)
    for name, value in {"_calls": Counter(), "_calls_lock": threading.Lock(), **fields}.items():
        setattr(node, name, value)
    return node


def test_held_read_queue_changes_are_summed_per_node_and_taken_once():
    from dualpath_jax.engine.ray_node import _HeldReadQueues

    held = _HeldReadQueues()
    assert held.take() == []
    for node, tokens in [(1, -64), (2, 128), (1, -64), (1, -32), (3, 64), (3, -64)]:
        held.add(node, tokens)
    assert held.take() == [("read_q", 1, -160.0), ("read_q", 2, 128.0)]  # (node 3's sum is 0)
    assert held.take() == []
    # the reader's thread adds while the driver's calls take: every change is taken exactly once
    taken, stop = [], threading.Event()

    def taker():
        while not stop.is_set():
            taken.extend(held.take())

    threads = [threading.Thread(target=lambda: [held.add(0, -1.0) for _ in range(20_000)]) for _ in range(2)]
    t = threading.Thread(target=taker)
    t.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    t.join()
    assert sum(x[2] for x in taken + held.take()) == -40_000.0


def test_a_poll_brings_read_queue_changes_with_events_and_a_tick_asks_for_them():
    import time

    import queue

    from dualpath_jax.engine.ray_node import _HeldReadQueues

    node = _bare_node(_outbox=queue.Queue(), _read_q=_HeldReadQueues(), node=1, _run_id="run-1")
    for _ in range(3):  # read-queue changes alone do not end a poll's wait
        node._read_q.add(1, -64.0)
    t0 = time.perf_counter()
    assert node.poll(0.3) == [("read_q", 1, -192.0)]  # (the wait ran out: what is held leaves)
    assert time.perf_counter() - t0 >= 0.3
    # another event ends the wait at once, and the changes held leave with it
    node._read_q.add(1, -64.0)
    threading.Timer(0.05, node._outbox.put, args=(("prefilled", 3, {}),)).start()
    t0 = time.perf_counter()
    assert node.poll(5.0) == [("prefilled", 3, {}), ("read_q", 1, -64.0)]
    assert time.perf_counter() - t0 < 3.0
    node._outbox.put(("finished", 4, {}))  # no change held: the events alone
    assert node.poll(5.0) == [("finished", 4, {})]
    # the driver schedules a tick: it asks for the changes held (a late call of another run takes none)
    node._read_q.add(1, -32.0)
    assert node.read_q_changes("run-0") == []
    assert node.read_q_changes("run-1") == [("read_q", 1, -32.0)]
    assert node.read_q_changes("run-1") == []
    node._read_q.add(1, 32.0)  # the end of a run drains without waiting
    t0 = time.perf_counter()
    assert node.poll(0.0) == [("read_q", 1, 32.0)]
    assert time.perf_counter() - t0 < 3.0
    assert node._calls == {"poll": 4, "read_q": 2}


def _fake_remote_nodes(num_nodes: int, dead=()):
    """A RemoteNodes over fake actors whose ``read_q_changes`` calls hand back futures the test
    completes (a Ray ObjectRef's ``future()``); returns it, the calls made and their futures."""
    import queue
    import types
    from concurrent.futures import Future

    import ray

    from dualpath_jax.engine.ray_runtime import RemoteNodes

    calls, futures = [], []

    def actor(n):
        def remote(run_id):
            calls.append((n, run_id))
            fut = Future()
            futures.append(fut)
            return types.SimpleNamespace(future=lambda: fut)
        return types.SimpleNamespace(read_q_changes=types.SimpleNamespace(remote=remote))

    nodes = object.__new__(RemoteNodes)
    nodes.ray, nodes.run_id = ray, "run-5"
    nodes.actors, nodes.dead = [actor(n) for n in range(num_nodes)], {n: "gone" for n in dead}
    nodes._events, nodes._pulls, nodes._pulls_done, nodes._pulling = queue.Queue(), 0, threading.Condition(), set()
    return nodes, calls, futures


def test_the_driver_asks_nodes_for_their_read_queue_changes_and_waits_for_the_answers():
    """RemoteNodes.pull_read_q: one call per live node; the answers join the controller's events
    from Ray's thread (a node that died adds nothing; another error is the future's to log),
    and await_pulls returns once every answer is in, so that a run's end sees them all."""
    import time

    import ray

    nodes, calls, futures = _fake_remote_nodes(5, dead=[4])
    nodes.pull_read_q([0, 1, 2, 4])
    assert calls == [(0, "run-5"), (1, "run-5"), (2, "run-5")]  # (node 4 is dead)
    assert not nodes.await_pulls(0.05)  # no answer yet
    nodes.pull_read_q([0, 1])
    assert len(calls) == 3  # a node whose last ask is out is not asked again
    futures[1].set_exception(ray.exceptions.RayActorError())
    futures[2].set_exception(RuntimeError("a bug"))  # (logged by concurrent.futures; still answered)
    assert not nodes.await_pulls(0.05)
    threading.Timer(0.1, futures[0].set_result, args=([("read_q", 0, -128.0)],)).start()
    t0 = time.perf_counter()
    assert nodes.await_pulls(5.0) and time.perf_counter() - t0 < 4.0
    assert list(nodes._events.queue) == [("read_q", 0, -128.0)]
    nodes.pull_read_q([0])  # answered: asked again
    assert calls[-1] == (0, "run-5") and len(calls) == 4


def test_a_runs_end_takes_the_read_queue_answers_before_the_nodes_drain_the_rest():
    """RemoteNodes.end: an answer still out when the run ends is in the events before any
    node's end_run is called (end_run drains what the node still holds; an answer after it
    would come too late for the controller's last look at the events)."""
    import types

    nodes, _, futures = _fake_remote_nodes(2)
    seen_at_end_run = []

    def end_run(run_id, orders):
        seen_at_end_run.append(list(nodes._events.queue))
        return {"events": []}

    for a in nodes.actors:
        a.wake = types.SimpleNamespace(remote=lambda: None)
        a.end_run = types.SimpleNamespace(remote=end_run)
    nodes.ray = types.SimpleNamespace(get=lambda out, timeout=None: out, exceptions=nodes.ray.exceptions)
    nodes.config = types.SimpleNamespace(timeout_s=5.0)
    nodes._pending, nodes._seq, nodes._lock = {}, [0, 0], threading.Lock()
    nodes._stop, nodes._pumps = threading.Event(), []
    nodes.pull_read_q([1])
    threading.Timer(0.2, futures[0].set_result, args=([("read_q", 1, -64.0)],)).start()
    assert nodes.end() == [{"events": []}, {"events": []}]
    assert seen_at_end_run == [[("read_q", 1, -64.0)]] * 2


def test_a_due_tick_waits_for_read_queue_answers_still_out_then_takes_every_event():
    """EngineCluster._read_queues_in: up to one fetch period for the answers, then every event
    that came in is taken before the tick reads the queues."""
    import queue
    import types

    waited, taken = [], []
    cluster = object.__new__(EngineCluster)
    cluster.config = types.SimpleNamespace(fetch_period_s=0.02)
    cluster._remote = types.SimpleNamespace(await_pulls=waited.append)
    cluster._events = queue.Queue()
    for ev in [("read_q", 1, -64.0), ("finished", 3)]:
        cluster._events.put(ev)
    cluster._take = taken.append
    cluster._read_queues_in()
    assert waited == [0.02] and taken == [("read_q", 1, -64.0), ("finished", 3)] and cluster._events.empty()


def test_the_controller_asks_for_read_queues_once_per_tick_that_may_place_a_request():
    """EngineCluster._pull_read_queues: a pending tick with some request waiting (only placements
    read the queues) asks the nodes with reads in flight, once; no tick, nothing waiting, or a
    tick asked for already: no call. A request that starts waiting after its tick was scheduled
    gets the ask then."""
    import math
    import types

    from dualpath_jax.engine.reader import ReadQueues

    pulls = []
    cluster = object.__new__(EngineCluster)
    cluster.config = types.SimpleNamespace(num_nodes=3)
    cluster.read_q = ReadQueues(3)
    cluster.read_q.add(0, 128.0)
    cluster.read_q.add(2, 64.0)
    cluster._remote = types.SimpleNamespace(pull_read_q=pulls.append)
    waiting = []
    cluster.driver = types.SimpleNamespace(next_tick_s=math.inf, has_waiting=lambda: bool(waiting))
    assert cluster._pull_read_queues(math.inf) == math.inf and pulls == []  # no tick pending
    cluster.driver.next_tick_s = 1.25
    assert cluster._pull_read_queues(math.inf) == math.inf and pulls == []  # nothing waits: no placement
    waiting.append("r0")
    assert cluster._pull_read_queues(math.inf) == 1.25 and pulls == [[0, 2]]  # (node 1 reads nothing)
    assert cluster._pull_read_queues(1.25) == 1.25 and pulls == [[0, 2]]  # asked once per tick
    cluster.driver.next_tick_s = 1.5
    assert cluster._pull_read_queues(1.25) == 1.5 and pulls == [[0, 2], [0, 2]]


def test_an_event_taken_in_before_a_due_tick_that_ends_the_run_ends_it_before_the_tick():
    """EngineCluster._loop (``ray``): the events a due tick takes in first may end the run (a
    node death that leaves no DE); the run then ends as an aborted run does, without that tick
    (a policy would place requests on engines that are gone)."""
    import math
    import queue
    import types

    from dualpath_jax.engine.reader import ReadQueues

    ticks, expired = [], []
    cluster = object.__new__(EngineCluster)
    cluster.config = types.SimpleNamespace(run_timeout_s=100.0, fetch_period_s=0.02, num_nodes=2)
    cluster.ctx = types.SimpleNamespace(now=lambda: 1.0)
    cluster._arrivals, cluster._agents_open, cluster._aborted = [], 1, ""
    cluster.read_q = ReadQueues(2)
    cluster._remote = types.SimpleNamespace(await_pulls=lambda t: True, pull_read_q=lambda nodes: None,
                                            flush=lambda: None)
    cluster.driver = types.SimpleNamespace(next_tick_s=0.99, tick_due=lambda now: True, has_waiting=lambda: True,
                                           tick=lambda: ticks.append(1))
    cluster._events = queue.Queue()
    cluster._events.put(("node_died", 1, "killed"))
    cluster._take = lambda ev: setattr(cluster, "_aborted", f"node{ev[1]} died: {ev[2]}; no DE is left")
    cluster._expire = expired.append
    cluster._loop()
    assert ticks == [] and expired == ["node1 died: killed; no DE is left"] and cluster._ended_early
    assert math.isfinite(cluster.driver.next_tick_s)


def test_hand_off_sends_name_a_request_by_id_once_its_de_node_holds_the_replica():
    """The per-layer hand-off calls (RayPeers.send_batch) carry a request's prompt and block keys
    (RequestInfo) until its DE node is known to hold its replica: it answered a send, or granted
    the request's DE buffer lease; sends that leave before that answer still carry it (Ray may run
    a threaded actor's calls out of order). A bare id the node never saw fails that send with a
    clear cause, pulling nothing."""
    import types
    from concurrent.futures import Future

    import numpy as np

    from dualpath_jax.engine.ray_peers import RayPeers, RequestInfo
    from dualpath_jax.engine.request import RequestState

    calls = []  # (node, parts, the answer's future)

    class Node:  # a DE node actor: records each receive_batch call, answered when the test says
        def __init__(self, n):
            self.receive_batch = types.SimpleNamespace(remote=lambda run_id, parts, *rest: self._call(n, run_id, parts))

        def _call(self, n, run_id, parts):
            assert run_id == "run-2"  # every call names the PE's run
            fut = Future()
            calls.append((n, parts, fut))
            return types.SimpleNamespace(future=lambda: fut)

    engines = {0: types.SimpleNamespace(cnic_out="cnic_out/pe0")}
    fabric = types.SimpleNamespace(node_of=lambda e: e, engines=engines, carry=lambda path, nbytes, fn, **kw: fn())
    endpoint = types.SimpleNamespace(offer=lambda arrays, **kw: ("offer", len(arrays)))
    peers = RayPeers(endpoint, [None, Node(1), Node(2)], fabric, None, types.SimpleNamespace(timeout_s=5.0), 2,
                     run_id="run-2")

    def req(rid, de, lease=None):
        r = RequestState(rid, 0, 0, "t", np.arange(300, dtype=np.int32), [f"k{i}" for i in range(5)], 8, 5, 64)
        r.pe, r.de, r.de_send_lease = 0, de, lease
        return r

    seg = [(0, np.ones((64, 2, 4), np.float32), np.ones((64, 2, 4), np.float32))]
    a, b = req(7, 1), req(8, 2, lease=object())  # b's DE node granted its lease, so it built b's replica
    done = []
    on_done = lambda i, e: done.append((i, e))  # noqa: E731
    for layer in (0, 1):  # two layers out before any answer: both carry a's RequestInfo
        peers.send_batch(0, [(a, layer, seg, 4096, ""), (b, layer, seg, 4096, "")], on_done)
    sent = {(n, parts[0][1]): (parts, fut) for n, parts, fut in calls}  # (node, layer) -> one call each
    assert len(calls) == len(sent) == 4
    assert all(isinstance(sent[1, layer][0][0][0], RequestInfo) for layer in (0, 1))
    assert [sent[2, layer][0][0][0] for layer in (0, 1)] == [8, 8]
    sent[1, 0][1].set_result("cnic_in/de1: link down")  # node 1 failed layer 0's send: still unknown there
    peers.send_batch(0, [(a, 2, seg, 4096, "")], on_done)
    assert isinstance(calls[-1][1][0][0], RequestInfo) and "link down" in str(done[-1][1])
    sent[1, 1][1].set_result("")  # node 1 has a's layer 1: named by id from now on
    peers.send_batch(0, [(a, 3, seg, 4096, "")], on_done)
    assert calls[-1][1][0][0] == 7
    first = sent[1, 0][0][0][0]
    assert isinstance(first, RequestInfo) and np.array_equal(first.prompt, a.prompt)

    node = _bare_node(node=1, _reqs={}, _failed={}, _lock=threading.Lock(), _run_id="run-2",
                      endpoint=None, fabric=None)  # a pull or a reservation would fail on them
    assert node.receive_batch("run-2", [(9, 0, [0], 64)], [], None, 64, "kv_out/pe0") == \
        "request 9: no replica on node1"
    built = node._replica(first)
    assert node._replica(7) is built and built.prompt.shape == (300,)
    # a late call of an earlier run (request ids start from 0 in every run) touches nothing here
    assert node.receive_batch("run-1", [(7, 0, [0], 64)], [], None, 64, "kv_out/pe0") == \
        "node1 is not in run run-1 (a late call)"
    assert node.reserve("run-1", first, 64) is False and built.de_send_lease is None
    with pytest.raises(RuntimeError, match="not in run run-1"):
        node.offer_hits("run-1", [(7, 1)])


def test_starting_a_local_ray_instance_hides_only_rays_notice_of_its_default_token_auth(monkeypatch):
    import logging

    import ray

    from dualpath_jax.raylaunch import ray_module

    from ray._private.authentication import authentication_token_setup as setup

    log = logging.getLogger(setup.__name__)
    seen = {}

    def init(**kw):  # Ray's init gives its notice (Ray's own function), and maybe other warnings
        seen.update(kw)
        setup._warn_token_auth_enabled()
        log.warning("Token authentication is disabled for this Ray cluster.")

    class Keep(logging.Handler):  # on Ray's logger itself: Ray's loggers do not propagate to the root
        def emit(self, record):
            shown.append(record.getMessage())

    shown, keep = [], Keep(logging.WARNING)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    log.addHandler(keep)
    try:
        assert ray_module("", num_cpus=1) is ray
        assert seen["num_cpus"] == 1 and "address" not in seen
        assert shown == ["Token authentication is disabled for this Ray cluster."]
        setup._warn_token_auth_enabled()  # the filter is gone once Ray has started
        assert shown[-1].startswith("Token authentication is enabled for this Ray cluster")
    finally:
        log.removeHandler(keep)
