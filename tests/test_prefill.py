"""The one prefill path and the store-backed prefill engine: logits and KV equal a plain forward,
device KV peak, byte accounting, failure recovery."""

import functools
import os
import re

import jax
import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.engine import (PrefillChunk, PrefillConfig, PrefillEngine, PrefillPath, PrefillRequest, prefill_kv,
                                 store_layout)
from dualpath_jax.kvcache import block_keys, layout_for, unpack_full_blocks
from dualpath_jax.model import forward, forward_with_cache, get_spec, init_params
from dualpath_jax.engine.prefill import check_layout
from dualpath_jax.store import BlockFailure, FailureCause, KVStore, StoreConfig, StoreError
from dualpath_jax.transfer import (BufferPool, BufferTimeoutError, Link, LinkConfig, LoaderError, Medium, Outcome,
                                   TransferRecord, TransferResult)
from dualpath_jax.transfer.remote import KVTransferError

ATOL = 1e-5  # f32 tolerance of the attention reference (tests/test_model.py)
PROMPT = 320


@functools.lru_cache(maxsize=None)
def _setup(name):
    spec = get_spec(name)
    params = init_params(spec, jax.random.PRNGKey(0))
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (PROMPT,), 0, spec.vocab_size))
    return spec, params, tokens, np.asarray(forward(params, spec, tokens))


@pytest.fixture(scope="module", params=["tiny-gqa", "tiny-mla"])
def model(request):
    return _setup(request.param)


def _memory_store(spec, params):
    return KVStore(store_layout(spec, params), StoreConfig(backend="memory"))


@pytest.mark.parametrize("mode", ["layerwise", "full"])
@pytest.mark.parametrize("cached", [0, 63, 64, 65, 128, 300])
def test_logits_equal_one_pass_forward(model, mode, cached):
    spec, params, tokens, full = model
    with _memory_store(spec, params) as store:
        engine = PrefillEngine(params, spec, store, config=PrefillConfig(mode=mode))
        if cached:  # a first turn persists the complete blocks of its prompt
            (first,), _ = engine.run([PrefillRequest("turn0", tokens[:cached])])
            assert first.blocks_written == cached // 64
            np.testing.assert_allclose(first.logits, full[:cached], atol=ATOL, rtol=0)
        (res,), report = engine.run([PrefillRequest("turn1", tokens)])
    hit = min(cached // 64, (PROMPT - 1) // 64) * 64
    assert res.hit_tokens == hit and report.hit_tokens == hit
    assert res.logits.shape == (PROMPT - hit, spec.vocab_size)
    np.testing.assert_allclose(res.logits, full[hit:], atol=ATOL, rtol=0)
    assert [kv[0].shape[0] for kv in res.new_kv] == [PROMPT - hit] * spec.n_layers
    assert res.blocks_written == PROMPT // 64 - hit // 64


def test_batch_of_requests_with_different_hits_and_stored_kv(model):
    spec, params, tokens, full = model
    other = (tokens[::-1] + 7) % spec.vocab_size
    shared = np.concatenate([tokens[:64], other[64:]])  # shares exactly block 0 with `tokens`
    with _memory_store(spec, params) as store:
        engine = PrefillEngine(params, spec, store)
        engine.run([PrefillRequest("seed", tokens[:300])])  # stores blocks 0..3 of `tokens`
        results, report = engine.run([PrefillRequest("a", tokens), PrefillRequest("b", other[:128]),
                                      PrefillRequest("c", shared)])
        assert [r.hit_tokens for r in results] == [256, 0, 64]
        np.testing.assert_allclose(results[0].logits, full[256:], atol=ATOL, rtol=0)
        for res, prompt in zip(results[1:], (other[:128], shared)):  # layer-by-layer pass, no store
            ref, _ = forward_with_cache(params, spec, prompt, None)
            np.testing.assert_allclose(res.logits, np.asarray(ref)[res.hit_tokens:], atol=ATOL, rtol=0)
        assert report.hit_tokens == 320 and report.computed_tokens == PROMPT + 128 + PROMPT - 320
        # What was persisted equals the KV of a plain layer-by-layer pass (independent reference).
        keys = block_keys(store.layout, tokens)
        reads = store.read(keys)
        assert len(keys) == 5 and all(r.ok for r in reads)
        stored = unpack_full_blocks(store.layout, [r.block for r in reads])
        _, ref = forward_with_cache(params, spec, tokens, None)
        for (a, b), (ra, rb) in zip(stored, ref):
            np.testing.assert_allclose(a, np.asarray(ra), atol=ATOL, rtol=0)
            np.testing.assert_allclose(b, np.asarray(rb), atol=ATOL, rtol=0)


def test_device_kv_peak_and_link_bytes():
    spec = get_spec("tiny-gqa").replace(name="tiny-gqa-8l", n_layers=8)
    params = init_params(spec, jax.random.PRNGKey(0))
    tokens = np.arange(320) % spec.vocab_size
    layout = store_layout(spec, params)
    peaks = {}
    with KVStore(layout, StoreConfig(backend="memory")) as store:
        PrefillEngine(params, spec, store).run([PrefillRequest("seed", tokens[:256])])
        for mode, depth in [("full", 2), ("layerwise", 2), ("layerwise", 1), ("layerwise", 3)]:
            snic = Link(LinkConfig("snic", Medium.STORAGE, Medium.PE_BUFFER))
            h2d = Link(LinkConfig("h2d", Medium.PE_BUFFER, Medium.PE_HBM))
            engine = PrefillEngine(params, spec, store, snic_link=snic, h2d_link=h2d,
                                   config=PrefillConfig(mode=mode, depth=depth, write_back=False))
            (res,), rep = engine.run([PrefillRequest("r", tokens)])
            assert res.hit_tokens == 256
            layer_bytes = 256 * layout.bytes_per_token_per_layer
            assert snic.stats().total_bytes == 4 * layout.full_block_bytes
            assert h2d.stats().total_bytes == rep.h2d_bytes == spec.n_layers * layer_bytes
            assert len(rep.h2d_records) == spec.n_layers
            peaks[(mode, depth)] = rep.kv_device_peak_bytes
    assert peaks[("full", 2)] == spec.n_layers * layer_bytes
    assert peaks[("layerwise", 1)] == layer_bytes
    for depth in (2, 3):  # at most depth/L of full mode's KV (fewer if compute outpaces loading)
        assert layer_bytes <= peaks[("layerwise", depth)] <= depth * layer_bytes


# ---- failures: each is reported and the request still gets correct logits ----------------------
def _flip(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 1000)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("fault,bad_block,cause", [
    ("flip", 1, FailureCause.CHECKSUM_MISMATCH),
    ("truncate", 2, FailureCause.TRUNCATED),
    ("delete", 0, FailureCause.MISSING),
])
def test_bad_block_is_reported_recomputed_and_repaired(tmp_path, fault, bad_block, cause):
    spec, params, tokens, full = _setup("tiny-gqa")
    with KVStore(store_layout(spec, params), StoreConfig(path=str(tmp_path / "kv"), fsync=False)) as store:
        engine = PrefillEngine(params, spec, store, config=PrefillConfig(timeout_s=20))
        engine.run([PrefillRequest("seed", tokens[:300])])  # stores blocks 0..3
        keys = block_keys(store.layout, tokens)
        path = store.path_of(keys[bad_block])
        if fault == "flip":
            _flip(path)
        elif fault == "truncate":
            os.truncate(path, os.path.getsize(path) - 100)
        else:
            os.remove(path)
        (res,), report = engine.run([PrefillRequest("r", tokens)])
        assert res.hit_tokens == 64 * bad_block
        assert res.miss.cause is cause and res.miss.key == keys[bad_block]
        assert report.miss_causes == {cause.value: 1}
        if fault != "delete":  # lookup saw the block; the read failed and was counted
            assert [f.cause for f in res.failures] == [cause]
            assert report.read_failures == {cause.value: 1}
            assert store.stats().failures[cause.value] >= 1
        np.testing.assert_allclose(res.logits, full[64 * bad_block:], atol=ATOL, rtol=0)
        assert res.blocks_written == PROMPT // 64 - bad_block  # recomputed blocks are written back
        (again,), _ = engine.run([PrefillRequest("r2", tokens)])
        assert again.hit_tokens == 256 and again.miss is None and not again.failures
        np.testing.assert_allclose(again.logits, full[256:], atol=ATOL, rtol=0)


class _TimesOut(Link):
    """A link never free in time for the transfers ``when(call index from 0, tag)`` picks (a
    TIMEOUT outcome, as Link.transfer gives); the others it carries."""

    def __init__(self, name, src, dst, when):
        super().__init__(LinkConfig(name, src, dst))
        self.when, self.calls = when, 0

    def transfer(self, num_bytes, fn=None, *, timeout_s=None, tag=""):
        self.calls += 1
        if self.when(self.calls - 1, tag):
            cfg = self.config
            return TransferResult(None, TransferRecord(cfg.name, cfg.src, cfg.dst, num_bytes, 0.0, 0.0, Outcome.TIMEOUT,
                                                       f"link busy for more than {timeout_s} s", tag))
        return super().transfer(num_bytes, fn, timeout_s=timeout_s, tag=tag)


def test_a_block_the_snic_cannot_carry_is_recomputed():
    spec, params, tokens, full = _setup("tiny-gqa")
    with _memory_store(spec, params) as store:
        PrefillEngine(params, spec, store).run([PrefillRequest("seed", tokens[:300])])  # blocks 0..3
        snic = _TimesOut("snic", Medium.STORAGE, Medium.PE_BUFFER, lambda i, tag: i == 2)  # the third block's
        engine = PrefillEngine(params, spec, store, snic_link=snic, config=PrefillConfig(write_back=False))
        (res,), report = engine.run([PrefillRequest("r", tokens)])
    assert res.hit_tokens == 128  # blocks 0 and 1 arrived; block 2's transfer timed out
    assert res.miss.cause is FailureCause.TIMEOUT and res.miss.detail.startswith("SNIC: link busy")
    assert report.read_failures == {"timeout": 1}
    np.testing.assert_allclose(res.logits, full[128:], atol=ATOL, rtol=0)


def test_hit_kv_that_misses_its_h2d_deadline_is_a_timeout_and_recomputed():
    spec, params, tokens, full = _setup("tiny-gqa")
    with _memory_store(spec, params) as store:
        PrefillEngine(params, spec, store).run([PrefillRequest("seed", tokens[:300])])  # blocks 0..3
        h2d = _TimesOut("h2d", Medium.PE_BUFFER, Medium.PE_HBM, lambda i, tag: tag == "layer1")
        engine = PrefillEngine(params, spec, store, h2d_link=h2d, config=PrefillConfig(write_back=False))
        (res,), report = engine.run([PrefillRequest("r", tokens)])
    assert res.hit_tokens == 0 and report.computed_tokens == len(tokens)  # the whole prompt recomputed
    assert res.miss.cause is FailureCause.TIMEOUT and "layer 1: timeout: link busy" in res.miss.detail
    np.testing.assert_allclose(res.logits, full, atol=ATOL, rtol=0)


def test_token_ids_outside_the_vocabulary_are_rejected():
    spec, params, tokens, _ = _setup("tiny-gqa")
    with _memory_store(spec, params) as store:
        engine = PrefillEngine(params, spec, store)
        bad = tokens.copy()
        bad[7] = spec.vocab_size
        with pytest.raises(ValueError, match=rf"request r: token ids must be in \[0, {spec.vocab_size}\)"):
            engine.run([PrefillRequest("r", bad)])
    wraps = tokens.astype(np.int64)
    wraps[3] = 2**32 + 5  # would become id 5 in int32
    with pytest.raises(ValueError, match=r"request w: token ids must be in \[0, 2\*\*31\)"):
        PrefillRequest("w", wraps)


def test_unreadable_store_path_falls_back_to_recompute(tmp_path):
    spec, params, tokens, full = _setup("tiny-mla")
    (tmp_path / "file").write_text("not a directory")
    with KVStore(store_layout(spec, params), StoreConfig(path=str(tmp_path / "file" / "kv"), timeout_s=5)) as store:
        (res,), report = PrefillEngine(params, spec, store, config=PrefillConfig(timeout_s=5)).run(
            [PrefillRequest("r", tokens)])
    assert res.hit_tokens == 0 and res.miss.cause is FailureCause.UNREADABLE
    assert report.miss_causes == {"unreadable": 1}
    assert res.blocks_written == 0 and [f.cause for f in res.write_failures] == [FailureCause.UNWRITABLE] * 5
    np.testing.assert_allclose(res.logits, full, atol=ATOL, rtol=0)


def test_pe_buffer_bounds_and_back_pressure():
    spec, params, tokens, _ = _setup("tiny-gqa")
    with _memory_store(spec, params) as store:
        PrefillEngine(params, spec, store).run([PrefillRequest("seed", tokens[:300])])
        small = BufferPool("pe.buffer", 2 * store.layout.full_block_bytes)
        with pytest.raises(ValueError, match="capacity"):
            PrefillEngine(params, spec, store, buffer=small).run([PrefillRequest("r", tokens)])
        busy = BufferPool("pe.buffer", 4 * store.layout.full_block_bytes)
        lease = busy.acquire(busy.capacity_bytes)
        engine = PrefillEngine(params, spec, store, buffer=busy, config=PrefillConfig(timeout_s=0.1))
        with pytest.raises(BufferTimeoutError):
            engine.run([PrefillRequest("r", tokens)])
        lease.release()
        (res,), _ = engine.run([PrefillRequest("r", tokens)])
        assert res.hit_tokens == 256 and busy.in_use_bytes == 0


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="prefill.mode"):
        PrefillConfig(mode="chunked")
    with pytest.raises(ConfigError, match="prefill.depth"):
        PrefillConfig(depth=0)
    spec = get_spec("tiny-gqa")
    with KVStore(layout_for(get_spec("tiny-mla")), StoreConfig(backend="memory")) as store:
        with pytest.raises(ConfigError, match="store.layout"):
            PrefillEngine({}, spec, store)
    with pytest.raises(ValueError, match="tokens"):
        PrefillRequest("r", np.zeros((0,), np.int32))


def test_a_block_size_the_pallas_kernels_cannot_tile_is_refused_before_any_work(monkeypatch):
    # defect: a layout of 8 or 48 tokens per block was accepted, and on a GPU (where "auto" means
    # Pallas) the first prefill or decode step raised from inside the kernel
    from dualpath_jax.engine.compute import check_kernel_block_tokens
    spec = get_spec("tiny-gqa")
    params = init_params(spec, jax.random.PRNGKey(0))
    for z in (8, 48):
        with pytest.raises(ConfigError, match=rf"layout.block_tokens: {z} tokens per block: .*power of two >= 16"):
            PrefillPath(params, spec, layout_for(spec, block_tokens=z), implementation="pallas")
        PrefillPath(params, spec, layout_for(spec, block_tokens=z), implementation="reference")  # any size
        check_kernel_block_tokens(z)  # "auto" on this CPU backend: the reference
    for z in (16, 64):
        check_kernel_block_tokens(z, "pallas")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # "auto" on a GPU backend: Pallas
    with pytest.raises(ConfigError, match="layout.block_tokens: 8 tokens per block"):
        check_kernel_block_tokens(8)
    check_kernel_block_tokens(32)


# ---- the path itself: what the cluster's PE workers run ------------------------------------------
def test_path_over_pieced_cache_in_two_chunks_hands_each_layer_on(model):
    """Two requests in one forward, their cached KV delivered as several host pieces (as a PE holds
    hit blocks plus earlier chunks); each layer's new KV reaches ``on_layer`` in layer order."""
    spec, params, tokens, full = model
    _, kvs = forward_with_cache(params, spec, tokens[:200], None)
    kvs = [tuple(np.asarray(x) for x in kv) for kv in kvs]
    other = (tokens[::-1] + 3) % spec.vocab_size
    path = PrefillPath(params, spec, layout_for(spec), mode="layerwise", depth=2)
    chunks = [PrefillChunk(tokens[200:260], 200, logits="all"), PrefillChunk(other[:50], 0, logits="last")]
    fetch = lambda l: [[tuple(x[:64] for x in kvs[l]), tuple(x[64:200] for x in kvs[l])], []]  # noqa: E731
    seen = []
    link = Link(LinkConfig("h2d", Medium.PE_BUFFER, Medium.PE_HBM))
    out = path.forward(chunks, fetch, link, on_layer=lambda l, b, kv: seen.append((l, b, kv[0].shape[0])))
    assert seen == [(l, b, n) for l in range(spec.n_layers) for b, n in ((0, 60), (1, 50))]
    np.testing.assert_allclose(out.logits[0], full[200:260], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out.logits[1], np.asarray(forward(params, spec, other[:50]))[-1], atol=ATOL, rtol=0)
    _, ref = forward_with_cache(params, spec, tokens[:260], None)
    for got, want in zip(out.new_kv[0], ref):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, np.asarray(b)[200:260], atol=ATOL, rtol=0)
    bt = layout_for(spec).bytes_per_token_per_layer
    assert out.loaded_bytes == link.stats().total_bytes == spec.n_layers * 200 * bt
    with pytest.raises(ValueError, match="chunk 0 has 64 cached tokens") as err:  # a caller's bug, not I/O
        path.forward(chunks, lambda l: [[tuple(x[:64] for x in kvs[l])], []], link)
    assert not isinstance(err.value, LoaderError)


def test_prefill_kv_chunks_match_model_cache(model):
    spec, params, tokens, _ = model
    got = prefill_kv(params, spec, tokens[:200], jax.devices()[0], chunk_tokens=64)
    _, ref = forward_with_cache(params, spec, tokens[:200], None)
    for pair, want in zip(got, ref):
        for a, b in zip(pair, want):
            assert a.shape == b.shape and a.shape[0] == 200
            np.testing.assert_allclose(a, np.asarray(b), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="chunk_tokens"):
        prefill_kv(params, spec, tokens, chunk_tokens=0)


# ---- the store's keys are scoped to the spec and the weights -------------------------------------
def test_two_weight_sets_on_one_store_directory_never_share_kv(tmp_path):
    """Model B (another seed, same spec and name) on the directory model A filled gets no hit and
    computes its own logits; A again (its weights loaded anew) hits its blocks. Before the weights
    fingerprint scoped the keys, B read A's three blocks and its logits were off by ~0.4."""
    spec = get_spec("tiny-gqa")
    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, 200).astype(np.int32)
    pa, pb = (jax.tree.map(np.asarray, init_params(spec, jax.random.PRNGKey(s))) for s in (0, 1))
    cfg = StoreConfig(path=str(tmp_path / "kv"), fsync=False)
    with KVStore(store_layout(spec, pa), cfg) as store:
        (ra,), _ = PrefillEngine(pa, spec, store).run([PrefillRequest("a", tokens)])
        with pytest.raises(ConfigError, match=r"^store.layout: namespace is '[0-9a-f]{32}', not the weights"):
            PrefillEngine(pb, spec, store)  # A's store layout cannot serve B's weights
    assert ra.hit_tokens == 0 and ra.blocks_written == 3
    with KVStore(store_layout(spec, pb), cfg) as store:
        (rb,), _ = PrefillEngine(pb, spec, store).run([PrefillRequest("b", tokens)])
    assert rb.hit_tokens == 0 and rb.lookup_blocks == 0 and rb.blocks_written == 3
    np.testing.assert_allclose(rb.logits, np.asarray(forward(pb, spec, tokens)), atol=ATOL, rtol=0)
    pa2 = init_params(spec, jax.random.PRNGKey(0))  # the same weights, loaded again
    with KVStore(store_layout(spec, pa2), cfg) as store:
        (ra2,), _ = PrefillEngine(pa2, spec, store).run([PrefillRequest("a2", tokens)])
    assert ra2.hit_tokens == 192 and ra2.lookup_blocks == 3
    np.testing.assert_allclose(ra2.logits, np.asarray(forward(pa, spec, tokens))[192:], atol=ATOL, rtol=0)
    with KVStore(layout_for(spec), StoreConfig(backend="memory")) as bare:  # a layout naming no weights
        with pytest.raises(ConfigError, match="^store.layout: namespace names no weights.*store_layout"):
            PrefillEngine(pa, spec, bare)


def test_a_store_of_another_spec_of_one_name_is_refused_before_any_work():
    """check_layout compares the whole layout, spec digest included: a store built for tiny-gqa does
    not serve tiny-gqa with twice the KV heads (before: a whole forward, then a raw ValueError at
    write-back) nor with another rope_theta (before: silently wrong KV)."""
    spec = get_spec("tiny-gqa")
    for other, match in [(spec.replace(n_kv_heads=4), r"fields \(k\[2, 16\] float32, v\[2, 16\] float32\) != "
                                                      r"\(k\[4, 16\] float32, v\[4, 16\] float32\)$"),
                         (spec.replace(rope_theta=5e5), r"spec_digest \(the spec differs"),
                         (get_spec("tiny-mla"), "model_name 'tiny-gqa' != 'tiny-mla'")]:
        params = init_params(other, jax.random.PRNGKey(0))
        with KVStore(store_layout(spec, params), StoreConfig(backend="memory")) as store:
            with pytest.raises(ConfigError, match="^store.layout: layout of tiny-gqa does not match spec") as err:
                PrefillEngine(params, other, store)
            assert re.search(match, str(err.value)) and "\n" not in str(err.value)
    layout = store_layout(spec, init_params(spec, jax.random.PRNGKey(0)), "bf16", block_tokens=32)
    check_layout(spec, layout)  # its own kv dtype, block size and namespace are the layout's to choose


def test_a_bug_in_fetch_keeps_its_type_and_io_failures_stay_loader_errors():
    """Only read/transfer failures of ``fetch`` become LoaderError (the recompute fallback); any
    other exception reaches the caller as raised (before: every one was a LoaderError)."""
    spec, params, tokens, _ = _setup("tiny-gqa")
    kvs = prefill_kv(params, spec, tokens[:64])
    chunks = [PrefillChunk(tokens[64:100], 64)]

    def fetch(error):
        def f(layer):
            if layer == 2:
                raise error
            return [[kvs[layer]]]
        return f

    for mode in ("layerwise", "full"):
        path = PrefillPath(params, spec, layout_for(spec), mode=mode, depth=2)
        with pytest.raises(KeyError, match="bug") as err:
            path.forward(chunks, fetch(KeyError("bug")))
        assert not isinstance(err.value, LoaderError)
        for io in (OSError("disk"), StoreError(BlockFailure("k", FailureCause.UNREADABLE, "gone")),
                   KVTransferError("host:1", 7, "peer closed")):
            with pytest.raises(LoaderError, match=f"layer 2: {type(io).__name__}") as err:
                path.forward(chunks, fetch(io))
            assert err.value.__cause__ is io
