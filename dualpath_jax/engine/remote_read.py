"""The DE read path across processes: a DE reads hit KV into its buffer and a PE pulls it per layer.

PAPER.md section 2.4 (Fig. 4(b)): the DE node's SNIC reads a request's hit Full Blocks from
storage into the DE buffer (1)-(2); during the PE's prefill, each layer's Layer Blocks go DE
buffer -> DE CNIC -> PE CNIC -> PE HBM (3)-(5), overlapped with the computation. Here the DE side
is :class:`DEReadServer`, which runs in its own process (a Ray actor, :func:`start_de_reader`),
reads from the shared store path (a local directory on one host, a shared filesystem across
hosts: every process opens the same ``StoreConfig.path``) and offers one array per request and
layer through JAX's transfer server (:mod:`dualpath_jax.transfer.remote`): the request's Layer
Blocks of that layer stacked, ``uint8[P, Z, Bt]`` (one offer per layer keeps the pulls few; a
pull costs about a millisecond on a CPU host). The PE side is :class:`RemotePreparedBatch`, a
:class:`~dualpath_jax.engine.standalone.PreparedBatch` whose ``fetch_layer`` pulls those arrays,
so :meth:`PrefillEngine.execute <dualpath_jax.engine.standalone.PrefillEngine.execute>` runs the
one prefill path (:class:`~dualpath_jax.engine.prefill.PrefillPath`) on KV that crossed a process
boundary, and computes exactly what it computes on KV read locally.

As in the in-process engine, a request's hit ends at its first block that fails to read
(missing, corrupt, truncated, timed out): that block and the rest of the prompt are recomputed.
A reader that dies before reading costs every request its hit (:func:`prepare_remote`); one that
dies after offering, while the PE pulls, costs the batch its hits: ``PrefillEngine.execute``
runs the forward again from the tokens alone.

The hand-off goes the other way (section 2.4: only the miss tokens' KV goes back to the DE
buffer): :func:`offer_new_blocks` offers each request's newly completed Full Blocks from the PE,
and :meth:`DEReadServer.receive_and_persist` pulls them into the DE's process and persists them to
the store, where the agent's next round finds them. (Here the hand-off moves a request's new
blocks once, after its forward; the engine cluster streams it layer by layer.)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from dualpath_jax.config import ConfigError
from dualpath_jax.engine.standalone import PreparedBatch, PrefillRequest
from dualpath_jax.kvcache import BlockLayout, block_keys, gather_layer, pack_full_blocks
from dualpath_jax.store import BlockFailure, FailureCause, KVStore, StoreConfig
from dualpath_jax.transfer.remote import KVOffer, KVTransferEndpoint

__all__ = ["DEReadServer", "RemoteHit", "RemotePreparedBatch", "start_de_reader", "prepare_remote",
           "offer_new_blocks"]


@dataclasses.dataclass(frozen=True)
class RemoteHit:
    """What the DE side read for one request (picklable: it crosses the actor boundary).

    Attributes:
      hit_blocks: leading Full Blocks read (the hit; the rest of the prompt is recomputed).
      lookup_blocks: leading blocks the store's index held.
      offers: per layer, the offer of ``uint8[hit_blocks, Z, Bt]`` (empty without a hit).
      failure: why the hit stops short, if it does: the lookup's failure (e.g. ``UNREADABLE``),
        else the first block that failed to read, else ``MISSING`` for a plain miss.
      scope: the reader's :attr:`BlockLayout.scope <dualpath_jax.kvcache.BlockLayout.scope>` (''
        when no reader answered).
    """

    hit_blocks: int
    lookup_blocks: int
    offers: tuple[KVOffer, ...]
    failure: BlockFailure | None
    scope: str = ""


class DEReadServer:
    """The DE node's reader and DE buffer in the DE's process (see module docstring).

    Args:
      layout: the model's block layout (must match the store's records).
      store_path: the shared store's directory (``StoreConfig.path``).
      timeout_s: deadline of each store operation, and how long an offer waits for its pull
        before it is dropped (``KVTransferEndpoint.offer``'s ``expire_s``).
    """

    def __init__(self, layout: BlockLayout, store_path: str, *, timeout_s: float = 60.0):
        self.layout = layout
        self.store = KVStore(layout, StoreConfig(path=store_path, timeout_s=timeout_s))
        self.endpoint = KVTransferEndpoint()
        self.timeout_s = float(timeout_s)

    def address(self) -> str:
        """The transfer server's address (for the PE's pulls)."""
        return self.endpoint.address

    def read_and_offer(self, keys: Sequence[Sequence[str]]) -> list[RemoteHit]:
        """Read each request's longest stored prefix of ``keys`` (its complete blocks' keys, at
        most ``(S - 1) // Z`` of them) and offer it layer by layer; returns one :class:`RemoteHit`
        per request. Its ``failure`` is the lookup's failure (e.g. ``UNREADABLE`` for a store
        directory that cannot be listed), else the first block that failed to read, else
        ``MISSING`` for a plain miss."""
        out = []
        for req_keys in keys:
            req_keys = list(req_keys)
            found, failure = 0, None
            if req_keys:  # an unreadable store or index is that failure, not a plain miss
                res = self.store.lookup(req_keys)
                found, failure = res.num_blocks, res.failure
            blocks = []
            if failure is None and found < len(req_keys):
                failure = BlockFailure(req_keys[found], FailureCause.MISSING, "not in store")
            for res in self.store.read(req_keys[:found]):
                if not res.ok:
                    failure = res.failure
                    break
                blocks.append(res.block)
            offers = ()
            if blocks:
                full = np.stack(blocks)  # [P, L, Z, Bt]
                offers = tuple(self.endpoint.offer([np.ascontiguousarray(full[:, layer])], expire_s=self.timeout_s,
                                                   tag=f"layer{layer}")
                               for layer in range(full.shape[1]))
            out.append(RemoteHit(len(blocks), found, offers, failure, self.layout.scope))
        return out

    def receive_and_persist(self, handoffs: Sequence[tuple[Sequence[str], KVOffer | None]]) -> list[int]:
        """Pull each request's new Full Blocks from the PE (:func:`offer_new_blocks`) and write them
        to the store under their keys; returns the blocks written per request (a block the store
        refused is not visible, and the next round recomputes it)."""
        written = []
        for keys, offer in handoffs:
            if offer is None:
                written.append(0)
                continue
            blocks = np.asarray(self.endpoint.pull_offer(offer, timeout_s=self.timeout_s)[0])  # [n, L, Z, Bt]
            written.append(sum(r.ok for r in self.store.write(list(keys), blocks)))
        return written

    def stats(self) -> dict:
        """The transfer endpoint's byte counters (``bytes_offered``, ...)."""
        return dataclasses.asdict(self.endpoint.stats())


def start_de_reader(layout: BlockLayout, store_path: str, *, timeout_s: float = 60.0, **actor_options):
    """A :class:`DEReadServer` as a Ray actor in its own process (``ray.init`` first, or a local
    Ray instance is started); ``actor_options`` go to ``.options`` (e.g. ``resources`` to place
    it on a DE host). Returns the actor handle."""
    import ray  # noqa: PLC0415 (only the processes that start actors need Ray)

    return ray.remote(DEReadServer).options(**actor_options).remote(layout, store_path, timeout_s=timeout_s)


@dataclasses.dataclass
class RemotePreparedBatch(PreparedBatch):
    """A prepared batch whose hit KV sits in a DE buffer in another process: ``fetch_layer`` pulls
    each request's Layer Blocks of the layer through ``endpoint`` (the PE's transfer endpoint)."""

    hits: list[RemoteHit] = dataclasses.field(default_factory=list)
    endpoint: KVTransferEndpoint | None = None

    def fetch_layer(self, layout, layer: int) -> list:
        out = []
        for hit in self.hits:
            if not hit.hit_blocks:
                out.append([])
                continue
            arr = np.asarray(self.endpoint.pull_offer(hit.offers[layer])[0])  # [P, Z, Bt]
            out.append([gather_layer(layout, [arr[i:i + 1] for i in range(arr.shape[0])], 0)])
        return out


def prepare_remote(reader, endpoint: KVTransferEndpoint, layout: BlockLayout,
                   requests: Sequence[PrefillRequest], *, timeout_s: float = 60.0) -> RemotePreparedBatch:
    """Step 1 of :class:`~dualpath_jax.engine.standalone.PrefillEngine` on the DE read path: the
    DE reader (a :func:`start_de_reader` actor, or a :class:`DEReadServer` in this process) reads
    the hit blocks and offers them; the batch pulls them layer by layer as the prefill runs.

    A reader actor that has died (its process killed) or does not answer within ``timeout_s``
    reads nothing: every request's hit is empty (``miss`` and ``failures``: ``UNREADABLE``, naming
    the reader) and its whole prompt is recomputed, as for a failed read.

    Raises:
      ConfigError: naming ``layout``, when the reader's layout is another (another model, spec or
        weights): the keys would not name the blocks the reader holds. (The PE's
        ``execute`` refuses a batch of a layout other than its own.)
    """
    t0 = time.perf_counter()
    z = layout.block_tokens
    requests = list(requests)
    keys = [block_keys(layout, r.tokens) for r in requests]
    eligible = [k[:min(len(k), (len(r.tokens) - 1) // z)] for k, r in zip(keys, requests)]
    call = reader.read_and_offer
    if hasattr(call, "remote"):
        import ray  # noqa: PLC0415

        try:
            hits = ray.get(call.remote(eligible), timeout=timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
            # the DE reader died or hangs: nothing was read, every request is recomputed from tokens
            cause = f"DE reader unavailable: {type(e).__name__}"
            hits = [RemoteHit(0, 0, (), BlockFailure(k[0], FailureCause.UNREADABLE, cause) if k else None)
                    for k in eligible]
    else:
        hits = call(eligible)
    other = next((h.scope for h in hits if h.scope and h.scope != layout.scope), None)
    if other is not None:  # (the reader's offers expire unpulled, after its timeout_s)
        raise ConfigError("layout", f"the DE reader's layout scope is {other}, the batch's {layout.scope} (another "
                          f"model, spec or weights): start the reader with the PE's layout")
    return RemotePreparedBatch(
        requests=requests, keys=keys, hit_blocks=[h.hit_blocks for h in hits],
        lookup_blocks=[h.lookup_blocks for h in hits], blocks=[[] for _ in hits], miss=[h.failure for h in hits],
        failures=[[h.failure] if h.failure is not None and h.failure.cause != FailureCause.MISSING else []
                  for h in hits],
        lease=None, read_s=time.perf_counter() - t0, scope=layout.scope, hits=hits, endpoint=endpoint)


def offer_new_blocks(endpoint: KVTransferEndpoint, layout: BlockLayout, batch: PreparedBatch,
                     results: Sequence) -> list[tuple[list[str], KVOffer | None]]:
    """The PE side of the hand-off: per request, the keys of its newly completed blocks and the
    offer of those Full Blocks ``uint8[n, L, Z, Bt]`` packed from its prefill's new KV (None when
    its forward completed no block); for :meth:`DEReadServer.receive_and_persist`."""
    z = layout.block_tokens
    out: list[tuple[list[str], KVOffer | None]] = []
    for b, (req, res) in enumerate(zip(batch.requests, results)):
        first, last = res.hit_tokens // z, len(req.tokens) // z
        if last <= first:
            out.append(([], None))
            continue
        n_tok = (last - first) * z
        blocks = pack_full_blocks(layout, [tuple(x[:n_tok] for x in kv) for kv in res.new_kv])
        out.append((list(batch.keys[b][first:last]), endpoint.offer([blocks], tag=f"handoff/{req.request_id}")))
    return out
