"""Cross-process KV transport on JAX's transfer server (``jax.experimental.transfer``).

When PEs and DEs run in separate processes (or hosts), KV moves between them as device arrays
pulled through XLA's transfer server: the DE read path moves a request's Layer Blocks
``[1, Z, Bt]`` from the DE buffer to the PE (PAPER.md section 2.4, the second read path), and
the hand-off moves the PE's KV to the DE buffer (section 2.3). Each process owns one
:class:`KVTransferEndpoint`, which starts a transfer server on the process's JAX backend client
and serves as both ends:

* sender (e.g. a DE buffer offering a request's Layer Blocks): :meth:`KVTransferEndpoint.offer`
  makes device arrays available for exactly one pull under a uuid and returns a picklable
  :class:`KVOffer` (address, uuid, shapes and dtypes) for the control channel;
* receiver (e.g. the PE): :meth:`KVTransferEndpoint.pull` (or :meth:`~KVTransferEndpoint.pull_offer`)
  fetches them into device arrays on its own device and returns once they have arrived.

A pull is a real copy; wrap it in a :class:`~dualpath_jax.transfer.link.Link` transfer
(``link.transfer(offer.num_bytes, lambda: endpoint.pull_offer(offer))``) to layer an emulated
CNIC rate on top. Counters (:meth:`KVTransferEndpoint.stats`) give the bytes that crossed a
process boundary (``bytes_pulled`` on the receivers; ``bytes_offered`` on the senders).

Behaviour of the transfer server (jax/jaxlib 0.10.2, CPU backend; checked by
``tests/test_transfer_remote.py``), and what this module does about it:

* CPU to CPU works: a pull lands in a device array of the receiver's CPU device (bytes go over a
  loopback TCP socket, so it is a copy, not a shared mapping). The server needs at least one
  bulk transport address: started with none, its process aborts (a failed CHECK in XLA's socket
  event loop), so :class:`KVTransferEndpoint` always gives one on ``host``.
* The uuid is an unsigned 64-bit integer, one table per server. An offer can be pulled **once**:
  a second pull of the same uuid never completes. Offering a uuid that is still unpulled
  silently replaces the earlier offer; :meth:`~KVTransferEndpoint.offer` refuses a uuid this
  endpoint has already offered (:meth:`~KVTransferEndpoint.next_uuid` and :func:`derive_uuid`
  give fresh ones).
* Order does not matter: a pull issued before the matching offer waits for it. The flip side:
  a pull of a uuid that is never offered (unknown uuid, an offer that expired, one already
  pulled) never completes, and the ``timeout`` argument of ``TransferConnection.pull`` does not
  end it. :meth:`~KVTransferEndpoint.pull` therefore waits itself, polling readiness, and raises
  :class:`KVPullTimeout` after ``timeout_s``, or :class:`KVPullAborted` as soon as its ``abort``
  callable names a cause (a sender that will never offer can say so over the control channel).
  The abandoned pull stays registered at the peer and would consume a later offer of the same
  uuid -- never reuse a uuid after a timeout or an abort.
* A dead peer: a pull over a connection that was open when the peer's process ended fails at
  once (``KVTransferError``, "Connection closed"); a new connection to a dead address does not
  fail and its pull waits, ending in :class:`KVPullTimeout`.
* A pull whose specs hold fewer bytes than the offer fails (``KVTransferError``); specs of the
  same byte size but another dtype reinterpret the bytes silently -- take the specs from the
  :class:`KVOffer`.
* The server lives as long as its process (dropping the Python object does not stop it); an
  offer holds its arrays until pulled or until its ``expire_s`` deadline (``await_pull``'s
  timeout: after it, the offer is dropped and a pull of it times out).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import transfer as jax_transfer

from dualpath_jax.config import ConfigError, check_positive
from dualpath_jax.kvcache.layout import BlockLayout

__all__ = ["ArraySpec", "KVOffer", "KVTransferEndpoint", "KVTransferError", "KVPullTimeout", "KVPullAborted",
           "EndpointStats", "derive_uuid", "layer_block_specs", "UUID_BITS", "DEFAULT_PULL_TIMEOUT_S"]

UUID_BITS = 64
"""Transfer uuids are unsigned 64-bit integers (``await_pull`` rejects others)."""

DEFAULT_PULL_TIMEOUT_S = 30.0
"""Default longest wait of :meth:`KVTransferEndpoint.pull` for the offer's bytes, in seconds."""


class KVTransferError(RuntimeError):
    """A pull failed: the peer closed the connection, or the specs do not match the offer.

    Attributes: ``address`` (the peer's), ``uuid``.
    """

    def __init__(self, address: str, uuid: int, message: str):
        self.address, self.uuid = address, uuid
        super().__init__(f"pull of uuid {uuid} from {address}: {message}")


class KVPullTimeout(KVTransferError, TimeoutError):
    """The offer did not arrive within the timeout: never offered, already pulled, expired, or
    the peer is dead (and the connection was opened after it died). Attribute ``timeout_s``."""

    def __init__(self, address: str, uuid: int, timeout_s: float):
        self.timeout_s = timeout_s
        super().__init__(address, uuid, f"nothing arrived within {timeout_s:g} s (no offer of this uuid at the peer: "
                                         f"never offered, already pulled or expired; or the peer is dead)")


class KVPullAborted(KVTransferError):
    """The receiver gave up waiting for an offer because its ``abort`` callable named a cause
    (e.g. the sender reported over the control channel that it will never make the offer).
    Attribute ``cause``."""

    def __init__(self, address: str, uuid: int, cause: str):
        self.cause = cause
        super().__init__(address, uuid, f"aborted: {cause}")


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one array of an offer (picklable, for the control channel).

    Attributes:
      shape: array shape, e.g. a Layer Block's ``(1, Z, Bt)``.
      dtype: numpy dtype name, e.g. ``"uint8"``, ``"float32"``, ``"bfloat16"``.

    Raises:
      ConfigError: naming ``spec.shape`` (a negative or non-integer dimension) or ``spec.dtype``
        (not a dtype numpy or ml_dtypes knows).
    """

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self):
        shape = tuple(self.shape)
        if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
            raise ConfigError("spec.shape", f"dimensions must be integers >= 0 (got {self.shape!r})")
        try:
            name = jax.numpy.dtype(self.dtype).name
        except TypeError as e:
            raise ConfigError("spec.dtype", f"unknown dtype {self.dtype!r}") from e
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))
        object.__setattr__(self, "dtype", name)

    @classmethod
    def of(cls, array) -> "ArraySpec":
        """The spec of a numpy or JAX array."""
        return cls(tuple(array.shape), np.dtype(array.dtype).name)

    @property
    def nbytes(self) -> int:
        """Bytes of an array of this spec."""
        return math.prod(self.shape) * jax.numpy.dtype(self.dtype).itemsize


def layer_block_specs(layout: BlockLayout, num_blocks: int) -> tuple[ArraySpec, ...]:
    """Specs of ``num_blocks`` Layer Blocks of ``layout``: each ``uint8[1, Z, Bt]``
    (:attr:`BlockLayout.layer_block_shape`, PAPER.md section 2.2), ``Z * Bt`` bytes.

    Raises:
      ConfigError: naming ``num_blocks`` if it is negative or not an integer.
    """
    if not isinstance(num_blocks, (int, np.integer)) or num_blocks < 0:
        raise ConfigError("num_blocks", f"must be an integer >= 0 (got {num_blocks!r})")
    spec = ArraySpec(layout.layer_block_shape, "uint8")
    return (spec,) * int(num_blocks)


def derive_uuid(*parts) -> int:
    """A transfer uuid derived from ``parts`` (e.g. ``(run_id, request_id, layer, "de_read")``):
    the first 8 bytes of BLAKE2b over the parts' ``repr``, an int in ``[0, 2**64)``; a numpy scalar
    counts as the Python scalar it holds (``np.int64(7)`` as ``7``), so both ends can compute it
    without a message whichever integer types they hold. Distinct parts collide with probability
    about ``n**2 / 2**65`` for n ids in flight at one server.

    Raises:
      ValueError: no parts.
    """
    if not parts:
        raise ValueError("derive_uuid: needs at least one part")
    h = hashlib.blake2b(digest_size=8, person=b"dpkv-uuid")
    h.update("\x1f".join(repr(p.item() if isinstance(p, np.generic) else p) for p in parts).encode())
    return int.from_bytes(h.digest(), "big")


@dataclasses.dataclass(frozen=True)
class KVOffer:
    """What a receiver needs to pull one offer (picklable; send it over the control channel).

    Attributes:
      address: the sender endpoint's transfer server address (``host:port``).
      uuid: the offer's uuid (unsigned 64-bit).
      specs: shape and dtype of each offered array, in order.
      tag: free-form label (e.g. ``"req7/layer3"``).
    """

    address: str
    uuid: int
    specs: tuple[ArraySpec, ...]
    tag: str = ""

    @property
    def num_bytes(self) -> int:
        """Bytes of all offered arrays."""
        return sum(s.nbytes for s in self.specs)


@dataclasses.dataclass(frozen=True)
class EndpointStats:
    """Counters of one endpoint since it started (bytes and seconds).

    Attributes:
      num_offered, bytes_offered: offers made and their bytes (pulled or not).
      num_pulled, bytes_pulled: pulls completed and the bytes received (cross-process KV bytes).
      num_failed: pulls that raised (timeout, closed connection, mismatched specs).
      pull_s: wall seconds spent in completed pulls.
    """

    num_offered: int
    bytes_offered: int
    num_pulled: int
    bytes_pulled: int
    num_failed: int
    pull_s: float


class KVTransferEndpoint:
    """One process's end of the KV transport (see the module docstring).

    Args:
      name: label for errors and logs, e.g. ``"de0"``.
      device: the JAX device pulled arrays land on and offered numpy arrays are placed on
        (default ``jax.local_devices()[0]``); the server runs on its backend client.
      host: interface the server listens on (``"127.0.0.1"`` on one host; a routable address,
        or ``"[::]"``, across hosts).
      pull_timeout_s: default longest wait of :meth:`pull`, seconds.
      max_num_parallel_copies, transfer_size: passed to ``start_transfer_server`` (parallel
        copies per transfer; chunk size in bytes).

    Raises:
      ConfigError: naming ``pull_timeout_s``, ``max_num_parallel_copies`` or ``transfer_size``
        if not positive, or ``host`` if empty.

    Thread-safe: offers and pulls may come from any thread.
    """

    def __init__(self, name: str = "endpoint", *, device=None, host: str = "127.0.0.1",
                 pull_timeout_s: float = DEFAULT_PULL_TIMEOUT_S, max_num_parallel_copies: int = 8,
                 transfer_size: int = 256 << 20):
        check_positive("pull_timeout_s", pull_timeout_s)
        check_positive("max_num_parallel_copies", max_num_parallel_copies, integer=True)
        check_positive("transfer_size", transfer_size, integer=True)
        if not host:
            raise ConfigError("host", "must be non-empty (e.g. '127.0.0.1')")
        self.name = name
        self.device = device if device is not None else jax.local_devices()[0]
        self.pull_timeout_s = float(pull_timeout_s)
        self._sharding = jax.sharding.SingleDeviceSharding(self.device)
        self._server = jax_transfer.start_transfer_server(
            self.device.client, f"{host}:0", [f"{host}:0"], max_num_parallel_copies=max_num_parallel_copies,
            transfer_size=transfer_size)
        self._address = self._server.address()
        self._lock = threading.Lock()
        self._connections: dict[str, object] = {}
        self._offered: set[int] = set()
        # Fresh uuids: a random 32-bit prefix per endpoint (so that ids of a restarted process never
        # meet a pull abandoned under the previous one), then a counter.
        self._prefix = int.from_bytes(os.urandom(4), "big") << 32
        self._counter = itertools.count(1)
        self._n_offered = self._b_offered = self._n_pulled = self._b_pulled = self._n_failed = 0
        self._pull_s = 0.0

    # ---- identity -------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``host:port`` of this endpoint's transfer server (what peers pull from)."""
        return self._address

    def next_uuid(self) -> int:
        """A uuid this endpoint has not handed out before (random 32-bit prefix, 32-bit counter)."""
        with self._lock:
            return self._prefix | (next(self._counter) & 0xFFFFFFFF)

    # ---- sender ---------------------------------------------------------------------------------
    def offer(self, arrays: Sequence, uuid: int | None = None, *, expire_s: float | None = None,
              tag: str = "") -> KVOffer:
        """Make ``arrays`` available for exactly one pull under ``uuid``; returns at once.

        Args:
          arrays: JAX arrays (on this endpoint's backend) or numpy arrays, e.g. a request's
            Layer Blocks ``uint8[1, Z, Bt]``. Numpy arrays are placed with ``jax.device_put``,
            which on CPU may share their memory: keep them unchanged until the receiver has
            reported the pull done (the sender gets no notice of it).
          uuid: unsigned 64-bit id; default :meth:`next_uuid`.
          expire_s: drop the offer (and its references) if not pulled within this many seconds;
            default ``None`` keeps it until pulled.
          tag: label copied into the :class:`KVOffer`.

        Returns:
          the :class:`KVOffer` a receiver passes to :meth:`pull_offer`.

        Raises:
          ValueError: ``arrays`` empty or one of them of no bytes, ``uuid`` outside ``[0, 2**64)``
            or already offered by this endpoint (every offered uuid is remembered: one int per offer).
          ConfigError: naming ``expire_s`` if not positive.
        """
        if not len(arrays):
            raise ValueError(f"{self.name}: offer needs at least one array")
        if expire_s is not None:
            check_positive("expire_s", expire_s)
        if uuid is None:
            uuid = self.next_uuid()
        uuid = int(uuid)
        if not 0 <= uuid < 1 << UUID_BITS:
            raise ValueError(f"{self.name}: uuid must be in [0, 2**64) (got {uuid})")
        placed = [a if isinstance(a, jax.Array) else jax.device_put(np.asarray(a), self.device) for a in arrays]
        specs = tuple(ArraySpec.of(a) for a in placed)
        empty = next((i for i, s in enumerate(specs) if s.nbytes == 0), None)
        if empty is not None:  # the transfer server never completes a pull of it: the receiver would time out
            raise ValueError(f"{self.name}: arrays[{empty}] has no bytes (shape {specs[empty].shape}): the "
                             f"transfer server cannot move an empty array; offer only arrays that hold bytes")
        with self._lock:
            if uuid in self._offered:
                raise ValueError(f"{self.name}: uuid {uuid} was already offered (an offer can be pulled once; "
                                 f"a repeated uuid would replace an unpulled offer)")
            self._offered.add(uuid)
            if expire_s is None:
                self._server.await_pull(uuid, placed)
            else:
                deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expire_s)
                self._server.await_pull(uuid, placed, timeout=deadline)
            self._n_offered += 1
            self._b_offered += sum(s.nbytes for s in specs)
        return KVOffer(self._address, uuid, specs, tag)

    # ---- receiver -------------------------------------------------------------------------------
    def _connection(self, address: str):
        with self._lock:
            conn = self._connections.get(address)
            if conn is None:
                conn = self._connections[address] = self._server.connect(address)
            return conn

    def _drop_connection(self, address: str, conn) -> None:
        with self._lock:
            if self._connections.get(address) is conn:
                del self._connections[address]

    def pull(self, address: str, uuid: int, specs: Sequence[ArraySpec | jax.ShapeDtypeStruct], *,
             timeout_s: float | None = None, abort: Callable[[], str] | None = None) -> list[jax.Array]:
        """Fetch the arrays offered under ``uuid`` at ``address`` onto this endpoint's device.

        Args:
          address: the sender endpoint's :attr:`address`.
          uuid: the offer's uuid.
          specs: shape and dtype of each offered array, in order (an :class:`ArraySpec` or
            anything with ``shape`` and ``dtype``); take them from the :class:`KVOffer`.
          timeout_s: longest wait in seconds (default ``pull_timeout_s``).
          abort: polled while waiting (about every millisecond); a non-empty string it returns
            ends the wait with :class:`KVPullAborted` carrying that cause. An abandoned pull
            leaves no thread behind.

        Returns:
          one ``jax.Array`` per spec, on this endpoint's device, with its bytes arrived.

        Raises:
          KVPullTimeout: nothing arrived within ``timeout_s`` (module docstring: unknown or
            already pulled uuid, expired offer, dead peer on a new connection).
          KVPullAborted: ``abort`` named a cause before the bytes arrived.
          KVTransferError: the peer closed the connection, or the specs' sizes do not match the
            offer. The connection is dropped, so the next pull from ``address`` reconnects.
          ConfigError: naming ``timeout_s`` if not positive.
          ValueError: ``specs`` empty.
        """
        timeout_s = self.pull_timeout_s if timeout_s is None else timeout_s
        check_positive("timeout_s", timeout_s)
        if not len(specs):
            raise ValueError(f"{self.name}: pull needs at least one spec")
        avals = [jax.ShapeDtypeStruct(tuple(s.shape), s.dtype, sharding=self._sharding) for s in specs]
        num_bytes = sum(ArraySpec(tuple(s.shape), jax.numpy.dtype(s.dtype).name).nbytes for s in specs)
        conn = self._connection(address)
        t0 = time.perf_counter()
        try:
            out = conn.pull(int(uuid), avals)
            _wait_ready(out, t0 + timeout_s, abort)
            jax.block_until_ready(out)  # raises the transfer's error, if any
        except _Timeout:
            self._fail()
            raise KVPullTimeout(address, uuid, timeout_s) from None
        except _Aborted as e:
            self._fail()
            raise KVPullAborted(address, uuid, str(e)) from None
        except jax.errors.JaxRuntimeError as e:
            self._fail()
            self._drop_connection(address, conn)
            raise KVTransferError(address, uuid, " ".join(str(e).split())) from e
        dt = time.perf_counter() - t0
        with self._lock:
            self._n_pulled += 1
            self._b_pulled += num_bytes
            self._pull_s += dt
        return list(out)

    def pull_offer(self, offer: KVOffer, *, timeout_s: float | None = None,
                   abort: Callable[[], str] | None = None) -> list[jax.Array]:
        """:meth:`pull` of ``offer`` (its address, uuid and specs); same arguments, returns and errors."""
        return self.pull(offer.address, offer.uuid, offer.specs, timeout_s=timeout_s, abort=abort)

    def _fail(self) -> None:
        with self._lock:
            self._n_failed += 1

    # ---- counters -------------------------------------------------------------------------------
    @property
    def bytes_offered(self) -> int:
        """Bytes of all offers made by this endpoint."""
        with self._lock:
            return self._b_offered

    @property
    def bytes_pulled(self) -> int:
        """Bytes received by completed pulls (bytes that crossed a process boundary into this one)."""
        with self._lock:
            return self._b_pulled

    def stats(self) -> EndpointStats:
        """All counters at once (:class:`EndpointStats`)."""
        with self._lock:
            return EndpointStats(self._n_offered, self._b_offered, self._n_pulled, self._b_pulled, self._n_failed,
                                 self._pull_s)

    def __repr__(self) -> str:
        return f"KVTransferEndpoint({self.name!r}, address={self._address!r}, device={self.device})"


class _Timeout(Exception):
    pass


class _Aborted(Exception):
    pass


def _wait_ready(arrays: Sequence[jax.Array], deadline: float, abort: Callable[[], str] | None = None) -> None:
    """Poll ``is_ready`` until every array is ready (arrived or failed); raise ``_Timeout`` at the
    ``time.perf_counter`` deadline, ``_Aborted`` once ``abort()`` names a cause. Sleeps start at
    20 us and double up to 1 ms, so a Layer Block pull pays little latency and an abandoned one
    leaves no blocked thread behind."""
    delay = 20e-6
    pending = list(arrays)
    while True:
        pending = [a for a in pending if not a.is_ready()]
        if not pending:
            return
        if time.perf_counter() >= deadline:
            raise _Timeout
        if abort is not None and (cause := abort()):
            raise _Aborted(cause)
        time.sleep(delay)
        delay = min(2 * delay, 1e-3)
