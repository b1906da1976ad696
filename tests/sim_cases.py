"""Shared pieces of the simulator tests."""

import numpy as np

from dualpath_jax.sim import SimAgent

FETCH = 0.005
"""The scheduler's fetch period (s) the simulator tests run at."""


def agent(append, gen, arrival=0.0):
    """A :class:`~dualpath_jax.sim.SimAgent` arriving at ``arrival`` s whose rounds append ``append``
    tokens and generate ``gen`` (int64 arrays of one length)."""
    return SimAgent(arrival, np.asarray(append, np.int64), np.asarray(gen, np.int64))
