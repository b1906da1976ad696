"""What crosses a process boundary for one node of the ``ray`` runtime, seen from the node's side.

* :class:`RequestInfo`: what a node needs to know of a request to build its replica.
* :class:`RayPeers`: ``ctx.peers`` of a node's PE under ``ray`` (:mod:`.peers` describes the
  interface): the DE buffer reservation is a call to the DE's node (:class:`_RemoteBuffer`), the
  DE-side hit Layer Blocks are offered by the DE node and pulled through JAX's transfer server
  (:class:`_RemoteHits`), and the hand-off is packed into one buffer per batch (:func:`_pack`,
  :func:`_unpack`) that the DE node pulls. The actor that serves these calls is
  :class:`~.ray_node.NodeHost`.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import weakref
from collections.abc import Sequence

import numpy as np

from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.network import Fabric, TransferFailed
from dualpath_jax.engine.request import RequestState
from dualpath_jax.kvcache import BlockLayout, gather_layer
from dualpath_jax.transfer.remote import KVTransferEndpoint

__all__ = ["RequestInfo", "RayPeers"]


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """What a node needs to know of a request to build its replica (picklable).

    ``prompt i32[S]``, ``forced i32[G]``; ``keys`` the block keys; ``pe``/``de`` the engines it
    was placed on (global ids); ``n_layers`` the model's L (one segment list per layer).
    """

    rid: int
    agent: int
    round_index: int
    trajectory_id: str
    prompt: np.ndarray
    keys: tuple
    gen_target: int
    lookup_blocks: int
    block_tokens: int
    forced: np.ndarray | None
    attempt: int
    pe: int
    de: int
    n_layers: int

    @classmethod
    def of(cls, req: RequestState, n_layers: int) -> "RequestInfo":
        return cls(req.rid, req.agent, req.round_index, req.trajectory_id, req.prompt, tuple(req.keys),
                   req.gen_target, req.lookup_blocks, req.block_tokens, req.forced, req.attempt, req.pe, req.de,
                   n_layers)

    def build(self) -> RequestState:
        st = RequestState(self.rid, self.agent, self.round_index, self.trajectory_id, self.prompt, list(self.keys),
                          self.gen_target, self.lookup_blocks, self.block_tokens, forced=self.forced,
                          attempt=self.attempt)
        st.pe, st.de = self.pe, self.de
        st.segments = [[] for _ in range(self.n_layers)]
        return st


class _RemoteLease:
    """The PE's token for DE buffer space held in the DE's process (released there)."""

    def release(self) -> None:
        pass


class _RemoteBuffer:
    """A DE node's DRAM buffer as the PE's ``_reserve_sends`` sees it."""

    def __init__(self, peers: "RayPeers", req):
        self.peers, self.req = peers, req
        self.name = f"de_buffer/node{peers.node_of(req.de)}"
        self.capacity_bytes = peers.config.buffer_bytes

    def reserve(self, num_bytes: int):
        """Ask the DE node (one actor call; its first call queues the request in the buffer's FIFO,
        :meth:`~.ray_node.NodeHost.reserve`): a lease, or None while not granted, if the node is
        dead (the driver then fails the request) or does not answer within ``timeout_s`` (asked
        again on the PE's next pass)."""
        import ray  # noqa: PLC0415

        try:
            ok = ray.get(self.peers.node(self.req.de).reserve.remote(self.peers.run_id, self.peers.info(self.req),
                                                                      int(num_bytes)),
                         timeout=self.peers.config.timeout_s)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return None
        return _RemoteLease() if ok else None


def _pack(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list]:
    """Arrays as one ``uint8`` buffer (one transfer-server pull instead of one per array) and
    their ``(shape, dtype)`` in order; :func:`_unpack` inverts it."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    meta = [(a.shape, a.dtype.str) for a in arrays]
    buf = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays]) if arrays else np.zeros(0, np.uint8)
    return buf, meta


def _unpack(buf: np.ndarray, meta: list) -> list[np.ndarray]:
    out, off = [], 0
    for shape, dtype in meta:
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        out.append(buf[off:off + n].view(dt).reshape(shape).copy())
        off += n
    return out


_GROUP_TOKENS = itertools.count()
"""Tokens of :class:`_RemoteHits` groups, unique in this process across runs (a late
:meth:`RayPeers.hits_failed` of an earlier run never matches a live group)."""


class _RemoteHits:
    """The DE-side hit blocks of one forward's requests on one DE node: that node offers, per
    layer, every request's blocks stacked (``uint8[sum P, Z, Bt]``), each layer once its DEs'
    CNIC out has carried it (:meth:`~.ray_node.NodeHost.offer_hits`); the PE pulls each layer once (the
    first request asking for it) and every request takes its rows. A layer whose carry failed
    is never offered: the DE node says so (:meth:`RayPeers.hits_failed`, keyed by ``token``) and
    the pull waiting for it, or any later one, fails at once."""

    def __init__(self, peers: "RayPeers", node: int, asks: list[tuple[int, int]], out_bytes: dict[int, int],
                 token: int, pe_node: int):
        self.peers, self.node = peers, node
        self.rows = {}
        off = 0
        for rid, n in asks:
            self.rows[rid] = (off, off + n)
            off += n
        self.failure: tuple[int, str] | None = None  # (first layer never offered, cause)
        self._ref = peers.nodes[node].offer_hits.remote(peers.run_id, asks, out_bytes, (pe_node, token))
        self._offers = None
        self._layers: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _aborted(self, layer: int) -> str:
        f = self.failure
        return f[1] if f is not None and f[0] <= layer else ""

    def layer(self, rid: int, layer: int):
        import ray  # noqa: PLC0415

        p = self.peers
        with self._lock:
            try:
                if self._offers is None:
                    self._offers = ray.get(self._ref, timeout=p.config.timeout_s)
                if layer not in self._layers:  # the first request of the group that needs it pulls it
                    pulled = p.endpoint.pull_offer(self._offers[layer], timeout_s=p.config.timeout_s,
                                                   abort=lambda: self._aborted(layer))
                    self._layers = {layer: np.asarray(pulled[0])}
            except Exception as e:  # noqa: BLE001 - a dead or failed DE node: this forward's read failed
                raise TransferFailed(f"de_buffer/node{self.node}", f"{type(e).__name__}: {e}"[:300]) from e
            arr = self._layers[layer]
        lo, hi = self.rows[rid]
        return gather_layer(p.layout, [arr[i:i + 1] for i in range(lo, hi)], 0, dtype=np.float32)


class _RemoteHit:
    """One request's share of a :class:`_RemoteHits` (``.layer(l)`` as ``LocalHit``)."""

    def __init__(self, group: _RemoteHits, rid: int):
        self.group, self.rid = group, rid

    def layer(self, layer: int):
        return self.group.layer(self.rid, layer)


HANDOFF_WINDOW = 2
"""Hand-off calls (:meth:`RayPeers.send_batch`) a PE keeps in flight to one DE node: the next waits
for the oldest to be answered, so the PE's sends cannot pile up at a slow DE CNIC beyond this."""


class RayPeers:
    """:class:`~dualpath_jax.engine.peers.LocalPeers` across processes (module docstring)."""

    def __init__(self, endpoint: KVTransferEndpoint, nodes: Sequence, fabric: Fabric, layout: BlockLayout,
                 config: ClusterConfig, n_layers: int, *, run_id: str = ""):
        self.endpoint, self.nodes, self.fabric, self.layout, self.config = endpoint, list(nodes), fabric, layout, config
        self.n_layers, self.run_id = n_layers, run_id  # every call to a node names the run
        self._hit_groups: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # token -> _RemoteHits
        self._known: set[tuple[int, int]] = set()  # (DE node, request id): that node has the request's replica
        self._known_lock = threading.Lock()
        # hand-off calls in flight to each DE node: at most HANDOFF_WINDOW, so a PE slows to its DEs'
        # pace (back-pressure, as one send at a time over both CNICs does in one process)
        self._window: dict[int, threading.BoundedSemaphore] = {}

    def node_of(self, engine: int) -> int:
        return self.fabric.node_of(engine)

    def node(self, engine: int):
        """The actor of engine ``engine``'s node."""
        return self.nodes[self.node_of(engine)]

    def info(self, req) -> RequestInfo:
        return RequestInfo.of(req, self.n_layers)

    def _info_or_rid(self, node: int, req) -> RequestInfo | int:
        """What a call to DE node ``node`` names ``req`` by: its id once that node holds its replica
        (it granted the request's DE buffer lease, or answered an earlier send), else the whole
        :class:`RequestInfo` (prompt and block keys, which need not cross again per layer)."""
        with self._known_lock:
            known = (node, req.rid) in self._known
        return req.rid if known or req.de_send_lease is not None else self.info(req)

    def de_buffer(self, req):
        return _RemoteBuffer(self, req)

    def de_hits(self, hits: list) -> list:
        """:meth:`LocalPeers.de_hits <dualpath_jax.engine.peers.LocalPeers.de_hits>` across
        processes: one :meth:`~.ray_node.NodeHost.offer_hits` call per DE node for the whole forward, which
        also carries every layer's bytes over the DEs' CNIC out (``P * block tokens *`` bytes
        per token per layer for each request's ``P`` blocks, as the PE's loader counts them)."""
        by_node: dict[int, list] = {}
        out_bytes: dict[int, dict[int, int]] = {}
        for req, blocks in hits:
            if blocks:
                node = self.node_of(req.de)
                by_node.setdefault(node, []).append((req.rid, len(blocks)))
                per = out_bytes.setdefault(node, {})
                layer_bytes = len(blocks) * req.block_tokens * self.layout.bytes_per_token_per_layer
                per[req.de] = per.get(req.de, 0) + layer_bytes
        pe_node = next((self.node_of(req.pe) for req, _ in hits), 0)
        groups = {}
        for n, asks in by_node.items():
            token = next(_GROUP_TOKENS)
            groups[n] = self._hit_groups[token] = _RemoteHits(self, n, asks, out_bytes[n], token, pe_node)
        return [_RemoteHit(groups[self.node_of(req.de)], req.rid) if blocks else None for req, blocks in hits]

    def hits_failed(self, token: int, layer: int, cause: str) -> None:
        """The DE node of the :meth:`de_hits` group ``token`` will never offer ``layer`` and the
        layers after it (their carry failed: ``cause``); its pulls of them fail at once."""
        group = self._hit_groups.get(token)
        if group is not None and group.failure is None:
            group.failure = (int(layer), str(cause))

    def carry_de_to_pe(self, de: int, pe: int, num_bytes: int, *, tag: str = "", timeout_s: float | None = None):
        """This PE's CNIC in carries ``num_bytes`` of DE ``de``'s hit KV. The DE's side, its CNIC
        out, is carried in the DE's process from the forward's :meth:`de_hits` on, layer after
        layer, and each layer is offered only once carried, so the PE's pull of a layer waits
        for it: a busy DE CNIC out still holds the PE back, without an actor call per layer.

        Raises:
          TransferFailed: the hop timed out or failed.
        """
        timeout_s = self.config.timeout_s if timeout_s is None else timeout_s
        self.fabric.carry([self.fabric.engines[pe].cnic_in], num_bytes, tag=tag, timeout_s=timeout_s)

    def send_batch(self, pe: int, sends: list, on_done) -> None:
        """:meth:`LocalPeers.send_batch <dualpath_jax.engine.peers.LocalPeers.send_batch>` across
        processes: per DE node, the sends' arrays packed into one offer that the DE node pulls
        under its DE's CNIC in (one actor call, one pull). This PE's CNIC out carries their bytes
        while the call goes out, and is free for the next layer's sends without waiting for the
        answer, up to :data:`HANDOFF_WINDOW` calls in flight per DE node (the next waits, at most
        ``timeout_s``, for the oldest to be answered): ``on_done`` for each send of a node comes
        once that node has the bytes (from a Ray thread, after this returns), or at once if the
        send could not go."""
        t = self.config.timeout_s
        by_node: dict[int, list[int]] = {}
        for i, (req, *_) in enumerate(sends):
            by_node.setdefault(self.node_of(req.de), []).append(i)
        for node, idx in by_node.items():
            window = self._window.setdefault(node, threading.BoundedSemaphore(HANDOFF_WINDOW))
            if not window.acquire(timeout=t):  # the DE node has not taken the earlier sends in time
                err = TransferFailed(f"node{node}", f"hand-off: {HANDOFF_WINDOW} calls still in flight after {t} s")
                for i in idx:
                    on_done(i, err)
                continue
            try:
                arrays, parts, nbytes = [], [], 0
                for i in idx:
                    req, layer, segments, num_bytes, _ = sends[i]
                    parts.append((self._info_or_rid(node, req), layer, [int(start) for start, _, _ in segments],
                                  int(num_bytes)))
                    arrays += [x for _, a, b in segments for x in (a, b)]
                    nbytes += num_bytes
                buf, meta = _pack(arrays)
                offer = self.endpoint.offer([buf], expire_s=t, tag=f"kv_out/pe{pe}/node{node}")

                def deliver(node=node, parts=parts, meta=meta, offer=offer, nbytes=nbytes):
                    return self.nodes[node].receive_batch.remote(self.run_id, parts, meta, offer, int(nbytes),
                                                                 f"kv_out/pe{pe}")

                call = self.fabric.carry([self.fabric.engines[pe].cnic_out], nbytes, deliver,
                                         tag=f"kv_out/r{sends[idx[0]][0].rid}")
            except Exception as e:  # noqa: BLE001 - TransferFailed, or packing/offering failed: these sends fail
                window.release()
                for i in idx:
                    on_done(i, e)
                continue
            rids = [sends[i][0].rid for i in idx]
            call.future().add_done_callback(
                lambda fut, node=node, idx=idx, rids=rids, window=window: self._delivered(fut, node, idx, rids,
                                                                                         on_done, window))

    def _delivered(self, fut, node: int, idx: list, rids: list, on_done, window) -> None:
        """The DE node's answer to one :meth:`send_batch` call: ``on_done`` for each of its sends
        (a ``TransferFailed`` if the node failed the move or died; the driver kills a node that
        stops answering its polls, which ends the call); frees the call's place in ``window``."""
        window.release()
        try:
            cause = fut.result()
        except Exception as e:  # noqa: BLE001 - the node died or the call failed
            cause = f"{type(e).__name__}: {e}"[:300]
        err = TransferFailed(f"node{node}", cause) if cause else None
        if err is None:
            with self._known_lock:
                self._known.update((node, rid) for rid in rids)
        for i in idx:
            on_done(i, err)
