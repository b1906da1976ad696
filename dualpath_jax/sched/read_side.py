"""Which storage NIC reads a request's hit KV (PAPER.md section 5.4).

* ``pe_read`` (Basic): always the PE node's SNIC.
* ``dual`` under the ``dualpath`` policy: the side whose node read queue (pending tokens) is
  shorter; ties go to the PE side (no extra CNIC hop).
* ``dual`` under ``round_robin`` (the "+Dual-path loading" ablation; the paper does not say how
  it picks): a load-oblivious rule, alternating PE, DE, PE, ... per request.
* ``split`` (the paper's stated future work): one request's blocks are read from both sides so
  that both node queues end equal: the DE side takes ``x = clip((q_pe - q_de + H) / 2, 0, H)`` of
  the H hit tokens, rounded to whole blocks (if the queues are equal, half each).
* ``oracle``: no read at all.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ReadPlan", "shorter_queue_side", "split_de_blocks"]


class ReadPlan(NamedTuple):
    """How a request's hit blocks are read (an immutable record).

    Attributes:
      side: ``"pe"``, ``"de"``, ``"split"`` or ``"none"`` (oracle).
      de_blocks: number of leading hit blocks read on the DE side (the rest on the PE side); for
        ``side="de"`` all blocks, for ``"pe"``/``"none"`` 0.
    """

    side: str
    de_blocks: int = 0


def shorter_queue_side(pe_queue_tokens: float, de_queue_tokens: float) -> str:
    """``"pe"`` if the PE node's read queue is not longer than the DE node's, else ``"de"``."""
    return "pe" if pe_queue_tokens <= de_queue_tokens else "de"


def split_de_blocks(hit_blocks: int, block_tokens: int, pe_queue_tokens: float, de_queue_tokens: float) -> int:
    """Blocks to read on the DE side so both queues end as equal as whole blocks allow."""
    hit = hit_blocks * block_tokens
    x = min(max((pe_queue_tokens - de_queue_tokens + hit) / 2.0, 0.0), float(hit))
    return int(min(hit_blocks, max(0, round(x / block_tokens))))
