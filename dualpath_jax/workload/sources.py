"""Where the shared traces live, and one entry point that loads any trace source by name.

The real traces are read-only under ``../shared/data`` relative to the repository root (never
copied into the repository). The path is resolved from this package's location, not the
working directory; the environment variable ``DUALPATH_DATA_DIR`` overrides it.

:func:`load_trace_agents` takes the first N agents of a trace (conversations with their
sub-agents, or Mooncake sessions), each cut at a MAL, for the simulator studies.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from dualpath_jax.workload.mooncake import MOONCAKE_BLOCK_TOKENS
from dualpath_jax.workload.trajectory import Trajectory, TrajectorySet

__all__ = ["data_dir", "agentic_dir", "mooncake_file", "load_source", "load_trace_agents", "SOURCES",
           "MOONCAKE_FILES", "NoAgentFits"]

SOURCES = ("agentic", "mooncake", "synthetic")
MOONCAKE_FILES = {"conversation": "conversation_trace.jsonl", "synthetic": "synthetic_trace.jsonl"}


class NoAgentFits(ValueError):
    """:func:`load_trace_agents` found no agent within its ``mal_tokens``."""


def data_dir() -> Path:
    """``$DUALPATH_DATA_DIR`` if set, else ``<repo root>/../shared/data``."""
    env = os.environ.get("DUALPATH_DATA_DIR")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return (repo_root / ".." / "shared" / "data").resolve()


def agentic_dir() -> Path:
    """Directory of the agentic traces: ``<data_dir()>/agentic_traces`` (not checked to exist)."""
    return data_dir() / "agentic_traces"


def mooncake_file(name: str = "conversation") -> Path:
    """Path of a Mooncake trace: ``"conversation"``, ``"synthetic"`` or a file path."""
    if name in MOONCAKE_FILES:
        return data_dir() / "mooncake" / MOONCAKE_FILES[name]
    return Path(name)


def load_source(source: str, *, mal: str = "64K", seed: int = 0, num_agents: int = 500,
                max_files: int | None = None, mooncake: str = "conversation",
                subagents: str = "separate", traces_dir: str | None = None,
                mooncake_block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> TrajectorySet:
    """Load trajectories by source name.

    Args:
      source: ``"agentic"`` (Claude Code traces), ``"mooncake"`` (sessions of a Mooncake file),
        ``"synthetic"`` (the paper's Table 2 dataset generator).
      mal: ``"32K"|"48K"|"64K"`` for ``synthetic``.
      seed, num_agents: generator seed and agent count for ``synthetic``.
      max_files: load only the first N agentic trace files (None = all).
      mooncake: ``"conversation"``, ``"synthetic"`` or a path, for ``mooncake``.
      subagents: ``"separate"`` or ``"drop"`` for ``agentic``.
      traces_dir: ``agentic``: the folder of trace files, or one trace file (default
        :func:`agentic_dir`).
      mooncake_block_tokens: ``mooncake``: tokens per hash id (512 in Mooncake's traces).
    Raises:
      ValueError: unknown source; TraceFormatError / FileNotFoundError from the loaders.
    """
    if source == "agentic":
        from dualpath_jax.workload.agentic import load_agentic_traces
        return load_agentic_traces(traces_dir or None, limit=max_files, subagents=subagents)
    if source == "mooncake":
        from dualpath_jax.workload.mooncake import load_mooncake_traces
        return load_mooncake_traces([mooncake_file(mooncake)], block_tokens=mooncake_block_tokens)
    if source == "synthetic":
        from dualpath_jax.workload.synthetic import paper_dataset
        return paper_dataset(mal, num_agents=num_agents, seed=seed)
    raise ValueError(f"source: must be one of {list(SOURCES)} (got {source!r})")


@functools.lru_cache(maxsize=2)
def _mooncake_sessions(path: str, block_tokens: int) -> tuple[Trajectory, ...]:
    from dualpath_jax.workload.mooncake import load_mooncake_trace
    return tuple(load_mooncake_trace(path, block_tokens=block_tokens))


def _cut(group: list[Trajectory], mal_tokens: int | None) -> list[Trajectory]:
    """One agent's trajectories (its root first), each cut before its first round beyond
    ``mal_tokens``; a trajectory whose first round alone exceeds it is dropped with its
    sub-agents (an empty list when the root is dropped)."""
    from dualpath_jax.workload.transforms import truncate_at_mal
    kept: list[Trajectory] = []
    ids: set[str] = set()
    for traj in group:
        if traj.parent_id is not None and traj.parent_id not in ids:
            continue  # its parent was dropped
        if mal_tokens is not None:
            try:
                traj = truncate_at_mal(traj, mal_tokens)
            except ValueError:  # the first round alone is longer than the MAL
                if traj.parent_id is None:
                    return []
                continue
        kept.append(traj)
        ids.add(traj.agent_id)
    return kept


def load_trace_agents(source: str, num_agents: int, *, path: str = "", subagents: str = "separate",
                      mal_tokens: int | None = None, mooncake_block_tokens: int = MOONCAKE_BLOCK_TOKENS
                      ) -> TrajectorySet:
    """The first ``num_agents`` agents of a trace source, in file order.

    An agent is a root trajectory with its sub-agents: an agentic conversation (files in sorted
    name order, read only as far as needed) or a Mooncake session. With ``mal_tokens`` every
    trajectory is cut before its first round whose prompt + generated tokens exceed it
    (:func:`~dualpath_jax.workload.transforms.truncate_at_mal`); an agent whose first round alone
    exceeds it is skipped, a sub-agent likewise (with its own sub-agents).

    Args:
      source: ``"agentic"`` or ``"mooncake"``.
      path: agentic: the folder of ``*.json.gz``/``*.json`` traces (default :func:`agentic_dir`) or
        one trace file; mooncake: ``"conversation"`` (default), ``"synthetic"`` or a file path
        (:func:`mooncake_file`).
      mooncake_block_tokens: mooncake: tokens per hash id (512 in Mooncake's traces).
      subagents: agentic: ``"separate"`` (sub-agents as their own trajectories, starting with their
        root) or ``"drop"``.
    Returns:
      The trajectories of at most ``num_agents`` agents (fewer when the source holds fewer).
    Raises:
      TraceFormatError: a bad trace file; FileNotFoundError: no trace file; NoAgentFits (a
        ValueError): no agent within ``mal_tokens``; ValueError: an unknown ``source`` or ``subagents``.
    """
    if source == "agentic":
        from dualpath_jax.workload.agentic import load_agentic_trace, no_traces_message, trace_files
        if subagents not in ("separate", "drop"):
            raise ValueError(f"subagents: must be 'separate' or 'drop' (got {subagents!r})")
        directory = Path(path) if path else agentic_dir()
        files = trace_files(directory)  # (one file, when the path names a file)
        if not files:
            raise FileNotFoundError(no_traces_message(directory))
        taken: set[str] = set()
        groups = (load_agentic_trace(f, subagents=subagents, taken=taken) for f in files)
        name = str(directory)
    elif source == "mooncake":
        file = mooncake_file(path or "conversation")
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such Mooncake trace file")
        groups = ([t] for t in _mooncake_sessions(str(file), int(mooncake_block_tokens)))
        name = str(file)
    else:
        raise ValueError(f"source: must be 'agentic' or 'mooncake' (got {source!r})")
    out: list[Trajectory] = []
    agents = 0
    for group in groups:
        if agents == num_agents:
            break
        kept = _cut(group, mal_tokens)
        if kept:
            out.extend(kept)
            agents += 1
    if not out:
        raise NoAgentFits(f"{name}: no agent fits mal_tokens={mal_tokens} (every agent's first prompt and its "
                          f"generated tokens alone are longer)")
    return TrajectorySet.from_trajectories(out, source=name)
