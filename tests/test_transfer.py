"""Links and DRAM buffer pools (dualpath_jax.transfer; the layer-wise loader: test_loader.py).

No test here orders threads by sleeping or bounds wall-clock time: threads are ordered by events
and by waiting for observable state (a link's or pool's queue length), and emulated durations are
checked exactly against a fake clock.
"""

import threading
import time

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.engine.request import RequestState
from dualpath_jax.transfer import BufferPool, BufferTimeoutError, Link, LinkConfig, Medium, Outcome
from transfer_cases import make_link, wait_until


class FakeClock:
    """A thread-safe clock that only moves when told: ``advance`` (the test) and ``sleep`` (the
    code under test, recorded in ``sleeps``) add to it."""

    def __init__(self, now=100.0):
        self.now, self.sleeps = now, []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, dt: float) -> None:
        with self._lock:
            self.now += dt

    def sleep(self, dt: float) -> None:
        with self._lock:
            self.sleeps.append(dt)
            self.now += dt


# ---- Link -----------------------------------------------------------------------------------------
def test_link_config_validation():
    with pytest.raises(ConfigError, match="rate_bytes_per_s"):
        LinkConfig("x", Medium.STORAGE, Medium.PE_BUFFER, rate_bytes_per_s=0)
    with pytest.raises(ConfigError, match="latency_s"):
        LinkConfig("x", Medium.STORAGE, Medium.PE_BUFFER, latency_s=-1)
    assert LinkConfig("x", "storage", "pe_hbm").dst is Medium.PE_HBM
    with pytest.raises(ConfigError, match=r"^link\[x\]\.src: unknown medium 'disk'; one of storage, ") as e:
        LinkConfig("x", "disk", "pe_hbm")
    assert e.value.field == "link[x].src"


@pytest.mark.parametrize("size", [1.5, float("nan"), 1024.0, "8", -1, True])
def test_byte_counts_are_whole_and_non_negative(size):
    """A link or a buffer counts bytes exactly: a fractional, NaN, float or negative count is
    refused (a NaN used to make every later total NaN, 1.5 B was reserved); numpy ints count."""
    link, pool = make_link(), BufferPool("pe.buffer", 1000)
    message = r"^num_bytes: must be >= 0 \(got -1\)" if size == -1 else r"^num_bytes: must be an int >= 0"
    for call in (link.transfer, pool.acquire, pool.claim, pool.try_acquire):
        with pytest.raises(ValueError, match=message):
            call(size)
    assert link.stats().total_bytes == 0 and pool.in_use_bytes == 0 and pool.num_waiting == 0
    assert link.transfer(np.int64(8)).record.num_bytes == 8 and pool.acquire(np.int32(8)).num_bytes == 8


def test_rate_limited_transfer_takes_bytes_over_rate():
    clock = FakeClock()
    link = make_link(rate=10e6, clock=clock)  # 10 MB/s: 200 kB -> 20 ms

    def copy():
        clock.advance(0.005)  # the real copy took 5 ms: the link waits out the other 15
        return "payload"

    res = link.transfer(200_000, copy, tag="t")
    rec = res.record
    assert res.ok and res.value == "payload"
    assert (rec.src, rec.dst, rec.num_bytes, rec.tag) == (Medium.STORAGE, Medium.PE_BUFFER, 200_000, "t")
    assert rec.start_s == 100.0 and rec.duration_s == pytest.approx(0.020)
    assert clock.sleeps == [pytest.approx(0.015)]
    slow = link.transfer(200_000, lambda: clock.advance(0.030)).record  # a copy slower than the link: no wait
    assert slow.duration_s == pytest.approx(0.030) and len(clock.sleeps) == 1
    st = link.stats()
    assert (st.num_transfers, st.total_bytes) == (2, 400_000)
    assert st.busy_s == pytest.approx(rec.duration_s + slow.duration_s)


def test_unlimited_link_only_counts_the_copy():
    clock = FakeClock()
    link = make_link(clock=clock)
    rec = link.transfer(10**9, lambda: clock.advance(0.002)).record
    assert rec.duration_s == pytest.approx(0.002) and clock.sleeps == []  # no emulated wait
    assert link.stats().total_bytes == 10**9


def test_link_serializes_fifo_and_counts_busy_time():
    clock = FakeClock()
    link = make_link(rate=20e6, clock=clock)  # 100 kB -> 5 ms each
    go, holding = threading.Event(), threading.Event()
    blocker = threading.Thread(target=lambda: link.transfer(0, lambda: (holding.set(), go.wait(30)), tag="hold"),
                               daemon=True)
    blocker.start()
    assert holding.wait(30)
    threads = []
    for i in range(6):  # arrival order 0..5: each one queues before the next starts
        t = threading.Thread(target=lambda i=i: link.transfer(100_000, tag=str(i)), daemon=True)
        t.start()
        threads.append(t)
        wait_until(lambda i=i: link.in_flight == i + 2, f"transfer {i} to queue")
    go.set()
    for t in [blocker, *threads]:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in [blocker, *threads])
    recs = [r for r in link.records() if r.tag != "hold"]
    assert [r.tag for r in recs] == [str(i) for i in range(6)]  # served in arrival order
    for i, r in enumerate(recs):  # one at a time, each 5 ms on the link's clock
        assert r.start_s == pytest.approx(100.0 + 0.005 * i) and r.duration_s == pytest.approx(0.005)
    st = link.stats()
    assert st.total_bytes == 600_000 and st.busy_s == pytest.approx(6 * 0.005) and link.in_flight == 0


def test_link_timeout_and_error_are_typed_outcomes():
    link = make_link(rate=1e6, clock=FakeClock())  # 100 kB -> 100 ms of the fake clock
    go, holding = threading.Event(), threading.Event()
    holder = threading.Thread(target=lambda: link.transfer(100_000, lambda: (holding.set(), go.wait(30))))
    holder.start()
    assert holding.wait(30)  # the link is busy until `go`
    late = link.transfer(10, timeout_s=0.01, tag="late")
    assert not late.ok and late.record.outcome is Outcome.TIMEOUT and "busy" in late.record.cause
    go.set()
    holder.join(timeout=30)
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
    with pytest.raises(ValueError, match="capacity"):  # it could never fit: not None, as if it might later
        pool.try_acquire(1001)
    a.release()
    a.release()  # idempotent
    assert pool.in_use_bytes == 0 and pool.stats().peak_bytes == 600


def test_a_claim_keeps_its_place_in_the_fifo_without_waiting():
    pool = BufferPool("de.buffer", 100)
    first = pool.claim(30)  # fits, nobody queued: granted at once
    lease = first.take()
    assert lease is not None and lease.num_bytes == 30 and first.take() is None and pool.in_use_bytes == 30
    held = pool.acquire(50)  # 80 in use
    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("w", pool.acquire(40, timeout_s=30)))
    waiter.start()
    wait_until(lambda: pool.num_waiting == 1, "the waiter to queue")
    late = pool.claim(10)  # 10 B would fit, but the waiter was first
    assert late.take() is None and pool.num_waiting == 2 and pool.try_acquire(10) is None
    lease.release()  # 50 in use: the waiter's 40 fit, then the claim's 10 behind it
    waiter.join(timeout=30)
    assert got["w"].num_bytes == 40
    wait_until(lambda: pool.in_use_bytes == 100, "the claim to be granted")
    tail = late.take()
    assert tail is not None and tail.num_bytes == 10 and pool.num_waiting == 0
    for x in (held, got["w"], tail):
        x.release()
    assert pool.in_use_bytes == 0


def test_a_claim_that_does_not_fit_holds_back_the_queue_until_it_is_released():
    pool = BufferPool("de.buffer", 100)
    held = pool.acquire(80)
    big = pool.claim(50)  # first in the queue, does not fit
    with pytest.raises(BufferTimeoutError):
        pool.acquire(10, timeout_s=0.05)  # FIFO: behind the claim, though 10 B are free
    big.release()  # gives up its place
    small = pool.acquire(10, timeout_s=30)
    assert big.take() is None and pool.num_waiting == 0 and pool.in_use_bytes == 90
    granted = pool.claim(10)
    granted.release()  # granted, never taken: its bytes go back
    assert granted.take() is None and pool.in_use_bytes == 90
    for x in (held, small):
        x.release()
    assert pool.in_use_bytes == 0 and pool.stats().num_acquired == 3  # held, small and the granted claim
    with pytest.raises(ValueError, match="capacity"):
        pool.claim(101)


def test_a_claim_given_up_at_the_head_of_the_queue_wakes_the_waiter_behind_it():
    pool = BufferPool("de.buffer", 100)
    held = pool.acquire(80)
    big = pool.claim(50)  # first in the queue, does not fit
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(10, timeout_s=60)))
    waiter.start()
    wait_until(lambda: pool.num_waiting == 2, "the waiter to queue behind the claim")
    big.release()  # the waiter is first now and its 10 B fit: it must not sleep until its deadline
    waiter.join(timeout=10)
    assert not waiter.is_alive() and got[0].num_bytes == 10
    for x in (held, got[0]):
        x.release()


def test_one_request_asking_twice_at_once_holds_one_claim():
    class SlowPool(BufferPool):  # widens the window between looking for a claim and making one
        def claim(self, num_bytes):
            time.sleep(0.05)
            return super().claim(num_bytes)

    pool = SlowPool("de.buffer", 100)
    req = RequestState(rid=0, agent=0, round_index=0, trajectory_id="a", prompt=np.zeros(4, np.int32), keys=[],
                       gen_target=1, lookup_blocks=0)
    leases = []
    askers = [threading.Thread(target=lambda: leases.append(req.claim_send_space(pool, 30))) for _ in range(2)]
    for t in askers:
        t.start()
    for t in askers:
        t.join(timeout=30)
    assert pool.in_use_bytes == 30 and sum(x is not None for x in leases) == 1  # granted once, taken once
    req.fail("done", 0.0)
    next(x for x in leases if x is not None).release()
    assert pool.in_use_bytes == 0


def test_a_lease_splits_off_part_of_its_reservation():
    pool = BufferPool("de.buffer", 1000)
    a = pool.acquire(700)
    a.allocate((100,), np.uint8)
    b = a.split(500)  # of the 600 B not held yet
    assert (a.num_bytes, b.num_bytes, pool.in_use_bytes) == (200, 500, 700)
    with pytest.raises(ValueError, match="exceeds"):
        a.allocate((101,), np.uint8)
    with pytest.raises(ValueError, match="cannot split 101 B"):
        a.split(101)
    a.release()
    assert pool.in_use_bytes == 500  # each part goes back on its own
    b.release()
    assert pool.in_use_bytes == 0
    with pytest.raises(ValueError, match="already released"):
        b.split(0)


def test_buffer_back_pressure_blocks_then_times_out():
    clock = FakeClock()
    pool = BufferPool("de.buffer", 1000, clock=clock)
    held = pool.acquire(800)
    errors = []

    def timing_out():
        try:
            pool.acquire(300, timeout_s=0.5)
        except BufferTimeoutError as e:
            errors.append(e)

    waiter = threading.Thread(target=timing_out, daemon=True)
    waiter.start()
    wait_until(lambda: pool.num_waiting == 1, "the request to queue")
    clock.advance(0.25)
    pool.wake()
    assert not errors and pool.num_waiting == 1  # before its deadline it keeps waiting: back-pressure
    clock.advance(0.25)  # now at its deadline (exact in binary floating point)
    pool.wake()
    waiter.join(timeout=30)
    (err,) = errors
    assert (err.pool, err.num_bytes, err.in_use_bytes, err.capacity_bytes) == ("de.buffer", 300, 800, 1000)
    assert err.waited_s == 0.5
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(300, timeout_s=60)), daemon=True)
    waiter.start()
    wait_until(lambda: pool.num_waiting == 1, "the second request to queue")
    assert not got and pool.in_use_bytes == 800  # blocked: back-pressure, not growth
    held.release()
    waiter.join(timeout=30)
    assert got and pool.in_use_bytes == 300
    assert pool.stats().num_timeouts == 1 and pool.stats().peak_bytes == 800


def test_buffer_is_fifo_so_large_requests_are_not_starved():
    pool = BufferPool("b", 1000)
    first = pool.acquire(900)
    served = []
    big = threading.Thread(target=lambda: served.append(("big", pool.acquire(1000, timeout_s=60))), daemon=True)
    big.start()
    wait_until(lambda: pool.num_waiting == 1, "the big request to queue")
    small = threading.Thread(target=lambda: served.append(("small", pool.acquire(50, timeout_s=60))), daemon=True)
    small.start()
    wait_until(lambda: pool.num_waiting == 2, "the small request to queue")
    pool.wake()  # both recheck: 50 B would fit, but the big request arrived first
    assert served == [] and pool.num_waiting == 2
    first.release()
    big.join(timeout=30)
    assert served[0][0] == "big"
    served[0][1].release()
    small.join(timeout=30)
    assert [s[0] for s in served] == ["big", "small"]


def test_a_lease_released_while_a_block_is_held_keeps_nothing():
    """hold() and release() on two threads: whichever runs second sees the other, so a released
    lease never keeps a block alive (or counts its bytes) after the pool took the bytes back."""
    pool = BufferPool("de_buffer/node1", 1 << 20)
    lease = pool.acquire(4096)
    in_hold, released = threading.Event(), threading.Event()

    class Block(np.ndarray):
        @property
        def nbytes(self):  # read inside hold(): let release() run on the other thread meanwhile
            in_hold.set()
            released.wait(0.5)  # (with hold under the lease's lock, release waits for it instead)
            return super().nbytes

    block = np.zeros(4096, np.uint8).view(Block)
    errors = []

    def hold():
        try:
            lease.hold(block)
        except ValueError as e:
            errors.append(str(e))
    t = threading.Thread(target=hold)
    t.start()
    in_hold.wait(30)
    lease.release()
    released.set()
    t.join(30)
    assert lease.arrays == [] and lease.held_bytes == 0 and pool.in_use_bytes == 0
    assert errors in ([], ["lease on de_buffer/node1: already released"])


def test_an_interrupt_in_a_copy_a_wait_or_an_emulated_duration_releases_the_link():
    # Ctrl-C (a BaseException, not an Exception) must not leave the link held: every later transfer
    # would wait for a ticket nobody serves
    def interrupt(*_, **__):
        raise KeyboardInterrupt

    link = Link(LinkConfig("x", Medium.PE_BUFFER, Medium.PE_HBM))
    with pytest.raises(KeyboardInterrupt):
        link.transfer(10, interrupt)
    assert link.records()[-1].cause == "interrupted (KeyboardInterrupt)" and link.in_flight == 0
    assert link.transfer(10, lambda: 1, timeout_s=0.5).record.outcome is Outcome.OK
    slow = Link(LinkConfig("snic", Medium.STORAGE, Medium.PE_BUFFER, rate_bytes_per_s=1e3), sleep=interrupt)
    with pytest.raises(KeyboardInterrupt):
        slow.transfer(1000, lambda: 1)  # interrupted in the emulated duration
    slow._sleep = lambda s: None
    assert slow.transfer(10, lambda: 1, timeout_s=0.5).record.outcome is Outcome.OK
    # interrupted while waiting behind a holder: its ticket is given up
    held, go = threading.Event(), threading.Event()
    holder = threading.Thread(target=lambda: link.transfer(10, lambda: (held.set(), go.wait(5))))
    holder.start()
    held.wait(5)
    real_wait = link._cond.wait_for
    link._cond.wait_for = interrupt
    with pytest.raises(KeyboardInterrupt):
        link.transfer(10, lambda: 1)
    link._cond.wait_for = real_wait
    go.set()
    holder.join(5)
    assert link.transfer(10, lambda: 1, timeout_s=0.5).record.outcome is Outcome.OK and link.in_flight == 0


def test_an_interrupted_buffer_wait_leaves_the_queue():
    pool = BufferPool("b", 100)
    first = pool.acquire(100)
    real_wait = pool._cond.wait

    def interrupt(*_):
        raise KeyboardInterrupt

    pool._cond.wait = interrupt
    with pytest.raises(KeyboardInterrupt):
        pool.acquire(50)
    pool._cond.wait = real_wait
    first.release()
    assert pool.acquire(100, timeout_s=0.5).num_bytes == 100  # not queued behind the interrupted one
