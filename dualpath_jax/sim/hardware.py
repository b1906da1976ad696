"""Hardware of the simulated cluster and the bandwidth servers that carry its transfers.

Quantities default to the paper's testbed (PAPER.md section 8.1): nodes of g = 8 Hopper GPUs,
one 400 Gbps CNIC per GPU (B = 50 GB/s), s = 1 SNIC of 400 Gbps per node, host memory bandwidth
M = 500 GB/s shared by reads and writes, 80 GB of DRAM buffer per node (DeepSeek models), and
H800 datasheet numbers (80 GB HBM3 at 3.35 TB/s; 989.5 dense BF16 / 1979 FP8 TFLOP/s, PAPER.md
section 9). Other GPUs' numbers come from :mod:`dualpath_jax.sim.catalog`
(``catalog.hardware_for("h200")``); the peak FLOP/s follows the model's compute dtype
(``SimConfig.peak_flops``) unless ``peak_flops`` is set.

A :class:`Server` is a FIFO bandwidth server: a transfer of ``b`` bytes that may start at ``t``
starts at ``max(t, free_at)`` and occupies it for ``b / rate`` seconds. A transfer crossing several
servers (storage -> SNIC -> DRAM, DRAM -> CNIC -> HBM, ...) is pipelined (cut-through): it starts
when all its hops are free and ends after ``b / min(rate)``; each hop is busy only ``b / rate_h``
(see :func:`reserve`).
Reads and writes of a NIC are separate servers (full duplex); host DRAM is one (half duplex).
"""

from __future__ import annotations

import dataclasses

from mypy_extensions import mypyc_attr

from dualpath_jax.config import ConfigError, check_at_most, check_fraction, check_positive
from dualpath_jax.sim import catalog

__all__ = ["HardwareConfig", "Server", "reserve"]


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
    """A FIFO bandwidth server with a byte counter (its busy time follows from it)."""

    __slots__ = ("name", "rate", "free_at", "bytes")

    def __init__(self, name: str, rate_bytes_per_s: float):
        self.name = name
        self.rate = float(rate_bytes_per_s)
        self.free_at = 0.0
        self.bytes = 0.0

    def __reduce__(self):  # pickle and copy with the counters (compiled, the class has no __dict__)
        return _server, (self.name, self.rate, self.free_at, self.bytes)

    @property
    def busy_s(self) -> float:
        """Seconds the server has carried bytes: every transfer occupies it ``bytes / rate``."""
        return self.bytes / self.rate

    def backlog_s(self, now: float) -> float:
        """Seconds of queued work ahead of a transfer issued at ``now``."""
        return max(0.0, self.free_at - now)


def _server(name: str, rate: float, free_at: float, nbytes: float) -> Server:
    server = Server(name, rate)
    server.free_at, server.bytes = free_at, nbytes
    return server


def reserve(servers, nbytes: float, earliest: float) -> tuple[float, float]:
    """Reserve a pipelined transfer of ``nbytes`` across ``servers``; returns ``(start_s, finish_s)``.

    The slowest hop is a FIFO server: the transfer starts when it and the other hops are free and
    lasts ``nbytes / slowest_rate``. The faster hops only carry the bytes while they stream
    through, so their occupancy is queued from ``earliest`` (when the transfer is issued), not
    from its possibly much later start: a backlog on a slow SNIC does not block DRAM for others.
    The slowest hop is the first of the lowest rate. Each server appears at most once in a path;
    two- and three-hop paths (all but the four-hop persist path) take unrolled branches that do
    the same arithmetic as the general loop.
    """
    hops = len(servers)
    if nbytes <= 0 or not hops:
        return earliest, earliest
    if hops == 2:
        a, b = servers
        fa, fb = a.free_at, b.free_at
        start = earliest
        if fa > start:
            start = fa
        if fb > start:
            start = fb
        da, db = nbytes / a.rate, nbytes / b.rate
        if b.rate < a.rate:
            a.free_at = (fa if fa > earliest else earliest) + da
            end = b.free_at = start + db
        else:
            end = a.free_at = start + da
            b.free_at = (fb if fb > earliest else earliest) + db
        a.bytes += nbytes
        b.bytes += nbytes
        return start, end
    if hops == 3:
        a, b, c = servers
        fa, fb, fc = a.free_at, b.free_at, c.free_at
        start = earliest
        if fa > start:
            start = fa
        if fb > start:
            start = fb
        if fc > start:
            start = fc
        ra, rb, rc = a.rate, b.rate, c.rate
        da, db, dc = nbytes / ra, nbytes / rb, nbytes / rc
        slow = c if rc < (rb if rb < ra else ra) else (b if rb < ra else a)  # the first of the lowest rate
        a.free_at = start + da if slow is a else (fa if fa > earliest else earliest) + da
        b.free_at = start + db if slow is b else (fb if fb > earliest else earliest) + db
        c.free_at = start + dc if slow is c else (fc if fc > earliest else earliest) + dc
        a.bytes += nbytes
        b.bytes += nbytes
        c.bytes += nbytes
        return start, slow.free_at
    slow = servers[0]
    slow_rate = slow.rate
    start = earliest
    for s in servers:
        rate, free_at = s.rate, s.free_at
        if rate < slow_rate:
            slow, slow_rate = s, rate
        if free_at > start:
            start = free_at
    end = start
    for s in servers:
        dt = nbytes / s.rate
        if s is slow:
            end = s.free_at = start + dt
        else:
            free_at = s.free_at
            s.free_at = (free_at if free_at > earliest else earliest) + dt
        s.bytes += nbytes
    return start, end
