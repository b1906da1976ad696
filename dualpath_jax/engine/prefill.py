"""The one prefill path of the runtime: load each layer's cached KV, compute the layer, hand its KV on.

Every prefill runs :meth:`PrefillPath.forward`: the cluster's PE workers (:mod:`.pe`, which add
FIFO batching, the DE-buffer reservation and the PE -> DE sends), the store-backed
:class:`~.standalone.PrefillEngine` (store reads, write-back; the data-path benchmark, the
notebook and ``tests/test_prefill.py``) and :func:`prefill_kv` (seeding a store). One forward
of a batch of :class:`PrefillChunk` s (PAPER.md sections 2.3, 2.4, 3):

1. **Embed** each chunk's new tokens, padded to a T bucket (:func:`~.compute.bucket_tokens`).
2. **Load**: a :class:`~dualpath_jax.transfer.LayerwiseLoader` moves layer l's cached KV of every
   chunk (host pieces in token order, laid out as ``[P, Z, ...]`` blocks padded to a P bucket)
   to the device over the given link, which is charged the real KV bytes (the layout's). In
   ``layerwise`` mode at most ``depth`` layers are on the device (freed after use); ``full``
   loads every layer before computing. Nothing is loaded when no chunk has cached tokens.
3. **Compute** each layer with :func:`~.compute.prefill_layer` per chunk (the model's decoder
   layer over the paged prefill attention), free the layer, and hand each chunk's new KV of that
   layer to ``on_layer`` (the PE worker sends it to the DE buffer while the next layer computes).
4. **Logits** of each chunk's last token (first generated token) or of all its tokens.

The data path never changes results: logits and KV equal a plain forward over the whole prompt
(the model's dense layers; ``tests/test_prefill.py``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dualpath_jax.config import ConfigError, check_in
from dualpath_jax.engine.compute import (all_logits, bucket_blocks, bucket_tokens, check_kernel_block_tokens,
                                         last_token_logits, prefill_layer)
from dualpath_jax.engine.network import TransferFailed
from dualpath_jax.kvcache import BlockLayout, layout_for
from dualpath_jax.model.fingerprint import weights_fingerprint
from dualpath_jax.model.forward import layer_kv_shapes
from dualpath_jax.model.spec import ModelSpec
from dualpath_jax.shapes import BLOCK_TOKENS
from dualpath_jax.store import StoreError
from dualpath_jax.transfer import LayerwiseLoader, Link, LinkConfig, Medium, TransferRecord
from dualpath_jax.transfer.remote import KVTransferError

__all__ = ["LOGITS", "FETCH_IO_ERRORS", "PrefillChunk", "ForwardOutput", "PrefillPath", "check_layout",
           "check_store_layout", "prefill_kv", "store_layout"]

LOGITS = ("none", "last", "all")
"""What a chunk's forward returns: no logits, the last token's ``f32[V]``, or every token's ``f32[T, V]``."""

FETCH_IO_ERRORS: tuple[type[BaseException], ...] = (OSError, StoreError, KVTransferError, TransferFailed)
"""What a forward's ``fetch`` may raise for a failed read or transfer of cached KV (the loader turns
these into :class:`~dualpath_jax.transfer.LoaderError`; any other exception is a bug and keeps its
type and traceback)."""


@dataclasses.dataclass(frozen=True)
class PrefillChunk:
    """The tokens one forward computes for one request.

    Attributes:
      tokens: ``i32[T]`` (T >= 1) new tokens, at positions ``cached .. cached + T - 1``.
      cached: tokens before them whose KV the forward's ``fetch`` delivers (hit + earlier chunks).
      logits: ``"none" | "last" | "all"`` (:data:`LOGITS`).

    Raises:
      ValueError: naming the field, for an empty ``tokens``, a negative ``cached`` or an unknown
        ``logits``.
    """

    tokens: np.ndarray
    cached: int
    logits: str = "last"

    def __post_init__(self):
        tokens = np.asarray(self.tokens, np.int32)
        if tokens.ndim != 1 or tokens.shape[0] == 0:
            raise ValueError(f"tokens: expected a non-empty 1-D array, got shape {list(tokens.shape)}")
        if int(self.cached) < 0:
            raise ValueError(f"cached: must be >= 0 (got {self.cached})")
        if self.logits not in LOGITS:
            raise ValueError(f"logits: must be one of {list(LOGITS)} (got {self.logits!r})")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "cached", int(self.cached))


@dataclasses.dataclass(frozen=True)
class ForwardOutput:
    """What one :meth:`PrefillPath.forward` produced and measured (seconds from ``time.perf_counter``).

    Attributes:
      new_kv: ``new_kv[b][l]`` host LayerKV of chunk b's T tokens in layer l.
      logits: per chunk None, ``f32[V]`` (``"last"``) or ``f32[T, V]`` (``"all"``).
      layers_s: embedding and loader start .. last layer done.
      compute_s: time computing (layers and logits, not waiting for KV).
      load_wait_s: time the layer loop waited for KV.
      loaded_bytes: KV bytes charged to the link (the layout's bytes of the cached tokens, per layer).
      peak_device_bytes: most bytes of loaded KV on the device at once (padded block arrays).
      depth: layers the loader held at most (0 when nothing was loaded).
      records: the link's transfer records, one per layer.
    """

    new_kv: list
    logits: list
    layers_s: float
    compute_s: float
    load_wait_s: float = 0.0
    loaded_bytes: int = 0
    peak_device_bytes: int = 0
    depth: int = 0
    records: tuple[TransferRecord, ...] = ()


def check_layout(spec: ModelSpec, layout: BlockLayout, field: str = "layout") -> None:
    """Raise ConfigError naming ``field`` unless ``layout`` is the layout :func:`layout_for` gives
    ``spec`` (with the layout's own kv dtype, block size and namespace): same model name,
    attention, layer count, fields and spec digest (every ModelSpec field; e.g. a store built for
    ``tiny-gqa`` does not serve ``tiny-gqa`` with another ``n_kv_heads`` or ``rope_theta``)."""
    want = layout_for(spec, layout.kv_dtype, block_tokens=layout.block_tokens, namespace=layout.namespace)
    if layout == want:
        return

    def show(value) -> str:
        if isinstance(value, tuple):  # fields
            return "(" + ", ".join(f"{f.name}{list(f.shape)} {f.dtype}" for f in value) + ")"
        return repr(value)

    diff = [f"{f.name} {show(getattr(layout, f.name))} != {show(getattr(want, f.name))}"
            for f in dataclasses.fields(BlockLayout) if getattr(layout, f.name) != getattr(want, f.name)]
    if [d for d in diff if not d.startswith("spec_digest")]:
        diff = [d for d in diff if not d.startswith("spec_digest")]  # the digest adds nothing to those
    else:
        diff = ["spec_digest (the spec differs in a field other than the layout's own)"]
    raise ConfigError(field, f"layout of {layout.model_name} does not match spec {spec.name} "
                             f"({spec.attention}, L={spec.n_layers}): {'; '.join(diff)}")


def store_layout(spec: ModelSpec, params: dict, kv_dtype: str = "f32", *, block_tokens: int = BLOCK_TOKENS
                 ) -> BlockLayout:
    """The layout of a KV store that serves ``spec`` with ``params``: :func:`layout_for` with the
    weights' fingerprint as ``namespace`` (:func:`~dualpath_jax.model.fingerprint.weights_fingerprint`),
    so the store's keys are scoped to this spec *and* these weights (module docstring of
    :mod:`dualpath_jax.kvcache.layout`). Use it wherever a layout is built for a store.

    Raises:
      ConfigError: ``kv_dtype`` unknown or ``block_tokens`` not positive.
      ValueError: ``params`` has no array leaves.
    """
    return layout_for(spec, kv_dtype, block_tokens=block_tokens, namespace=weights_fingerprint(params))


def check_store_layout(spec: ModelSpec, params: dict, layout: BlockLayout, field: str = "store.layout") -> None:
    """:func:`check_layout`, and raise ConfigError naming ``field`` unless ``layout.namespace`` is
    the fingerprint of ``params`` (a store layout from :func:`store_layout` with these weights):
    KV cached by other weights must never be read."""
    check_layout(spec, layout, field)
    fp = weights_fingerprint(params)
    if layout.namespace != fp:
        what = "names no weights" if not layout.namespace else f"is {layout.namespace!r}"
        raise ConfigError(field, f"namespace {what}, not the weights fingerprint {fp!r} of these params: "
                                 "build the store's layout with store_layout(spec, params, kv_dtype)")


class _ChargedLink:
    """A link as the loader sees it, charged ``num_bytes`` per layer whatever the padded arrays hold."""

    def __init__(self, link, num_bytes: int):
        self.link, self.num_bytes = link, int(num_bytes)

    def transfer(self, num_bytes, fn=None, *, timeout_s=None, tag=""):
        del num_bytes  # the host arrays are padded to block buckets; the link carries the real KV
        return self.link.transfer(self.num_bytes, fn, timeout_s=timeout_s, tag=tag)


class PrefillPath:
    """One PE's prefill forward on one device (see the module docstring).

    Args:
      params: the model's parameters (put on ``device`` once).
      spec: the model.
      layout: the KV block layout (Z and the bytes a layer's KV costs on the link).
      device: the PE's device (default ``jax.devices()[0]``).
      mode: ``"layerwise"`` or ``"full"``.
      depth: layers in flight in ``layerwise`` mode (2 = double buffering).
      timeout_s: deadline of every loader wait.
      implementation: attention kernels, ``"auto" | "reference" | "pallas"``.
      embed_table: host ``[V, D]`` embedding table (default a host copy of ``params["embed"]``).

    Raises:
      ConfigError: ``layout`` does not match ``spec``, its block size does not suit the kernels
        ``implementation`` resolves to (:func:`~.compute.check_kernel_block_tokens`), or ``mode`` is
        unknown (``depth`` and ``timeout_s`` are checked by the loader of each forward).
    """

    def __init__(self, params: dict, spec: ModelSpec, layout: BlockLayout, *, device: jax.Device | None = None,
                 mode: str = "layerwise", depth: int = 2, timeout_s: float = 60.0, implementation: str = "auto",
                 embed_table: np.ndarray | None = None):
        check_in("prefill.mode", mode, ("layerwise", "full"))
        check_layout(spec, layout)
        check_kernel_block_tokens(layout.block_tokens, implementation)
        self.spec, self.layout, self.mode, self.timeout_s = spec, layout, mode, timeout_s
        self.implementation = implementation
        self.device = device or jax.devices()[0]
        self.params = jax.device_put(params, self.device)
        self.embed_table = np.asarray(params["embed"]) if embed_table is None else embed_table
        self.depth = min(depth, spec.n_layers) if mode == "layerwise" else spec.n_layers
        self.kv_shapes = layer_kv_shapes(spec)
        self.shapes: set[tuple[int, int]] = set()  # (T bucket, P bucket) pairs run so far
        z = layout.block_tokens
        self._no_cache = tuple(jax.device_put(np.zeros((1, z, *s), np.float32), self.device) for s in self.kv_shapes)

    # ---- pieces (public so that benchmarks time exactly what a forward runs) ---------------------
    def cache_blocks(self, chunks: Sequence[PrefillChunk], pieces: Sequence[Sequence[tuple]]) -> tuple:
        """Host cached KV of one layer per chunk, as padded blocks.

        Args:
          pieces: per chunk, host LayerKVs of consecutive token ranges that tile ``[0, cached)``.

        Returns:
          Per chunk the pair ``(f32[P_b, Z, ...], f32[P_b, Z, ...])``, ``P_b = bucket_blocks(ceil(cached / Z))``,
          zero past ``cached``.

        Raises:
          ValueError: a chunk's pieces do not hold exactly ``cached`` tokens.
        """
        z, out = self.layout.block_tokens, []
        for b, (chunk, parts) in enumerate(zip(chunks, pieces)):
            held = sum(int(p[0].shape[0]) for p in parts)
            if held != chunk.cached:
                raise ValueError(f"pieces: chunk {b} has {held} cached tokens of KV, expected {chunk.cached}")
            p_b = bucket_blocks(-(-chunk.cached // z))
            pair = []
            for i, shape in enumerate(self.kv_shapes):
                buf = np.zeros((p_b * z, *shape), np.float32)
                lo = 0
                for part in parts:
                    buf[lo:lo + len(part[i])] = part[i]
                    lo += len(part[i])
                pair.append(buf.reshape(p_b, z, *shape))
            out.append(tuple(pair))
        return tuple(out)

    def loader(self, chunks: Sequence[PrefillChunk], fetch: Callable[[int], Sequence], link=None) -> LayerwiseLoader:
        """The (unstarted) loader of a forward: ``fetch(l)`` gives the per-chunk pieces of layer l
        (see :meth:`cache_blocks`); ``link`` (default unlimited H2D) is charged the real KV bytes."""
        link = link or Link(LinkConfig("pe.h2d", Medium.PE_BUFFER, Medium.PE_HBM))
        nbytes = sum(c.cached for c in chunks) * self.layout.bytes_per_token_per_layer
        return LayerwiseLoader(self.spec.n_layers, lambda layer: self.cache_blocks(chunks, fetch(layer)),
                               _ChargedLink(link, nbytes), depth=self.depth, device=self.device,
                               timeout_s=self.timeout_s, io_errors=FETCH_IO_ERRORS)

    def run_layers(self, chunks: Sequence[PrefillChunk], get_caches: Callable[[int], Sequence],
                   release: Callable[[int], None], on_layer: Callable[[int, int, tuple], None] | None = None
                   ) -> tuple[list, list, float]:
        """Embed the chunks and run all L layers, one layer at a time.

        Args:
          get_caches: ``get_caches(l)`` -> per chunk the device block pair of layer l (may block).
          release: called with ``l`` once layer l's computations have finished.
          on_layer: ``on_layer(l, b, kv)`` with chunk b's host LayerKV of layer l (its T tokens).

        Returns:
          ``(hs, new_kv, compute_s)``: final padded hidden states ``[T_b, D]`` per chunk,
          ``new_kv[b][l]``, and the seconds spent computing (excluding ``get_caches``).
        """
        spec, put = self.spec, lambda x: jax.device_put(x, self.device)  # noqa: E731
        hs, pos, meta = [], [], []
        for c in chunks:
            t, t_b = len(c.tokens), bucket_tokens(len(c.tokens))
            h = np.zeros((t_b, spec.d_model), self.embed_table.dtype)
            h[:t] = self.embed_table[c.tokens]
            hs.append(put(h))
            pos.append(put(np.arange(c.cached, c.cached + t_b, dtype=np.int32)))
            meta.append((put(np.int32(c.cached)), put(np.int32(t))))
        new_kv = [[None] * spec.n_layers for _ in chunks]
        compute_s = 0.0
        for layer in range(spec.n_layers):
            caches = get_caches(layer)
            t0 = time.perf_counter()
            lp, outs = self.params["layers"][layer], []
            for b in range(len(chunks)):
                self.shapes.add((int(hs[b].shape[0]), int(caches[b][0].shape[0])))
                hs[b], kv = prefill_layer(lp, spec, hs[b], pos[b], caches[b], *meta[b],
                                          implementation=self.implementation)
                outs.append(kv)
            jax.block_until_ready((hs, outs))
            compute_s += time.perf_counter() - t0
            release(layer)
            for b, (c, kv) in enumerate(zip(chunks, outs)):
                new_kv[b][layer] = tuple(np.asarray(x)[:len(c.tokens)] for x in kv)
                if on_layer is not None:
                    on_layer(layer, b, new_kv[b][layer])
        return hs, new_kv, compute_s

    # ---- the forward ----------------------------------------------------------------------------
    def forward(self, chunks: Sequence[PrefillChunk], fetch: Callable[[int], Sequence], link=None, *,
                on_layer: Callable[[int, int, tuple], None] | None = None) -> ForwardOutput:
        """One prefill forward of ``chunks`` (module docstring, steps 1-4).

        Args:
          fetch: ``fetch(l)`` -> per chunk, host LayerKVs tiling its ``cached`` tokens in layer l
            (called on the loader thread; not called when no chunk has cached tokens).
          link: carries each layer's KV (``transfer(num_bytes, fn, *, timeout_s, tag)``, e.g. a
            :class:`~dualpath_jax.transfer.Link`); default an unlimited H2D link.
          on_layer: see :meth:`run_layers`.

        Raises:
          LoaderError: a layer's KV could not be moved to the device in time, or ``fetch`` raised
            one of :data:`FETCH_IO_ERRORS` (a failed read or transfer).
          Exception: any other exception of ``fetch`` (e.g. ``ValueError`` from
            :meth:`cache_blocks` for pieces that do not tile ``cached``) or ``on_layer``, as raised.
        """
        chunks = list(chunks)
        t0 = time.perf_counter()
        loader = self.loader(chunks, fetch, link) if any(c.cached for c in chunks) else None
        try:
            if loader is None:
                get, release = (lambda layer: [self._no_cache] * len(chunks)), (lambda layer: None)
            else:
                loader.start()
                if self.mode == "full":  # every layer's KV on the device before computing
                    for layer in range(self.spec.n_layers):
                        loader.get(layer)
                get, release = loader.get, loader.release
            hs, new_kv, compute_s = self.run_layers(chunks, get, release, on_layer)
            layers_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            logits = [self._logits(c, h) for c, h in zip(chunks, hs)]
            compute_s += time.perf_counter() - t1
        finally:
            stats = loader.stats() if loader is not None else None
            if loader is not None:
                loader.close()
        if stats is None:
            return ForwardOutput(new_kv, logits, layers_s, compute_s)
        return ForwardOutput(new_kv, logits, layers_s, compute_s, stats.consumer_wait_s, stats.loaded_bytes,
                             stats.peak_device_bytes, stats.depth, stats.records)

    def _logits(self, chunk: PrefillChunk, h: jax.Array):
        n = len(chunk.tokens)
        if chunk.logits == "last":
            return np.asarray(last_token_logits(self.params, self.spec, h, jnp.int32(n - 1)))
        if chunk.logits == "all":
            return np.asarray(all_logits(self.params, self.spec, h))[:n]
        return None


def prefill_kv(params: dict, spec: ModelSpec, tokens: np.ndarray, device: jax.Device | None = None, *,
               chunk_tokens: int = 512, block_tokens: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
    """KV of ``tokens i32[S]`` per layer (host LayerKVs of S tokens), computed by :class:`PrefillPath`
    in ``chunk_tokens`` chunks, each over the KV of the chunks before it (e.g. to seed a store).

    Raises:
      ValueError: ``tokens`` empty or ``chunk_tokens`` not positive.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 1 or tokens.shape[0] == 0:
        raise ValueError(f"tokens: expected a non-empty 1-D array, got shape {list(tokens.shape)}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens: must be positive (got {chunk_tokens})")
    path = PrefillPath(params, spec, layout_for(spec, block_tokens=block_tokens), device=device)
    kv: list | None = None
    for lo in range(0, len(tokens), chunk_tokens):
        chunk = PrefillChunk(tokens[lo:lo + chunk_tokens], lo, logits="none")
        new = path.forward([chunk], lambda layer: [[kv[layer]]]).new_kv[0]
        kv = new if kv is None else [tuple(np.concatenate([a, b]) for a, b in zip(old, n)) for old, n in zip(kv, new)]
    return kv
