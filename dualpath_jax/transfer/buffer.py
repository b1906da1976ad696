"""Bounded DRAM buffer pools (PE buffer / DE buffer) with back-pressure.

PAPER.md section 2.1: each PE and DE keeps "a small amount of DRAM as buffers" (80 GB per node
for DeepSeek models in the paper). A :class:`BufferPool` bounds the bytes held: :meth:`acquire`
blocks (FIFO, so a large request is never starved by small ones) until enough capacity is free,
and gives up with :class:`BufferTimeoutError` after ``timeout_s``; a request larger than the whole
pool fails at once. Never grows beyond ``capacity_bytes``.

A thread that must not block (a PE forming its batches) takes a place in that FIFO with
:meth:`BufferPool.claim` instead: the pool reserves the bytes as soon as the :class:`Claim` is
first in the queue and they fit, and :meth:`Claim.take` hands the lease over when the thread next
looks.

A :class:`Lease` is the reservation; the data it covers (e.g. Full Blocks read from the store)
is attached with :meth:`Lease.hold` or allocated with :meth:`Lease.allocate`, and dropped on
:meth:`Lease.release` (idempotent; also a context manager).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable

import numpy as np

from dualpath_jax.config import check_positive
from dualpath_jax.transfer.link import byte_count

__all__ = ["BufferPool", "Lease", "Claim", "BufferTimeoutError", "BufferStats"]


class BufferTimeoutError(TimeoutError):
    """No capacity within the deadline (back-pressure); names the pool and the numbers."""

    def __init__(self, pool: str, num_bytes: int, in_use_bytes: int, capacity_bytes: int, waited_s: float):
        self.pool, self.num_bytes, self.in_use_bytes = pool, num_bytes, in_use_bytes
        self.capacity_bytes, self.waited_s = capacity_bytes, waited_s
        super().__init__(f"buffer {pool}: could not reserve {num_bytes} B within {waited_s:.3f} s "
                         f"({in_use_bytes} of {capacity_bytes} B in use)")


@dataclasses.dataclass(frozen=True)
class BufferStats:
    capacity_bytes: int
    in_use_bytes: int
    peak_bytes: int
    num_acquired: int
    num_waited: int
    wait_s: float
    num_timeouts: int


class Lease:
    """A reservation of ``num_bytes`` in a :class:`BufferPool`; holds the arrays it covers."""

    def __init__(self, pool: "BufferPool", num_bytes: int):
        self.pool = pool
        self.num_bytes = num_bytes
        self._arrays: list[np.ndarray] = []
        self._held = 0
        self._released = False
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        return self._held

    @property
    def arrays(self) -> list[np.ndarray]:
        return list(self._arrays)

    def hold(self, array: np.ndarray) -> np.ndarray:
        """Account ``array`` against this lease and keep it alive until release.

        Raises:
          ValueError: the lease would exceed its reservation, or it was released.
        """
        nbytes = int(array.nbytes)
        with self._lock:  # against a release on another thread: a released lease keeps nothing alive
            if self._released:
                raise ValueError(f"lease on {self.pool.name}: already released")
            if self._held + nbytes > self.num_bytes:
                raise ValueError(f"lease on {self.pool.name}: holding {self._held + nbytes} B exceeds the "
                                 f"reserved {self.num_bytes} B")
            self._arrays.append(array)
            self._held += nbytes
        return array

    def allocate(self, shape, dtype=np.uint8) -> np.ndarray:
        """A new ``np.empty(shape, dtype)`` held by this lease (see :meth:`hold`)."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self._held + nbytes > self.num_bytes:
            raise ValueError(f"lease on {self.pool.name}: allocating {nbytes} B exceeds the reservation "
                             f"({self._held} of {self.num_bytes} B held)")
        return self.hold(np.empty(shape, dtype))

    def split(self, num_bytes: int) -> "Lease":
        """Move ``num_bytes`` of this lease's reservation, none of it held yet, to a new lease of the
        same pool (the pool's reserved bytes do not change; each lease is released on its own).

        Raises:
          ValueError: ``num_bytes`` negative or more than this lease holds free, or the lease was released.
        """
        with self._lock:
            if self._released:
                raise ValueError(f"lease on {self.pool.name}: already released")
            if not 0 <= num_bytes <= self.num_bytes - self._held:
                raise ValueError(f"lease on {self.pool.name}: cannot split {num_bytes} B off a reservation of "
                                 f"{self.num_bytes} B with {self._held} B held")
            self.num_bytes -= num_bytes
        return Lease(self.pool, num_bytes)

    def release(self) -> None:
        """Drop the arrays and return the reservation to the pool (idempotent and thread-safe: of
        two threads releasing one lease at once, exactly one gives the bytes back)."""
        with self._lock:
            if self._released:
                return
            self._released = True
            self._arrays.clear()
            self._held = 0
        self.pool._give_back(self.num_bytes)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Claim:
    """A place in a :class:`BufferPool`'s FIFO for ``num_bytes`` that nobody waits on (see
    :meth:`BufferPool.claim`)."""

    def __init__(self, pool: "BufferPool", ticket: int, num_bytes: int, t0: float):
        self.pool, self.ticket, self.num_bytes, self.t0 = pool, ticket, num_bytes, t0
        self._lease: Lease | None = None
        self._done = False  # taken or released: the claim is over

    def take(self) -> Lease | None:
        """The lease once the pool granted it (then the caller's, exactly once); None before."""
        with self.pool._cond:
            lease, self._lease = self._lease, None
            if lease is not None:
                self._done = True
        return lease

    def release(self) -> None:
        """Give up the place in the queue, or the granted bytes not yet taken (idempotent; a lease
        already taken is the taker's to release)."""
        pool = self.pool
        with pool._cond:
            if self._done:
                return
            self._done = True
            lease, self._lease = self._lease, None
            if self.ticket in pool._claims:
                del pool._claims[self.ticket]
                pool._queue.remove(self.ticket)
                pool._grant()  # (also wakes the waiter behind it, which may be first now)
        if lease is not None:
            lease.release()


class BufferPool:
    """A bounded DRAM buffer (see module docstring).

    Args:
      name: e.g. ``"pe0.buffer"``.
      capacity_bytes: the most bytes ever reserved at once.
      clock: seconds for :meth:`acquire` deadlines and waited times (default ``time.monotonic``).
        With another clock (a test's fake one), a waiter rechecks it at least every ``timeout_s``
        real seconds, so its deadline passes when that clock says so; :meth:`wake` makes waiters
        recheck at once.

    Raises:
      ConfigError: non-positive capacity.
    """

    def __init__(self, name: str, capacity_bytes: int, *, clock: Callable[[], float] = time.monotonic):
        check_positive(f"buffer[{name}].capacity_bytes", capacity_bytes, integer=True)
        self.name = name
        self._clock = clock
        self.capacity_bytes = int(capacity_bytes)
        self._cond = threading.Condition()
        self._in_use = 0
        self._peak = 0
        self._tickets = itertools.count()
        self._queue: list[int] = []  # waiting tickets, FIFO
        self._claims: dict[int, Claim] = {}  # the tickets of claims among them
        self._n_acquired = self._n_waited = self._n_timeouts = 0
        self._wait_s = 0.0

    @property
    def in_use_bytes(self) -> int:
        with self._cond:
            return self._in_use

    @property
    def num_waiting(self) -> int:
        """Requests queued for capacity or for their turn (waiting in :meth:`acquire` or claiming)."""
        with self._cond:
            return len(self._queue)

    def wake(self) -> None:
        """Make every waiting :meth:`acquire` recheck its capacity and deadline now."""
        with self._cond:
            self._cond.notify_all()

    def acquire(self, num_bytes: int, *, timeout_s: float | None = None) -> Lease:
        """Reserve ``num_bytes``, waiting (FIFO) for capacity.

        Args:
          num_bytes: bytes to reserve (>= 0).
          timeout_s: longest wait; ``None`` waits forever.

        Raises:
          ValueError: ``num_bytes`` negative, not an integer or larger than the pool's capacity.
          BufferTimeoutError: capacity did not free up in time.
        """
        num_bytes = self._check_size(num_bytes)
        t0 = self._clock()
        deadline = None if timeout_s is None else t0 + timeout_s
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            try:
                while not (ok := self._queue[0] == ticket and self._in_use + num_bytes <= self.capacity_bytes):
                    if deadline is None:
                        self._cond.wait()
                        continue
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            except BaseException:  # interrupted (KeyboardInterrupt...): leave the queue to those behind
                self._queue.remove(ticket)
                self._grant()
                raise
            self._queue.remove(ticket)
            waited = self._clock() - t0
            self._count_wait(waited)
            if not ok:
                self._n_timeouts += 1
                self._grant()
                raise BufferTimeoutError(self.name, num_bytes, self._in_use, self.capacity_bytes, waited)
            self._reserve(num_bytes)
            self._grant()
        return Lease(self, num_bytes)

    def claim(self, num_bytes: int) -> Claim:
        """Queue for ``num_bytes`` without waiting: a :class:`Claim` that the pool grants (reserves
        the bytes for) as soon as it is first in the FIFO and they fit, as it would wake an
        :meth:`acquire`; :meth:`Claim.take` returns the lease from then on. Give it up with
        :meth:`Claim.release`; a claim holds back the requests queued after it, as a waiter does.

        Raises:
          ValueError: ``num_bytes`` negative, not an integer or larger than the pool's capacity.
        """
        num_bytes = self._check_size(num_bytes)
        with self._cond:
            claim = Claim(self, next(self._tickets), num_bytes, self._clock())
            self._queue.append(claim.ticket)
            self._claims[claim.ticket] = claim
            self._grant()
        return claim

    def _check_size(self, num_bytes: int) -> int:
        num_bytes = byte_count(num_bytes)
        if num_bytes > self.capacity_bytes:
            raise ValueError(f"num_bytes: {num_bytes} B exceeds buffer {self.name}'s capacity "
                             f"{self.capacity_bytes} B")
        return num_bytes

    def _reserve(self, num_bytes: int) -> None:
        """Count ``num_bytes`` as reserved (caller holds the lock)."""
        self._in_use += num_bytes
        self._peak = max(self._peak, self._in_use)
        self._n_acquired += 1

    def _count_wait(self, waited_s: float) -> None:
        if waited_s > 1e-4:
            self._n_waited += 1
            self._wait_s += waited_s

    def _grant(self) -> None:
        """After the queue or the bytes in use changed: reserve the bytes of the claims first in the
        queue that fit, and wake the waiters to recheck theirs (caller holds the lock)."""
        while self._queue and (c := self._claims.get(self._queue[0])) is not None \
                and self._in_use + c.num_bytes <= self.capacity_bytes:
            del self._claims[self._queue.pop(0)]
            self._reserve(c.num_bytes)
            self._count_wait(self._clock() - c.t0)
            c._lease = Lease(self, c.num_bytes)
        self._cond.notify_all()

    def try_acquire(self, num_bytes: int) -> Lease | None:
        """Reserve ``num_bytes`` only if it fits now and nobody is queued (waiting or claiming);
        else None (taking no place in the queue: :meth:`claim` does).

        Raises:
          ValueError: ``num_bytes`` negative, not an integer or larger than the pool's capacity
            (it would never fit), as :meth:`acquire`.
        """
        num_bytes = self._check_size(num_bytes)
        with self._cond:
            if self._queue or self._in_use + num_bytes > self.capacity_bytes:
                return None
            self._reserve(num_bytes)
        return Lease(self, num_bytes)

    def _give_back(self, num_bytes: int) -> None:
        with self._cond:
            self._in_use -= num_bytes
            self._grant()

    def stats(self) -> BufferStats:
        with self._cond:
            return BufferStats(self.capacity_bytes, self._in_use, self._peak, self._n_acquired, self._n_waited,
                               self._wait_s, self._n_timeouts)
