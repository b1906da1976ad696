"""Table-2-style statistics of a set of trajectories (PAPER.md section 6.2).

Definitions. Per-round means must be averaged per trajectory first: pooled over all rounds,
``mean turns * (mean append + mean gen)`` would equal the mean total, yet Table 2's 64K row gives
157 * (429 + 176) = 94,985 tokens against a total of 55,958 (and a MAL of 65,536).

* ``turns_mean``   mean over trajectories of the number of rounds;
* ``append_mean``  mean over trajectories of the trajectory's mean append per round;
* ``gen_mean``     likewise for generated tokens;
* ``total_mean``   mean over trajectories of the largest context reached, max over rounds of
  prompt + generated (for a stream trajectory ``sum_i (a_i + g_i)``, "Total" of Table 2);
* ``context_mean`` mean over trajectories of the trajectory's mean context per round, the
  context of round i being the tokens before its append (= its hit tokens);
* ``hit_rate``     token-weighted over all rounds: sum(hit) / sum(hit + append), the fraction of
  prompt tokens the storage serves; ``hit_rate_of_means`` is the paper's section 3 form
  ``context_mean / (context_mean + append_mean)`` (98.7% for the 64K set);
* think-time percentiles over rounds after the first (round 0 is issued at arrival).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dualpath_jax.workload.trajectory import TrajectorySet

__all__ = ["TraceStats", "trace_stats"]


@dataclasses.dataclass(frozen=True)
class TraceStats:
    """Summary of a :class:`TrajectorySet`; token counts are tokens, times seconds."""

    num_trajectories: int
    num_rounds: int
    turns_mean: float
    turns_p50: float
    turns_max: int
    append_mean: float
    gen_mean: float
    total_mean: float
    context_mean: float
    hit_rate: float
    hit_rate_of_means: float
    append_round_p50: float
    gen_round_p50: float
    prompt_round_mean: float
    think_time_p50_s: float
    think_time_p90_s: float
    think_time_p99_s: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def trace_stats(ts: TrajectorySet) -> TraceStats:
    """Compute :class:`TraceStats` (definitions in the module docstring), vectorised."""
    starts = ts.round_offsets[:-1]
    n = ts.num_rounds.astype(np.float64)
    a, g, hit = ts.num_append_tokens, ts.num_gen_tokens, ts.num_hit_tokens
    prompt = hit + a
    per_traj_mean = lambda x: np.add.reduceat(x.astype(np.float64), starts) / n  # noqa: E731
    total = np.maximum.reduceat(prompt + g, starts)
    append_mean = float(per_traj_mean(a).mean())
    context_mean = float(per_traj_mean(hit).mean())
    later = np.ones(len(a), dtype=bool)
    later[starts] = False
    think = ts.think_time_s[later]
    pct = (lambda q: float(np.percentile(think, q))) if think.size else (lambda q: float("nan"))
    return TraceStats(
        num_trajectories=len(ts), num_rounds=len(a),
        turns_mean=float(n.mean()), turns_p50=float(np.median(n)), turns_max=int(n.max()),
        append_mean=append_mean, gen_mean=float(per_traj_mean(g).mean()), total_mean=float(total.mean()),
        context_mean=context_mean, hit_rate=float(hit.sum() / prompt.sum()),
        hit_rate_of_means=context_mean / (context_mean + append_mean),
        append_round_p50=float(np.median(a)), gen_round_p50=float(np.median(g)),
        prompt_round_mean=float(prompt.mean()),
        think_time_p50_s=pct(50), think_time_p90_s=pct(90), think_time_p99_s=pct(99))
