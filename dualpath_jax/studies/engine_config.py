"""The engine ablation's typed config: frozen dataclasses built once from ``configs/engine_ablation.py``.

:func:`engine_ablation_config` checks every field of the ml_collections ``ConfigDict`` (errors name
the field: ``workload.rounds``, ``cluster.alpha_s``, ``scheduler``, ...) and returns an
:class:`EngineAblationConfig`; :mod:`.engine_ablation` reads only that. :func:`describe_engine_config`
lists the ConfigDict field by field with type, default and meaning (``run_engine.py --print_config``).
"""

from __future__ import annotations

import dataclasses

from dualpath_jax.config import (ConfigError, check_in, check_non_negative, check_positive, describe_config,
                                 did_you_mean, from_mapping)
from dualpath_jax.engine.config import ClusterConfig, engine_variant
from dualpath_jax.kvcache import KV_DTYPES
from dualpath_jax.model.spec import get_spec
from dualpath_jax.sched import ClusterScheduler, load_scheduler

__all__ = ["EngineModel", "EngineWorkload", "EngineArrivals", "ProfileConfig", "CalibrateConfig",
           "EngineAblationConfig", "engine_ablation_config", "describe_engine_config"]


@dataclasses.dataclass(frozen=True)
class EngineModel:
    """The served model.

    Attributes:
      name: model preset (``dualpath_jax.model.get_spec``).
      kv_dtype: dtype of the stored KV (``dualpath_jax.kvcache.KV_DTYPES``).
      seed: seed of the random parameters.
    """

    name: str = "tiny-gqa"
    kv_dtype: str = "f32"
    seed: int = 0

    def __post_init__(self):
        get_spec(self.name)
        check_in("model.kv_dtype", self.kv_dtype, tuple(KV_DTYPES))


@dataclasses.dataclass(frozen=True)
class EngineWorkload:
    """Which agentic traces are replayed and how they are scaled (``configs/engine_ablation.py``).

    Attributes:
      max_files: trace files read (the first ones in name order).
      num_agents: agents replayed.
      rounds: rounds per agent (agents with fewer are skipped).
      token_divisor: every token count divided by it (``workload.scale_tokens``).
      max_context_tokens, max_append_tokens: agents over these (after scaling) are skipped.
      warm_start: seed the store with each agent's first prompt.
      traces_dir: trace folder ("" = ``workload.agentic_dir()``).
    """

    max_files: int = 300
    num_agents: int = 24
    rounds: int = 4
    token_divisor: int = 32
    max_context_tokens: int = 2048
    max_append_tokens: int = 128
    warm_start: bool = True
    traces_dir: str = ""

    def __post_init__(self):
        for f in ("max_files", "num_agents", "rounds", "token_divisor", "max_context_tokens", "max_append_tokens"):
            check_positive(f"workload.{f}", getattr(self, f), integer=True)


@dataclasses.dataclass(frozen=True)
class EngineArrivals:
    """When the agents arrive.

    Attributes:
      mode: ``offline`` (every agent at t = 0; the metric is JCT) or ``online`` (Poisson arrivals).
      aps: online: the arrival rate, agents per second.
      seed: online: seed of the arrivals.
      use_think_time: wait each round's recorded think time before issuing the next (default: at once).
    """

    mode: str = "offline"
    aps: float = 1.0
    seed: int = 0
    use_think_time: bool = False

    def __post_init__(self):
        check_in("arrivals.mode", self.mode, ("offline", "online"))
        check_positive("arrivals.aps", self.aps)


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """The prefill profile the PE time model is fitted to.

    Attributes:
      pairs: (cached, bsz) token pairs profiled at start.
      repeats: timed repeats of each pair.
    """

    pairs: tuple = ((0, 64), (1024, 64), (2048, 128), (3008, 32), (1024, 512), (2048, 1024))
    repeats: int = 3

    def __post_init__(self):
        check_positive("profile.repeats", self.repeats, integer=True)


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """Link rates from the host's speed.

    Attributes:
      load_over_oracle: the SNIC rate is set so that reading all hit KV through one SNIC takes this
        many times Oracle's JCT (0 = the configured cluster rates).
      cnic_over_snic: CNIC rate over the SNIC rate.
    """

    load_over_oracle: float = 2.5
    cnic_over_snic: float = 8.0

    def __post_init__(self):
        check_non_negative("calibrate.load_over_oracle", self.load_over_oracle)
        check_positive("calibrate.cnic_over_snic", self.cnic_over_snic)


@dataclasses.dataclass(frozen=True)
class EngineAblationConfig:
    """One engine ablation run (``experiments/run_engine.py``).

    Attributes:
      scheduler: the ClusterScheduler (sub)class every variant runs (``"pkg.module:Class"``; "" = built-in).
      variants: ablation variant names (``sched.VARIANTS``).
      model, workload, arrivals, profile, calibrate: as their classes.
      cluster: the emulated cluster (its switches are set per variant).
      window_s: window of the SNIC traffic Max/Avg, seconds.
      tie_tol: logit gap under which a token difference is a tie.
      reference_chunk_tokens: chunk of the no-cache recompute (0 = whole prompts).
    """

    scheduler: type = ClusterScheduler
    variants: tuple[str, ...] = ("basic", "layerwise", "dpl", "dualpath", "oracle")
    model: EngineModel = dataclasses.field(default_factory=EngineModel)
    workload: EngineWorkload = dataclasses.field(default_factory=EngineWorkload)
    arrivals: EngineArrivals = dataclasses.field(default_factory=EngineArrivals)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    profile: ProfileConfig = dataclasses.field(default_factory=ProfileConfig)
    calibrate: CalibrateConfig = dataclasses.field(default_factory=CalibrateConfig)
    window_s: float = 1.0
    tie_tol: float = 1e-4
    reference_chunk_tokens: int = 512

    def __post_init__(self):
        for name in self.variants:
            engine_variant(name)
        check_positive("window_s", self.window_s)
        check_non_negative("tie_tol", self.tie_tol)
        check_non_negative("reference_chunk_tokens", self.reference_chunk_tokens, integer=True)


_SECTIONS = {"model": EngineModel, "workload": EngineWorkload, "arrivals": EngineArrivals, "profile": ProfileConfig,
             "calibrate": CalibrateConfig}


def engine_ablation_config(config) -> EngineAblationConfig:
    """The typed config of an engine-ablation ConfigDict (``configs/engine_ablation.py``), every
    field checked before anything runs. An :class:`EngineAblationConfig` is returned as it is.

    Raises:
      ConfigError: naming the field (``workload.rounds``, ``arrivals.aps``, ``model.kv_dtype``,
        ``cluster.<field>``, ``scheduler``, an unknown key, ...).
    """
    if isinstance(config, EngineAblationConfig):
        return config
    data = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    known = {f.name for f in dataclasses.fields(EngineAblationConfig)}
    for key in data:
        if key not in known:
            raise ConfigError(key, f"unknown field of the engine ablation config{did_you_mean(key, known)}; "
                              f"known: {sorted(known)}")
    sections = {key: from_mapping(cls, data.get(key, {}), prefix=f"{key}.") for key, cls in _SECTIONS.items()}
    cluster = from_mapping(ClusterConfig, data.get("cluster", {}), prefix="cluster.")
    rest = {k: data[k] for k in ("window_s", "tie_tol", "reference_chunk_tokens") if k in data}
    return EngineAblationConfig(scheduler=load_scheduler(data.get("scheduler") or "", field="scheduler"),
                                variants=tuple(data.get("variants", EngineAblationConfig.variants)), cluster=cluster,
                                **sections, **rest)


def describe_engine_config(config) -> str:
    """Every field of an engine-ablation ConfigDict (after overrides), one per line with its value,
    type, default and one-line meaning (:func:`dualpath_jax.config.describe_config`).

    Raises:
      ConfigError: naming the field, for a config :func:`engine_ablation_config` rejects.
    """
    engine_ablation_config(config)
    schema = [("", EngineAblationConfig), ("cluster.", ClusterConfig),
              *((f"{key}.", cls) for key, cls in _SECTIONS.items())]
    return describe_config(config, schema, title="# engine ablation (EngineAblationConfig); set a field with "
                           "--config.<name>=<value>")
