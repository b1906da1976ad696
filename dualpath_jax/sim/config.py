"""Simulator configuration (frozen, validated; errors name the field)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import ml_collections
from ml_collections import config_dict

from dualpath_jax.config import ConfigError, check_in, check_non_negative, check_positive, to_dict
from dualpath_jax.model import cost
from dualpath_jax.model.spec import get_spec
from dualpath_jax.sched.knobs import PREFILL_MODES, SchedKnobs
from dualpath_jax.sim.compute import ComputeModel
from dualpath_jax.sim.hardware import HardwareConfig

__all__ = ["SimConfig", "PREFILL_MODES", "sim_config_dict"]


@dataclasses.dataclass(frozen=True)
class SimConfig(SchedKnobs):
    """One simulated run: cluster, switches, scheduler knobs and compute-model overrides.

    The switches (``loading``, ``prefill``, ``policy``) and the scheduler's knobs (``alpha_s``,
    ``beta_s``, ``z_factor``, ``compute_quota_s``, ``fetch_period_s``, ``basic_max_batch_tokens``,
    ``layerwise_depth``) are :class:`~dualpath_jax.sched.knobs.SchedKnobs`' fields, shared with the
    real engine's ``ClusterConfig`` (keyword-only).

    Attributes:
      model: model preset name (``dualpath_jax.model.get_spec``).
      prefill_nodes, decode_nodes: P and D, in nodes of ``hardware.gpus_per_node`` engines.
      block_tokens: tokens per Full Block (the paper's example: 64).
      kv_dtype, weight_dtype: byte sizes of KV and weights (``fp8``, ``bf16``, ...).
      activation_reserve_bytes: HBM a PE keeps for activations.
      ep_sync: DP-attention groups wait for their slowest member (default: MoE models).
      prefill_layer_overhead_s, eff_memory: compute-model assumptions (see ``sim.compute``).
      compute: an explicit :class:`~dualpath_jax.sim.compute.ComputeModel` for every engine
        (e.g. fitted to a real engine's measured forwards); replaces the public calibration.
      de_join_s: seconds a DE unit stops decoding for each request it admits (allocation and
        bookkeeping on the decode thread; the H2D copy itself is a CNIC transfer). 0 by default;
        the engine cross-check sets the runtime's measured value.
    """

    model: str = "deepseek-v3.2"
    prefill_nodes: int = 2
    decode_nodes: int = 4
    hardware: HardwareConfig = dataclasses.field(default_factory=HardwareConfig)
    block_tokens: int = 64
    kv_dtype: str = "fp8"
    weight_dtype: str = "fp8"
    activation_reserve_bytes: float = 4e9
    ep_sync: bool | None = None
    prefill_layer_overhead_s: float = 0.5e-3
    eff_memory: float = 0.7
    compute: ComputeModel | None = None
    de_join_s: float = 0.0

    field_prefix: ClassVar[str] = "sim."

    def __post_init__(self):
        super().__post_init__()  # the switches and scheduler knobs
        get_spec(self.model)
        check_positive("sim.prefill_nodes", self.prefill_nodes, integer=True)
        check_positive("sim.decode_nodes", self.decode_nodes, integer=True)
        check_in("sim.kv_dtype", self.kv_dtype, tuple(cost.DTYPE_BYTES))
        check_in("sim.weight_dtype", self.weight_dtype, tuple(cost.DTYPE_BYTES))
        check_positive("sim.block_tokens", self.block_tokens, integer=True)
        check_positive("sim.eff_memory", self.eff_memory)
        for f in ("de_join_s", "prefill_layer_overhead_s", "activation_reserve_bytes"):
            check_non_negative(f"sim.{f}", getattr(self, f))
        if self.eff_memory > 1.0:
            raise ConfigError("sim.eff_memory", f"is a share of HBM bandwidth, in (0, 1] (got {self.eff_memory})")
        if self.compute is not None and not isinstance(self.compute, ComputeModel):
            raise ConfigError("sim.compute", f"must be a ComputeModel or None (got {type(self.compute).__name__})")
        if not isinstance(self.hardware, HardwareConfig):
            raise ConfigError("sim.hardware", f"must be a HardwareConfig (got {type(self.hardware).__name__})")

    @property
    def spec(self):
        return get_spec(self.model)

    @property
    def uses_ep_sync(self) -> bool:
        return self.spec.n_routed_experts > 0 if self.ep_sync is None else bool(self.ep_sync)

    def replace(self, **changes) -> "SimConfig":
        return dataclasses.replace(self, **changes)


def sim_config_dict(**fields) -> ml_collections.ConfigDict:
    """A config file's ``sim`` block: every :class:`SimConfig` field at its default (``hardware``:
    every :class:`HardwareConfig` field), updated with ``fields``.

    Because every field is present, the command line can override any of them
    (``--config.sim.beta_s=1``, ``--config.sim.hardware.snic_bytes_per_s=25e9``); ml_collections
    only overrides keys that exist. ``compute`` (a fitted :class:`ComputeModel`) is left out: it is
    set from Python. ``ep_sync`` (default: from the model) is a bool placeholder.

    Raises:
      ConfigError: naming ``sim.<field>`` or ``sim.hardware.<field>`` for an unknown field.
    """
    sim = to_dict(SimConfig())  # every field at its default, hardware as a nested dict
    del sim["compute"]
    sim["ep_sync"] = config_dict.placeholder(bool)
    for key, value in fields.items():
        if key == "compute":
            raise ConfigError("sim.compute", "a ComputeModel is set from Python (SimConfig(compute=...)), "
                              "not in a config file")
        if key not in sim:
            raise ConfigError(f"sim.{key}", f"unknown field for SimConfig; known: {sorted(sim)}")
        if key == "hardware":
            for hk, hv in dict(value).items():
                if hk not in sim["hardware"]:
                    raise ConfigError(f"sim.hardware.{hk}", f"unknown field for HardwareConfig; known: "
                                      f"{sorted(sim['hardware'])}")
                sim["hardware"][hk] = hv
        else:
            sim[key] = value
    return ml_collections.ConfigDict(sim)
