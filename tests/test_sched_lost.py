"""The scheduler with lost engines and malformed groups (PAPER.md section 5; engine_lost).

A lost engine is reported by the runtime with infinite ``tok`` and no free HBM
(``engine/view.py``) and named by ``ClusterScheduler.engine_lost``.
"""

import math
import types

import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.sched import (Assignment, ClusterScheduler, EngineLoad, SchedRequest, SchedulerConfig, balance_target,
                                de_phase2, pe_fetch)
from dualpath_jax.sched.driver import SchedulingDriver
from dualpath_jax.sched.errors import PolicyError

INF = math.inf


def req(i, hit=100, app=10, hbm=0):
    return SchedRequest(i, hit, app, 5, hbm)


def lost(e, node):
    """What the engine runtime reports for a lost engine (EngineView.group_loads)."""
    return EngineLoad(e, node, INF, 0, 0.0)


def pairs(out):
    return [(a.request.request_id, a.engine_id) for a in out]


def to_de_stage(s, n, **kw):
    """Submit ``n`` requests and place them all on PE 0 (group 0), so they wait for a DE."""
    for i in range(n):
        s.submit(req(i, **kw))
    assert len(s.fetch_pe(0, [EngineLoad(0, 0)], {0: 0})) == n


# ---- round_robin with every engine of a role lost ------------------------------------------------
def test_round_robin_submit_after_every_pe_lost_keeps_the_request_waiting():
    s = ClusterScheduler(SchedulerConfig(policy="round_robin", loading="pe_read"), {0: [0, 1]}, {1: [2, 3]})
    s.submit(req(0))  # cyclic PE 0
    s.engine_lost(0)
    s.engine_lost(1)
    s.submit(req(7))  # (was ZeroDivisionError)
    assert s.waiting() == {"pe": 2, "de": 0}
    # nothing is placed on the lost PEs, request 0 included (its cyclic engine died with no PE left)
    assert s.fetch_pe(0, [lost(0, 0), lost(1, 0)], {}) == []
    assert s.waiting() == {"pe": 2, "de": 0}


def test_round_robin_pe_placement_after_every_de_lost_keeps_the_request_waiting():
    s = ClusterScheduler(SchedulerConfig(policy="round_robin", loading="pe_read"), {0: [0]}, {1: [1, 2]})
    s.submit(req(0))
    assert pairs(s.fetch_pe(0, [EngineLoad(0, 0)], {})) == [(0, 0)]  # cyclic DE 1
    s.engine_lost(1)
    s.engine_lost(2)
    s.submit(req(1))
    assert pairs(s.fetch_pe(0, [EngineLoad(0, 0)], {})) == [(1, 0)]  # enters the DE stage with no DE left
    assert s.waiting() == {"pe": 0, "de": 2}
    assert s.fetch_de(1, [lost(1, 1), lost(2, 1)]) == []
    assert s.waiting() == {"pe": 0, "de": 2}


def test_engine_loop_takes_no_arrival_once_aborted():
    """EngineCluster._loop: an abort set while arrivals are due (the last PE's node died) ends the
    run through _expire; the due round is not issued (it reached round_robin's empty cycle)."""
    from dualpath_jax.engine.cluster import EngineCluster
    c = object.__new__(EngineCluster)
    c.config = types.SimpleNamespace(run_timeout_s=100.0, fetch_period_s=0.02, num_nodes=2)
    c.ctx = types.SimpleNamespace(now=lambda: 1.0)
    c._arrivals = [(0.5, 0, 1)]
    c._agents_open, c._aborted, c._remote = 1, "node0 died: killed; no PE is left", None
    issued, expired = [], []
    c._arrive = lambda k, r: issued.append((k, r))
    c._expire = expired.append
    c._loop()
    assert issued == [] and expired == ["node0 died: killed; no PE is left"] and c._ended_early


# ---- empty groups ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pe_groups, de_groups, field, gid", [
    ({0: [0]}, {1: [], 2: [1]}, "sched.de_groups", 1),
    ({0: [0], 3: []}, {1: [1]}, "sched.pe_groups", 3),
])
def test_empty_group_is_rejected(pe_groups, de_groups, field, gid):
    with pytest.raises(ConfigError, match=rf"{field}: group {gid} has no engine"):
        ClusterScheduler(SchedulerConfig(), pe_groups, de_groups)


# ---- a DE group with some engines lost (dualpath) ------------------------------------------------
def test_phase2_leaves_lost_engine_out_of_z_and_placement():
    engines = [lost(1, 1), EngineLoad(2, 1, 0, 3, 1e9)]
    out, loads = de_phase2([req(i) for i in range(4)], engines)  # hbm_bytes 0: fits even "no free HBM"
    assert pairs(out) == [(0, 2), (1, 2), (2, 2), (3, 2)]
    assert loads[1].tok == INF and loads[1].seq == 0 and loads[2].tok == 440 and loads[2].seq == 7
    # Z over the survivor alone: 1.05 * (4 * 110 + 0) / 1
    assert balance_target([req(i) for i in range(4)], engines, 1.05) == pytest.approx(1.05 * 440)
    # every engine lost: nothing placed, no exception
    assert de_phase2([req(0)], [lost(1, 1), lost(2, 1)])[0] == []


def test_phase1_sends_work_to_the_idle_survivor_of_a_partly_lost_group():
    s = ClusterScheduler(SchedulerConfig(), {0: [0]}, {1: [1, 2], 2: [3, 4]})
    s.report_de(1, [lost(1, 1), EngineLoad(2, 1, 0, 0, 1e9)])              # survivor idle: total 0
    s.report_de(2, [EngineLoad(3, 2, 5000, 5, 1e9), EngineLoad(4, 2, 5000, 5, 1e9)])  # total 10000
    to_de_stage(s, 4)
    assert s.distribute_de() == {1}
    out = s.fetch_de(1, [lost(1, 1), EngineLoad(2, 1, 0, 0, 1e9)])
    assert pairs(out) == [(0, 2), (1, 2), (2, 2), (3, 2)]
    assert s.waiting() == {"pe": 0, "de": 0}


def test_lost_engine_in_every_group_gives_finite_totals():
    s = ClusterScheduler(SchedulerConfig(), {0: [0]}, {1: [1, 2], 2: [3, 4]})
    g1 = [lost(1, 1), EngineLoad(2, 1, 0, 0, 1e9)]
    g2 = [lost(3, 2), EngineLoad(4, 2, 0, 0, 1e9)]
    s.report_de(1, g1)
    s.report_de(2, g2)
    to_de_stage(s, 3)
    assert s.distribute_de() == {1, 2}  # 0 -> g1, 1 -> g2, 2 -> g1 (ties on the lower id)
    assert all(math.isfinite(t) for t in s._private_tok.values())
    assert s._private_tok == {1: 220, 2: 110}
    assert pairs(s.fetch_de(1, g1)) == [(0, 2), (2, 2)]
    assert pairs(s.fetch_de(2, g2)) == [(1, 4)]
    assert s._group_tok == {1: 220, 2: 110}


def test_group_whose_engines_all_report_infinite_tok_gets_nothing():
    s = ClusterScheduler(SchedulerConfig(), {0: [0]}, {1: [1], 2: [2]})
    s.report_de(1, [lost(1, 1)])  # (before engine_lost names it)
    s.report_de(2, [EngineLoad(2, 2, 50_000, 9, 1e9)])
    to_de_stage(s, 2)
    assert s.distribute_de() == {2}


def test_engine_named_lost_is_never_placed_even_if_reported_live():
    s = ClusterScheduler(SchedulerConfig(), {0: [0, 1]}, {1: [2, 3]})
    s.engine_lost(0)
    s.engine_lost(2)
    for i in range(2):
        s.submit(req(i))
    assert pairs(s.fetch_pe(0, [EngineLoad(0, 0), EngineLoad(1, 0, 500)], {0: 0})) == [(0, 1), (1, 1)]
    out = s.fetch_de(1, [EngineLoad(2, 1, 0, 0, 1e9), EngineLoad(3, 1, 900, 4, 1e9)])
    assert pairs(out) == [(0, 3), (1, 3)]


def test_algorithm1_never_places_on_a_lost_pe():
    out, loads, _ = pe_fetch([req(i) for i in range(3)], [lost(0, 0), EngineLoad(1, 0, 900)], {0: 0},
                             alpha_tokens=1e9, beta_tokens=1e4)
    assert pairs(out) == [(0, 1), (1, 1), (2, 1)] and loads[0].tok == INF


def test_driver_places_only_on_the_survivor():
    """Through the shared driver, with a view that reports engine 1 lost as EngineView does."""
    loads = {0: [EngineLoad(0, 0)], 1: [lost(1, 1), EngineLoad(2, 1, 0, 0, 1e12)],
             2: [EngineLoad(3, 2, 5000, 5, 1e12), EngineLoad(4, 2, 5000, 5, 1e12)]}
    by_id = {e.engine_id: e for g in loads.values() for e in g}

    class View:
        def group_loads(self, g):
            return loads[g]

        def read_queue_tokens(self, n):
            return 0.0

    placed = []

    def on_pe(a):
        by_id[a.engine_id].tok += a.request.num_tokens

    def on_de(a):
        placed.append((a.request.request_id, a.engine_id))
        by_id[a.engine_id].tok += a.request.num_tokens

    s = ClusterScheduler(SchedulerConfig(), {0: [0]}, {1: [1, 2], 2: [3, 4]})
    s.engine_lost(1)
    d = SchedulingDriver(s, View(), on_pe_placed=on_pe, on_de_placed=on_de, fetch_period_s=0.02, loading="dual")
    d.de_released(2)
    d.de_released(3)  # both leaders report their loads before phase 1
    for i in range(4):
        d.submit(req(i), 0.0)
    d.tick()
    assert placed == [(0, 2), (1, 2), (2, 2), (3, 2)]
    assert s.waiting() == {"pe": 0, "de": 0}


# ---- a researcher's hooks and lost engines --------------------------------------------------------
class FirstEngine(ClusterScheduler):
    """A naive policy: every waiting request on the first engine it is offered."""

    seen: list

    def select_pe(self, group_id, waiting, loads, read_q):
        self.seen.append(("pe", [e.engine_id for e in loads]))
        return [Assignment(r, loads[0].engine_id, "pe") for r in waiting]

    def select_de(self, group_id, waiting, loads):
        self.seen.append(("de", [e.engine_id for e in loads]))
        return [Assignment(r, loads[0].engine_id, "de") for r in waiting]


def test_own_hooks_are_offered_only_live_engines():
    s = FirstEngine(SchedulerConfig(), {0: [0, 1]}, {1: [2, 3]})
    s.seen = []
    s.engine_lost(0)
    s.engine_lost(2)
    s.submit(req(0))
    assert pairs(s.fetch_pe(0, [lost(0, 0), EngineLoad(1, 0)], {0: 0})) == [(0, 1)]
    assert pairs(s.fetch_de(1, [lost(2, 1), EngineLoad(3, 1, 0, 0, 1e9)])) == [(0, 3)]
    assert s.seen == [("pe", [1]), ("de", [3])]


def test_own_hooks_are_not_called_for_a_group_with_no_engine_left():
    s = FirstEngine(SchedulerConfig(), {0: [0], 1: [1]}, {2: [2]})
    s.seen = []
    s.engine_lost(0)
    s.submit(req(0))
    assert s.fetch_pe(0, [lost(0, 0)], {0: 0}) == []  # would raise IndexError if offered no engine
    assert s.seen == [] and s.waiting()["pe"] == 1
    assert pairs(s.fetch_pe(1, [EngineLoad(1, 1)], {1: 0})) == [(0, 1)]


class OnLost(ClusterScheduler):
    """A faulty policy: places on an engine it was told is lost."""

    def select_pe(self, group_id, waiting, loads, read_q):
        return [Assignment(waiting[0], 0, "pe")]


def test_own_hook_placing_on_a_lost_engine_is_a_policy_error():
    s = OnLost(SchedulerConfig(), {0: [0, 1]}, {1: [2]})
    s.engine_lost(0)
    s.submit(req(0))
    with pytest.raises(PolicyError, match=r"OnLost.select_pe: placed request 0 on engine 0, not one of the "
                                          r"group's live engines \[1\]"):
        s.fetch_pe(0, [lost(0, 0), EngineLoad(1, 0)], {0: 0})


class Overcommits(ClusterScheduler):
    """A faulty policy: puts every waiting request on the group's first DE, whatever its free HBM."""

    def select_de(self, group_id, waiting, loads):
        return [Assignment(r, loads[0].engine_id, "de") for r in waiting]


def test_own_hook_placing_more_than_a_des_free_hbm_is_a_policy_error():
    s = Overcommits(SchedulerConfig(), {0: [0]}, {1: [1, 2]})
    to_de_stage(s, 2, hbm=100)
    with pytest.raises(PolicyError, match=r"Overcommits.select_de: placed request 1 \(100 B of HBM\) on engine 1, "
                                          r"which has 50 B free after the placements before it"):
        s.fetch_de(1, [EngineLoad(1, 1, 0, 0, 150.0), EngineLoad(2, 1, 0, 0, 1e9)])
    ok = Overcommits(SchedulerConfig(), {0: [0]}, {1: [1, 2]})  # both fit: accepted
    to_de_stage(ok, 2, hbm=100)
    assert pairs(ok.fetch_de(1, [EngineLoad(1, 1, 0, 0, 200.0), EngineLoad(2, 1, 0, 0, 0.0)])) == [(0, 1), (1, 1)]
