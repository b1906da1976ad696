"""``LayerwiseLoader``: streams each layer's KV host -> device, ``depth`` layers in flight.

PAPER.md section 3 (layer-wise prefill): the device needs only the current layer's KV, so KV is
moved in just before its layer and freed after. The paper does not give the prefetch schedule;
this loader uses the classic bounded pipeline: a background thread loads layers 0, 1, ... in
order, but never holds more than ``depth`` layers on the device at once (a counting semaphore
released by :meth:`LayerwiseLoader.release`). ``depth=2`` is double buffering (while layer l
computes, layer l+1 moves); ``depth=1`` serializes load and compute; ``depth=L`` loads everything
up front (the ``full`` prefill mode). The host-side part of a layer's load (``fetch``, e.g.
gathering its Layer Blocks in the PE buffer, and pinned staging) needs no device slot, so the
thread does it while it waits for one; only the H2D copy sits on the critical path.

Each layer's move is one transfer on a :class:`~dualpath_jax.transfer.link.Link` (the emulated
H2D / CNIC path), whose record gives bytes and start/finish times. Where the backend exposes a
``pinned_host`` memory kind and is not the CPU, the host arrays are first staged into pinned
host memory (off the link) so the H2D copy is a DMA from page-locked memory.

The arrays :meth:`LayerwiseLoader.get` hands out own their memory: they never share it with the
host arrays ``fetch`` returned, so ``fetch`` may gather every layer into the same few staging
buffers (layer l+depth is fetched while layer l is in use). ``jax.device_put`` alone does not
ensure this: on the CPU backend it aliases a 64-byte-aligned numpy buffer zero-copy instead of
copying it. After each transfer the loader compares the device buffers' addresses with the host
arrays' byte ranges and copies any leaf that aliases one (into a fresh aligned buffer that only
the device array references). On accelerators the transfer lands in device memory, nothing
aliases, and no copy is added; on CPU the copy replaces the copy the transfer skipped.

Device bytes held are measured from the live ``jax.Array`` s the loader holds (``nbytes`` of
arrays not yet deleted), and the peak is kept for reports.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from dualpath_jax.config import check_positive
from dualpath_jax.transfer.link import Link, LinkConfig, Medium, TransferRecord

__all__ = ["LayerwiseLoader", "LoaderError", "LoaderStats", "tree_nbytes"]


def tree_nbytes(tree) -> int:
    """Total ``nbytes`` of the array leaves of ``tree`` (numpy or live jax arrays)."""
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        if isinstance(x, jax.Array) and x.is_deleted():
            continue
        total += int(x.nbytes) if hasattr(x, "nbytes") else int(np.asarray(x).nbytes)
    return total


def _byte_range(x) -> tuple[int, int] | None:
    """``[start, end)`` addresses of ``x``'s buffer (numpy or single-device jax array), None if unknown."""
    if isinstance(x, np.ndarray):
        if x.nbytes == 0:
            return None
        lo, hi = np.lib.array_utils.byte_bounds(x) if hasattr(np.lib, "array_utils") else np.byte_bounds(x)
        return lo, hi
    if isinstance(x, jax.Array) and not x.is_deleted() and x.nbytes:
        try:
            start = x.unsafe_buffer_pointer()
        except Exception:  # not a single buffer (sharded, or a backend without the query)
            return None
        return start, start + int(x.nbytes)
    return None


def _aligned_copy(x) -> np.ndarray:
    """A C-contiguous copy of ``x`` in a new 64-byte-aligned buffer (a CPU device_put aliases it, so
    the copy is made once; nothing else references the buffer)."""
    src = np.asarray(x)
    raw = np.empty(src.nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    out = raw[off:off + src.nbytes].view(src.dtype).reshape(src.shape)
    np.copyto(out, src)
    return out


CLOSE_JOIN_S = 1.0
"""Longest wait of :meth:`LayerwiseLoader.close` for its thread (seconds): a forward that failed
must not stall its engine for another link timeout."""


class LoaderError(RuntimeError):
    """A layer could not be delivered. ``cause`` starts with ``"timeout"`` (the wait in
    :meth:`~LayerwiseLoader.get` or on the link passed its bound), is ``"closed"``, or names the
    copy's or staging's error, the I/O error ``fetch`` raised (one of the loader's ``io_errors``)
    or what ended the loader thread (then also ``__cause__``). :attr:`timed_out` tells a timeout
    from a failure."""

    def __init__(self, layer: int, cause: str, record: TransferRecord | None = None):
        self.layer, self.cause, self.record = layer, cause, record
        super().__init__(f"layer {layer}: {cause}")

    @property
    def timed_out(self) -> bool:
        """Whether the layer missed a deadline (not loaded in time, or its link was busy too long)."""
        return self.cause.startswith("timeout")


@dataclasses.dataclass(frozen=True)
class LoaderStats:
    num_layers: int
    depth: int
    loaded_bytes: int
    peak_device_bytes: int
    link_busy_s: float          # sum of this loader's transfer durations
    host_prepare_s: float       # time spent fetching/staging on the host (off the link)
    consumer_wait_s: float      # time get() spent blocked (compute stalled on loading)
    records: tuple[TransferRecord, ...]


class LayerwiseLoader:
    """Pipelined per-layer host -> device loader (see module docstring).

    Args:
      num_layers: L; layers are loaded in order 0..L-1.
      fetch: ``fetch(layer)`` returns the host pytree (numpy arrays) of that layer's KV, e.g. a
        batch's LayerKVs gathered from Layer Blocks in the PE buffer. Called on the loader thread,
        in layer order, up to ``depth`` layers ahead of the consumer; its arrays may be reused
        (overwritten) by a later call, since the device arrays never alias them.
      link: the link carrying the bytes; default an unlimited PE_BUFFER -> PE_HBM link.
      depth: most layers held on the device at once (>= 1).
      device: target device (default ``jax.devices()[0]``).
      timeout_s: deadline for each wait (link, :meth:`get`); nothing waits forever.
      host_memory_kind: ``"auto"`` (pinned staging on accelerators that have it), ``"pinned_host"``
        or ``None`` (no staging).
      io_errors: exception types of ``fetch`` that mean a failed read or transfer of the layer's
        KV: :meth:`get` raises them as :class:`LoaderError` (the caller's fallback, e.g. recompute).
        Any other exception of ``fetch`` is a bug: :meth:`get` re-raises it unchanged (its type
        and traceback), so it is not mistaken for an I/O failure. Default ``(OSError,)``.

    Use as a context manager, or call :meth:`start` and :meth:`close`. The consumer must
    :meth:`release` each layer once the computations reading it have finished.

    Raises:
      ConfigError: ``num_layers`` or ``depth`` not positive.
    """

    def __init__(self, num_layers: int, fetch: Callable[[int], Any], link: Link | None = None, *,
                 depth: int = 2, device: jax.Device | None = None, timeout_s: float = 60.0,
                 host_memory_kind: str | None = "auto", io_errors: tuple[type[BaseException], ...] = (OSError,)):
        check_positive("loader.num_layers", num_layers, integer=True)
        check_positive("loader.depth", depth, integer=True)
        check_positive("loader.timeout_s", timeout_s)
        self.num_layers = num_layers
        self.depth = min(depth, num_layers)
        self.timeout_s = timeout_s
        self._fetch = fetch
        self.io_errors = tuple(io_errors)
        self.link = link or Link(LinkConfig("h2d", Medium.PE_BUFFER, Medium.PE_HBM))
        self.device = device or jax.devices()[0]
        kinds = {m.kind for m in self.device.addressable_memories()}
        if host_memory_kind == "auto":
            host_memory_kind = "pinned_host" if ("pinned_host" in kinds and self.device.platform != "cpu") else None
        self.host_memory_kind = host_memory_kind
        self._device_sharding = jax.sharding.SingleDeviceSharding(self.device)
        self._stage_sharding = (jax.sharding.SingleDeviceSharding(self.device, memory_kind=host_memory_kind)
                                if host_memory_kind else None)
        self._slots = threading.Semaphore(self.depth)
        self._cond = threading.Condition()
        self._held: dict[int, Any] = {}
        self._released: set[int] = set()
        self._errors: dict[int, BaseException] = {}  # LoaderError, or fetch's own non-I/O exception
        self._records: list[TransferRecord] = []
        self._held_bytes = 0
        self._peak_bytes = 0
        self._loaded_bytes = 0
        self._wait_s = 0.0
        self._host_s = 0.0
        self._closed = False
        self._crashed: BaseException | None = None  # what ended the loader thread early, if anything did
        self._thread: threading.Thread | None = None

    # ---- producer -------------------------------------------------------------------------------
    def start(self) -> "LayerwiseLoader":
        """Start the loader thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="layerwise-loader", daemon=True)
            self._thread.start()
        return self

    def _put(self, fetched, host):
        """Move ``host`` (the fetched tree, or its pinned staging) to the device; the result shares
        no memory with ``fetched`` or ``host`` (see the module docstring)."""
        arrays = jax.block_until_ready(jax.device_put(host, self._device_sharding))
        host_ranges = [r for r in map(_byte_range, jax.tree_util.tree_leaves((fetched, host))) if r is not None]
        leaves, treedef = jax.tree_util.tree_flatten(arrays)
        owned = []
        for leaf in leaves:
            r = _byte_range(leaf)
            if r is not None and any(r[0] < hi and lo < r[1] for lo, hi in host_ranges):
                # the "copy" aliased host memory that fetch may reuse: give the device array its own
                leaf = jax.block_until_ready(jax.device_put(_aligned_copy(leaf), self._device_sharding))
            owned.append(leaf)
        return jax.tree_util.tree_unflatten(treedef, owned)

    def _recount(self) -> None:  # caller holds the lock; bytes of live held arrays
        self._held_bytes = sum(tree_nbytes(t) for t in self._held.values())
        self._peak_bytes = max(self._peak_bytes, self._held_bytes)

    def _prepare_host(self, layer: int):
        """Host-side part of a layer's load: fetch (e.g. gather from the PE buffer) and staging.

        Returns ``(fetched, host)``: what ``fetch`` returned, and what to move (the same, or its
        pinned staging)."""
        fetched = host = self._fetch(layer)
        if self._stage_sharding is not None:
            try:
                host = jax.block_until_ready(jax.device_put(fetched, self._stage_sharding))
            except Exception as e:  # the loader's own copy failed (not fetch): the layer was not delivered
                raise LoaderError(layer, f"staging: {type(e).__name__}: {e}") from e
        return fetched, host

    def _run(self) -> None:
        try:
            self._run_layers()
        except BaseException as e:  # noqa: BLE001 - the thread ends: every get() learns why at once
            with self._cond:
                self._crashed = e
                self._cond.notify_all()

    def _run_layers(self) -> None:
        for layer in range(self.num_layers):
            # Host-side preparation needs no device slot: do it while waiting for one.
            t0 = time.perf_counter()
            fetched, host, error = None, None, None
            try:
                fetched, host = self._prepare_host(layer)
            except LoaderError as e:  # staging failed
                error = e
            except self.io_errors as e:  # a failed read/transfer -> typed error for the consumer
                error = LoaderError(layer, f"{type(e).__name__}: {e}")
                error.__cause__ = e
            except Exception as e:  # noqa: BLE001 - a bug in fetch: the consumer gets it as raised
                error = e
            with self._cond:
                self._host_s += time.perf_counter() - t0
            while not self._slots.acquire(timeout=0.05):
                if self._closed:
                    return
            if self._closed:
                self._slots.release()
                return
            record = None
            if error is None:  # (a link that lets the copy's error escape ends the thread: _run reports it)
                res = self.link.transfer(tree_nbytes(host), lambda f=fetched, h=host: self._put(f, h),
                                         timeout_s=self.timeout_s, tag=f"layer{layer}")
                record = res.record
                if not res.ok:
                    error = LoaderError(layer, f"{record.outcome.value}: {record.cause}", record)
            del fetched, host
            with self._cond:
                if record is not None:
                    self._records.append(record)
                if error is None and self._closed:  # closed while copying: free, do not publish
                    for x in jax.tree_util.tree_leaves(res.value):
                        x.delete()
                    return
                if error is None:
                    self._held[layer] = res.value
                    self._loaded_bytes += record.num_bytes
                    self._recount()
                else:
                    self._errors[layer] = error
                    self._slots.release()
                self._cond.notify_all()

    # ---- consumer -------------------------------------------------------------------------------
    def get(self, layer: int, *, timeout_s: float | None = None):
        """Wait for ``layer``'s device arrays (the fetched pytree, now on the device).

        Raises:
          LoaderError: the layer failed to load (its copy failed, or ``fetch`` raised one of
            ``io_errors``), the wait exceeded ``timeout_s`` (default the loader's), or the loader
            was closed.
          Exception: any other exception ``fetch`` raised for this layer, unchanged.
          ValueError: ``layer`` out of range, already released, or one that cannot load: ``depth``
            earlier layers are held and none is released (the loader holds at most ``depth``).
        """
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer: {layer} out of range [0, {self.num_layers})")
        self.start()
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        t0 = time.perf_counter()
        with self._cond:
            if layer in self._released:
                raise ValueError(f"layer: {layer} was released; get a layer before releasing it")
            blocked = lambda: layer not in self._held and len(self._held) >= self.depth  # noqa: E731
            ok = self._cond.wait_for(lambda: (layer in self._held or layer in self._errors or self._closed
                                              or self._crashed is not None or blocked()), timeout=timeout_s)
            self._wait_s += time.perf_counter() - t0
            if layer not in self._errors and self._crashed is None and not self._closed and blocked():
                # only the consumer's release frees a slot
                raise ValueError(f"layer: {layer} cannot load while layers {sorted(self._held)} are held: the loader "
                                 f"holds at most depth={self.depth} layers; release the earlier ones first")
            if layer in self._errors:
                raise self._errors[layer]
            if layer not in self._held and self._crashed is not None:
                e = self._crashed
                raise LoaderError(layer, f"error: loader thread died: {type(e).__name__}: {e}") from e
            if not ok:
                raise LoaderError(layer, f"timeout: not loaded within {timeout_s} s")
            if layer not in self._held:
                raise LoaderError(layer, "closed")
            return self._held[layer]

    def release(self, layer: int) -> None:
        """Free ``layer``'s device arrays and let the next layer start loading.

        The caller must have finished (``block_until_ready``) every computation reading them.
        Releasing a layer that is not held is a no-op.
        """
        with self._cond:
            tree = self._held.pop(layer, None)
            if tree is None:
                return
            self._released.add(layer)
            for x in jax.tree_util.tree_leaves(tree):
                if isinstance(x, jax.Array) and not x.is_deleted():
                    x.delete()
            self._recount()
        self._slots.release()

    # ---- reporting / lifecycle ------------------------------------------------------------------
    @property
    def held_device_bytes(self) -> int:
        with self._cond:
            self._recount()
            return self._held_bytes

    @property
    def peak_device_bytes(self) -> int:
        with self._cond:
            return self._peak_bytes

    def stats(self) -> LoaderStats:
        with self._cond:
            recs = tuple(self._records)
            return LoaderStats(self.num_layers, self.depth, self._loaded_bytes, self._peak_bytes,
                               sum(r.duration_s for r in recs), self._host_s, self._wait_s, recs)

    def close(self) -> None:
        """Stop the thread and free whatever is still held. Waits at most :data:`CLOSE_JOIN_S`
        for the thread: one still in a link's queue or copy ends on its own (the link's
        ``timeout_s``), frees what it copied and starts no other layer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=min(self.timeout_s, CLOSE_JOIN_S))
        for layer in list(self._held):
            self.release(layer)

    def __enter__(self) -> "LayerwiseLoader":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
