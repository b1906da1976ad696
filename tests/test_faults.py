"""The engine under faults: supervised workers, injected faults, reconciliation, early rejection,
and the teacher-forced replay whose hits the simulator predicts exactly."""

import copy
import threading
import time

import numpy as np
import pytest
from engine_cases import FAST, run_cluster, tiny_model
from engine_cases import stream as _stream

from dualpath_jax.config import ConfigError
from dualpath_jax.engine import de as de_module
from dualpath_jax.engine import network
from dualpath_jax.engine import report
from dualpath_jax.engine.cluster import ResourceLeakError
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.faults import FaultConfig, FaultInjector, InjectedCrash
from dualpath_jax.engine.request import RequestState
from dualpath_jax.sim import SimConfig, simulate
from dualpath_jax.sim.adapters import agents_from_trajectories
from dualpath_jax.store import KVStore, StoreConfig
from dualpath_jax.workload import TrajectorySet, agentic_dir

# rounds whose context ends on a block boundary (prompt + gen = 128, 320) and inside one
AGENTS = [_stream("a", [120, 60, 70], [8, 9, 3]), _stream("b", [90, 100, 65], [12, 118, 7]),
          _stream("c", [200, 10], [4, 6])]
NUM_REQUESTS = sum(a.num_rounds for a in AGENTS)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _run(model, config, *, faults=None, agents=AGENTS, store=None):
    return run_cluster(model, config, agents, store=store, faults=faults)


@pytest.fixture(scope="module")
def clean(model):
    return _run(model, ClusterConfig(**FAST).for_variant("dualpath"))


def _assert_all_correct(model, res, clean):
    spec, params, _ = model
    assert len(res.requests) == NUM_REQUESTS
    assert all(r.finished and not r.error for r in res.requests), [r.error for r in res.requests if r.error]
    assert res.leaks == {}
    bytes_ = report.conservation(res)  # failed attempts' reads included: every byte read is accounted for
    assert bytes_["bytes_conserved"], bytes_
    tokens = report.check_tokens({"clean": clean, "faulty": res}, params, spec)
    assert tokens["tokens_identical"], (tokens["reference_mismatches"], tokens["variant_divergences"])


def test_a_decode_step_that_raises_fails_its_requests_fast_and_they_run_again(model, clean, monkeypatch):
    # defect: the DE thread died, its requests waited for the run's deadline and its pool leaked
    real, calls = de_module.decode_step, []

    def flaky(*a, **k):
        calls.append(bool(np.asarray(a[-1]).any()))  # steps with active rows (not the warm-up's)
        if sum(calls) == 3 and calls[-1]:
            raise MemoryError("RESOURCE_EXHAUSTED: out of memory while trying to allocate")
        return real(*a, **k)

    monkeypatch.setattr(de_module, "decode_step", flaky)
    cfg = ClusterConfig(**{**FAST, "run_timeout_s": 60.0}).for_variant("dualpath")
    res = _run(model, cfg)
    _assert_all_correct(model, res, clean)
    assert len(res.worker_errors) == 1 and res.worker_errors[0]["error"].startswith("MemoryError")
    assert res.failed_attempts and all("decode: de" in r.error and "MemoryError" in r.error
                                       for r in res.failed_attempts)
    # each failed attempt ended at once (not at a deadline) and its round's next attempt finished
    for r in res.failed_attempts:
        again = next(x for x in res.requests if (x.agent, x.round_index) == (r.agent, r.round_index))
        assert again.attempt == r.attempt + 1 and again.attempt_s >= r.finish_s
        assert again.arrival_s == r.arrival_s  # latencies count from the round's first issue


# (worker, cluster changes, jobs before its crash): each crash lands on a job its worker gets whatever
# the threads' timing. Under dual loading a read's side follows the read queues, so how many of the
# five reads reader0 gets depends on timing (one, on a loaded host): reader0 crashes under pe_read (all
# five reads are the PE's), and a DE-side reader at the run's first read, which goes to the DE side
# (equal queues, nothing read yet: read_side.shorter_queue_side), in 1P1D (one DE-side reader).
CRASHES = [("pe0", {}, 1), ("de1", {}, 1), ("de2", {}, 1), ("reader0", {"loading": "pe_read"}, 1),
           ("reader1", {"decode_nodes": 1}, 0), ("pe0-send", {}, 1), ("de1-persist", {}, 1)]


@pytest.mark.parametrize("worker,changes,after", CRASHES, ids=[c[0] for c in CRASHES])
def test_every_worker_kind_survives_a_crash(model, clean, worker, changes, after):
    faults = FaultConfig(crash_worker=worker, crash_after_jobs=after)
    res = _run(model, ClusterConfig(**FAST).for_variant("dualpath").replace(**changes), faults=faults)
    _assert_all_correct(model, res, clean)
    assert res.faults == {"crash": 1}
    assert [e["worker"] for e in res.worker_errors] == [worker]
    if worker.endswith("-persist"):  # a lost persist costs a later hit, not the request
        assert not res.failed_attempts
    elif worker.startswith("reader") or worker.endswith("-send"):  # one request's job: only it runs again,
        assert len(res.failed_attempts) == 1  # not the others of its forward (whose hit KV it must not drop)
    else:  # a forward's or a decode step's requests
        assert len(res.failed_attempts) >= 1


def test_a_request_failing_during_a_forward_does_not_fail_its_batch_mates(model, clean, monkeypatch):
    # the controller drops a failed request's hit blocks while the PE's layer-wise loader may still
    # be reading them for the forward that holds it with others
    from dualpath_jax.engine import pe as pe_module
    real, seen = pe_module.PrefillWorker._forward, []

    def forward(self, entries):
        victim = entries[0][0].req
        if not seen and len(entries) >= 2 and victim.hit_blocks:
            seen.append(victim)
            self.ctx.on_failed(victim, "failed elsewhere")
            while not victim.error:  # until the controller has handled it (and dropped its buffers)
                threading.Event().wait(0.001)
        return real(self, entries)

    cfg = ClusterConfig(**FAST).for_variant("dualpath")
    store = KVStore(model[2], StoreConfig(backend="memory"))
    _run(model, cfg, store=store)  # a warm store: the three agents' first rounds arrive together, with hits
    monkeypatch.setattr(pe_module.PrefillWorker, "_forward", forward)
    res = _run(model, cfg, store=store)
    assert seen, "no forward held two requests with a hit"
    _assert_all_correct(model, res, clean)
    assert [r.error for r in res.failed_attempts] == ["failed elsewhere"]


def test_a_bug_in_a_forwards_hit_kv_fetch_is_a_worker_error_and_its_requests_run_again(model, clean, monkeypatch):
    # defect: the loader wrapped any exception of fetch as a LoaderError, which the PE treats as a
    # failed transfer: a bug looked like I/O and never reached worker_errors
    from dualpath_jax.engine import prefill as prefill_module
    real, raised = prefill_module.PrefillPath.forward, []

    def forward(self, chunks, fetch, link=None, **kw):
        def buggy(layer):
            if layer == 2 and not raised:
                raised.append(layer)
                raise RuntimeError("boom in fetch at layer 2")
            return fetch(layer)
        return real(self, chunks, buggy, link, **kw)

    monkeypatch.setattr(prefill_module.PrefillPath, "forward", forward)
    res = _run(model, ClusterConfig(**FAST).for_variant("dualpath"))
    assert raised, "no forward fetched hit KV"
    _assert_all_correct(model, res, clean)
    assert [(e["worker"], e["error"]) for e in res.worker_errors] == [("pe0", "RuntimeError: boom in fetch at layer 2")]
    assert "Traceback" in res.worker_errors[0]["traceback"] and "buggy" in res.worker_errors[0]["traceback"]
    assert res.failed_attempts and all(r.error == "prefill: pe0 raised RuntimeError: boom in fetch at layer 2"
                                       for r in res.failed_attempts)


def test_random_faults_of_every_kind_keep_tokens_and_lose_nothing(model, clean):
    # every decode step is a job that may crash, and a crash reruns the attempt from the start: a
    # round of G = 118 tokens gets through with (1 - crash_rate)^G, 9% at 0.02 (then 50 attempts
    # all fail for about 1 seed in 100), 55% at 0.005
    faults = FaultConfig(read_corruption_rate=0.2, slow_read_rate=0.2, slow_read_s=0.01, transfer_failure_rate=0.02,
                         crash_rate=0.005, seed=4)
    cfg = ClusterConfig(**{**FAST, "max_attempts": 50}).for_variant("dualpath")
    res = _run(model, cfg, faults=faults)
    _assert_all_correct(model, res, clean)
    assert set(res.faults) == {"read_corruption", "slow_read", "transfer_failure", "crash"}
    # (an attempt that a crash later failed and reran keeps its caught corruptions in failed_attempts)
    corrupt = [f for r in (*res.requests, *res.failed_attempts) for f in r.read_failures]
    assert corrupt  # a corrupted block is caught by its checksum and recomputed


@pytest.mark.parametrize("variant", ["basic", "dualpath"])
def test_a_read_interrupted_after_some_blocks_counts_them_among_its_attempts_reads(model, clean, monkeypatch, variant):
    # defect: the blocks a read job carried over the SNIC before a later block's move failed were
    # in the link's bytes but in no attempt's reads, so bytes_conserved was False (seen when a
    # random transfer failure landed on a job's second block)
    real, seen, lock = network.Fabric.carry, [], threading.Lock()

    def carry(self, path, num_bytes, fn=None, *, tag="", timeout_s=None):
        if tag.startswith("read/"):
            with lock:
                seen.append(tag)
                fail = seen.count(tag) == 2 and "fired" not in seen  # the first job to reach a 2nd block
                if fail:
                    seen.append("fired")
            if fail:
                raise network.TransferFailed(path[0].name, "broken")
        return real(self, path, num_bytes, fn, tag=tag, timeout_s=timeout_s)

    monkeypatch.setattr(network.Fabric, "carry", carry)
    res = _run(model, ClusterConfig(**FAST).for_variant(variant))
    _assert_all_correct(model, res, clean)  # byte conservation included
    failed = [r for r in res.failed_attempts if "broken" in r.error]
    assert len(failed) == 1 and failed[0].read_bytes_pe + failed[0].read_bytes_de == model[2].full_block_bytes


def test_a_request_failed_while_its_read_carries_a_block_counts_that_block_once(model, clean, monkeypatch):
    # defect: the block on the link when the failure released the job's lease was in the SNIC's bytes
    # and also counted as discarded (the job's hold raised), so bytes_conserved was False
    from dualpath_jax.engine.cluster import EngineCluster

    made, real_init = {}, EngineCluster.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        made["cluster"] = self

    real, seen, lock = network.Fabric.carry, [], threading.Lock()

    def carry(self, path, num_bytes, fn=None, *, tag="", timeout_s=None):
        out = real(self, path, num_bytes, fn, tag=tag, timeout_s=timeout_s)
        if tag.startswith("read/"):
            with lock:
                seen.append(tag)
                fire = seen.count(tag) == 2 and "fired" not in seen
                if fire:
                    seen.append("fired")
            if fire:  # the request fails elsewhere while this block is on the link
                cluster = made["cluster"]
                req = cluster.requests[int(tag.split("/r")[1])]
                cluster.ctx.on_failed(req, "failed elsewhere", True)
                deadline = time.monotonic() + 10
                while not req.error and time.monotonic() < deadline:
                    time.sleep(0.005)
        return out

    monkeypatch.setattr(EngineCluster, "__init__", init)
    monkeypatch.setattr(network.Fabric, "carry", carry)
    res = _run(model, ClusterConfig(**FAST).for_variant("dualpath"))
    assert "fired" in seen and any("failed elsewhere" in r.error for r in res.failed_attempts)
    _assert_all_correct(model, res, clean)  # byte conservation included


@pytest.mark.parametrize("variant", ["basic", "dualpath"])
def test_a_read_slower_than_timeout_s_counts_as_failed_and_is_recomputed(model, clean, variant):
    """Every read job waits 1.5 s before reading, past timeout_s = 1 s: no hit is used (they
    used to be, after the wait), every hit round records a TIMEOUT and is recomputed."""
    cfg = ClusterConfig(**{**FAST, "timeout_s": 1.0, "run_timeout_s": 120.0}).for_variant(variant)
    res = _run(model, cfg, faults=FaultConfig(slow_read_rate=1.0, slow_read_s=1.5))
    _assert_all_correct(model, res, clean)
    later = [r for r in res.requests if r.round_index > 0]  # every later round had a hit to read
    assert later and all(r.hit_tokens == 0 for r in res.requests)
    assert all([f.cause.value for f in r.read_failures] == ["timeout"] for r in later)
    assert all("did not start within 1.0 s" in r.read_failures[0].detail for r in later)


def test_a_store_read_returned_after_the_readers_deadline_counts_as_discarded(model, clean, monkeypatch):
    # defect: the reader gave up on a block at its deadline but the store, whose reads cannot be cut
    # short, still delivered it: in the store's read bytes and nowhere else, so bytes_conserved was
    # False. The store here ignores deadlines (as a backend whose reads always finish would)
    real, calls, lock, returned = KVStore._read_one, [], threading.Lock(), threading.Event()

    def late_second_read(self, key, layer, deadline):
        with lock:
            calls.append(key)
            n = len(calls)
        if n == 2:
            time.sleep(1.2)  # past timeout_s = 1 s
            out = real(self, key, layer, float("inf"))
            returned.set()
            return out
        if n > 2:  # the run goes on until the late block is back (it is in the run's store bytes)
            returned.wait(timeout=10)
        return real(self, key, layer, float("inf"))

    monkeypatch.setattr(KVStore, "_read_one", late_second_read)
    cfg = ClusterConfig(**{**FAST, "timeout_s": 1.0, "run_timeout_s": 120.0}).for_variant("dualpath")
    res = _run(model, cfg)
    assert len(calls) > 2 and returned.is_set()
    _assert_all_correct(model, res, clean)  # byte conservation included
    timed_out = [f for r in (*res.requests, *res.failed_attempts) for f in r.read_failures
                 if f.cause.value == "timeout"]
    assert timed_out and report.conservation(res)["read_bytes_discarded"] >= model[2].full_block_bytes


def test_a_thread_that_dies_ends_the_run_at_once(model, monkeypatch):
    def broken(self):
        raise RuntimeError("bug in the join queue")

    monkeypatch.setattr(de_module.DecodeWorker, "_take_joins", broken)  # outside the per-job handler
    res = _run(model, ClusterConfig(**{**FAST, "run_timeout_s": 600.0}).for_variant("dualpath"))
    assert any(e["fatal"] and "bug in the join queue" in e["error"] for e in res.worker_errors)
    assert all(r.error for r in res.requests)
    assert all("died" in r.error and "timeout" not in r.error for r in res.requests)


def test_a_leak_is_an_error(model, monkeypatch):
    monkeypatch.setattr(RequestState, "release_buffers", lambda self: None)  # failures keep their DRAM
    faults = FaultConfig(crash_worker="de1", crash_after_jobs=0)
    with pytest.raises(ResourceLeakError, match="buffer"):
        _run(model, ClusterConfig(**FAST).for_variant("dualpath"), faults=faults)


def test_a_prompt_over_the_pe_budget_is_rejected_before_any_work(model):
    spec, _, layout = model
    cfg = ClusterConfig(**{**FAST, "pe_hbm_kv_bytes": 200 * layout.bytes_per_token}).for_variant("basic")
    agents = [_stream("small", [100], [3]), _stream("big", [260], [3])]
    res = _run(model, cfg, agents=agents)
    small, big = sorted(res.requests, key=lambda r: r.agent)
    assert small.finished and not small.error
    assert "max_kv_tokens" in big.error and big.pe < 0 and big.read_bytes_pe == 0
    assert not res.failed_attempts  # it can never fit: not run again
    assert all(big.rid not in [i[0] for i in f.items] for f in res.forwards)


def test_a_request_over_every_des_pool_is_rejected_before_any_work(model):
    # defect: it was placed on a PE and then waited for a DE that could never hold it
    spec, _, layout = model
    cfg = ClusterConfig(**{**FAST, "de_hbm_kv_bytes": 2 * layout.full_block_bytes}).for_variant("dualpath")
    agents = [_stream("small", [20, 10], [3, 3]), _stream("big", [300, 10], [3, 3])]
    res = _run(model, cfg, agents=agents)
    done = {(r.agent, r.round_index): r for r in res.requests}
    assert all(done[(0, i)].finished and not done[(0, i)].error for i in (0, 1))
    big = done[(1, 0)]  # 300 + 2 tokens of KV: 5 blocks of 64, a DE pool holds 2
    assert big.error == ("DE pool: a 300-token prompt with 3 tokens to generate needs 5 blocks, a DE holds 2 "
                         "(cluster.de_hbm_kv_bytes; it can never run)") and big.pe < 0 and big.de < 0
    assert done[(1, 1)].error.startswith("not run: round 0 failed (DE pool")
    assert not res.failed_attempts and not res.leaks
    assert all(big.rid not in [i[0] for i in f.items] for f in res.forwards)


@pytest.mark.parametrize("variant", ["basic", "dualpath"])
def test_a_prompt_whose_kv_exceeds_the_de_buffer_is_rejected_before_any_work(model, variant):
    # defect: read on the DE side, it held its hit and waited timeout_s for the hand-off's space,
    # max_attempts times, failing with a cause about a busy buffer; a hit over the whole buffer
    # failed its read with a ValueError and was retried too
    spec, _, layout = model
    cfg = ClusterConfig(**{**FAST, "buffer_bytes": 5 * layout.full_block_bytes, "timeout_s": 2.0}).for_variant(variant)
    agents = [_stream("small", [20, 10], [3, 3]), _stream("big", [200, 152], [3, 3])]
    res = _run(model, cfg, agents=agents)
    done = {(r.agent, r.round_index): r for r in res.requests}
    assert all(done[(0, i)].finished and not done[(0, i)].error for i in (0, 1))
    assert done[(1, 0)].finished and not done[(1, 0)].error  # 200 tokens: 3.1 blocks of KV fit
    big = done[(1, 1)]  # 200 + 3 + 152 = 355 tokens of KV: 5.5 blocks, the buffer holds 5
    assert big.error == (f"DE buffer: a 355-token prompt's KV ({355 * layout.bytes_per_token} B: its DE-side hits "
                         f"and the PE's hand-off) exceeds buffer_bytes={5 * layout.full_block_bytes} "
                         f"(cluster.buffer_bytes; it can never run)") and big.pe < 0 and big.de < 0
    assert not res.failed_attempts and not res.leaks


def test_each_kind_of_fault_draws_the_same_decisions_however_the_draws_interleave():
    # defect: one generator shared by every thread, so whether a read job was slow depended on
    # how many transfer and crash draws other threads made before it (a run could see none)
    cfg = FaultConfig(slow_read_rate=0.3, slow_read_s=1e-6, transfer_failure_rate=0.3, crash_rate=0.3, seed=9)

    def decisions(inj, kind, n):
        out = []
        for _ in range(n):
            before = inj.counts[kind]
            if kind == "crash":
                try:
                    inj.job("pe0")
                except InjectedCrash:
                    pass
            elif kind == "slow_read":
                inj.before_read(None, [])
            else:
                inj.transfer_fails()
            out.append(inj.counts[kind] > before)
        return out

    alone = {k: decisions(FaultInjector(cfg), k, 60) for k in ("crash", "slow_read", "transfer_failure")}
    mixed, inj, rng = {k: [] for k in alone}, FaultInjector(cfg), np.random.default_rng(0)
    while any(len(v) < 60 for v in mixed.values()):
        kind = list(mixed)[rng.integers(3)]
        if len(mixed[kind]) < 60:
            mixed[kind] += decisions(inj, kind, int(rng.integers(1, 4)))
    assert {k: v[:60] for k, v in mixed.items()} == alone
    assert all(5 < sum(v) < 35 for v in alone.values())  # each at its rate (0.3 of 60: 18)

    class Store:  # a block record per key; what the injector writes back is the corruption
        def __init__(self):
            self.written = []

        def raw_read(self, key):
            return bytes(64)

        def raw_write(self, key, data):
            self.written.append((key, data))

    cfg = FaultConfig(read_corruption_rate=0.3, crash_rate=0.3, seed=9)
    keys = [f"k{i}" for i in range(60)]
    alone_store, mixed_store = Store(), Store()
    FaultInjector(cfg).before_read(alone_store, keys)
    inj = FaultInjector(cfg)
    for i, key in enumerate(keys):  # the same reads, a crash draw between some of them
        if i % 3 == 0:
            decisions(inj, "crash", 2)
        inj.before_read(mixed_store, [key])
    assert mixed_store.written == alone_store.written and 5 < len(alone_store.written) < 35


def test_fault_config_names_the_field():
    with pytest.raises(ConfigError, match="faults.crash_rate"):
        FaultConfig(crash_rate=1.5)
    with pytest.raises(ConfigError, match="faults.crash_worker"):
        FaultConfig(crash_worker="gpu7")
    with pytest.raises(ConfigError, match="cluster.max_attempts"):
        ClusterConfig(max_attempts=0)


def test_engine_hits_equal_the_simulators(model):
    # the replay is teacher-forced, so the KV a round persists (its context but the last generated
    # token) is exactly the next prompt's prefix: the engine hits what the simulator assumes
    spec, _, layout = model
    res = _run(model, ClusterConfig(**FAST).for_variant("dualpath"))
    ts = TrajectorySet.from_trajectories(AGENTS)
    sim = simulate(SimConfig(model="ds-27b", block_tokens=layout.block_tokens, prefill_nodes=1, decode_nodes=2),
                   agents_from_trajectories(ts, np.zeros(len(AGENTS))))
    r = sim.requests
    sim_hits = {(int(r["agent"][j]), int(r["round"][j])): int(r["hit_tokens"][j]) for j in range(len(r["agent"]))}
    engine_hits = {(q.agent, q.round_index): q.hit_tokens for q in res.requests}
    assert engine_hits == sim_hits
    z = layout.block_tokens
    for k, a in enumerate(AGENTS):  # closed form: whole blocks of the previous context but one token
        for i in range(1, a.num_rounds):
            prev = int(a.num_prompt_tokens[i - 1] + a.num_gen_tokens[i - 1])
            assert engine_hits[(k, i)] == (prev - 1) // z * z
    assert sum(engine_hits.values()) > 0


@pytest.mark.slow
@pytest.mark.skipif(not agentic_dir().is_dir(), reason="shared traces not available")
def test_soak_script_one_replay(tmp_path):
    # experiments/soak.py end to end: one replay (the minimum) of the quick workload, every fault on
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "experiments" / "soak.py"), "--minutes=0",
                          f"--workdir={tmp_path / 'soak'}"], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "XLA_FLAGS": ""}, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    named = json.loads((tmp_path / "soak" / "metrics.json").read_text())
    assert named["replays"] == 1 and named["requests"] == 32
    assert named["faults_injected"] > 0
    assert (named["wrong_tokens"], named["lost_requests"], named["leaked_bytes"]) == (0, 0, 0)


def test_a_request_failed_while_its_de_assembles_it_is_no_worker_error(model, clean, monkeypatch):
    """The controller's failure of a request drops its hand-off pieces (release_buffers) while the
    DE may be assembling them: the DE works on what it took (or stops), and no bogus worker
    error (an IndexError) is reported; the round runs again."""
    import builtins
    state, fired = threading.local(), threading.Event()
    real_assemble = de_module.DecodeWorker._assemble

    def assemble(self, req):
        state.req, state.ctx = req, self.ctx
        try:
            return real_assemble(self, req)
        finally:
            state.req = None

    def hooked_list(x=(), *a):  # the first copy of a layer's pieces: fail the request, wait for its release
        out = builtins.list(x, *a)
        req = getattr(state, "req", None)
        if req is not None and not fired.is_set():
            fired.set()
            state.ctx.on_failed(req, "injected: failed elsewhere while the DE assembled", True)
            while not (req.error and req.segments == []):
                threading.Event().wait(0.01)
        return out

    monkeypatch.setattr(de_module.DecodeWorker, "_assemble", assemble)
    monkeypatch.setattr(de_module, "list", hooked_list, raising=False)
    res = _run(model, ClusterConfig(**FAST).for_variant("dualpath"))
    assert fired.is_set() and res.worker_errors == []
    _assert_all_correct(model, res, clean)
    assert [r.error for r in res.failed_attempts] == ["injected: failed elsewhere while the DE assembled"]


def test_the_token_and_byte_checks_catch_a_wrong_token_a_missing_request_and_an_unread_byte(model, clean):
    """The checks every engine test relies on, given results that must fail them."""

    def twin(res):  # a copy whose requests can be changed (each holds a lock: no deepcopy)
        out = copy.copy(res)
        out.requests = [copy.copy(x) for x in res.requests]
        for x in out.requests:
            x.generated = list(x.generated)
        return out

    spec, params, layout = model
    bad = twin(clean)
    r = max(bad.requests, key=lambda x: len(x.generated))
    right = int(r.generated[2])
    r.generated[2] = (right + 1) % spec.vocab_size  # a wrong token mid-sequence
    alone = report.check_tokens({"bad": bad}, params, spec)
    assert not alone["tokens_identical"] and not alone["tokens_identical_tie_aware"]
    assert [(m["request"], m["position"], m["reference_token"]) for m in alone["reference_mismatches"]] == [
        ([r.trajectory_id, r.round_index], 2, right)]  # teacher-forced: only the flipped position differs
    both = report.check_tokens({"clean": clean, "bad": bad}, params, spec)
    assert not both["tokens_identical"] and [d["position"] for d in both["variant_divergences"]] == [2]
    assert report.check_tokens({"clean": clean, "copy": twin(clean)}, params, spec)["tokens_identical"]

    fewer = twin(clean)
    fewer.requests = fewer.requests[1:]
    gone = report.check_tokens({"clean": clean, "fewer": fewer}, params, spec)
    assert gone["requests_missing_in_some_variant"] == 1 and not gone["tokens_identical"]

    assert report.conservation(clean)["bytes_conserved"]
    more_read = twin(clean)
    more_read.read_bytes_store += layout.full_block_bytes  # read by the store, carried by nobody
    assert not report.conservation(more_read)["bytes_conserved"]
    unbooked = twin(clean)
    reader = next(x for x in unbooked.requests if x.read_bytes_pe + x.read_bytes_de)
    reader.read_bytes_de += layout.full_block_bytes  # booked on a request, never crossed a SNIC
    assert not report.conservation(unbooked)["bytes_conserved"]
