"""A standalone prefill engine over a KV store: store reads, the one prefill path, write-back.

:class:`PrefillEngine` runs one batch at a time on one device (PAPER.md section 2.3, PE read path;
section 3); the data-path benchmark, the notebook and ``tests/test_prefill.py`` use it. Its
forward is :meth:`dualpath_jax.engine.prefill.PrefillPath.forward`, the code the cluster's PE
workers run. Three steps:

1. :meth:`PrefillEngine.prepare`: per request, the prefix-hash-chain keys of its complete blocks
   (at most ``(S - 1) // Z`` so at least one token is computed), a store ``lookup`` for the
   longest stored prefix, then Full Block reads storage -> PE buffer (a bounded
   :class:`~dualpath_jax.transfer.BufferPool`; each block charged to the SNIC link). The hit
   stops at the first block that fails (missing, checksum mismatch, truncated, unreadable,
   timeout): that block and everything after it are **recomputed from tokens**, and the cause
   is reported in :attr:`PrefillResult.miss` / :attr:`PrefillResult.failures`.
2. :meth:`PrefillEngine.execute`: the prefill path over the H2D link, each layer's hit KV
   gathered from the Layer Blocks of the buffered Full Blocks; ``layerwise`` mode keeps
   ``depth`` layers on the device (default 2: layer l+1 moves while layer l computes), ``full``
   loads every layer first.
3. Logits of the computed tokens, and write-back of every newly completed 64-token block to the
   store as a Full Block (``write_back``), which also repairs blocks that failed to read.

The data path never changes results: logits equal a plain forward over the whole prompt.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import numpy as np

from dualpath_jax.config import ConfigError, check_in, check_positive
from dualpath_jax.engine.prefill import PrefillChunk, PrefillPath, check_store_layout
from dualpath_jax.kvcache import block_keys, gather_layer, pack_full_blocks
from dualpath_jax.model.spec import ModelSpec
from dualpath_jax.store import BlockFailure, FailureCause, KVStore
from dualpath_jax.transfer import BufferPool, Lease, Link, LinkConfig, LoaderError, Medium, TransferRecord

__all__ = ["PrefillConfig", "PrefillRequest", "PrefillResult", "PrefillReport", "PreparedBatch", "PrefillEngine"]


@dataclasses.dataclass(frozen=True)
class PrefillConfig:
    """Prefill engine settings.

    Attributes:
      mode: ``"layerwise"`` (stream KV layer by layer, ``depth`` layers on the device) or
        ``"full"`` (all layers' KV on the device before computing).
      depth: layers in flight in ``layerwise`` mode (2 = double buffering).
      write_back: persist newly completed Full Blocks to the store.
      timeout_s: deadline of every wait (buffer, links, loader, store), seconds.
      implementation: attention kernels, ``"auto" | "reference" | "pallas"``; not checked here
        (an unknown name raises ``ValueError`` from the first forward, in :meth:`PrefillEngine.execute`).

    Raises:
      ConfigError: naming the field: ``prefill.mode`` not ``"layerwise"`` or ``"full"``;
        ``prefill.depth`` not an integer > 0; ``prefill.timeout_s`` not a finite number > 0.
    """

    mode: str = "layerwise"
    depth: int = 2
    write_back: bool = True
    timeout_s: float = 60.0
    implementation: str = "auto"

    def __post_init__(self):
        check_in("prefill.mode", self.mode, ("layerwise", "full"))
        check_positive("prefill.depth", self.depth, integer=True)
        check_positive("prefill.timeout_s", self.timeout_s)


@dataclasses.dataclass(frozen=True)
class PrefillRequest:
    """A prompt ``tokens i32[S]`` (hit prefix + appended tokens); the store decides the hit.

    Attributes:
      request_id: names the request in results, errors and transfer tags.
      tokens: any 1-D integer array, stored as ``i32[S]``; the vocabulary bound ``[0, V)`` is
        checked by :meth:`PrefillEngine.prepare`, which knows the model.

    Raises:
      ValueError: ``tokens`` is not a non-empty 1-D integer array, or holds an id outside
        ``[0, 2**31)`` (checked before the ``int32`` cast could wrap it).
    """

    request_id: str
    tokens: np.ndarray

    def __post_init__(self):
        tokens = np.asarray(self.tokens)
        if tokens.ndim != 1 or tokens.shape[0] == 0 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"request {self.request_id}: tokens must be a non-empty 1-D integer array "
                             f"(got {tokens.dtype}{list(tokens.shape)})")
        if int(tokens.min()) < 0 or int(tokens.max()) >= 2**31:  # before the int32 cast could wrap them
            raise ValueError(f"request {self.request_id}: token ids must be in [0, 2**31) "
                             f"(got min {tokens.min()}, max {tokens.max()})")
        object.__setattr__(self, "tokens", tokens.astype(np.int32))


@dataclasses.dataclass(frozen=True)
class PrefillResult:
    """Outcome of one request.

    Attributes:
      logits: ``f32[T, V]`` for the computed tokens ``tokens[hit_tokens:]``.
      hit_tokens: tokens whose KV came from the store (a multiple of Z).
      lookup_blocks: blocks the store's lookup reported present.
      miss: why the hit stopped before the longest possible prefix (``None`` if it did not):
        ``MISSING`` for a plain miss, or the read failure of the first bad block.
      failures: every read failure of this request's blocks.
      new_kv: L host LayerKVs of the T computed tokens.
      blocks_written, write_failures: write-back outcome.
    """

    request_id: str
    logits: np.ndarray
    hit_tokens: int
    lookup_blocks: int
    miss: BlockFailure | None
    failures: tuple[BlockFailure, ...]
    new_kv: list
    blocks_written: int = 0
    write_failures: tuple[BlockFailure, ...] = ()

    @property
    def computed_tokens(self) -> int:
        return int(self.logits.shape[0])


@dataclasses.dataclass(frozen=True)
class PrefillReport:
    """Batch-level measurements of one :meth:`PrefillEngine.run` (seconds from ``time.perf_counter``; bytes).

    Attributes:
      mode: ``config.mode``, ``"layerwise"`` or ``"full"``.
      depth: layers of KV the loader held on the device at most (0 when no request had a hit, or
        when the hit KV was lost and the batch was recomputed); not ``config.depth``.
      wall_s: :meth:`PrefillEngine.prepare` plus :meth:`PrefillEngine.execute`, seconds.
      read_s: lookup + Full Block reads into the PE buffer (step 1), seconds.
      layers_s: embedding and loader start .. last layer done, seconds.
      compute_s: seconds spent computing (layers and logits), not waiting for KV.
      load_wait_s: seconds the layer loop waited for KV.
      write_s: write-back of the newly completed Full Blocks, seconds (0 without ``write_back``).
      kv_device_peak_bytes: most bytes of loaded hit KV on the device at once, counted on the
        ``f32`` block arrays the device holds: per request ``bucket_blocks(ceil(hit / Z))`` blocks
        (the next power of two, :func:`~dualpath_jax.engine.compute.bucket_blocks`), zero-padded,
        summed over the requests and the layers held at once; so not the layout's bytes of the hit.
      h2d_bytes: bytes charged to ``h2d_link``: the layout's bytes of the hit tokens,
        ``hit_tokens * Bt`` per layer, summed over the layers moved (``L`` of them normally).
      hit_tokens: tokens whose KV came from the store, summed over the batch (a multiple of Z per
        request).
      computed_tokens: tokens computed (prompt minus hit), summed over the batch.
      miss_causes: ``FailureCause.value`` -> requests whose hit stopped short of the longest
        eligible prefix for that cause (``"missing"`` for a plain miss).
      read_failures: ``FailureCause.value`` -> failed block reads (a hit lost mid-prefill counts
        one per request that had it).
      h2d_records: ``h2d_link`` transfer records, one per layer moved.
    """

    mode: str
    depth: int
    wall_s: float
    read_s: float            # lookup + Full Block reads into the PE buffer
    layers_s: float          # loader start .. last layer done (embed included)
    compute_s: float         # time the layer loop spent computing (not waiting for KV)
    load_wait_s: float       # time the layer loop waited for KV
    write_s: float
    kv_device_peak_bytes: int
    h2d_bytes: int
    hit_tokens: int
    computed_tokens: int
    miss_causes: dict        # FailureCause value -> requests whose hit stopped short for it
    read_failures: dict      # FailureCause value -> failed block reads
    h2d_records: tuple[TransferRecord, ...]


@dataclasses.dataclass
class PreparedBatch:
    """A batch after step 1: hit blocks held in the PE buffer (see :meth:`PrefillEngine.prepare`)."""

    requests: list[PrefillRequest]
    keys: list[list[str]]                # all complete-block keys per request
    hit_blocks: list[int]
    lookup_blocks: list[int]
    blocks: list[list[np.ndarray]]       # per request: hit Full Blocks uint8[L, Z, Bt]
    miss: list[BlockFailure | None]
    failures: list[list[BlockFailure]]
    lease: Lease | None
    read_s: float
    scope: str                           # BlockLayout.scope its keys and blocks belong to

    def fetch_layer(self, layout, layer: int) -> list:
        """Per request, the host LayerKVs of its hit tokens in ``layer`` (a list of one, or empty
        without a hit): the ``fetch`` of :meth:`PrefillPath.forward`."""
        return [[gather_layer(layout, blk, layer)] if blk else [] for blk in self.blocks]


class PrefillEngine:
    """A prefill engine over one device (see module docstring).

    Args:
      params, spec: the model.
      store: KV store; its layout must be :func:`~dualpath_jax.engine.prefill.store_layout` of
        ``spec`` and ``params`` (any kv dtype and block size).
      buffer: the PE buffer (bounded DRAM); default one that fits 4096 Full Blocks.
      h2d_link: PE buffer -> device link (emulated CNIC loopback / PCIe); default unlimited.
      snic_link: storage -> PE buffer link (emulated SNIC); default unlimited.
      config: engine settings.
      device: the engine's device (default ``jax.devices()[0]``).

    Raises:
      ConfigError: ``store.layout`` does not match ``spec`` (another model, or the spec differs in
        any field) or its namespace is not the fingerprint of ``params`` (KV of other weights).
    """

    def __init__(self, params: dict, spec: ModelSpec, store: KVStore, *, buffer: BufferPool | None = None,
                 h2d_link: Link | None = None, snic_link: Link | None = None, config: PrefillConfig | None = None,
                 device: jax.Device | None = None):
        layout = store.layout
        check_store_layout(spec, params, layout, "store.layout")
        self.params, self.spec, self.store, self.layout = params, spec, store, layout
        self.config = config or PrefillConfig()
        self.buffer = buffer or BufferPool("pe.buffer", 4096 * layout.full_block_bytes)
        self.h2d_link = h2d_link or Link(LinkConfig("pe.h2d", Medium.PE_BUFFER, Medium.PE_HBM))
        self.snic_link = snic_link or Link(LinkConfig("pe.snic", Medium.STORAGE, Medium.PE_BUFFER))
        cfg = self.config
        self.path = PrefillPath(params, spec, layout, device=device, mode=cfg.mode, depth=cfg.depth,
                                timeout_s=cfg.timeout_s, implementation=cfg.implementation)
        self.device = self.path.device

    # ---- step 1 -------------------------------------------------------------------------------
    def prepare(self, requests: Sequence[PrefillRequest]) -> PreparedBatch:
        """Look up and read each request's hit blocks into the PE buffer.

        A block the SNIC link could not carry in time counts as a failed read (``TIMEOUT``): it and
        the blocks after it are recomputed.

        Raises:
          ValueError: a token id outside the model's vocabulary, or the batch's hit blocks can
            never fit the PE buffer.
          BufferTimeoutError: the PE buffer stayed full past ``config.timeout_s`` (back-pressure).
        """
        t0 = time.perf_counter()
        z, timeout = self.layout.block_tokens, self.config.timeout_s
        requests = list(requests)
        for r in requests:
            if int(r.tokens.max()) >= self.spec.vocab_size or int(r.tokens.min()) < 0:
                raise ValueError(f"request {r.request_id}: token ids must be in [0, {self.spec.vocab_size}) "
                                 f"(vocab_size of {self.spec.name}; got min {r.tokens.min()}, max {r.tokens.max()})")
        keys = [block_keys(self.layout, r.tokens) for r in requests]
        eligible = [min(len(k), (len(r.tokens) - 1) // z) for k, r in zip(keys, requests)]
        lookups = [self.store.lookup_async(k[:n]) for k, n in zip(keys, eligible)]
        found, miss = [], []
        for fut, k, n in zip(lookups, keys, eligible):
            try:
                res = fut.result(timeout=timeout)
                num, fail = res.num_blocks, res.failure
            except TimeoutError:
                num, fail = 0, BlockFailure(k[0] if k else "", FailureCause.TIMEOUT, "lookup timed out")
            if fail is None and num < n:
                fail = BlockFailure(k[num], FailureCause.MISSING, "not in store")
            found.append(num)
            miss.append(fail)
        total = sum(found) * self.layout.full_block_bytes
        lease = self.buffer.acquire(total, timeout_s=timeout) if total else None
        try:
            reads = [self.store.read_async(k[:n]) for k, n in zip(keys, found)]
            hit_blocks, blocks, failures = [], [], []
            for b, futs in enumerate(reads):
                good, fails = [], []
                for key, fut in zip(keys[b], futs):
                    try:
                        res = fut.result(timeout=timeout)
                    except TimeoutError:
                        fails.append(BlockFailure(key, FailureCause.TIMEOUT, "read timed out"))
                        continue
                    if not res.ok:
                        fails.append(res.failure)
                    elif not fails:  # blocks after the first bad one are recomputed, not used
                        moved = self.snic_link.transfer(res.block.nbytes, timeout_s=timeout,
                                                        tag=requests[b].request_id)
                        if moved.ok:
                            good.append(lease.hold(res.block))
                        else:  # the SNIC never carried it: recompute from here, as for a failed read
                            fails.append(BlockFailure(key, FailureCause.TIMEOUT, f"SNIC: {moved.record.cause}"))
                if fails:
                    miss[b] = fails[0]
                hit_blocks.append(len(good))
                blocks.append(good)
                failures.append(fails)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        return PreparedBatch(requests, keys, hit_blocks, found, blocks, miss, failures, lease, time.perf_counter() - t0,
                             self.layout.scope)

    # ---- steps 2 and 3 ------------------------------------------------------------------------
    def execute(self, batch: PreparedBatch) -> tuple[list[PrefillResult], PrefillReport]:
        """Run the prefill of a prepared batch through :meth:`PrefillPath.forward`; releases its PE
        buffer lease.

        A layer's hit KV that cannot be delivered (a failed or timed-out pull from a DE reader
        that died mid-prefill, an H2D copy past ``config.timeout_s``: a ``LoaderError``) ends the
        batch's hits: its forward runs again from the tokens alone, every prompt recomputed, and
        each request that had a hit records the failure (``TIMEOUT`` or ``UNREADABLE``, naming
        the layer) in ``miss`` and ``failures``.

        Raises:
          ConfigError: naming ``batch.scope``, for a batch prepared under another layout (another
            model, spec or weights, e.g. :func:`~dualpath_jax.engine.remote_read.prepare_remote`
            given another engine's layout): its KV is not this model's.
        """
        if batch.scope != self.layout.scope:
            if batch.lease is not None:
                batch.lease.release()
            raise ConfigError("batch.scope", f"the batch was prepared under layout scope {batch.scope}, this engine's "
                              f"is {self.layout.scope} (another model, spec or weights): its KV is not this model's")
        cfg, z = self.config, self.layout.block_tokens
        t0 = time.perf_counter()
        hit_tokens = [n * z for n in batch.hit_blocks]
        chunks = [PrefillChunk(r.tokens[hit:], hit, logits="all") for r, hit in zip(batch.requests, hit_tokens)]
        try:
            out = self.path.forward(chunks, lambda layer: batch.fetch_layer(self.layout, layer), self.h2d_link)
        except LoaderError as e:  # the hit KV is gone: recompute from the tokens, as for a failed read
            timed_out = e.timed_out or isinstance(e.__cause__, TimeoutError)
            cause = FailureCause.TIMEOUT if timed_out else FailureCause.UNREADABLE
            lost = [b for b, hit in enumerate(hit_tokens) if hit]
            fails = {b: BlockFailure(batch.keys[b][0], cause, f"hit KV lost mid-prefill: {e}") for b in lost}
            batch = dataclasses.replace(
                batch, hit_blocks=[0] * len(hit_tokens),
                miss=[fails.get(b, m) for b, m in enumerate(batch.miss)],
                failures=[[*f, fails[b]] if b in fails else f for b, f in enumerate(batch.failures)])
            hit_tokens = [0] * len(hit_tokens)
            chunks = [PrefillChunk(r.tokens, 0, logits="all") for r in batch.requests]
            out = self.path.forward(chunks, lambda layer: [], self.h2d_link)
        finally:
            if batch.lease is not None:
                batch.lease.release()
        t_write = time.perf_counter()
        written, wfails = self._write_back(batch, hit_tokens, out.new_kv) if cfg.write_back else (
            [0] * len(chunks), [()] * len(chunks))
        write_s = time.perf_counter() - t_write
        results, miss_causes, read_failures = [], {}, {}
        for b, r in enumerate(batch.requests):
            if batch.miss[b] is not None:
                miss_causes[batch.miss[b].cause.value] = miss_causes.get(batch.miss[b].cause.value, 0) + 1
            for f in batch.failures[b]:
                read_failures[f.cause.value] = read_failures.get(f.cause.value, 0) + 1
            results.append(PrefillResult(r.request_id, out.logits[b], hit_tokens[b], batch.lookup_blocks[b],
                                         batch.miss[b], tuple(batch.failures[b]), out.new_kv[b], written[b],
                                         wfails[b]))
        report = PrefillReport(
            mode=cfg.mode, depth=out.depth, wall_s=batch.read_s + time.perf_counter() - t0, read_s=batch.read_s,
            layers_s=out.layers_s, compute_s=out.compute_s, load_wait_s=out.load_wait_s, write_s=write_s,
            kv_device_peak_bytes=out.peak_device_bytes, h2d_bytes=out.loaded_bytes, hit_tokens=sum(hit_tokens),
            computed_tokens=sum(len(c.tokens) for c in chunks), miss_causes=miss_causes,
            read_failures=read_failures, h2d_records=out.records)
        return results, report

    def _write_back(self, batch: PreparedBatch, hit_tokens: list[int], new_kvs: list) -> tuple[list, list]:
        z = self.layout.block_tokens
        pending = []
        for b, r in enumerate(batch.requests):
            first, last = hit_tokens[b] // z, len(r.tokens) // z
            if last <= first:
                pending.append([])
                continue
            n_tok = (last - first) * z
            blocks = pack_full_blocks(self.layout, [tuple(x[:n_tok] for x in kv) for kv in new_kvs[b]])
            pending.append(self.store.write_async(batch.keys[b][first:last], blocks))
        written, fails = [], []
        for futs in pending:
            ok, bad = 0, []
            for fut in futs:
                try:
                    res = fut.result(timeout=self.config.timeout_s)
                except TimeoutError:
                    bad.append(BlockFailure("", FailureCause.TIMEOUT, "write timed out"))
                    continue
                if res.ok:
                    ok += 1
                else:
                    bad.append(res.failure)
            written.append(ok)
            fails.append(tuple(bad))
        return written, fails

    def run(self, requests: Sequence[PrefillRequest]) -> tuple[list[PrefillResult], PrefillReport]:
        """:meth:`prepare` then :meth:`execute`.

        Returns:
          ``(results, report)``: one :class:`PrefillResult` per request, in order, and the batch's
          :class:`PrefillReport`.

        Raises:
          ValueError: a token id outside ``[0, V)`` (``spec.vocab_size``); the batch's hit Full
            Blocks (``full_block_bytes`` each) exceed the PE buffer's capacity, so they can never
            fit; or an unknown ``config.implementation`` (from the forward).
          BufferTimeoutError: the PE buffer stayed full past ``config.timeout_s`` (back-pressure).
        """
        return self.execute(self.prepare(requests))
