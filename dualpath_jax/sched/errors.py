"""Errors of a scheduling policy that broke the protocol the runtimes check (:mod:`.policy`).

A plug-in scheduler (``--config.scheduler=pkg.module:Class``) that returns a read plan its loading
mode does not allow, places a request that was not waiting or on an engine outside the fetching
group raises :class:`PolicyError` (a ``ValueError``) naming the hook and what it returned; one of
the wrong type (``de_blocks`` not an int, a read plan that is not a pair) raises
:class:`PolicyTypeError`, which is also a ``TypeError``. The experiment scripts report either in
one line, as they do a bad config field (``studies.cli.USER_ERRORS``).
"""

from __future__ import annotations

__all__ = ["PolicyError", "PolicyTypeError"]


class PolicyError(ValueError):
    """A scheduler hook returned something the scheduling protocol does not allow."""


class PolicyTypeError(PolicyError, TypeError):
    """A scheduler hook returned a value of the wrong type."""
