"""The layer-wise loader (dualpath_jax.transfer.LayerwiseLoader): pipelined host -> device copies
of one layer's KV at a time, at most ``depth`` layers on the device.

Threads are ordered by events and by waiting for observable state (the loader's held layers),
not by sleeping; the one wall-clock bound (a misuse fails at once) is a third of the timeout the
failure it replaces would wait.
"""

import re
import threading
import time

import jax
import numpy as np
import pytest

from dualpath_jax.transfer import LayerwiseLoader, Link, LinkConfig, LoaderError, Medium, Outcome
from transfer_cases import make_link, wait_until


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
    with LayerwiseLoader(6, lambda l: host[l], make_link(rate=50e6), depth=depth) as loader:
        for layer in range(6):
            loader.get(layer)
            ahead = min(depth, 6 - layer)  # this layer and the ones the loader may run ahead to
            wait_until(lambda: loader.held_device_bytes == ahead * 8000, f"{ahead} layers held at layer {layer}")
            loader.release(layer)
        peak = loader.peak_device_bytes
    assert peak == depth * 8000  # it ran ahead exactly as far as it may, never further


@pytest.mark.parametrize("depth", [1, 2])
def test_a_released_layer_or_one_past_depth_fails_at_once_not_by_timeout(depth):
    """Getting a layer back after its release, or a layer the loader cannot load because depth
    earlier layers are held and none is released, is the consumer's mistake: a ValueError at once
    (it would otherwise wait out the whole timeout, then blame the load)."""
    host = _host_layers(4)
    with LayerwiseLoader(4, lambda l: host[l], depth=depth, timeout_s=30.0) as loader:
        loader.get(0)
        loader.release(0)
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=r"^layer: 0 was released"):
            loader.get(0)
        for layer in range(1, 1 + depth):  # depth layers held, none released
            loader.get(layer)
        held = re.escape(str(list(range(1, 1 + depth))))
        with pytest.raises(ValueError, match=rf"^layer: {1 + depth} cannot load while layers {held} are held: the "
                                             rf"loader holds at most depth={depth} layers"):
            loader.get(1 + depth)
        assert time.perf_counter() - t0 < 10.0
        loader.release(1)  # a slot frees: the next layer loads as usual
        np.testing.assert_array_equal(np.asarray(loader.get(1 + depth)[0]), host[1 + depth][0])


def test_double_buffering_overlaps_load_and_compute():
    """While layer l is in use (held, its compute not finished), depth 2 moves layer l+1 to the
    device; depth 1 cannot, until l is released: load and compute overlap only with depth >= 2."""
    num_layers = 6
    host = _host_layers(num_layers)
    for depth in (1, 2):
        moved_while_held = []
        with LayerwiseLoader(num_layers, lambda l: host[l], make_link(rate=50e6), depth=depth) as loader:
            for layer in range(num_layers):
                loader.get(layer)
                if layer + 1 < num_layers:
                    try:  # depth 2 delivers it (the wait is bounded generously); depth 1 cannot, and says so
                        loader.get(layer + 1, timeout_s=30)
                        moved_while_held.append(True)
                    except ValueError as e:
                        assert str(e).startswith(f"layer: {layer + 1} cannot load while layers [{layer}] are held")
                        moved_while_held.append(False)
                loader.release(layer)
            assert loader.stats().loaded_bytes == num_layers * 8000
        assert moved_while_held == [depth == 2] * (num_layers - 1)


def _aligned(n, dtype=np.float32):
    """A 64-byte-aligned host array of n elements (JAX on CPU aliases such buffers zero-copy)."""
    nbytes = n * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + nbytes].view(dtype)


def test_loader_layers_do_not_alias_reused_staging_buffers():
    """A fetch that gathers into two reused staging buffers: layer l+2 is fetched into layer l's
    buffer while layer l is still in use, and layer l must still read its own values."""
    n = 4096  # 16 KiB per leaf
    staging = [(_aligned(n), _aligned(n, np.int32)) for _ in range(2)]
    assert all(x.ctypes.data % 64 == 0 for pair in staging for x in pair)
    fetched = [threading.Event() for _ in range(4)]

    def fetch(layer):
        k, v = staging[layer % 2]
        k[:] = layer + 1
        v[:] = -(layer + 1)
        fetched[layer].set()
        return k, v

    seen = []
    with LayerwiseLoader(4, fetch, depth=2, timeout_s=10) as loader:
        for layer in range(4):
            k, v = loader.get(layer)
            if layer + 2 < 4:  # the loader fetches layer+2 (into this layer's buffer) before it needs a slot
                assert fetched[layer + 2].wait(10)
            seen.append((float(np.asarray(k).max()), float(np.asarray(k).min()), int(np.asarray(v).max())))
            loader.release(layer)
    assert seen == [(layer + 1, layer + 1, -(layer + 1)) for layer in range(4)]


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

    blocker = threading.Event()  # a fetch that does not return until told: get() gives up with a timeout
    with LayerwiseLoader(2, lambda l: blocker.wait(30) and host[l], depth=1, timeout_s=0.1) as loader:
        with pytest.raises(LoaderError, match="timeout"):
            loader.get(0)
        blocker.set()


def test_a_copy_error_that_escapes_the_link_or_a_dead_loader_thread_reaches_get_at_once():
    """A link that lets the copy's exception escape (a path with no bytes to carry runs the copy
    itself), or a loader thread that dies, must not leave ``get`` waiting out its timeout and
    reporting one: the layer fails with the cause, and it is not a timeout."""
    host = _host_layers(2)

    class RaisingLink:
        name = "kv_in/pe0"

        def transfer(self, num_bytes, fn=None, *, timeout_s=None, tag=""):
            raise RuntimeError("RESOURCE_EXHAUSTED: out of device memory")

    with LayerwiseLoader(2, lambda l: host[l], RaisingLink(), depth=1, timeout_s=30) as loader:
        with pytest.raises(LoaderError) as err:
            loader.get(0)
        assert "RESOURCE_EXHAUSTED" in err.value.cause and not err.value.timed_out
        assert isinstance(err.value.__cause__, RuntimeError)

    loader = LayerwiseLoader(2, lambda l: host[l], depth=1, timeout_s=30)

    class BrokenSlots:  # a bug in the loader's own bookkeeping ends its thread
        def acquire(self, timeout=None):
            raise AssertionError("bookkeeping bug")

        def release(self):
            pass

    loader._slots = BrokenSlots()
    with loader:
        with pytest.raises(LoaderError) as err:
            loader.get(0)
        assert "loader thread died" in err.value.cause and "bookkeeping bug" in err.value.cause
        assert not err.value.timed_out
    timeout = LoaderError(3, "timeout: not loaded within 1 s")
    assert timeout.timed_out and not LoaderError(3, "closed").timed_out


def test_close_does_not_wait_out_a_link_timeout():
    """A forward whose layer failed closes its loader at once: the loader thread still queued on a
    busy link ends on its own (the link's timeout) and starts no other layer."""
    link = Link(LinkConfig("cnic_out/pe0", Medium.PE_BUFFER, Medium.PE_HBM))
    busy, go = threading.Event(), threading.Event()
    holder = threading.Thread(target=lambda: link.transfer(1, lambda: (busy.set(), go.wait(60))))
    holder.start()
    busy.wait(30)
    loader = LayerwiseLoader(4, lambda l: np.zeros((8, 8), np.float32), link, depth=2, timeout_s=60).start()
    wait_until(lambda: link.in_flight == 2, "the loader to queue on the link")
    loader.close()
    assert loader._thread.is_alive()  # still in the link's queue: close() did not wait for it
    go.set()
    holder.join(30)
    loader._thread.join(30)
    assert not loader._thread.is_alive() and loader.held_device_bytes == 0
    assert [r.tag for r in link.records()] == ["", "layer0"]  # the queued layer went; no other started


def test_close_frees_device_arrays():
    host = _host_layers(3)
    loader = LayerwiseLoader(3, lambda l: host[l], depth=3).start()
    arrays = [loader.get(layer)[0] for layer in range(3)]
    loader.close()
    assert all(a.is_deleted() for a in arrays) and loader.held_device_bytes == 0
