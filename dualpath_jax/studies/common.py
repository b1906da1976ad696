"""Pieces shared by the study configs and runs: the paper's workload as a hashable spec, cluster
names (``"2P4D"``), a :class:`SimConfig` from layered mappings, and the size of an online run.

* :class:`WorkloadSpec`: one workload: the paper's generator (PAPER.md section 6.2) with the
  Fig. 9 length scaling, or the first agents of the agentic or Mooncake traces cut at the MAL;
  an optional token divisor (tiny test workloads); :func:`workload_config_dict` its fields for a
  config file.
* :func:`sim_config`: a :class:`SimConfig` from mappings merged left to right (study base + row
  overrides); errors name the field (``sim.<field>`` / ``sim.hardware.<field>``).
* :func:`parse_cluster`, :func:`cluster_label`, :func:`with_cluster`: ``"<P>P<D>D"`` names.
* :class:`OnlineWindow`: how many agents one online run replays and from when it is measured.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from pathlib import Path

import ml_collections

from dualpath_jax.config import (ConfigError, check_at_most, check_in, check_non_negative, check_positive,
                                 from_mapping)
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.hardware import HardwareConfig
from dualpath_jax.workload import (MAL_TOKENS, SOURCES, TrajectorySet, agentic_dir, load_trace_agents, mooncake_file,
                                   paper_dataset, scale_lengths, scale_tokens)
from dualpath_jax.workload.agentic import no_traces_message, trace_files
from dualpath_jax.workload.mooncake import MOONCAKE_BLOCK_TOKENS, untimed_session
from dualpath_jax.workload.sources import NoAgentFits
from dualpath_jax.workload.synthetic import MAX_AGENTS, MAX_BASE

__all__ = ["WorkloadSpec", "OnlineWindow", "as_dict", "sim_config", "with_cluster", "parse_cluster", "cluster_label",
           "workload_config_dict", "scale_trace_tokens"]


def as_dict(mapping) -> dict:
    """A plain (deep) dict from a ConfigDict / mapping / None."""
    if mapping is None:
        return {}
    if hasattr(mapping, "to_dict"):
        return mapping.to_dict()
    return {k: as_dict(v) if isinstance(v, Mapping) else v for k, v in dict(mapping).items()}


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """One workload of the studies; hashable.

    Attributes:
      mal: ``"32K"|"48K"|"64K"``, the MAL (maximum agent length): the generator's dataset for it
        (PAPER.md section 6.2); a trace's trajectories are cut before their first round beyond it.
      num_agents: agents (trajectories of the generator; conversations with their sub-agents or
        Mooncake sessions of a trace, the first ones in file order).
      seed: generator seed (synthetic only).
      append_factor: Fig. 9 scaling of every round's append length, then truncation at the MAL
        (synthetic only; 1 = unscaled).
      gen_factor: Fig. 9 scaling of every round's generation length (synthetic only; 1 = unscaled).
      token_divisor: divide every token count by this (``workload.scale_tokens``; 1 = off) to make
        tiny workloads; for a trace it must divide the trace's block size (a file's ``block_size``, agentic;
        ``mooncake_block_tokens``).
      num_base: base trajectories of the generator (the paper: 500).
      source: ``synthetic`` (the paper's generator), ``agentic`` (Claude Code traces) or
        ``mooncake`` (sessions of a Mooncake trace).
      path: agentic: folder of ``*.json.gz`` / ``*.json`` traces ("" = ``../shared/data/agentic_traces``)
        or one trace file; mooncake: ``conversation`` (""), ``synthetic`` or a ``.jsonl`` file.
      subagents: agentic sub-agents: ``separate`` (own trajectories, starting with their
        conversation) or ``drop``.
      mooncake_block_tokens: mooncake: tokens per hash id (512 in Mooncake's traces; an agentic
        file gives its own ``block_size``).
      use_think_time: traces: issue each round its recorded think time after the previous one's KV
        is persisted, and start each sub-agent at its recorded offset from its conversation (the
        engine's ``arrivals.use_think_time`` waits the think times; it replays no sub-agents);
        default off, as the paper's evaluation issues the next round at once (PAPER.md section
        6.2). The generator records none; a rebuilt Mooncake session's think time is the gap
        between its requests' timestamps, which holds the original service time too.
      replay_timestamps: mooncake, offline studies: each session starts at its first request's
        recorded timestamp (counted from the earliest session's) instead of every agent at t = 0:
        an open-loop replay of the trace's session arrivals
        (:func:`~dualpath_jax.workload.recorded_arrivals_s`; with ``use_think_time`` each later
        request of a session waits its recorded gap after the previous one's KV is stored, so
        only the session starts are open-loop). The JCT then spans the replay; the latencies are
        the figures to read. Refused for a file with a named session whose first turn has no
        timestamp (:func:`~dualpath_jax.workload.untimed_session`), the generator (no
        timestamps), agentic traces (each file's times count from its own start) and the online
        studies (their arrivals are the APS they search).
      timestamp_speedup: with ``replay_timestamps``: divides the gaps between session starts
        (2 = the trace's sessions arrive twice as fast; the gaps within a session are kept).

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
    source: str = "synthetic"
    path: str = ""
    subagents: str = "separate"
    mooncake_block_tokens: int = MOONCAKE_BLOCK_TOKENS
    use_think_time: bool = False
    replay_timestamps: bool = False
    timestamp_speedup: float = 1.0

    def __post_init__(self):
        check_in("workload.mal", self.mal, MAL_TOKENS)
        check_positive("workload.num_agents", self.num_agents, integer=True)
        check_non_negative("workload.seed", self.seed, integer=True)
        check_positive("workload.append_factor", self.append_factor)
        check_positive("workload.gen_factor", self.gen_factor)
        check_positive("workload.token_divisor", self.token_divisor, integer=True)
        check_positive("workload.num_base", self.num_base, integer=True)
        check_at_most("workload.num_agents", self.num_agents, MAX_AGENTS, "the paper's largest run has 48K agents")
        check_at_most("workload.num_base", self.num_base, MAX_BASE, "the paper generates 500")
        check_in("workload.source", self.source, SOURCES)
        check_in("workload.subagents", self.subagents, ("separate", "drop"))
        check_positive("workload.mooncake_block_tokens", self.mooncake_block_tokens, integer=True)
        if self.source != "mooncake" and self.mooncake_block_tokens != MOONCAKE_BLOCK_TOKENS:
            raise ConfigError("workload.mooncake_block_tokens", f"applies to a mooncake trace; workload.source="
                              f"{self.source!r} (an agentic file gives its own block_size): leave it at "
                              f"{MOONCAKE_BLOCK_TOKENS}")
        if not isinstance(self.path, str):
            raise ConfigError("workload.path", f"must be a string (got {self.path!r})")
        for name in ("use_think_time", "replay_timestamps"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"workload.{name}", f"must be true or false (got {getattr(self, name)!r})")
        check_positive("workload.timestamp_speedup", self.timestamp_speedup)
        if self.timestamp_speedup != 1.0 and not self.replay_timestamps:
            raise ConfigError("workload.timestamp_speedup", "speeds up a replay of the trace's timestamps: set "
                              "workload.replay_timestamps=true, or leave it at 1")
        if self.replay_timestamps and self.source != "mooncake":
            why = ("the generator records no timestamps" if self.source == "synthetic" else
                   "an agentic trace's times count from its own file's start, so its conversations share no clock")
            raise ConfigError("workload.replay_timestamps", f"replays a Mooncake trace's session arrivals; "
                              f"workload.source={self.source!r}: {why}")
        if self.source == "synthetic":
            if self.use_think_time:
                raise ConfigError("workload.use_think_time", "replays a trace's recorded think times; the "
                                  "generator records none (set workload.source to agentic or mooncake)")
            if self.path:
                raise ConfigError("workload.path", f"names a trace; workload.source={self.source!r} generates the "
                                  f"workload (set workload.source to agentic or mooncake)")
            return
        for name in ("append_factor", "gen_factor"):
            if getattr(self, name) != 1.0:
                raise ConfigError(f"workload.{name}", f"scales the synthetic generator's rounds; a trace "
                                  f"(workload.source={self.source!r}) keeps its recorded lengths: set it to 1")
        if self.source == "mooncake" and self.mooncake_block_tokens % self.token_divisor:
            raise ConfigError("workload.token_divisor", f"must divide the mooncake trace's "
                              f"{self.mooncake_block_tokens}-token blocks (workload.mooncake_block_tokens; "
                              f"got {self.token_divisor})")  # (an agentic file gives its block size)
        where = Path(self.path) if self.path else agentic_dir()
        if self.source == "agentic" and not trace_files(where):
            raise ConfigError("workload.path", no_traces_message(where))
        if self.source == "mooncake":
            existing_mooncake_file(self.path, "workload.path")

    def build(self) -> TrajectorySet:
        """The trajectories (deterministic in the fields).

        Raises:
          ConfigError: naming ``workload.num_agents`` when a trace holds fewer agents that fit the MAL.
          TraceFormatError: a bad trace file.
        """
        if self.source != "synthetic":
            return _trace_workload(self)
        ts = paper_dataset(self.mal, self.num_agents, self.seed, num_base=self.num_base)
        if self.append_factor != 1.0 or self.gen_factor != 1.0:
            ts = scale_lengths(ts, self.append_factor, self.gen_factor, mal_tokens=MAL_TOKENS[self.mal])
        if self.token_divisor != 1:
            ts = scale_tokens(ts, self.token_divisor)
        return ts

    @property
    def label(self) -> str:
        """What the workload is, for log lines and titles: ``"MAL 64K"``, ``"agentic traces, MAL 64K"``,
        ``"mooncake trace synthetic, MAL 64K, tokens / 32, recorded think times, recorded arrivals x2"``."""
        if self.source == "synthetic":
            what = f"MAL {self.mal}"
        elif self.source == "mooncake":
            what = f"mooncake trace {Path(self.path).name if self.path else 'conversation'}, MAL {self.mal}"
        else:
            what = f"agentic traces{f' ({Path(self.path).name})' if self.path else ''}, MAL {self.mal}"
        return (what + (f", tokens / {self.token_divisor}" if self.token_divisor != 1 else "")
                + (", recorded think times" if self.use_think_time else "") + self._replay_label)

    @property
    def _replay_label(self) -> str:
        if not self.replay_timestamps:
            return ""
        return ", recorded arrivals" + (f" x{self.timestamp_speedup:g}" if self.timestamp_speedup != 1.0 else "")

    def replace(self, **changes) -> "WorkloadSpec":
        return dataclasses.replace(self, **changes)


def existing_mooncake_file(name: str, field: str) -> Path:
    """The Mooncake trace ``name`` names (:func:`~dualpath_jax.workload.mooncake_file`; "" =
    ``conversation``).

    Raises:
      ConfigError: naming ``field`` when there is no such file.
    """
    path = mooncake_file(name or "conversation")
    if not path.is_file():
        raise ConfigError(field, f"no Mooncake trace {str(path)!r} (conversation, synthetic or a .jsonl file)")
    return path


def check_recorded_arrivals(path, block_tokens: int, field: str) -> None:
    """Raise ConfigError naming ``field`` unless every session of the Mooncake file ``path`` has
    its arrival recorded (:func:`~dualpath_jax.workload.untimed_session`)."""
    sid = untimed_session(path, block_tokens=block_tokens)
    if sid is not None:
        raise ConfigError(field, f"replays recorded arrivals, but session {sid!r} of {path} has no timestamp on its "
                          f"first turn (its start would be its delay, off the trace's clock): leave it off for "
                          f"this file")


_REPLAY_FIX = "replay the trace's timestamps in an offline study (e.g. ablation, fig7)"


def replay_online_error(fix: str = _REPLAY_FIX) -> ConfigError:
    """The error of a run with Poisson arrivals asked to replay a trace's recorded arrivals too."""
    return ConfigError("workload.replay_timestamps", f"the online runs' arrivals are Poisson at the APS they search "
                       f"or set; {fix}")


def refuse_replay(wl: WorkloadSpec, fix: str = _REPLAY_FIX) -> None:
    """For the studies whose arrivals are Poisson at the APS they search or set: raise before any
    run when ``wl`` asks for the trace's recorded arrivals.

    Raises:
      ConfigError: naming ``workload.replay_timestamps``, saying ``fix``.
    """
    if wl.replay_timestamps:
        raise replay_online_error(fix)


@functools.lru_cache(maxsize=4)
def _trace_workload(spec: WorkloadSpec) -> TrajectorySet:
    """A trace workload, read once for the runs of every variant that share it."""
    try:
        ts = load_trace_agents(spec.source, spec.num_agents, path=spec.path, subagents=spec.subagents,
                               mal_tokens=MAL_TOKENS[spec.mal], mooncake_block_tokens=spec.mooncake_block_tokens)
    except NoAgentFits as e:
        raise ConfigError("workload.mal", f"{e}: a longer mal keeps more") from None
    if spec.replay_timestamps:
        check_recorded_arrivals(mooncake_file(spec.path or "conversation"), spec.mooncake_block_tokens,
                                "workload.replay_timestamps")
    agents = sum(p is None for p in ts.parent_ids)
    if agents < spec.num_agents:
        unit = ("an agentic trace file is one agent, its conversation (sub-agents count with it); "
                if spec.source == "agentic" else "")
        raise ConfigError("workload.num_agents", f"the {spec.source} trace {ts.source} holds only {agents} "
                          f"agent{'s' if agents != 1 else ''} within MAL {spec.mal} (got {spec.num_agents}; {unit}an "
                          f"agent whose first prompt alone is longer than the MAL is left out: a longer mal keeps "
                          f"more)")
    return scale_trace_tokens(ts, spec.token_divisor) if spec.token_divisor != 1 else ts


def scale_trace_tokens(ts: TrajectorySet, divisor: int, field: str = "workload.token_divisor") -> TrajectorySet:
    """:func:`~dualpath_jax.workload.scale_tokens` of a trace's trajectories.

    Raises:
      ConfigError: naming ``field`` when ``divisor`` does not divide a trajectory's hash block
        size (the trace's ``block_size``), with the file it came from, or when it equals it and a
        round's prompt is shorter than one block, naming the round.
    """
    bad = next((k for k, h in enumerate(ts.hashes) if h is not None and int(ts.block_tokens[k]) % int(divisor)),
               None)
    if bad is not None:
        raise ConfigError(field, f"must divide the {int(ts.block_tokens[bad])}-token hash blocks of "
                          f"{ts.agent_ids[bad]} (got {divisor})")
    try:
        return scale_tokens(ts, divisor)
    except ValueError as e:
        raise ConfigError(field, str(e)) from None


def workload_config_dict(*, exclude: tuple[str, ...] = (), **fields) -> ml_collections.ConfigDict:
    """A config file's ``workload`` block: every :class:`WorkloadSpec` field at its default but
    ``seed`` (the config's top-level ``seed``) and ``exclude`` (fields the study sets for each run,
    such as ``num_agents``), updated with ``fields``; so that every field can be overridden from
    the command line (``--config.workload.source=agentic``).

    Raises:
      ConfigError: naming ``workload.<field>`` for an unknown or excluded field.
    """
    out = {f.name: f.default for f in dataclasses.fields(WorkloadSpec) if f.name not in ("seed", *exclude)}
    for key, value in fields.items():
        if key not in out:
            raise ConfigError(f"workload.{key}", f"not a workload field of this config; known: {sorted(out)}")
        out[key] = value
    return ml_collections.ConfigDict(out)


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

    @property
    def capped_above_aps(self) -> float:
        """The rate (agents/s) above which a timed run's agents are capped by ``max_agents_per_run``,
        so its arrivals stop before ``horizon_s`` (inf for a bounded batch)."""
        return self.max_agents_per_run / self.horizon_s if self.horizon_s > 0 else math.inf

    def describe(self, wl: WorkloadSpec) -> str:
        """One line: what a run replays."""
        if self.horizon_s > 0:
            cap = (f"; at most {self.max_agents_per_run} agents, so above {self.capped_above_aps:g} APS the arrivals "
                   f"stop before the horizon" if self.max_agents_per_run < OnlineWindow.max_agents_per_run else "")
            return f"{self.horizon_s:g} s of arrivals of {wl.label} per run, measured after {self.warmup_s:g} s{cap}"
        return f"{wl.num_agents} agents of {wl.label} per run"
