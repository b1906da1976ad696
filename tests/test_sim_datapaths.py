"""The simulator's data paths against PAPER.md 2.3-2.6: what each CNIC direction carries, how the
PE and DE DRAM buffers are held (a request's DE space for its whole prompt's KV, then its PE-side
read's) and that they are never overcommitted nor wait on each other in a cycle."""

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.model import cost
from dualpath_jax.sched import LOADINGS, ClusterScheduler, ReadPlan
from dualpath_jax.sim import HardwareConfig, SimAgent, SimConfig, Simulator, reserve, simulate
from sim_cases import FETCH


def test_the_pe_to_de_hand_off_holds_de_buffer_space_until_the_de_has_it():
    """The KV a PE sends to the DE buffer (PAPER.md 2.3: PE-side hits and appended tokens) holds
    buffer space from the request's placement until the DE's H2D is done: a DE-side read placed
    meanwhile, which needs space for its whole prompt, starts when it is released (at the DE's
    join)."""
    z = 64
    hx, hy = 40 * z, 20 * z  # X hits 40 blocks, read on the PE side; Y 20, read on the DE side

    class BySize(ClusterScheduler):
        def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
            return ReadPlan("pe", 0) if hit_blocks == hx // z else ReadPlan("de", hit_blocks)

    base = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1, loading="dual", fetch_period_s=FETCH)
    kvb = cost.stored_kv_bytes_per_token(base.spec, "fp8")
    # the buffer holds either prompt's KV (X 2,660 tokens, Y 1,380), not both
    cfg = base.replace(hardware=HardwareConfig(dram_buffer_bytes=(hx + 100 + 1000) * kvb))
    x = SimAgent(0.0, np.array([100]), np.array([50]), None, np.array([hx]), initial_context=hx)
    solo = simulate(cfg, [x], scheduler_cls=BySize).requests
    t_y = (solo["prefill_start_s"][0] + solo["decode_start_s"][0]) / 2  # while X's hand-off is in the DE buffer
    y = SimAgent(t_y, np.array([100]), np.array([50]), None, np.array([hy]), initial_context=hy)
    r = simulate(cfg, [x, y], scheduler_cls=BySize).requests
    assert (r["side"][0], r["side"][1]) == ("pe", "de")
    assert r["prefill_start_s"][0] < r["placed_s"][1] < r["decode_start_s"][0]
    snic = cfg.hardware.node_snic_bytes_per_s  # the DE node's SNIC is idle: storage -> SNIC -> DRAM
    assert r["read_done_s"][1] == pytest.approx(r["decode_start_s"][0] + hy * kvb / snic, rel=1e-12)
    # with room for both, Y's read starts when it is placed
    roomy = simulate(cfg.replace(hardware=HardwareConfig(dram_buffer_bytes=(hx + 100 + hy + 100) * kvb)), [x, y],
                     scheduler_cls=BySize).requests
    assert roomy["read_done_s"][1] == pytest.approx(roomy["placed_s"][1] + hy * kvb / snic, rel=1e-12)


@pytest.mark.parametrize("side", ["pe", "de"])
def test_cnic_bytes_follow_the_papers_path_accounting(side):
    """Per engine, the bytes each CNIC direction carries for one request, step by step (PAPER.md 2.3-2.6:
    a CNIC's out direction carries what it reads over PCIe, its in direction what it writes; the
    loopback H2D and D2H copies cross both). H hit, A appended tokens; P persisted tokens."""
    z, hit, app, gen = 64, 30 * 64, 100, 20

    class Side(ClusterScheduler):
        def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
            return ReadPlan(side, hit_blocks if side == "de" else 0)

    cfg = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1, loading="dual", fetch_period_s=FETCH)
    kvb = cost.stored_kv_bytes_per_token(cfg.spec, "fp8")
    a = SimAgent(0.0, np.array([app]), np.array([gen]), None, np.array([hit]), initial_context=hit)
    res = simulate(cfg, [a], scheduler_cls=Side)
    pe, de = int(res.requests["pe"][0]), int(res.requests["de"][0])
    H, A, P = hit * kvb, app * kvb, ((hit + app + gen - 1) // z * z - hit) * kvb
    if side == "pe":  # (3)-(4) loopback H2D of the hits, (5)-(7) all prompt KV to the DE buffer, (8)-(9) H2D
        expected = {f"cnic_out[{pe}]": H + (H + A), f"cnic_in[{pe}]": H,
                    f"cnic_out[{de}]": (H + A) + P, f"cnic_in[{de}]": (H + A) + (H + A) + P}
    else:  # (3)-(5) DE buffer -> PE HBM over RDMA, the appended tokens' KV back, (6)-(7) H2D
        expected = {f"cnic_out[{pe}]": A, f"cnic_in[{pe}]": H,
                    f"cnic_out[{de}]": H + (H + A) + P, f"cnic_in[{de}]": A + (H + A) + P}
    assert {k: res.links[k]["bytes"] for k in expected} == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("side", ["pe", "de"])
def test_dram_bytes_of_a_chunked_prefill_and_its_persist_follow_the_paths(side):
    """Per node, the DRAM bytes of one request prefilled in chunks (a 2 ms compute quota), from the
    chunks the PE formed (cached c_k, new b_k; c_1 = H): every chunk loads the hit KV again from its
    buffer and the earlier chunks' KV from the PE host, where each chunk but the last copies its new
    KV (D2H); the hand-off writes the DE buffer, the DE's H2D reads it; persisting writes DRAM (D2H)
    and reads it (to the SNIC), twice its bytes (PAPER.md 2.5; DRAM is half duplex)."""
    z, hit, app, gen = 64, 30 * 64, 3000, 20
    chunks = []

    class Side(ClusterScheduler):
        def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
            return ReadPlan(side, hit_blocks if side == "de" else 0)

        def form_pe_batch(self, *args, **kwargs):
            batch = super().form_pe_batch(*args, **kwargs)
            chunks.extend((b.cached, b.remaining) for b in batch)
            return batch

    cfg = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1, loading="dual", fetch_period_s=FETCH,
                    compute_quota_s=0.002)
    kvb = cost.stored_kv_bytes_per_token(cfg.spec, "fp8")
    a = SimAgent(0.0, np.array([app]), np.array([gen]), None, np.array([hit]), initial_context=hit)
    res = simulate(cfg, [a], scheduler_cls=Side)
    assert len(chunks) > 2 and chunks[0][0] == hit and sum(b for _, b in chunks) == app
    reload_chunks = sum(c - hit for c, _ in chunks)  # earlier chunks' KV, loaded from the PE host
    d2h_chunks = sum(b for _, b in chunks[:-1])
    n, P = len(chunks), (hit + app + gen - 1) // z * z - hit
    if side == "pe":  # SNIC -> PE buffer, n loads of it; hand-off: hit + new tokens
        pe_dram, de_dram = hit + n * hit + reload_chunks + d2h_chunks, (hit + app) + (hit + app) + 2 * P
    else:  # SNIC -> DE buffer, n loads of it to the PE; hand-off: new tokens
        pe_dram, de_dram = reload_chunks + d2h_chunks, hit + n * hit + app + (hit + app) + 2 * P
    assert res.links["dram[0]"]["bytes"] == pytest.approx(pe_dram * kvb, rel=1e-12)
    assert res.links["dram[1]"]["bytes"] == pytest.approx(de_dram * kvb, rel=1e-12)


def test_dram_buffers_never_hold_more_than_their_capacity():
    """Reads and hand-off holds wait for space: under a small buffer (4 GB per node, DS 660B 2P4D,
    512 agents) no node's buffer is ever overcommitted, and the run completes."""

    class Checked(Simulator):
        lowest = float("inf")

        def _admit(self, node, rid, read_bytes, charge):
            super()._admit(node, rid, read_bytes, charge)
            Checked.lowest = min(Checked.lowest, self.buffers.free[node])

    rng = np.random.default_rng(0)
    agents = [SimAgent(0.0, rng.integers(100, 2000, 3), rng.integers(2, 200, 3), None, None,
                       initial_context=int(rng.integers(10_000, 40_000))) for _ in range(512)]
    cfg = SimConfig(loading="dual", hardware=HardwareConfig(dram_buffer_bytes=4e9), fetch_period_s=FETCH)
    res = Checked(cfg, agents).run()
    assert not np.isnan(res.requests["finish_s"]).any()
    assert 0.0 <= Checked.lowest < 0.5e9  # the buffers did fill (to within a request of full)


@pytest.mark.parametrize("seed", range(4))
def test_random_clusters_and_small_buffers_always_finish_with_their_buffers_whole(seed):
    """60 random small runs per seed (DS 27B / DS 660B, 1-3 PE and DE nodes, 1-8 GPUs per node, every
    loading and prefill mode, both policies, chunking quotas, DRAM buffers of 1-3 largest prompts):
    every request finishes (no buffer wait cycle: a request takes its DE buffer space before its
    PE-side read's), every buffer ends whole and nothing waits. A cycle found this way (PE-side
    requests holding PE buffer while waiting for DE buffer held by split reads waiting for PE
    buffer) stalled the run before the order was fixed."""
    rng = np.random.default_rng(seed)
    runs = 0
    for _ in range(60):
        model = str(rng.choice(["ds-27b", "deepseek-v3.2"]))
        p, d = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        g = int(rng.choice([1, 2, 8])) if model == "ds-27b" else 8
        if model == "deepseek-v3.2":
            p, d = max(p, 2), max(d, 2)
        agents = [SimAgent(float(rng.uniform(0, 5)), rng.integers(1, 3000, r), rng.integers(1, 300, r), None, None,
                           initial_context=int(rng.integers(0, 20000)))
                  for r in rng.integers(1, 5, int(rng.integers(1, 60)))]
        kvb = cost.stored_kv_bytes_per_token(SimConfig(model=model).spec, SimConfig(model=model).kv_dtype)
        largest = max(a.initial_context + int(a.append.sum()) + int(a.gen.sum()) for a in agents)
        buffer = float(largest * kvb * rng.uniform(1.0, 3.0))
        cfg = SimConfig(model=model, prefill_nodes=p, decode_nodes=d, loading=str(rng.choice(LOADINGS)),
                        prefill=str(rng.choice(["layerwise", "full"])),
                        policy=str(rng.choice(["dualpath", "round_robin"])),
                        compute_quota_s=float(rng.choice([0.3, 0.002])), fetch_period_s=FETCH,
                        hardware=HardwareConfig(gpus_per_node=g, dram_buffer_bytes=buffer))
        try:
            sim = Simulator(cfg, agents)
        except ConfigError:  # a request that fits no PE's HBM, or weights too large for the GPUs
            continue
        res = sim.run()
        runs += 1
        assert not np.isnan(res.requests["finish_s"]).any()
        assert sim.buffers.free == pytest.approx([buffer] * (p + d), rel=1e-9)
        assert not any(sim.buffers.wait) and sim.buffers.wait_bytes == pytest.approx([0.0] * (p + d), abs=1e-3)
    assert runs >= 30


def test_the_last_chunks_hand_off_waits_for_every_earlier_chunks_send():
    """A request's KV is in the DE buffer only once every chunk's send has landed (the engine's PE
    hands off after all of them): with the PE's CNIC out booked at [2, 2.5] and [3, 10] s, a 2.1 s
    send of chunk 1 runs [10, 12.1] (its D2H then [12.1, 14.2]) while the last chunk's one-token
    send fits [0, kvb / rate]; the hand-off is due at 12.1 s, not then."""
    hw = HardwareConfig(cnic_bytes_per_s=1e6)
    cfg = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1, loading="dual", hardware=hw)
    rate = hw.cnic_bytes_per_s * hw.cnic_kv_share
    kvb = cost.stored_kv_bytes_per_token(cfg.spec, "fp8")
    z, b1 = 64, int(np.ceil(2.1 * rate / kvb))
    sim = Simulator(cfg, [SimAgent(0.0, np.array([b1 + 1]), np.array([2]), None, np.array([10 * z]),
                                   initial_context=10 * z)])
    pe, de = sim.pe_ids[0], sim.de_ids[0]
    R = sim.R
    R["de"][0], R["hit_tokens"][0], R["append_tokens"][0], R["de_blocks"][0] = de, 10 * z, b1 + 1, 10
    out = sim.cnic_out[pe]
    reserve((out,), 0.5 * rate, 2.0)
    reserve((out,), 7 * rate, 3.0)
    first = sim._prefill_sends(0, pe, 10 * z, b1, 0.0, 0.0)
    assert first == pytest.approx(10.0 + b1 * kvb / rate, rel=1e-12)
    last = sim._prefill_sends(0, pe, 10 * z + b1, 1, 0.0, 0.0)
    assert last == first  # its own send ended at kvb / rate
    assert out.backlog_s(0.0) * rate == pytest.approx((0.5 + 7) * rate + (2 * b1 + 1) * kvb, rel=1e-12)
