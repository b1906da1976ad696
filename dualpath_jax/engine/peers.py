"""What a PE does to a DE's node: reserve its DE buffer, read its DE-side hit KV, send it KV.

A PE touches another node in three places (PAPER.md sections 2.3-2.4): it reserves DE buffer
space for the KV it will hand off, it loads each layer's DE-side hit blocks from the DE buffer
(DE CNIC out -> PE CNIC in), and it sends each finished layer's KV into the DE buffer (PE CNIC
out -> DE CNIC in). :class:`~dualpath_jax.engine.pe.PrefillWorker` does all three through the
run's ``ctx.peers``, so the same worker code runs in both runtimes:

* :class:`LocalPeers` (``threads``): every node lives in this process; the buffer is the DE
  node's :class:`~dualpath_jax.transfer.BufferPool`, the KV is read from the request's DE-side
  blocks, and each move is a :meth:`Fabric.carry <dualpath_jax.engine.network.Fabric.carry>`
  over both hops.
* :class:`~dualpath_jax.engine.ray_peers.RayPeers` (``ray``): the DE node is another process;
  the same three operations are actor calls, and the KV crosses over JAX's transfer server.
"""

from __future__ import annotations

import numpy as np

from dualpath_jax.engine.network import Fabric
from dualpath_jax.kvcache import BlockLayout, gather_layer

__all__ = ["LocalPeers", "LocalHit"]


class LocalHit:
    """A request's DE-side hit blocks, read one layer at a time (``uint8[L, Z, Bt]`` Full Blocks)."""

    def __init__(self, layout: BlockLayout, blocks: list):
        self.layout, self.blocks = layout, blocks

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """LayerKV ``(a f32[P*Z, ...], b f32[P*Z, ...])`` of the blocks' layer ``layer``."""
        return gather_layer(self.layout, self.blocks, layer, dtype=np.float32)


class _SendSpace:
    """A DE buffer as one request's hand-off asks it for space (:meth:`LocalPeers.de_buffer`)."""

    def __init__(self, pool, req):
        self.pool, self.req = pool, req
        self.name, self.capacity_bytes = pool.name, pool.capacity_bytes

    def reserve(self, num_bytes: int):
        return self.req.claim_send_space(self.pool, num_bytes)


class LocalPeers:
    """The peers of a run whose nodes all live in this process (see module docstring)."""

    def __init__(self, fabric: Fabric, layout: BlockLayout):
        self.fabric, self.layout = fabric, layout

    def de_buffer(self, req):
        """The DE buffer of ``req``'s DE's node, for ``req``'s hand-off (``name``, ``capacity_bytes``,
        ``reserve(num_bytes) -> Lease | None``: :meth:`RequestState.claim_send_space
        <dualpath_jax.engine.request.RequestState.claim_send_space>`, a place in the buffer's FIFO)."""
        return _SendSpace(self.fabric.buffer_of(self.fabric.node_of(req.de)), req)

    def de_hits(self, hits: list) -> list:
        """Per ``(req, blocks)``: the request's DE-side hit ``blocks`` (already in its DE buffer),
        readable layer by layer (``.layer(l)``), or None without DE-side blocks."""
        return [LocalHit(self.layout, blocks) if blocks else None for _, blocks in hits]

    def carry_de_to_pe(self, de: int, pe: int, num_bytes: int, *, tag: str = "", timeout_s: float | None = None):
        """Occupy DE ``de``'s CNIC out and PE ``pe``'s CNIC in for ``num_bytes`` (the DE read path).

        Raises:
          TransferFailed: a hop timed out or failed.
        """
        self.fabric.carry(self.fabric.de_to_pe(de, pe), num_bytes, tag=tag, timeout_s=timeout_s)

    def send_batch(self, pe: int, sends: list, on_done) -> None:
        """The PE's hand-off: for each ``(req, layer, segments, num_bytes, tag)``, put ``segments``
        (``(start token, a, b)`` of layer ``layer``) into ``req``'s DE buffer over PE ``pe``'s CNIC
        out and the DE's CNIC in (dropped if the request failed meanwhile), one move each, in
        order; ``on_done(k, error)`` as send k completes (``error`` None, or the exception it
        raised: ``TransferFailed`` when a hop timed out or failed). ``on_done`` runs exactly
        once per send: here before this returns; across processes (``RayPeers``) possibly
        later, from another thread."""
        for k, (req, layer, segments, num_bytes, tag) in enumerate(sends):

            def deposit(req=req, layer=layer, segments=segments):
                with req.lock:
                    if not req.error:  # a failed request's segments were dropped
                        req.segments[layer].extend(segments)

            try:
                self.fabric.carry(self.fabric.pe_to_de(pe, req.de), num_bytes, deposit, tag=tag)
            except Exception as e:  # noqa: BLE001 - the caller fails this request
                on_done(k, e)
                continue
            on_done(k, None)
