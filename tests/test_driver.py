"""The one scheduling driver (sched/driver.py): both runtimes' views make the same decisions, the
tick cadence, and the policy hooks a researcher overrides."""

import math

import numpy as np
import pytest

from dualpath_jax.engine.reader import ReadQueues
from dualpath_jax.engine.view import EngineView
from dualpath_jax.sched import Assignment, ClusterScheduler, EngineLoad, ReadPlan, SchedRequest, SchedulerConfig
from dualpath_jax.sched.driver import SchedulingDriver, next_round_s
from dualpath_jax.sim import SimAgent, SimConfig, Simulator

BLOCK = 64


class _PlanOnlySimulator(Simulator):
    """The simulator with its own view and placement callbacks; only the read it would start is
    handed to ``self.start_read`` (a subclass: the compiled build's methods cannot be patched)."""

    def _start_read(self, rid):
        self.start_read(rid)


def _sim_and_engine(policy: str, loading: str):
    """A Simulator (2P2D, 8 engines per node) and an EngineView of the same topology, each under a
    driver of its own with the same scheduler config; returns (sim side, engine side) records."""
    sim = _PlanOnlySimulator(SimConfig(model="deepseek-v3.2", prefill_nodes=2, decode_nodes=2, policy=policy,
                                       loading=loading), [SimAgent(0.0, append=np.full(200, 100), gen=np.full(200, 4))])
    groups = {**sim.sched.pe_groups, **sim.sched.de_groups}
    fbb = int(BLOCK * sim.kvb)
    pool_blocks = 40
    cfg = SchedulerConfig(policy=policy, loading=loading, alpha_tokens=3000.0, beta_tokens=5000.0)
    sides = {}
    # the simulator: its own view (group_loads / read_queue_tokens) and its own placement callbacks;
    # only the read it would start is replaced by queueing the planned tokens as waiting reads
    for e in sim.de_ids:
        sim.load[e].free_hbm_bytes = float(pool_blocks * fbb)
    s_sched = ClusterScheduler(cfg, sim.sched.pe_groups, sim.sched.de_groups)
    s_log: list = []

    def sim_read(rid):
        req = s_reqs[rid]
        pn, dn = sim.node_of[sim.R["pe"][rid]], sim.node_of[sim.R["de"][rid]]
        plan = s_driver.read_plan(req, pn, dn, req.hit_tokens // BLOCK, BLOCK)
        s_log.append(("read", rid, plan))
        for node, blocks in ((dn, plan.de_blocks), (pn, req.hit_tokens // BLOCK - plan.de_blocks)):
            if plan.side != "none" and blocks:
                sim.buffers.wait_bytes[node] += blocks * BLOCK * sim.kvb

    sim.start_read = sim_read
    s_reqs: dict[int, SchedRequest] = {}

    def sim_pe(a):
        s_log.append(("pe", a.request.request_id, a.engine_id))
        sim._on_pe_placed(a)

    def sim_de(a):
        s_log.append(("de", a.request.request_id, a.engine_id))
        sim._on_de_placed(a)

    s_driver = SchedulingDriver(s_sched, sim, on_pe_placed=sim_pe, on_de_placed=sim_de, fetch_period_s=0.02,
                                loading=loading)
    # the engine: its view over controller counters and the nodes' read queues
    read_q = ReadQueues(4)
    view = EngineView(groups, sim.node_of, read_q, {e: pool_blocks for e in sim.de_ids}, fbb, max_decode_batch=1000)
    e_log: list = []
    e_reqs: dict[int, SchedRequest] = {}

    def eng_pe(a):
        e_log.append(("pe", a.request.request_id, a.engine_id))
        view.place(a.engine_id, a.request)
        e_pe[a.request.request_id] = a.engine_id

    def eng_de(a):
        e_log.append(("de", a.request.request_id, a.engine_id))
        view.place(a.engine_id, a.request)
        rid = a.request.request_id
        req = e_reqs[rid]
        pn, dn = sim.node_of[e_pe[rid]], sim.node_of[a.engine_id]
        plan = e_driver.read_plan(req, pn, dn, req.hit_tokens // BLOCK, BLOCK)
        e_log.append(("read", rid, plan))
        for node, blocks in ((dn, plan.de_blocks), (pn, req.hit_tokens // BLOCK - plan.de_blocks)):
            if plan.side != "none" and blocks:
                read_q.add(node, blocks * BLOCK)

    e_pe: dict[int, int] = {}
    e_driver = SchedulingDriver(ClusterScheduler(cfg, sim.sched.pe_groups, sim.sched.de_groups), view,
                                on_pe_placed=eng_pe, on_de_placed=eng_de, fetch_period_s=0.02, loading=loading)
    return (sim, s_driver, s_log, s_reqs), (view, e_driver, e_log, e_reqs, e_pe, read_q, fbb)


@pytest.mark.parametrize("policy,loading", [("dualpath", "dual"), ("round_robin", "dual"), ("dualpath", "split"),
                                            ("round_robin", "pe_read")])
def test_engine_and_simulator_views_make_the_same_decisions(policy, loading):
    (sim, s_driver, s_log, s_reqs), (view, e_driver, e_log, e_reqs, e_pe, read_q, fbb) = _sim_and_engine(policy,
                                                                                                      loading)
    rng = np.random.default_rng(7)
    rid = 0
    live: list[int] = []
    for step in range(12):
        for _ in range(int(rng.integers(0, 9))):  # new requests
            hit = int(rng.integers(0, 40)) * BLOCK
            app = int(rng.integers(1, 400))
            req = SchedRequest(rid, hit, app, 4, int(rng.integers(1, 12)) * fbb)
            s_reqs[rid] = e_reqs[rid] = req
            s_driver.submit(req, 0.0)
            e_driver.submit(req, 0.0)
            sim.R["hit_tokens"][rid], sim.R["append_tokens"][rid] = hit, app
            live.append(rid)
            rid += 1
        s_driver.tick()
        e_driver.tick()
        # some placed requests finish their prefill, some their decode (loads drop on both sides)
        for r in list(live):
            if rng.random() < 0.3 and sim.R["pe"][r] >= 0 and sim.R["de"][r] >= 0:
                live.remove(r)
                req = s_reqs[r]
                for e in (sim.R["pe"][r], sim.R["de"][r]):
                    le = sim.load[e]
                    le.tok -= req.num_tokens
                    le.seq -= 1
                    if e in sim.de_ids:
                        le.free_hbm_bytes += req.hbm_bytes
                        s_driver.de_released(e)
                    else:
                        s_driver.pe_released(e)
                for e in (e_pe[r], sim.R["de"][r]):
                    view.release(e, req)
                    (e_driver.de_released if e in view.pool_free else e_driver.pe_released)(e)
        # the nodes' disks drain the same amount on both sides
        for node in range(4):
            drained = min(read_q.tokens(node), 500.0 * (step + 1))
            read_q.add(node, -drained)
            sim.buffers.wait_bytes[node] -= drained * sim.kvb
        assert [s_driver.view.read_queue_tokens(n) for n in range(4)] == pytest.approx(
            [view.read_queue_tokens(n) for n in range(4)])
    assert s_log == e_log
    kinds = {k for k, *_ in s_log}
    assert {"pe", "de", "read"} <= kinds  # the sequence exercised every decision
    assert len({a for k, _, a in s_log if k == "pe"}) > 1  # and spread work over several PEs


def test_tick_cadence_one_period_after_the_first_change():
    sched = ClusterScheduler(SchedulerConfig(), {0: [0]}, {1: [1]})

    class View:
        def group_loads(self, gid):
            return [EngineLoad(gid, gid, 0, 0, 1e12)]

        def read_queue_tokens(self, node):
            return 0.0

    placed = []
    d = SchedulingDriver(sched, View(), on_pe_placed=placed.append, on_de_placed=placed.append, fetch_period_s=0.25,
                         loading="dual")
    assert d.next_tick_s == math.inf and not d.tick_due(1e9)
    assert d.submit(SchedRequest(0, 0, 10), 1.0) == 1.25
    assert d.submit(SchedRequest(1, 0, 10), 1.1) is None  # one tick pending: no second one
    assert d.request_tick(1.2) is None
    assert not d.tick_due(1.2499) and d.tick_due(1.25)
    d.tick()
    assert d.next_tick_s == math.inf
    # one tick: the PE leader fetches, then phase 1 and the DE leader place what it just took
    assert [(a.request.request_id, a.role) for a in placed] == [(0, "pe"), (1, "pe"), (0, "de"), (1, "de")]
    assert d.request_tick(2.0) == 2.25
    d.tick()
    assert len(placed) == 4 and not d.has_waiting()


def test_next_round_waits_for_finish_and_persist_plus_think():
    assert next_round_s(3.0, 2.0) == 3.0
    assert next_round_s(3.0, 4.5, 0.5) == 5.0
    assert next_round_s(7.0, 7.0, 0.0) == 7.0


# ---- policy hooks -----------------------------------------------------------------------------------
def _loads(engines, node, tok=0, free=1e12):
    return [EngineLoad(e, node, tok, 0, free) for e in engines]


def test_select_pe_hook_overrides_placement_and_any_subset_is_taken():
    class LastEngineOddRequests(ClusterScheduler):
        def select_pe(self, group_id, waiting, loads, read_q):
            last = max(l.engine_id for l in loads)
            return [Assignment(r, last, "pe") for r in waiting if r.request_id % 2]

    s = LastEngineOddRequests(SchedulerConfig(), {0: [0, 1, 2]}, {1: [3]})
    for i in range(5):
        s.submit(SchedRequest(i, 0, 10))
    out = s.fetch_pe(0, _loads([0, 1, 2], 0), {0: 0.0})
    assert [(a.request.request_id, a.engine_id) for a in out] == [(1, 2), (3, 2)]
    assert s.waiting_pe() == 3 and s.waiting_de() == 2
    assert s.fetch_pe(0, _loads([0, 1, 2], 0), {0: 0.0}) == []  # the even ones stay waiting


def test_select_pe_hook_is_checked():
    class Outside(ClusterScheduler):
        def select_pe(self, group_id, waiting, loads, read_q):
            return [Assignment(waiting[0], 9, "pe")]

    class Twice(ClusterScheduler):
        def select_pe(self, group_id, waiting, loads, read_q):
            return [Assignment(waiting[1], 0, "pe"), Assignment(waiting[1], 0, "pe")]

    for cls, match in ((Outside, "engine 9"), (Twice, "not waiting, or one twice")):
        s = cls(SchedulerConfig(), {0: [0]}, {1: [1]})
        for i in range(3):
            s.submit(SchedRequest(i, 0, 10))
        with pytest.raises(ValueError, match=match):
            s.fetch_pe(0, _loads([0], 0), {0: 0.0})


def test_select_de_group_and_select_de_hooks():
    class ToLastGroupLowestEngine(ClusterScheduler):
        def select_de_group(self, waiting, group_tok):
            return {max(group_tok): list(waiting)}

        def select_de(self, group_id, waiting, loads):
            return [Assignment(r, min(l.engine_id for l in loads), "de") for r in waiting]

    s = ToLastGroupLowestEngine(SchedulerConfig(), {0: [0]}, {1: [1, 2], 2: [3, 4]})
    for i in range(3):
        s.submit(SchedRequest(i, 0, 10))
    s.fetch_pe(0, _loads([0], 0), {0: 0.0})
    assert s.distribute_de() == {2}
    assert s.fetch_de(1, _loads([1, 2], 1)) == []
    out = s.fetch_de(2, _loads([3, 4], 2))
    assert [(a.request.request_id, a.engine_id) for a in out] == [(0, 3), (1, 3), (2, 3)]
    assert s.waiting() == {"pe": 0, "de": 0}


def test_read_plan_hook_is_checked_by_the_driver():
    class NoneSide(ClusterScheduler):
        def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
            return ReadPlan("none", 0)

    class View:
        def group_loads(self, gid):
            return []

        def read_queue_tokens(self, node):
            return 0.0

    d = SchedulingDriver(NoneSide(SchedulerConfig(), {0: [0]}, {1: [1]}), View(), on_pe_placed=print,
                         on_de_placed=print, fetch_period_s=0.1, loading="dual")
    with pytest.raises(ValueError, match="NoneSide.read_plan"):
        d.read_plan(SchedRequest(0, 128, 1), 0, 1, hit_blocks=2, block_tokens=64)
