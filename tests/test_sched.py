"""Scheduling rules on hand-made engine states (PAPER.md section 5)."""

import random

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.sched import (LOADINGS, POLICIES, AttentionTimeModel, BatchItem, ClusterScheduler, EngineLoad,
                                ReadPlan, SchedRequest, SchedulerConfig, balance_target, check_read_plan, classify_pe,
                                de_phase1, de_phase2, form_batch, form_batch_fifo, pe_fetch, shorter_queue_side,
                                split_de_blocks)
from dualpath_jax.sched.read_side import SIDES_OF_LOADING


def req(i, hit=100, app=10, hbm=0):
    return SchedRequest(i, hit, app, 5, hbm)


# ---- Algorithm 1 ------------------------------------------------------------------------------
def test_classify_pe_sets():
    rq = {0: 50, 1: 500}
    assert classify_pe(EngineLoad(0, 0, tok=10), rq, alpha_tokens=100, beta_tokens=1000) == "C2"
    assert classify_pe(EngineLoad(1, 1, tok=10), rq, alpha_tokens=100, beta_tokens=1000) == "C3"
    assert classify_pe(EngineLoad(2, 0, tok=1001), rq, alpha_tokens=100, beta_tokens=1000) == "C1"
    # boundaries are inclusive (tok <= beta, read_q <= alpha)
    assert classify_pe(EngineLoad(3, 0, tok=1000), {0: 100}, alpha_tokens=100, beta_tokens=1000) == "C2"


def test_c2_preferred_over_less_loaded_c3():
    group = [EngineLoad(0, node_id=0, tok=900), EngineLoad(1, node_id=1, tok=0)]
    out, loads, _ = pe_fetch([req(7)], group, {0: 0, 1: 10_000}, alpha_tokens=1000, beta_tokens=1000)
    assert [(a.request.request_id, a.engine_id) for a in out] == [(7, 0)]
    assert loads[0].tok == 900 + 110 and loads[1].tok == 0


def test_argmin_tok_within_c2_and_tok_update_spreads_requests():
    group = [EngineLoad(0, 0, tok=300), EngineLoad(1, 0, tok=100), EngineLoad(2, 0, tok=200)]
    out, loads, rq = pe_fetch([req(i, hit=100, app=50) for i in range(4)], group, {0: 0},
                              alpha_tokens=1e9, beta_tokens=1e9)
    # tok: e1 100 -> 250; e2 200 -> 350 ; e1 250 -> 400 ; e0 300 -> 450
    assert [a.engine_id for a in out] == [1, 2, 1, 0]
    assert {e: l.tok for e, l in loads.items()} == {0: 450, 1: 400, 2: 350}
    assert rq[0] == 400  # four requests' hit tokens queued on node 0


def test_only_c3_takes_argmin_tok_of_c3():
    group = [EngineLoad(0, 0, tok=50), EngineLoad(1, 1, tok=20), EngineLoad(2, 2, tok=2000)]
    out, _, _ = pe_fetch([req(1)], group, {0: 500, 1: 500, 2: 0}, alpha_tokens=100, beta_tokens=1000)
    assert out[0].engine_id == 1  # e2 is C1 despite its short queue


def test_all_overloaded_terminates_fetch():
    group = [EngineLoad(0, 0, tok=2000), EngineLoad(1, 0, tok=5000)]
    out, loads, _ = pe_fetch([req(1), req(2)], group, {0: 0}, alpha_tokens=100, beta_tokens=1000)
    assert out == [] and loads[0].tok == 2000


def test_fetch_stops_when_engines_cross_beta():
    group = [EngineLoad(0, 0, tok=0)]
    out, _, _ = pe_fetch([req(i, hit=600, app=0) for i in range(3)], group, {0: 0}, alpha_tokens=1e9,
                         beta_tokens=1000)
    assert len(out) == 2  # 0 -> 600 (<= beta) -> 1200 (> beta): the third waits


def test_read_queue_growth_moves_node_to_c3():
    group = [EngineLoad(0, 0, tok=0), EngineLoad(1, 1, tok=500)]
    out, _, rq = pe_fetch([req(1, hit=1000, app=0), req(2, hit=10, app=0)], group, {0: 0, 1: 0},
                          alpha_tokens=500, beta_tokens=1e9)
    # first goes to e0 (min tok); node 0's queue is now 1000 > alpha so e0 is C3 and e1 (C2) gets the second
    assert [a.engine_id for a in out] == [0, 1] and rq == {0: 1000, 1: 10}


@pytest.mark.parametrize("seed", range(60))
def test_pe_fetch_matches_algorithm_1_recomputed_from_scratch(seed):
    """Random groups (several engines per node, mixed queues): each request's engine equals the
    one found by rebuilding C1/C2/C3 from the current loads, as Algorithm 1 is written."""
    rng = random.Random(seed)
    n_nodes = rng.randrange(1, 4)
    group = [EngineLoad(e, rng.randrange(n_nodes), tok=rng.randrange(0, 3000)) for e in rng.sample(range(20), 6)]
    read_q = {n: float(rng.randrange(0, 2000)) for n in range(n_nodes)}
    queue = [req(i, hit=rng.randrange(0, 800), app=rng.randrange(1, 200)) for i in range(rng.randrange(1, 30))]
    alpha, beta = 1000.0, 2500.0
    out, loads, rq = pe_fetch(queue, group, read_q, alpha_tokens=alpha, beta_tokens=beta)

    tok = {e.engine_id: e.tok for e in group}
    node = {e.engine_id: e.node_id for e in group}
    q = dict(read_q)
    expected = []
    for r in queue:
        not_c1 = [e for e in tok if tok[e] <= beta]
        c2 = [e for e in not_c1 if q[node[e]] <= alpha]
        candidates = c2 or [e for e in not_c1 if q[node[e]] > alpha]
        if not candidates:
            break
        e = min(candidates, key=lambda e: (tok[e], e))
        tok[e] += r.hit_tokens + r.append_tokens
        q[node[e]] += r.hit_tokens
        expected.append((r.request_id, e))
    assert [(a.request.request_id, a.engine_id) for a in out] == expected
    assert {e: l.tok for e, l in loads.items()} == tok and rq == q


# ---- DE two-phase -----------------------------------------------------------------------------
def test_de_phase1_min_group_total_with_updates():
    additions, totals = de_phase1([req(1, 100, 0), req(2, 100, 0), req(3, 100, 0)], {10: 150, 11: 0})
    # 11 (0) <- r1 -> 100; 11 (100) <- r2 -> 200; 10 (150) <- r3 -> 250
    assert [r.request_id for r in additions[11]] == [1, 2]
    assert [r.request_id for r in additions[10]] == [3]
    assert totals == {10: 250, 11: 200}
    assert de_phase1([], {}) == ({}, {})
    with pytest.raises(ValueError, match="group_tok: no DE group to distribute 1 request"):
        de_phase1([req(1, 100, 0)], {})  # (was an IndexError)


def test_de_balance_target_uses_hbm_fitting_prefix():
    engines = [EngineLoad(0, 0, tok=100, free_hbm_bytes=50), EngineLoad(1, 0, tok=300, free_hbm_bytes=50)]
    queue = [req(1, 100, 0, hbm=60), req(2, 200, 0, hbm=40), req(3, 400, 0, hbm=10)]
    # free 100 fits r1 (60) + r2 (40) = 100; r3 does not. Z = 1.05 * (300 + 400) / 2
    assert balance_target(queue, engines, 1.05) == pytest.approx(1.05 * 700 / 2)


def test_de_phase2_low_set_min_seq_high_set_min_tok():
    engines = [EngineLoad(0, 0, tok=100, seq=3), EngineLoad(1, 0, tok=150, seq=1), EngineLoad(2, 0, tok=900, seq=0)]
    # Z = 1.05 * (100 + 100 + 150 + 900) / 3 = 437.5
    out, loads = de_phase2([req(1, 100, 0)], engines, z_factor=1.05)
    # low = {e0 (200), e1 (250)}; e2 would be 1000 > Z. min seq among low: e1
    assert out[0].engine_id == 1 and loads[1].seq == 2 and loads[1].tok == 250
    engines = [EngineLoad(0, 0, tok=1000, seq=0), EngineLoad(1, 0, tok=600, seq=5)]
    out, _ = de_phase2([req(1, 5000, 0)], engines, z_factor=1.05)
    # Z = 1.05 * 6600 / 2 = 3465: nobody is low; min tok among fit -> e1
    assert out[0].engine_id == 1


def test_de_phase2_respects_hbm_and_stops_when_nothing_fits():
    engines = [EngineLoad(0, 0, tok=0, free_hbm_bytes=100), EngineLoad(1, 0, tok=0, free_hbm_bytes=30)]
    out, loads = de_phase2([req(1, hbm=80), req(2, hbm=50), req(3, hbm=10)], engines)
    assert [(a.request.request_id, a.engine_id) for a in out] == [(1, 0)]  # r2 fits nowhere: fetch ends
    assert loads[0].free_hbm_bytes == 20


@pytest.mark.parametrize("seed", range(20))
def test_de_phase2_matches_the_rule_recomputed_from_scratch(seed):
    """Random groups and private queues: each placement equals the one found by rebuilding the
    HBM-feasible, low and high sets from the current loads (PAPER.md 5.3), and the fetch ends at
    the first request no engine has room for."""
    rng = random.Random(seed)
    engines = [EngineLoad(e, 0, tok=rng.randrange(0, 5000), seq=rng.randrange(0, 6),
                          free_hbm_bytes=float(rng.randrange(0, 400))) for e in rng.sample(range(30), 5)]
    queue = [req(i, hit=rng.randrange(0, 900), app=rng.randrange(1, 100), hbm=rng.randrange(1, 120))
             for i in range(rng.randrange(1, 25))]
    z_factor = 1.05
    out, loads = de_phase2(queue, engines, z_factor=z_factor)

    tok = {e.engine_id: e.tok for e in engines}
    seq = {e.engine_id: e.seq for e in engines}
    free = {e.engine_id: e.free_hbm_bytes for e in engines}
    room, fitting = sum(free.values()), 0
    for r in queue:  # R: the longest prefix whose HBM fits the group's total free HBM
        if r.hbm_bytes > room:
            break
        room -= r.hbm_bytes
        fitting += r.num_tokens
    z = z_factor * (fitting + sum(tok.values())) / len(engines)
    expected = []
    for r in queue:
        feasible = [e for e in tok if free[e] >= r.hbm_bytes]
        if not feasible:
            break
        low = [e for e in feasible if tok[e] + r.num_tokens <= z]
        e = min(low, key=lambda e: (seq[e], e)) if low else min(feasible, key=lambda e: (tok[e], e))
        tok[e] += r.num_tokens
        seq[e] += 1
        free[e] -= r.hbm_bytes
        expected.append((r.request_id, e))
    assert [(a.request.request_id, a.engine_id) for a in out] == expected
    assert {e: (l.tok, l.seq, l.free_hbm_bytes) for e, l in loads.items()} == {e: (tok[e], seq[e], free[e]) for e in tok}


# ---- read side --------------------------------------------------------------------------------
def test_read_side_rules():
    assert shorter_queue_side(10, 20) == "pe" and shorter_queue_side(20, 10) == "de"
    # equal queues (PAPER.md 5.4 has no rule): the node that has read fewer tokens so far, then DE
    assert shorter_queue_side(5, 5, 100, 200) == "pe" and shorter_queue_side(5, 5, 200, 100) == "de"
    assert shorter_queue_side(0, 0) == "de" and shorter_queue_side(0, 0, 64, 64) == "de"
    # q_pe=640, q_de=0, H=10 blocks*64=640: x=(640-0+640)/2=640 -> all 10 blocks on DE
    assert split_de_blocks(10, 64, 640, 0) == 10
    assert split_de_blocks(10, 64, 0, 0) == 5
    assert split_de_blocks(10, 64, 0, 10_000) == 0
    # x = (320 - 0 + 640) / 2 = 480 tokens = 7.5 blocks -> round to 8
    assert split_de_blocks(10, 64, 320, 0) == 8


# ---- batching ---------------------------------------------------------------------------------
MODEL = AttentionTimeModel(flops_per_key=1.0, seconds_per_flop=1e-3, seconds_per_token=0.0)


def test_attention_time_model_closed_form():
    # keys for bsz=3 over cached=10: 11 + 12 + 13 = 36
    assert MODEL.time_s(10, 3) == pytest.approx(0.036)


def test_form_batch_quota_and_binary_search_chunk():
    fifo = [BatchItem(1, 0, 10), BatchItem(2, 100, 50), BatchItem(3, 0, 5)]
    # r1: keys 55 -> 0.055 s. r2 whole: keys (201+50)*50/2 = 6275 -> 6.275 s > remaining 0.245 s.
    # largest b with (201+b)*b/2 * 1e-3 <= 0.245: b=2 gives 203*1=0.203; b=3 gives 304.5 -> 0.3045 > 0.245
    batch = form_batch(fifo, 0.300, MODEL)
    assert batch == [BatchItem(1, 0, 10), BatchItem(2, 100, 2)]


def test_form_batch_progress_and_kv_limits():
    assert form_batch([BatchItem(1, 10_000, 5)], 0.001, MODEL) == [BatchItem(1, 10_000, 1)]
    with pytest.raises(ValueError, match="request 1"):
        form_batch([BatchItem(1, 10_000, 5)], 10.0, MODEL, max_kv_tokens=5_000)
    batch = form_batch([BatchItem(1, 50, 10), BatchItem(2, 50, 10)], 100.0, MODEL, max_kv_tokens=100)
    assert batch == [BatchItem(1, 50, 10)]  # 60 used; r2's 50 cached + 1 > 40 left: no chunk
    batch = form_batch([BatchItem(1, 50, 10), BatchItem(2, 10, 50)], 100.0, MODEL, max_kv_tokens=100)
    assert batch == [BatchItem(1, 50, 10), BatchItem(2, 10, 30)]  # 60 + 10 + 30 = 100
    # an item with nothing left to compute: refused, not a 1-token chunk of a token it does not have
    with pytest.raises(ValueError, match="request 7: remaining=0 tokens"):
        form_batch([BatchItem(7, 100, 0)], 1.0, MODEL)


class _Guessing:
    """MODEL with a ``max_bsz_within`` estimate that is off by ``error`` tokens."""

    def __init__(self, error):
        self.error = error

    def time_s(self, cached, bsz):
        return MODEL.time_s(cached, bsz)

    def max_bsz_within(self, cached, seconds):
        # keys(b) = (2c + b + 1) b / 2 at 1e-3 s per key: the positive root, then the error
        c = cached + 0.5
        return -c + (c * c + 2 * seconds / 1e-3) ** 0.5 + self.error


@pytest.mark.parametrize("error", [0.0, 0.4, -3.0, 7.0, 1e9, -1e9, float("nan")])
def test_form_batch_with_an_estimate_equals_bisection(error):
    """A time model's chunk estimate only speeds the search: right or wrong, the batch is the same."""
    import random
    rng = random.Random(0)
    for _ in range(200):
        fifo = [BatchItem(i, rng.randrange(0, 3000), rng.randrange(1, 400)) for i in range(rng.randrange(1, 6))]
        quota = rng.choice([0.01, 0.3, 5.0, 100.0])
        kv = rng.choice([float("inf"), 4000.0, 9000.0])
        try:
            want = form_batch(fifo, quota, MODEL, max_kv_tokens=kv)
        except ValueError:
            with pytest.raises(ValueError):
                form_batch(fifo, quota, _Guessing(error), max_kv_tokens=kv)
            continue
        assert form_batch(iter(fifo), quota, _Guessing(error), max_kv_tokens=kv) == want


def test_form_batch_fifo_whole_requests_and_head_chunk():
    fifo = [BatchItem(1, 0, 300), BatchItem(2, 0, 300), BatchItem(3, 0, 100)]
    assert form_batch_fifo(fifo, max_tokens=700) == fifo
    assert form_batch_fifo(fifo, max_tokens=650) == fifo[:2]  # 600 + 100 > 650: r3 waits, no chunk
    assert form_batch_fifo(fifo, max_tokens=1000, max_kv_tokens=350) == fifo[:1]
    assert form_batch_fifo([BatchItem(1, 0, 5000)], max_tokens=1000) == [BatchItem(1, 0, 1000)]


def _fifo_forwards(remaining: list[int], cap: int) -> list[int]:
    """Drain a FIFO with form_batch_fifo the way a runtime does; new tokens per forward."""
    fifo = [BatchItem(i, 0, r) for i, r in enumerate(remaining)]
    out = []
    while fifo:
        batch = form_batch_fifo(fifo, max_tokens=cap)
        out.append(sum(b.remaining for b in batch))
        done = {b.request_id: b.remaining for b in batch}
        fifo = [BatchItem(it.request_id, it.cached + done.get(it.request_id, 0), it.remaining - done.get(it.request_id, 0))
                for it in fifo if it.remaining > done.get(it.request_id, 0)]
    return out


def test_form_batch_fifo_fills_the_forward_after_a_tail_chunk():
    # two requests larger than the cap: every forward but the last is full, ceil(17,700 / 8,192) = 3
    assert _fifo_forwards([8700, 9000], 8192) == [8192, 8192, 1316]
    # a request that fits a forward of its own is never split: 300 + 300, then 100 + 5,000 chunks
    assert _fifo_forwards([300, 300, 100, 2500], 650) == [600, 100 + 550, 650, 650, 650]
    rng = np.random.default_rng(0)
    for _ in range(50):  # only oversize requests: the forward count is the closed form
        rem = [int(x) for x in rng.integers(1001, 5000, size=int(rng.integers(1, 6)))]
        assert len(_fifo_forwards(rem, 1000)) == -(-sum(rem) // 1000)


# ---- the cluster scheduler --------------------------------------------------------------------
def make(policy, loading="dual"):
    cfg = SchedulerConfig(policy=policy, loading=loading, alpha_tokens=1000, beta_tokens=10_000)
    return ClusterScheduler(cfg, pe_groups={0: [0, 1]}, de_groups={1: [2, 3], 2: [4, 5]})


def test_round_robin_cycles_pe_and_de():
    s = make("round_robin")
    for i in range(4):
        s.submit(req(i))
    pe = s.fetch_pe(0, [EngineLoad(0, 0), EngineLoad(1, 0)], {})
    assert [a.engine_id for a in pe] == [0, 1, 0, 1]
    de1 = s.fetch_de(1, [EngineLoad(2, 1), EngineLoad(3, 1)])
    de2 = s.fetch_de(2, [EngineLoad(4, 2), EngineLoad(5, 2)])
    assert [(a.request.request_id, a.engine_id) for a in de1] == [(0, 2), (1, 3)]
    assert [(a.request.request_id, a.engine_id) for a in de2] == [(2, 4), (3, 5)]
    assert s.waiting() == {"pe": 0, "de": 0}
    # naive dual-path side: alternate
    sides = [s.read_plan(req(i), 0, 1, {0: 0, 1: 1e9}, 4, 64).side for i in range(3)]
    assert sides == ["pe", "de", "pe"]


def test_round_robin_skips_a_lost_engine_and_moves_what_its_cycle_gave_it():
    s = make("round_robin")
    for i in range(4):
        s.submit(req(i))
    s.engine_lost(1)  # r1 and r3 were cycled to PE 1: they go to PE 0, the only one left
    pe = s.fetch_pe(0, [EngineLoad(0, 0), EngineLoad(1, 0)], {})
    assert [(a.request.request_id, a.engine_id) for a in pe] == [(0, 0), (2, 0), (1, 0), (3, 0)]
    # the DE stage cycled r0, r2, r1, r3 (PE fetch order) to DEs 2, 3, 4, 5; without DE 4 the cycle
    # is 2, 3, 5 and r1 takes the engine at its cursor (4 requests in: 4 mod 3 -> DE 3)
    s.engine_lost(4)
    de1 = s.fetch_de(1, [EngineLoad(2, 1, free_hbm_bytes=1e9), EngineLoad(3, 1, free_hbm_bytes=1e9)])
    de2 = s.fetch_de(2, [EngineLoad(4, 2), EngineLoad(5, 2, free_hbm_bytes=1e9)])
    assert [(a.request.request_id, a.engine_id) for a in de1] == [(0, 2), (1, 3), (2, 3)]
    assert [(a.request.request_id, a.engine_id) for a in de2] == [(3, 5)]
    assert s.waiting() == {"pe": 0, "de": 0}


def test_dualpath_hands_a_dead_de_groups_queue_back_to_phase_1():
    s = make("dualpath")
    for i in range(4):
        s.submit(req(i, hit=1000, app=0))
    s.fetch_pe(0, [EngineLoad(0, 0), EngineLoad(1, 0)], {0: 0})
    s.report_de(1, [EngineLoad(2, 1, tok=5), EngineLoad(3, 1, tok=5)])
    s.distribute_de()  # phase 1: group 2 (empty) gets r0, r2; group 1 r1, r3
    assert s.has_de_work(2)
    for e in (4, 5):
        s.engine_lost(e)
    assert not s.has_de_work(2) and s.waiting() == {"pe": 0, "de": 4}
    out = s.fetch_de(1, [EngineLoad(2, 1, free_hbm_bytes=1e9), EngineLoad(3, 1, free_hbm_bytes=1e9)])
    assert sorted(a.request.request_id for a in out) == [0, 1, 2, 3]
    assert {a.engine_id for a in out} <= {2, 3}


def test_a_dead_de_group_is_not_offered_to_a_researchers_phase_1():
    seen = []

    class LargestGroupFirst(ClusterScheduler):  # a policy that would pick the idle (dead) group
        def select_de_group(self, waiting, group_tok):
            seen.append(dict(group_tok))
            return {max(group_tok, key=group_tok.get): list(waiting)}

    cfg = SchedulerConfig(policy="dualpath", loading="dual", alpha_tokens=1000, beta_tokens=10_000)
    s = LargestGroupFirst(cfg, pe_groups={0: [0, 1]}, de_groups={1: [2, 3], 2: [4, 5]})
    s.submit(req(0))
    s.fetch_pe(0, [EngineLoad(0, 0), EngineLoad(1, 0)], {0: 0})
    for e in (2, 3):
        s.engine_lost(e)
    out = s.fetch_de(2, [EngineLoad(4, 2, free_hbm_bytes=1e9), EngineLoad(5, 2, free_hbm_bytes=1e9)])
    assert list(seen[-1]) == [2] and [a.engine_id for a in out] == [4]


def test_dualpath_flow_balances_and_picks_shorter_queue():
    s = make("dualpath")
    for i in range(4):
        s.submit(req(i, hit=1000, app=0))
    pe = s.fetch_pe(0, [EngineLoad(0, 0, tok=0), EngineLoad(1, 0, tok=500)], {0: 0})
    assert [a.engine_id for a in pe] == [0, 1, 0, 1]
    out = s.fetch_de(1, [EngineLoad(2, 1), EngineLoad(3, 1)])
    # phase 1 splits 4 requests over two empty groups alternately: group 1 gets r0, r2
    assert [a.request.request_id for a in out] == [0, 2]
    assert sorted(a.engine_id for a in out) == [2, 3]
    assert s.waiting() == {"pe": 0, "de": 2}
    plan = s.read_plan(req(0, hit=1000), pe_node=0, de_node=1, read_q={0: 5000, 1: 100}, hit_blocks=15,
                       block_tokens=64)
    assert plan.side == "de" and plan.de_blocks == 15
    assert s.read_plan(req(0), 0, 1, {0: 0, 1: 0}, 15, 64).side == "pe"


def test_loading_modes_read_plan():
    assert make("dualpath", "oracle").read_plan(req(0), 0, 1, {}, 10, 64).side == "none"
    assert make("dualpath", "pe_read").read_plan(req(0), 0, 1, {0: 1e9}, 10, 64).side == "pe"
    plan = make("dualpath", "split").read_plan(req(0), 0, 1, {0: 0, 1: 0}, 10, 64)
    assert plan.side == "split" and plan.de_blocks == 5


def test_dualpath_read_side_ties_spread_reads_over_both_snics():
    s = make("dualpath", "dual")
    idle = {0: 0.0, 1: 0.0}
    # both queues empty every time: 10, 10, 30, 10, 10, 10 blocks; the node that has read fewer
    # tokens takes the next one, DE on exact ties. Totals (PE, DE) in blocks after each:
    # (0, 10) (10, 10) (10, 40) (20, 40) (30, 40) (40, 40)
    sides = [s.read_plan(req(i), 0, 1, idle, n, 64).side for i, n in enumerate((10, 10, 30, 10, 10, 10))]
    assert sides == ["de", "pe", "de", "pe", "pe", "pe"]
    # a shorter queue still wins regardless of the totals (PAPER.md 5.4)
    assert s.read_plan(req(9), 0, 1, {0: 1.0, 1: 0.0}, 10, 64).side == "de"
    assert s.read_plan(req(10), 0, 1, {0: 0.0, 1: 1.0}, 10, 64).side == "pe"
    # another pair of nodes keeps its own totals
    assert s.read_plan(req(11), 2, 3, {}, 10, 64).side == "de"


def test_built_in_read_plans_pass_the_check_for_every_policy_and_loading():
    rng = np.random.default_rng(0)
    for policy in POLICIES:
        for loading in LOADINGS:
            s = make(policy, loading)
            for _ in range(50):
                hit_blocks = int(rng.integers(0, 20))
                q = {0: float(rng.uniform(0, 5000)), 1: float(rng.uniform(0, 5000))}
                plan = s.read_plan(req(0, hit=hit_blocks * 64), 0, 1, q, hit_blocks, 64)
                check_read_plan(plan, hit_blocks, loading)  # raises if inconsistent
                assert plan.side in SIDES_OF_LOADING[loading] + ("none",)


@pytest.mark.parametrize("plan, hit_blocks, loading, error", [
    (ReadPlan("pe", 10), 10, "dual", "means side 'de', not 'pe'"),  # a DE read whose DE buffer is never freed
    (ReadPlan("DE", 10), 10, "dual", "means side 'de', not 'DE'"),  # misspelled side
    (ReadPlan("de", 11), 10, "dual", r"de_blocks=11 is outside \[0, 10\]"),  # more blocks than the request hits
    (ReadPlan("split", -1), 10, "split", r"de_blocks=-1 is outside \[0, 10\]"),
    (ReadPlan("split", 4), 10, "dual", "side 'split' is not one of 'pe', 'de'"),  # dual reads one side only
    (ReadPlan("de", 10), 10, "pe_read", "side 'de' is not one of 'pe'"),
    (ReadPlan("pe", 0), 10, "oracle", "means side 'none', not 'pe'"),  # oracle reads nothing
    (ReadPlan("none", 0), 10, "dual", "means side 'pe', not 'none'"),  # skipping a read is oracle's privilege
    (ReadPlan("DE", 0), 0, "dual", "means side 'none', not 'DE'"),
    (ReadPlan("none", 3), 0, "split", r"de_blocks=3 is outside \[0, 0\]"),
])
def test_check_read_plan_rejects_inconsistent_plans(plan, hit_blocks, loading, error):
    with pytest.raises(ValueError, match=error):
        check_read_plan(plan, hit_blocks, loading, who="Mine.read_plan")
    with pytest.raises(TypeError, match=r"Mine\.read_plan: de_blocks must be an int \(got 2\.0\)"):
        check_read_plan(ReadPlan("split", 2.0), 10, "split", who="Mine.read_plan")
    check_read_plan(ReadPlan("split", np.int64(3)), 10, "split")  # numpy ints are ints
    with pytest.raises(TypeError, match=r"Mine\.read_plan: must return a ReadPlan\(side, de_blocks\) \(got None\)"):
        check_read_plan(None, 10, "dual", who="Mine.read_plan")


@pytest.mark.parametrize("plan, loading", [(ReadPlan("pe", 0), "dual"), (ReadPlan("de", 0), "dual"),
                                           (ReadPlan("none", 0), "pe_read"), (ReadPlan("pe", 0), "pe_read"),
                                           (ReadPlan("split", 0), "split")])
def test_a_request_without_hit_blocks_may_name_any_side_of_its_mode(plan, loading):
    check_read_plan(plan, 0, loading)  # reads nothing whichever side it names


def test_invalid_scheduler_configs_name_field():
    with pytest.raises(ConfigError, match="sched.policy"):
        SchedulerConfig(policy="fifo")
    with pytest.raises(ConfigError, match="sched.loading"):
        SchedulerConfig(loading="triple")
    with pytest.raises(ConfigError, match="sched.alpha_tokens"):
        SchedulerConfig(alpha_tokens=0)
    with pytest.raises(ConfigError, match="sched.pe_groups"):
        ClusterScheduler(SchedulerConfig(), {}, {1: [1]})
    with pytest.raises(ConfigError, match="more than one group"):
        ClusterScheduler(SchedulerConfig(), {0: [0]}, {1: [0]})


def test_round_robin_de_waits_for_hbm_in_fifo_order():
    s = make("round_robin")
    for i in range(3):
        s.submit(req(i, hbm=60))
    s.fetch_pe(0, [EngineLoad(0, 0), EngineLoad(1, 0)], {})
    # cyclic DEs: r0 -> e2, r1 -> e3, r2 -> e4 (group 2). e2 lacks HBM: r0 waits, r1 proceeds.
    out = s.fetch_de(1, [EngineLoad(2, 1, free_hbm_bytes=50), EngineLoad(3, 1, free_hbm_bytes=100)])
    assert [(a.request.request_id, a.engine_id) for a in out] == [(1, 3)]
    assert s.waiting()["de"] == 2
    out = s.fetch_de(1, [EngineLoad(2, 1, free_hbm_bytes=60), EngineLoad(3, 1, free_hbm_bytes=40)])
    assert [(a.request.request_id, a.engine_id) for a in out] == [(0, 2)]


def test_report_de_refreshes_group_load_for_phase1():
    s = make("dualpath")
    s.fetch_de(1, [EngineLoad(2, 1, tok=50_000), EngineLoad(3, 1, tok=0)])  # group 1 reports a high load
    s.report_de(1, [EngineLoad(2, 1, tok=0), EngineLoad(3, 1, tok=0)])      # ... then finishes its work
    s.report_de(2, [EngineLoad(4, 2, tok=10), EngineLoad(5, 2, tok=0)])
    for i in range(2):
        s.submit(req(i, hit=100, app=0))
    s.fetch_pe(0, [EngineLoad(0, 0), EngineLoad(1, 0)], {0: 0})
    assert s.distribute_de() == {1, 2}  # group 1 (now 0 tokens) gets the first request, not group 2 only
