"""Errors of a run's scheduling: a policy that broke the protocol the runtimes check
(:mod:`.policy`), or a run that can make no more progress.

Kept apart from the scheduler's per-event modules: an exception class derives from a builtin
type, which the opt-in compiled build (mypyc, ``setup.py``'s ``COMPILED``) cannot compile.

A plug-in scheduler (``--config.scheduler=pkg.module:Class``) that returns a read plan its loading
mode does not allow, places a request that was not waiting or on an engine outside the fetching
group raises :class:`PolicyError` (a ``ValueError``) naming the hook and what it returned; one of
the wrong type (``de_blocks`` not an int, a read plan that is not a pair) raises
:class:`PolicyTypeError`, which is also a ``TypeError``. The experiment scripts report either in
one line, as they do a bad config field (``studies.cli.USER_ERRORS``).
"""

from __future__ import annotations

__all__ = ["PolicyError", "PolicyTypeError", "RunStalled"]


class PolicyError(ValueError):
    """A scheduler hook returned something the scheduling protocol does not allow."""


class PolicyTypeError(PolicyError, TypeError):
    """A scheduler hook returned a value of the wrong type."""


class RunStalled(RuntimeError):
    """A run that can make no more progress although requests are unfinished: nothing is left to
    happen (no event, tick or arrival pending, no engine holding a request), yet requests wait,
    e.g. under a custom scheduler that never places some request. Raised by both runtimes (the
    simulator's ``Simulator.run``, the engine's ``EngineCluster.run``); the message says what the
    first unfinished request waits for, and which scheduler ran."""
