"""Emulated links (SNIC, CNIC, PCIe) and the transfer vocabulary shared by the data path.

A :class:`Link` carries transfers one at a time in FIFO order (a ticket lock), each taking
``latency_s + num_bytes / rate_bytes_per_s`` of wall time (or the real copy time, if longer):
the transfer's real work (e.g. ``jax.device_put``) runs first, then the link sleeps out the rest
of the emulated duration, so results become available exactly when the emulated link would
have delivered them. With ``rate_bytes_per_s=None`` (the default) the link is unlimited and only
the real copy time counts. This is how the engine recreates the paper's storage-bandwidth-bound
regime on one host, with every KV transfer a real copy; counters give per-link bytes and busy time.

Every transfer yields a :class:`TransferRecord`: source and destination medium, bytes,
start/finish time (seconds of the link's clock, ``time.perf_counter`` unless another is injected)
and an :class:`Outcome` with its cause. Tests inject a fake ``clock`` and ``sleep`` to check
emulated durations exactly, without wall-clock bounds.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dualpath_jax.config import ConfigError, check_non_negative, check_positive

__all__ = ["Medium", "Outcome", "TransferRecord", "TransferResult", "LinkConfig", "Link", "LinkStats",
           "byte_count"]


class Medium(str, enum.Enum):
    """Where bytes live (PAPER.md section 2.3-2.5)."""

    STORAGE = "storage"
    PE_BUFFER = "pe_buffer"   # prefill-engine DRAM buffer
    DE_BUFFER = "de_buffer"   # decode-engine DRAM buffer
    PE_HBM = "pe_hbm"         # prefill-engine device memory
    DE_HBM = "de_hbm"         # decode-engine device memory


class Outcome(str, enum.Enum):
    """How a transfer ended (:attr:`TransferRecord.outcome`): ``OK`` carried its bytes; ``TIMEOUT``
    missed a deadline (on a :class:`Link`: did not get the link within ``timeout_s``); ``ERROR``
    failed otherwise (on a :class:`Link`: held it, but the copy raised; the record's ``cause``
    names the exception)."""

    OK = "ok"
    TIMEOUT = "timeout"   # waited longer than the deadline for the link
    ERROR = "error"       # the copy itself raised


@dataclasses.dataclass(frozen=True)
class TransferRecord:
    """One transfer on one link. Times are seconds of the link's clock (default ``time.perf_counter()``)."""

    link: str
    src: Medium
    dst: Medium
    num_bytes: int
    start_s: float
    finish_s: float
    outcome: Outcome
    cause: str = ""
    tag: str = ""

    @property
    def duration_s(self) -> float:
        return self.finish_s - self.start_s


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """``value`` returned by the transfer's copy function (None on failure) and its record."""

    value: Any
    record: TransferRecord

    @property
    def ok(self) -> bool:
        return self.record.outcome is Outcome.OK


def byte_count(num_bytes) -> int:
    """``num_bytes`` as an int (numpy integers too).

    Raises:
      ValueError: naming ``num_bytes``, for a negative count or one that is not an integer (a float,
        even a whole or NaN one: a byte count is exact, and a NaN would spoil every counter).
    """
    try:
        if isinstance(num_bytes, bool):  # (an int to Python, but no count of bytes)
            raise TypeError
        n = operator.index(num_bytes)
    except TypeError:
        raise ValueError(f"num_bytes: must be an int >= 0 (got {num_bytes!r})") from None
    if n < 0:
        raise ValueError(f"num_bytes: must be >= 0 (got {n})")
    return n


@dataclasses.dataclass(frozen=True)
class LinkConfig:
    """An emulated link.

    Attributes:
      name: e.g. ``"pe0.snic"``, ``"pe0.h2d"``.
      src, dst: media at the two ends, copied into every record of the link. A link whose
        transfers have many ends (an engine's CNIC directions carry the H2D/D2H loopback copies,
        the hand-off and the DE read path alike) gives its nominal ones: a record's ``link``
        names where its bytes went, its ``src``/``dst`` only the link's kind.
      rate_bytes_per_s: bandwidth; ``None`` = unlimited (only the real copy time counts).
      latency_s: fixed per-transfer latency added to the emulated duration.

    Raises:
      ConfigError: non-positive rate, negative latency or an unknown medium, naming the field.
    """

    name: str
    src: Medium
    dst: Medium
    rate_bytes_per_s: float | None = None
    latency_s: float = 0.0

    def __post_init__(self):
        if not self.name:
            raise ConfigError("link.name", "must be non-empty")
        if self.rate_bytes_per_s is not None:
            check_positive(f"link[{self.name}].rate_bytes_per_s", self.rate_bytes_per_s)
        check_non_negative(f"link[{self.name}].latency_s", self.latency_s)
        for end in ("src", "dst"):
            value = getattr(self, end)
            try:
                object.__setattr__(self, end, Medium(value))
            except ValueError:
                raise ConfigError(f"link[{self.name}].{end}", f"unknown medium {value!r}; one of "
                                  f"{', '.join(m.value for m in Medium)}") from None


@dataclasses.dataclass(frozen=True)
class LinkStats:
    """A link's totals since creation or :meth:`Link.reset` (:meth:`Link.stats`).

    Attributes:
      num_transfers: transfers that held the link (``OK`` and ``ERROR``; a ``TIMEOUT`` never did).
      num_failed: transfers that did not carry their bytes (``TIMEOUT`` and ``ERROR``).
      total_bytes: bytes of the successful (``OK``) transfers only.
      busy_s: seconds of the link's clock the link was held (finish - start summed over the
        transfers that held it, emulated durations included).
    """

    num_transfers: int
    num_failed: int
    total_bytes: int
    busy_s: float


class Link:
    """A FIFO-serialized, optionally rate-limited link (see module docstring).

    Thread-safe: any number of threads may call :meth:`transfer`; they are served in arrival order.

    Args:
      config: the link's settings.
      max_records: most recent records kept (older ones are dropped; counters keep totals).
      clock: seconds for records and emulated durations (default ``time.perf_counter``).
      sleep: waits out the rest of an emulated duration (default ``time.sleep``); a fake clock's
        ``sleep`` advances that clock. Waits for a busy link (``timeout_s``) are always real time.
    """

    def __init__(self, config: LinkConfig, *, max_records: int = 100_000,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], Any] = time.sleep):
        self.config = config
        self._clock, self._sleep = clock, sleep
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()
        self._records: deque[TransferRecord] = deque(maxlen=max_records)
        self._bytes = 0
        self._busy_s = 0.0
        self._n = 0
        self._failed = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_flight(self) -> int:
        """Transfers that hold the link or wait for it (not counting ones that gave up)."""
        with self._cond:
            return self._next_ticket - self._serving - len(self._abandoned)

    def emulated_s(self, num_bytes: int) -> float:
        """Emulated duration of a transfer of ``num_bytes`` (0 for an unlimited link without latency)."""
        rate = self.config.rate_bytes_per_s
        return self.config.latency_s + (0.0 if rate is None else num_bytes / rate)

    def _advance(self) -> None:  # caller holds the lock
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    def transfer(self, num_bytes: int, fn: Callable[[], Any] | None = None, *, timeout_s: float | None = None,
                 tag: str = "") -> TransferResult:
        """Carry ``num_bytes`` over the link, running ``fn`` (the real copy) while holding it.

        Args:
          num_bytes: bytes moved (for the emulated duration and the counters).
          fn: optional callable doing the actual copy; its return value is passed back.
          timeout_s: longest wait for the link to become free; ``None`` waits forever.
          tag: free-form label stored in the record.

        Returns:
          :class:`TransferResult`; its record's outcome is ``TIMEOUT`` if the link was not free
          in time, ``ERROR`` (cause = the exception) if ``fn`` raised.

        Raises:
          ValueError: ``num_bytes`` negative or not an integer.
          BaseException: what interrupted the wait, the copy or the emulated duration (a
            ``KeyboardInterrupt``...), once the link is released for the transfers behind.
        """
        num_bytes = byte_count(num_bytes)
        cfg = self.config
        t_request = self._clock()
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                got = self._cond.wait_for(lambda: self._serving == ticket, timeout=timeout_s)
            except BaseException:  # interrupted while waiting: give the ticket up, then let it through
                if self._serving == ticket:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
                raise
            if not got:
                self._abandoned.add(ticket)
                self._failed += 1
                rec = TransferRecord(cfg.name, cfg.src, cfg.dst, num_bytes, t_request, self._clock(),
                                     Outcome.TIMEOUT, f"link busy for more than {timeout_s} s", tag)
                self._records.append(rec)
                return TransferResult(None, rec)
        start = self._clock()
        value, outcome, cause = None, Outcome.OK, ""
        interrupted: BaseException | None = None
        try:
            try:
                if fn is not None:
                    value = fn()
            except Exception as e:  # the copy's failure becomes the record's cause
                outcome, cause = Outcome.ERROR, f"{type(e).__name__}: {e}"
            remaining = self.emulated_s(num_bytes) - (self._clock() - start)
            if remaining > 0 and outcome is Outcome.OK:
                self._sleep(remaining)
        except BaseException as e:  # KeyboardInterrupt, SystemExit: the link is released, then it goes on
            outcome, cause, interrupted = Outcome.ERROR, f"interrupted ({type(e).__name__})", e
        finish = self._clock()
        rec = TransferRecord(cfg.name, cfg.src, cfg.dst, num_bytes, start, finish, outcome, cause, tag)
        with self._cond:
            self._records.append(rec)
            self._n += 1
            self._busy_s += finish - start
            if outcome is Outcome.OK:
                self._bytes += num_bytes
            else:
                self._failed += 1
            self._advance()
        if interrupted is not None:
            raise interrupted
        return TransferResult(value, rec)

    def records(self) -> list[TransferRecord]:
        """Recent transfer records, oldest first."""
        with self._cond:
            return list(self._records)

    def stats(self) -> LinkStats:
        """Totals: transfers carried, failed transfers, bytes carried (successful only), busy seconds."""
        with self._cond:
            return LinkStats(self._n, self._failed, self._bytes, self._busy_s)

    def reset(self) -> None:
        """Clear counters and records.

        Raises:
          RuntimeError: transfers still wait for the link or hold it.
        """
        with self._cond:
            if self._next_ticket != self._serving + len(self._abandoned):
                raise RuntimeError(f"link {self.name}: reset while transfers are in flight")
            self._records.clear()
            self._bytes, self._busy_s, self._n, self._failed = 0, 0.0, 0, 0
