"""Hardware of the simulated cluster and the bandwidth servers that carry its transfers.

Quantities default to the paper's testbed (PAPER.md section 8.1): nodes of g = 8 Hopper GPUs,
one 400 Gbps CNIC per GPU (B = 50 GB/s), s = 1 SNIC of 400 Gbps per node, host memory bandwidth
M = 500 GB/s shared by reads and writes, 80 GB of DRAM buffer per node (DeepSeek models), and
H800 datasheet numbers (80 GB HBM3 at 3.35 TB/s; 989.5 dense BF16 / 1979 FP8 TFLOP/s, PAPER.md
section 9). Other GPUs' numbers come from :mod:`dualpath_jax.sim.catalog`
(``catalog.hardware_for("h200")``); the peak FLOP/s follows the model's compute dtype
(``SimConfig.peak_flops``) unless ``peak_flops`` is set.

A :class:`Server` is a bandwidth server that books transfers over time. A transfer crossing
several servers (storage -> SNIC -> DRAM, DRAM -> CNIC -> HBM, ...) is pipelined (cut-through):
it streams through every hop at once at the slowest hop's rate, for ``b / min(rate)`` seconds,
starting at the earliest time at which every hop has that rate to spare for the whole transfer
(see :func:`reserve`). A hop as fast as the slowest one is as busy as it; a faster one (DRAM behind
a SNIC) carries several transfers side by side; none ever carries more than its rate.
Reads and writes of a NIC are separate servers (full duplex); host DRAM is one (half duplex).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses

from mypy_extensions import mypyc_attr

from dualpath_jax.config import ConfigError, check_at_most, check_fraction, check_positive
from dualpath_jax.sim import catalog

__all__ = ["BufferQueues", "HardwareConfig", "Server", "Topology", "reserve"]

# a hop has room for a transfer when its bookings plus the transfer stay within its rate up to this
# factor: bookings only ever add rates, and a sum of fractions of a rate may round above it
_RATE_SLACK = 1.0 + 1e-9
# a server forgets the bookings that ended before the simulated time once it holds more steps than this
_PRUNE_STEPS = 32


@mypyc_attr(native_class=False)  # a plain Python class when compiled: picklable, checked by its own code
@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    """Per-node and per-GPU hardware quantities.

    Attributes:
      gpus_per_node: g, engines per node (one engine per GPU).
      cnic_bytes_per_s: B, one CNIC per GPU, each direction.
      snics_per_node: s.
      snic_bytes_per_s: rate of one SNIC, each direction.
      dram_bytes_per_s: M, host memory bandwidth per node (reads + writes share it).
      dram_buffer_bytes: PE/DE buffer DRAM per node.
      gpu: the GPU, a :mod:`~dualpath_jax.sim.catalog` key (``h800``, ``h100``, ``h200``, ``b200``,
        ``a100``); gives the peak FLOP/s when ``peak_flops`` is None. ``catalog.hardware_for(gpu)``
        also sets the HBM and NIC fields from the catalog; with ``gpu`` set here alone, an HBM field
        left at the H800 default where the GPU's datasheet differs raises ConfigError.
      hbm_bytes: HBM per GPU.
      hbm_bytes_per_s: HBM bandwidth per GPU.
      peak_flops: dense peak FLOP/s per GPU in the model's compute dtype; None (default): the
        catalog's peak of ``gpu`` for the model's compute dtype (``SimConfig.peak_flops``: H800
        FP8 1979e12 for DeepSeek models, BF16 989.5e12 for BF16 weights).
      hbm_usable_fraction: share of HBM the engine may use (rest: runtime, fragmentation).
      cnic_kv_share: share of CNIC bandwidth left to KV traffic (low-priority class) while the
        engine's model communication uses the rest (PAPER.md section 4.2: ~99% reserved under
        contention; the model traffic is bursty, so KV usually gets most of the link).
      storage_bytes_per_s: storage read bandwidth per node, a cap on each node's SNIC reads (bytes/s;
        inf: storage saturates every SNIC, PAPER.md 6.1).
    """

    gpus_per_node: int = 8
    cnic_bytes_per_s: float = 50e9
    snics_per_node: int = 1
    snic_bytes_per_s: float = 50e9
    dram_bytes_per_s: float = 500e9
    dram_buffer_bytes: float = 80e9
    gpu: str = "h800"
    hbm_bytes: float = 80e9
    hbm_bytes_per_s: float = 3.35e12
    peak_flops: float | None = None
    hbm_usable_fraction: float = 0.9
    cnic_kv_share: float = 0.9
    storage_bytes_per_s: float = float("inf")

    def __post_init__(self):
        for f in ("gpus_per_node", "snics_per_node"):
            check_positive(f"hardware.{f}", getattr(self, f), integer=True)
            check_at_most(f"hardware.{f}", getattr(self, f), 1024, "a node holds a few GPUs and NICs")
        for f in ("cnic_bytes_per_s", "snic_bytes_per_s", "dram_bytes_per_s", "dram_buffer_bytes", "hbm_bytes",
                  "hbm_bytes_per_s", "hbm_usable_fraction", "cnic_kv_share"):
            check_positive(f"hardware.{f}", getattr(self, f))
        if self.peak_flops is not None:
            check_positive("hardware.peak_flops", self.peak_flops)
        gpu, h800 = catalog.gpu_spec(self.gpu), catalog.GPUS["h800"]
        for f in ("hbm_bytes", "hbm_bytes_per_s"):  # another GPU left with the H800's memory by mistake
            if getattr(self, f) == getattr(h800, f) != getattr(gpu, f):
                raise ConfigError(f"hardware.{f}", f"is the H800 default ({getattr(h800, f):g}) but hardware.gpu is "
                                  f"{self.gpu!r} ({gpu.name}: {getattr(gpu, f):g}); build the hardware with "
                                  f"catalog.hardware_for({self.gpu!r}) or set hardware.{f}")
        check_fraction("hardware.hbm_usable_fraction", self.hbm_usable_fraction)
        check_fraction("hardware.cnic_kv_share", self.cnic_kv_share)
        if not self.storage_bytes_per_s > 0:
            raise ConfigError("hardware.storage_bytes_per_s", f"must be > 0 (got {self.storage_bytes_per_s})")

    @property
    def node_snic_bytes_per_s(self) -> float:
        """s * SNIC rate: one node's storage read bandwidth."""
        return self.snics_per_node * self.snic_bytes_per_s


class Server:
    """A bandwidth server (a NIC direction, a node's DRAM) with a byte counter.

    It keeps the rate its booked transfers use over time, a step function: ``_t`` holds the
    times at which it changes (ascending; after ``_t[-1]`` nothing is booked, and before ``_t[0]``
    nothing is, or what was has been forgotten: :meth:`drop_before`) and ``_u[i]`` the bytes/s
    booked from ``_t[i]`` to ``_t[i + 1]``. :func:`reserve`
    books each transfer where every hop has room for it.
    """

    __slots__ = ("name", "rate", "bytes", "_t", "_u")

    def __init__(self, name: str, rate_bytes_per_s: float):
        self.name = name
        self.rate = float(rate_bytes_per_s)
        self.bytes = 0.0
        self._t: list[float] = [0.0]
        self._u: list[float] = [0.0]

    def __reduce__(self):  # pickle and copy with the counters (compiled, the class has no __dict__)
        return _server, (self.name, self.rate, self.bytes, list(self._t), list(self._u))

    @property
    def busy_s(self) -> float:
        """Seconds the server has carried bytes: every transfer occupies it ``bytes / rate``."""
        return self.bytes / self.rate

    @property
    def free_at(self) -> float:
        """When the last booked transfer ends (seconds; 0.0 if none)."""
        return self._t[-1]

    @free_at.setter
    def free_at(self, t: float) -> None:
        """Book the server whole until ``t`` (seconds), as if a backlog were queued on it."""
        self._t, self._u = ([0.0, float(t)], [self.rate, 0.0]) if t > 0 else ([0.0], [0.0])

    def backlog_s(self, now: float) -> float:
        """Seconds of booked work after ``now`` at the server's full rate (its queue, for a SNIC)."""
        t, u = self._t, self._u
        n = len(t)
        i = bisect.bisect_right(t, now) - 1
        if i < 0:
            i = 0
        work = 0.0
        while i < n - 1:
            a = t[i] if t[i] > now else now
            work += u[i] * (t[i + 1] - a)
            i += 1
        return work / self.rate

    def drop_before(self, now: float) -> None:
        """Forget the bookings that end by ``now`` (no transfer is booked before ``now`` any more)."""
        t = self._t
        i = bisect.bisect_right(t, now) - 1
        if i > 0:
            del t[:i]
            del self._u[:i]

    def _blocked_until(self, start: float, end: float, need: float) -> float:
        """``-1.0`` if ``need`` bytes/s more fit from ``start`` to ``end``, else the end of the
        first booked stretch in that span that has no room (a later start to try)."""
        t = self._t
        n = len(t)
        if start >= t[n - 1]:  # nothing booked from start on
            return -1.0
        u = self._u
        room = self.rate * _RATE_SLACK - need
        i = bisect.bisect_right(t, start) - 1
        if i < 0:
            i = 0
        while i < n - 1 and t[i] < end:
            if u[i] > room:
                return t[i + 1]
            i += 1
        return -1.0

    def _book(self, start: float, end: float, use: float, now: float) -> None:
        """Add ``use`` bytes/s from ``start`` to ``end`` (``start < end``), merging equal
        neighbouring steps; past :data:`_PRUNE_STEPS` steps, forget those that ended by ``now``."""
        t, u = self._t, self._u
        n = len(t)
        if n > _PRUNE_STEPS and t[1] <= now:
            self.drop_before(now)
            n = len(t)
        last = t[n - 1]
        if start >= last:  # after every booking (the usual case): append, or extend the last step
            if start > last:
                t.append(start)
                u.append(use)
            elif n > 1 and u[n - 2] == use:
                t[n - 1] = end
                return
            else:
                u[n - 1] = use
            t.append(end)
            u.append(0.0)
            return
        a = _split(t, u, start)
        b = _split(t, u, end)
        for i in range(a, b):
            u[i] += use
        if u[b - 1] == u[b]:
            del t[b]
            del u[b]
        if a > 0 and u[a - 1] == u[a]:
            del t[a]
            del u[a]


class Topology:
    """The simulated cluster's servers and the fixed hops of each transfer kind (PAPER.md 2.3-2.6).

    Nodes ``0..P-1`` are prefill nodes, ``P..P+D-1`` decode nodes, of ``hw.gpus_per_node`` = g
    engines each: PEs ``0..P*g-1``, then the DEs. Per node: an SNIC read server (its SNICs'
    rate, capped by the storage's), an SNIC write server and one DRAM server (reads and writes
    share it); per engine: CNIC in and out servers at ``cnic_kv_share`` of B (KV is the
    low-priority class; model traffic keeps the rest).

    Attributes:
      snic_r, snic_w, dram: per node; cnic_in, cnic_out: per engine (:class:`Server`).
      node_of: engine -> node; pe_ids, de_ids: the engines of each role.
      pe_groups, de_groups: the scheduler's groups (PAPER.md 5.1), first node -> the engines of
        ``pe_group_nodes`` / ``de_group_nodes`` consecutive nodes (default one node each).
      read_path: per node, storage -> SNIC -> DRAM.
      to_hbm_path: per engine, H2D: DRAM -> CNIC (its out direction, as it reads host memory) -> HBM
        (in); to_dram_path: D2H: HBM -> CNIC (out) -> DRAM (in). The CNIC's loopback copies cross
        its PCIe side both ways, as the paper's bottleneck analysis counts them (PAPER.md 2.6, 4.3).
      persist_path: per engine, D2H into DRAM, then DRAM -> SNIC -> storage, pipelined (the DRAM
        is written and read).
    """

    def __init__(self, hw: HardwareConfig, prefill_nodes: int, decode_nodes: int, *, pe_group_nodes: int = 1,
                 de_group_nodes: int = 1):
        g = hw.gpus_per_node
        n_pe, n_de, n_nodes = prefill_nodes * g, decode_nodes * g, prefill_nodes + decode_nodes
        self.snic_r = [Server(f"snic_read[{n}]", min(hw.node_snic_bytes_per_s, hw.storage_bytes_per_s))
                       for n in range(n_nodes)]
        self.snic_w = [Server(f"snic_write[{n}]", hw.node_snic_bytes_per_s) for n in range(n_nodes)]
        self.dram = [Server(f"dram[{n}]", hw.dram_bytes_per_s) for n in range(n_nodes)]
        kv_rate = hw.cnic_bytes_per_s * hw.cnic_kv_share
        self.cnic_in = [Server(f"cnic_in[{e}]", kv_rate) for e in range(n_pe + n_de)]
        self.cnic_out = [Server(f"cnic_out[{e}]", kv_rate) for e in range(n_pe + n_de)]
        self.node_of = [e // g for e in range(n_pe)] + [prefill_nodes + e // g for e in range(n_de)]
        self.pe_ids = list(range(n_pe))
        self.de_ids = list(range(n_pe, n_pe + n_de))
        self.pe_groups = {n: [e for e in self.pe_ids if n <= self.node_of[e] < n + pe_group_nodes]
                          for n in range(0, prefill_nodes, pe_group_nodes)}
        self.de_groups = {n: [e for e in self.de_ids if n <= self.node_of[e] < n + de_group_nodes]
                          for n in range(prefill_nodes, n_nodes, de_group_nodes)}
        self.read_path = [(self.snic_r[n], self.dram[n]) for n in range(n_nodes)]
        self.to_hbm_path = [(self.dram[self.node_of[e]], self.cnic_out[e], self.cnic_in[e]) for e in range(n_pe + n_de)]
        self.to_dram_path = [(self.cnic_out[e], self.cnic_in[e], self.dram[self.node_of[e]])
                             for e in range(n_pe + n_de)]
        self.persist_path = [self.to_dram_path[e] + (self.dram[self.node_of[e]], self.snic_w[self.node_of[e]])
                             for e in range(n_pe + n_de)]


class BufferQueues:
    """The nodes' DRAM buffers (PE/DE buffer, PAPER.md 2.3-2.5), each serving its requests in
    FIFO order: a request takes its space when it has come first and the space is free.

    Attributes (per node): free: bytes free; wait: the queue of ``(request id, read bytes,
    charge bytes)`` waiting for space; wait_bytes: the bytes those waiting reads (and other reads
    the simulator counts as waiting) will read, part of the node's read queue.
    """

    def __init__(self, capacity_bytes: float, num_nodes: int):
        self.free = [float(capacity_bytes)] * num_nodes
        self.wait: list[collections.deque] = [collections.deque() for _ in range(num_nodes)]
        self.wait_bytes = [0.0] * num_nodes

    def take_or_wait(self, node: int, rid: int, read_bytes: float, charge: float) -> bool:
        """Take ``charge`` bytes of ``node``'s buffer for request ``rid`` (True), or queue it
        (False) with the ``read_bytes`` it will read once admitted."""
        if self.free[node] >= charge and not self.wait[node]:
            self.free[node] -= charge
            return True
        self.wait[node].append((rid, read_bytes, charge))
        self.wait_bytes[node] += read_bytes
        return False

    def release(self, node: int, nbytes: float) -> list:
        """Give ``nbytes`` back to ``node``'s buffer; returns the waiting requests now admitted,
        in order, as ``(request id, read bytes, charge bytes)`` (their space taken)."""
        self.free[node] += nbytes
        wait, admitted = self.wait[node], []
        while wait and self.free[node] >= wait[0][2]:
            rid, b, charge = wait.popleft()
            self.wait_bytes[node] -= b
            self.free[node] -= charge
            admitted.append((rid, b, charge))
        return admitted


def _split(t: list[float], u: list[float], x: float) -> int:
    """Index of the step of ``(t, u)`` that starts at ``x``, inserting one there if needed."""
    i = bisect.bisect_right(t, x) - 1
    if i >= 0 and t[i] == x:
        return i
    t.insert(i + 1, x)
    u.insert(i + 1, u[i] if i >= 0 else 0.0)
    return i + 1


def _server(name: str, rate: float, nbytes: float, t: list, u: list) -> Server:
    server = Server(name, rate)
    server.bytes, server._t, server._u = nbytes, [float(x) for x in t], [float(x) for x in u]
    return server


def reserve(servers, nbytes: float, earliest: float, now: float = 0.0) -> tuple[float, float]:
    """Book a pipelined (cut-through) transfer of ``nbytes`` bytes across ``servers``; returns
    ``(start_s, finish_s)``.

    The transfer streams through every hop at once at one rate, the slowest hop's (a server the
    path crosses ``k`` times, such as a node's DRAM written and then read, carries it ``k`` times:
    its rate counts ``/ k``), for ``nbytes / rate`` seconds. It starts at the earliest time from
    ``earliest`` on at which every hop has that rate to spare for the whole transfer, given what
    is booked on it: a transfer fills an idle stretch before a later booking when it fits there,
    and a faster hop (a DRAM behind a SNIC) carries several transfers side by side, none beyond
    its rate. Each hop counts ``k * nbytes`` bytes.

    ``now``: no transfer will be booked to start before it any more (every later call's
    ``earliest`` is at least this ``now``); bookings that end by then may be forgotten (0.0: keep
    them all).

    A path of three distinct servers (every transfer of a prefill forward and the DE's H2D) takes an
    unrolled branch that does the general loop's arithmetic (the loop costs about 1.3x per call).
    """
    hops = len(servers)
    if nbytes <= 0 or not hops:
        return earliest, earliest
    if hops == 3 and servers[0] is not servers[1] and servers[0] is not servers[2] and servers[1] is not servers[2]:
        # the H2D, D2H, DE -> PE and hand-off paths: the simulator's most frequent, unrolled
        a, b, c = servers
        rate = a.rate if a.rate < b.rate else b.rate
        if c.rate < rate:
            rate = c.rate
        dur = nbytes / rate
        start = earliest
        while True:
            if start < a._t[-1]:
                later = a._blocked_until(start, start + dur, rate)
                if later >= 0.0:
                    start = later
                    continue
            if start < b._t[-1]:
                later = b._blocked_until(start, start + dur, rate)
                if later >= 0.0:
                    start = later
                    continue
            if start < c._t[-1]:
                later = c._blocked_until(start, start + dur, rate)
                if later >= 0.0:
                    start = later
                    continue
            break
        end = start + dur
        if end > start:
            a._book(start, end, rate, now)
            b._book(start, end, rate, now)
            c._book(start, end, rate, now)
        a.bytes += nbytes
        b.bytes += nbytes
        c.bytes += nbytes
        return start, end
    uniq: list[Server] = []
    times: list[int] = []
    for s in servers:
        for j in range(len(uniq)):
            if uniq[j] is s:
                times[j] += 1
                break
        else:
            uniq.append(s)
            times.append(1)
    hops = len(uniq)
    rate = uniq[0].rate / times[0]
    for j in range(1, hops):
        r = uniq[j].rate / times[j]
        if r < rate:
            rate = r
    dur = nbytes / rate
    start = earliest
    moved = True
    while moved:
        moved = False
        for j in range(hops):
            s = uniq[j]
            if start < s._t[-1]:  # something is booked after start: is there room?
                later = s._blocked_until(start, start + dur, times[j] * rate)
                if later >= 0.0:
                    start = later
                    moved = True
    end = start + dur
    for j in range(hops):
        s = uniq[j]
        if end > start:
            s._book(start, end, times[j] * rate, now)
        s.bytes += times[j] * nbytes
    return start, end
