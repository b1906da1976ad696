"""Simulator: the compute model (fitted, calibrated, explicit), DSA's decode reads, EP-synchronised
groups and the DE's decode pace."""

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.model import cost
from dualpath_jax.sim import HardwareConfig, SimAgent, SimConfig, Simulator, simulate
from sim_cases import FETCH, agent


def test_fit_compute_model_recovers_known_coefficients():
    from dualpath_jax.sim.compute import ComputeModel, fit_compute_model
    truth = ComputeModel(prefill_overhead_s=0.01, s_per_token=2e-4, s_per_key=3e-8, decode_overhead_s=0.005,
                         s_per_sequence=1e-4, s_per_context_token=2e-8)
    rng = np.random.default_rng(0)
    pre = []
    for _ in range(20):
        cached = rng.integers(0, 5000, 3).tolist()
        bsz = rng.integers(1, 300, 3).tolist()
        pre.append((cached, bsz, truth.prefill_time_s(cached, bsz)))
    dec = [(b, c, truth.decode_step_s(b, c)) for b, c in zip(rng.integers(1, 64, 10), rng.integers(100, 90000, 10))]
    fit = fit_compute_model(pre, dec)
    for f in ("prefill_overhead_s", "s_per_token", "s_per_key", "decode_overhead_s", "s_per_sequence",
              "s_per_context_token"):
        assert getattr(fit, f) == pytest.approx(getattr(truth, f), rel=1e-6)
    with pytest.raises(ValueError, match="prefill_samples"):
        fit_compute_model(pre[:2])


def test_public_calibration_gives_the_public_figures_back():
    # DeepSeek's public V3/R1 figures (PAPER.md 9) on the public deployment, typed in here:
    # prefill 73.7k input tokens/s per 8-GPU node at a 56.3% hit rate, 4K prompts, 16K tokens per
    # GPU per forward; decode 14.8k tokens/s per node at 21 tokens/s per user, 4K prompts, EP144.
    from dualpath_jax.model import get_spec
    from dualpath_jax.sim.compute import calibrate_from_public
    ref = get_spec("deepseek-v3.2").replace(name="deepseek-v3", index_n_heads=0, index_head_dim=0, index_topk=0)
    m = calibrate_from_public(ref, peak_flops=1979e12, hbm_bytes_per_s=3.35e12, ep_size=144)
    hit = int(4096 * 0.563)
    n = 16384 // (4096 - hit)  # requests of one forward of about 16K computed tokens
    t = m.prefill_time_s([hit] * n, [4096 - hit] * n)
    assert n * (4096 - hit) / t == pytest.approx(73.7e3 * (1 - 0.563) / 8, rel=0.01)
    batch = 14.8e3 / 21 / 8
    step = m.decode_step_s(batch, batch * 4096)
    assert 1 / step == pytest.approx(21.0, rel=1e-3)
    assert 8 * batch / step == pytest.approx(14.8e3, rel=1e-3)
    # the step follows the batch (one token computed per sequence) and the context (KV read)
    assert m.decode_step_s(2 * batch, 2 * batch * 4096) > step * 1.3
    assert m.decode_step_s(batch, batch * 8192) > step * 1.1
    assert m.decode_step_s(batch, batch * 4096) - m.decode_step_s(batch / 2, batch * 4096) == pytest.approx(
        batch / 2 * m.s_per_sequence, rel=1e-9)


def test_dsa_decode_reads_every_indexer_key_but_top_k_kv():
    from dualpath_jax.model import get_spec
    from dualpath_jax.sim.compute import calibrate_from_public
    spec = get_spec("deepseek-v3.2")  # top-k 2048; indexer key 128 fp8 + 4 B scale per layer
    m = calibrate_from_public(spec, peak_flops=1979e12, hbm_bytes_per_s=3.35e12, ep_size=32)
    # past top-k, one more context token adds only its indexer key: 61 * 132 B at 0.9 * 3.35 TB/s
    # plus scoring it (2 * 64 heads * 128 dims * 61 layers FLOPs at the FP8 peak's attention share)
    extra = m.decode_step_s(1, 10_001) - m.decode_step_s(1, 10_000)
    eff_attn = 640 / 989
    assert extra == pytest.approx(61 * 132 / (0.9 * 3.35e12) + 2 * 64 * 128 * 61 / (1979e12 * eff_attn), rel=1e-6)
    # below top-k it also reads and attends to the KV (656 B per layer)
    below = m.decode_step_s(1, 1001) - m.decode_step_s(1, 1000)
    assert below - extra == pytest.approx(61 * 656 / (0.9 * 3.35e12) + m.s_per_key, rel=1e-6)
    # a batch mixing short and long sequences reads min(context, top-k) of each: 49 x 500 + 2048
    mixed = [500] * 49 + [100_000]
    assert m.attended(500) == 500 and m.attended(100_000) == 2048
    exact = m.decode_step_s(50, sum(mixed), sum(m.attended(c) for c in mixed))
    bound = m.decode_step_s(50, sum(mixed))  # min(total, batch x top-k) = 102,400 entries
    assert bound - exact == pytest.approx((102_400 - 26_548) * (below - extra), rel=1e-6)
    assert m.decode_step_s(50, 50 * 500, 50 * 500) == m.decode_step_s(50, 50 * 500)  # all short: the same


def test_a_de_prices_each_sequences_top_k_on_its_own():
    """The simulator's DE sums min(context, top-k) over its sequences: a long sequence beside short
    ones does not lift the short ones' reads to top-k (PAPER.md 6.1, DSA; ds-27b: top-k 1024)."""
    hw = HardwareConfig(gpus_per_node=1)
    cfg = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1, hardware=hw, loading="oracle",
                    fetch_period_s=FETCH)
    contexts, gen = [20_000] + [300] * 7, 400
    sim = Simulator(cfg, [agent([c], [gen]) for c in contexts])
    r = sim.run().requests
    m = sim.de_model
    assert m.topk == 1024
    joined = r["decode_start_s"].max()
    assert (r["finish_s"] > joined).all()  # every sequence decodes when the last one joins
    means = [c + (gen - 1) / 2.0 for c in contexts]  # 20,199.5 and 7 x 499.5
    step = m.decode_step_s(8, sum(means), 1024 + 7 * 499.5)
    # the last joiner's first step is the step of all eight
    first_steps = (r["second_token_s"] - r["decode_start_s"])[r["decode_start_s"] == joined]
    assert first_steps.max() == pytest.approx(cfg.de_join_s + step, rel=1e-9)
    assert step < m.decode_step_s(8, sum(means))  # the batch-wide bound would price 8 x 1024 entries


def test_explicit_compute_model_is_used():
    from dualpath_jax.sim.compute import ComputeModel
    model = ComputeModel(prefill_overhead_s=0.5, s_per_token=0.0, s_per_key=0.0, decode_overhead_s=0.1)
    cfg = SimConfig(loading="oracle", compute=model, fetch_period_s=FETCH)
    res = simulate(cfg, [agent([100], [11])])
    # tick, one 0.5 s forward, then 10 decode steps of 0.1 s
    assert res.end_s == pytest.approx(FETCH + 0.5 + 10 * 0.1, rel=1e-12)
    with pytest.raises(ConfigError, match="sim.compute"):
        SimConfig(compute={"prefill_overhead_s": 1.0})


def test_ep_group_forward_shares_the_routed_experts():
    """PAPER.md 5.5: DP attention, then every GPU of an EP group syncs and the routed experts compute
    all members' tokens, spread over the group. Alone on a 16-GPU group a request pays its own part
    in full and 1/16 of its routed-expert time (1/32 per decode step on the 32 DE GPUs); two on two
    members each pay the routed time of the group's mean tokens; without ep_sync each GPU pays its
    own tokens' routed time."""
    from dualpath_jax.sim.compute import ComputeModel
    model = ComputeModel(prefill_overhead_s=0.01, s_per_token=1e-4, s_per_key=0.0, decode_overhead_s=0.002,
                         s_per_sequence=1e-4, s_per_routed_token=6e-5)
    for sync, g_pe, g_de in ((True, 16, 32), (False, 1, 1)):
        cfg = SimConfig(loading="oracle", compute=model, fetch_period_s=FETCH, ep_sync=sync)
        res = simulate(cfg, [agent([1000], [11])])
        prefill = 0.01 + 1000 * (1e-4 - 6e-5) + 1000 * 6e-5 / g_pe
        step = 0.002 + (1e-4 - 6e-5) + 6e-5 / g_de
        assert res.end_s == pytest.approx(FETCH + prefill + 10 * step, rel=1e-12)
    cfg = SimConfig(loading="oracle", compute=model, fetch_period_s=FETCH, ep_sync=True, policy="round_robin")
    r = simulate(cfg, [agent([1000], [1]), agent([600], [1])]).requests
    assert len(set(r["pe"].tolist())) == 2  # one request on each of two members of the PE group
    routed = 6e-5 * 1600 / 16
    assert r["first_token_s"][0] == pytest.approx(FETCH + 0.01 + 1000 * 4e-5 + routed, rel=1e-12)
    assert r["first_token_s"][1] == pytest.approx(FETCH + 0.01 + 1000 * 4e-5 + routed, rel=1e-12)  # the slowest
    with pytest.raises(ConfigError, match="compute.s_per_routed_token"):
        ComputeModel(prefill_overhead_s=0.0, s_per_token=1e-4, s_per_key=0.0, s_per_sequence=1e-4,
                     s_per_routed_token=2e-4)


def test_calibrated_routed_share_is_the_routed_experts_flops_share():
    from dualpath_jax.model import get_spec
    for name, expected in (("deepseek-v3.2", True), ("qwen2.5-32b", False)):
        spec = get_spec(name)
        m = Simulator(SimConfig(model=name), [agent([100], [2])]).pe_model
        share = cost.routed_active_params(spec) / cost.active_linear_params(spec)
        assert (share > 0) is expected
        assert m.s_per_routed_token == pytest.approx(share * m.s_per_token, rel=1e-12)
        assert m.s_per_routed_token <= m.s_per_sequence


def test_de_group_steps_at_its_slowest_members_pace():
    """With ep_sync a DE group's step time is the max over its engines' own parts of a step plus
    the routed experts' part at the group's mean sequences per GPU (recomputed here at every
    reschedule from the sequences each engine decodes: their mean contexts and, DSA, min(context,
    top-k) of each), while requests join and finish on several members."""

    class Checked(Simulator):
        checks = 0

        def _de_reschedule(self, u):
            unit = self.de_units[u]
            assert len(unit.engines) == 32  # DS-V3.2 2P4D: one EP group of all 4 DE nodes
            m = self.de_model
            seqs = {e: [ctx for _, _, de, ctx in unit.heap if de == e] for e in unit.engines}
            own = [m.decode_step_s(len(c), sum(c), sum(min(x, m.topk) for x in c)) - m.s_per_routed_token * len(c)
                   for c in seqs.values() if c]
            n = sum(len(c) for c in seqs.values())
            assert unit.step_s == pytest.approx(max(own) + m.s_per_routed_token * n / 32 if n else 0.0, rel=1e-12)
            Checked.checks += 1
            super()._de_reschedule(u)

    rng = np.random.default_rng(3)
    agents = [agent(rng.integers(100, 900, 4), rng.integers(2, 300, 4), arrival=float(i) * 0.002) for i in range(40)]
    cfg = SimConfig(loading="dual", prefill="layerwise", policy="dualpath")  # DS-V3.2: MoE, EP groups
    assert cfg.uses_ep_sync
    res = Checked(cfg, agents).run()
    assert not np.isnan(res.requests["finish_s"]).any() and Checked.checks >= 2 * 40 * 4
    assert len(set(res.requests["de"].tolist())) > 1  # several members were loaded


def test_an_engine_alone_steps_at_its_own_decode_time_to_the_bit():
    """Without ep_sync (each DE its own unit) a MoE model's step is ``decode_step_s`` exactly: the
    routed experts' share is neither taken off nor added back (no rounding)."""

    class Checked(Simulator):
        checks = 0

        def _de_reschedule(self, u):
            unit = self.de_units[u]
            (de,) = unit.engines
            m = self.de_model
            c = [ctx for _, _, _, ctx in unit.heap]
            if c:
                assert unit.step_s == m.decode_step_s(len(c), self.de_ctx[de], self.de_att[de])
                Checked.checks += 1
            super()._de_reschedule(u)

    rng = np.random.default_rng(5)
    agents = [agent(rng.integers(100, 900, 3), rng.integers(2, 300, 3), arrival=float(i) * 0.003) for i in range(150)]
    # one PE and one DE GPU: the DE's batch grows past a hundred sequences, where (X - r) + r != X happens
    cfg = SimConfig(model="ds-27b", loading="dual", prefill="layerwise", policy="dualpath", ep_sync=False,
                    prefill_nodes=1, decode_nodes=1, hardware=HardwareConfig(gpus_per_node=1))
    assert cfg.spec.n_routed_experts and Checked(cfg, agents).run().requests["finish_s"].size == 450
    assert Checked.checks >= 150


def test_ep_groups_hold_the_experts_and_step_together():
    """An EP group's GPUs share the routed experts (the weights per GPU), step together as one
    unit and fetch as one scheduler group; by default one group per role."""
    from dualpath_jax.sim.compute import weight_bytes_per_gpu
    agents = [agent([100], [3])]
    whole = Simulator(SimConfig(), agents)  # 2P4D of 8 GPUs
    assert [u.engines for u in whole.pe_units] == [list(range(16))]
    assert [u.engines for u in whole.de_units] == [list(range(16, 48))]
    split = Simulator(SimConfig(prefill_nodes=4, pe_ep_nodes=2, de_ep_nodes=2), agents)  # 4P4D
    assert [u.engines for u in split.pe_units] == [list(range(16)), list(range(16, 32))]
    assert [u.engines for u in split.de_units] == [list(range(32, 48)), list(range(48, 64))]
    spec = whole.cfg.spec
    moe_layers = sum(spec.is_moe_layer(l) for l in range(spec.n_layers))
    routed = moe_layers * spec.n_routed_experts * 3 * spec.d_model * spec.moe_d_ff  # FP8: 1 byte each
    for sim, pe_gpus, de_gpus in ((whole, 16, 32), (split, 16, 16)):
        assert sim.pe_model.weight_bytes_per_gpu == weight_bytes_per_gpu(spec, pe_gpus, "fp8")
        assert sim.de_model.weight_bytes_per_gpu == weight_bytes_per_gpu(spec, de_gpus, "fp8")
    assert split.de_model.weight_bytes_per_gpu - whole.de_model.weight_bytes_per_gpu == pytest.approx(
        routed / 16 - routed / 32, rel=1e-12)
    for sim in (whole, split):  # the scheduler's groups: the EP groups, keyed by their first node
        assert list(sim.sched.pe_groups.values()) == [u.engines for u in sim.pe_units]
        assert list(sim.sched.de_groups.values()) == [u.engines for u in sim.de_units]
    assert list(split.sched.de_groups) == [4, 6]
    dense = Simulator(SimConfig(model="qwen2.5-32b", kv_dtype="fp16", weight_dtype="fp8", prefill_nodes=1,
                                decode_nodes=2, hardware=HardwareConfig(dram_buffer_bytes=320e9)), agents)
    assert not dense.cfg.uses_ep_sync and list(dense.sched.de_groups) == [1, 2]  # no EP: a group per node
    with pytest.raises(ConfigError, match=r"sim.pe_ep_nodes: .* with EP over 8 GPUs\) .*add nodes to an EP group "
                                          r"\(sim.pe_ep_nodes\)"):
        Simulator(SimConfig(pe_ep_nodes=1), agents)  # DS-V3.2's experts do not fit 8 GPUs
    with pytest.raises(ConfigError, match="sim.de_ep_nodes: 3 nodes per EP group must divide the role's 4 nodes"):
        SimConfig(de_ep_nodes=3)
    with pytest.raises(ConfigError, match="sim.pe_ep_nodes"):
        SimConfig(pe_ep_nodes=0)


def test_de_join_stalls_the_units_decode():
    from dualpath_jax.sim.compute import ComputeModel
    model = ComputeModel(prefill_overhead_s=0.5, s_per_token=0.0, s_per_key=0.0, decode_overhead_s=0.1)
    cfg = SimConfig(loading="oracle", compute=model, fetch_period_s=FETCH, de_join_s=0.05, prefill_nodes=1,
                    decode_nodes=1, hardware=HardwareConfig(gpus_per_node=1))
    # one PE and one DE; the second agent arrives at 0.25 s and joins during the first one's decode
    res = simulate(cfg, [agent([100], [11]), SimAgent(0.25, np.array([100]), np.array([3]))])
    r = res.requests
    start1 = FETCH + 0.5  # tick, one 0.5 s forward
    start2 = start1 + 0.5  # its tick (0.27 s) falls in the first forward; its own forward follows
    assert list(r["decode_start_s"]) == pytest.approx([start1, start2], rel=1e-12)
    assert r["second_token_s"][0] == pytest.approx(start1 + 0.05 + 0.1, rel=1e-12)
    # the first request's 10 steps of 0.1 s pause for its own admission and for the second one's
    assert r["finish_s"][0] == pytest.approx(start1 + 2 * 0.05 + 10 * 0.1, rel=1e-12)
    assert r["finish_s"][1] == pytest.approx(start2 + 0.05 + 2 * 0.1, rel=1e-12)
    with pytest.raises(ConfigError, match="sim.de_join_s"):
        SimConfig(de_join_s=-1.0)


def test_a_compute_model_whose_forward_takes_no_time_is_refused():
    """A compute model whose every prefill coefficient is 0 would make a forward free (and the
    tokens per second that size alpha/beta a division by 0): the simulator's config refuses it,
    naming the field; one positive coefficient is enough."""
    from dualpath_jax.sim.compute import ComputeModel
    free = ComputeModel(prefill_overhead_s=0.0, s_per_token=0.0, s_per_key=0.0, decode_overhead_s=0.01)
    with pytest.raises(ConfigError, match=r"^sim\.compute: its prefill forward takes no time") as e:
        SimConfig(model="ds-27b", compute=free)
    assert e.value.field == "sim.compute"
    for field in ("prefill_overhead_s", "s_per_token", "s_per_key", "s_per_index_key"):
        coef = {"prefill_overhead_s": 0.0, "s_per_token": 0.0, "s_per_key": 0.0, field: 1e-3}
        res = simulate(SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1, compute=ComputeModel(**coef),
                                 fetch_period_s=FETCH), [agent([100], [5])])
        assert res.requests["first_token_s"][0] > 0
