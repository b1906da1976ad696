"""``KVStore``: a checksummed Full Block store on tensorstore's key-value layer.

Design:

* **Unit of storage = Full Block** ("All storage interactions use Full Blocks", PAPER.md
  section 2.2). A reader may ask for one layer: that is a byte-range read of the record's
  header and of that Layer Block, verified against the layer's own CRC (see :mod:`.record`);
  the two reads must see the same storage generation, else they are retried (and after repeated
  races with a writer, one whole-record read supplies the layer).
* **Keys** are the prefix-hash-chain keys of :mod:`dualpath_jax.kvcache.keys`; a record lives at
  ``<scope>/<key[:2]>/<key>`` (scope = :attr:`BlockLayout.scope`), so the chain plays the role
  of the paper's trie (appendix A.5) and several models/layouts can share one root.
* **Atomic visibility**: tensorstore's ``file`` driver writes a value to ``<key>.__lock`` and
  renames it over ``<key>`` when complete (rename is atomic on POSIX), and reads never see the
  lock file; the ``memory`` driver swaps whole values. A crashed writer therefore leaves either
  no block or a complete one, and the per-layer CRC-32Cs catch anything that is damaged later
  (flipped bytes, truncation by another tool).
* **Whole-record reads of the file backend** open the record's file directly and read it once
  into a new buffer (``os.preadv``, GIL released), then verify it in place (see
  :meth:`KVStore._read_full_file`); an open file is one version of the record, so this needs no
  generation check. Layer reads, lookups, writes and the memory backend go through tensorstore.
* **Verbs**: ``lookup`` (longest stored prefix of a key chain), ``read``, ``write``,
  ``contains``, ``delete``, ``stats``; ``*_async`` forms return ``concurrent.futures.Future`` s
  run on a small I/O thread pool (reads of different blocks proceed in parallel; file reads and
  CRC-32C checks of Layer Blocks over 32 KiB release the GIL). Sync forms wait with a deadline
  and turn an expired wait into a ``TIMEOUT`` failure instead of hanging.
* **Failures are values** (:class:`BlockFailure` with a :class:`FailureCause`): missing,
  checksum mismatch, truncated, bad header, unreadable or unwritable path/backend, timeout. Counted in
  :meth:`KVStore.stats`.

Concurrency: one ``KVStore`` may be shared by threads; two processes may open the same file
root (tensorstore's file driver locks writers per key and never blocks readers).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import tensorstore as ts

from dualpath_jax.config import check_in, check_positive
from dualpath_jax.kvcache import KEY_HEX_CHARS, BlockLayout
from dualpath_jax.store.record import (BlockFailure, FailureCause, encode_record, header_bytes, parse_header,
                                       verify_full, verify_layer)

__all__ = ["StoreConfig", "KVStore", "BlockRead", "WriteResult", "LookupResult", "StoreStats",
           "default_store_path", "StoreError"]

_ENV_STORE_DIR = "DUALPATH_KVSTORE_DIR"
_HEX = re.compile("[0-9a-f]+")
_LAYER_READ_ATTEMPTS = 4


def default_store_path() -> str:
    """Default root of the file backend: ``$DUALPATH_KVSTORE_DIR`` or ``<tmp>/dualpath_jax_kvstore``."""
    return os.environ.get(_ENV_STORE_DIR) or os.path.join(tempfile.gettempdir(), "dualpath_jax_kvstore")


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """Store backend settings.

    Attributes:
      backend: ``"file"`` (local files under ``path``) or ``"memory"`` (process-local, for tests).
      path: root directory of the file backend; empty = :func:`default_store_path`.
      io_threads: worker threads for async operations.
      timeout_s: deadline of each sync operation (and of each block within it), seconds.
      fsync: fsync each record before publishing it (durable across power loss; atomic
        visibility holds either way).

    Raises:
      ConfigError: naming the field: ``store.backend`` not ``"file"`` or ``"memory"``;
        ``store.io_threads`` not an integer > 0; ``store.timeout_s`` not a finite number > 0.
        ``path`` and ``fsync`` are not checked here.
    """

    backend: str = "file"
    path: str = ""
    io_threads: int = 4
    timeout_s: float = 30.0
    fsync: bool = True

    def __post_init__(self):
        check_in("store.backend", self.backend, ("file", "memory"))
        check_positive("store.io_threads", self.io_threads, integer=True)
        check_positive("store.timeout_s", self.timeout_s)


class StoreError(RuntimeError):
    """A store operation that has no per-block result (e.g. ``contains``) failed; carries the cause."""

    def __init__(self, failure: BlockFailure):
        self.failure = failure
        super().__init__(f"{failure.cause.value}: {failure.detail} (key {failure.key!r})")


@dataclasses.dataclass(frozen=True)
class BlockRead:
    """Result of reading one block: ``block`` (read-only ``uint8[L, Z, Bt]`` or ``[1, Z, Bt]``) or ``failure``."""

    key: str
    block: np.ndarray | None
    failure: BlockFailure | None
    layer: int | None = None
    read_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclasses.dataclass(frozen=True)
class WriteResult:
    key: str
    failure: BlockFailure | None
    num_bytes: int = 0
    write_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclasses.dataclass(frozen=True)
class LookupResult:
    """``num_blocks`` leading keys of the chain are stored; ``failure`` says why lookup stopped early
    (``None`` when it simply reached a missing key or the end of the chain)."""

    num_blocks: int
    failure: BlockFailure | None = None


@dataclasses.dataclass(frozen=True)
class StoreStats:
    """Counters since the store was opened.

    ``read_bytes`` counts the KV payload delivered (a Full Block's or a Layer Block's bytes);
    ``write_bytes`` counts whole records written (payload plus the checksummed header). Seconds are
    wall time spent in the backend.
    """

    lookups: int = 0
    lookup_hit_blocks: int = 0
    reads_ok: int = 0
    read_bytes: int = 0
    read_s: float = 0.0
    writes_ok: int = 0
    write_bytes: int = 0
    write_s: float = 0.0
    deletes: int = 0
    failures: dict = dataclasses.field(default_factory=dict)  # FailureCause.value -> count


class KVStore:
    """Checksummed Full Block store bound to one :class:`BlockLayout` (see module docstring).

    Args:
      layout: the block layout; every record is checked against it.
      config: backend settings.

    The store never raises for a bad path at construction: operations on an unreadable root
    report ``FailureCause.UNREADABLE`` per call, so a store that breaks mid-run behaves the same.
    """

    def __init__(self, layout: BlockLayout, config: StoreConfig | None = None):
        self.layout = layout
        self.config = config or StoreConfig()
        self._lock = threading.Lock()
        self._stats = Counter()
        self._failures = Counter()
        self._pool = cf.ThreadPoolExecutor(self.config.io_threads, thread_name_prefix="kvstore")
        self._hb = header_bytes(layout)
        if self.config.backend == "file":
            self.root = os.path.abspath(self.config.path or default_store_path())
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError:
                pass  # reported per operation as UNREADABLE
            spec = {"driver": "file", "path": self.root + "/",
                    "context": {"file_io_sync": bool(self.config.fsync)}}
        else:
            self.root = None
            spec = {"driver": "memory"}
        self._kv = ts.KvStore.open(spec).result()

    # ---- keys and paths ---------------------------------------------------------------------
    def storage_key(self, key: str) -> str:
        """Backend key of block ``key``: ``<scope>/<key[:2]>/<key>``."""
        return f"{self.layout.scope}/{key[:2]}/{key}"

    def path_of(self, key: str) -> str:
        """File path of block ``key`` (file backend only).

        Raises:
          ValueError: the store uses the memory backend.
        """
        if self.root is None:
            raise ValueError("path_of: the memory backend has no files")
        return os.path.join(self.root, self.storage_key(key))

    def _root_failure(self, key: str = "") -> BlockFailure | None:
        if self.root is None:
            return None
        try:
            st = os.stat(self.root)
        except OSError as e:
            return BlockFailure(key, FailureCause.UNREADABLE, f"store path {self.root}: {e.strerror}")
        if not os.path.isdir(self.root) or not os.access(self.root, os.R_OK | os.X_OK):
            what = "not a directory" if not os.path.isdir(self.root) else "permission denied"
            return BlockFailure(key, FailureCause.UNREADABLE,
                                f"store path {self.root}: {what} (mode {oct(st.st_mode)})")
        return None

    def _count_failure(self, failure: BlockFailure) -> None:
        with self._lock:
            self._failures[failure.cause.value] += 1

    # ---- read ---------------------------------------------------------------------------------
    def _read_one(self, key: str, layer: int | None, deadline: float) -> BlockRead:
        t0 = time.perf_counter()
        sk = self.storage_key(key)
        try:
            if time.monotonic() > deadline:  # queued behind other reads past it: not started
                raise TimeoutError
            if layer is None and self.root is not None:
                out = self._read_full_file(key)
            elif layer is None:
                out = self._read_record(sk, key, deadline)
                if not isinstance(out, BlockFailure):
                    out = verify_full(self.layout, key, out)
            else:
                out = self._read_layer(sk, key, layer, deadline)
        except TimeoutError:
            out = BlockFailure(key, FailureCause.TIMEOUT, f"read exceeded {self.config.timeout_s} s")
        except ValueError as e:  # tensorstore reports I/O errors as ValueError
            msg = str(e)
            cause = FailureCause.TRUNCATED if "OUT_OF_RANGE" in msg else FailureCause.UNREADABLE
            out = BlockFailure(key, cause, msg.splitlines()[0][:300])
        dt = time.perf_counter() - t0
        if not isinstance(out, BlockFailure) and time.monotonic() > deadline:  # (a read that cannot be cut short)
            out = BlockFailure(key, FailureCause.TIMEOUT, f"read exceeded {self.config.timeout_s} s")
        if isinstance(out, BlockFailure):
            self._count_failure(out)
            return BlockRead(key, None, out, layer, dt)
        with self._lock:
            self._stats["reads_ok"] += 1
            self._stats["read_bytes"] += out.nbytes
            self._stats["read_s"] += dt
        return BlockRead(key, out, None, layer, dt)

    def _read_layer(self, sk: str, key: str, layer: int, deadline: float) -> np.ndarray | BlockFailure:
        """Header and one Layer Block by two byte-range reads of the same record version.

        The two reads are separate file opens issued together, so either may run first: a
        concurrent write of the key can pair an old header with a new body, or find the record
        absent for one read and present for the other (its first write landing between them).
        Both reads carry the record's storage generation, and any disagreement (generations, one
        read missing, a body past the end of the header's version) is retried. If a writer keeps
        replacing the record through every attempt, or the layer fails its check (two versions
        can share a generation), one whole-record read (a single version: records are swapped
        whole) supplies the layer and its verdict, ``TRUNCATED`` included.
        """
        lb = self.layout.layer_block_bytes
        start = self._hb + layer * lb
        for _ in range(_LAYER_READ_ATTEMPTS):
            f_head = self._kv.read(sk, byte_range=slice(0, self._hb))
            f_body = self._kv.read(sk, byte_range=slice(start, start + lb))
            head_res = f_head.result(timeout=max(0.0, deadline - time.monotonic()))
            try:
                body = f_body.result(timeout=max(0.0, deadline - time.monotonic()))
            except ValueError as e:
                if "OUT_OF_RANGE" not in str(e):
                    raise
                body = None  # past the end of the version this read opened
            if head_res.state != "value":
                if body is None or body.state == "value":
                    continue  # written (or removed) between the two reads: the next attempt decides
                return BlockFailure(key, FailureCause.MISSING, "no such block")
            head = parse_header(self.layout, key, head_res.value)
            if isinstance(head, BlockFailure):
                return head
            if body is None or body.state != "value" or body.stamp.generation != head_res.stamp.generation:
                continue  # replaced or first written between the two reads, or a short record (decided below)
            out = verify_layer(self.layout, key, head, layer, body.value)
            if not isinstance(out, BlockFailure):
                return out
            # a failed check may still be a race: the file driver's generation (device, inode, mtime)
            # repeats when a rewrite reuses the freed inode within one tick of the file clock, so the
            # whole record (one version) decides
            break
        data = self._read_record(sk, key, deadline)
        if isinstance(data, BlockFailure):
            return data
        head = parse_header(self.layout, key, data)  # only this layer's bytes are checked (a view, no copy)
        return head if isinstance(head, BlockFailure) else verify_layer(self.layout, key, head, layer,
                                                                        memoryview(data)[start:start + lb])

    def _read_full_file(self, key: str) -> np.ndarray | BlockFailure:
        """A whole record of the file backend, read straight from its file and verified.

        One open file is one version of the record (the file driver publishes a record by
        renaming a complete file over the old one, and an open descriptor keeps reading the
        inode it opened), so the bytes are never a mix of two writes. They are read once, into
        one new buffer, with the GIL released (``os.preadv``), and checked in place; the
        returned block is a read-only view of that buffer. tensorstore's read would copy the
        record twice (into a Cord, then into ``bytes`` while holding the GIL).
        """
        path = self.path_of(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return BlockFailure(key, FailureCause.MISSING, "no such block")
        except OSError as e:
            return BlockFailure(key, FailureCause.UNREADABLE, f"{path}: {e.strerror}")
        try:
            size = os.fstat(fd).st_size
            expected = self._hb + self.layout.full_block_bytes
            buf = np.empty(min(size, expected), np.uint8)
            mv, got = memoryview(buf), 0
            while got < len(mv):
                n = os.preadv(fd, [mv[got:]], got)
                if n == 0:  # the file shrank after fstat (truncated by another tool)
                    break
                got += n
        except OSError as e:
            return BlockFailure(key, FailureCause.UNREADABLE, f"{path}: {e.strerror}")
        finally:
            os.close(fd)
        if size > expected:  # a record of this layout is never longer: name what the header says first
            head = parse_header(self.layout, key, mv[:got])
            return head if isinstance(head, BlockFailure) else BlockFailure(
                key, FailureCause.BAD_HEADER, f"{size} bytes, record is {expected}")
        block = verify_full(self.layout, key, mv[:got])
        if not isinstance(block, BlockFailure):
            block.flags.writeable = False
        return block

    def _read_record(self, sk: str, key: str, deadline: float) -> bytes | BlockFailure:
        """The raw record at backend key ``sk`` (one version), or a ``MISSING`` failure."""
        res = self._kv.read(sk).result(timeout=max(0.0, deadline - time.monotonic()))
        if res.state != "value":
            return BlockFailure(key, FailureCause.MISSING, "no such block")
        return res.value

    def _failed_future(self, result) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_result(result)
        return fut

    def read_async(self, keys: Sequence[str], *, layer: int | None = None) -> list[cf.Future]:
        """Start reading ``keys``; one ``Future[BlockRead]`` per key, in order.

        Args:
          keys: block keys.
          layer: ``None`` for Full Blocks ``uint8[L, Z, Bt]``, else that layer's Layer Block
            ``uint8[1, Z, Bt]``.

        Raises:
          ValueError: ``layer`` out of range.
        """
        return self._read_async(keys, layer, time.monotonic() + self.config.timeout_s)

    def _read_async(self, keys: Sequence[str], layer: int | None, deadline: float) -> list[cf.Future]:
        if layer is not None and not 0 <= layer < self.layout.n_layers:
            raise ValueError(f"layer: {layer} out of range [0, {self.layout.n_layers})")
        bad_root = self._root_failure()
        if bad_root is not None:
            out = []
            for k in keys:
                f = dataclasses.replace(bad_root, key=k)
                self._count_failure(f)
                out.append(self._failed_future(BlockRead(k, None, f, layer)))
            return out
        return [self._pool.submit(self._read_one, k, layer, deadline) for k in keys]

    def read(self, keys: Sequence[str], *, layer: int | None = None) -> list[BlockRead]:
        """Read ``keys`` and wait (at most ``config.timeout_s`` for all of them together); see
        :meth:`read_async`."""
        deadline = time.monotonic() + self.config.timeout_s  # (the reads' own: one ending by it is not late)
        futures = self._read_async(keys, layer, deadline)
        return [_wait(f, k, deadline, lambda k, fail: BlockRead(k, None, fail, layer)) for f, k in zip(futures, keys)]

    # ---- write --------------------------------------------------------------------------------
    def _write_one(self, key: str, block: np.ndarray, deadline: float) -> WriteResult:
        t0 = time.perf_counter()
        record = encode_record(self.layout, key, block)
        try:
            if time.monotonic() > deadline:  # queued behind other writes past it: not issued
                raise TimeoutError
            self._kv.write(self.storage_key(key), record).result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            fail = BlockFailure(key, FailureCause.TIMEOUT, f"write exceeded {self.config.timeout_s} s")
        except ValueError as e:
            fail = BlockFailure(key, FailureCause.UNWRITABLE, str(e).splitlines()[0][:300])
        else:
            dt = time.perf_counter() - t0
            with self._lock:
                self._stats["writes_ok"] += 1
                self._stats["write_bytes"] += len(record)
                self._stats["write_s"] += dt
            return WriteResult(key, None, len(record), dt)
        self._count_failure(fail)
        return WriteResult(key, fail, 0, time.perf_counter() - t0)

    def write_async(self, keys: Sequence[str], blocks: Sequence[np.ndarray] | np.ndarray) -> list[cf.Future]:
        """Start writing Full Blocks ``uint8[L, Z, Bt]`` under ``keys``; one ``Future[WriteResult]`` each.

        Each block becomes visible to readers only once completely written.

        Raises:
          ValueError: ``keys`` and ``blocks`` differ in length, a key is not a block key
            (``KEY_HEX_CHARS`` lowercase hex digits, as ``kvcache.block_keys`` makes them), or a
            block has the wrong shape.
        """
        self._check_blocks(keys, blocks)
        return self._write_async(keys, blocks, time.monotonic() + self.config.timeout_s)

    def _check_blocks(self, keys: Sequence[str], blocks) -> None:
        if len(keys) != len(blocks):
            raise ValueError(f"blocks: got {len(blocks)} blocks for {len(keys)} keys")
        for i, k in enumerate(keys):
            if not (isinstance(k, str) and len(k) == KEY_HEX_CHARS and _HEX.fullmatch(k)):
                raise ValueError(f"keys[{i}]: {k!r} is not a block key ({KEY_HEX_CHARS} lowercase hex digits, "
                                 f"see kvcache.block_keys)")
        for i, b in enumerate(blocks):
            if b.dtype != np.uint8 or tuple(b.shape) != self.layout.full_block_shape:
                raise ValueError(f"blocks[{i}]: expected uint8{list(self.layout.full_block_shape)}, "
                                 f"got {b.dtype}{list(b.shape)}")

    def _write_async(self, keys: Sequence[str], blocks, deadline: float) -> list[cf.Future]:
        return [self._pool.submit(self._write_one, k, np.asarray(b), deadline) for k, b in zip(keys, blocks)]

    def write(self, keys: Sequence[str], blocks: Sequence[np.ndarray] | np.ndarray) -> list[WriteResult]:
        """Write and wait (at most ``config.timeout_s`` for all of them together); see
        :meth:`write_async`."""
        self._check_blocks(keys, blocks)
        deadline = time.monotonic() + self.config.timeout_s  # (the writes' own)
        futures = self._write_async(keys, blocks, deadline)
        return [_wait(f, k, deadline, lambda k, fail: WriteResult(k, fail)) for f, k in zip(futures, keys)]

    # ---- lookup / contains / delete -----------------------------------------------------------
    def _present(self, keys: Sequence[str], deadline: float) -> list[bool | BlockFailure]:
        futures = [self._kv.read(self.storage_key(k), byte_range=slice(0, 0)) for k in keys]
        out: list[bool | BlockFailure] = []
        for k, f in zip(keys, futures):
            try:
                out.append(f.result(timeout=max(0.0, deadline - time.monotonic())).state == "value")
            except TimeoutError:
                out.append(BlockFailure(k, FailureCause.TIMEOUT, "lookup timed out"))
            except ValueError as e:
                out.append(BlockFailure(k, FailureCause.UNREADABLE, str(e).splitlines()[0][:300]))
        return out

    def lookup_async(self, keys: Sequence[str]) -> cf.Future:
        """Start :meth:`lookup`; returns ``Future[LookupResult]``."""
        return self._pool.submit(self._lookup, list(keys))

    def _lookup(self, keys: list[str]) -> LookupResult:
        with self._lock:
            self._stats["lookups"] += 1
        bad_root = self._root_failure(keys[0] if keys else "")
        if bad_root is not None:
            self._count_failure(bad_root)
            return LookupResult(0, bad_root)
        n, failure = 0, None
        for p in self._present(keys, time.monotonic() + self.config.timeout_s):
            if p is True:
                n += 1
                continue
            if isinstance(p, BlockFailure):
                failure = p
                self._count_failure(p)
            break
        with self._lock:
            self._stats["lookup_hit_blocks"] += n
        return LookupResult(n, failure)

    def lookup(self, keys: Sequence[str]) -> LookupResult:
        """Number of leading keys of the chain ``keys`` that are stored (the longest stored prefix)."""
        return self._lookup(list(keys))

    def contains(self, key: str) -> bool:
        """True if block ``key`` is stored (not checked for integrity; :meth:`read` does that).

        Raises:
          StoreError: the store path is unreadable or the backend failed (cause attached).
        """
        bad_root = self._root_failure(key)
        if bad_root is not None:
            raise StoreError(bad_root)
        (p,) = self._present([key], time.monotonic() + self.config.timeout_s)
        if isinstance(p, BlockFailure):
            raise StoreError(p)
        return p

    def delete(self, keys: Sequence[str]) -> int:
        """Delete ``keys``; returns how many were present.

        Raises:
          StoreError: the backend failed (cause attached: ``UNREADABLE`` or ``TIMEOUT`` when the
            keys could not be checked, ``UNWRITABLE`` when a deletion could not be written,
            ``TIMEOUT`` when it did not finish within ``timeout_s``).
        """
        present = self._present(list(keys), time.monotonic() + self.config.timeout_s)
        for p in present:
            if isinstance(p, BlockFailure):
                raise StoreError(p)
        futures = [self._kv.write(self.storage_key(k), None) for k in keys]
        for k, f in zip(keys, futures):
            try:
                f.result(timeout=self.config.timeout_s)
            except (TimeoutError, ValueError) as e:  # a failed write of the deletion (not a read)
                cause = FailureCause.TIMEOUT if isinstance(e, TimeoutError) else FailureCause.UNWRITABLE
                raise StoreError(BlockFailure(k, cause, f"delete failed: {e}")) from e
        removed = sum(1 for p in present if p is True)
        with self._lock:
            self._stats["deletes"] += removed
        return removed

    def list_keys(self) -> list[str]:
        """All block keys stored under this layout's scope (sorted).

        Raises:
          StoreError: the backend failed.
        """
        prefix = self.layout.scope + "/"
        try:
            raw = self._kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0")).result(timeout=self.config.timeout_s)
        except (TimeoutError, ValueError) as e:
            raise StoreError(BlockFailure("", FailureCause.UNREADABLE, str(e).splitlines()[0][:300])) from e
        keys = [k.decode().rsplit("/", 1)[-1] for k in raw]
        return sorted(k for k in keys if len(k) == 32 and not k.endswith("__lock"))

    # ---- raw access (fault injection and tools) ---------------------------------------------
    def raw_read(self, key: str) -> bytes | None:
        """The stored record bytes of ``key`` without any checks (None if missing)."""
        res = self._kv.read(self.storage_key(key)).result(timeout=self.config.timeout_s)
        return res.value if res.state == "value" else None

    def raw_write(self, key: str, data: bytes) -> None:
        """Store arbitrary bytes as the record of ``key`` (for fault-injection tests)."""
        self._kv.write(self.storage_key(key), data).result(timeout=self.config.timeout_s)

    # ---- stats / lifecycle --------------------------------------------------------------------
    def stats(self) -> StoreStats:
        """A snapshot of the counters (failures keyed by :class:`FailureCause` value)."""
        with self._lock:
            s = dict(self._stats)
            fails = dict(self._failures)
        return StoreStats(lookups=s.get("lookups", 0), lookup_hit_blocks=s.get("lookup_hit_blocks", 0),
                          reads_ok=s.get("reads_ok", 0), read_bytes=s.get("read_bytes", 0),
                          read_s=s.get("read_s", 0.0), writes_ok=s.get("writes_ok", 0),
                          write_bytes=s.get("write_bytes", 0), write_s=s.get("write_s", 0.0),
                          deletes=s.get("deletes", 0), failures=fails)

    def close(self) -> None:
        """Stop the I/O threads (pending operations finish first)."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "KVStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait(fut: cf.Future, key: str, deadline: float, make):
    """``fut``'s result, or ``make(key, failure)`` with a TIMEOUT failure when it has none by
    ``deadline`` (``time.monotonic()`` seconds; the operation, past the same deadline, ends as a
    TIMEOUT too and counts it then)."""
    try:
        return fut.result(timeout=max(deadline - time.monotonic(), 0.0))
    except cf.TimeoutError:
        return make(key, BlockFailure(key, FailureCause.TIMEOUT, "no result by the operation's deadline"))
