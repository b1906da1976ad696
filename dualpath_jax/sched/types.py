"""Plain data the scheduling policies read: requests, engine loads, assignments, knobs.

Token counts are ``int``; times are seconds; HBM sizes bytes. Nothing here knows about the real
engine or the simulator: both runtimes build these records from their own state.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

from mypy_extensions import mypyc_attr

from dualpath_jax.config import ConfigError, check_in, check_non_negative, check_positive

__all__ = ["SchedRequest", "EngineLoad", "Assignment", "SchedulerConfig", "POLICIES", "LOADINGS", "READ_SIDES"]

POLICIES = ("round_robin", "dualpath")
LOADINGS = ("pe_read", "dual", "split", "oracle")
READ_SIDES = ("pe", "de", "split", "none")


class SchedRequest(NamedTuple):
    """One request (one agent round) as the scheduler sees it; an immutable record.

    Attributes:
      request_id: unique id.
      hit_tokens: prompt tokens whose KV is in storage (the cached prefix).
      append_tokens: prompt tokens to compute (cache misses).
      gen_tokens: tokens to generate (used for DE HBM reservation).
      hbm_bytes: DE HBM this request needs (prompt + generation KV); 0 = not modelled.
    """

    request_id: int
    hit_tokens: int
    append_tokens: int
    gen_tokens: int = 0
    hbm_bytes: int = 0

    @property
    def num_tokens(self) -> int:
        """``len(r)`` of Algorithm 1: prompt length = hit + append tokens (PAPER.md 5.1)."""
        return self.hit_tokens + self.append_tokens


@dataclasses.dataclass(slots=True)
class EngineLoad:
    """What an engine reports when its group fetches (PAPER.md section 5.1).

    Attributes:
      engine_id: global engine id.
      node_id: node hosting the engine (read queues are per node).
      tok: ``tok_e``, total tokens of assigned-but-unfinished requests (a float: a lost engine
        reports ``inf``).
      seq: ``seq_e``, number of assigned-but-unfinished requests.
      free_hbm_bytes: DE free HBM for new requests (ignored for PEs).
    """

    engine_id: int
    node_id: int
    tok: float = 0
    seq: int = 0
    free_hbm_bytes: float = float("inf")


class Assignment(NamedTuple):
    """A placement decision: request -> engine (``role`` ``"pe"`` or ``"de"``); an immutable record."""

    request: SchedRequest
    engine_id: int
    role: Literal["pe", "de"]


@mypyc_attr(native_class=False)  # a plain Python class when compiled: picklable, checked by its own code
@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the scheduler.

    Attributes:
      policy: ``round_robin`` (load-oblivious cyclic placement) or ``dualpath`` (Algorithm 1 PE
        selection, two-phase DE selection, shorter-read-queue side, compute-quota batching).
      loading: ``pe_read`` | ``dual`` | ``split`` | ``oracle`` (decides which read sides exist).
      alpha_tokens: short-read-queue threshold alpha, tokens (paper: 3 s of node read rate).
      beta_tokens: per-engine unfinished-token limit beta, tokens (paper: 5 s of prefill rate).
      z_factor: slack of the DE phase-2 balance target Z (paper: 1.05).
      compute_quota_s: per-forward attention-time quota of a PE batch (paper: 0.300 s).

    Raises:
      ConfigError: naming the field for unknown names or non-positive values.
    """

    policy: str = "dualpath"
    loading: str = "dual"
    alpha_tokens: float = 1.0e6
    beta_tokens: float = 1.0e6
    z_factor: float = 1.05
    compute_quota_s: float = 0.300

    def __post_init__(self):
        check_in("sched.policy", self.policy, POLICIES)
        check_in("sched.loading", self.loading, LOADINGS)
        check_positive("sched.alpha_tokens", self.alpha_tokens)
        check_positive("sched.beta_tokens", self.beta_tokens)
        check_positive("sched.compute_quota_s", self.compute_quota_s)
        check_non_negative("sched.z_factor", self.z_factor)
        if self.z_factor < 1.0:
            raise ConfigError("sched.z_factor", f"must be >= 1 (got {self.z_factor})")
