"""What one simulator run returns (:class:`SimResult`), kept apart from the event loop.

A plain Python module (``setup.py`` compiles ``cluster.py``, not this): results pickle, copy and
take any attributes a study adds, in either build.
"""

from __future__ import annotations

import array
import dataclasses
import math

import numpy as np

__all__ = ["SimResult", "collect_result", "request_columns", "stall_report"]


@dataclasses.dataclass
class SimResult:
    """Per-request columns (numpy arrays, one entry per request) and per-resource counters.

    The numeric columns of ``requests`` and the ``snic_samples`` arrays are writable views of the
    finished simulator's typed arrays (no copy)."""

    requests: dict[str, np.ndarray]
    """Per request, in issue order (``[requests]``): ``agent``, ``round``, ``hit_tokens``, ``append_tokens``
    (after the whole-block rounding), ``gen_tokens``, ``pe``, ``de`` (engine ids), ``de_blocks``,
    ``side``, the times ``arrival_s`` ... ``persisted_s`` (virtual seconds) and ``read_bytes_pe`` /
    ``read_bytes_de``."""
    links: dict[str, dict[str, float]]
    """Per bandwidth server (``snic_read[n]``, ``snic_write[n]``, ``dram[n]`` by node; ``cnic_in[e]``,
    ``cnic_out[e]`` by engine): ``bytes`` carried and ``busy_s``, the seconds they occupied it."""
    attention_ratio: np.ndarray  # per PE-group forward: max/avg attention seconds across members
    snic_samples: dict[str, np.ndarray]
    """Per node's SNIC read server ``f64[reads, 3]``: (start s, finish s, bytes) of each storage read, in issue
    order."""
    events: int
    """Events the run processed."""
    end_s: float
    """JCT: the last request's finish (virtual seconds). A whole run finishes every request or raises;
    one stopped by ``max_events`` gives the last finish so far (the stop time if none finished)."""
    units: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Per PE unit (an EP group with ``ep_sync``, else an engine): ``pe_busy_s`` (seconds in forwards),
    ``pe_forwards`` and ``pe_batch_requests`` (request chunks over its forwards)."""
    attention_s: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))
    """Per PE-group forward ``f64[forwards, 2]``: (max, mean) attention seconds across the group's engines;
    ``sum(max) / sum(mean)`` is the share of attention time lost to imbalance, weighted by time."""
    attention_members: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.int64))
    """Per PE-group forward ``i64[forwards, 2]`` (rows as in ``attention_s``): engines with attention work in
    the forward, and engines in the group. With ``k`` of ``n`` members equally busy, Max/Avg is ``n / k``."""
    attention_start_s: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    """Per PE-group forward ``f64[forwards]`` (rows as in ``attention_s``): when it started (virtual
    seconds, non-decreasing)."""


_INT_COLUMNS = ("agent", "round", "hit_tokens", "append_tokens", "gen_tokens")
_ENGINE_COLUMNS = ("pe", "de", "de_blocks")
_TIME_COLUMNS = ("arrival_s", "placed_s", "read_done_s", "prefill_start_s", "first_token_s", "decode_start_s",
                 "second_token_s", "finish_s", "persisted_s", "read_bytes_pe", "read_bytes_de")


def request_columns(total: int) -> dict[str, array.array | list]:
    """The simulator's per-request columns (:attr:`SimResult.requests`) for ``total`` requests:
    typed arrays (a stored value is a C number, not a Python object kept alive for the whole run),
    ints 0, engine ids -1, times and bytes NaN; ``side`` a list of strings."""
    columns: dict[str, array.array | list] = {k: array.array("q", [0]) * total for k in _INT_COLUMNS}
    columns.update({k: array.array("q", [-1]) * total for k in _ENGINE_COLUMNS})
    columns.update({k: array.array("d", [math.nan]) * total for k in _TIME_COLUMNS})
    columns["side"] = [""] * total
    return columns


def stall_report(sim) -> str:
    """Why a :class:`~dualpath_jax.sim.cluster.Simulator` run stopped with requests unfinished:
    nothing left to happen, yet work waits (e.g. a custom scheduler that never places a request,
    or a read that never gets buffer)."""
    R, n = sim.R, sim._issued
    finish = np.frombuffer(R["finish_s"], np.float64, n)
    stuck = np.flatnonzero(np.isnan(finish))
    waiting = sim.sched.waiting()
    reads = sum(len(w) for w in sim.buffers.wait)
    ready = sum(len(q) for q in sim.ready)
    first = int(stuck[0]) if stuck.size else None
    detail = ""
    if first is not None:
        if R["pe"][first] < 0:
            stage = "waits for a PE"
        elif R["de"][first] < 0:
            stage = "waits for a DE"
        elif sim._reads[first] > 0:
            stage = "waits for its reads"
        elif math.isnan(R["first_token_s"][first]):
            stage = "waits for prefill"
        else:
            stage = "waits for decode"
        detail = (f"; the first, request {first} (agents[{R['agent'][first]}] round {R['round'][first]}, "
                  f"{R['hit_tokens'][first]} hit tokens), {stage}")
    return (f"simulation stalled at t = {sim.now:.3f} s: no event left but {sim._total - sim._completed} of "
            f"{sim._total} requests unfinished ({n - stuck.size} finished of {n} issued; waiting for a PE: "
            f"{waiting['pe']}, for a DE: {waiting['de']}; reads waiting for DRAM buffer: {reads}; ready on "
            f"PEs: {ready}){detail}. Scheduler: {type(sim.sched).__name__}")


def collect_result(sim) -> SimResult:
    """The :class:`SimResult` of a finished :class:`~dualpath_jax.sim.cluster.Simulator` run; the
    numeric request columns are views of the run's typed arrays (writable, no copy)."""
    n = sim._issued
    requests = {k: (np.asarray(v[:n]) if k == "side" else
                    np.frombuffer(v, np.float64 if v.typecode == "d" else np.int64, n))
                for k, v in sim.R.items()}
    links = {s.name: {"bytes": s.bytes, "busy_s": s.busy_s}
             for s in sim.snic_r + sim.snic_w + sim.dram + sim.cnic_in + sim.cnic_out}
    units = {"pe_busy_s": np.asarray(sim.pe_busy_s), "pe_forwards": np.asarray(sim.pe_forwards),
             "pe_batch_requests": np.asarray(sim.pe_batch_requests)}
    finish = requests.get("finish_s", np.zeros(0))
    end_s = float(np.nanmax(finish)) if finish.size and not np.all(np.isnan(finish)) else sim.now
    attention = np.asarray(sim.attention_s, np.float64).reshape(-1, 2)
    return SimResult(requests=requests, links=links, attention_ratio=attention[:, 0] / attention[:, 1],
                     snic_samples={s.name: np.frombuffer(a, np.float64).reshape(-1, 3)
                                   for s, a in zip(sim.snic_r, sim._snic_samples_of)},
                     events=sim.events, end_s=end_s, units=units, attention_s=attention,
                     attention_members=np.asarray(sim.attention_members, np.int64).reshape(-1, 2),
                     attention_start_s=np.asarray(sim.attention_start_s, np.float64))
