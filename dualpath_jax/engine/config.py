"""Configuration of the emulated engine cluster (topology, emulated hardware, switches, knobs).

:class:`ClusterConfig` is frozen and validated once; every error names its field
(``ConfigError("cluster.prefill_nodes", ...)``). Byte rates are the *emulated* ones: on a CPU
host the engine recreates the paper's storage-bound regime by rate-limiting links
(:class:`dualpath_jax.transfer.Link`); on an accelerator the same fields can be left unlimited.

Topology (PAPER.md sections 2.1, 2.3-2.5): ``prefill_nodes`` PE nodes and ``decode_nodes`` DE
nodes of ``engines_per_node`` engines (one engine per JAX device). Each node has a storage NIC
(SNIC; one read and one write direction at ``snic_bytes_per_s`` each) and a DRAM buffer (PE
buffer / DE buffer) of ``buffer_bytes``; each engine has a compute NIC (CNIC; an in and an out
direction at ``cnic_bytes_per_s`` each) that carries every byte entering or leaving its device
(H2D, D2H and PE<->DE RDMA, PAPER.md section 4.1).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from dualpath_jax.config import ConfigError, check_positive
from dualpath_jax.sched.knobs import PREFILL_MODES, SchedKnobs
from dualpath_jax.sched.variants import VARIANTS, Variant, get_variant

__all__ = ["ClusterConfig", "PREFILL_MODES", "ENGINE_VARIANTS", "RUNTIMES", "engine_variant"]

ENGINE_VARIANTS: dict[str, Variant] = VARIANTS
"""The paper's ablation ladder (``sched.ABLATION_VARIANTS``) plus ``split`` loading."""

engine_variant = get_variant
"""Look up a variant of :data:`ENGINE_VARIANTS` (``sched.get_variant``; ConfigError naming
``variants`` for an unknown name)."""


RUNTIMES = ("threads", "ray")
"""How the engine cluster runs: ``threads`` (every engine a thread of one process) or ``ray``
(every node a Ray actor in its own process; :mod:`dualpath_jax.engine.ray_runtime`)."""

@dataclasses.dataclass(frozen=True)
class ClusterConfig(SchedKnobs):
    """An emulated PD-disaggregated cluster and the three switches of one run.

    The switches (``loading``, ``prefill``, ``policy``; :meth:`for_variant` sets them from an
    ablation variant name) and the scheduler's knobs (``alpha_s``, ``beta_s``, ``z_factor``,
    ``compute_quota_s``, ``fetch_period_s``, ``basic_max_batch_tokens``, ``layerwise_depth``) are
    :class:`~dualpath_jax.sched.knobs.SchedKnobs`' fields, shared with the simulator's ``SimConfig``
    (keyword-only). The defaults below are those of ``configs/engine_ablation.py``'s emulated 1P2D
    cluster, which derives from them.

    The model is not part of it: the engine runs the spec, parameters and KV layout it is given
    (``EngineCluster``), and the engine ablation names them in its ``model`` section.

    Attributes:
      prefill_nodes, decode_nodes, engines_per_node: topology (P and D count nodes, as "1P2D").
      snic_bytes_per_s: each node's storage NIC rate per direction.
      cnic_bytes_per_s: each engine's compute NIC rate per direction.
      buffer_bytes: DRAM buffer of each node (PE buffer / DE buffer); at least one Full Block.
        Reserved in the store layout's bytes (what the emulated buffer holds, as the simulator
        counts it); the hand-off segments the process keeps there are float32, so with a 16-bit or
        fp8 layout the host holds up to 2x or 4x as much DRAM, and a chunked prompt's earlier
        chunks' KV, which stays on the PE host, is outside it.
      pe_hbm_kv_bytes: device memory a PE may fill with the KV of one forward batch, counted in
        the store layout's bytes per token (the batch former's budget, ``depth / L`` of it with
        layer-wise prefill). The forward's device copy is float32 and padded to a power-of-two
        block count per request, so it may take up to 2x (f32 layout) or 4x (16-bit layout) as
        much: leave that headroom on an accelerator.
      de_hbm_kv_bytes: device memory of a DE's block pool (prompt and generated KV), counted in the
        store layout's bytes: the pool holds this many blocks of the layout (what the scheduler and
        the simulator count), allocated as float32, so up to 2x (16-bit layout) or 4x (fp8) as
        much memory: leave that headroom.
      max_decode_batch: decode rows per DE step (requests beyond wait for a free row).
      timeout_s: deadline of every wait (buffers, links, loader); a request that hits it fails.
      run_timeout_s: the whole run's deadline; requests unfinished by then fail with ``timeout``.
      store_io_threads: tensorstore I/O threads of the shared KV store.
      max_attempts: runs of one request at most: an attempt that fails (a failed transfer, a
        crashed worker's job, a buffer wait past ``timeout_s``) is run again from the start
        until this many attempts have failed (1 = never run again).

    Raises:
      ConfigError: naming the field.
    """

    prefill_nodes: int = 1
    decode_nodes: int = 2
    engines_per_node: int = 1
    snic_bytes_per_s: float = 3.0e6
    cnic_bytes_per_s: float = 24.0e6
    buffer_bytes: int = 256 * 2**20
    pe_hbm_kv_bytes: int = 8 * 2**20
    de_hbm_kv_bytes: int = 64 * 2**20
    max_decode_batch: int = 16
    timeout_s: float = 120.0
    run_timeout_s: float = 900.0
    store_io_threads: int = 4
    max_attempts: int = 3

    field_prefix: ClassVar[str] = "cluster."

    def __post_init__(self):
        super().__post_init__()  # the switches and scheduler knobs
        p = self.field_prefix
        for f in ("prefill_nodes", "decode_nodes", "engines_per_node", "buffer_bytes", "pe_hbm_kv_bytes",
                  "de_hbm_kv_bytes", "max_decode_batch", "store_io_threads", "max_attempts"):
            check_positive(p + f, getattr(self, f), integer=True)
        for f in ("snic_bytes_per_s", "cnic_bytes_per_s", "timeout_s", "run_timeout_s"):
            check_positive(p + f, getattr(self, f))

    def for_variant(self, name: str) -> "ClusterConfig":
        """This config with the switches of variant ``name`` (:data:`ENGINE_VARIANTS`).

        Raises:
          ConfigError: field ``variants`` for an unknown name.
        """
        v = engine_variant(name)
        return dataclasses.replace(self, loading=v.loading, prefill=v.prefill, policy=v.policy)

    def replace(self, **changes) -> "ClusterConfig":
        return dataclasses.replace(self, **changes)

    @property
    def num_nodes(self) -> int:
        return self.prefill_nodes + self.decode_nodes

    @property
    def num_pe(self) -> int:
        return self.prefill_nodes * self.engines_per_node

    @property
    def num_de(self) -> int:
        return self.decode_nodes * self.engines_per_node

    def groups(self) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
        """The scheduler's groups, one per node: ``(pe_groups, de_groups)``, node id -> its
        engines' global ids (PE nodes ``0..P-1`` hold PEs ``0..num_pe-1``, DE nodes ``P..`` the DEs
        from ``num_pe``, ``engines_per_node`` each)."""
        g, p = self.engines_per_node, self.prefill_nodes
        pe_groups = {n: list(range(n * g, (n + 1) * g)) for n in range(p)}
        de_groups = {p + n: list(range(self.num_pe + n * g, self.num_pe + (n + 1) * g))
                     for n in range(self.decode_nodes)}
        return pe_groups, de_groups

    def check_layout(self, full_block_bytes: int) -> None:
        """Checks that need the KV layout: buffers and device pools must hold at least one Full Block.

        Raises:
          ConfigError: ``cluster.buffer_bytes``, ``cluster.pe_hbm_kv_bytes`` or
            ``cluster.de_hbm_kv_bytes`` smaller than one Full Block (``full_block_bytes``).
        """
        for f in ("buffer_bytes", "pe_hbm_kv_bytes", "de_hbm_kv_bytes"):
            if getattr(self, f) < full_block_bytes:
                raise ConfigError(f"cluster.{f}", f"{getattr(self, f)} B is smaller than one Full Block "
                                  f"({full_block_bytes} B)")
