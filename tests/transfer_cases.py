"""Shared pieces of the transfer tests (links, buffers, the layer-wise loader)."""

import time

from dualpath_jax.transfer import Link, LinkConfig, Medium


def make_link(rate=None, name="l", clock=None):
    """A storage -> PE buffer link of ``rate`` B/s (None: unlimited), on ``clock`` if given."""
    kw = {} if clock is None else {"clock": clock, "sleep": clock.sleep}
    return Link(LinkConfig(name, Medium.STORAGE, Medium.PE_BUFFER, rate_bytes_per_s=rate), **kw)


def wait_until(predicate, what: str, timeout_s: float = 30.0) -> None:
    """Wait for observable state (a thread queued, a layer loaded); fails only if it never comes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.0005)
