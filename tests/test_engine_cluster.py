"""The runtime cluster end to end on a small case: tokens, byte conservation, failures, config errors."""

import contextlib
import dataclasses
import threading
import time

import jax
import numpy as np
import pytest
from engine_cases import FAST, TIME_MODEL, run_cluster, tiny_model
from engine_cases import stream as _stream

from dualpath_jax.config import ConfigError
from dualpath_jax.engine import report
from dualpath_jax.engine.cluster import EngineCluster
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.prefill import store_layout
from dualpath_jax.kvcache import block_keys
from dualpath_jax.model import get_spec, init_params
from dualpath_jax.sched import ABLATION_VARIANTS, ClusterScheduler, RunStalled
from dualpath_jax.store import BlockFailure, FailureCause, KVStore, LookupResult, StoreConfig, WriteResult
from dualpath_jax.workload import prompt_token_ids

AGENTS = [_stream("a", [150, 40, 70], [5, 9, 3]), _stream("b", [90, 100, 20], [12, 1, 7]),
          _stream("c", [200, 10], [4, 6])]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _run(model, config, store=None, agents=AGENTS, starts=None):
    return run_cluster(model, config, agents, store=store, starts=starts)


def _expected_link_bytes(result, layout, spec):
    """Closed-form bytes per link from the requests' hits and sides (no chunking in these runs)."""
    bpt, fb = layout.bytes_per_token, layout.full_block_bytes
    cfg = result.config
    out = {}

    def add(name, b):
        out[name] = out.get(name, 0) + b

    for r in result.requests:
        de_hit = r.read_bytes_de // fb * layout.block_tokens
        pe_hit = r.hit_tokens - de_hit
        new = r.prompt_tokens - r.hit_tokens
        node_pe, node_de = 0, cfg.prefill_nodes + (r.de - cfg.num_pe)
        add(f"snic_read/node{node_pe}", r.read_bytes_pe)
        add(f"snic_read/node{node_de}", r.read_bytes_de)
        # a CNIC's out link carries what it reads over PCIe, its in link what it writes; the loopback
        # copies (H2D, D2H) cross both (PAPER.md 2.6)
        add(f"cnic_in/pe{r.pe}", (pe_hit + de_hit) * bpt)            # H2D loopback + DE->PE RDMA
        add(f"cnic_out/pe{r.pe}", pe_hit * bpt + (pe_hit + new) * bpt)  # H2D loopback + what the DE buffer lacks
        add(f"cnic_out/de{r.de}", de_hit * bpt + r.prompt_tokens * bpt + r.blocks_persisted * fb)  # DE->PE, H2D, D2H
        add(f"cnic_in/de{r.de}", (pe_hit + new) * bpt + r.prompt_tokens * bpt + r.blocks_persisted * fb)  # PE, H2D, D2H
        add(f"snic_write/node{node_de}", r.blocks_persisted * fb)
    return out


def test_all_variants_same_tokens_as_no_cache_recompute_and_bytes_conserved(model):
    spec, params, layout = model
    results = {}
    for name in ABLATION_VARIANTS:
        results[name] = _run(model, ClusterConfig(**FAST).for_variant(name))
    results["split"] = _run(model, ClusterConfig(**FAST, loading="split", prefill="layerwise", policy="dualpath"))
    for name, res in results.items():
        assert len(res.requests) == sum(a.num_rounds for a in AGENTS)
        assert all(r.finished and not r.error for r in res.requests), name
        assert all(len(r.generated) == r.gen_target for r in res.requests)
        s = report.summarize(res)
        assert s["bytes_conserved"], (name, report.conservation(res))
        # hit KV comes from the store's whole blocks; the later rounds do hit
        assert all(r.hit_tokens == r.lookup_blocks * layout.block_tokens for r in res.requests)
        assert sum(r.hit_tokens for r in res.requests if r.round_index > 0) > 0
        total_hit = sum(r.hit_tokens for r in res.requests)
        snic = sum(v for k, v in s["snic_bytes"].items())
        if name == "oracle":
            assert snic == 0 and res.bypass_read_bytes == total_hit * layout.bytes_per_token
            assert all(v["bytes"] == 0 for v in res.links.values())
            continue
        assert snic == total_hit * layout.bytes_per_token
        expected = _expected_link_bytes(res, layout, spec)
        got = {k: v["bytes"] for k, v in res.links.items() if v["bytes"] or k in expected}
        assert got == {k: v for k, v in expected.items() if v or k in got}, name
    assert results["basic"].links["snic_read/node1"]["bytes"] == 0
    assert results["basic"].links["snic_read/node2"]["bytes"] == 0
    de_side = sum(r.read_bytes_de for r in results["dpl"].requests)
    assert de_side > 0  # the naive rule alternates sides, so some hits are read by DE nodes
    tokens = report.check_tokens(results, params, spec)
    assert tokens["compared_requests"] == sum(a.num_rounds for a in AGENTS)
    assert tokens["reference_checked_tokens"] >= sum(int(a.num_gen_tokens.sum()) for a in AGENTS)
    assert tokens["tokens_identical"], (tokens["reference_mismatches"], tokens["variant_divergences"])


def test_corrupt_block_is_recomputed_and_repaired(model):
    spec, params, layout = model
    store = KVStore(layout, StoreConfig(backend="memory"))
    cfg = ClusterConfig(**FAST).for_variant("dualpath")
    first = _run(model, cfg, store, agents=AGENTS[:1])
    key = block_keys(layout, prompt_token_ids(AGENTS[0], 0, spec.vocab_size))[1]
    raw = bytearray(store.raw_read(key))
    raw[-5] ^= 0xFF  # flip a byte in the last Layer Block of the round-0 prompt's second block
    store.raw_write(key, bytes(raw))
    assert not store.read([key])[0].ok
    second = _run(model, cfg, store, agents=AGENTS[:1])
    r0 = next(r for r in second.requests if r.round_index == 0)
    assert [f.cause for f in r0.read_failures] == [FailureCause.CHECKSUM_MISMATCH]
    assert r0.lookup_blocks == 2 and r0.hit_blocks == 1  # the hit stops at the bad block
    assert [r.generated for r in second.requests] == [r.generated for r in first.requests]
    assert store.read([key])[0].ok  # the DE persisted the recomputed block again
    assert report.conservation(second)["bytes_conserved"]


class _NoWrites(KVStore):
    """A memory store whose writes all fail (a full disk): nothing the DEs persist lands."""

    def write(self, keys, blocks):
        return [WriteResult(k, BlockFailure(k, FailureCause.UNWRITABLE, "disk full")) for k in keys]


def test_failed_persists_are_reported_and_later_rounds_recompute(model):
    spec, params, layout = model
    res = _run(model, ClusterConfig(**FAST).for_variant("dualpath"), _NoWrites(layout, StoreConfig(backend="memory")))
    z = layout.block_tokens
    for r in res.requests:  # every Full Block of the round's new KV was attempted and failed
        assert r.blocks_persisted == 0 and r.hit_tokens == 0 and not r.error
    rows = report.request_rows(res)
    assert sum(len(row["persist_failures"]) for row in rows) > 0
    assert all(set(row["persist_failures"]) <= {"unwritable"} for row in rows)
    summary = report.summarize(res)
    assert summary["persist_failures"] == sum(len(row["persist_failures"]) for row in rows)
    assert summary["num_failed"] == 0 and summary["read_failures"] == 0
    # the last round of each agent persists its whole context: floor(context / Z) blocks
    last = {r.trajectory_id: r for r in res.requests}
    assert all(len(r.persist_failures) == (r.prompt_tokens + r.gen_target) // z for r in last.values())


class _UnreadableIndex(KVStore):
    """A memory store whose lookups fail (an unreadable index) once ``broken`` is set."""

    broken = False

    def lookup(self, keys):
        if self.broken and len(keys):
            return LookupResult(0, BlockFailure(keys[0], FailureCause.UNREADABLE, "index unreadable"))
        return super().lookup(keys)


def test_a_failed_lookup_is_recorded_on_the_request_and_its_prompt_recomputed(model):
    spec, params, layout = model
    store = _UnreadableIndex(layout, StoreConfig(backend="memory"))
    cfg = ClusterConfig(**FAST).for_variant("dualpath")
    first = _run(model, cfg, store, agents=AGENTS[:1])
    store.broken = True
    second = _run(model, cfg, store, agents=AGENTS[:1])
    for r in second.requests:  # every round had blocks in the store (the first run wrote them)
        assert [(f.cause, f.detail) for f in r.read_failures] == [(FailureCause.UNREADABLE, "index unreadable")]
        assert r.hit_tokens == 0 and r.finished
    assert [r.generated for r in second.requests] == [r.generated for r in first.requests]
    assert report.summarize(second)["read_failures"] == len(second.requests)


def test_a_store_layout_that_names_other_weights_is_refused(model):
    spec, params, layout = model
    other = jax.tree.map(lambda x: x + 1, params)
    for bad, why in ((store_layout(spec, other, layout.kv_dtype), "not the weights fingerprint"),
                     (dataclasses.replace(layout, namespace=""), "names no weights")):
        with pytest.raises(ConfigError, match=f"store.layout: namespace .*{why}"):
            EngineCluster(ClusterConfig(**FAST), spec, params, bad, KVStore(bad, StoreConfig(backend="memory")),
                          time_model=TIME_MODEL, prefill_tokens_per_s=1e4)


def test_every_request_finishes_or_fails_with_a_cause(model):
    spec, params, layout = model
    # one Full Block of DRAM per node: reads and hand-offs of more than one block cannot fit
    cfg = ClusterConfig(**{**FAST, "buffer_bytes": layout.full_block_bytes}).for_variant("basic")
    res = _run(model, cfg)
    assert len(res.requests) == sum(a.num_rounds for a in AGENTS)
    for r in res.requests:
        assert r.finished != bool(r.error)
    failed = [r for r in res.requests if r.error]
    assert failed and all("buffer" in r.error or r.error.startswith("not run: round") for r in failed)
    t = report.request_table(res)
    assert int((~t.ok).sum()) == len(failed)
    assert report.summarize(res)["num_failed"] == len(failed)


def test_requests_that_each_fit_the_de_buffer_never_block_each_other_there(model):
    """A DE-side read reserves the hand-off's DE buffer space with its hit's: requests that each fit
    alone (4 hit + 2.4 new blocks of a 9-block buffer) must not hold their hits while each waits for
    the other's space (they did, until timeout_s, and failed every attempt)."""
    spec, params, layout = model
    fb = layout.full_block_bytes
    agents = [_stream(f"b{i}", [250, 150], [10, 2]) for i in range(8)]  # round 1 hits 4 blocks, appends ~154
    cfg = ClusterConfig(**{**FAST, "buffer_bytes": 9 * fb, "timeout_s": 8.0, "max_attempts": 1,
                           "de_hbm_kv_bytes": 64 * fb}).for_variant("dualpath")
    res = run_cluster(model, cfg, agents)
    assert [r.error for r in res.requests if r.error] == []
    de_read = [r for r in res.requests if r.read_bytes_de]
    assert len(de_read) >= 2  # the case: several DE-side reads at once
    tokens = report.check_tokens({"dualpath": res}, params, spec)
    assert tokens["tokens_identical"], tokens["reference_mismatches"]
    assert not res.leaks


def test_online_arrivals_and_think_time(model):
    spec, params, layout = model
    agents = [dataclasses.replace(AGENTS[0], think_time_s=np.array([0.0, 0.3, 0.2]))]
    cfg = ClusterConfig(**FAST).for_variant("dualpath")
    store = KVStore(layout, StoreConfig(backend="memory"))
    cluster = EngineCluster(cfg, spec, params, layout, store, time_model=TIME_MODEL, prefill_tokens_per_s=1e4)
    res = cluster.run(agents, [0.25], use_think_time=True)
    rs = sorted(res.requests, key=lambda r: r.round_index)
    assert rs[0].arrival_s >= 0.25
    for prev, cur, think in zip(rs, rs[1:], (0.3, 0.2)):
        assert cur.arrival_s >= max(prev.finish_s, prev.persisted_s) + think - 1e-3


@pytest.mark.parametrize("field,value", [("prefill_nodes", 0), ("decode_nodes", 0), ("engines_per_node", 0),
                                         ("snic_bytes_per_s", 0.0), ("snic_bytes_per_s", -1.0),
                                         ("cnic_bytes_per_s", 0.0), ("buffer_bytes", 0), ("loading", "both"),
                                         ("prefill", "chunked"), ("policy", "random"), ("z_factor", 0.5)])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"cluster.{field}"):
        ClusterConfig(**{field: value})


@pytest.mark.parametrize("path, value, field", [
    ("workload.rounds", 0, "workload.rounds"), ("workload.num_agents", -3, "workload.num_agents"),
    ("workload.max_files", 0, "workload.max_files"), ("workload.token_divisor", 0, "workload.token_divisor"),
    ("arrivals.mode", "onlin", "arrivals.mode"), ("arrivals.aps", -1.0, "arrivals.aps"),
    ("calibrate.load_over_oracle", -2.0, "calibrate.load_over_oracle"), ("window_s", 0.0, "window_s"),
    ("model.kv_dtype", "f16x", "model.kv_dtype"), ("cluster.snic_bytes_per_s", -1.0, "cluster.snic_bytes_per_s"),
    ("cluster.snic_gbps", 1.0, "cluster.snic_gbps"),
])
def test_engine_ablation_config_is_checked_before_anything_runs(path, value, field):
    from config_files import get_config

    from dualpath_jax.studies.engine_ablation import check_config

    config = get_config("engine_ablation", "quick")
    check_config(config)  # the committed config passes
    head, _, leaf = path.rpartition(".")
    node = config
    for part in head.split(".") if head else ():
        node = node[part]
    with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
        node[leaf] = value
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        check_config(config)


def test_buffer_smaller_than_a_block_and_unknown_variant_fail_at_start(model):
    spec, params, layout = model
    cfg = ClusterConfig(buffer_bytes=layout.full_block_bytes - 1)
    with pytest.raises(ConfigError, match="cluster.buffer_bytes"):
        EngineCluster(cfg, spec, params, layout, KVStore(layout, StoreConfig(backend="memory")),
                      time_model=TIME_MODEL, prefill_tokens_per_s=1e4)
    with pytest.raises(ConfigError, match="cluster.de_hbm_kv_bytes"):
        ClusterConfig(de_hbm_kv_bytes=1000).check_layout(layout.full_block_bytes)
    with pytest.raises(ConfigError, match="variants"):
        ClusterConfig().for_variant("turbo")


@pytest.mark.slow
def test_dualpath_beats_basic_when_storage_bound(model):
    """1P2D with slow SNICs: Basic reads every hit through the PE node's SNIC, DualPath spreads the
    reads over all three SNICs, so its JCT is clearly lower (emulated link time dominates)."""
    spec, params, layout = model
    agents = [_stream(f"s{i}", [300 + 20 * i, 20, 30, 25], [3, 4, 2, 3]) for i in range(6)]
    base = dict(FAST, snic_bytes_per_s=2.0e6, cnic_bytes_per_s=16.0e6)
    jct = {}
    for name in ("basic", "dualpath"):
        res = _run(model, ClusterConfig(**base).for_variant(name), agents=agents)
        s = report.summarize(res)
        assert s["num_failed"] == 0 and s["bytes_conserved"]
        jct[name] = s["jct_s"]
        busy = s["snic_busy_s"]
        if name == "basic":
            assert busy["node1"] == 0 and busy["node2"] == 0
        else:
            assert busy["node1"] > 0 and busy["node2"] > 0
    assert jct["dualpath"] < 0.75 * jct["basic"], jct


def test_progress_bar_counts_requests_only_when_asked(model, capsys):
    spec, params, layout = model
    cfg = ClusterConfig(**FAST).for_variant("dualpath")
    for progress in (True, False):
        store = KVStore(layout, StoreConfig(backend="memory"))
        cluster = EngineCluster(cfg, spec, params, layout, store, time_model=TIME_MODEL, prefill_tokens_per_s=1e4)
        res = cluster.run(AGENTS, [0.0] * len(AGENTS), progress=progress, desc="dualpath")
        err = capsys.readouterr().err
        assert len(res.requests) == 8
        if progress:  # tqdm draws "dualpath: ... n/8 [elapsed<remaining, rate]"
            assert "dualpath" in err and "/8 [" in err and "req" in err
            assert cluster._done == 8
        else:
            assert err == ""


@pytest.mark.parametrize("name", ["tiny-mla", "tiny-moe"])
def test_mla_runs_through_the_cluster_with_recompute_tokens_and_latent_bytes(name):
    """tiny-mla (and tiny-moe: its MoE layers and YaRN RoPE): the PE's paged prefill and the DE's paged
    decode run the model's own layers, the latent KV moves in the layout's bytes, and the tokens equal
    a no-cache recompute."""
    spec = get_spec(name)
    mla_params = jax.tree.map(np.asarray, init_params(spec, jax.random.PRNGKey(0)))
    mla = (spec, mla_params, store_layout(spec, mla_params, "f32"))
    layout = mla[2]
    assert layout.bytes_per_token == spec.n_layers * (spec.kv_lora_rank + spec.qk_rope_head_dim) * 4
    results = {name: _run(mla, ClusterConfig(**FAST).for_variant(name), agents=AGENTS[:2])
               for name in ("basic", "dualpath")}  # pe_read + full + round robin; dual + layerwise + DualPath
    for name, res in results.items():
        assert all(r.finished and not r.error for r in res.requests), name
        s = report.summarize(res)
        assert s["bytes_conserved"], (name, report.conservation(res))
        total_hit = sum(r.hit_tokens for r in res.requests)
        assert total_hit > 0 and sum(s["snic_bytes"].values()) == total_hit * layout.bytes_per_token
    tokens = report.check_tokens(results, mla[1], spec)
    assert tokens["compared_requests"] == sum(a.num_rounds for a in AGENTS[:2])
    assert tokens["reference_checked_tokens"] >= sum(int(a.num_gen_tokens.sum()) for a in AGENTS[:2])
    assert tokens["tokens_identical"], (tokens["reference_mismatches"], tokens["variant_divergences"])


def test_a_custom_policy_decides_in_the_engine(model):
    """A researcher's scheduler subclass reaches the engine: its read side and PE choice are obeyed,
    the tokens still equal a no-cache recompute and the bytes still balance."""
    from dualpath_jax.sched import Assignment, ClusterScheduler, ReadPlan

    class DESideOnLastPE(ClusterScheduler):
        def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
            return ReadPlan("de", hit_blocks) if hit_blocks else ReadPlan("none", 0)

        def select_pe(self, group_id, waiting, loads, read_q):
            last = max(load.engine_id for load in loads)
            return [Assignment(r, last, "pe") for r in waiting]

    spec, params, layout = model
    config = ClusterConfig(**FAST, prefill_nodes=1, engines_per_node=2)
    store = KVStore(layout, StoreConfig(backend="memory"))
    res = EngineCluster(config, spec, params, layout, store, time_model=TIME_MODEL, prefill_tokens_per_s=1e4,
                        devices=jax.devices()[:1], scheduler_cls=DESideOnLastPE).run(AGENTS, [0.0] * len(AGENTS))
    assert all(r.finished and not r.error for r in res.requests)
    assert {r.pe for r in res.requests} == {1}  # the policy's PE, never engine 0
    hits = [r for r in res.requests if r.hit_tokens]
    assert hits and all(r.side == "de" and r.read_bytes_pe == 0 for r in hits)
    assert res.links["snic_read/node0"]["bytes"] == 0
    assert report.summarize(res)["bytes_conserved"]
    tokens = report.check_tokens({"custom": res}, params, spec)
    assert tokens["tokens_identical"], tokens["reference_mismatches"]


class _KeysBatchesById(ClusterScheduler):
    """A policy that keeps per-request state from ``submit`` and reads it in ``form_pe_batch``."""

    instances: list = []

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.submitted, self.batched = {}, []
        self.instances.append(self)

    def submit(self, req):
        self.submitted[req.request_id] = req
        super().submit(req)

    def form_pe_batch(self, fifo, **kw):
        batch = super().form_pe_batch(fifo, **kw)
        self.batched += [(b.request_id, b.cached + b.remaining) for b in batch]
        return batch


def test_form_pe_batch_sees_the_ids_the_policy_placed_as_in_the_simulator(model):
    # defect: the engine numbered the batch's items by their place in the PE's queue (0, 1, ...)
    spec, params, layout = model
    store = KVStore(layout, StoreConfig(backend="memory"))
    cluster = EngineCluster(ClusterConfig(**FAST).for_variant("dualpath"), spec, params, layout, store,
                            time_model=TIME_MODEL, prefill_tokens_per_s=1e4, scheduler_cls=_KeysBatchesById)
    _KeysBatchesById.instances.clear()
    res = cluster.run(AGENTS, [0.0] * len(AGENTS))
    assert all(r.finished and not r.error for r in res.requests)
    (sched,) = _KeysBatchesById.instances
    # every batch item names a submitted request, with that request's prompt length
    assert sched.batched and all(sched.submitted[i].num_tokens == n for i, n in sched.batched)
    assert {i for i, _ in sched.batched} == {r.rid for r in res.requests}


class _NoDE(ClusterScheduler):  # a broken policy: never places a request on a DE
    def fetch_de(self, group_id, loads):
        return []


class _NoHitOnPE(ClusterScheduler):  # places only requests without hits: an agent's first round
    def select_pe(self, group_id, waiting, loads, read_q):
        return [a for a in super().select_pe(group_id, waiting, loads, read_q) if not a.request.hit_tokens]


@pytest.mark.parametrize("policy,match", [
    (_NoDE, r"engine run stalled at t = [0-9.]+ s: no tick or arrival is pending and no engine holds a request, "
            r"yet 3 requests wait \(for a PE: 0, for a DE: 3; 0 of 8 rounds done\); the first, request 0 "
            r"\(agents\[0\] round 0, 0 hit tokens\), waits for a DE\. Scheduler: _NoDE"),
    # every first round runs, finishes and persists; then the second rounds (with hits) wait for a PE
    (_NoHitOnPE, r"stalled .* yet 3 requests wait \(for a PE: 3, for a DE: 0; 3 of 8 rounds done\); the first, "
                 r"request 3 \(agents\[\d\] round 1, [1-9]\d* hit tokens\), waits for a PE\. Scheduler: _NoHitOnPE"),
], ids=["no_de", "no_hit_on_pe"])
def test_a_stalled_run_raises_at_once_says_what_waits_and_stops_its_workers(model, policy, match):
    """Nothing left to happen, yet requests wait: the run raises (as the simulator's does) instead
    of waiting for ``run_timeout_s`` and failing them as timed out."""
    spec, params, layout = model
    store = KVStore(layout, StoreConfig(backend="memory"))
    cluster = EngineCluster(ClusterConfig(**FAST).for_variant("dualpath"), spec, params, layout, store,
                            time_model=TIME_MODEL, prefill_tokens_per_s=1e4, scheduler_cls=policy)
    workers = lambda: {t for t in threading.enumerate() if t.name.startswith(("pe", "de", "reader"))}  # noqa: E731
    before, t0 = workers(), time.monotonic()
    with pytest.raises(RunStalled, match=match):
        cluster.run(AGENTS, [0.0] * len(AGENTS))
    assert time.monotonic() - t0 < FAST["run_timeout_s"] / 4
    assert workers() <= before  # this run's workers stopped


def test_a_hand_off_answered_after_send_batch_returns_holds_the_request_until_then(model, monkeypatch):
    """``peers.send_batch`` may answer later from another thread (the ``ray`` runtime's does): a
    request is handed off to its DE only once every send has landed. Here each batch lands (KV
    deposited, ``on_done`` called) 20 ms after ``send_batch`` returned; a request handed off
    early would reach its DE with layers missing and fail there."""
    import threading
    import time

    from dualpath_jax.engine import cluster as cluster_mod
    from dualpath_jax.engine.peers import LocalPeers

    late = []

    class LatePeers(LocalPeers):
        def send_batch(self, pe, sends, on_done):
            def land():
                time.sleep(0.02)
                late.append(len(sends))
                LocalPeers.send_batch(self, pe, sends, on_done)

            threading.Thread(target=land, daemon=True).start()

    monkeypatch.setattr(cluster_mod, "LocalPeers", LatePeers)
    spec, params, layout = model
    results = {name: _run(model, ClusterConfig(**FAST).for_variant(name)) for name in ("layerwise", "dualpath")}
    assert late  # the hand-off did go through the late peers
    for name, res in results.items():
        assert all(r.finished and not r.error for r in res.requests), (name, [r.error for r in res.requests])
        assert report.summarize(res)["bytes_conserved"], name
    tokens = report.check_tokens(results, params, spec)
    assert tokens["tokens_identical"], (tokens["reference_mismatches"], tokens["variant_divergences"])


def test_a_copy_over_no_link_fails_as_a_transfer_does():
    """Oracle (no link) and empty moves run the copy without a link; its error must come out as
    the TransferFailed the callers handle (an escaping exception killed the PE's loader thread)."""
    from dualpath_jax.engine.network import Fabric, TransferFailed

    def copy():
        raise RuntimeError("RESOURCE_EXHAUSTED: out of device memory")

    for cfg, nbytes in ((ClusterConfig(**FAST).for_variant("oracle"), 4096), (ClusterConfig(**FAST), 0)):
        fabric = Fabric(cfg)
        with pytest.raises(TransferFailed, match="RESOURCE_EXHAUSTED") as err:
            fabric.carry(fabric.pe_h2d(0), nbytes, copy)
        assert isinstance(err.value.__cause__, RuntimeError)
        assert fabric.carry(fabric.pe_h2d(0), nbytes, lambda: 7) == 7


def test_a_timeout_on_a_later_hop_of_a_path_stays_a_timeout():
    """A path's hops are taken in order; a later hop that is not free in time fails the move with
    that hop's timeout (not as an error of the copy on the first hop), so callers can tell a busy
    link from a failed copy (LoaderError.timed_out, the TIMEOUT cause of a lost hit)."""
    from dualpath_jax.engine.network import Fabric, TransferFailed
    fabric = Fabric(ClusterConfig(**{**FAST, "timeout_s": 0.3}))
    busy, go = threading.Event(), threading.Event()
    holder = threading.Thread(target=lambda: fabric.carry(fabric.de_to_pe(1, 0), 1000,
                                                           lambda: (busy.set(), go.wait(30))))
    holder.start()  # pe0's CNIC in is busy with a DE-side load
    busy.wait(30)
    try:
        with pytest.raises(TransferFailed) as err:
            fabric.carry(fabric.pe_h2d(0), 1000, tag="layer0")  # PE CNIC out (free), then its CNIC in (busy)
    finally:
        go.set()
        holder.join(30)
    assert err.value.link == "cnic_in/pe0" and err.value.cause.startswith("timeout")


def test_contexts_past_the_models_max_position_run_with_a_warning(model):
    from dualpath_jax.model.spec import ContextBeyondModelWarning

    spec, params, _ = model
    # agent a's round 2: 150 + 5 + 40 + 9 + 70 prompt tokens and 3 generated = 277; every other <= 230
    short = dataclasses.replace(spec, max_position=250)
    layout = store_layout(short, params, "f32")
    cluster = EngineCluster(ClusterConfig(**FAST).for_variant("basic"), short, params, layout,
                            KVStore(layout, StoreConfig(backend="memory")), time_model=TIME_MODEL,
                            prefill_tokens_per_s=1e4)
    with pytest.warns(ContextBeyondModelWarning, match=r"^engine: 1 requests run past .* \(250 tokens; the "
                                                       r"longest, a round 2, reaches 277\)"):
        res = cluster.run(AGENTS, [0.0] * len(AGENTS))
    assert len(res.requests) == 8 and not any(r.error for r in res.requests)
