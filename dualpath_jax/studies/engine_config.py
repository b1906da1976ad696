"""The engine ablation's typed config: frozen dataclasses built once from ``configs/engine_ablation.py``.

:func:`engine_ablation_config` checks every field of the ml_collections ``ConfigDict`` (errors name
the field: ``workload.rounds``, ``cluster.alpha_s``, ``scheduler``, ...) and returns an
:class:`EngineAblationConfig`; :mod:`.engine_ablation` reads only that. :func:`describe_engine_config`
lists the ConfigDict field by field with type, default and meaning (``run_engine.py --print_config``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

from dualpath_jax.config import (ConfigError, check_in, check_non_negative, check_positive, describe_config,
                                 did_you_mean, from_mapping)
from dualpath_jax.engine.config import RUNTIMES, ClusterConfig, engine_variant
from dualpath_jax.kvcache import KV_DTYPES
from dualpath_jax.model.hf_config import load_hf_config
from dualpath_jax.model.spec import ModelSpec, get_spec
from dualpath_jax.sched import ClusterScheduler, load_scheduler
from dualpath_jax.workload.mooncake import MOONCAKE_BLOCK_TOKENS

__all__ = ["EngineModel", "EngineWorkload", "EngineArrivals", "ProfileConfig", "CalibrateConfig",
           "EngineAblationConfig", "engine_ablation_config", "describe_engine_config", "CALIBRATION_FILE",
           "CALIBRATION_FORMAT", "calibration_path", "read_calibration", "calibration_fingerprint",
           "check_fingerprint", "checkpoint_digest"]


@dataclasses.dataclass(frozen=True)
class EngineModel:
    """The served model.

    Attributes:
      name: model preset (``dualpath_jax.model.get_spec``) with random parameters; ignored when
        ``checkpoint`` is set.
      kv_dtype: dtype of the stored KV (``dualpath_jax.kvcache.KV_DTYPES``).
      seed: seed of the random parameters.
      checkpoint: a local Hugging Face checkpoint directory (``config.json`` + safetensors; Qwen2,
        Qwen3, Qwen3-MoE, Llama, Mistral, DeepSeek-V2/V3, dense or MoE:
        ``model.hf.load_hf_checkpoint``) to serve instead of the preset; "" = the preset. Kept as
        an absolute path; its ``config.json`` is checked here, its weights read when the run starts.
    """

    name: str = "tiny-gqa"
    kv_dtype: str = "f32"
    seed: int = 0
    checkpoint: str = ""

    def __post_init__(self):
        if os.sep in str(self.name) and os.path.exists(self.name):
            raise ConfigError("model.name", f"{self.name!r} is a path, not a preset: a Hugging Face checkpoint is "
                              "served with model.checkpoint")
        get_spec(self.name)
        check_in("model.kv_dtype", self.kv_dtype, tuple(KV_DTYPES))
        if self.checkpoint:
            object.__setattr__(self, "checkpoint", os.path.abspath(self.checkpoint))
            if not os.path.isfile(os.path.join(self.checkpoint, "config.json")):
                raise ConfigError("model.checkpoint", f"{self.checkpoint}: not a directory holding a config.json "
                                  "(a local Hugging Face checkpoint)")
            load_hf_config(self.checkpoint, field="model.checkpoint")  # names the file and key of a bad field

    def spec(self) -> ModelSpec:
        """The served model's :class:`ModelSpec`: the checkpoint's, else the preset's."""
        return load_hf_config(self.checkpoint, field="model.checkpoint") if self.checkpoint else get_spec(self.name)


@dataclasses.dataclass(frozen=True)
class EngineWorkload:
    """Which traces are replayed and how they are scaled (``configs/engine_ablation.py``).

    Attributes:
      source: ``agentic`` (Claude Code traces) or ``mooncake`` (a Mooncake trace's sessions, read
        as the simulator studies' ``workload.source=mooncake`` reads them).
      max_files: agentic: trace files read (the first ones in name order).
      num_agents: agents replayed.
      rounds: rounds per agent (agents with fewer are skipped).
      token_divisor: every token count divided by it (``workload.scale_tokens``).
      max_context_tokens, max_append_tokens: agents over these (after scaling) are skipped.
      warm_start: seed the store with each agent's first prompt.
      traces_dir: agentic: trace folder, or one trace file ("" = ``workload.agentic_dir()``);
        mooncake: ``conversation`` (""), ``synthetic`` or a ``.jsonl`` file.
      mooncake_block_tokens: mooncake: tokens per hash id (512 in Mooncake's traces).
    """

    source: str = "agentic"
    max_files: int = 300
    num_agents: int = 24
    rounds: int = 4
    token_divisor: int = 32
    max_context_tokens: int = 2048
    max_append_tokens: int = 128
    warm_start: bool = True
    traces_dir: str = ""
    mooncake_block_tokens: int = MOONCAKE_BLOCK_TOKENS

    @property
    def label(self) -> str:
        """What is replayed, for log lines and titles: ``"agentic traces, tokens / 32"``,
        ``"mooncake trace conversation, tokens / 32"``."""
        what = ("agentic traces" if self.source == "agentic"
                else f"mooncake trace {Path(self.traces_dir).name if self.traces_dir else 'conversation'}")
        return what + (f", tokens / {self.token_divisor}" if self.token_divisor != 1 else "")

    def __post_init__(self):
        check_in("workload.source", self.source, ("agentic", "mooncake"))
        for f in ("max_files", "num_agents", "rounds", "token_divisor", "max_context_tokens", "max_append_tokens",
                  "mooncake_block_tokens"):
            check_positive(f"workload.{f}", getattr(self, f), integer=True)


ARRIVAL_MODES = ("offline", "online", "recorded")


@dataclasses.dataclass(frozen=True)
class EngineArrivals:
    """When the agents arrive.

    Attributes:
      mode: ``offline`` (every agent at t = 0; the metric is JCT), ``online`` (Poisson arrivals) or
        ``recorded`` (``workload.source=mooncake``: each session at its first request's recorded
        timestamp, counted from the earliest session's; an open-loop replay of the trace).
      aps: online: the arrival rate, agents per second.
      seed: online: seed of the arrivals.
      speedup: recorded: divides the gaps between session starts (2 = twice as fast; the think
        times within a session, ``use_think_time``, are kept).
      use_think_time: wait each round's recorded think time before issuing the next (default: at once).
    """

    mode: str = "offline"
    aps: float = 1.0
    seed: int = 0
    speedup: float = 1.0
    use_think_time: bool = False

    def __post_init__(self):
        check_in("arrivals.mode", self.mode, ARRIVAL_MODES)
        check_non_negative("arrivals.seed", self.seed, integer=True)  # (as the simulator's seed)
        check_positive("arrivals.aps", self.aps)
        check_positive("arrivals.speedup", self.speedup)
        if self.speedup != 1.0 and self.mode != "recorded":
            raise ConfigError("arrivals.speedup", f"speeds up arrivals.mode='recorded'; arrivals.mode={self.mode!r}: "
                              f"leave it at 1")


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
        pairs = self.pairs
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, (tuple, list)):
            raise ConfigError("profile.pairs", f"must be a tuple of (cached, bsz) token pairs (got {pairs!r})")
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ConfigError(f"profile.pairs[{i}]", f"must be a (cached, bsz) pair of token counts (got {pair!r})")
            check_non_negative(f"profile.pairs[{i}].cached", pair[0], integer=True)
            check_positive(f"profile.pairs[{i}].bsz", pair[1], integer=True)
        if len({tuple(p) for p in pairs}) < 2:  # the fit has two coefficients (per token, per query-key pair)
            raise ConfigError("profile.pairs", f"needs at least 2 distinct (cached, bsz) pairs to fit the time model "
                              f"(got {pairs!r})")


CALIBRATION_FILE = "calibration.json"
"""The calibration a run used, in its workdir (``calibrate.from_file`` reads it back)."""

CALIBRATION_FORMAT = 2
"""Version of ``calibration.json`` (2: the Oracle passes run offline, without think times, so the
arrivals are not part of the fingerprint)."""


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """Link rates from the host's speed, measured or read back.

    Attributes:
      load_over_oracle: the SNIC rate is set so that reading all hit KV through one SNIC takes this
        many times Oracle's JCT (0 = the configured cluster rates).
      cnic_over_snic: CNIC rate over the SNIC rate.
      passes: Oracle passes of one calibration; their median JCT sets the rates.
      each_repeat: calibrate again before every repeat (its variants run at its own rates, so the
        rates follow the host's speed when other work on it comes and goes); False: once, before
        the first repeat.
      from_file: a ``calibration.json`` (or a workdir holding one) of an earlier run: its link rates
        (``snic_bytes_per_s``, ``cnic_bytes_per_s``: the median over its calibrations) are used for
        every repeat, no Oracle pass runs ("" = measure). Its model, workload and topology must
        be this run's (its arrivals need not: the Oracle passes run offline).
    """

    load_over_oracle: float = 2.5
    cnic_over_snic: float = 8.0
    passes: int = 3
    each_repeat: bool = True
    from_file: str = ""

    def __post_init__(self):
        check_non_negative("calibrate.load_over_oracle", self.load_over_oracle)
        check_positive("calibrate.cnic_over_snic", self.cnic_over_snic)
        check_positive("calibrate.passes", self.passes, integer=True)
        if not isinstance(self.each_repeat, bool):
            raise ConfigError("calibrate.each_repeat", f"must be True or False (got {self.each_repeat!r})")
        if not isinstance(self.from_file, str):
            raise ConfigError("calibrate.from_file", f"must be a path (got {self.from_file!r})")
        if self.from_file:
            read_calibration(self.from_file)

    @property
    def measured(self) -> bool:
        """Whether the run measures the link rates (Oracle passes) rather than reading or keeping them."""
        return bool(self.load_over_oracle) and not self.from_file


def calibration_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/calibration.json`` when ``path`` is a folder (a run's workdir)."""
    p = Path(path).expanduser()
    return p / CALIBRATION_FILE if p.is_dir() else p


def read_calibration(path: str | Path, field: str = "calibrate.from_file") -> dict:
    """A saved calibration (``calibration.json`` as :func:`.engine_runs.calibrate_links` writes it).

    Returns the parsed dict (``snic_bytes_per_s``, ``cnic_bytes_per_s`` in bytes/s, ``fingerprint``,
    what they were measured from).

    Raises:
      ConfigError: naming ``field``: the file is missing, not JSON, of another format, or lacks
        positive finite link rates or the fingerprint.
    """
    p = calibration_path(path)
    if not p.is_file():
        raise ConfigError(field, f"no calibration file {p} (give a calibration.json or the workdir of a finished run)")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(field, f"{p} is not a readable JSON calibration ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise ConfigError(field, f"{p} is not a calibration.json of format {CALIBRATION_FORMAT} (got format "
                          f"{data.get('format') if isinstance(data, dict) else None!r}); measure a new calibration")
    for key in ("snic_bytes_per_s", "cnic_bytes_per_s"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(field, f"{p}: {key} must be a positive number (got {v!r})")
    if not isinstance(data.get("fingerprint"), dict):
        raise ConfigError(field, f"{p} has no fingerprint of the model and workload it was measured for")
    return data


def checkpoint_digest(path: str) -> str:
    """SHA-256 (hex, 16 digits) of a checkpoint directory's ``config.json`` and its other files'
    names and sizes: a calibration measured for other weights at the same path is refused."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            h.update(name.encode() + b"\0")
            if name == "config.json":
                with open(file, "rb") as f:
                    h.update(f.read())
            else:
                h.update(str(os.path.getsize(file)).encode())
    return h.hexdigest()[:16]


def calibration_fingerprint(config: "EngineAblationConfig") -> dict:
    """What a calibration depends on, as ``{dotted field: value}``: the model, every workload field
    but ``traces_dir`` and the cluster's topology (not the arrivals: its Oracle passes run offline,
    without think times, whatever the run's arrivals)."""
    out = {"model.name": config.model.name, "model.kv_dtype": config.model.kv_dtype,
           "model.checkpoint": config.model.checkpoint}
    if config.model.checkpoint:  # what is there, not only where
        out["model.checkpoint_files"] = checkpoint_digest(config.model.checkpoint)
    out.update({f"workload.{f.name}": getattr(config.workload, f.name) for f in dataclasses.fields(EngineWorkload)
                if f.name != "traces_dir"})
    out.update({f"cluster.{k}": getattr(config.cluster, k) for k in ("prefill_nodes", "decode_nodes",
                                                                     "engines_per_node")})
    return out


def check_fingerprint(saved: dict, config: "EngineAblationConfig", path: str, field: str = "calibrate.from_file"
                      ) -> None:
    """Raise ConfigError naming ``field`` unless ``saved`` (a calibration's fingerprint) is ``config``'s."""
    mine = calibration_fingerprint(config)
    # a workload field added since the file was written matches where this run keeps its default
    defaults = {f"workload.{f.name}": f.default for f in dataclasses.fields(EngineWorkload)}
    differ = []
    for key, value in mine.items():
        if key not in saved:
            if key in defaults and value == defaults[key]:
                continue
            raise ConfigError(field, f"{path} does not record {key}; measure a new calibration")
        if saved[key] != value:
            differ.append(key)
    if differ:  # every field that differs, so that one rerun can fix them all
        was = ", ".join(f"{k}={saved[k]!r}" for k in differ)
        has = ", ".join(f"{k}={mine[k]!r}" for k in differ)
        raise ConfigError(field, f"{path} was measured for {was}, this run has {has}; use the same "
                          f"{'values' if len(differ) > 1 else differ[0]} or measure a new calibration "
                          f"(calibrate.from_file='')")


@dataclasses.dataclass(frozen=True)
class EngineRay:
    """Placement of the ``ray`` runtime's node actors (:class:`~dualpath_jax.engine.ray_runtime.RayRuntime`).

    Attributes:
      gpus_per_engine: GPUs each engine asks Ray for (0 on CPU hosts; 1 puts every engine on its
        own GPU).
      pe_resource, de_resource: a custom Ray resource every PE / DE node needs one unit of ("" =
        none): ``ray start --resources='{"pe_host": 1}'`` on the hosts meant for prefill.
      start_timeout_s: seconds the node actors may take to be placed and started, and then to
        build a run's workers (compiling the DE decode steps): Ray waits for resources in use
        without end; raise it for a large model or a cold compilation cache on a slow host.
    """

    gpus_per_engine: float = 0.0
    pe_resource: str = ""
    de_resource: str = ""
    start_timeout_s: float = 600.0

    def __post_init__(self):
        check_non_negative("ray.gpus_per_engine", self.gpus_per_engine)
        check_positive("ray.start_timeout_s", self.start_timeout_s)
        if self.gpus_per_engine > 1 and self.gpus_per_engine != int(self.gpus_per_engine):
            raise ConfigError("ray.gpus_per_engine", f"more than one GPU per engine must be a whole number "
                              f"(got {self.gpus_per_engine:g}): Ray places whole GPUs above one")


@dataclasses.dataclass(frozen=True)
class EngineAblationConfig:
    """One engine ablation run (``experiments/run_engine.py``).

    Attributes:
      scheduler: the ClusterScheduler (sub)class every variant runs (``"pkg.module:Class"``; "" = built-in).
      variants: ablation variant names (``sched.VARIANTS``, or any ``"<loading>+<prefill>+<policy>"``:
        ``sched.get_variant``).
      model, workload, arrivals, profile, calibrate: as their classes.
      cluster: the emulated cluster (its switches are set per variant).
      repeats: runs of every variant (R), interleaved: repeat r runs every variant in order before
        repeat r + 1, so slow drift of the host hits every variant alike. Online, repeat r draws
        the arrivals with seed ``arrivals.seed + r``; offline every repeat does the same work, so
        the spread over repeats is timing noise. Figures are the mean over repeats with a 95%
        Student-t interval.
      window_s: window of the SNIC traffic Max/Avg, seconds.
      tie_tol: logit gap under which a token difference is a tie.
      reference_chunk_tokens: chunk of the no-cache recompute (0 = whole prompts).
      runtime: ``threads`` (every engine a thread of this process) or ``ray`` (every node a Ray
        actor in its own process, KV between them over JAX's transfer server;
        :mod:`dualpath_jax.engine.ray_runtime`).
      runtime_address: the Ray cluster ``ray`` joins (``"auto"``, ``"HOST:PORT"``; "" = a local
        instance started inside the run).
      ray: placement of the node actors (:class:`EngineRay`).
    """

    scheduler: type = ClusterScheduler
    variants: tuple[str, ...] = ("basic", "layerwise", "dpl", "dualpath", "oracle")
    model: EngineModel = dataclasses.field(default_factory=EngineModel)
    workload: EngineWorkload = dataclasses.field(default_factory=EngineWorkload)
    arrivals: EngineArrivals = dataclasses.field(default_factory=EngineArrivals)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    profile: ProfileConfig = dataclasses.field(default_factory=ProfileConfig)
    calibrate: CalibrateConfig = dataclasses.field(default_factory=CalibrateConfig)
    repeats: int = 3
    window_s: float = 1.0
    tie_tol: float = 1e-4
    reference_chunk_tokens: int = 512
    runtime: str = "threads"
    runtime_address: str = ""
    ray: EngineRay = dataclasses.field(default_factory=EngineRay)

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ConfigError("runtime", f"{self.runtime!r} is not one of {list(RUNTIMES)}")
        if self.runtime_address and self.runtime != "ray":
            raise ConfigError("runtime_address", "is for runtime='ray'")
        if self.runtime != "ray":  # placement of node actors that a threads run does not start
            for f in dataclasses.fields(EngineRay):
                if getattr(self.ray, f.name) != f.default:
                    raise ConfigError(f"ray.{f.name}", "places the ray runtime's node actors: it is for runtime='ray'")
        if not self.variants:
            raise ConfigError("variants", "must name at least one variant")
        for name in self.variants:
            engine_variant(name)
        check_positive("repeats", self.repeats, integer=True)
        check_positive("window_s", self.window_s)
        check_non_negative("tie_tol", self.tie_tol)
        if self.arrivals.mode == "recorded" and self.workload.source != "mooncake":
            raise ConfigError("arrivals.mode", f"'recorded' replays a Mooncake trace's session arrivals; "
                              f"workload.source={self.workload.source!r}: an agentic trace's times count from its "
                              f"own file's start, so its conversations share no clock")
        if self.calibrate.from_file:
            check_fingerprint(read_calibration(self.calibrate.from_file)["fingerprint"], self,
                              str(calibration_path(self.calibrate.from_file)))
        check_non_negative("reference_chunk_tokens", self.reference_chunk_tokens, integer=True)


_SECTIONS = {"model": EngineModel, "workload": EngineWorkload, "arrivals": EngineArrivals, "profile": ProfileConfig,
             "calibrate": CalibrateConfig, "ray": EngineRay}


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
    if "study" in data and "study" not in known:  # configs/sim_<study>.py
        raise ConfigError("study", f"{data['study']!r}: a simulator study's config, which experiments/run_sim.py "
                          f"runs (the engine's is configs/engine_ablation.py)")
    for key in data:
        if key not in known:
            raise ConfigError(key, f"unknown field of the engine ablation config{did_you_mean(key, known)}; "
                              f"known: {sorted(known)}")
    sections = {key: from_mapping(cls, data.get(key, {}), prefix=f"{key}.") for key, cls in _SECTIONS.items()}
    cluster = from_mapping(ClusterConfig, data.get("cluster", {}), prefix="cluster.")
    rest = {k: data[k] for k in ("repeats", "window_s", "tie_tol", "reference_chunk_tokens", "runtime",
                                 "runtime_address") if k in data}
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
