"""The record vocabulary the real engine and the simulator both write, and metric functions read.

* :class:`RequestRecord`  one round of one trajectory (a request) with its timeline
  ``arrival_s <= prefill_start_s <= prefill_finish_s <= first_token_s <= second_token_s <= finish_s``,
  token counts, the chosen engines and the KV read side. Times are seconds on the run's clock
  (wall clock in the engine, virtual time in the simulator).
* :class:`TransferRecord` bytes moved over one link during ``[start_s, finish_s]``; a transfer
  that crosses several links (storage -> SNIC -> DRAM -> CNIC -> HBM) writes one record per link
  it loads. ``path`` labels the data path (e.g. ``"pe_read"``, ``"de_read"``, ``"pe_to_de"``,
  ``"h2d"``, ``"persist"``) for bytes-per-path accounting.
* :class:`AttentionRecord` one engine's attention-layer time in one forward step of its group
  (every engine of the group writes one per step, 0.0 when idle), for the Fig. 14 balance metric.

Lists of records convert to columnar tables (:class:`RequestTable`, :class:`TransferTable`) that
the vectorised metric functions use; a writer with many records can build the tables directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "READ_SIDES",
    "RequestRecord",
    "RequestTable",
    "TransferRecord",
    "TransferTable",
    "AttentionRecord",
    "as_request_table",
    "as_transfer_table",
]

READ_SIDES = ("pe", "de", "split", "none")
"""Where a request's hit KV was read from storage: PE side, DE side, both (``split`` loading), or no
read (no hit, oracle); the scheduler's read plans (``dualpath_jax.sched.types.READ_SIDES``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished (or failed) request: round ``round_index`` of trajectory ``trajectory_id``.

    Fields: times in seconds (``second_token_s`` is NaN when fewer than 2 tokens were generated);
    ``num_gen_tokens``, ``num_hit_tokens``, ``num_append_tokens`` token counts; ``pe``/``de``
    engine indices (-1 when not applicable); ``read_side`` in :data:`READ_SIDES`;
    ``read_bytes`` hit-KV bytes read from storage for this request; ``error`` empty on success,
    else the cause (failed requests keep the times they reached, NaN for the rest).

    Raises:
      ValueError: naming the field, for a timeline out of order, negative counts or an unknown
        read side (checked only for successful requests' times).
    """

    trajectory_id: str
    round_index: int
    arrival_s: float
    prefill_start_s: float
    prefill_finish_s: float
    first_token_s: float
    second_token_s: float
    finish_s: float
    num_gen_tokens: int
    num_hit_tokens: int = 0
    num_append_tokens: int = 0
    pe: int = -1
    de: int = -1
    read_side: str = "none"
    read_bytes: int = 0
    error: str = ""

    def __post_init__(self):
        for name in ("round_index", "num_gen_tokens", "num_hit_tokens", "num_append_tokens", "read_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"RequestRecord.{name}: must be >= 0 (got {getattr(self, name)})")
        if self.read_side not in READ_SIDES:
            raise ValueError(f"RequestRecord.read_side: must be one of {list(READ_SIDES)} (got {self.read_side!r})")
        if self.error:
            return
        if self.num_gen_tokens < 1:
            raise ValueError("RequestRecord.num_gen_tokens: a successful request generates >= 1 token")
        if self.num_gen_tokens >= 2 and math.isnan(self.second_token_s):
            raise ValueError("RequestRecord.second_token_s: required when num_gen_tokens >= 2")
        order = ["arrival_s", "prefill_start_s", "prefill_finish_s", "first_token_s"]
        if self.num_gen_tokens >= 2:
            order.append("second_token_s")
        order.append("finish_s")
        for prev, cur in zip(order, order[1:]):
            a, b = getattr(self, prev), getattr(self, cur)
            if not (math.isfinite(b) and b >= a):
                raise ValueError(f"RequestRecord.{cur}: must be finite and >= {prev} ({b} < {a}) for "
                                 f"{self.trajectory_id} round {self.round_index}")


_REQ_FLOAT = ("arrival_s", "prefill_start_s", "prefill_finish_s", "first_token_s", "second_token_s", "finish_s")
_REQ_INT = ("round_index", "num_gen_tokens", "num_hit_tokens", "num_append_tokens", "pe", "de", "read_bytes")
_REQ_STR = ("trajectory_id", "read_side", "error")


@dataclasses.dataclass(frozen=True, eq=False)
class RequestTable:
    """Columnar :class:`RequestRecord` fields: one array of length B per field (f64 times, i64 counts,
    object strings). Build it with :meth:`from_records` or directly from arrays."""

    trajectory_id: np.ndarray
    round_index: np.ndarray
    arrival_s: np.ndarray
    prefill_start_s: np.ndarray
    prefill_finish_s: np.ndarray
    first_token_s: np.ndarray
    second_token_s: np.ndarray
    finish_s: np.ndarray
    num_gen_tokens: np.ndarray
    num_hit_tokens: np.ndarray
    num_append_tokens: np.ndarray
    pe: np.ndarray
    de: np.ndarray
    read_side: np.ndarray
    read_bytes: np.ndarray
    error: np.ndarray

    def __post_init__(self):
        n = len(self.arrival_s)
        for f in dataclasses.fields(self):
            kind = np.float64 if f.name in _REQ_FLOAT else np.int64 if f.name in _REQ_INT else object
            arr = np.asarray(getattr(self, f.name), dtype=kind)
            if arr.shape != (n,):
                raise ValueError(f"RequestTable.{f.name}: shape {arr.shape} != ({n},)")
            object.__setattr__(self, f.name, arr)

    @classmethod
    def from_records(cls, records: Sequence[RequestRecord]) -> "RequestTable":
        return cls(**{f.name: [getattr(r, f.name) for r in records] for f in dataclasses.fields(cls)})

    def to_records(self) -> list[RequestRecord]:
        names = [f.name for f in dataclasses.fields(self)]
        cols = [getattr(self, n).tolist() for n in names]
        return [RequestRecord(**dict(zip(names, row))) for row in zip(*cols)]

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def ok(self) -> np.ndarray:
        """bool[B]: requests without an error."""
        return self.error == ""

    def where(self, mask: np.ndarray) -> "RequestTable":
        return RequestTable(**{f.name: getattr(self, f.name)[mask] for f in dataclasses.fields(self)})


def as_request_table(records) -> RequestTable:
    """A :class:`RequestTable` from a table or a sequence of :class:`RequestRecord`."""
    return records if isinstance(records, RequestTable) else RequestTable.from_records(list(records))


@dataclasses.dataclass(frozen=True, slots=True)
class TransferRecord:
    """``num_bytes`` moved over ``link`` between ``start_s`` and ``finish_s`` (uniform rate assumed).

    ``link`` names one link instance, e.g. ``"snic/node0"``, ``"cnic/node1/gpu3"``, ``"h2d/pe2"``;
    ``path`` the data path; ``trajectory_id``/``round_index`` the request it served (optional).

    Raises:
      ValueError: negative bytes, non-finite times or ``finish_s < start_s``.
    """

    link: str
    start_s: float
    finish_s: float
    num_bytes: int
    path: str = ""
    trajectory_id: str = ""
    round_index: int = -1

    def __post_init__(self):
        if self.num_bytes < 0:
            raise ValueError(f"TransferRecord.num_bytes: must be >= 0 (got {self.num_bytes}) on {self.link}")
        if not (math.isfinite(self.start_s) and math.isfinite(self.finish_s) and self.finish_s >= self.start_s):
            raise ValueError(f"TransferRecord.finish_s: must be finite and >= start_s "
                             f"({self.finish_s} < {self.start_s}) on {self.link}")


@dataclasses.dataclass(frozen=True, eq=False)
class TransferTable:
    """Columnar transfers: ``link``/``path`` object[N], ``start_s``/``finish_s`` f64[N], ``num_bytes`` f64[N]."""

    link: np.ndarray
    start_s: np.ndarray
    finish_s: np.ndarray
    num_bytes: np.ndarray
    path: np.ndarray

    def __post_init__(self):
        n = len(self.start_s)
        for name in ("start_s", "finish_s", "num_bytes"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        for name in ("link", "path"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=object))
        for f in dataclasses.fields(self):
            if getattr(self, f.name).shape != (n,):
                raise ValueError(f"TransferTable.{f.name}: shape {getattr(self, f.name).shape} != ({n},)")

    @classmethod
    def from_records(cls, records: Sequence) -> "TransferTable":
        """From :class:`TransferRecord` objects or any records with ``link``, ``start_s``, ``finish_s``
        and ``num_bytes`` (e.g. :class:`dualpath_jax.transfer.TransferRecord`, whose ``tag``
        serves as the path label). Records with an ``outcome`` other than ``"ok"`` moved no data
        and are skipped."""
        kept = [r for r in records if getattr(r, "outcome", "ok") == "ok"]
        path = [getattr(r, "path", None) for r in kept]
        path = [p if p is not None else getattr(r, "tag", "") for p, r in zip(path, kept)]
        return cls(link=[r.link for r in kept], start_s=[r.start_s for r in kept],
                   finish_s=[r.finish_s for r in kept], num_bytes=[r.num_bytes for r in kept], path=path)

    def __len__(self) -> int:
        return len(self.start_s)


def as_transfer_table(transfers) -> TransferTable:
    """A :class:`TransferTable` from a table or a sequence of transfer records
    (see :meth:`TransferTable.from_records`)."""
    return transfers if isinstance(transfers, TransferTable) else TransferTable.from_records(list(transfers))


@dataclasses.dataclass(frozen=True, slots=True)
class AttentionRecord:
    """Attention-layer time ``attention_s`` of engine ``engine`` in forward step ``step`` of
    engine group ``group`` (PAPER.md section 5.5; Fig. 14)."""

    group: str
    step: int
    engine: int
    attention_s: float

    def __post_init__(self):
        if not (math.isfinite(self.attention_s) and self.attention_s >= 0):
            raise ValueError(f"AttentionRecord.attention_s: must be finite and >= 0 (got {self.attention_s})")
