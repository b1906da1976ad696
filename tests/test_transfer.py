"""Links, DRAM buffer pools and the layer-wise loader (dualpath_jax.transfer)."""

import threading
import time

import jax
import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.transfer import (BufferPool, BufferTimeoutError, LayerwiseLoader, Link, LinkConfig, LoaderError,
                                   Medium, Outcome)


def _link(rate=None, name="l"):
    return Link(LinkConfig(name, Medium.STORAGE, Medium.PE_BUFFER, rate_bytes_per_s=rate))


# ---- Link -----------------------------------------------------------------------------------------
def test_link_config_validation():
    with pytest.raises(ConfigError, match="rate_bytes_per_s"):
        LinkConfig("x", Medium.STORAGE, Medium.PE_BUFFER, rate_bytes_per_s=0)
    with pytest.raises(ConfigError, match="latency_s"):
        LinkConfig("x", Medium.STORAGE, Medium.PE_BUFFER, latency_s=-1)
    assert LinkConfig("x", "storage", "pe_hbm").dst is Medium.PE_HBM


def test_rate_limited_transfer_takes_bytes_over_rate():
    link = _link(rate=10e6)  # 10 MB/s: 200 kB -> 20 ms
    res = link.transfer(200_000, lambda: "payload", tag="t")
    rec = res.record
    assert res.ok and res.value == "payload"
    assert (rec.src, rec.dst, rec.num_bytes, rec.tag) == (Medium.STORAGE, Medium.PE_BUFFER, 200_000, "t")
    assert 0.020 <= rec.duration_s < 0.020 + 0.05
    st = link.stats()
    assert (st.num_transfers, st.total_bytes) == (1, 200_000) and st.busy_s == pytest.approx(rec.duration_s)


def test_unlimited_link_only_counts_the_copy():
    link = _link()
    rec = link.transfer(10**9, lambda: None).record
    assert rec.duration_s < 0.01 and link.stats().total_bytes == 10**9


def test_link_serializes_fifo_and_counts_busy_time():
    link = _link(rate=20e6)  # 100 kB -> 5 ms each
    order, threads = [], []
    for i in range(6):
        t = threading.Thread(target=lambda i=i: order.append(link.transfer(100_000, tag=str(i)).record))
        t.start()
        threads.append(t)
        time.sleep(0.001)  # arrival order 0..5
    for t in threads:
        t.join(timeout=10)
    recs = sorted(link.records(), key=lambda r: r.start_s)
    assert [r.tag for r in recs] == [str(i) for i in range(6)]
    for a, b in zip(recs, recs[1:]):
        assert b.start_s >= a.finish_s  # one transfer at a time
    st = link.stats()
    assert st.total_bytes == 600_000 and st.busy_s == pytest.approx(sum(r.duration_s for r in recs))
    assert recs[-1].finish_s - recs[0].start_s >= 6 * 0.005


def test_link_timeout_and_error_are_typed_outcomes():
    link = _link(rate=1e6)  # 100 kB -> 100 ms
    holder = threading.Thread(target=lambda: link.transfer(100_000))
    holder.start()
    time.sleep(0.01)
    late = link.transfer(10, timeout_s=0.01, tag="late")
    assert not late.ok and late.record.outcome is Outcome.TIMEOUT and "busy" in late.record.cause
    holder.join(timeout=10)
    after = link.transfer(10)  # the abandoned ticket does not block later transfers
    assert after.ok

    def boom():
        raise OSError("device lost")

    bad = link.transfer(10, boom)
    assert bad.record.outcome is Outcome.ERROR and "device lost" in bad.record.cause and bad.value is None
    st = link.stats()
    assert st.num_failed == 2 and st.total_bytes == 100_000 + 10


# ---- BufferPool -----------------------------------------------------------------------------------
def test_buffer_accounting_and_limits():
    pool = BufferPool("pe.buffer", 1000)
    a = pool.acquire(600)
    assert pool.in_use_bytes == 600
    assert pool.try_acquire(500) is None
    arr = a.allocate((150,), np.float32)  # 600 B
    assert arr.nbytes == 600 and a.held_bytes == 600
    with pytest.raises(ValueError, match="exceeds"):
        a.hold(np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="capacity"):
        pool.acquire(1001)
    a.release()
    a.release()  # idempotent
    assert pool.in_use_bytes == 0 and pool.stats().peak_bytes == 600


def test_buffer_back_pressure_blocks_then_times_out():
    pool = BufferPool("de.buffer", 1000)
    held = pool.acquire(800)
    t0 = time.perf_counter()
    with pytest.raises(BufferTimeoutError) as err:
        pool.acquire(300, timeout_s=0.05)
    assert 0.05 <= time.perf_counter() - t0 < 1.0
    assert (err.value.pool, err.value.num_bytes, err.value.in_use_bytes) == ("de.buffer", 300, 800)
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(300, timeout_s=5)))
    waiter.start()
    time.sleep(0.05)
    assert not got  # still blocked: back-pressure, not growth
    held.release()
    waiter.join(timeout=5)
    assert got and pool.in_use_bytes == 300
    assert pool.stats().num_timeouts == 1 and pool.stats().peak_bytes == 800


def test_buffer_is_fifo_so_large_requests_are_not_starved():
    pool = BufferPool("b", 1000)
    first = pool.acquire(900)
    served = []
    big = threading.Thread(target=lambda: served.append(("big", pool.acquire(1000, timeout_s=5))))
    big.start()
    time.sleep(0.02)
    small = threading.Thread(target=lambda: served.append(("small", pool.acquire(50, timeout_s=5))))
    small.start()
    time.sleep(0.02)
    assert served == []  # 50 B would fit, but the big request arrived first
    first.release()
    big.join(timeout=5)
    assert served[0][0] == "big"
    served[0][1].release()
    small.join(timeout=5)
    assert [s[0] for s in served] == ["big", "small"]


# ---- LayerwiseLoader -------------------------------------------------------------------------------
def _host_layers(num_layers, n=1000):
    return [(np.full((n,), layer, np.float32), np.arange(n, dtype=np.int32) + layer) for layer in range(num_layers)]


def test_loader_delivers_each_layer_on_device():
    host = _host_layers(5)
    with LayerwiseLoader(5, lambda l: host[l], depth=2) as loader:
        for layer in range(5):
            a, b = loader.get(layer)
            assert isinstance(a, jax.Array) and a.devices() == {jax.devices()[0]}
            np.testing.assert_array_equal(np.asarray(a), host[layer][0])
            np.testing.assert_array_equal(np.asarray(b), host[layer][1])
            loader.release(layer)
            assert a.is_deleted()
        st = loader.stats()
    assert st.loaded_bytes == 5 * 8000 and len(st.records) == 5
    assert all(r.outcome is Outcome.OK and r.num_bytes == 8000 for r in st.records)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_loader_holds_at_most_depth_layers(depth):
    host = _host_layers(6)
    in_flight_max = []
    with LayerwiseLoader(6, lambda l: host[l], _link(rate=50e6), depth=depth) as loader:
        for layer in range(6):
            loader.get(layer)
            time.sleep(0.005)  # give the loader time to run ahead as far as it may
            in_flight_max.append(loader.held_device_bytes)
            loader.release(layer)
        peak = loader.peak_device_bytes
    assert peak == depth * 8000
    assert max(in_flight_max) == depth * 8000


def test_double_buffering_overlaps_load_and_compute():
    """Sleep-based 'compute' and an emulated link: depth 2 ~ (L+1) steps, depth 1 ~ 2L steps."""
    num_layers, step_s = 8, 0.02
    host = _host_layers(num_layers, n=25_000)  # 200 kB per layer at 10 MB/s -> 20 ms
    times = {}
    for depth in (1, 2):
        t0 = time.perf_counter()
        with LayerwiseLoader(num_layers, lambda l: host[l], _link(rate=10e6), depth=depth) as loader:
            for layer in range(num_layers):
                loader.get(layer)
                time.sleep(step_s)
                loader.release(layer)
        times[depth] = time.perf_counter() - t0
    assert times[1] >= 2 * num_layers * step_s
    assert times[2] < 0.75 * times[1]


def test_loader_reports_failures_and_never_hangs():
    host = _host_layers(4)

    def fetch(layer):
        if layer == 2:
            raise OSError("PE buffer page lost")
        return host[layer]

    with LayerwiseLoader(4, fetch, depth=2, timeout_s=5) as loader:
        loader.get(0)
        loader.release(0)
        loader.get(1)
        loader.release(1)
        with pytest.raises(LoaderError) as err:
            loader.get(2)
        assert err.value.layer == 2 and "PE buffer page lost" in err.value.cause
        np.testing.assert_array_equal(np.asarray(loader.get(3)[0]), host[3][0])

    blocker = threading.Event()
    t0 = time.perf_counter()
    with LayerwiseLoader(2, lambda l: blocker.wait(10) and host[l], depth=1, timeout_s=0.1) as loader:
        with pytest.raises(LoaderError, match="timeout"):
            loader.get(0)
        blocker.set()
    assert time.perf_counter() - t0 < 5


def test_close_frees_device_arrays():
    host = _host_layers(3)
    loader = LayerwiseLoader(3, lambda l: host[l], depth=3).start()
    arrays = [loader.get(layer)[0] for layer in range(3)]
    loader.close()
    assert all(a.is_deleted() for a in arrays) and loader.held_device_bytes == 0
