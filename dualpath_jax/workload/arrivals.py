"""Agent arrival times (PAPER.md section 6.4).

* offline: all agents start at t = 0 and the metric is the JCT of the whole batch;
* online: agents arrive as a Poisson process at a rate of APS agents per second
  (exponential inter-arrival gaps with mean 1/APS; the first agent arrives after one gap);
* recorded: agents arrive at their trace's timestamps (a Mooncake session at its first request's,
  counted from the earliest agent's), optionally sped up: an open-loop replay of a trace.

Sub-agent trajectories (``parent_id`` set, see :mod:`~dualpath_jax.workload.agentic`) are not
agents of their own: they start at their root conversation's arrival plus their launch offset.
"""

from __future__ import annotations

import numpy as np

from dualpath_jax.config import ConfigError, check_non_negative, check_positive
from dualpath_jax.workload.trajectory import TrajectorySet

__all__ = ["offline_arrivals_s", "poisson_arrivals_s", "recorded_arrivals_s", "root_indices",
           "trajectory_start_times_s"]


def offline_arrivals_s(num_agents: int) -> np.ndarray:
    """f64[A] zeros: the offline batch setting."""
    check_non_negative("num_agents", num_agents, integer=True)
    return np.zeros(int(num_agents))


def poisson_arrivals_s(num_agents: int, aps: float, seed: int = 0) -> np.ndarray:
    """f64[A] increasing arrival times of a Poisson process of rate ``aps`` agents per second.

    Raises:
      ConfigError: ``aps <= 0`` or a negative ``num_agents``.
    """
    check_non_negative("num_agents", num_agents, integer=True)
    check_positive("aps", aps)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA55]))
    return np.cumsum(rng.exponential(1.0 / aps, size=int(num_agents)))


def recorded_arrivals_s(start_offsets_s, speedup: float = 1.0) -> np.ndarray:
    """f64[A] arrival of each agent at its recorded start time, seconds: ``(start_offsets_s -
    earliest) / speedup`` (the earliest agent arrives at 0).

    ``start_offsets_s`` (f64[A], seconds) are the agents' (root trajectories', :func:`root_indices`)
    ``start_offset_s``; a Mooncake session's is its first request's timestamp, so this replays the
    trace's arrivals open-loop (``speedup`` > 1 compresses the gaps, as a replay at a higher load).
    An agentic trace's times count from its own file's start (a root's offset is its first kept
    request's ``t``), so its conversations share no clock, and a synthetic set records none
    (every root 0): the studies refuse both.

    Raises:
      ConfigError: ``speedup`` not a finite number > 0, or an offset not finite.
    """
    check_positive("speedup", speedup)
    starts = np.asarray(start_offsets_s, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(starts)):
        raise ConfigError("start_offsets_s", "must be finite")
    return (starts - starts.min()) / float(speedup) if len(starts) else starts


def root_indices(ts: TrajectorySet) -> np.ndarray:
    """i64[A'] positions of the trajectories without a parent (the agents), in set order."""
    return np.array([k for k, p in enumerate(ts.parent_ids) if p is None], dtype=np.int64)


def trajectory_start_times_s(ts: TrajectorySet, agent_arrivals_s: np.ndarray,
                             subagent_offset_scale: float = 1.0) -> np.ndarray:
    """f64[A] start time of every trajectory of ``ts``.

    A conversation (a root trajectory and its sub-agents) starts at its arrival, its trajectories
    at their recorded offsets from the earliest of them: the root's first round, unless a sub-agent
    was launched before it (the conversation's earlier requests left out, e.g. recorded with
    ``in = 0``), whose lead then delays the root, so that no trajectory starts before its
    conversation arrives.

    Args:
      agent_arrivals_s: f64[A'] arrival of each root trajectory's conversation (see
        :func:`root_indices`).
      subagent_offset_scale: multiplies those offsets (1 keeps the trace's wall-clock offsets; 0
        starts sub-agents with their root, e.g. for zero-think-time replays whose clock no longer
        matches the trace's).
    Raises:
      ValueError: wrong number of arrivals, or a parent id missing from the set.
    """
    roots = root_indices(ts)
    arrivals = np.asarray(agent_arrivals_s, dtype=np.float64)
    if arrivals.shape != roots.shape:
        raise ValueError(f"agent_arrivals_s: {arrivals.shape[0] if arrivals.ndim else 0} arrivals for "
                         f"{len(roots)} root trajectories")
    index = {a: k for k, a in enumerate(ts.agent_ids)}
    root_of = np.empty(len(ts), dtype=np.int64)
    for k in range(len(ts)):
        root = k
        while ts.parent_ids[root] is not None:
            if ts.parent_ids[root] not in index:
                raise ValueError(f"{ts.agent_ids[root]}: parent {ts.parent_ids[root]!r} is not in the set")
            root = index[ts.parent_ids[root]]
        root_of[k] = root
    offsets = np.asarray(ts.start_offset_s, dtype=np.float64)
    earliest = offsets.copy()  # per root: the earliest offset of its conversation
    np.minimum.at(earliest, root_of, offsets)
    arrival = np.full(len(ts), np.nan)
    arrival[roots] = arrivals
    return arrival[root_of] + subagent_offset_scale * (offsets - earliest[root_of])
