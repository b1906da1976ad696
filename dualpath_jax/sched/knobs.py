"""The switches and scheduling knobs both runtimes share, declared once.

:class:`SchedKnobs` is the base of the real engine's ``ClusterConfig`` and the simulator's
``SimConfig``: every field below exists once, with one default, and both runtimes read it under
the same name (``cfg.alpha_s``, ``cfg.fetch_period_s``, ...). A runtime whose runs want another
value sets it in its config file, with a comment saying why (``configs/engine_ablation.py``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from dualpath_jax.config import ConfigError, check_in, check_positive
from dualpath_jax.sched.types import LOADINGS, POLICIES

__all__ = ["PREFILL_MODES", "SchedKnobs", "KNOB_FIELDS"]

PREFILL_MODES = ("full", "layerwise")
"""``full``: every layer's cached KV on the device before the forward; ``layerwise``: streamed
layer by layer (PAPER.md 3)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SchedKnobs:
    """The three ablation switches and the scheduler's knobs (keyword-only fields).

    Attributes:
      loading: ``pe_read`` | ``dual`` | ``split`` | ``oracle`` (``sched.LOADINGS``).
      prefill: ``full`` | ``layerwise`` (:data:`PREFILL_MODES`).
      policy: ``round_robin`` | ``dualpath`` (``sched.POLICIES``).
      alpha_s, beta_s: Algorithm 1's thresholds in seconds of a node's SNIC read rate and of one
        PE's prefill rate (PAPER.md 5.2, 8.4: 3 s and 5 s), converted to tokens at the start of a run.
      z_factor: the DE phase-2 balance target Z is this times the mean tokens per DE of the group,
        queued requests counted (PAPER.md 5.3: 1.05); >= 1.
      compute_quota_s: attention seconds of a ``dualpath`` PE batch's forward, all layers (PAPER.md 5.5: 0.300 s).
      fetch_period_s: how long after a change the group leaders fetch (the scheduling driver's
        tick, seconds). The paper gives no period; 20 ms is an assumption.
      basic_max_batch_tokens: new-token cap of a FIFO (``round_robin``) prefill batch.
      layerwise_depth: layers of KV in flight on a PE with ``layerwise`` prefill (2 = double buffering).

    Raises:
      ConfigError: naming the field with the runtime's prefix (``sim.alpha_s``, ``cluster.alpha_s``).
    """

    field_prefix: ClassVar[str] = "sched."

    loading: str = "dual"
    prefill: str = "layerwise"
    policy: str = "dualpath"
    alpha_s: float = 3.0
    beta_s: float = 5.0
    z_factor: float = 1.05
    compute_quota_s: float = 0.300
    fetch_period_s: float = 0.020
    basic_max_batch_tokens: int = 16384
    layerwise_depth: int = 2

    def __post_init__(self):
        p = self.field_prefix
        check_in(p + "loading", self.loading, LOADINGS)
        check_in(p + "prefill", self.prefill, PREFILL_MODES)
        check_in(p + "policy", self.policy, POLICIES)
        for f in ("alpha_s", "beta_s", "compute_quota_s", "fetch_period_s", "z_factor"):
            check_positive(p + f, getattr(self, f))
        for f in ("basic_max_batch_tokens", "layerwise_depth"):
            check_positive(p + f, getattr(self, f), integer=True)
        if self.z_factor < 1.0:
            raise ConfigError(p + "z_factor", f"must be >= 1 (got {self.z_factor})")


KNOB_FIELDS = tuple(f.name for f in dataclasses.fields(SchedKnobs))
"""The names of :class:`SchedKnobs`' fields."""
