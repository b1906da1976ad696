"""Deterministic discrete-event simulator of DualPath clusters at the paper's scale.

Never imports ``engine/`` or ``kernels/``; scheduling decisions come from ``dualpath_jax.sched``
(the code the real engine runs). The paper's studies built on it live one layer up, in
``dualpath_jax.studies``. The event loop is :class:`~.cluster.Simulator`; what it models:

* **Topology**: P prefill and D decode nodes of g engines (one per GPU). Each node has an SNIC
  read server, an SNIC write server and a DRAM server (reads and writes share it) plus a DRAM
  buffer (PE/DE buffer) of ``dram_buffer_bytes``; each engine has CNIC in/out servers whose KV
  share is ``cnic_kv_share`` of B (KV is the low-priority class; model traffic keeps the rest).
* **Request path**, hop by hop (PAPER.md sections 2.3-2.6): the scheduler places the request on a
  PE and a DE (``dualpath_jax.sched``, the same code as the real engine) and picks the read side;
  hit KV is read storage -> SNIC -> DRAM of that side (buffer admission applies back-pressure: once
  placed, a request takes DE buffer space for its whole prompt's KV, the DE-side hits and the PE's
  hand-off, and then PE buffer space for its PE-side hits, always in this order, so no two requests
  each hold the space the other waits for; the engine's DE-side read takes the hand-off's share
  with its hit's, a PE-side read's hand-off takes it when the request is ready, polling, and a
  full buffer ends by timeout and retry); the PE forward streams the cached KV
  per layer to the PE (PE side: DRAM -> PE CNIC -> HBM; DE side: DE DRAM -> DE CNIC -> PE CNIC ->
  HBM) and the layer's KV to the DE buffer (all of it for PE-side reads, the new tokens' only for
  DE-side reads); a request prefilled in chunks loads its hit KV again in every chunk, and its
  earlier chunks' KV from the PE host, where each chunk but the last copies its new KV (D2H), as
  the engine's PE does; the DE copies the prompt KV to HBM (DE DRAM -> DE CNIC -> HBM), frees its
  DRAM (the DE-side reads and the hand-off) and decodes; the new tokens' KV (appended and
  generated) is persisted HBM -> DE CNIC -> DRAM -> SNIC -> storage (the DRAM written, then read)
  from the start of decode (the generated blocks are written as they fill; the write is reserved at
  once), and the agent's next round is issued once the request is finished and that write is done
  (plus think time), since it reads that KV. Oracle skips every KV transfer. A CNIC's out server
  carries what it reads over PCIe and its in server what it writes, so the loopback copies (H2D,
  D2H) load both, as the paper's bottleneck analysis counts them (PAPER.md 2.6). Every transfer is
  booked on all its hops at once at its slowest hop's rate, in the earliest stretch where each has
  that rate to spare (:func:`~.hardware.reserve`), so no link ever carries more than its rate.
* **Prefill**: ``layerwise`` overlaps loading with compute (a forward ends at
  ``max(compute, loads + one layer)``) and needs ``depth / L`` of the KV on device; ``full``
  loads all layers first, then computes, and must fit all of the batch's KV in free HBM.
* **EP groups**: with MoE models (EP + DP attention) the routed experts are spread over an EP
  group's GPUs (``pe_ep_nodes`` / ``de_ep_nodes`` nodes; by default all the PEs, all the DEs), and
  every forward of a PE EP group and every decode step of a DE EP group lasts as long as its
  slowest member's own part (attention, non-expert layers) plus the routed experts' time at the
  group's mean tokens per GPU, which the members share (``ep_sync``; PAPER.md 5.5: the members
  sync after attention to enter the MoE stage). An EP group is then also one scheduler group (its engines fetch
  together, PAPER.md 5.1); without ``ep_sync`` every node is one.
* **Decode** needs no event per token: a DE unit (:mod:`.units`) advances a continuous step
  counter at the rate of its current step time; only joins and completions are events.
"""

from dualpath_jax.sim.agents import SimAgent
from dualpath_jax.sim.cluster import Simulator, simulate
from dualpath_jax.sim.result import SimResult
from dualpath_jax.sim.compute import ComputeModel, calibrate_from_public
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.hardware import HardwareConfig, Server, reserve
from dualpath_jax.sim.adapters import agents_from_trajectories, request_table
from dualpath_jax.sim.runs import offline_starts, online_starts, recorded_starts, summarize, variant_config

__all__ = ["agents_from_trajectories", "request_table", "offline_starts", "online_starts", "recorded_starts",
           "summarize", "variant_config", "ComputeModel", "HardwareConfig", "Server", "SimAgent", "SimConfig",
           "SimResult", "Simulator", "calibrate_from_public", "reserve", "simulate"]
