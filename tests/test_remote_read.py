"""The DE read path across processes: a DE reader actor reads hit blocks from the shared store and
offers them per layer through JAX's transfer server; the PE's prefill on the pulled KV computes
exactly what it computes on KV read in its own process."""

import os
import time

import numpy as np
import pytest

from dualpath_jax.engine.remote_read import (DEReadServer, RemotePreparedBatch, offer_new_blocks, prepare_remote,
                                             start_de_reader)
from dualpath_jax.engine.standalone import PrefillConfig, PrefillEngine, PrefillRequest
from dualpath_jax.kvcache import block_keys, pack_full_blocks
from dualpath_jax.store import FailureCause, KVStore, StoreConfig
from dualpath_jax.transfer.remote import KVPullTimeout, KVTransferEndpoint, KVTransferError

from engine_cases import tiny_model


def _second_round(tmp_path, blocks, tail, seed):
    """A prompt of ``blocks`` Full Blocks plus ``tail`` tokens whose first 3 blocks are already in a
    file store (a first round's prefill wrote them); returns ``(spec, params, layout, store, a PE
    engine that writes nothing back, the round's request)``."""
    spec, params, layout = tiny_model()
    z = layout.block_tokens
    tokens = np.random.default_rng(seed).integers(0, spec.vocab_size, blocks * z + tail, dtype=np.int32)
    store = KVStore(layout, StoreConfig(path=str(tmp_path / "kv"), fsync=False))
    PrefillEngine(params, spec, store).run([PrefillRequest("seed", tokens[:3 * z + 5])])
    engine = PrefillEngine(params, spec, store, config=PrefillConfig(write_back=False))
    return spec, params, layout, store, engine, PrefillRequest("round2", tokens)


pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture
def ray_local(ray_session):
    return ray_session


def test_prefill_on_kv_pulled_from_a_de_reader_process_equals_the_local_read(tmp_path, ray_local):
    spec, _, layout, store, engine, request = _second_round(tmp_path, 4, 9, seed=0)
    z, tokens = layout.block_tokens, request.tokens
    local, _ = engine.run([request])
    assert local[0].hit_tokens == 3 * z  # the seeded prefix
    reader = start_de_reader(layout, str(tmp_path / "kv"))  # a DE in its own process
    endpoint = KVTransferEndpoint()
    batch = prepare_remote(reader, endpoint, layout, [request])
    remote, report = engine.execute(batch)
    assert remote[0].hit_tokens == 3 * z and report.hit_tokens == 3 * z
    np.testing.assert_array_equal(np.asarray(remote[0].logits), np.asarray(local[0].logits))
    # every layer's 3 Layer Blocks crossed the process boundary once, and nothing else
    per_layer = 3 * layout.layer_block_bytes
    assert endpoint.stats().bytes_pulled == spec.n_layers * per_layer
    assert ray_local.get(reader.stats.remote())["bytes_offered"] == spec.n_layers * per_layer
    # the hand-off: the DE pulls the request's newly completed block (the 4th) and persists it
    handoffs = offer_new_blocks(endpoint, layout, batch, remote)
    keys = block_keys(layout, tokens)
    assert [k for k, _ in handoffs] == [keys[3:4]]
    assert ray_local.get(reader.receive_and_persist.remote(handoffs)) == [1]
    assert store.lookup(keys).num_blocks == 4  # the next round hits it
    new = local[0].new_kv  # the block the local engine's write-back would store, packed independently
    want = pack_full_blocks(layout, [tuple(x[:z] for x in kv) for kv in new])[0]
    got = store.read(keys[3:4])[0]
    assert got.ok and np.array_equal(got.block, want)


def test_a_missing_block_ends_the_hit_and_the_rest_is_recomputed(tmp_path):
    _, _, layout, _, engine, request = _second_round(tmp_path, 5, 3, seed=1)
    local, _ = engine.run([request])
    reader = DEReadServer(layout, str(tmp_path / "kv"))  # in this process: the same offers and pulls
    batch = prepare_remote(reader, KVTransferEndpoint(), layout, [request])
    assert batch.hit_blocks == [3] and batch.miss[0].cause == FailureCause.MISSING and batch.failures == [[]]
    remote, _ = engine.execute(batch)
    np.testing.assert_array_equal(np.asarray(remote[0].logits), np.asarray(local[0].logits))


def test_kv_of_other_weights_is_refused_on_the_de_read_path(tmp_path):
    """A store holds the KV of weights W1; a PE of weights W2 gets none of it: a DE reader started
    with W1's layout is refused when the batch is prepared under W2's, and a batch prepared under
    W1's layout is refused by W2's engine (it would compute W2's tokens on W1's KV)."""
    import jax

    from dualpath_jax.config import ConfigError
    from dualpath_jax.engine.prefill import store_layout
    from dualpath_jax.model import init_params

    spec, _, layout1, _, _, request = _second_round(tmp_path, 4, 9, seed=4)
    params2 = jax.tree.map(np.asarray, init_params(spec, jax.random.PRNGKey(1)))
    layout2 = store_layout(spec, params2, "f32", block_tokens=layout1.block_tokens)
    assert layout2.scope != layout1.scope
    engine2 = PrefillEngine(params2, spec, KVStore(layout2, StoreConfig(path=str(tmp_path / "kv"), fsync=False)),
                            config=PrefillConfig(write_back=False))
    want, _ = engine2.run([request])
    assert want[0].hit_tokens == 0  # the local path sees none of W1's KV
    stale = DEReadServer(layout1, str(tmp_path / "kv"))  # a DE reader of the other weights
    with pytest.raises(ConfigError, match=rf"^layout: the DE reader's layout scope is {layout1.scope}, the "
                                          rf"batch's {layout2.scope}"):
        prepare_remote(stale, KVTransferEndpoint(), layout2, [request])
    batch = prepare_remote(stale, KVTransferEndpoint(), layout1, [request])  # the PE given W1's layout
    assert batch.hit_blocks == [3]
    with pytest.raises(ConfigError, match=rf"^batch\.scope: the batch was prepared under layout scope "
                                          rf"{layout1.scope}, this engine's is {layout2.scope}"):
        engine2.execute(batch)
    own = prepare_remote(DEReadServer(layout2, str(tmp_path / "kv")), KVTransferEndpoint(), layout2, [request])
    got, _ = engine2.execute(own)  # its own layout: no hit, the same tokens as the local path
    assert got[0].hit_tokens == 0
    np.testing.assert_array_equal(np.asarray(got[0].logits), np.asarray(want[0].logits))


def test_a_killed_de_reader_costs_the_hit_not_the_request(tmp_path, ray_local):
    spec, params, layout, _, engine, request = _second_round(tmp_path, 4, 1, seed=2)
    tokens = request.tokens
    reader = start_de_reader(layout, str(tmp_path / "kv"))
    ray_local.get(reader.address.remote())  # the actor is up
    ray_local.kill(reader)  # its process is gone
    batch = prepare_remote(reader, KVTransferEndpoint(), layout, [request], timeout_s=20.0)
    assert batch.hit_blocks == [0] and batch.miss[0].cause == FailureCause.UNREADABLE
    assert "DE reader unavailable" in batch.miss[0].detail
    remote, report = engine.execute(batch)
    assert report.hit_tokens == 0 and report.computed_tokens == len(tokens)
    # the whole prompt recomputed: the logits of a store without any hit
    np.testing.assert_array_equal(np.asarray(remote[0].logits), _cold_logits(params, spec, layout, request))


def _cold_logits(params, spec, layout, request):
    """The request's logits from a store without any hit (a whole-prompt recompute)."""
    with KVStore(layout, StoreConfig(backend="memory")) as empty:
        cold, _ = PrefillEngine(params, spec, empty, config=PrefillConfig(write_back=False)).run([request])
    return np.asarray(cold[0].logits)


@pytest.mark.parametrize("error, cause", [
    (lambda o: KVTransferError(o.address, o.uuid, "Connection closed recv() == 0"), FailureCause.UNREADABLE),
    (lambda o: KVPullTimeout(o.address, o.uuid, 0.5), FailureCause.TIMEOUT)])
def test_a_pull_failing_mid_prefill_recomputes_the_batch(tmp_path, monkeypatch, error, cause):
    """The DE buffer's KV of layer 1 never arrives (its reader died after offering): the batch's
    forward runs again from the tokens, with the logits of a recompute and the failure recorded."""
    spec, params, layout, _, engine, request = _second_round(tmp_path, 4, 1, seed=3)
    reader = DEReadServer(layout, str(tmp_path / "kv"))
    endpoint = KVTransferEndpoint()
    batch = prepare_remote(reader, endpoint, layout, [request])
    assert batch.hit_blocks == [3]
    pull, pulled = endpoint.pull_offer, []

    def fail_from_layer_1(offer, **kw):
        pulled.append(offer.uuid)
        if offer.uuid != batch.hits[0].offers[0].uuid:
            raise error(offer)
        return pull(offer, **kw)

    monkeypatch.setattr(endpoint, "pull_offer", fail_from_layer_1)
    (res,), report = engine.execute(batch)
    assert pulled[:2] == [o.uuid for o in batch.hits[0].offers[:2]]  # layer 0 arrived, layer 1 failed
    assert res.hit_tokens == 0 and report.hit_tokens == 0 and report.computed_tokens == len(request.tokens)
    assert res.miss.cause is cause and "layer 1" in res.miss.detail and res.failures == (res.miss,)
    assert report.miss_causes == {cause.value: 1} and report.read_failures == {cause.value: 1}
    np.testing.assert_array_equal(np.asarray(res.logits), _cold_logits(params, spec, layout, request))


@pytest.mark.slow
def test_a_de_reader_killed_mid_prefill_costs_the_hit_not_the_request(tmp_path, ray_local, monkeypatch):
    """Its process is killed once the PE has pulled layer 0 (the transport reports the closed
    connection after some seconds): the whole prompt is recomputed."""
    spec, params, layout, _, engine, request = _second_round(tmp_path, 4, 1, seed=4)
    reader = start_de_reader(layout, str(tmp_path / "kv"))
    pid = ray_local.get(reader.__ray_call__.remote(lambda self: os.getpid()))
    batch = prepare_remote(reader, KVTransferEndpoint(), layout, [request])
    assert batch.hit_blocks == [3]
    fetch = RemotePreparedBatch.fetch_layer

    def kill_before_layer_1(self, layout, layer):
        if layer == 1:
            ray_local.kill(reader)
            deadline = time.monotonic() + 30
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:  # (the kill is asynchronous)
                time.sleep(0.01)
        return fetch(self, layout, layer)

    monkeypatch.setattr(RemotePreparedBatch, "fetch_layer", kill_before_layer_1)
    (res,), report = engine.execute(batch)
    assert res.hit_tokens == 0 and report.computed_tokens == len(request.tokens)
    assert res.miss.cause in (FailureCause.UNREADABLE, FailureCause.TIMEOUT) and "layer 1" in res.miss.detail
    np.testing.assert_array_equal(np.asarray(res.logits), _cold_logits(params, spec, layout, request))


def test_an_unreadable_store_is_reported_as_such_not_as_a_plain_miss(tmp_path):
    # defect: read_and_offer kept only the lookup's block count, so a store path that is a file
    # showed up as MISSING with no failure listed
    spec, params, layout = tiny_model()
    (tmp_path / "kv").write_text("not a directory")
    request = PrefillRequest("r", np.arange(3 * layout.block_tokens + 8, dtype=np.int32) % spec.vocab_size)
    reader = DEReadServer(layout, str(tmp_path / "kv"), timeout_s=5)
    batch = prepare_remote(reader, KVTransferEndpoint(), layout, [request])
    key0 = block_keys(layout, request.tokens)[0]
    assert batch.hit_blocks == [0] and batch.lookup_blocks == [0]
    assert batch.miss[0].cause is FailureCause.UNREADABLE and batch.miss[0].key == key0
    assert "not a directory" in batch.miss[0].detail
    assert batch.failures == [[batch.miss[0]]]
    assert reader.store.stats().failures == {"unreadable": 1}
    (res,), report = PrefillEngine(params, spec, KVStore(layout, StoreConfig(backend="memory")),
                                   config=PrefillConfig(write_back=False)).execute(batch)
    assert res.hit_tokens == 0 and report.miss_causes == {"unreadable": 1} and report.read_failures == {"unreadable": 1}
