"""The ``ray`` runtime's protocol, piece by piece, without Ray's processes: a node actor's methods
on a bare ``NodeHost``, the driver's ``RemoteNodes`` over fake actors, the controller's loop over
a fake driver, Ray's start-up notice (the runs across processes are ``test_ray_runtime.py``'s)."""

import threading
import time
from collections import Counter

import pytest

from dualpath_jax.engine.cluster import EngineCluster


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
    nodes._events, nodes._pulls_done, nodes._pulling = queue.Queue(), threading.Condition(), set()
    return nodes, calls, futures


def test_the_driver_asks_nodes_for_their_read_queue_changes_and_waits_for_the_answers():
    """RemoteNodes.pull_read_q: one call per live node; the answers join the controller's events
    from Ray's thread (a node that died adds nothing; another error is the future's to log),
    and await_pulls returns once every answer is in, so that a run's end sees them all."""
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
    """RemoteNodes.pull_for_tick: a pending tick with some request waiting (only placements read
    the queues) asks the nodes with reads in flight, once; no tick, nothing waiting, or a tick
    asked for already: no call. A request that starts waiting after its tick was scheduled gets
    the ask then."""
    import math
    import types

    from dualpath_jax.engine.ray_runtime import RemoteNodes
    from dualpath_jax.engine.reader import ReadQueues

    pulls = []
    read_q = ReadQueues(3)
    read_q.add(0, 128.0)
    read_q.add(2, 64.0)
    nodes = object.__new__(RemoteNodes)
    nodes.config = types.SimpleNamespace(num_nodes=3)
    nodes.pull_read_q = pulls.append
    waiting = []
    driver = types.SimpleNamespace(next_tick_s=math.inf, has_waiting=lambda: bool(waiting))
    assert nodes.pull_for_tick(driver, read_q, math.inf) == math.inf and pulls == []  # no tick pending
    driver.next_tick_s = 1.25
    assert nodes.pull_for_tick(driver, read_q, math.inf) == math.inf and pulls == []  # nothing waits: no placement
    waiting.append("r0")
    assert nodes.pull_for_tick(driver, read_q, math.inf) == 1.25 and pulls == [[0, 2]]  # (node 1 reads nothing)
    assert nodes.pull_for_tick(driver, read_q, 1.25) == 1.25 and pulls == [[0, 2]]  # asked once per tick
    driver.next_tick_s = 1.5
    assert nodes.pull_for_tick(driver, read_q, 1.25) == 1.5 and pulls == [[0, 2], [0, 2]]


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
    cluster._remote = types.SimpleNamespace(await_pulls=lambda t: True, pull_for_tick=lambda d, q, t: t,
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


def test_hit_offers_give_a_request_failed_meanwhile_zero_blocks_not_the_batch_an_error():
    """offer_hits stacks each asked request's DE-side hit blocks per layer. A request the driver
    failed meanwhile (its fail order reached the DE node first: the node freed or forgot it) gets
    zero blocks, since its row of the PE's forward is discarded, so its batch-mates keep their
    attempt; a live request whose blocks are missing is still an error."""
    import types

    import numpy as np

    from engine_cases import tiny_model

    _, _, layout = tiny_model()
    rng = np.random.default_rng(0)
    live = [rng.integers(0, 256, layout.full_block_shape, dtype=np.uint8) for _ in range(2)]
    failed = types.SimpleNamespace(error="timeout", de_hit=[None])
    offered = []
    endpoint = types.SimpleNamespace(address="127.0.0.1:1", next_uuid=iter(range(100)).__next__,
                                     offer=lambda arrays, uuid, **kw: offered.append((uuid, arrays[0])))
    node = _bare_node(node=1, _run_id="run-1", _lock=threading.Lock(), layout=layout, endpoint=endpoint,
                      _reqs={7: types.SimpleNamespace(error="", de_hit=live), 8: failed},
                      config=types.SimpleNamespace(timeout_s=5.0), fabric=None,
                      ctx=types.SimpleNamespace(peers=None))
    offers = node.offer_hits("run-1", [(7, 2), (8, 1), (9, 1)])  # 9: failed and forgotten
    assert len(offers) == layout.n_layers
    deadline = time.perf_counter() + 10
    while len(offered) < layout.n_layers and time.perf_counter() < deadline:
        time.sleep(0.01)
    for layer, (uuid, arr) in enumerate(sorted(offered, key=lambda o: o[0])):
        assert uuid == offers[layer].uuid and arr.shape == (4, layout.block_tokens, layout.bytes_per_token_per_layer)
        assert np.array_equal(arr[:2], np.stack([b[layer] for b in live])) and not arr[2:].any()
    node._reqs[10] = types.SimpleNamespace(error="", de_hit=live[:1])
    with pytest.raises(RuntimeError, match=r"request 10: its DE-side hit blocks are not in node1's buffer"):
        node.offer_hits("run-1", [(7, 1), (10, 2)])


def test_an_address_where_no_ray_cluster_answers_is_one_error_naming_the_setting(monkeypatch):
    """ray.init retries an unreachable HOST:PORT without end, and "auto" without a cluster raises
    Ray's ConnectionError naming Ray's own --address flag: both are a ConfigError naming the
    setting the address came from, at once."""
    import socket

    import ray

    from dualpath_jax.config import ConfigError
    from dualpath_jax.raylaunch import ray_module

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nobody listens on
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(
        ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by setting "
                        "`--address` flag or `RAY_ADDRESS` environment variable.")))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"^runtime_address: no Ray cluster answers at 127\.0\.0\.1:{port} "
                                          r"\(ConnectionRefusedError"):
        ray_module(f"127.0.0.1:{port}", field="runtime_address")
    assert time.perf_counter() - t0 < 5.0
    with pytest.raises(ConfigError, match=r"^ray_address: 'host-without-port' is not 'auto' or HOST:PORT"):
        ray_module("host-without-port")
    import signal

    def mine(signum, frame):  # the caller's (cli.run's) handler, which ray.init replaces
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        def init(**kw):  # as Ray's: its handler first, then the failed connection
            signal.signal(signal.SIGTERM, lambda *a: None)
            raise ConnectionError("Could not find any running Ray instance (`--address` flag)")

        monkeypatch.setattr(ray, "init", init)
        with pytest.raises(ConfigError) as e:
            ray_module("auto")
        assert signal.getsignal(signal.SIGTERM) is mine  # put back though the connection failed
    finally:
        signal.signal(signal.SIGTERM, before)
    assert e.value.field == "ray_address" and "--address" not in str(e.value)
    assert str(e.value).startswith("ray_address: no Ray cluster at 'auto': none runs on this host")


def test_nodes_that_do_not_build_a_runs_workers_in_time_are_named():
    """begin_run compiles the DE decode steps: a node that has not answered within the runtime's
    start_timeout_s is one ConfigError naming ray.start_timeout_s and the node, not a hang."""
    import types

    from dualpath_jax.config import ConfigError
    from dualpath_jax.engine.ray_runtime import RemoteNodes

    refs = ["ref0", "ref1", "ref2"]
    waits = []

    def wait(refs_, num_returns, timeout):
        waits.append((num_returns, timeout))
        return refs_[:2], refs_[2:]  # node 2 still compiling

    nodes = object.__new__(RemoteNodes)
    nodes.runtime = types.SimpleNamespace(start_timeout_s=7.0)
    nodes.ray = types.SimpleNamespace(wait=wait, get=lambda r: pytest.fail("no answer is read"))
    with pytest.raises(ConfigError, match=r"^ray\.start_timeout_s: node2 did not build their workers \(compiling the "
                                          r"DE decode steps\) within 7 s"):
        nodes._answers(refs, "build their workers (compiling the DE decode steps)")
    assert waits == [(3, 7.0)]
    nodes.ray = types.SimpleNamespace(wait=lambda r, num_returns, timeout: (r, []), get=lambda r: [1, 2, 3])
    assert nodes._answers(refs, "start the run") == [1, 2, 3]


def _fake_ray(resources, hosts, get):
    """A ``ray`` module stand-in for RayRuntime.nodes: a cluster with ``resources`` in total and
    per host ``hosts``; ``get`` answers ray.get; actors start as plain objects."""
    import types

    import ray

    actor = types.SimpleNamespace(ping=types.SimpleNamespace(remote=lambda: "ping"))
    started = []
    return types.SimpleNamespace(
        cluster_resources=lambda: dict(resources), nodes=lambda: [{"Alive": True, "Resources": h} for h in hosts],
        put=lambda x: x, get=get, exceptions=ray.exceptions, kill=lambda a: None,
        remote=lambda cls: types.SimpleNamespace(options=lambda **opts: types.SimpleNamespace(
            remote=lambda *args: started.append(opts) or actor))), started


@pytest.mark.parametrize("gpus, hosts, message", [
    (0.75, [{"GPU": 8.0}], r"^ray\.gpus_per_engine: 0\.75 GPU\(s\) per engine x 2 engines per node = 1\.5 GPUs per "
                           r"node actor: above one, Ray places whole GPUs"),
    (1.0, [{"GPU": 1.0}] * 8, r"^ray\.gpus_per_engine: a node actor needs 2 GPU\(s\) on one host \(1 per engine x 2 "
                              r"engines per node\); the largest host of the Ray cluster has 1"),
])
def test_node_actors_ray_could_never_place_are_refused_before_any_starts(gpus, hosts, message):
    from dualpath_jax.config import ConfigError
    from dualpath_jax.engine.config import ClusterConfig
    from dualpath_jax.engine.ray_runtime import RayRuntime

    from engine_cases import FAST, tiny_model

    spec, params, layout = tiny_model()
    fake, started = _fake_ray({"GPU": 8.0}, hosts, get=lambda *a, **k: [])
    runtime = RayRuntime(gpus_per_engine=gpus)
    runtime.ray = lambda: fake
    with pytest.raises(ConfigError, match=message):
        runtime.nodes(ClusterConfig(**{**FAST, "engines_per_node": 2}), spec, layout, params, object)
    assert started == []


def test_node_actors_not_started_in_time_or_dying_at_start_end_in_one_line():
    """Resources that exist but are in use leave Ray waiting without end: after start_timeout_s the
    actors are stopped and a ConfigError names ray. An actor that dies while starting is its own
    error's last line: a module it cannot import names scheduler (a policy missing on a host)."""
    import ray

    from dualpath_jax.config import ConfigError
    from dualpath_jax.engine.config import ClusterConfig
    from dualpath_jax.engine.ray_runtime import RayRuntime, start_error

    from engine_cases import FAST, tiny_model

    spec, params, layout = tiny_model()

    def never(refs, timeout=None):
        assert timeout == 0.5
        raise ray.exceptions.GetTimeoutError("timed out")

    fake, started = _fake_ray({"GPU": 0.0}, [{}], get=never)
    runtime = RayRuntime(start_timeout_s=0.5)
    runtime.ray = lambda: fake
    with pytest.raises(ConfigError, match=r"^ray\.start_timeout_s: the 3 node actors were not all placed or not "
                                          r"started within 0\.5 s: the Ray cluster has the GPUs and resources they "
                                          r"ask for, but not free now"):
        runtime.nodes(ClusterConfig(**FAST), spec, layout, params, object)
    assert len(started) == 3 and runtime.actors == []  # stopped: the next call starts them again

    report = ("The actor died because of an error raised in its creation task, ray::NodeHost.__init__() (pid=1)\n"
              "  File \"x.py\", line 3, in <module>\n    import polmod\n    ^^^^^^^^^^^^^\n"
              "ModuleNotFoundError: No module named 'polmod'")
    policy = type("MyPolicy", (), {"__module__": "polmod.policies"})
    e = start_error(RuntimeError(report), policy)
    assert isinstance(e, ConfigError) and e.field == "scheduler"
    assert "(ModuleNotFoundError: No module named 'polmod')" in str(e) and "^^^" not in str(e)
    e = start_error(RuntimeError(report.replace("polmod", "tensorstore")), policy)  # not the policy's: as it is
    assert type(e) is RuntimeError and str(e) == ("a node actor died while starting: ModuleNotFoundError: No module "
                                                  "named 'tensorstore'")
    e = start_error(RuntimeError(report.replace("ModuleNotFoundError: No module named 'polmod'",
                                                "MemoryError: out of memory")))
    assert type(e) is RuntimeError and str(e) == "a node actor died while starting: MemoryError: out of memory"


def test_a_hit_offers_carry_stops_when_its_run_ends():
    """The DE node carries each offered layer over its CNIC out, layer after layer; once the run
    has ended (its PE pulls nothing more) the remaining layers are neither carried nor offered, so
    the emulated link is free for the next run."""
    import types

    import numpy as np

    from engine_cases import tiny_model

    _, _, layout = tiny_model()
    assert layout.n_layers >= 2
    gate, carried, offered = threading.Event(), [], []

    def carry(links, nbytes, fn, tag, timeout_s):
        carried.append(tag)
        gate.wait(10)
        fn()

    block = np.ones(layout.full_block_shape, np.uint8)
    endpoint = types.SimpleNamespace(address="127.0.0.1:1", next_uuid=iter(range(100)).__next__,
                                     offer=lambda arrays, uuid, **kw: offered.append(uuid))
    node = _bare_node(node=1, _run_id="run-1", _lock=threading.Lock(), layout=layout, endpoint=endpoint,
                      _reqs={7: types.SimpleNamespace(error="", de_hit=[block])},
                      config=types.SimpleNamespace(timeout_s=5.0),
                      fabric=types.SimpleNamespace(engines={2: types.SimpleNamespace(cnic_out="cnic_out/de2")},
                                                   carry=carry),
                      ctx=types.SimpleNamespace(peers=None))
    others = set(threading.enumerate())
    offers = node.offer_hits("run-1", [(7, 1)], out_bytes={2: 1024})
    (thread,) = [th for th in threading.enumerate() if th not in others and th.name == "node1-hits-out"]
    deadline = time.perf_counter() + 10
    while not carried and time.perf_counter() < deadline:
        time.sleep(0.01)
    node._run_id = None  # end_run: the run is over while layer 0 crosses the CNIC
    gate.set()
    thread.join(10)
    assert not thread.is_alive() and carried == ["layer0"] and offered == [offers[0].uuid]
