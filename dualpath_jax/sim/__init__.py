"""Deterministic discrete-event simulator of DualPath clusters at the paper's scale.

Never imports ``engine/`` or ``kernels/``; scheduling decisions come from ``dualpath_jax.sched``.
The paper's studies built on it live one layer up, in ``dualpath_jax.studies``.
"""

from dualpath_jax.sim.agents import SimAgent
from dualpath_jax.sim.cluster import Simulator, simulate
from dualpath_jax.sim.result import SimResult
from dualpath_jax.sim.compute import ComputeModel, calibrate_from_public
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.hardware import HardwareConfig, Server, reserve
from dualpath_jax.sim.adapters import agents_from_trajectories, request_table
from dualpath_jax.sim.runs import offline_starts, online_starts, summarize, variant_config

__all__ = ["agents_from_trajectories", "request_table", "offline_starts", "online_starts", "summarize",
           "variant_config", "ComputeModel", "HardwareConfig", "Server", "SimAgent", "SimConfig", "SimResult",
           "Simulator", "calibrate_from_public", "reserve", "simulate"]
