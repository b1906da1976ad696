"""What one simulator run returns (:class:`SimResult`), kept apart from the event loop.

A plain Python module (``setup.py`` compiles ``cluster.py``, not this): results pickle, copy and
take any attributes a study adds, in either build.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SimResult"]


@dataclasses.dataclass
class SimResult:
    """Per-request columns (numpy arrays, one entry per request) and per-resource counters.

    The numeric columns of ``requests`` and the ``snic_samples`` arrays are writable views of the
    finished simulator's typed arrays (no copy)."""

    requests: dict[str, np.ndarray]
    """Per request, in issue order (``[N]``): ``agent``, ``round``, ``hit_tokens``, ``append_tokens``
    (after the whole-block rounding), ``gen_tokens``, ``pe``, ``de`` (engine ids), ``de_blocks``,
    ``side``, the times ``arrival_s`` ... ``persisted_s`` (virtual seconds) and ``read_bytes_pe`` /
    ``read_bytes_de``."""
    links: dict[str, dict[str, float]]
    """Per bandwidth server (``snic_read[n]``, ``snic_write[n]``, ``dram[n]`` by node; ``cnic_in[e]``,
    ``cnic_out[e]`` by engine): ``bytes`` carried and ``busy_s``, the seconds they occupied it."""
    attention_ratio: np.ndarray  # per PE-group forward: max/avg attention seconds across members
    snic_samples: dict[str, np.ndarray]
    """Per node's SNIC read server ``f64[N, 3]``: (start s, finish s, bytes) of each storage read, in issue order."""
    events: int
    """Events the run processed."""
    end_s: float
    """JCT: the last request's finish (virtual seconds). A whole run finishes every request or raises;
    one stopped by ``max_events`` gives the last finish so far (the stop time if none finished)."""
    units: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Per PE unit (a group with ``ep_sync``, else an engine): ``pe_busy_s`` (seconds in forwards),
    ``pe_forwards`` and ``pe_batch_requests`` (request chunks over its forwards)."""
    attention_s: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))
    """Per PE-group forward ``f64[F, 2]``: (max, mean) attention seconds across the group's engines;
    ``sum(max) / sum(mean)`` is the share of attention time lost to imbalance, weighted by time."""
    attention_members: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.int64))
    """Per PE-group forward ``i64[F, 2]`` (rows as in ``attention_s``): engines with attention work in
    the forward, and engines in the group. With ``k`` of ``n`` members equally busy, Max/Avg is ``n / k``."""
