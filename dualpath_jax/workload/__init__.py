"""Workloads: agent trajectories from real traces and from the paper's dataset generator.

Pure numpy + stdlib (layering: DESIGN.md); nothing here imports the engine, simulator or
scheduler.

* :mod:`.trajectory`  :class:`Trajectory` (one agent's rounds) and :class:`TrajectorySet`
  (ragged columnar, for 48K agents), block-hash bookkeeping and the prefix-hit rule.
* :mod:`.agentic`, :mod:`.mooncake`  loaders of the shared traces (errors name file, request or
  line, field and value); :mod:`.sources` resolves ``../shared/data`` and loads by source name.
* :mod:`.synthetic`  the paper's Table 2 datasets (500 base trajectories per MAL, more agents by
  prepending a round); :mod:`.calibrate` fits its parameters.
* :mod:`.transforms`  MAL truncation, Fig. 9 length scaling, downscaling for tiny models.
* :mod:`.tokens`  deterministic i32 token ids from (scope, hash id): equal blocks, equal tokens.
* :mod:`.arrivals`  offline (t = 0), Poisson (APS) and recorded (trace timestamps) arrivals;
  :mod:`.stats` Table-2 summaries.
"""

from dualpath_jax.workload.agentic import load_agentic_trace, load_agentic_traces
from dualpath_jax.workload.arrivals import (offline_arrivals_s, poisson_arrivals_s, recorded_arrivals_s,
                                            root_indices, trajectory_start_times_s)
from dualpath_jax.workload.errors import TraceFormatError, TraceSkipWarning
from dualpath_jax.workload.mooncake import (load_mooncake_trace, load_mooncake_traces, reconstruct_sessions,
                                            untimed_session)
from dualpath_jax.workload.sources import SOURCES, agentic_dir, data_dir, load_source, load_trace_agents, mooncake_file
from dualpath_jax.workload.stats import TraceStats, trace_stats
from dualpath_jax.workload.synthetic import (MAL_TOKENS, PAPER_PARAMS, TABLE2, GeneratorParams, Table2Row,
                                             expand_agents, generate_base_trajectories, mal_to_tokens,
                                             paper_dataset)
from dualpath_jax.workload.tokens import (append_token_ids, block_token_ids, gen_token_ids, prompt_token_ids,
                                          stream_token_ids)
from dualpath_jax.workload.trajectory import BlockHashes, Trajectory, TrajectorySet, hit_blocks_from_hashes
from dualpath_jax.workload.transforms import scale_lengths, scale_tokens, truncate_at_mal

__all__ = [
    "BlockHashes", "Trajectory", "TrajectorySet", "hit_blocks_from_hashes", "TraceFormatError", "TraceSkipWarning",
    "load_agentic_trace", "load_agentic_traces", "load_mooncake_trace", "load_mooncake_traces",
    "reconstruct_sessions", "untimed_session", "data_dir", "agentic_dir", "mooncake_file", "load_source",
    "load_trace_agents", "SOURCES",
    "TraceStats", "trace_stats", "MAL_TOKENS", "TABLE2", "Table2Row", "GeneratorParams", "PAPER_PARAMS",
    "mal_to_tokens", "generate_base_trajectories", "expand_agents", "paper_dataset",
    "block_token_ids", "stream_token_ids", "prompt_token_ids", "append_token_ids", "gen_token_ids",
    "scale_lengths", "scale_tokens", "truncate_at_mal",
    "offline_arrivals_s", "poisson_arrivals_s", "recorded_arrivals_s", "root_indices", "trajectory_start_times_s",
]
