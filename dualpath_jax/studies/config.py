"""Typed configs of the paper's simulator studies, built once from a study's ConfigDict.

A study (:mod:`.ablation`, :mod:`.offline`, :mod:`.online`) receives a frozen dataclass:
:class:`AblationStudyConfig`, :class:`Fig7StudyConfig`, ... Each holds validated
:class:`~dualpath_jax.sim.SimConfig` objects (the study's base and, for row studies, each row's),
its :class:`~.common.WorkloadSpec`, the ablation variants it runs and the scheduler class every run uses
(``scheduler``: a :class:`~dualpath_jax.sched.ClusterScheduler` subclass, the built-in one by
default; a string ``"pkg.module:Class"`` is loaded with :func:`dualpath_jax.sched.load_scheduler`).

:func:`from_config_dict` turns a ``configs/sim_<study>.py`` ConfigDict into its typed config, with
errors that name the ConfigDict field (``sim.<field>``, ``workload.<field>``, ``rows.<row>.<field>``,
``scheduler``, ...). :func:`check_sim_overrides` rejects command-line overrides of ``sim`` fields
that a study sets for each of its runs. :func:`describe_study_config` lists a study's ConfigDict
field by field with type, default and meaning (``run_sim.py --print_config``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from dualpath_jax.config import (ConfigError, check_at_most, check_fraction, check_in, check_non_negative,
                                 check_positive, describe_config, did_you_mean, from_mapping)
from dualpath_jax.metrics.latency import SLO
from dualpath_jax.sched import ABLATION_VARIANTS, ClusterScheduler, get_variant, load_scheduler
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.hardware import HardwareConfig
from dualpath_jax.studies.common import OnlineWindow, WorkloadSpec, as_dict, parse_cluster, refuse_replay, sim_config
from dualpath_jax.workload import MAL_TOKENS

__all__ = ["SearchConfig", "ModelRow", "OnlineRow", "StudyConfig", "AblationStudyConfig", "Fig7StudyConfig",
           "Fig8StudyConfig", "Fig9StudyConfig", "PdSweepStudyConfig", "BalanceStudyConfig", "OnlineStudyConfig",
           "TtftBreakdownStudyConfig", "WorkingSetStudyConfig", "Table3StudyConfig", "STUDY_CONFIGS",
           "from_config_dict", "per_run_sim_fields", "check_sim_overrides", "describe_study_config"]

MAX_SEEDS = 1000
"""Most seeds a study takes (a 95% interval needs a handful; each seed reruns every configuration)."""


# ---- pieces of study configs ---------------------------------------------------------------------
def _positives(field: str, values, *, integer: bool = False) -> tuple:
    """``values`` as a non-empty tuple of positive numbers (floats unless ``integer``)."""
    out = tuple(values)
    if not out:
        raise ConfigError(field, "must not be empty")
    for v in out:
        check_positive(field, v, integer=integer)
    return out if integer else tuple(float(v) for v in out)


def _clusters(field: str, values) -> tuple[str, ...]:
    """``values`` as a tuple of valid ``"<P>P<D>D"`` names."""
    out = tuple(values)
    for c in out:
        parse_cluster(c, field)
    return out


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The max-APS search (``metrics.latency.max_aps_under_slo``); errors name ``search.<field>``."""

    enabled: bool = True
    rel_tol: float = 0.1
    max_runs: int = 10
    min_aps: float = 1e-3
    max_aps: float = 64.0

    def __post_init__(self):
        for name in ("rel_tol", "min_aps", "max_aps"):
            check_positive(f"search.{name}", getattr(self, name))
        check_positive("search.max_runs", self.max_runs, integer=True)


@dataclasses.dataclass(frozen=True)
class ModelRow:
    """One model row of Fig. 7: ``key`` (config name), ``label`` (for tables) and its SimConfig."""

    key: str
    label: str
    sim: SimConfig


@dataclasses.dataclass(frozen=True)
class OnlineRow:
    """One model row of the online study: its SimConfig, APS grid (agents/s), the search's first
    rate and how its runs are sized.

    Attributes:
      aps_grid: the rates (agents/s) every variant runs at.
      initial_aps: the max-APS search's first rate (agents/s).
    """

    key: str
    label: str
    sim: SimConfig
    aps_grid: tuple[float, ...]
    initial_aps: float
    window: OnlineWindow = OnlineWindow()

    def __post_init__(self):
        object.__setattr__(self, "aps_grid", _positives(f"rows.{self.key}.aps_grid", self.aps_grid))
        check_positive(f"rows.{self.key}.initial_aps", self.initial_aps)


# ---- study configs -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Fields every study has.

    Attributes:
      sim: the study's base SimConfig (rows and clusters are set on top of it).
      variants: ablation variants each configuration runs (``sched.VARIANTS``, or any
        ``"<loading>+<prefill>+<policy>"``: ``sched.get_variant``).
      scheduler: the ClusterScheduler subclass of every run (a ``"pkg.module:Class"`` string is loaded).
      seeds: runs per configuration, R >= 1: seed r uses workload seed ``workload.seed + r`` (and
        arrival seed ``arrival_seed + r`` online); figures are the mean over the R runs with a 95%
        Student-t interval (``studies.seeds``).

    Raises:
      ConfigError: naming ``variants``, ``scheduler`` or ``seeds``.
    """

    study: ClassVar[str] = ""
    sim: SimConfig = dataclasses.field(default_factory=SimConfig)
    variants: tuple[str, ...] = ("basic", "dualpath", "oracle")
    scheduler: type = ClusterScheduler
    seeds: int = 1

    def __post_init__(self):
        check_positive("seeds", self.seeds, integer=True)
        check_at_most("seeds", self.seeds, MAX_SEEDS, "each seed is a full run of every configuration")
        object.__setattr__(self, "variants", tuple(self.variants))
        if not self.variants:
            raise ConfigError("variants", "must name at least one variant")
        for name in self.variants:
            get_variant(name)
        object.__setattr__(self, "scheduler", load_scheduler(self.scheduler, field="scheduler"))


@dataclasses.dataclass(frozen=True)
class AblationStudyConfig(StudyConfig):
    """Fig. 12 right: ``variants`` offline on MAL ``mal`` at each of ``num_agents``.

    Attributes:
      mal: the MAL of every run (it sets each run's ``workload.mal``: set it here, not there).
      num_agents: agent counts, one batch each (each run's ``workload.num_agents``: set them here, not
        there); JCT is averaged over them.
      seed: the generator's seed (it sets ``workload.seed``: set it here, not there).
      workload: the rest of the workload: its source (the paper's generator or a trace), token
        scaling and sub-agents.
    """

    study: ClassVar[str] = "ablation"
    variants: tuple[str, ...] = tuple(ABLATION_VARIANTS)
    mal: str = "64K"
    num_agents: tuple[int, ...] = (1024, 2048)
    seed: int = 0
    workload: WorkloadSpec = WorkloadSpec()

    def __post_init__(self):
        super().__post_init__()
        check_in("mal", self.mal, MAL_TOKENS)
        object.__setattr__(self, "num_agents", _positives("num_agents", self.num_agents, integer=True))


@dataclasses.dataclass(frozen=True)
class Fig7StudyConfig(StudyConfig):
    """Fig. 7: each model row x MAL x agent count x variant, offline.

    Attributes:
      mals: the MALs, one column of panels each (each run's ``workload.mal``: set them here).
      num_agents: agent counts of each panel (each run's ``workload.num_agents``: set them here).
      workload: the rest of the workload.
    """

    study: ClassVar[str] = "fig7"
    rows: tuple[ModelRow, ...] = ()
    mals: tuple[str, ...] = ("32K", "48K", "64K")
    num_agents: tuple[int, ...] = (512, 1024, 2048, 4096)
    workload: WorkloadSpec = WorkloadSpec()

    def __post_init__(self):
        super().__post_init__()
        if not self.rows:
            raise ConfigError("row_order", "must name at least one row")
        object.__setattr__(self, "mals", tuple(self.mals))
        for mal in self.mals:
            check_in("mals", mal, MAL_TOKENS)
        object.__setattr__(self, "num_agents", _positives("num_agents", self.num_agents, integer=True))


@dataclasses.dataclass(frozen=True)
class Fig8StudyConfig(StudyConfig):
    """Fig. 8: each ``"<P>P<D>D"`` cluster x agent count x variant, offline.

    Attributes:
      clusters: the clusters, ``"<P>P<D>D"`` (P prefill and D decode nodes).
      num_agents: agent counts (each run's ``workload.num_agents``: set them here).
      workload: the rest of the workload.
    """

    study: ClassVar[str] = "fig8"
    variants: tuple[str, ...] = ("basic", "dualpath")
    clusters: tuple[str, ...] = ("1P1D", "2P1D", "1P2D")
    num_agents: tuple[int, ...] = (512, 1024, 2048)
    workload: WorkloadSpec = WorkloadSpec()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "clusters", _clusters("clusters", self.clusters))
        object.__setattr__(self, "num_agents", _positives("num_agents", self.num_agents, integer=True))


@dataclasses.dataclass(frozen=True)
class Fig9StudyConfig(StudyConfig):
    """Fig. 9: append (``"append"`` in ``scale``) and generation (``"gen"``) lengths times each of
    ``factors``, at ``num_agents`` agents, offline.

    Attributes:
      scale: which lengths are scaled, one after the other: ``append``, ``gen``.
      factors: the scaling factors (each run's ``workload.append_factor`` / ``gen_factor``: set them here).
      num_agents: agents of every run.
      workload: the rest of the workload (the paper's generator only).
    """

    study: ClassVar[str] = "fig9"
    scale: tuple[str, ...] = ("append", "gen")
    factors: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    num_agents: int = 1024
    workload: WorkloadSpec = WorkloadSpec()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "scale", tuple(self.scale))
        for kind in self.scale:
            check_in("scale", kind, ("append", "gen"))
        object.__setattr__(self, "factors", _positives("factors", self.factors))
        check_positive("num_agents", self.num_agents, integer=True)
        if self.workload.source != "synthetic":
            raise ConfigError("workload.source", f"fig9 scales the generator's append and generation lengths; a trace "
                              f"({self.workload.source!r}) keeps its recorded lengths: use synthetic")


@dataclasses.dataclass(frozen=True)
class PdSweepStudyConfig(StudyConfig):
    """Eq. 9 P/D sweep: each cluster x variant on ``workload``, offline.

    Attributes:
      clusters: the clusters, ``"<P>P<D>D"``.
      workload: the workload of every run.
    """

    study: ClassVar[str] = "pd_sweep"
    variants: tuple[str, ...] = ("basic", "dualpath")
    clusters: tuple[str, ...] = ("1P8D", "2P7D", "3P6D", "4P5D", "5P4D", "6P3D", "7P2D", "8P1D")
    workload: WorkloadSpec = WorkloadSpec()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "clusters", _clusters("clusters", self.clusters))


@dataclasses.dataclass(frozen=True)
class BalanceStudyConfig(StudyConfig):
    """Fig. 13-14: SNIC traffic Max/Avg in ``window_s`` windows and attention Max/Avg (over the
    forwards of the run's first ``head_fraction`` of time, and of its first ``head_fraction`` of
    forwards) of each variant at ``num_agents`` agents.

    Attributes:
      num_agents: agents of every run.
      window_s: the SNIC traffic windows, seconds.
      head_fraction: the head of the run that Fig. 14 reads: this share of its time (JCT) and,
        separately, of its forwards (PAPER.md 5.5: "the first 5% of the task"); in (0, 1].
      workload: the rest of the workload.
    """

    study: ClassVar[str] = "balance"
    variants: tuple[str, ...] = ("dpl", "dualpath")
    num_agents: int = 1024
    window_s: float = 10.0
    head_fraction: float = 0.05
    workload: WorkloadSpec = WorkloadSpec()

    def __post_init__(self):
        super().__post_init__()
        check_positive("num_agents", self.num_agents, integer=True)
        check_positive("window_s", self.window_s)
        check_fraction("head_fraction", self.head_fraction)
        if self.head_fraction == 0:  # an empty head has no forwards to read
            raise ConfigError("head_fraction", "must be above 0 (got 0)")


@dataclasses.dataclass(frozen=True)
class OnlineStudyConfig(StudyConfig):
    """Fig. 10/11: each model row's APS grid and max-APS search under ``slo``, per variant.

    Attributes:
      workload: the workload the agents' trajectories come from.
      arrival_seed: seed of the Poisson arrivals (seed r of ``seeds`` uses ``arrival_seed + r``).
    """

    study: ClassVar[str] = "online"
    rows: tuple[OnlineRow, ...] = ()
    workload: WorkloadSpec = WorkloadSpec()
    arrival_seed: int = 0
    slo: SLO = SLO()
    search: SearchConfig = SearchConfig()

    def __post_init__(self):
        super().__post_init__()
        if not self.rows:
            raise ConfigError("row_order", "must name at least one row")
        check_non_negative("arrival_seed", self.arrival_seed, integer=True)
        refuse_replay(self.workload)


@dataclasses.dataclass(frozen=True)
class TtftBreakdownStudyConfig(StudyConfig):
    """Fig. 12 left: online runs of each variant at each rate of ``aps_grid``.

    Attributes:
      aps_grid: the rates (agents/s).
      arrival_seed: seed of the Poisson arrivals (seed r of ``seeds`` uses ``arrival_seed + r``).
      workload: the workload the agents' trajectories come from.
    """

    study: ClassVar[str] = "ttft_breakdown"
    variants: tuple[str, ...] = ("dualpath",)
    aps_grid: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
    arrival_seed: int = 0
    window: OnlineWindow = OnlineWindow()
    workload: WorkloadSpec = WorkloadSpec()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "aps_grid", _positives("aps_grid", self.aps_grid))
        check_non_negative("arrival_seed", self.arrival_seed, integer=True)
        refuse_replay(self.workload)


@dataclasses.dataclass(frozen=True)
class WorkingSetStudyConfig(TtftBreakdownStudyConfig):
    """Section 8.2: the same online runs as the TTFT breakdown, reduced to the working set."""

    study: ClassVar[str] = "working_set"


@dataclasses.dataclass(frozen=True)
class Table3StudyConfig(StudyConfig):
    """Table 3: offline ``(cluster, agents)`` cases and online ``(cluster, aps, agents)`` cases.

    Attributes:
      offline_cases: ``(cluster, agents)`` offline runs.
      online_cases: ``(cluster, aps, agents)`` online runs.
      online_warmup_fraction: share of an online case's arrival window (``agents / aps`` seconds)
        whose requests are not measured, so that its latencies are those of the loaded cluster
        (as the online study's warm-up does), not of the ramp-up from an empty one; in [0, 1).
      arrival_seed: seed of the Poisson arrivals (seed r of ``seeds`` uses ``arrival_seed + r``).
      workload: the rest of the workload.
    """

    study: ClassVar[str] = "table3"
    variants: tuple[str, ...] = ("dualpath",)
    offline_cases: tuple[tuple[str, int], ...] = (("2P4D", 2048), ("48P96D", 49152))
    online_cases: tuple[tuple[str, float, int], ...] = (("2P4D", 0.4, 1024), ("44P88D", 8.8, 22528))
    online_warmup_fraction: float = 0.5
    arrival_seed: int = 0
    workload: WorkloadSpec = WorkloadSpec()

    def __post_init__(self):
        super().__post_init__()
        refuse_replay(self.workload, "its offline cases could replay them, its online cases cannot: run the "
                      "offline cases as an ablation study with workload.replay_timestamps")
        offline, online = [], []
        for case in self.offline_cases:
            if len(case) != 2:
                raise ConfigError("offline_cases", f"each case is (cluster, agents) (got {case!r})")
            parse_cluster(case[0], "offline_cases")
            check_positive("offline_cases", case[1], integer=True)
            offline.append((str(case[0]), int(case[1])))
        for case in self.online_cases:
            if len(case) != 3:
                raise ConfigError("online_cases", f"each case is (cluster, aps, agents) (got {case!r})")
            parse_cluster(case[0], "online_cases")
            check_positive("online_cases", case[1])
            check_positive("online_cases", case[2], integer=True)
            online.append((str(case[0]), float(case[1]), int(case[2])))
        object.__setattr__(self, "offline_cases", tuple(offline))
        object.__setattr__(self, "online_cases", tuple(online))
        check_non_negative("online_warmup_fraction", self.online_warmup_fraction)
        if not self.online_warmup_fraction < 1.0:
            raise ConfigError("online_warmup_fraction", f"must be < 1: a share of the arrival window "
                              f"(got {self.online_warmup_fraction})")
        check_non_negative("arrival_seed", self.arrival_seed, integer=True)


STUDY_CONFIGS: dict[str, type[StudyConfig]] = {cls.study: cls for cls in (
    AblationStudyConfig, Fig7StudyConfig, Fig8StudyConfig, Fig9StudyConfig, PdSweepStudyConfig, BalanceStudyConfig,
    OnlineStudyConfig, TtftBreakdownStudyConfig, WorkingSetStudyConfig, Table3StudyConfig)}
"""Study name (``config.study``) -> its typed config class."""

_WINDOW_KEYS = tuple(f.name for f in dataclasses.fields(OnlineWindow))


# ---- ConfigDict -> typed config ------------------------------------------------------------------
def _rows(cls: type[StudyConfig], data: dict, base_layer: dict, window: dict) -> tuple:
    """The model rows of ``data["rows"]`` in ``data["row_order"]`` (popped), on ``base_layer``."""
    rows, order = data.pop("rows", {}) or {}, data.pop("row_order", ()) or ()
    out = []
    for key in order:
        if key not in rows:
            raise ConfigError("row_order", f"no row {key!r}; rows: {sorted(rows)}")
        row = dict(rows[key])
        sim = sim_config(base_layer, row.pop("sim", {}))
        label = str(row.pop("label", key))
        if cls is Fig7StudyConfig:
            extra = row
            out.append(ModelRow(key, label, sim))
        else:
            win = from_mapping(OnlineWindow, {**window, **{k: row.pop(k) for k in _WINDOW_KEYS if k in row}})
            for name in ("aps_grid", "initial_aps"):
                if name not in row:
                    raise ConfigError(f"rows.{key}.{name}", "is required")
            out.append(OnlineRow(key, label, sim, row.pop("aps_grid"), row.pop("initial_aps"), win))
            extra = row
        if extra:
            raise ConfigError(f"rows.{key}.{sorted(extra)[0]}", f"not a field of a {cls.study} row")
    return tuple(out)


def _plain(value):
    """Lists (as JSON or ConfigDict give them) as tuples, recursively."""
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def from_config_dict(config) -> StudyConfig:
    """The typed config of the study named by ``config.study`` (a ConfigDict or mapping as in
    ``configs/sim_<study>.py``).

    ``config.sim`` becomes the base :class:`SimConfig`; ``config.workload`` with ``config.seed``
    the :class:`WorkloadSpec`; ``rows`` in ``row_order`` are merged onto ``sim`` one by one;
    ``horizon_s``, ``warmup_s`` and ``max_agents_per_run`` form the :class:`OnlineWindow` (a
    row may set its own); ``config.scheduler`` (``""``: the built-in scheduler) is loaded with
    :func:`dualpath_jax.sched.load_scheduler`.

    Raises:
      ConfigError: naming the field: an unknown ``study``, a key the study does not have, or any
        invalid value (``sim.<field>``, ``workload.<field>``, ``rows.<row>.<field>``, ``scheduler``, ...).
    """
    data = as_dict(config)
    study = data.pop("study", None)
    if study is None and {"cluster", "repeats"} <= set(data):  # configs/engine_ablation.py
        raise ConfigError("study", "the config has no study: it is the real engine's config "
                          "(configs/engine_ablation.py), which experiments/run_engine.py runs")
    if study not in STUDY_CONFIGS:
        raise ConfigError("study", f"unknown study {study!r}{did_you_mean(str(study), STUDY_CONFIGS)}; known: "
                          f"{sorted(STUDY_CONFIGS)}")
    cls = STUDY_CONFIGS[study]
    names = {f.name for f in dataclasses.fields(cls)}
    base_layer = data.pop("sim", {}) or {}
    kwargs: dict = {"sim": sim_config(base_layer),
                    "scheduler": load_scheduler(data.pop("scheduler", "") or "", field="scheduler")}
    seed = data.pop("seed", 0)
    if "seed" in names:
        kwargs["seed"] = seed
    if "workload" in names:
        kwargs["workload"] = from_mapping(WorkloadSpec, {"seed": seed, **(data.pop("workload", {}) or {})},
                                          prefix="workload.")
    has_window = "window" in names or cls is OnlineStudyConfig  # online rows take these as their defaults
    window = {k: data.pop(k) for k in _WINDOW_KEYS if k in data} if has_window else {}
    if "window" in names:
        kwargs["window"] = from_mapping(OnlineWindow, window)
    if "rows" in names:
        kwargs["rows"] = _rows(cls, data, base_layer, window)
    if "slo" in names:
        kwargs["slo"] = from_mapping(SLO, data.pop("slo", {}) or {}, prefix="slo.")
    if "search" in names:
        kwargs["search"] = from_mapping(SearchConfig, data.pop("search", {}) or {}, prefix="search.")
    plain = names - {"sim", "scheduler", "seed", "workload", "window", "rows", "slo", "search"}  # built above
    for key, value in data.items():
        if key not in plain:
            known = sorted(plain | {"study", "sim", "scheduler", "seed"} | ({"workload", "slo", "search"} & names)
                           | ({"rows", "row_order"} if "rows" in names else set())
                           | (set(_WINDOW_KEYS) if has_window else set()))
            raise ConfigError(key, f"not a field of study {study!r}{did_you_mean(key, known)}; its fields: {known}")
        kwargs[key] = _plain(value)
    return cls(**kwargs)


# ---- overrides a study would overwrite -----------------------------------------------------------
def per_run_sim_fields(config) -> dict[str, str]:
    """``sim`` fields that a study sets for each of its runs, so that a ``--config.sim.<field>``
    override would be overwritten: field (dotted, e.g. ``hardware.dram_buffer_bytes``) -> the
    config entry that sets it (``variants``: the ablation switches; ``rows.<row>.sim``; the
    cluster lists ``clusters``, ``offline_cases``, ``online_cases``). ``config``: the study's
    ConfigDict or mapping."""
    out: dict[str, str] = {}
    if "variants" in config:
        out.update(dict.fromkeys(("loading", "prefill", "policy"), "config.variants"))
    if "rows" in config and "row_order" in config:
        for row in config["row_order"]:
            stack = [("", as_dict(config["rows"][row]).get("sim", {}))]
            while stack:
                prefix, node = stack.pop()
                for key, value in node.items():
                    if isinstance(value, dict):
                        stack.append((f"{prefix}{key}.", value))
                    else:
                        out.setdefault(f"{prefix}{key}", f"config.rows.{row}.sim")
    lists = [f"config.{name}" for name in ("clusters", "offline_cases", "online_cases") if name in config]
    if lists:
        out.update(dict.fromkeys(("prefill_nodes", "decode_nodes"), " and ".join(lists)))
    return out


def check_sim_overrides(config, overridden: Sequence[str]) -> None:
    """Reject overrides of ``sim`` fields that the study would overwrite in each run
    (:func:`per_run_sim_fields`), instead of ignoring them silently.

    Args:
      config: the study's ConfigDict or mapping (``study``, ``variants``, ``rows``, ...).
      overridden: dotted names of the config fields the user set, relative to the config (e.g.
        ``["sim.beta_s", "num_agents"]``; an entry point collects them from its command line).

    Raises:
      ConfigError: naming ``sim.<field>`` and the config entry to change instead.
    """
    per_run = per_run_sim_fields(config)
    for name in overridden:
        field = name[len("sim."):] if name.startswith("sim.") else None
        if field in per_run:
            raise ConfigError(f"sim.{field}", f"study {config['study']!r} sets it for each run from "
                              f"{per_run[field]}; change that instead")


# ---- --print_config --------------------------------------------------------------------------------
_DOCS = {
    "study": "which study runs (dualpath_jax.studies.STUDIES).",
    "seed": "seed of the paper's workload generator (workload.seed); seed r of seeds uses seed + r.",
    "row_order": "the rows of rows that run, in this order.",
    "rows.*.label": "the row's name in tables and plots.",
    "rows.*.sim.*": "the row's SimConfig field (on top of sim).",
    "slo.ttft_s": "the SLO's bound on TTFT, seconds (paper: 4 s).",
    "slo.tpot_s": "the SLO's bound on TPOT, seconds (paper: 50 ms).",
    "slo.statistic": "the statistic of TTFT and TPOT the SLO bounds (mean, p50, p99, ...).",
    "slo.window_s": "TTFT is bounded over every sliding window of this many seconds of issue times too (150 s: "
                    "the paper's steadiness window; a quarter of a shorter measured span; 0: the span as a whole).",
    "search.enabled": "run the max-APS search.",
    "search.rel_tol": "the search stops when the bracket is this narrow (relative).",
    "search.max_runs": "at most this many runs per search.",
    "search.min_aps": "the lowest rate the search tries (agents/s).",
    "search.max_aps": "the highest rate the search tries (agents/s).",
}


def describe_study_config(config) -> str:
    """Every field of a study's ConfigDict (``configs/sim_<study>.py``, after overrides), one per
    line with its value, type, default and one-line meaning (:func:`dualpath_jax.config.describe_config`).

    Raises:
      ConfigError: naming the field, for a config :func:`from_config_dict` rejects.
    """
    typed = from_config_dict(config)
    cls = type(typed)
    schema = [("", cls), ("", OnlineWindow), ("sim.", SimConfig), ("sim.hardware.", HardwareConfig),
              ("workload.", WorkloadSpec), ("slo.", SLO), ("search.", SearchConfig), ("rows.*.", OnlineRow),
              ("rows.*.", OnlineWindow), ("rows.*.sim.", SimConfig), ("rows.*.sim.hardware.", HardwareConfig)]
    return describe_config(config, schema, docs=_DOCS,
                           title=f"# study {cls.study!r} ({cls.__name__}); set a field with --config.<name>=<value>")
