"""Intra-engine batch formation for PEs (PAPER.md section 5.5).

Each request in a forward batch is a pair ``(cached, bsz)``: ``cached`` tokens whose KV exists
(storage hits plus chunks computed by earlier forwards) and ``bsz`` tokens computed now. An
:class:`AttentionTimeModel` maps a pair to attention-layer seconds (theoretical FLOPs times a
profiled rate, as in PrefillOnly / Sarathi-Serve). :func:`form_batch` packs the FIFO under the
compute quota; the first request that does not fit whole is chunked to the largest ``bsz`` that
fits (binary search) and packing stops there. :func:`form_batch_fifo` is the quota-free baseline
(whole requests under a token cap, chunking only a head request that alone exceeds it).

The compute quota (``SchedKnobs.compute_quota_s``, 0.300 s in the paper) bounds the estimated
attention seconds of one whole forward, all L layers of it, in the simulator and the engine alike:
a quota per layer would let a batch run about L x 0.3 s, longer than the beta (5 s) of work a PE
queues, so it would never bind.

Both honour ``max_kv_tokens``, the KV the PE can hold on device for the batch: with ``full``
prefill all L layers of every request's ``cached + bsz`` tokens, with ``layerwise`` only the
layers in flight (so the runtime passes an L/depth times larger budget).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from mypy_extensions import mypyc_attr

__all__ = ["BatchItem", "TimeModel", "AttentionTimeModel", "form_batch", "form_batch_fifo"]


class TimeModel(Protocol):
    """Anything with ``time_s(cached, bsz) -> seconds``: the profiled attention-time relation, the
    seconds of one forward over all layers (what the compute quota bounds).

    A model may also offer ``max_bsz_within(cached, seconds) -> float``, an estimate of the largest
    ``bsz`` that fits ``seconds``; :func:`form_batch` then checks that guess instead of bisecting
    from scratch. The result is the same either way (the guess is verified with ``time_s``).
    """

    def time_s(self, cached: int, bsz: int) -> float: ...


class BatchItem(NamedTuple):
    """A request's prefill state: ``cached`` tokens with KV, ``remaining`` tokens to compute.

    An immutable record (a named tuple: runtimes build millions of them).
    """

    request_id: int
    cached: int
    remaining: int


@mypyc_attr(native_class=False)  # a plain Python class when compiled: picklable, checked by its own code
@dataclasses.dataclass(frozen=True)
class AttentionTimeModel:
    """A profiled forward of ``layers`` layers for ``bsz`` new tokens over ``cached`` tokens.

    Per layer, ``seconds_per_token * bsz`` (the per-token work: projections, MLP) plus
    ``seconds_per_flop * flops_per_key * sum_{i<bsz}(cached+i+1)`` (attention); ``flops_per_key``
    is one layer's attention FLOPs per (query, key) pair (``dualpath_jax.model.cost``), the two
    rates come from profiling. :meth:`time_s` (the :class:`TimeModel`, what the compute quota
    bounds) is the attention term of all layers, as the simulator's ``ComputeModel.time_s``;
    :meth:`forward_s` the whole forward; :meth:`layer_s` one layer of it.
    """

    flops_per_key: float
    seconds_per_flop: float
    seconds_per_token: float = 0.0
    layers: int = 1

    def __post_init__(self):
        if not (isinstance(self.layers, int) and self.layers >= 1):
            raise ValueError(f"layers: must be an int >= 1 (got {self.layers!r})")

    def time_s(self, cached: float, bsz: float) -> float:
        """Attention seconds of the forward, all layers (the compute quota's quantity)."""
        keys = (2 * cached + bsz + 1) * bsz / 2.0
        return self.layers * self.seconds_per_flop * self.flops_per_key * keys

    def forward_s(self, cached: float, bsz: float) -> float:
        """Seconds of the whole forward: the attention and the per-token work of every layer."""
        return self.layers * self.seconds_per_token * bsz + self.time_s(cached, bsz)

    def layer_s(self, cached: float, bsz: float) -> float:
        """Seconds of one layer: ``forward_s / layers``."""
        return self.forward_s(cached, bsz) / self.layers


def _largest_chunk(item: BatchItem, fits, guess: float | None = None) -> int:
    """Largest ``bsz`` in ``[0, item.remaining]`` with ``fits(bsz)`` (``fits`` is monotone)."""
    lo, hi = 0, item.remaining  # invariant: lo fits (0 trivially), answer in [lo, hi]
    if guess is not None and guess == guess:  # a NaN guess is ignored
        g = int(max(min(guess, hi), 0))
        if fits(g):
            if g == hi or not fits(g + 1):
                return g
            lo = g + 1
        else:
            hi = g - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def form_batch(fifo: Iterable[BatchItem], quota_s: float, model: TimeModel, *,
               max_kv_tokens: float = float("inf")) -> list[BatchItem]:
    """Pack ``fifo`` into one forward batch under ``quota_s`` seconds of attention.

    ``fifo`` is consumed head first and only up to the first item that does not fit whole, so a
    runtime may pass a lazy iterator over a long queue.

    Returns:
      ``BatchItem(request_id, cached, bsz)`` entries (``remaining`` holds the chunk size ``bsz``).
      A non-empty ``fifo`` always yields at least one token of progress when its head's cached KV
      fits ``max_kv_tokens``.

    Raises:
      ValueError: the head request's cached KV plus one new token exceeds ``max_kv_tokens`` (it can
        never run), or an item reached has no token left to compute (``remaining`` < 1).
    """
    batch: list[BatchItem] = []
    used_s, used_kv = 0.0, 0.0
    estimate = getattr(model, "max_bsz_within", None)
    time_s = model.time_s
    for item in fifo:
        cached, remaining = item.cached, item.remaining
        if remaining < 1:  # (a chunk of it would compute a token it does not have)
            raise ValueError(f"request {item.request_id}: remaining={remaining} tokens: a queued request has at "
                             f"least one token left to compute")
        t = time_s(cached, remaining)
        if used_s + t <= quota_s and used_kv + cached + remaining <= max_kv_tokens:
            batch.append(item)
            used_s += t
            used_kv += cached + remaining
            continue

        def fits(bsz: int) -> bool:
            return used_s + time_s(cached, bsz) <= quota_s and used_kv + cached + bsz <= max_kv_tokens
        guess = None
        if estimate is not None:
            guess = min(estimate(item.cached, quota_s - used_s), max_kv_tokens - used_kv - item.cached)
        bsz = _largest_chunk(item, fits, guess)
        if not batch and bsz == 0:
            if item.cached + 1 > max_kv_tokens:
                raise ValueError(f"request {item.request_id}: cached={item.cached} tokens plus one new token "
                                 f"exceed max_kv_tokens={max_kv_tokens} (it can never run)")
            bsz = 1  # progress guarantee: the quota is a target, not a wall
        if bsz > 0:
            batch.append(BatchItem(item.request_id, item.cached, bsz))
        break
    return batch


def form_batch_fifo(fifo: Iterable[BatchItem], *, max_tokens: float, max_kv_tokens: float = float("inf")
                    ) -> list[BatchItem]:
    """Whole requests in FIFO order while new tokens <= ``max_tokens`` and KV <= ``max_kv_tokens``.

    A request with more than ``max_tokens`` tokens to compute can never run whole, so it is
    chunked: alone at the head to the cap, and behind other requests to the room they leave
    (8,700 + 9,000 tokens under an 8,192 cap take three forwards, 8,192 / 508 + 7,684 / 1,316,
    not four). A request that fits a forward of its own waits for the next one instead.

    Raises:
      ValueError: the head request's cached KV plus one new token exceeds ``max_kv_tokens``.
    """
    batch: list[BatchItem] = []
    tokens, kv = 0.0, 0.0
    for item in fifo:
        if tokens + item.remaining <= max_tokens and kv + item.cached + item.remaining <= max_kv_tokens:
            batch.append(item)
            tokens += item.remaining
            kv += item.cached + item.remaining
            continue
        room = int(min(max_tokens - tokens, max_kv_tokens - kv - item.cached))
        if not batch:
            if room < 1:
                raise ValueError(f"request {item.request_id}: cached={item.cached} tokens plus one new token "
                                 f"exceed max_kv_tokens={max_kv_tokens} (it can never run)")
            batch.append(BatchItem(item.request_id, item.cached, min(room, item.remaining)))
        elif item.remaining > max_tokens and room >= 1:  # chunked anyway: fill this forward
            batch.append(BatchItem(item.request_id, item.cached, room))
        break
    return batch
