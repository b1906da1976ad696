"""Cross-process KV transport (dualpath_jax.transfer.remote) between two real processes.

A spawned peer process holds its own KVTransferEndpoint and is driven over a pipe. Arrays are
built from seeded random bytes in each process independently, so a pull is checked byte for
byte against data the transport never touched. Byte counts are hand-computed from shapes and
dtype sizes (tiny-gqa: K=2 KV heads, H=16, f32 K and V -> Bt = 2*2*16*4 = 256 B per token per
layer, a Layer Block of Z=64 tokens = 16384 B; PAPER.md section 2.2).
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from dualpath_jax.config import ConfigError  # noqa: E402
from dualpath_jax.kvcache import layout_for  # noqa: E402
from dualpath_jax.model import get_spec  # noqa: E402
from dualpath_jax.transfer.remote import (ArraySpec, KVOffer, KVPullAborted, KVPullTimeout,  # noqa: E402
                                          KVTransferEndpoint, KVTransferError, derive_uuid, layer_block_specs)

# (shape, dtype, seed): a Layer Block, a 2-D f32 array, bf16, fp8 and an int32 scalar.
CASES = [((1, 64, 256), "uint8", 1), ((3, 5), "float32", 2), ((2, 64, 8), "bfloat16", 3),
         ((4, 64), "float8_e4m3fn", 4), ((), "int32", 5)]
CASE_BYTES = 16384 + 3 * 5 * 4 + 2 * 64 * 8 * 2 + 4 * 64 * 1 + 4  # = 17060


def _make(shape, dtype, seed) -> np.ndarray:
    """Seeded random bytes viewed as ``dtype[shape]`` (the same in every process)."""
    itemsize = jax.numpy.dtype(dtype).itemsize
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * itemsize, dtype=np.uint8)
    return raw.view(jax.numpy.dtype(dtype)).reshape(shape)


def _peer(conn) -> None:
    """The other process: ``(command, *args)`` messages over ``conn`` until ``None``."""
    endpoint = KVTransferEndpoint("peer", pull_timeout_s=10.0)
    conn.send(endpoint.address)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        cmd, *args = msg
        try:
            if cmd == "offer":
                cases, uuid, expire_s = args
                arrays = [jax.device_put(_make(*c)) for c in cases]
                conn.send(endpoint.offer(arrays, uuid, expire_s=expire_s))
            elif cmd == "pull":
                out = endpoint.pull_offer(args[0])
                conn.send([(np.asarray(a).tobytes(), a.dtype.name, a.shape) for a in out])
            elif cmd == "stats":
                conn.send(endpoint.stats())
        except Exception as e:  # reported to the test, which fails on it
            conn.send(e)


class Peer:
    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_peer, args=(child,), daemon=True)
        self.proc.start()
        assert self.conn.poll(60), "peer process did not start"
        self.address = self.conn.recv()

    def call(self, *msg):
        self.conn.send(msg)
        assert self.conn.poll(30), f"peer did not answer {msg[0]}"
        out = self.conn.recv()
        if isinstance(out, Exception):
            raise out
        return out

    def close(self):
        if self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.close()


@pytest.fixture(scope="module")
def endpoint():
    return KVTransferEndpoint("test", pull_timeout_s=10.0)


def _assert_exact(arrays, cases):
    assert len(arrays) == len(cases)
    for a, (shape, dtype, seed) in zip(arrays, cases):
        assert a.shape == shape and a.dtype == jax.numpy.dtype(dtype)
        assert np.asarray(a).tobytes() == _make(shape, dtype, seed).tobytes()


# ---- two processes --------------------------------------------------------------------------------
def test_pull_from_peer_is_bit_exact_and_counted(peer, endpoint):
    before = endpoint.stats()
    peer_before = peer.call("stats")
    offer = peer.call("offer", CASES, None, None)
    assert offer.address == peer.address and offer.num_bytes == CASE_BYTES
    assert offer.specs == tuple(ArraySpec(s, d) for s, d, _ in CASES)
    out = endpoint.pull_offer(offer)
    _assert_exact(out, CASES)
    assert all(a.devices() == {endpoint.device} for a in out)
    after = endpoint.stats()
    assert after.bytes_pulled - before.bytes_pulled == CASE_BYTES
    assert after.num_pulled - before.num_pulled == 1 and after.num_failed == before.num_failed
    peer_after = peer.call("stats")
    assert peer_after.bytes_offered - peer_before.bytes_offered == CASE_BYTES
    assert peer_after.num_offered - peer_before.num_offered == 1


def test_peer_pulls_from_here(peer, endpoint):
    """The other direction (e.g. a PE's hand-off pulled by a DE buffer), with explicit uuids."""
    layout = layout_for(get_spec("tiny-gqa"), "f32")
    cases = [(layout.layer_block_shape, "uint8", 10 + i) for i in range(3)]
    uuid = derive_uuid("req7", "layer", 2)
    offer = endpoint.offer([_make(*c) for c in cases], uuid, tag="req7/layer2")
    assert offer.uuid == uuid and offer.num_bytes == 3 * 16384 and offer.tag == "req7/layer2"
    assert offer.specs == layer_block_specs(layout, 3)
    got = peer.call("pull", offer)
    for (raw, dtype, shape), (want_shape, want_dtype, seed) in zip(got, cases):
        assert (shape, dtype) == (want_shape, want_dtype)
        assert raw == _make(want_shape, want_dtype, seed).tobytes()
    assert peer.call("stats").bytes_pulled >= 3 * 16384


def test_pull_waits_for_a_later_offer(peer, endpoint):
    uuid = endpoint.next_uuid()
    cases = [((8, 16), "float32", 21)]
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        out=endpoint.pull(peer.address, uuid, [ArraySpec((8, 16), "float32")], timeout_s=10.0)))
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # nothing offered yet
    peer.call("offer", cases, uuid, None)
    thread.join(10)
    _assert_exact(result["out"], cases)


def test_unknown_and_pulled_twice_raise_within_timeout(peer, endpoint):
    failed = endpoint.stats().num_failed
    t0 = time.perf_counter()
    with pytest.raises(KVPullTimeout) as err:
        endpoint.pull(peer.address, derive_uuid("never offered"), [ArraySpec((4,), "uint8")], timeout_s=0.5)
    assert 0.5 <= time.perf_counter() - t0 < 3.0
    assert err.value.uuid == derive_uuid("never offered") and err.value.address == peer.address
    assert isinstance(err.value, TimeoutError)
    offer = peer.call("offer", [((16,), "uint8", 31)], None, None)
    _assert_exact(endpoint.pull_offer(offer), [((16,), "uint8", 31)])
    with pytest.raises(KVPullTimeout):  # an offer is pulled once
        endpoint.pull_offer(offer, timeout_s=0.5)
    assert endpoint.stats().num_failed == failed + 2


def test_an_abort_ends_the_wait_for_an_offer_that_will_never_come(peer, endpoint):
    failed = endpoint.stats().num_failed
    told = threading.Timer(0.3, lambda: cause.append("the sender's carry failed"))
    cause: list = []
    t0 = time.perf_counter()
    told.start()
    with pytest.raises(KVPullAborted) as err:
        endpoint.pull(peer.address, derive_uuid("never offered either"), [ArraySpec((4,), "uint8")], timeout_s=30.0,
                      abort=lambda: cause[0] if cause else "")
    assert 0.3 <= time.perf_counter() - t0 < 3.0  # at the abort, not at the 30 s timeout
    assert err.value.cause == "the sender's carry failed" and "aborted" in str(err.value)
    assert not isinstance(err.value, TimeoutError) and endpoint.stats().num_failed == failed + 1
    # an abort that never fires changes nothing
    offer = peer.call("offer", [((16,), "uint8", 32)], None, None)
    _assert_exact(endpoint.pull_offer(offer, abort=lambda: ""), [((16,), "uint8", 32)])


def test_expired_offer_is_dropped(peer, endpoint):
    offer = peer.call("offer", [((16,), "uint8", 41)], None, 0.2)
    time.sleep(0.5)
    with pytest.raises(KVPullTimeout):
        endpoint.pull_offer(offer, timeout_s=0.5)


def test_specs_smaller_than_offer_fail(peer, endpoint):
    offer = peer.call("offer", [((1000,), "uint8", 51)], None, None)
    with pytest.raises(KVTransferError, match="(?i)invalid") as err:
        endpoint.pull(offer.address, offer.uuid, [ArraySpec((500,), "uint8")], timeout_s=5.0)
    assert not isinstance(err.value, KVPullTimeout)


def test_dead_peer_fails_fast_then_times_out(endpoint):
    """An open connection to a peer whose process ended fails at once; a new one times out."""
    dying = Peer()
    try:
        offer = dying.call("offer", [((16,), "uint8", 61)], None, None)
        _assert_exact(endpoint.pull_offer(offer), [((16,), "uint8", 61)])  # opens the connection
        dying.proc.kill()
        dying.proc.join(10)
        t0 = time.perf_counter()
        with pytest.raises(KVTransferError, match="(?i)closed") as err:
            endpoint.pull(dying.address, 12345, [ArraySpec((16,), "uint8")], timeout_s=5.0)
        assert not isinstance(err.value, KVPullTimeout) and time.perf_counter() - t0 < 2.0
        t0 = time.perf_counter()
        with pytest.raises(KVPullTimeout):  # the failed connection was dropped; a new one waits
            endpoint.pull(dying.address, 12346, [ArraySpec((16,), "uint8")], timeout_s=0.5)
        assert time.perf_counter() - t0 < 3.0
    finally:
        dying.close()


# ---- in-process checks ----------------------------------------------------------------------------
def test_offer_refuses_bad_uuids(endpoint):
    uuid = endpoint.next_uuid()
    endpoint.offer([np.zeros(4, np.uint8)], uuid)
    with pytest.raises(ValueError, match="already offered"):
        endpoint.offer([np.zeros(4, np.uint8)], uuid)
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError, match="2\\*\\*64"):
            endpoint.offer([np.zeros(4, np.uint8)], bad)
    with pytest.raises(ValueError, match="at least one"):
        endpoint.offer([])
    for arrays, where in (([np.zeros((0, 64, 8), np.uint8)], r"arrays\[0\] has no bytes \(shape \(0, 64, 8\)"),
                          ([np.zeros(4, np.uint8), np.zeros(0, np.uint8)], r"arrays\[1\] has no bytes \(shape \(0,\)")):
        with pytest.raises(ValueError, match=where):
            endpoint.offer(arrays)  # a pull of it would never complete: the receiver would wait its whole timeout
    with pytest.raises(ConfigError) as err:
        endpoint.offer([np.zeros(4, np.uint8)], expire_s=0)
    assert err.value.field == "expire_s"


def test_uuids():
    a = KVTransferEndpoint("a")
    ids = [a.next_uuid() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(0 <= i < 1 << 64 for i in ids)
    assert derive_uuid("r", 1, 2) == derive_uuid("r", 1, 2)
    assert len({derive_uuid("r", i, l) for i in range(50) for l in range(20)}) == 1000
    assert derive_uuid("r", 12) != derive_uuid("r1", 2)  # parts are separated
    assert all(0 <= derive_uuid(i) < 1 << 64 for i in range(100))
    # an end holding numpy integers derives the other end's uuid
    assert derive_uuid("r", np.int64(7), np.int32(2)) == derive_uuid("r", 7, 2)
    assert derive_uuid("r", np.str_("a"), np.float64(0.5)) == derive_uuid("r", "a", 0.5)
    with pytest.raises(ValueError):
        derive_uuid()


def test_specs_and_config_errors():
    layout = layout_for(get_spec("tiny-gqa"), "f32")
    (spec,) = layer_block_specs(layout, 1)
    assert spec == ArraySpec((1, 64, 256), "uint8") and spec.nbytes == 16384
    assert ArraySpec((2, 64, 8), "bfloat16").nbytes == 2048 and ArraySpec((), "int32").nbytes == 4
    assert layer_block_specs(layout, 0) == ()
    for field, make in (("spec.dtype", lambda: ArraySpec((1,), "float99")),
                        ("spec.shape", lambda: ArraySpec((1, -2), "uint8")),
                        ("num_blocks", lambda: layer_block_specs(layout, -1)),
                        ("pull_timeout_s", lambda: KVTransferEndpoint(pull_timeout_s=0)),
                        ("host", lambda: KVTransferEndpoint(host=""))):
        with pytest.raises(ConfigError) as err:
            make()
        assert err.value.field == field
    offer = KVOffer("127.0.0.1:1", 7, (ArraySpec((3, 5), "float32"), spec))
    assert offer.num_bytes == 60 + 16384
