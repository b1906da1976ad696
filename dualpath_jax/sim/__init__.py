"""Deterministic discrete-event simulator of DualPath clusters at the paper's scale.

Never imports ``engine/`` or ``kernels/``; scheduling decisions come from ``dualpath_jax.sched``.
"""

from dualpath_jax.sim.cluster import SimAgent, SimResult, Simulator, simulate
from dualpath_jax.sim.compute import ComputeModel, calibrate_from_public
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.hardware import HardwareConfig, Server, reserve

__all__ = ["ComputeModel", "HardwareConfig", "Server", "SimAgent", "SimConfig", "SimResult", "Simulator",
           "calibrate_from_public", "reserve", "simulate"]
