"""Bridges between the simulator and the shared workload / metrics layers."""

from __future__ import annotations

import numpy as np

from dualpath_jax.metrics.records import RequestTable
from dualpath_jax.sim.agents import SimAgent
from dualpath_jax.sim.result import SimResult
from dualpath_jax.workload import TrajectorySet

__all__ = ["agents_from_trajectories", "request_table", "snic_transfers"]


def agents_from_trajectories(ts: TrajectorySet, start_s: np.ndarray, *, use_think_time: bool = False) -> list[SimAgent]:
    """One :class:`SimAgent` per trajectory of ``ts``, starting at ``start_s`` (f64[A], seconds).

    Hits come from the set (``num_hit_tokens``: the running context for generated streams, the
    hash-prefix rule for traces); think times are used only when ``use_think_time`` (the paper's
    evaluation issues the next round immediately, PAPER.md section 6.2).

    Raises:
      ValueError: ``start_s`` is not of shape ``[A]``, one start time per trajectory of ``ts``.
    """
    start_s = np.asarray(start_s, np.float64)
    if start_s.shape != (len(ts.agent_ids),):
        raise ValueError(f"start_s: expected {len(ts.agent_ids)} start times, got shape {start_s.shape}")
    off = ts.round_offsets
    out = []
    for k in range(len(ts.agent_ids)):
        sl = slice(int(off[k]), int(off[k + 1]))
        think = ts.think_time_s[sl] if use_think_time else None
        out.append(SimAgent(float(start_s[k]), ts.num_append_tokens[sl], ts.num_gen_tokens[sl], think,
                            ts.num_hit_tokens[sl]))
    return out


def request_table(result: SimResult, ts: TrajectorySet | None = None) -> RequestTable:
    """The run's requests as a metrics :class:`RequestTable` (times in virtual seconds)."""
    r = result.requests
    n = len(r.get("arrival_s", ()))
    ids = np.asarray(r["agent"]) if n else np.zeros(0, np.int64)
    names = np.asarray([ts.agent_ids[i] for i in ids] if ts is not None else [str(i) for i in ids], dtype=object)
    unfinished = np.isnan(np.asarray(r["finish_s"], np.float64)) if n else np.zeros(0, bool)
    return RequestTable(
        trajectory_id=names, round_index=np.asarray(r["round"], np.int64),
        arrival_s=np.asarray(r["arrival_s"], np.float64), prefill_start_s=np.asarray(r["prefill_start_s"], np.float64),
        prefill_finish_s=np.asarray(r["first_token_s"], np.float64),
        first_token_s=np.asarray(r["first_token_s"], np.float64),
        second_token_s=np.asarray(r["second_token_s"], np.float64), finish_s=np.asarray(r["finish_s"], np.float64),
        num_gen_tokens=np.asarray(r["gen_tokens"], np.int64), num_hit_tokens=np.asarray(r["hit_tokens"], np.int64),
        num_append_tokens=np.asarray(r["append_tokens"], np.int64), pe=np.asarray(r["pe"], np.int64),
        de=np.asarray(r["de"], np.int64), read_side=np.asarray(r["side"], dtype=object),
        read_bytes=(np.asarray(r["read_bytes_pe"], np.float64) + np.asarray(r["read_bytes_de"], np.float64)),
        error=np.where(unfinished, "unfinished", ""),
    )


def snic_transfers(result: SimResult):
    """SNIC read transfers as (link ``object[reads]``, start_s ``f64[reads]``, finish_s ``f64[reads]``,
    bytes ``f64[reads]``) columns for the traffic metrics, node by node in issue order."""
    samples = [np.asarray(a, np.float64).reshape(-1, 3) for a in result.snic_samples.values()]
    rows = np.concatenate(samples) if samples else np.zeros((0, 3))
    links = np.repeat(np.asarray(list(result.snic_samples), dtype=object), [len(a) for a in samples])
    return links, rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy()
