"""Which storage NIC reads a request's hit KV (PAPER.md section 5.4).

* ``pe_read`` (Basic): always the PE node's SNIC.
* ``dual`` under the ``dualpath`` policy: the side whose node read queue (pending tokens) is
  shorter. PAPER.md 5.4 gives no rule for equal queues, which are common while the SNICs are
  under half loaded (both queues empty); a fixed side there would send every such read to one
  SNIC. A tie goes to the node that this run's plans have so far given fewer hit tokens to read,
  so that idle periods spread the reads over both SNICs; an exact tie of both (the first read)
  goes to the DE side, whose path moves fewer bytes (the hit KV does not go on from the PE to the
  DE buffer, PAPER.md 2.3-2.4).
* ``dual`` under ``round_robin`` (the "+Dual-path loading" ablation; the paper does not say how
  it picks): a load-oblivious rule, alternating PE, DE, PE, ... per request.
* ``split`` (the paper's stated future work): one request's blocks are read from both sides so
  that both node queues end equal: the DE side takes ``x = clip((q_pe - q_de + H) / 2, 0, H)`` of
  the H hit tokens, rounded to whole blocks (if the queues are equal, half each).
* ``oracle``: no read at all.
"""

from __future__ import annotations

import numbers
import operator
from typing import NamedTuple, SupportsIndex

from dualpath_jax.sched.errors import PolicyError, PolicyTypeError

__all__ = ["ReadPlan", "SIDES_OF_LOADING", "check_read_plan", "shorter_queue_side", "split_de_blocks"]


class ReadPlan(NamedTuple):
    """How a request's hit blocks are read (an immutable record).

    Attributes:
      side: ``"pe"``, ``"de"``, ``"split"`` or ``"none"`` (oracle).
      de_blocks: number of leading hit blocks read on the DE side (the rest on the PE side); for
        ``side="de"`` all blocks, for ``"pe"``/``"none"`` 0.
    """

    side: str
    de_blocks: int = 0


SIDES_OF_LOADING = {"pe_read": ("pe",), "dual": ("pe", "de"), "split": ("pe", "de", "split"), "oracle": ("none",)}
"""The read sides each loading mode allows for a request with hit blocks (with none: ``"none"``)."""


def check_read_plan(plan, hit_blocks: SupportsIndex, loading: str, *, who: str = "read_plan") -> None:
    """Check a (possibly user-written) policy's plan against the request and the loading mode.

    A valid plan reads every hit block exactly once: ``0 <= de_blocks <= hit_blocks`` and ``side``
    is what ``de_blocks`` implies (``"pe"``: 0, ``"de"``: all, ``"split"``: some) and is allowed by
    ``loading`` (:data:`SIDES_OF_LOADING`); ``"none"`` (0 blocks) under ``oracle``. With no hit
    blocks, ``"none"`` or any side of the mode with 0 blocks. ``who`` names the policy in the error.

    Raises:
      PolicyTypeError: (a ``TypeError``) ``de_blocks`` is not an int, or ``plan`` not a pair.
      PolicyError: (a ``ValueError``) any other inconsistency (the message names the plan and the
        allowed sides).
    """
    try:
        side, de_blocks = plan
    except (TypeError, ValueError):
        raise PolicyTypeError(f"{who}: must return a ReadPlan(side, de_blocks) (got {plan!r})") from None
    n_hit = operator.index(hit_blocks)  # numpy ints too, as an int
    if type(de_blocks) is not int and (isinstance(de_blocks, bool) or not isinstance(de_blocks, numbers.Integral)):
        raise PolicyTypeError(f"{who}: de_blocks must be an int (got {de_blocks!r})")
    de_blocks = int(de_blocks)  # numpy ints compare to numpy bools
    if loading == "oracle":
        allowed: tuple = ("none",)
        want = "none" if de_blocks == 0 else None
    elif n_hit == 0:  # nothing to read: any side of the mode reads its 0 blocks
        allowed = ("none",) + SIDES_OF_LOADING.get(loading, ())
        want = side if de_blocks == 0 and side in allowed else "none" if de_blocks == 0 else None
    else:
        allowed = SIDES_OF_LOADING.get(loading, ())
        want = ("pe" if de_blocks == 0 else "de" if de_blocks == n_hit else "split"
                if 0 <= de_blocks <= n_hit else None)
    if side == want and side in allowed:
        return
    if want is None:
        why = f"de_blocks={de_blocks} is outside [0, {n_hit if allowed != ('none',) else 0}]"
    elif side != want:
        why = f"de_blocks={de_blocks} of {n_hit} means side {want!r}, not {side!r}"
    else:
        why = f"side {side!r} is not one of {', '.join(map(repr, allowed))}"
    raise PolicyError(f"{who}: {tuple(plan)!r} for {n_hit} hit blocks under loading={loading!r}: {why} (a plan "
                     f"reads each hit block once; this mode allows {', '.join(map(repr, allowed))})")


def shorter_queue_side(pe_queue_tokens: float, de_queue_tokens: float, pe_read_tokens: float = 0.0,
                       de_read_tokens: float = 0.0) -> str:
    """The side whose node read queue (tokens) is shorter (PAPER.md 5.4).

    Equal queues go to the node with fewer tokens read so far (``pe_read_tokens``,
    ``de_read_tokens``: what earlier plans gave each node), and equal totals to ``"de"`` (module
    docstring).
    """
    if pe_queue_tokens != de_queue_tokens:
        return "pe" if pe_queue_tokens < de_queue_tokens else "de"
    return "pe" if pe_read_tokens < de_read_tokens else "de"


def split_de_blocks(hit_blocks: SupportsIndex, block_tokens: SupportsIndex, pe_queue_tokens: float,
                    de_queue_tokens: float) -> int:
    """Blocks to read on the DE side so both queues end as equal as whole blocks allow.

    An extension beyond the paper, which leaves splitting a request's read over both sides as
    future work (PAPER.md sections 5.4 and 7). With ``H = hit_blocks * block_tokens`` hit tokens,
    the DE side takes ``x = clip((pe_queue_tokens - de_queue_tokens + H) / 2, 0, H)`` tokens (then
    ``q_pe + H - x == q_de + x`` when unclipped), returned as ``round(x / block_tokens)`` blocks
    (Python's round, ties to even), clipped to ``[0, hit_blocks]``.

    Args:
      hit_blocks: the request's hit blocks.
      block_tokens: Z, tokens per block.
      pe_queue_tokens, de_queue_tokens: pending read tokens of the PE's and the DE's node.

    Raises:
      TypeError: ``hit_blocks`` or ``block_tokens`` is not an integer (``operator.index``).
    """
    n_hit, z = operator.index(hit_blocks), operator.index(block_tokens)
    hit = n_hit * z
    x = min(max((pe_queue_tokens - de_queue_tokens + hit) / 2.0, 0.0), float(hit))
    return int(min(n_hit, max(0, round(x / z))))
