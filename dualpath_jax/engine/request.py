"""A request's state as it moves through the runtime (controller, readers, PE, DE, persist).

One :class:`RequestState` per agent round. The controller creates it and owns placement; each
stage fills in its part (times are seconds since the run started, ``time.perf_counter`` based).
Mutable by design: it is the hand-off record between threads, each field written by one stage
before the next stage is told (through a queue) to look at it.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np

from dualpath_jax.sched import SchedRequest
from dualpath_jax.store import BlockFailure
from dualpath_jax.transfer import BufferPool, Claim, Lease

__all__ = ["RequestState", "RequestFailed"]


class RequestFailed(RuntimeError):
    """A stage gave up on a request; ``cause`` is recorded as the request's error."""

    def __init__(self, cause: str):
        self.cause = cause
        super().__init__(cause)


@dataclasses.dataclass(eq=False)
class RequestState:
    """Everything the runtime knows about one request (one round of one agent).

    Token bookkeeping: ``prompt i32[S]``; ``keys`` the prefix-hash keys of its complete blocks;
    ``lookup_blocks`` blocks the store held at submit; ``hit_blocks`` blocks actually read (a
    read failure truncates the hit, the rest is recomputed); ``de_blocks`` leading hit blocks
    read on the DE side (``sched.ReadPlan``).

    Generation is teacher-forced (a faithful agentic replay): ``forced i32[G]`` are the round's
    reference output tokens (``workload.gen_token_ids``); decode step ``t`` feeds ``forced[t - 1]``
    and ``generated`` records the model's greedy choice at every position (checked against a
    no-cache recompute). For a stream trajectory these are the tokens the next round's prompt
    continues with, so the KV the DE persists is exactly what that prompt hits. A trace (hashed)
    round's next prompt is defined by its hash ids, which do not record the output, so there the
    decode blocks are persisted but not hit (the trajectory's hits do not count them either).

    ``attempt`` counts runs of the same round (1 = first); a failed attempt that is run again
    is kept with ``retried`` set and is not one of the run's requests.
    """

    rid: int
    agent: int
    round_index: int
    trajectory_id: str
    prompt: np.ndarray
    keys: list
    gen_target: int
    lookup_blocks: int
    block_tokens: int = 64
    forced: np.ndarray | None = None
    attempt: int = 1
    retried: bool = False
    sched: SchedRequest | None = None
    pe: int = -1
    de: int = -1
    side: str = "none"
    de_blocks: int = 0
    hit_blocks: int = 0
    # reads (per side: Full Blocks uint8[L, Z, Bt] held by the side's buffer lease)
    pending_reads: int = 0
    pe_hit: list = dataclasses.field(default_factory=list)
    de_hit: list = dataclasses.field(default_factory=list)
    pe_lease: Lease | None = None
    de_read_lease: Lease | None = None
    read_bytes_pe: int = 0
    read_bytes_de: int = 0
    read_failures: list = dataclasses.field(default_factory=list)
    # PE -> DE hand-off: per layer, segments (start_token, k [n, K, H], v [n, K, H]) in the DE buffer
    de_send_lease: Lease | None = None
    de_send_claim: Claim | None = None  # its place in the DE buffer's queue until de_send_lease is granted
    segments: list = dataclasses.field(default_factory=list)
    pending_sends: int = 0
    prefill_done: bool = False
    handed_off: bool = False
    # generation
    generated: list = dataclasses.field(default_factory=list)
    gaps: list = dataclasses.field(default_factory=list)
    # persist
    pending_persists: int = 0
    blocks_persisted: int = 0
    persist_failures: list = dataclasses.field(default_factory=list)
    finished: bool = False
    # controller bookkeeping (controller thread only)
    finish_seen_s: float = math.nan  # when the controller saw the request finish / its KV persisted
    persist_seen_s: float = math.nan
    pe_released: bool = False
    de_released: bool = False
    # timeline (arrival_s: when the round was first issued; attempt_s: when this attempt was)
    arrival_s: float = math.nan
    attempt_s: float = math.nan
    placed_s: float = math.nan
    read_done_s: float = math.nan
    prefill_start_s: float = math.nan
    prefill_finish_s: float = math.nan
    first_token_s: float = math.nan
    decode_start_s: float = math.nan
    second_token_s: float = math.nan
    finish_s: float = math.nan
    persisted_s: float = math.nan
    error: str = ""
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @classmethod
    def not_run(cls, rid: int, agent: int, round_index: int, trajectory, block_tokens: int, now_s: float,
                cause: str) -> RequestState:
        """A round that is reported, never issued: agent ``agent``'s round ``round_index`` of
        ``trajectory`` (a :class:`~dualpath_jax.workload.Trajectory`), failed at ``now_s``
        (seconds) with ``error = "not run: " + cause``, no prompt and no work."""
        st = cls(rid, agent, round_index, trajectory.agent_id, np.zeros(0, np.int32), [],
                 int(trajectory.num_gen_tokens[round_index]), 0, block_tokens)
        st.arrival_s = st.finish_s = now_s
        st.error = f"not run: {cause}"
        return st

    @property
    def prompt_tokens(self) -> int:
        return int(len(self.prompt))

    @property
    def hit_tokens(self) -> int:
        return self.hit_blocks * self.block_tokens

    def release_buffers(self) -> None:
        """Drop every DRAM lease the request still holds, and its place in a buffer's queue
        (idempotent)."""
        for lease in (self.pe_lease, self.de_read_lease, self.de_send_lease, self.de_send_claim):
            if lease is not None:
                lease.release()
        self.pe_hit, self.de_hit, self.segments = [], [], []

    def claim_send_space(self, pool: BufferPool, num_bytes: int) -> Lease | None:
        """The hand-off's DE buffer space, without waiting: the first call queues for it in
        ``pool``'s FIFO (``de_send_claim``), every call returns the lease once the pool granted
        it (then once only), else None. A failure of the request gives up its place.

        Raises:
          ValueError: ``num_bytes`` negative or above ``pool``'s capacity.
        """
        with self.lock:  # one claim per request, whoever asks at once (a node serves calls concurrently)
            claim = self.de_send_claim
            if claim is None:
                if self.error:  # failed: its release_buffers has run or runs without this claim
                    return None
                claim = self.de_send_claim = pool.claim(num_bytes)
        return claim.take()

    def attach_lease(self, attr: str, lease: Lease | Claim | None) -> bool:
        """Store ``lease`` as ``self.<attr>``; if the request has failed, also release it at once
        (the failure's ``release_buffers`` may have run before the lease was stored). Returns
        whether the request is still live."""
        with self.lock:
            setattr(self, attr, lease)
            live = not self.error
        if not live and lease is not None:
            lease.release()
        return live

    def fail(self, cause: str, now_s: float) -> bool:
        """Mark failed (first cause wins); returns True if this call set the error."""
        with self.lock:
            if self.error or self.finished:
                return False
            self.error = cause
            self.finish_s = now_s
        self.release_buffers()
        return True


def failure_text(failures: list[BlockFailure]) -> str:
    """``"cause x n, ..."`` summary of block failures."""
    counts: dict[str, int] = {}
    for f in failures:
        counts[f.cause.value] = counts.get(f.cause.value, 0) + 1
    return ", ".join(f"{k} x {v}" for k, v in sorted(counts.items()))
