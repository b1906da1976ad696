"""Where the shared traces live, and one entry point that loads any trace source by name.

The real traces are read-only under ``../shared/data`` relative to the repository root (never
copied into the repository). The path is resolved from this package's location, not the
working directory; the environment variable ``DUALPATH_DATA_DIR`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

from dualpath_jax.workload.trajectory import TrajectorySet

__all__ = ["data_dir", "agentic_dir", "mooncake_file", "load_source", "SOURCES", "MOONCAKE_FILES"]

SOURCES = ("agentic", "mooncake", "synthetic")
MOONCAKE_FILES = {"conversation": "conversation_trace.jsonl", "synthetic": "synthetic_trace.jsonl"}


def data_dir() -> Path:
    """``$DUALPATH_DATA_DIR`` if set, else ``<repo root>/../shared/data``."""
    env = os.environ.get("DUALPATH_DATA_DIR")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return (repo_root / ".." / "shared" / "data").resolve()


def agentic_dir() -> Path:
    return data_dir() / "agentic_traces"


def mooncake_file(name: str = "conversation") -> Path:
    """Path of a Mooncake trace: ``"conversation"``, ``"synthetic"`` or a file path."""
    if name in MOONCAKE_FILES:
        return data_dir() / "mooncake" / MOONCAKE_FILES[name]
    return Path(name)


def load_source(source: str, *, mal: str = "64K", seed: int = 0, num_agents: int = 500,
                max_files: int | None = None, mooncake: str = "conversation",
                subagents: str = "separate") -> TrajectorySet:
    """Load trajectories by source name.

    Args:
      source: ``"agentic"`` (Claude Code traces), ``"mooncake"`` (sessions of a Mooncake file),
        ``"synthetic"`` (the paper's Table 2 dataset generator).
      mal: ``"32K"|"48K"|"64K"`` for ``synthetic``.
      seed, num_agents: generator seed and agent count for ``synthetic``.
      max_files: load only the first N agentic trace files (None = all).
      mooncake: ``"conversation"``, ``"synthetic"`` or a path, for ``mooncake``.
      subagents: ``"separate"`` or ``"drop"`` for ``agentic``.
    Raises:
      ValueError: unknown source; TraceFormatError / FileNotFoundError from the loaders.
    """
    if source == "agentic":
        from dualpath_jax.workload.agentic import load_agentic_traces
        return load_agentic_traces(limit=max_files, subagents=subagents)
    if source == "mooncake":
        from dualpath_jax.workload.mooncake import load_mooncake_traces
        return load_mooncake_traces([mooncake_file(mooncake)])
    if source == "synthetic":
        from dualpath_jax.workload.synthetic import paper_dataset
        return paper_dataset(mal, num_agents=num_agents, seed=seed)
    raise ValueError(f"source: must be one of {list(SOURCES)} (got {source!r})")
