"""Pieces shared by the study configs and runs: the paper's workload as a hashable spec, cluster
names (``"2P4D"``), a :class:`SimConfig` from layered mappings, and the size of an online run.

* :class:`WorkloadSpec`: one workload of the paper's generator (PAPER.md section 6.2) with the
  Fig. 9 length scaling and an optional token divisor (tiny test workloads).
* :func:`sim_config`: a :class:`SimConfig` from mappings merged left to right (study base + row
  overrides); errors name the field (``sim.<field>`` / ``sim.hardware.<field>``).
* :func:`parse_cluster`, :func:`cluster_label`, :func:`with_cluster`: ``"<P>P<D>D"`` names.
* :class:`OnlineWindow`: how many agents one online run replays and from when it is measured.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from dualpath_jax.config import ConfigError, check_in, check_non_negative, check_positive, from_mapping
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.hardware import HardwareConfig
from dualpath_jax.workload import MAL_TOKENS, TrajectorySet, paper_dataset, scale_lengths, scale_tokens

__all__ = ["WorkloadSpec", "OnlineWindow", "as_dict", "sim_config", "with_cluster", "parse_cluster", "cluster_label"]


def as_dict(mapping) -> dict:
    """A plain (deep) dict from a ConfigDict / mapping / None."""
    if mapping is None:
        return {}
    if hasattr(mapping, "to_dict"):
        return mapping.to_dict()
    return {k: as_dict(v) if isinstance(v, Mapping) else v for k, v in dict(mapping).items()}


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """The paper's dataset for ``mal`` with ``num_agents`` agents (PAPER.md section 6.2); hashable.

    Attributes:
      mal: ``"32K"|"48K"|"64K"``.
      num_agents: agents (trajectories).
      seed: generator seed.
      append_factor, gen_factor: Fig. 9 scaling of every round's append / generation length,
        followed by truncation at the MAL (``workload.scale_lengths``); 1 = unscaled.
      token_divisor: divide every token count by this (``workload.scale_tokens``; 1 = off) to
        make tiny test workloads.
      num_base: base trajectories of the generator (the paper: 500).

    Raises:
      ConfigError: naming ``workload.<field>``.
    """

    mal: str = "64K"
    num_agents: int = 512
    seed: int = 0
    append_factor: float = 1.0
    gen_factor: float = 1.0
    token_divisor: int = 1
    num_base: int = 500

    def __post_init__(self):
        check_in("workload.mal", self.mal, MAL_TOKENS)
        check_positive("workload.num_agents", self.num_agents, integer=True)
        check_non_negative("workload.seed", self.seed, integer=True)
        check_positive("workload.append_factor", self.append_factor)
        check_positive("workload.gen_factor", self.gen_factor)
        check_positive("workload.token_divisor", self.token_divisor, integer=True)
        check_positive("workload.num_base", self.num_base, integer=True)

    def build(self) -> TrajectorySet:
        """The trajectories (deterministic in the fields)."""
        ts = paper_dataset(self.mal, self.num_agents, self.seed, num_base=self.num_base)
        if self.append_factor != 1.0 or self.gen_factor != 1.0:
            ts = scale_lengths(ts, self.append_factor, self.gen_factor, mal_tokens=MAL_TOKENS[self.mal])
        if self.token_divisor != 1:
            ts = scale_tokens(ts, self.token_divisor)
        return ts

    def replace(self, **changes) -> "WorkloadSpec":
        return dataclasses.replace(self, **changes)


def parse_cluster(text: str, field: str = "cluster") -> tuple[int, int]:
    """(P, D) of ``"<P>P<D>D"``; raises ConfigError naming ``field``."""
    t = str(text).strip().upper()
    try:
        p, rest = t.split("P", 1)
        d = rest[:-1] if rest.endswith("D") else None
        if d is None:
            raise ValueError
        out = int(p), int(d)
    except ValueError:
        raise ConfigError(field, f"expected '<P>P<D>D' such as '2P4D' (got {text!r})") from None
    if min(out) < 1:
        raise ConfigError(field, f"P and D must be >= 1 (got {text!r})")
    return out


def cluster_label(cfg: SimConfig) -> str:
    """``"<P>P<D>D"``, e.g. ``"2P4D"``."""
    return f"{cfg.prefill_nodes}P{cfg.decode_nodes}D"


def with_cluster(base: SimConfig, cluster: str, field: str = "clusters") -> SimConfig:
    """``base`` on the ``"<P>P<D>D"`` cluster; raises ConfigError naming ``field``."""
    p, d = parse_cluster(cluster, field)
    return base.replace(prefill_nodes=p, decode_nodes=d)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def sim_config(*layers) -> SimConfig:
    """A :class:`SimConfig` from mappings merged left to right (``hardware`` merged key by key).

    Raises:
      ConfigError: naming ``sim.<field>`` or ``sim.hardware.<field>``.
    """
    merged: dict = {}
    for layer in layers:
        merged = _merge(merged, as_dict(layer))
    hw = merged.pop("hardware", {}) or {}
    return from_mapping(SimConfig, {**merged, "hardware": from_mapping(HardwareConfig, hw, prefix="sim.hardware.")},
                        prefix="sim.")


@dataclasses.dataclass(frozen=True)
class OnlineWindow:
    """How one online run is sized (paper section 7.3; ``configs/sim_online.py``).

    Attributes:
      horizon_s: > 0: an open system observed for this many seconds of arrivals,
        ``ceil(APS x horizon_s)`` agents; 0: a bounded batch of ``workload.num_agents``.
      warmup_s: requests issued earlier are not measured (needs a horizon, and < it).
      max_agents_per_run: cap on the agents of a timed run.

    Raises:
      ConfigError: naming ``horizon_s``, ``warmup_s`` or ``max_agents_per_run``.
    """

    horizon_s: float = 0.0
    warmup_s: float = 0.0
    max_agents_per_run: int = 1 << 20

    def __post_init__(self):
        check_non_negative("horizon_s", self.horizon_s)
        check_non_negative("warmup_s", self.warmup_s)
        check_positive("max_agents_per_run", self.max_agents_per_run, integer=True)
        if self.horizon_s <= 0 and self.warmup_s:
            raise ConfigError("warmup_s", "needs horizon_s > 0 (a fixed batch has no steady period to measure)")
        if self.horizon_s > 0 and self.warmup_s >= self.horizon_s:
            raise ConfigError("warmup_s", f"must be < horizon_s = {self.horizon_s:g} (got {self.warmup_s:g})")

    def workload(self, wl: WorkloadSpec, aps: float) -> WorkloadSpec:
        """The workload of one run at ``aps``: ``wl`` with ``ceil(aps x horizon_s)`` agents (at most
        ``max_agents_per_run``, at least 1) for a timed run, ``wl`` itself for a bounded batch."""
        if self.horizon_s <= 0:
            return wl
        return wl.replace(num_agents=int(min(self.max_agents_per_run, max(1, math.ceil(float(aps) * self.horizon_s)))))

    def describe(self, wl: WorkloadSpec) -> str:
        """One line: what a run replays."""
        if self.horizon_s > 0:
            return f"{self.horizon_s:g} s of arrivals of MAL {wl.mal} per run, measured after {self.warmup_s:g} s"
        return f"{wl.num_agents} agents of MAL {wl.mal} per run"
