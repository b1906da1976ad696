"""The emulated cluster fabric: per-node SNICs and DRAM buffers, per-engine CNICs, and paths.

Every KV movement of the runtime is a *path*: an ordered list of :class:`~dualpath_jax.transfer.Link`
hops that the bytes occupy at the same time (one RDMA crosses the sender's CNIC and the
receiver's CNIC together). :meth:`Fabric.carry` nests the hops' transfers, so the move takes
as long as its slowest hop plus any queueing; each hop's :class:`~dualpath_jax.transfer.TransferRecord`
counts the bytes on that link. Paths used (PAPER.md sections 2.3-2.5, 4.1):

==================  =========================================  ====================
move                hops                                       ``Fabric`` method
==================  =========================================  ====================
storage read        node SNIC (read direction)                 ``read_path(node)``
PE buffer -> PE     PE CNIC out, PE CNIC in (loopback H2D)     ``pe_h2d(pe)``
DE buffer -> PE     DE CNIC out, PE CNIC in (RDMA)             ``de_to_pe(de, pe)``
PE -> DE buffer     PE CNIC out, DE CNIC in (RDMA)             ``pe_to_de(pe, de)``
DE buffer -> DE     DE CNIC out, DE CNIC in (loopback H2D)     ``de_h2d(de)``
DE -> DRAM          DE CNIC out, DE CNIC in (D2H, persist 1)   ``de_d2h(de)``
DRAM -> storage     node SNIC (write direction)                ``write_path(node)``
==================  =========================================  ====================

A CNIC's *out* link is the direction it reads over PCIe (from HBM or DRAM), its *in* link the one
it writes: a loopback copy (H2D or D2H through the CNIC) crosses its PCIe side both ways, as the
paper's bottleneck analysis counts it (PAPER.md 2.6, 4.3).

Deadlock freedom: a path takes its hops in order and only ever nests a CNIC *in* link inside a
CNIC *out* link; a holder of an in link waits only for further in links, and a move that holds
several links of one kind (the Ray node's per-layer carries over several DEs' links) takes them in
engine order, so no wait cycle can form.

``oracle`` loading bypasses every path (no KV I/O cost: the bytes are where they are needed),
while the real copy still runs so the tokens stay correct.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.transfer import BufferPool, Link, LinkConfig, Medium, TransferRecord

__all__ = ["TransferFailed", "Fabric", "NodeIO", "EngineIO"]


class TransferFailed(RuntimeError):
    """A hop of a path timed out or its copy raised; ``cause`` is the record's outcome and cause."""

    def __init__(self, link: str, cause: str):
        self.link, self.cause = link, cause
        super().__init__(f"{link}: {cause}")


@dataclasses.dataclass
class NodeIO:
    """One node's storage NIC (read and write directions) and DRAM buffer."""

    node_id: int
    role: str                # "pe" or "de"
    snic_read: Link
    snic_write: Link
    buffer: BufferPool


@dataclasses.dataclass
class EngineIO:
    """One engine's compute NIC (in and out directions)."""

    engine_id: int
    node_id: int
    role: str
    cnic_in: Link
    cnic_out: Link


class Fabric:
    """Links and buffers of a cluster (see module docstring).

    Engines are numbered PEs first (``0 .. num_pe-1``), then DEs; nodes PE nodes first. Link
    names: ``snic_read/node<n>``, ``snic_write/node<n>``, ``cnic_in/<role><e>``,
    ``cnic_out/<role><e>`` with the engine's global id. A CNIC direction's media are nominal (its
    node's buffer -> HBM in, HBM -> DE buffer out): it carries every copy through that NIC.
    """

    def __init__(self, config: ClusterConfig):
        self.config = config
        self.bypass = config.loading == "oracle"
        self.faults = None  # a FaultInjector: some moves fail (engine/faults.py)
        g = config.engines_per_node
        snic, cnic = config.snic_bytes_per_s, config.cnic_bytes_per_s
        self.nodes: list[NodeIO] = []
        for n in range(config.num_nodes):
            role = "pe" if n < config.prefill_nodes else "de"
            buf = Medium.PE_BUFFER if role == "pe" else Medium.DE_BUFFER
            self.nodes.append(NodeIO(
                n, role,
                Link(LinkConfig(f"snic_read/node{n}", Medium.STORAGE, buf, rate_bytes_per_s=snic)),
                Link(LinkConfig(f"snic_write/node{n}", buf, Medium.STORAGE, rate_bytes_per_s=snic)),
                BufferPool(f"{role}_buffer/node{n}", config.buffer_bytes)))
        self.engines: list[EngineIO] = []
        for e in range(config.num_pe + config.num_de):
            role = "pe" if e < config.num_pe else "de"
            node = e // g if role == "pe" else config.prefill_nodes + (e - config.num_pe) // g
            hbm = Medium.PE_HBM if role == "pe" else Medium.DE_HBM
            buf = Medium.PE_BUFFER if role == "pe" else Medium.DE_BUFFER
            self.engines.append(EngineIO(
                e, node, role,
                Link(LinkConfig(f"cnic_in/{role}{e}", buf, hbm, rate_bytes_per_s=cnic)),
                Link(LinkConfig(f"cnic_out/{role}{e}", hbm, Medium.DE_BUFFER, rate_bytes_per_s=cnic))))

    # ---- lookups ------------------------------------------------------------------------------
    def node_of(self, engine_id: int) -> int:
        return self.engines[engine_id].node_id

    def buffer_of(self, node_id: int) -> BufferPool:
        return self.nodes[node_id].buffer

    # ---- paths --------------------------------------------------------------------------------
    def read_path(self, node_id: int) -> list[Link]:
        return [self.nodes[node_id].snic_read]

    def write_path(self, node_id: int) -> list[Link]:
        return [self.nodes[node_id].snic_write]

    def pe_h2d(self, pe: int) -> list[Link]:
        return [self.engines[pe].cnic_out, self.engines[pe].cnic_in]

    def de_to_pe(self, de: int, pe: int) -> list[Link]:
        return [self.engines[de].cnic_out, self.engines[pe].cnic_in]

    def pe_to_de(self, pe: int, de: int) -> list[Link]:
        return [self.engines[pe].cnic_out, self.engines[de].cnic_in]

    def de_h2d(self, de: int) -> list[Link]:
        return [self.engines[de].cnic_out, self.engines[de].cnic_in]

    def de_d2h(self, de: int) -> list[Link]:
        return [self.engines[de].cnic_out, self.engines[de].cnic_in]

    def carry(self, path: Sequence[Link], num_bytes: int, fn: Callable[[], Any] | None = None, *,
              tag: str = "", timeout_s: float | None = None) -> Any:
        """Move ``num_bytes`` over every hop of ``path`` at once, running ``fn`` (the real copy).

        The hops are taken in path order, each held while the next is waited for (a move occupies
        all of them at once; always out-link before in-link, so no wait cycle forms). A move whose
        far end is busy thus holds its near end meanwhile: e.g. a PE's own layer loads over its CNIC
        out queue behind a hand-off waiting for a DE's CNIC in (busy with a join). The simulator
        books all hops together where each has room (``sim.hardware.reserve``), without that wait.

        Returns:
          ``fn()``'s value (None without ``fn``).

        Raises:
          TransferFailed: a hop was not free within ``timeout_s`` (default the config's), ``fn``
            raised, or the fault injector failed the move (before any byte moved).
        """
        timeout_s = self.config.timeout_s if timeout_s is None else timeout_s
        if self.bypass or not path or num_bytes <= 0:  # nothing crosses a link; the copy still runs
            try:
                return fn() if fn is not None else None
            except Exception as e:  # as on a link: the copy's failure is the move's
                raise TransferFailed(path[0].name if path else "none", f"error: {type(e).__name__}: {e}") from e
        if self.faults is not None and self.faults.transfer_fails():
            raise TransferFailed(path[0].name, "injected transfer failure")
        return self._nest(list(path), int(num_bytes), fn, tag, timeout_s)

    def _nest(self, hops: list[Link], num_bytes: int, fn, tag: str, timeout_s: float):
        head, rest = hops[0], hops[1:]
        inner_failed: list[TransferFailed] = []

        def inner():  # a later hop's failure is that hop's (a timeout stays a timeout), not a copy error here
            try:
                return self._nest(rest, num_bytes, fn, tag, timeout_s)
            except TransferFailed as e:
                inner_failed.append(e)
                raise
        res = head.transfer(num_bytes, inner if rest else fn, timeout_s=timeout_s, tag=tag)
        if inner_failed:
            raise inner_failed[0]
        if not res.ok:
            raise TransferFailed(head.name, f"{res.record.outcome.value}: {res.record.cause}")
        return res.value

    # ---- reporting ----------------------------------------------------------------------------
    def links(self) -> list[Link]:
        out: list[Link] = []
        for n in self.nodes:
            out += [n.snic_read, n.snic_write]
        for e in self.engines:
            out += [e.cnic_in, e.cnic_out]
        return out

    def records(self) -> list[TransferRecord]:
        return [r for link in self.links() for r in link.records()]

    def link_stats(self) -> dict[str, dict[str, float]]:
        """``{link name: {"bytes", "busy_s", "transfers", "failed"}}``."""
        out = {}
        for link in self.links():
            s = link.stats()
            out[link.name] = {"bytes": float(s.total_bytes), "busy_s": s.busy_s, "transfers": s.num_transfers,
                              "failed": s.num_failed}
        return out
