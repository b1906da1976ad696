"""Simulator configuration (frozen, validated; errors name the field)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import ml_collections
from ml_collections import config_dict

from dualpath_jax.config import ConfigError, check_in, check_non_negative, check_positive, to_dict
from dualpath_jax.model import cost
from dualpath_jax.model.hf_config import hf_weight_dtype
from dualpath_jax.model.spec import ModelSpec, default_weight_dtype, resolve_spec
from dualpath_jax.sched.knobs import PREFILL_MODES, SchedKnobs
from dualpath_jax.sim import catalog
from dualpath_jax.sim.compute import ATTENTION_EFFICIENCY, ComputeModel
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
      model: a model preset name (``dualpath_jax.model.get_spec``) or the path of a Hugging Face
        ``config.json`` (or of a directory holding one; ``model.spec.resolve_spec``).
      prefill_nodes, decode_nodes: P and D, in nodes of ``hardware.gpus_per_node`` engines.
      block_tokens: tokens per Full Block (the paper's example: 64).
      kv_dtype: dtype of the cached KV (``fp8``, ``fp16``, ``bf16``, ...); None (default): the
        model's own, resolved when the config is built (``model.cost.default_kv_dtype``: FP8 for
        MLA, FP16 for GQA, PAPER.md 1.2 Table 1).
      weight_dtype: dtype of the weights, which is also the GEMMs' compute dtype that picks the
        peak FLOP/s (:attr:`peak_flops`); None (default): the model's own, resolved when the config
        is built. A ``config.json``'s is what the file declares (``model.hf_config.hf_weight_dtype``:
        FP8 when its ``quantization_config`` is FP8, else its ``torch_dtype``: BF16, FP16, and BF16
        for float32 or none, as GPU servers load such checkpoints); another quantization (AWQ, GPTQ,
        ...) raises a ConfigError naming ``quantization_config`` unless this field is set. A preset's
        is ``model.spec.default_weight_dtype`` (FP8 for the DeepSeek presets, BF16 for Qwen2.5).
      activation_reserve_bytes: HBM a PE keeps for activations.
      ep_sync: the engines of an EP group (DP attention, expert-parallel MoE) run each forward
        and decode step together: as long as their slowest member's own part (attention,
        non-expert layers) plus the routed experts' time at the group's mean tokens per GPU
        (PAPER.md 5.5; ``sim.compute``) (default: MoE models).
      pe_ep_nodes, de_ep_nodes: nodes per EP group of PEs / of DEs (None, the default: all the
        nodes of the role, one group). An EP group's GPUs hold the routed experts between them
        (the weights per GPU) and, with ``ep_sync``, step together; each must divide
        ``prefill_nodes`` / ``decode_nodes``. PAPER.md 6.1 gives no EP degree. With ``ep_sync`` an
        EP group is also one scheduler group (PAPER.md 5.1: one or more nodes whose engines fetch
        together), so that its forwards are balanced across the engines that wait for each other;
        without it every node is a group.
      prefill_layer_overhead_s: fixed seconds per layer of every forward (an assumption, ``sim.compute``).
      eff_memory: share of the HBM bandwidth decode reads reach (FlashMLA's decode kernel: 0.9, ``sim.compute``).
      attention_efficiency: share of the BF16 (FP8 for the DSA indexer) peak the attention kernels
        reach (FlashMLA's sparse prefill: 640 of 989 TFLOP/s, ``sim.compute.ATTENTION_EFFICIENCY``).
      compute: an explicit :class:`~dualpath_jax.sim.compute.ComputeModel` for every engine
        (e.g. fitted to a real engine's measured forwards); replaces the public calibration. Its
        prefill forward must take time (one prefill coefficient > 0).
      attention_time_error: log standard deviation of the error of the PE batch former's
        attention-time estimate (PAPER.md 5.5: a relation fitted by profiling in advance): each
        engine's forward takes its estimate times a mean-one lognormal factor drawn for it (from a
        stream seeded by the run's workload: a run repeats exactly, another seed's workload draws
        another stream), while batches are still formed from the estimate. 0 (default): the
        estimate is exact, so with deep queues every member of an EP group attends for the quota
        and Fig. 14's Max/Avg is 1; the paper gives no such error.
      de_join_s: seconds a DE unit stops decoding for each request it admits (allocation and
        bookkeeping on the decode thread; the H2D copy itself is a CNIC transfer that the request
        waits for, PAPER.md 2.5). 0 by default: the paper gives no admission cost (8.6), and a
        block-table update is microseconds next to a ~50 ms step; the engine cross-check sets the
        runtime's measured value (its Python decode thread admits in milliseconds).
    """

    model: str = "deepseek-v3.2"
    prefill_nodes: int = 2
    decode_nodes: int = 4
    hardware: HardwareConfig = dataclasses.field(default_factory=HardwareConfig)
    block_tokens: int = 64
    kv_dtype: str | None = None
    weight_dtype: str | None = None
    activation_reserve_bytes: float = 4e9
    ep_sync: bool | None = None
    pe_ep_nodes: int | None = None
    de_ep_nodes: int | None = None
    prefill_layer_overhead_s: float = 0.5e-3
    eff_memory: float = 0.9  # FlashMLA decode: 3,000 of 3,350 GB/s on an H800 (sim.compute)
    attention_efficiency: float = ATTENTION_EFFICIENCY
    compute: ComputeModel | None = None
    de_join_s: float = 0.0
    attention_time_error: float = 0.0

    field_prefix: ClassVar[str] = "sim."

    def __post_init__(self):
        super().__post_init__()  # the switches and scheduler knobs
        spec = resolve_spec(self.model, field="sim.model")
        object.__setattr__(self, "_spec", spec)  # read once (a config.json path is not read per access)
        # None = the model's own dtype, resolved here once; replace(model=...) resolves it again
        object.__setattr__(self, "_model_dtypes", frozenset(
            f for f in ("kv_dtype", "weight_dtype") if getattr(self, f) is None))
        if self.kv_dtype is None:
            object.__setattr__(self, "kv_dtype", cost.default_kv_dtype(spec))
        if self.weight_dtype is None:  # a config.json's declared dtype (None for a preset: the preset's rule)
            object.__setattr__(self, "weight_dtype", hf_weight_dtype(self.model) or default_weight_dtype(spec))
        check_positive("sim.prefill_nodes", self.prefill_nodes, integer=True)
        check_positive("sim.decode_nodes", self.decode_nodes, integer=True)
        for f, nodes in (("pe_ep_nodes", self.prefill_nodes), ("de_ep_nodes", self.decode_nodes)):
            if getattr(self, f) is not None:
                check_positive(f"sim.{f}", getattr(self, f), integer=True)
                if nodes % getattr(self, f):
                    raise ConfigError(f"sim.{f}", f"{getattr(self, f)} nodes per EP group must divide the role's "
                                      f"{nodes} nodes")
        check_in("sim.kv_dtype", self.kv_dtype, tuple(cost.DTYPE_BYTES))
        check_in("sim.weight_dtype", self.weight_dtype, tuple(cost.DTYPE_BYTES))
        check_positive("sim.block_tokens", self.block_tokens, integer=True)
        check_positive("sim.eff_memory", self.eff_memory)
        for f in ("de_join_s", "prefill_layer_overhead_s", "activation_reserve_bytes", "attention_time_error"):
            check_non_negative(f"sim.{f}", getattr(self, f))
        if self.attention_time_error > 1.0:
            raise ConfigError("sim.attention_time_error", f"is a log standard deviation, at most 1 (a factor of "
                              f"e either way; got {self.attention_time_error})")
        if self.eff_memory > 1.0:
            raise ConfigError("sim.eff_memory", f"is a share of HBM bandwidth, in (0, 1] (got {self.eff_memory})")
        check_positive("sim.attention_efficiency", self.attention_efficiency)
        if self.attention_efficiency > 1.0:
            raise ConfigError("sim.attention_efficiency",
                              f"is a share of the peak FLOP/s, in (0, 1] (got {self.attention_efficiency})")
        if self.compute is not None and not isinstance(self.compute, ComputeModel):
            raise ConfigError("sim.compute", f"must be a ComputeModel or None (got {type(self.compute).__name__})")
        c = self.compute
        if c is not None and not (c.prefill_overhead_s or c.s_per_token or c.s_per_key or c.s_per_index_key):
            raise ConfigError("sim.compute", "its prefill forward takes no time (prefill_overhead_s, s_per_token, "
                              "s_per_key and s_per_index_key are all 0): at least one must be > 0")
        if not isinstance(self.hardware, HardwareConfig):
            raise ConfigError("sim.hardware", f"must be a HardwareConfig (got {type(self.hardware).__name__})")
        if self.compute is None:  # the public calibration needs the peak: fail now, naming the field
            catalog.compute_peak(self.hardware, self.compute_dtype, dtype_field="sim.weight_dtype")

    def ep_gpus(self, role: str) -> int:
        """GPUs per EP group of ``role`` (``"pe"`` or ``"de"``): ``pe_ep_nodes`` / ``de_ep_nodes``
        nodes (default all of the role's) of ``hardware.gpus_per_node``."""
        nodes = (self.pe_ep_nodes or self.prefill_nodes) if role == "pe" else (self.de_ep_nodes or self.decode_nodes)
        return int(nodes) * self.hardware.gpus_per_node

    @property
    def spec(self) -> ModelSpec:
        """The model's :class:`~dualpath_jax.model.spec.ModelSpec` (preset or ``config.json``)."""
        return self._spec  # type: ignore[attr-defined]

    @property
    def uses_ep_sync(self) -> bool:
        return self.spec.n_routed_experts > 0 if self.ep_sync is None else bool(self.ep_sync)

    @property
    def compute_dtype(self) -> str:
        """The GEMMs' dtype, a :mod:`~dualpath_jax.sim.catalog` dtype: the weights' (``fp8`` weights
        run FP8 GEMMs as DeepSeek-V3's block-scaled FP8 checkpoints do; ``bf16`` BF16; ``f32`` FP32)."""
        return catalog.canonical_dtype(str(self.weight_dtype), field="sim.weight_dtype")

    @property
    def peak_flops(self) -> float:
        """Dense peak FLOP/s of one GPU for this model: ``hardware.peak_flops`` when set, else the
        catalog's peak of ``hardware.gpu`` in :attr:`compute_dtype` (H800: 1979e12 FP8,
        989.5e12 BF16; ``sim.catalog``).

        Raises:
          ConfigError: ``sim.weight_dtype`` when the GPU has no peak for the compute dtype.
        """
        return catalog.compute_peak(self.hardware, self.compute_dtype, dtype_field="sim.weight_dtype")

    def replace(self, **changes) -> "SimConfig":
        """A copy with ``changes``; a dtype that was the model's own stays so (it follows a new ``model``)."""
        for f in self._model_dtypes:  # type: ignore[attr-defined]
            changes.setdefault(f, None)
        return dataclasses.replace(self, **changes)


def sim_config_dict(**fields) -> ml_collections.ConfigDict:
    """A config file's ``sim`` block: every :class:`SimConfig` field at its default (``hardware``:
    every :class:`HardwareConfig` field), updated with ``fields``.

    Because every field is present, the command line can override any of them
    (``--config.sim.beta_s=1``, ``--config.sim.hardware.snic_bytes_per_s=25e9``); ml_collections
    only overrides keys that exist. ``compute`` (a fitted :class:`ComputeModel`) is left out: it is
    set from Python. ``ep_sync``, ``pe_ep_nodes``, ``de_ep_nodes`` (default: all of the role's
    nodes), ``kv_dtype``, ``weight_dtype`` (default: from the model) and ``hardware.peak_flops``
    (default: from the catalog for the model's compute dtype) are placeholders (None) of their types.

    Raises:
      ConfigError: naming ``sim.<field>`` or ``sim.hardware.<field>`` for an unknown field.
    """
    sim = to_dict(SimConfig())  # every field at its default, hardware as a nested dict
    del sim["compute"]
    sim["ep_sync"] = config_dict.placeholder(bool)
    sim["pe_ep_nodes"] = config_dict.placeholder(int)
    sim["de_ep_nodes"] = config_dict.placeholder(int)
    sim["kv_dtype"] = config_dict.placeholder(str)
    sim["weight_dtype"] = config_dict.placeholder(str)
    sim["hardware"]["peak_flops"] = config_dict.placeholder(float)
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
