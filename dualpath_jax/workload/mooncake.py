"""Loader for Mooncake JSON-lines traces (``../shared/data/mooncake/*.jsonl``).

A file may be gzip-compressed (``*.jsonl.gz``). One line is one request ``{"timestamp": ms,
"input_length": n, "output_length": n, "hash_ids": [...]}`` with one hash id per 512-token block
of the input (the last one possibly partial), ids global across the file and no session id
(``../shared/data/README.md``). Another block size is ``block_tokens``. Lengths written as whole
floats, hash ids of either 64-bit spelling, lists without the partial block's id and a leading
byte-order mark are read as :mod:`~dualpath_jax.workload.hashids` says.

**Session rule.** Requests are read in timestamp order (lines logged out of order are sorted,
stably); only full blocks' ids count (the partial block's id is dropped). A request *r* continues the
session of an earlier request *q* when

* q's full blocks (its first ``input_length // 512`` ids) are a prefix of r's ids and contain at
  least one block that q's own session introduced (first appeared in it): a prefix shared by many
  unrelated requests (a common system prompt: every request of ``conversation_trace.jsonl``
  starts with block 0) does not chain them, a session continues only through content it created;
* r's prompt can hold q's prompt and q's answer (``input_length >= q's input_length +
  output_length``): a turn of a conversation resends what came before it;
* r arrives after the session's latest request: a session has one request in flight, its next
  is issued once the previous has answered. Requests sharing a document or tool prefix and sent
  together (Mooncake's tool-agent and arXiv traces) are separate sessions, not one chain.

Among such q the one with the longest full-block prefix wins, ties going to the latest. Otherwise r
opens a new session. A session may branch (two requests continuing the same q): both stay in the
session, in time order, and the later one simply hits less. On the shared files this gives 8,363
sessions (1.44 requests each, longest 43) for ``conversation_trace.jsonl`` and 3,752 sessions
(1.06 each, longest 9) for ``synthetic_trace.jsonl``; the token-weighted hit rate within sessions
is 29.9% and 9.8%, below the files' global block reuse (about 37% and 64%) because prefixes shared
across sessions (system prompts, common documents) do not count as hits of a trajectory (hits
stay within a trajectory, PAPER.md section 2.5). Most of ``synthetic_trace.jsonl``'s reuse is
such sharing: few of its requests are long enough to resend an earlier one and its answer.

**Named sessions.** A file whose lines carry a ``session_id`` (the multi-turn form of the format
that AIPerf replays: docs.nvidia.com/aiperf, "Trace Replay with Mooncake Traces" and "Conversation
Context Mode") keeps those sessions, in order of their first request, instead of reconstructing
them; every line must then name one. As AIPerf replays such a file by default
(``deltas_without_responses``), a turn's ``input_length`` is its *new* tokens: its prompt is the
session's context so far (every earlier turn's input and answer), all of it cached, plus those
(a stream trajectory, :mod:`~dualpath_jax.workload.trajectory`, in its own token scope;
``hash_ids`` are optional there, absent or null; given, one per block of ``input_length``). A
session whose lines give whole prompts instead, told by their ``hash_ids`` (a turn's full-block ids
start with an earlier turn's and its prompt can hold that turn's prompt and answer, where a
delta's ids are its new blocks; :func:`_cumulative`), is read with prompt = ``input_length`` and
hits from the ids, in its own token scope.
``timestamp`` is optional; a turn's ``delay`` (milliseconds) is its think time, else the gap to
the previous turn's timestamp (0 without both). Lines are in file order unless every one has a
timestamp.

A rebuilt session maps to a :class:`~dualpath_jax.workload.trajectory.Trajectory` named
``"<file stem>/s<index>"``: prompt = ``input_length``; only full blocks are kept as hash ids (the
partial block's id is dropped: engines cache whole blocks only); hit = the longest run of leading
full-block ids seen in earlier rounds of the session, times 512, capped at prompt - 1; generated
= ``max(output_length, 1)`` (named sessions too); ``start_offset_s`` = the first request's
timestamp (a named session without one: its first turn's ``delay``, else 0);
``think_time_s`` = the gap to the previous request of the session (it includes the
original service time, which the trace does not record).

Token scope of rebuilt sessions: ``"file"`` (default) uses the file stem for every session,
matching the file's global hash ids; ``"session"`` isolates each session.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np

from dualpath_jax.workload.agentic import MAX_SECONDS, read_trace_bytes, trace_stem, unique_name
from dualpath_jax.workload.errors import TraceFormatError
from dualpath_jax.workload.hashids import full_block_ids, token_count, whole_int
from dualpath_jax.workload.trajectory import BlockHashes, Trajectory, TrajectorySet, hit_tokens_from_hashes

__all__ = ["load_mooncake_trace", "load_mooncake_traces", "reconstruct_sessions", "untimed_session",
           "MOONCAKE_BLOCK_TOKENS"]

MOONCAKE_BLOCK_TOKENS = 512


def _fail(path: Path, where: str, field: str, problem: str, value) -> None:
    raise TraceFormatError(path, where, field, problem, value, show_value=value is not None)


def _fitting_block_tokens(ids, in_tokens: int) -> list[int]:
    """Block sizes (powers of two up to ``in_tokens``, at most 2**20) for which ``ids`` count
    ``in_tokens``' full blocks or those and a partial last one."""
    if not isinstance(ids, list) or not ids:
        return []
    return [b for b in (2 ** k for k in range(21)) if b <= in_tokens
            and len(ids) in (in_tokens // b, -(-in_tokens // b))]


def _fail_ids(path: Path, where: str, ids, in_tokens: int, problem: str, value) -> None:
    fitting = _fitting_block_tokens(ids, in_tokens) if "ids but" in problem else []
    if fitting:  # a count that another block size explains: name the option
        problem += (f"; the ids fit {' or '.join(map(str, fitting))}-token blocks (the trace's block size is "
                    f"mooncake_block_tokens, workload.mooncake_block_tokens in a study config)")
    _fail(path, where, "hash_ids", problem, value)


def _milliseconds(obj: dict, field: str, path: Path, where: str) -> float | None:
    """``obj[field]`` as a finite number >= 0 of milliseconds, None when absent or null."""
    value = obj.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise TraceFormatError(path, where, field, "must be a finite number >= 0 (milliseconds)", value)
    if value >= 1e3 * MAX_SECONDS:
        raise TraceFormatError(path, where, field, "must be below 2**62 s (a time the simulator's clock and the "
                               "engine can wait for)", value)
    return float(value)


def _parse_lines(path: Path, block_tokens: int, name: str):
    """Validated rows (timestamp_ms or None, input_length, output_length, full-block ids ``int64[n]``,
    session id or None, delay_ms or None) of a JSON-lines file, plain or gzip-compressed (told by
    its first bytes, whatever its name), in timestamp order (a stable sort: lines logged out of
    order are taken in time order) when every line has a timestamp, else in file order."""
    raw = read_trace_bytes(path, gzipped=None)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TraceFormatError(path, "", "", f"not UTF-8 text ({e.reason})") from e
    rows = []
    named = unnamed = ""  # the first line with a session_id, the first without
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceFormatError(path, where, "", f"invalid JSON at column {e.colno} ({e.msg})") from e
        if not isinstance(obj, dict):
            raise TraceFormatError(path, where, "", "must be a JSON object (a JSON-lines file holds one request "
                                   "object per line)", type(obj).__name__)
        sid = obj.get("session_id")
        if sid is not None and (isinstance(sid, bool) or not isinstance(sid, (str, int)) or sid == ""):
            raise TraceFormatError(path, where, "session_id", "must be a non-empty string or an integer", sid)
        if sid is None:
            unnamed = unnamed or where
        else:
            named = named or where
        if named and unnamed:
            raise TraceFormatError(path, unnamed if sid is not None else where, "session_id",
                                   f"missing ({named} names its session: a file names every request's session "
                                   f"or none)")
        for field in ("timestamp", "input_length", "output_length", "hash_ids"):
            if field not in obj and not (field in ("timestamp", "hash_ids") and sid is not None):
                why = " (a request without a session_id needs one)" if field in ("timestamp", "hash_ids") else ""
                raise TraceFormatError(path, where, field, "missing required field" + why)
        ts = _milliseconds(obj, "timestamp", path, where)
        if ts is None and sid is None:
            raise TraceFormatError(path, where, "timestamp", "must be a finite number >= 0 (milliseconds)", None)
        delay = _milliseconds(obj, "delay", path, where)
        n_in, n_out = (token_count(obj[field], lo, functools.partial(_fail, path, where, field))
                       for field, lo in (("input_length", 1), ("output_length", 0)))

        if sid is not None and obj.get("hash_ids") is None:  # a named turn may leave them out
            ids = None
        else:
            ids = full_block_ids(obj["hash_ids"], n_in, block_tokens,
                                 functools.partial(_fail_ids, path, where, obj["hash_ids"], n_in),
                                 f"{name}:{where}")
        rows.append((ts, n_in, n_out, ids, sid, delay))
    if not rows:
        raise TraceFormatError(path, "", "", "empty file (no requests)")
    if all(r[0] is not None for r in rows):
        rows.sort(key=lambda r: r[0])
    return rows


def reconstruct_sessions(hash_ids: list[list[int]], input_lengths: list[int],
                         block_tokens: int = MOONCAKE_BLOCK_TOKENS, *, output_lengths: list[int] | None = None,
                         timestamps: list[float] | None = None) -> list[int]:
    """Session index of every request, by the rule in the module docstring (requests in time order).

    Args:
      hash_ids: per request, its block ids (the last block may be partial).
      input_lengths: per request, its prompt tokens.
      output_lengths: per request, its generated tokens (default: none known, 0 each).
      timestamps: per request, its arrival (any unit; default: all distinct, in list order).
    Returns:
      list[int] of session indices, numbered in order of first appearance.
    """
    n = len(hash_ids)
    outs = output_lengths if output_lengths is not None else [0] * n
    times = timestamps if timestamps is not None else list(range(n))
    origin: dict[int, int] = {}
    root: dict = {}  # trie node: {block id: [children dict, requests whose full blocks end here]}
    sessions: list[int] = []
    last: list = []  # per session, its latest request's timestamp
    num_sessions = 0
    for r, (ids, n_in) in enumerate(zip(hash_ids, input_lengths)):
        children, owners = root, []
        for b in ids:
            node = children.get(b)
            if node is None:
                break
            if node[1]:
                owners.append(node[1])
            children = node[0]
        # the longest full-block prefix first, the latest request first; r must be able to follow q:
        # its prompt holds q's prompt and q's answer, and it comes after the session's latest request
        # (a session has one request in flight: its next is issued once the previous has answered)
        best = next((q for group in reversed(owners) for q in reversed(group)
                     if n_in >= input_lengths[q] + outs[q] and times[r] > last[sessions[q]]), -1)
        if best >= 0:
            sess = sessions[best]
        else:
            sess = num_sessions
            num_sessions += 1
            last.append(times[r])
        sessions.append(sess)
        last[sess] = times[r]
        for b in ids:
            origin.setdefault(b, sess)
        full = ids[:n_in // block_tokens]
        if full and any(origin[b] == sess for b in full):
            children = root
            node = None
            for b in full:
                node = children.setdefault(b, [{}, []])
                children = node[0]
            node[1].append(r)
    return sessions


def load_mooncake_trace(path, *, token_scope: Literal["file", "session"] = "file",
                        block_tokens: int = MOONCAKE_BLOCK_TOKENS, name: str = "") -> list[Trajectory]:
    """One trajectory per session, ordered by their first request: the sessions the file names
    (``session_id``, module docstring), named ``"<name>/<session_id>"``, else those reconstructed,
    named ``"<name>/s<k>"`` (``name``: default the file's name less ``.gz`` and ``.jsonl``).

    Args:
      block_tokens: tokens per hash id (512 in Mooncake's traces).

    Raises:
      TraceFormatError: empty file, invalid JSON (line), a missing field, a negative or
        non-integer length, ``hash_ids`` not matching ``input_length``, a bad ``timestamp``,
        ``delay`` or ``session_id``, or a file that names some requests' sessions but not all.
      ValueError: unknown ``token_scope``, or ``block_tokens`` < 1.
    """
    if token_scope not in ("file", "session"):
        raise ValueError(f"token_scope: must be 'file' or 'session' (got {token_scope!r})")
    z = whole_int(block_tokens)
    if z is None or z < 1:
        raise ValueError(f"block_tokens: must be an integer >= 1 (got {block_tokens!r})")
    block_tokens = z
    path = Path(path)
    stem = name or trace_stem(path)
    rows = _parse_lines(path, block_tokens, stem)
    if rows[0][4] is not None:  # the file names the sessions: each turn a delta on its session's context
        return _named_sessions(rows, stem, path, block_tokens)
    sessions = reconstruct_sessions([r[3].tolist() for r in rows], [r[1] for r in rows], block_tokens,
                                    output_lengths=[r[2] for r in rows], timestamps=[r[0] for r in rows])
    members: dict[int, list[int]] = {}
    for i, s in enumerate(sessions):
        members.setdefault(s, []).append(i)
    out = []
    for s in sorted(members):
        idx = members[s]
        prompt = np.array([rows[i][1] for i in idx], dtype=np.int64)
        gen = np.maximum(np.array([rows[i][2] for i in idx], dtype=np.int64), 1)
        hashes = BlockHashes.from_rounds([rows[i][3] for i in idx])
        hit = hit_tokens_from_hashes(hashes, prompt, block_tokens)
        think_ms, start_ms = _think_ms([rows[i] for i in idx])
        agent_id = f"{stem}/s{s:05d}"
        out.append(Trajectory(
            agent_id=agent_id, num_append_tokens=prompt - hit, num_gen_tokens=gen, num_hit_tokens=hit,
            think_time_s=think_ms / 1000.0,
            token_scope=f"mooncake:{stem}" if token_scope == "file" else agent_id,
            block_tokens=block_tokens, hashes=hashes, start_offset_s=start_ms / 1000.0, source=str(path)))
    return out


def _never(problem: str, value) -> None:  # (an empty id list is always valid)
    raise AssertionError(problem)


def _cumulative(turns: list) -> bool:
    """Whether a named session's lines give whole prompts, not deltas (a delta's ids are its new
    blocks only): some turn *continues* an earlier one (its full-block ids start with that turn's,
    none of them empty, and its prompt can hold that turn's prompt and answer, the rebuilt
    sessions' rule), and every later turn continues one, or, with no ids to say otherwise (none of
    its own, or none before it), is at least the previous prompt and answer long."""
    ins, outs, ids = [r[1] for r in turns], [r[2] for r in turns], [r[3] for r in turns]
    given = [i is not None and len(i) > 0 for i in ids]
    evidence = False
    for k in range(1, len(turns)):
        if given[k] and any(given[j] and ins[k] >= ins[j] + outs[j] and len(ids[k]) >= len(ids[j])
                            and bool(np.array_equal(ids[k][:len(ids[j])], ids[j])) for j in range(k)):
            evidence = True
            continue
        if given[k] and any(given[:k]):  # ids that continue no earlier turn: deltas
            return False
        if ins[k] < ins[k - 1] + outs[k - 1]:
            return False
    return evidence


def _named_sessions(rows: list, stem: str, path: Path, block_tokens: int) -> list[Trajectory]:
    """One trajectory per named session (module docstring): a stream, each turn's prompt the
    session's context so far, all of it cached, plus its ``input_length`` new tokens; or, when the
    lines give whole prompts (:func:`_cumulative`), prompts and hits as a rebuilt session's."""
    given: dict = {}  # (an id 1 and an id "1" are two sessions)
    for r in rows:
        given.setdefault(r[4], []).append(r)
    out: list[Trajectory] = []
    names: set[str] = set()
    for sid, turns in given.items():
        append = np.array([r[1] for r in turns], dtype=np.int64)
        gen = np.maximum(np.array([r[2] for r in turns], dtype=np.int64), 1)
        think_ms, start_ms = _think_ms(turns)
        if (think_ms < 0).any():
            k = int(np.flatnonzero(think_ms < 0)[0])
            raise TraceFormatError(path, f"session {sid!r}, turn {k}", "timestamp", "earlier than the turn before it "
                                   "(a session's turns are in file order when not every line has a timestamp)",
                                   turns[k][0])
        agent_id = unique_name(f"{stem}/{sid}", names)
        names.add(agent_id)
        hashes = None
        hit = np.concatenate([[0], np.cumsum(append + gen)[:-1]]).astype(np.int64)
        if _cumulative(turns):  # whole prompts: hits from the ids, as in a rebuilt session
            hashes = BlockHashes.from_rounds([  # a turn without ids: its blocks are new (none is a hit)
                r[3] if r[3] is not None else full_block_ids([], r[1], block_tokens, _never, f"{stem}:{sid}:{k}")
                for k, r in enumerate(turns)])
            hit = hit_tokens_from_hashes(hashes, append, block_tokens)
            append = append - hit
        out.append(Trajectory(
            agent_id=agent_id, num_append_tokens=append, num_gen_tokens=gen, num_hit_tokens=hit,
            think_time_s=think_ms / 1000.0, token_scope=agent_id, block_tokens=block_tokens, hashes=hashes,
            start_offset_s=start_ms / 1000.0, source=str(path)))
    return out


def untimed_session(path, *, block_tokens: int = MOONCAKE_BLOCK_TOKENS):
    """The id of the first named session (``session_id``) of the Mooncake file ``path`` whose first
    turn has no ``timestamp``, or None: every session's arrival is recorded (a file without
    session ids needs a timestamp on every line). Such a session's ``start_offset_s`` is its
    first turn's ``delay`` or 0, not a time on the trace's clock, so a replay of the recorded
    arrivals (:func:`~dualpath_jax.workload.arrivals.recorded_arrivals_s`) refuses the file.

    Raises:
      TraceFormatError: as :func:`load_mooncake_trace`.
    """
    path = Path(path)
    seen: set = set()
    for ts, _, _, _, sid, _ in _parse_lines(path, int(block_tokens), trace_stem(path)):
        if sid is not None and (type(sid), sid) not in seen:
            seen.add((type(sid), sid))
            if ts is None:
                return sid
    return None


def _think_ms(rows: list) -> tuple[np.ndarray, float]:
    """A session's think times ``f64[rounds]`` and start, in milliseconds: a turn's ``delay`` where
    given, else the gap between its timestamp and the previous turn's (0 without both); the start
    is the first turn's timestamp, else its delay, else 0."""
    think = np.zeros(len(rows))
    for k in range(1, len(rows)):
        ts, prev, delay = rows[k][0], rows[k - 1][0], rows[k][5]
        think[k] = delay if delay is not None else (ts - prev if ts is not None and prev is not None else 0.0)
    first = rows[0]
    return think, first[0] if first[0] is not None else (first[5] or 0.0)


def load_mooncake_traces(paths=None, *, token_scope: Literal["file", "session"] = "file",
                         block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> TrajectorySet:
    """Sessions of one or more Mooncake files in one set (default: ``conversation_trace.jsonl``);
    ``block_tokens`` as :func:`load_mooncake_trace`."""
    if paths is None:
        from dualpath_jax.workload.sources import mooncake_file
        paths = [mooncake_file("conversation")]
    if isinstance(paths, (str, Path)):
        paths = [paths]
    trajectories, stems = [], set()
    for p in paths:
        stem = unique_name(trace_stem(p), stems)  # two files of one name (in two folders) stay apart
        stems.add(stem)
        trajectories.extend(load_mooncake_trace(p, token_scope=token_scope, block_tokens=block_tokens, name=stem))
    return TrajectorySet.from_trajectories(trajectories, source=",".join(str(p) for p in paths))
