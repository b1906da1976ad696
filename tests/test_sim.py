"""Simulator: hand-computed single-request cases, the storage-bound closed form, determinism,
conservation and config validation."""

import json
import warnings

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.model import cost
from dualpath_jax.sched import ClusterScheduler, ReadPlan
from dualpath_jax.sim import HardwareConfig, SimAgent, SimConfig, Simulator, simulate
from dualpath_jax.sim.agents import round_hits
from dualpath_jax.sim.fit import ContextBeyondModelWarning
from sim_cases import FETCH, agent

def test_one_request_idle_cluster_oracle():
    cfg = SimConfig(loading="oracle", prefill="layerwise", policy="dualpath", fetch_period_s=FETCH)
    sim = Simulator(cfg, [agent([1000], [50])])
    res = sim.run()
    # DP attention + EP (DS-V3.2): the lone request's routed-expert work is spread over its EP group
    g_pe, g_de = cfg.ep_gpus("pe"), cfg.ep_gpus("de")
    assert g_pe == 16 and g_de == 32
    t_prefill = sim.pe_model.prefill_time_s([0], [1000]) - sim.pe_model.s_per_routed_token * 1000 * (1 - 1 / g_pe)
    ttft = FETCH + t_prefill
    # DE: one sequence of 1000 prompt tokens decoding 49 more tokens; mean context over the decode
    step = sim.de_model.decode_step_s(1, 1000 + 49 / 2.0) - sim.de_model.s_per_routed_token * (1 - 1 / g_de)
    r = res.requests
    assert r["first_token_s"][0] - r["arrival_s"][0] == pytest.approx(ttft, rel=1e-12)
    assert r["finish_s"][0] == pytest.approx(ttft + 49 * step, rel=1e-12)
    assert r["second_token_s"][0] == pytest.approx(ttft + step, rel=1e-12)
    assert res.end_s == pytest.approx(ttft + 49 * step, rel=1e-12)
    # columns are plain writable arrays; the spent simulator refuses a second run
    assert r["finish_s"].dtype == np.float64 and r["gen_tokens"].dtype == np.int64 and r["gen_tokens"][0] == 50
    assert r["finish_s"].flags.writeable and r["pe"].shape == (1,)
    with pytest.raises(RuntimeError, match="run already"):
        sim.run()


def test_second_round_pe_read_layerwise_hand_computed():
    cfg = SimConfig(loading="pe_read", prefill="layerwise", policy="round_robin", fetch_period_s=FETCH)
    a0, g0, a1 = 6400, 1, 300  # round 1 hits 6400 tokens = 100 Full Blocks (the generated token has no KV)
    sim = Simulator(cfg, [agent([a0, a1], [g0, 1])])
    res = sim.run()
    r = res.requests
    hw, kvb = cfg.hardware, cost.stored_kv_bytes_per_token(cfg.spec, "fp8")
    hit_bytes = 6400 * kvb
    # round 1 is issued when round 0's new KV (the 6400 prompt tokens: the one generated token is never
    # fed back, so it has no KV; written from the start of decode, which is its end with g0 = 1) is
    # persisted: DE CNIC -> DRAM -> SNIC write
    persist_rate = min(hw.cnic_bytes_per_s * hw.cnic_kv_share, hw.dram_bytes_per_s, hw.node_snic_bytes_per_s)
    arrival1 = r["finish_s"][0] + a0 * kvb / persist_rate
    assert r["persisted_s"][0] == pytest.approx(arrival1, rel=1e-12)
    assert r["arrival_s"][1] == pytest.approx(arrival1, rel=1e-12)
    placed = arrival1 + FETCH
    read_done = placed + hit_bytes / hw.snic_bytes_per_s  # storage -> SNIC -> DRAM, SNIC is the slowest hop
    load_end = read_done + hit_bytes / (hw.cnic_bytes_per_s * hw.cnic_kv_share)  # DRAM -> CNIC -> HBM
    t_c = sim.pe_model.prefill_time_s([6400], [a1 + g0])  # the generated token is computed as appended
    t_c -= sim.pe_model.s_per_routed_token * (a1 + g0) * (1 - 1 / cfg.ep_gpus("pe"))  # routed experts: EP-shared
    end = max(read_done + t_c, load_end + t_c / cfg.spec.n_layers)
    assert r["hit_tokens"][1] == 6400 and r["side"][1] == "pe"
    assert r["read_done_s"][1] == pytest.approx(read_done, rel=1e-12)
    assert r["first_token_s"][1] == pytest.approx(end, rel=1e-12)


def _storage_bound_agents(n, hit_tokens, spread_s):
    # one round each over a warm store: hit_tokens cached, 64 computed, 1 generated (writes are 0.2% of
    # reads), arriving evenly over spread_s. (In one burst at t = 0 the first PE leader's fetch would
    # take every request onto its node: Algorithm 1 pulls while its engines are under beta.)
    return [SimAgent(i * spread_s / n, np.array([64]), np.array([1]), None, np.array([hit_tokens]),
                     initial_context=hit_tokens) for i in range(n)]


FAST = HardwareConfig(peak_flops=1e21, cnic_bytes_per_s=1e13, dram_bytes_per_s=1e14, hbm_bytes_per_s=1e16)


@pytest.mark.parametrize("loading,policy,snics", [("pe_read", "round_robin", 2), ("dual", "dualpath", 6)])
def test_storage_only_bottleneck_matches_bytes_over_snic_rate(loading, policy, snics):
    cfg = SimConfig(hardware=FAST, loading=loading, prefill="layerwise", policy=policy, prefill_layer_overhead_s=0.0,
                    fetch_period_s=1e-4)
    hit = 64 * 500
    total = 480 * hit * cost.stored_kv_bytes_per_token(cfg.spec, "fp8")
    bound = total / (snics * cfg.hardware.snic_bytes_per_s)
    # arrivals over the first quarter of the bound keep the read queues full from the first read on
    res = simulate(cfg, _storage_bound_agents(480, hit, bound / 4))
    assert res.end_s == pytest.approx(bound, rel=0.05)
    assert res.end_s >= bound
    # each node's read samples: the SNIC (the slowest hop) serves reads one after another at its rate,
    # and they carry exactly the bytes its counter holds
    rate = cfg.hardware.node_snic_bytes_per_s
    for name, s in res.snic_samples.items():
        assert s.ndim == 2 and s.shape[1] == 3
        start, finish, nbytes = s.T
        np.testing.assert_allclose(finish - start, nbytes / rate, rtol=1e-9)
        assert (start[1:] >= finish[:-1] - 1e-12).all()
        assert nbytes.sum() == pytest.approx(res.links[name]["bytes"], rel=1e-12)
    assert sum(len(s) for s in res.snic_samples.values()) >= 480


def test_determinism_and_conservation():
    rng = np.random.default_rng(1)
    agents = [agent(rng.integers(100, 900, 6), rng.integers(1, 40, 6), arrival=float(i) * 0.01) for i in range(24)]
    cfg = SimConfig(loading="dual", prefill="layerwise", policy="dualpath")
    a, b = simulate(cfg, agents), simulate(cfg, agents)
    assert a.events == b.events and a.end_s == b.end_s
    for k in a.requests:
        np.testing.assert_array_equal(a.requests[k], b.requests[k])
    r = a.requests
    assert len(r["finish_s"]) == 24 * 6 and not np.isnan(r["finish_s"]).any()  # every request finished
    read_total = sum(v["bytes"] for k, v in a.links.items() if k.startswith("snic_read"))
    assert read_total == pytest.approx(np.sum(r["read_bytes_pe"]) + np.sum(r["read_bytes_de"]))
    kvb = cost.stored_kv_bytes_per_token(cfg.spec, "fp8")
    assert np.sum(r["read_bytes_pe"] + r["read_bytes_de"]) == pytest.approx(np.sum(r["hit_tokens"]) * kvb)
    assert (r["first_token_s"] >= r["arrival_s"]).all() and (r["finish_s"] >= r["first_token_s"]).all()
    # a round's hit never exceeds the agent's previous context, and a round starts after the last ends
    for i in range(24):
        mine = np.flatnonzero(r["agent"] == i)
        mine = mine[np.argsort(r["round"][mine])]
        assert list(r["round"][mine]) == list(range(6))
        context = r["hit_tokens"] + r["append_tokens"] + r["gen_tokens"]
        assert (r["hit_tokens"][mine[1:]] <= context[mine[:-1]]).all() and r["hit_tokens"][mine[0]] == 0
        assert (r["arrival_s"][mine[1:]] >= r["finish_s"][mine[:-1]]).all()


def test_contexts_past_the_models_max_position_are_priced_with_a_warning():
    cfg = SimConfig(loading="dual", prefill="layerwise", policy="dualpath")  # deepseek-v3.2: 163840 positions
    assert cfg.spec.max_position == 163840
    with pytest.warns(ContextBeyondModelWarning, match=r"sim.model: 1 of 2 requests run past deepseek-v3.2's "
                      r"max_position_embeddings \(163840 tokens; the longest, agents\[0\] round 1, reaches 170020\)"):
        over = simulate(cfg, [agent([100000, 70000], [10, 10])])
    assert not np.isnan(over.requests["finish_s"]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextBeyondModelWarning)
        simulate(cfg, [agent([100000, 63820], [10, 10])])  # 163840 exactly: no warning


def test_invalid_sim_configs_name_field():
    with pytest.raises(ConfigError, match="sim.prefill_nodes"):
        SimConfig(prefill_nodes=0)
    with pytest.raises(ConfigError, match="sim.loading"):
        SimConfig(loading="both")
    with pytest.raises(ConfigError, match="hardware.snic_bytes_per_s"):
        HardwareConfig(snic_bytes_per_s=0)
    with pytest.raises(ConfigError, match="sim.decode_nodes"):  # 671B of FP8 weights do not fit 8 GPUs
        Simulator(SimConfig(prefill_nodes=4, decode_nodes=1), [agent([10], [2])])
    with pytest.raises(ConfigError, match="hardware.hbm_bytes"):  # one trajectory's KV exceeds DE HBM
        Simulator(SimConfig(), [agent([2_000_000], [2])])
    with pytest.raises(ConfigError, match=r"agents\[0\]"):
        Simulator(SimConfig(), [agent([10, 10], [2])])
    two = dict(arrival_s=0.0, append=np.array([10, 10]), gen=np.array([2, 2]))
    with pytest.raises(ConfigError, match=r"agents\[1\]\.hit"):
        Simulator(SimConfig(), [agent([10], [2]), SimAgent(**two, hit=np.array([0.0, np.nan]))])
    with pytest.raises(ConfigError, match=r"agents\[0\]\.hit"):
        Simulator(SimConfig(), [SimAgent(**two, hit=np.array([0]))])
    with pytest.raises(ConfigError, match=r"agents\[0\]\.think_s"):
        Simulator(SimConfig(), [SimAgent(**two, think_s=np.array([0.0, -1.0]))])
    with pytest.raises(ConfigError, match=r"agents\[0\]\.hit"):  # would not fit the int64 token columns
        Simulator(SimConfig(), [SimAgent(**two, hit=np.array([0.0, 1e19]))])
    with pytest.raises(ConfigError, match=r"agents\[0\]\.hit: needs 2 values, one per round \(got shape \(3,\)\)"):
        Simulator(SimConfig(), [SimAgent(**two, hit=np.array([0, 1, 2]))])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"agents\[1\]\.arrival_s: must be a finite number >= 0"):
            Simulator(SimConfig(), [agent([10], [2]), agent([10], [2], arrival=bad)])
    with pytest.raises(ConfigError, match=r"agents\[0\]\.initial_context"):
        Simulator(SimConfig(), [SimAgent(**two, initial_context=-64)])
    with pytest.raises(ConfigError, match=r"agents\[0\]\.gen"):
        Simulator(SimConfig(), [agent([10], [2**41])])
    # a round computes at least one token (the engine's hit ends one token before the prompt's end),
    # so a round that appends nothing is refused rather than run as a made-up 1-token forward
    with pytest.raises(ConfigError, match=r"agents\[0\]\.append: every round needs 1 <= append .*round 1 has 0"):
        Simulator(SimConfig(), [SimAgent(0.0, np.array([640, 0]), np.array([2, 2]))])
    with pytest.raises(ConfigError, match="sim.prefill_layer_overhead_s"):
        SimConfig(prefill_layer_overhead_s=-1e-3)
    with pytest.raises(ConfigError, match="sim.activation_reserve_bytes"):
        SimConfig(activation_reserve_bytes=-1.0)
    with pytest.raises(ConfigError, match="sim.eff_memory"):
        SimConfig(eff_memory=5.0)
    # too little HBM names the HBM (the default GPU's HBM names the node count, as above)
    with pytest.raises(ConfigError,
                       match=r"^sim\.hardware\.hbm_bytes: ds-27b weights .* raise sim\.hardware\.hbm_bytes$"):
        Simulator(SimConfig(model="ds-27b", prefill_nodes=1, hardware=HardwareConfig(hbm_bytes=1e9)),
                  [agent([10], [2])])


def _reference_rounds(a: SimAgent, z: int = 64):
    """Plain-loop reference of each round of ``a``: (hit, read tokens, prompt, whole request).

    The prompt is the round's hit plus its append. A given hit stands when the agent has had a
    context that long (its initial one, or any round's: the KV of every round stays in storage),
    else it is the previous context. What is read is the whole Full Blocks of the part of the hit
    whose KV is stored: of a round's context, all but the last generated token."""
    contexts = [(a.initial_context, a.initial_context)]  # (context, its stored tokens), oldest first
    out = []
    for r in range(len(a.append)):
        context, stored = contexts[-1]
        hit = context if a.hit is None else int(a.hit[r])
        if hit > context:
            holders = [st for c, st in contexts if c >= hit]  # earlier contexts that hold the hit
            hit, stored = (hit, max(holders)) if holders else (context, stored)
        need = hit + int(a.append[r]) + int(a.gen[r])
        out.append((hit, min(hit, stored) // z * z, hit + int(a.append[r]), need))
        contexts.append((need, need - 1))
    return out


# a trajectory whose context drops (compaction): round 2 hits 2000 of its 5,450-token context
_COMPACTING = SimAgent(0.0, np.array([5000, 300, 300, 200]), np.array([100, 50, 50, 40]), None,
                       np.array([0, 99_999, 2000, 99_999]))


def test_requests_that_do_not_fit_fail_at_start_naming_the_field():
    base = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=2, fetch_period_s=FETCH)
    kvb = cost.stored_kv_bytes_per_token(base.spec, "fp8")
    _, read, prompt, need = map(max, zip(*_reference_rounds(_COMPACTING)))
    assert (read, prompt, need) == (5056, 5400, 5450)  # all in round 1
    # the DRAM buffer must hold the largest prompt's KV (the DE buffer holds all of it until the DE's
    # H2D; a read, at most the prompt, all of its blocks): exactly enough runs, a byte less fails at start
    fits = base.replace(hardware=HardwareConfig(dram_buffer_bytes=prompt * kvb))
    assert not np.isnan(simulate(fits, [_COMPACTING]).requests["finish_s"]).any()
    with pytest.raises(ConfigError, match=r"hardware\.dram_buffer_bytes: agents\[0\] round 1 has a 5400-token prompt"):
        Simulator(base.replace(hardware=HardwareConfig(dram_buffer_bytes=prompt * kvb - 1)), [_COMPACTING])
    # full prefill holds the whole prompt's KV on the PE (layer-wise only depth / L of it)
    full = base.replace(prefill="full", activation_reserve_bytes=0.0)
    free = Simulator(full, [_COMPACTING]).pe_free_hbm
    for margin, ok in ((10, True), (-10, False)):
        cfg = full.replace(activation_reserve_bytes=free - (prompt + margin) * kvb)
        if ok:
            Simulator(cfg, [_COMPACTING])
            Simulator(cfg.replace(prefill="layerwise"), [_COMPACTING])
        else:
            with pytest.raises(ConfigError, match=r"hardware\.hbm_bytes: agents\[0\] round 1 has a 5400-token prompt"):
                Simulator(cfg, [_COMPACTING])
            Simulator(cfg.replace(prefill="layerwise"), [_COMPACTING])  # 2 of 30 layers fit easily
    # a DE holds the whole request; the trajectory's total (6,040 tokens) is not the bound
    # (PEs as many as DEs and no activation reserve: the PEs keep room when the DEs have little)
    even = base.replace(prefill_nodes=2, activation_reserve_bytes=0.0)
    sim = Simulator(even, [_COMPACTING])
    frac, w_de = even.hardware.hbm_usable_fraction, sim.de_model.weight_bytes_per_gpu
    assert int(_COMPACTING.append.sum() + _COMPACTING.gen.sum()) == 6040
    for margin, ok in ((5, True), (-5, False)):
        cfg = even.replace(hardware=HardwareConfig(hbm_bytes=((need + margin) * kvb + w_de) / frac))
        if ok:
            assert not np.isnan(simulate(cfg, [_COMPACTING]).requests["finish_s"]).any()
        else:
            with pytest.raises(ConfigError, match=r"hardware\.hbm_bytes: agents\[0\] round 1 needs 5450 tokens"):
                Simulator(cfg, [_COMPACTING])


def test_round_contexts_match_a_plain_loop_over_random_trajectories():
    rng = np.random.default_rng(3)
    agents = []
    for i in range(30):
        n = int(rng.integers(1, 12))
        hit = rng.integers(0, 20_000, n).astype(float) if i % 3 else None
        agents.append(SimAgent(float(rng.uniform(0, 2)), rng.integers(1, 2000, n), rng.integers(1, 200, n), None, hit,
                               initial_context=int(rng.integers(0, 3000))))
    res = simulate(SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=2, fetch_period_s=FETCH), agents)
    r = res.requests
    ref = {(i, k): v for i, a in enumerate(agents) for k, v in enumerate(_reference_rounds(a))}
    for j in range(len(r["agent"])):
        _, read, prompt, _ = ref[(int(r["agent"][j]), int(r["round"][j]))]
        assert (r["hit_tokens"][j], r["hit_tokens"][j] + r["append_tokens"][j]) == (read, prompt)


@pytest.mark.parametrize("huge", [False, True])  # True: contexts too wide for the vectorised path
def test_round_hits_of_many_agents_match_a_plain_loop(huge):
    rng = np.random.default_rng(7)
    agents = []
    for i in range(40):
        n = int(rng.integers(1, 15))
        hit = rng.integers(0, 30_000, n).astype(float) if i % 4 else None
        init = int(rng.integers(0, 2**61)) if huge and i % 5 == 0 else int(rng.integers(0, 4000))
        agents.append(SimAgent(0.0, rng.integers(1, 3000, n), rng.integers(1, 300, n), None, hit, init))
    lens = np.array([len(a.append) for a in agents])
    offsets = np.concatenate([[0], np.cumsum(lens)])
    tokens = np.concatenate([a.append + a.gen for a in agents]).astype(np.int64)
    given = np.repeat([a.hit is not None for a in agents], lens)
    hits = np.concatenate([a.hit for a in agents if a.hit is not None])
    init = np.array([a.initial_context for a in agents], np.int64)
    got = round_hits(tokens, lens, offsets, init, given, hits)
    want = [hit for a in agents for hit, *_ in _reference_rounds(a)]
    np.testing.assert_array_equal(got, want)


def test_a_stalled_run_raises_and_says_what_waits():
    class NoDE(ClusterScheduler):  # a broken policy: never places a request on a DE
        def fetch_de(self, group_id, loads):
            return []

    with pytest.raises(RuntimeError, match=r"stalled at t = 0\.005 s: no event left but 3 of 3 requests unfinished "
                                           r"\(0 finished of 1 issued; waiting for a PE: 0, for a DE: 1.*request 0 "
                                           r"\(agents\[0\] round 0, 0 hit tokens\), waits for a DE\. Scheduler: NoDE"):
        Simulator(SimConfig(fetch_period_s=FETCH), [agent([100, 10, 10], [2, 2, 2])], scheduler_cls=NoDE).run()
    # stopping early on purpose is not a stall
    assert Simulator(SimConfig(fetch_period_s=FETCH), [agent([100, 10, 10], [2, 2, 2])]).run(max_events=2).events == 2


@pytest.mark.parametrize("limit", [0, 1, 5])
def test_max_events_handles_exactly_that_many_events(limit):
    """``max_events=n`` handles n events, none past the limit: with 0 nothing happens (the agent
    never arrives, so its requests are unissued, NaN times)."""
    sim = Simulator(SimConfig(fetch_period_s=FETCH), [agent([100, 10, 10], [2, 2, 2])])
    res = sim.run(max_events=limit)
    assert res.events == limit
    if limit == 0:
        assert sim.now == 0.0 and len(sim.heap) == 1  # the arrival, still pending
    with pytest.raises(ValueError, match=r"max_events must be >= 0 \(got -1\)"):
        Simulator(SimConfig(fetch_period_s=FETCH), [agent([100], [2])]).run(max_events=-1)


def test_simulator_checks_a_custom_read_plan():
    class WrongSide(ClusterScheduler):  # labels a DE read as a PE read: the DE buffer would never be freed
        def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
            return ReadPlan("pe", hit_blocks)

    agents = [SimAgent(0.0, np.array([64]), np.array([2]), None, np.array([640]), initial_context=640)]
    with pytest.raises(ValueError, match=r"WrongSide\.read_plan: \('pe', 10\) for 10 hit blocks under "
                                         r"loading='dual': de_blocks=10 of 10 means side 'de'"):
        Simulator(SimConfig(loading="dual"), agents, scheduler_cls=WrongSide).run()


def test_read_plan_of_a_custom_scheduler_must_give_whole_blocks():
    class FloatBlocks(ClusterScheduler):
        def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
            plan = super().read_plan(req, pe_node, de_node, {pe_node: 0.0, de_node: 1.0}, hit_blocks, block_tokens)
            return plan._replace(de_blocks=float(plan.de_blocks) + 0.5)  # PE side (shorter queue): 0.5

    agents = [SimAgent(0.0, np.array([64]), np.array([2]), None, np.array([640]), initial_context=640)]
    with pytest.raises(TypeError, match=r"FloatBlocks\.read_plan: de_blocks must be an int \(got 0\.5\)"):
        Simulator(SimConfig(loading="dual"), agents, scheduler_cls=FloatBlocks).run()


def test_initial_context_lets_round0_hit_a_warm_store():
    cfg = SimConfig(loading="pe_read", prefill="layerwise", policy="round_robin", fetch_period_s=FETCH)
    warm = SimAgent(0.0, np.array([100]), np.array([2]), None, np.array([640]), initial_context=640)
    cold = SimAgent(0.0, np.array([100]), np.array([2]), None, np.array([640]))
    kvb = cost.stored_kv_bytes_per_token(cfg.spec, "fp8")
    assert simulate(cfg, [warm]).requests["read_bytes_pe"][0] == pytest.approx(640 * kvb)
    assert simulate(cfg, [cold]).requests["hit_tokens"][0] == 0  # nothing stored before round 0


@pytest.mark.parametrize("topk,index", [(None, 0.0), (2048, 4e-10)])
def test_max_bsz_within_is_the_largest_chunk_under_a_budget(topk, index):
    """The closed-form inverse of time_s agrees with a brute-force scan over integer chunk sizes."""
    from dualpath_jax.sim.compute import ComputeModel
    model = ComputeModel(prefill_overhead_s=0.0, s_per_token=0.0, s_per_key=3e-8, s_per_index_key=index, topk=topk)
    for cached in (0, 1, 500, 2000, 2047, 2048, 2049, 10_000, 60_000):
        for seconds in (1e-6, 1e-3, 0.01, 0.1, 0.3):
            times = np.array([model.time_s(cached, b) for b in range(0, 20_001)])
            brute = int(np.flatnonzero(times <= seconds)[-1])
            x = model.max_bsz_within(cached, seconds)
            assert brute <= x < brute + 1 or (brute == 20_000 and x >= brute), (cached, seconds, x, brute)
    assert model.max_bsz_within(100, 0.0) == 0.0
    free = ComputeModel(prefill_overhead_s=0.0, s_per_token=0.0, s_per_key=0.0)
    assert free.max_bsz_within(100, 0.1) == float("inf")


def test_a_dense_model_too_large_for_a_gpu_names_hbm_not_more_nodes(tmp_path):
    """More nodes share a MoE model's routed experts, not a dense model's weights: the advice is HBM
    or the weights' bytes (a Llama-3.1-70B-shaped config.json, BF16: 141 GB on every 80 GB GPU)."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "torch_dtype": "bfloat16"}))
    with pytest.raises(ConfigError, match=r"^sim\.hardware\.hbm_bytes: .* \(141\.1 GB/GPU: a dense model's, whole on "
                       r"every GPU\) leave no HBM for KV on PEs \(80 GB each\); raise sim\.hardware\.hbm_bytes or"):
        Simulator(SimConfig(model=str(tmp_path), prefill_nodes=8, decode_nodes=8), [])


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_layerwise_holds_at_most_every_layer_of_a_shallow_model(tmp_path, layers):
    """Layer-wise prefill keeps ``min(depth, L)`` of L layers on the PE: with depth 2, a one- or
    two-layer model holds every layer, as full prefill does; a three-layer one two thirds."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "torch_dtype": "bfloat16"}))
    cfg = SimConfig(model=str(tmp_path), prefill_nodes=1, decode_nodes=1, layerwise_depth=2)
    full = Simulator(cfg.replace(prefill="full"), [agent([100], [4])]).pe_max_kv_tokens
    layerwise = Simulator(cfg.replace(prefill="layerwise"), [agent([100], [4])]).pe_max_kv_tokens
    assert layerwise == pytest.approx(full * layers / min(2, layers), rel=1e-12)


def test_beta_is_five_seconds_of_a_pe_at_the_rounds_cached_and_new_tokens():
    """beta (PAPER.md 5.2, 8.4: the prompt tokens one GPU prefills in 5 s) is sized for the mean
    round: agents that start from a warm store (32,768 tokens, 429 new) count that context as
    cached, and a given hit below the context caps it."""
    cfg = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1)
    warm = [SimAgent(0.0, np.array([429]), np.array([176]), initial_context=32768)] * 4
    sim = Simulator(cfg, warm)
    rate = sim.pe_model.prefill_tokens_per_s(32768, 429) * (32768 + 429) / 429
    assert sim.sched.config.beta_tokens == pytest.approx(cfg.beta_s * rate, rel=1e-12)
    # two rounds: round 1 hits 1,000 of its 32,768 + 429 + 176 context; the mean round caches (32768 + 1000) / 2
    capped = [SimAgent(0.0, np.array([429, 429]), np.array([176, 176]), None, np.array([32768, 1000]),
                       initial_context=32768)]
    sim = Simulator(cfg, capped)
    rate = sim.pe_model.prefill_tokens_per_s(16884, 429) * (16884 + 429) / 429
    assert sim.sched.config.beta_tokens == pytest.approx(cfg.beta_s * rate, rel=1e-12)
