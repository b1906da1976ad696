"""Loader for the agentic Claude Code traces (``../shared/data/agentic_traces/*.json.gz``).

File format: ``../shared/data/README.md``. One JSON file (gzip-compressed, ``*.json.gz``, or
plain, ``*.json``: the upstream kv-cache-tester repository ships them plain) is one conversation
whose ``requests`` are its rounds (``type`` ``"n"`` or ``"s"``, treated alike) and nested
sub-agent conversations (``type`` ``"subagent"`` with their own ``requests``; a sub-agent with an
empty ``requests`` list, e.g. one launched asynchronously whose requests were not recorded, has
nothing to replay and is left out).

Mapping to :class:`~dualpath_jax.workload.trajectory.Trajectory` (one per conversation):

* Round i: prompt = ``in``; hit = ``min(L_i * block_size, in - 1)`` with L_i the longest run of
  leading ``hash_ids`` already seen in earlier rounds of the same trajectory (README rule);
  append = ``in - hit``; generated = ``max(out, 1)``: a request with ``out = 0`` (25 in the set)
  still produces the first token its prefill computes, so it becomes a 1-token generation. A
  request with ``in = 0`` (recorded without input tokens) has no prompt to replay: it is left out,
  with a :class:`~dualpath_jax.workload.errors.TraceSkipWarning` per file.
* ``think_time_s``: the request's ``think_time``; when missing, the gap ``t_i - t_{i-1}`` minus
  the previous request's ``api_time`` (or the plain gap if that is missing too), clipped at 0.
  Round 0 gets 0: a trajectory's first round is issued at its arrival.
* **Sub-agents become their own trajectories** (``subagents="separate"``, the default), named
  ``"<trace id>/<agent_id>"``, with ``parent_id`` = the trace id. ``start_offset_s`` is a
  trajectory's first round in the conversation's clock: the root's first ``t``; a sub-agent's
  launch (its entry's ``t`` in its parent's clock; its own requests' ``t`` count from there)
  plus its first ``t``. They are separate because they
  run concurrently with their parent and with each other (several ``Explore`` agents are often
  launched together) and share no cached prefix with the parent's requests (their prompts start
  from their own system prompt); hits stay within a trajectory (paper A.4). ``"drop"`` ignores
  them.
* Names are unique within a load: a sub-agent whose name repeats a sibling's (or any name of an
  earlier file of the load) gets ``~2``, ``~3`` appended, and a file whose ``id`` (or, without
  one, its name less ``.json.gz``/``.json``) repeats an earlier file's name of the same load is
  named ``"<id>@<file name>"``, so that its trajectories, their parents and (``hash_id_scope:
  "local"``) their token scope stay its own.
* ``token_scope="trace"`` (default): every trajectory of a file uses the trace id as its token
  scope, as the file's hash ids are scoped to the conversation (sibling sub-agents share a
  system prompt, hence identical tokens, and an engine with one global prefix cache can find
  those cross-trajectory hits). ``"trajectory"`` gives every trajectory its own scope, so the
  engine's hits equal the workload's within-trajectory hits exactly.

Requests are taken in ``t`` order (a stable sort: a recorder may log concurrent requests out of
order). A file without ``block_size`` has 64-token blocks (the recorder's default). Lengths
written as whole floats, hash ids of either 64-bit spelling, an id for a partial last block and
an empty ``hash_ids`` are read as :mod:`~dualpath_jax.workload.hashids` says.

Every problem raises :class:`~dualpath_jax.workload.errors.TraceFormatError` naming the file,
the request (``requests[3]`` or ``requests[7].requests[2]``), the field and the value.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dualpath_jax.workload.errors import TraceFormatError, TraceSkipWarning
from dualpath_jax.workload.hashids import full_block_ids, token_count
from dualpath_jax.workload.trajectory import BlockHashes, Trajectory, TrajectorySet, hit_tokens_from_hashes

__all__ = ["load_agentic_trace", "load_agentic_traces", "read_json_gz", "read_trace_bytes", "no_traces_message",
           "trace_files", "trace_stem", "unique_name"]

_ROUND_TYPES = ("n", "s")
DEFAULT_BLOCK_SIZE = 64  # tokens per hash id when a file gives no block_size (kv-cache-tester's)
MAX_SECONDS = 2.0**62  # bound of a time field (t, think_time, api_time): as the simulator's per-round times
_SCOPES = ("local", "global")


def trace_stem(path) -> str:
    """A trace file's name less ``.gz`` and then ``.json``/``.jsonl`` (``run.1.json.gz`` -> ``run.1``)."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[:-len(suffix)]
            if suffix != ".gz":
                break
    return name


def unique_name(base: str, taken) -> str:
    """``base``, or ``base~2``, ``base~3``, ... the first not in ``taken``."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}~{k}"
    return name


def trace_files(directory) -> list[Path]:
    """The agentic trace files of ``directory`` in sorted name order: every ``*.json.gz`` and
    ``*.json`` file, one per stem (``a.json.gz`` over ``a.json``, as ``gzip -k`` leaves both);
    ``[directory]`` when it names a file (one trace, whatever its name); an empty list when it
    does not exist."""
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        return []
    by_stem: dict[str, Path] = {}
    for f in sorted(directory.glob("*.json.gz")) + sorted(directory.glob("*.json")):
        if f.is_file():
            by_stem.setdefault(trace_stem(f), f)
    return sorted(by_stem.values())


def no_traces_message(directory) -> str:
    """Why ``directory`` yields no agentic traces: ``"<dir>: no *.json.gz or *.json trace files"``
    (or ``"<dir>: neither a folder nor a trace file"``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory}: neither a folder nor a trace file" + (
            " (it does not exist)" if not directory.exists() else "")
    return f"{directory}: no *.json.gz or *.json trace files"


def read_trace_bytes(path: Path, *, gzipped: bool | None) -> bytes:
    """A trace file's bytes, decompressed when ``gzipped`` (None: when its first bytes are gzip's
    magic number, whatever its name).

    Raises:
      TraceFormatError: naming the file: unreadable, or a truncated or corrupt gzip stream.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TraceFormatError(path, "", "", f"cannot read file ({e.strerror or e})") from e
    if gzipped is None:
        gzipped = raw[:2] == b"\x1f\x8b"
    if not gzipped:
        return raw
    if not raw:
        raise TraceFormatError(path, "", "", "empty file (0 bytes)")
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise TraceFormatError(path, "", "", f"truncated or corrupt gzip stream ({e})") from e


def read_json_gz(path: Path, *, gzipped: bool | None = True) -> Any:
    """Parse one JSON file, gzip-compressed (``gzipped``; None: when its bytes say so); every
    failure is a TraceFormatError naming the file."""
    text = read_trace_bytes(path, gzipped=gzipped)
    if not text:
        raise TraceFormatError(path, "", "", "empty file (0 bytes)" if gzipped is False or not path.stat().st_size
                               else "empty file (no JSON document inside the gzip stream)")
    if not text.strip():
        raise TraceFormatError(path, "", "", "empty file (no JSON document)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        lines = " (a file of one JSON object per line is a Mooncake trace: workload.source=mooncake)" \
            if e.msg == "Extra data" and e.lineno > 1 else ""
        raise TraceFormatError(path, f"line {e.lineno} column {e.colno}", "", f"invalid JSON ({e.msg}){lines}") from e
    except UnicodeDecodeError as e:
        raise TraceFormatError(path, "", "", f"not UTF-8 text ({e.reason})") from e
    except RecursionError:  # JSON nested deeper than the parser's stack (sub-agents in sub-agents...)
        raise TraceFormatError(path, "", "", f"JSON nested too deeply to parse (objects and lists beyond about "
                               f"{sys.getrecursionlimit()} levels)") from None


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


class _Ctx:
    def __init__(self, path: Path):
        self.path = path
        self.trace_id = path.name  # (the file's id once read: names the ids of unrecorded blocks)
        self.skipped: list[str] = []  # requests left out: recorded with no input tokens

    def fail(self, where, field, problem, value=None, show_value=True):
        raise TraceFormatError(self.path, where, field, problem, value, show_value=show_value)

    def require(self, obj: dict, where: str, field: str):
        if field not in obj:
            self.fail(where, field, "missing required field", show_value=False)
        return obj[field]

    def int_at_least(self, obj, where, field, lo, default=None):
        v = obj.get(field, default) if default is not None else self.require(obj, where, field)
        return token_count(v, lo, lambda problem, value: self.fail(where, field, problem, value))

    def number_at_least_zero(self, obj, where, field, required=True):
        if field not in obj and not required:
            return None
        v = self.require(obj, where, field)
        if v is None and not required:
            return None
        if not _is_number(v):
            self.fail(where, field, "must be a finite number", v)
        if v < 0:
            self.fail(where, field, "must be >= 0", v)
        if v >= MAX_SECONDS:
            self.fail(where, field, "must be below 2**62 s (a time the simulator's clock and the engine can "
                      "wait for)", v)
        return float(v)


def _hash_array(ctx: _Ctx, where: str, value, in_tokens: int, block_size: int) -> np.ndarray:
    return full_block_ids(value, in_tokens, block_size, lambda problem, v: ctx.fail(where, "hash_ids", problem, v),
                          f"{ctx.trace_id}:{where}")


def _walk(ctx: _Ctx, requests, where_prefix: str, agent_id: str, parent_id: str | None,
          clock_s: float, block_size: int, scope: str, subagents: str, out: list, names: set) -> None:
    """Append the trajectory of one request list (then its sub-agents') to ``out``; ``names``
    holds the names taken so far (the load's and this file's: a repeat gets ``~2``, ``~3``);
    ``clock_s``: the conversation's time at this list's ``t = 0`` (a sub-agent's ``t`` count from
    its launch)."""
    if not isinstance(requests, list) or not requests:
        ctx.fail(where_prefix.rstrip(".") or "(top level)", "requests", "must be a non-empty list",
                 None if isinstance(requests, list) else type(requests).__name__)
    ins, outs, thinks, round_t, hash_rounds = [], [], [], [], []
    children = []
    prev_api = None
    times = []
    for i, req in enumerate(requests):
        where = f"{where_prefix}requests[{i}]"
        if not isinstance(req, dict):
            ctx.fail(where, "", "must be a JSON object", type(req).__name__)
        times.append(ctx.number_at_least_zero(req, where, "t"))
    # in time order (a stable sort: a recorder may log concurrent requests out of order)
    for i in sorted(range(len(requests)), key=times.__getitem__):
        req, t = requests[i], times[i]
        where = f"{where_prefix}requests[{i}]"
        kind = ctx.require(req, where, "type")
        if kind not in _ROUND_TYPES + ("subagent",):
            ctx.fail(where, "type", "must be 'n', 's' or 'subagent'", kind)
        if kind == "subagent":
            sub_name = req.get("agent_id", f"subagent{i}")
            if not isinstance(sub_name, str) or not sub_name:
                ctx.fail(where, "agent_id", "must be a non-empty string", sub_name)
            sub_requests = ctx.require(req, where, "requests")
            if sub_requests == []:  # launched, nothing recorded: nothing to replay
                continue
            name = unique_name(f"{agent_id}/{sub_name}", names)
            names.add(name)
            children.append((sub_requests, f"{where}.", name, clock_s + t))
            continue
        in_tokens = ctx.int_at_least(req, where, "in", 0)
        out_tokens = ctx.int_at_least(req, where, "out", 0)
        ids = _hash_array(ctx, where, ctx.require(req, where, "hash_ids"), in_tokens, block_size)
        if in_tokens == 0:  # recorded without input tokens: no prompt to replay (counted, then warned)
            ctx.skipped.append(where)
            continue
        hash_rounds.append(ids)
        think = ctx.number_at_least_zero(req, where, "think_time", required=False)
        api = ctx.number_at_least_zero(req, where, "api_time", required=False)
        if not ins:
            think = 0.0
        elif think is None:
            think = max(0.0, t - round_t[-1] - (prev_api or 0.0))
        ins.append(in_tokens)
        outs.append(out_tokens)
        thinks.append(think)
        round_t.append(t)
        prev_api = api
    if not ins and parent_id is None:
        blank = sum(w.startswith(where_prefix) and w.count("requests[") == 1 for w in ctx.skipped)
        why = (f"its {blank} were all recorded with in = 0" if blank
               else "only sub-agents, which start from their conversation")
        ctx.fail("(top level)", "requests", f"holds no 'n'/'s' requests of the conversation itself to replay ({why})",
                 show_value=False)
    if ins:
        prompt = np.asarray(ins, dtype=np.int64)
        hashes = BlockHashes.from_rounds(hash_rounds)
        hit = hit_tokens_from_hashes(hashes, prompt, block_size)
        out.append(Trajectory(
            agent_id=agent_id, num_append_tokens=prompt - hit,
            num_gen_tokens=np.maximum(np.asarray(outs, dtype=np.int64), 1), num_hit_tokens=hit,
            think_time_s=np.asarray(thinks, dtype=np.float64),
            token_scope=scope if scope else agent_id, block_tokens=block_size, hashes=hashes,
            start_offset_s=clock_s + round_t[0], parent_id=parent_id, source=str(ctx.path)))
    parent = agent_id if ins else parent_id  # a sub-agent of only sub-agents: theirs is its parent
    for sub_requests, sub_where, sub_id, sub_start in children:
        if subagents == "separate":
            _walk(ctx, sub_requests, sub_where, sub_id, parent, sub_start, block_size, scope, subagents, out, names)
        else:  # dropped, but checked as the simulator would (a bad file is bad whoever reads it)
            skipped = len(ctx.skipped)
            _walk(ctx, sub_requests, sub_where, sub_id, parent, sub_start, block_size, scope, subagents, [], names)
            del ctx.skipped[skipped:]  # their requests without input are dropped with them, not warned about


def load_agentic_trace(path, *, subagents: Literal["separate", "drop"] = "separate",
                       token_scope: Literal["trace", "trajectory"] = "trace",
                       taken: set[str] | None = None) -> list[Trajectory]:
    """Trajectories of one trace file (gzip or plain JSON, told by its bytes): the conversation
    first, then its sub-agents depth-first.

    Args:
      taken: names already used by earlier files of the same load: a trace id among them makes
        this file's id ``"<id>@<file name>"`` (module docstring); this file's names are added.

    Raises:
      TraceFormatError: unreadable / empty / truncated gzip / invalid JSON (with line and column),
        a ``hash_id_scope`` other than ``"local"``/``"global"``, a conversation with no requests of
        its own, or a request with a missing field, a negative or non-integer length, or a
        ``hash_ids`` list that does not match ``in``.
      ValueError: an unknown ``subagents`` or ``token_scope`` option.

    Warns:
      TraceSkipWarning: requests recorded with ``in`` = 0 (no input tokens: nothing to prefill) are
        left out, with their count and the first one's location.
    """
    if subagents not in ("separate", "drop"):
        raise ValueError(f"subagents: must be 'separate' or 'drop' (got {subagents!r})")
    if token_scope not in ("trace", "trajectory"):
        raise ValueError(f"token_scope: must be 'trace' or 'trajectory' (got {token_scope!r})")
    path = Path(path)
    ctx = _Ctx(path)
    doc = read_json_gz(path, gzipped=None)
    if not isinstance(doc, dict):
        ctx.fail("(top level)", "", "must be a JSON object", type(doc).__name__)
    trace_id = doc.get("id", trace_stem(path))
    if not isinstance(trace_id, str) or not trace_id:
        ctx.fail("(top level)", "id", "must be a non-empty string", trace_id)
    if taken is not None and trace_id in taken:
        trace_id = unique_name(f"{trace_id}@{path.name}", taken)
    ctx.trace_id = trace_id
    block_size = ctx.int_at_least(doc, "(top level)", "block_size", 1, default=DEFAULT_BLOCK_SIZE)
    scope_name = doc.get("hash_id_scope", "local")
    if scope_name not in _SCOPES:
        ctx.fail("(top level)", "hash_id_scope", "must be 'local' (ids scoped to the conversation) or 'global'",
                 scope_name)
    scope = trace_id if scope_name == "local" else f"global:{scope_name}"
    out: list[Trajectory] = []
    try:
        _walk(ctx, ctx.require(doc, "(top level)", "requests"), "", trace_id, None, 0.0, block_size,
              scope if token_scope == "trace" else "", subagents, out, {trace_id, *(taken or ())})
    except RecursionError:
        raise TraceFormatError(path, "", "", f"sub-agents nested too deeply (Python's recursion limit, "
                               f"{sys.getrecursionlimit()}, ends the walk)") from None
    if ctx.skipped:
        warnings.warn(f"{path}: {ctx.skipped[0]}: in: {len(ctx.skipped)} request(s) recorded with no input tokens "
                      f"left out (no prompt to replay)", TraceSkipWarning, stacklevel=2)
    if taken is not None:
        taken.update(t.agent_id for t in out)
    return out


def _named_file(directory: Path, name: str) -> Path:
    """``directory / name`` for a file name; for a stem, ``<stem>.json.gz``, else ``<stem>.json``
    when only that exists."""
    if name.endswith((".json.gz", ".json")):
        return directory / name
    packed, plain = directory / f"{name}.json.gz", directory / f"{name}.json"
    return plain if plain.exists() and not packed.exists() else packed


def load_agentic_traces(directory=None, *, names: Sequence[str] | None = None, limit: int | None = None,
                        subagents: Literal["separate", "drop"] = "separate",
                        token_scope: Literal["trace", "trajectory"] = "trace") -> TrajectorySet:
    """Load many trace files into one :class:`TrajectorySet` (files in sorted name order).

    Args:
      directory: folder of ``*.json.gz`` / ``*.json`` files, or one trace file
        (:func:`trace_files`); default ``agentic_dir()`` (``../shared/data``).
      names: file names (or stems, e.g. ``"trace_0002"``: ``<stem>.json.gz``, else
        ``<stem>.json``) to load instead of every file.
      limit: load only the first ``limit`` files (after sorting).
    Raises:
      TraceFormatError: as :func:`load_agentic_trace`; FileNotFoundError: no files found;
      ValueError: a negative ``limit``, or ``names`` with a path that is one trace file.
    """
    if limit is not None and int(limit) < 0:
        raise ValueError(f"limit: must be >= 0 (got {limit})")
    if directory is None:
        from dualpath_jax.workload.sources import agentic_dir
        directory = agentic_dir()
    directory = Path(directory)
    if names is not None and directory.is_file():
        raise ValueError(f"names: {directory} is one trace file; names pick files of a folder")
    if names is not None:
        files = [_named_file(directory, n) for n in names]
    else:
        files = trace_files(directory)
    if limit is not None:
        files = files[:int(limit)]
    if not files:
        raise FileNotFoundError(no_traces_message(directory))
    trajectories: list[Trajectory] = []
    taken: set[str] = set()
    for f in files:
        trajectories.extend(load_agentic_trace(f, subagents=subagents, token_scope=token_scope, taken=taken))
    return TrajectorySet.from_trajectories(trajectories, source=str(directory))
