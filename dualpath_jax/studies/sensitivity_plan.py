"""The sensitivity study's plan: the assumed quantities, the headline figures, the typed config,
the perturbed configurations and cases, and the relative changes (what
:mod:`dualpath_jax.studies.sensitivity` runs and reports; its docstring describes the study).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from dualpath_jax.config import ConfigError, check_in, check_positive
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.studies.config import (AblationStudyConfig, Fig7StudyConfig, OnlineStudyConfig, StudyConfig,
                                         from_config_dict)

__all__ = ["SECTIONS", "Quantity", "QUANTITIES", "LEFT_OUT", "DEFAULT_QUANTITIES", "Headline", "headlines",
           "SensitivityConfig", "sensitivity_config", "perturb_sim", "perturb_study", "headline_sims", "Case",
           "plan_cases", "is_finite", "relative_changes", "tornado_order"]


SECTIONS: dict[str, type[StudyConfig]] = {"ablation": AblationStudyConfig, "fig7": Fig7StudyConfig,
                                          "online": OnlineStudyConfig}
"""The studies a sensitivity run may include, by config section."""


# ---- the assumed quantities ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Quantity:
    """One assumed quantity of the simulator.

    Attributes:
      name: the field, dotted from :class:`~dualpath_jax.sim.config.SimConfig`
        (``attention_efficiency``, ``hardware.hbm_bytes``).
      label: a short name for tables and plots.
      why: why it is an assumption (the PAPER.md 8.6 item) and where its default comes from.
      upper: the largest value it may take (1.0 for a share); a perturbed value above is clipped.
      integer: the value is an integer (a perturbed value is rounded).
      finite_base: how a default that is not a finite number (None, inf) becomes the base value
        (empty for a finite default).
    """

    name: str
    label: str
    why: str
    upper: float | None = None
    integer: bool = False
    finite_base: str = ""

    @property
    def on_hardware(self) -> bool:
        return self.name.startswith("hardware.")

    @property
    def field(self) -> str:
        """The field's own name (without ``hardware.``)."""
        return self.name.partition(".")[2] if self.on_hardware else self.name

    def value(self, sim: SimConfig) -> float | None:
        """The field's value in ``sim`` as set (None or inf where it is unset)."""
        return getattr(sim.hardware if self.on_hardware else sim, self.field)

    def base(self, sim: SimConfig) -> float:
        """The base value the factors apply to: the set value, or, for ``hardware.peak_flops``
        left None, ``sim.peak_flops`` (FLOP/s, the catalog peak of the compute dtype), for
        ``hardware.storage_bytes_per_s`` left inf, one node's SNIC rate ``s x B`` (bytes/s: the
        simulator caps each node's reads at ``min(s x B, storage)``, so this base runs exactly as
        the default)."""
        v = self.value(sim)
        if self.name == "hardware.peak_flops" and v is None:
            return float(sim.peak_flops)
        if self.name == "hardware.storage_bytes_per_s" and not math.isfinite(v):
            return float(sim.hardware.node_snic_bytes_per_s)
        return float(v)

    def scaled(self, sim: SimConfig, factor: float) -> float:
        """``base x factor``, clipped to :attr:`upper` and rounded if :attr:`integer` (at least 1)."""
        v = self.base(sim) * float(factor)
        if self.upper is not None:
            v = min(v, self.upper)
        if self.integer:
            v = max(1, int(round(v)))
        return v


QUANTITIES: dict[str, Quantity] = {q.name: q for q in (
    Quantity("hardware.hbm_bytes", "GPU HBM capacity",
             "GPU SKU and HBM capacity not given (PAPER.md 8.1, 8.6); default: H800 datasheet, 80 GB"),
    Quantity("hardware.hbm_bytes_per_s", "GPU HBM bandwidth",
             "GPU SKU and HBM bandwidth not given (PAPER.md 8.1, 8.6); default: H800 datasheet, 3.35 TB/s"),
    Quantity("hardware.peak_flops", "peak FLOP/s (kernel throughput)",
             "prefill/decode kernel throughput not given (PAPER.md 8.6); default: the catalog peak of the compute "
             "dtype (H800 FP8 1979 TFLOP/s); set, the attention (BF16) and DSA indexer (FP8) peaks follow it",
             finite_base="None: SimConfig.peak_flops, the catalog peak of the model's compute dtype"),
    Quantity("attention_efficiency", "attention kernel efficiency",
             "the exact attention time model is not given (PAPER.md 8.6); default: FlashMLA sparse prefill, "
             "640 of 989 TFLOP/s (sim.compute)", upper=1.0),
    Quantity("eff_memory", "decode HBM efficiency",
             "decode kernel throughput not given (PAPER.md 8.6); default: FlashMLA decode, 3,000 of 3,350 GB/s",
             upper=1.0),
    Quantity("prefill_layer_overhead_s", "per-layer forward overhead",
             "per-layer kernel times not given (PAPER.md 8.1, 8.6); 0.5 ms assumed (launch, EP dispatch/combine)"),
    Quantity("fetch_period_s", "group fetch period",
             "the groups' fetch period is not given (PAPER.md 8.4, 8.6); 20 ms assumed"),
    Quantity("alpha_s", "Algorithm 1 alpha",
             "how alpha was measured per model is not given (PAPER.md 8.6); 3 s of SNIC reads (PAPER.md 8.4)"),
    Quantity("beta_s", "Algorithm 1 beta",
             "how beta was measured per model is not given (PAPER.md 8.6); 5 s of prefill (PAPER.md 8.4)"),
    Quantity("hardware.cnic_kv_share", "CNIC share left to KV",
             "KV rides a low-priority class (PAPER.md 8.1, QoS) whose share under bursty model traffic is not "
             "given (PAPER.md 8.6); 0.9 assumed", upper=1.0),
    Quantity("activation_reserve_bytes", "PE activation reserve",
             "HBM reservations per engine not given (PAPER.md 8.6); 4 GB assumed"),
    Quantity("basic_max_batch_tokens", "Basic's FIFO batch cap",
             "how Basic (no scheduling) batches is not given (PAPER.md 8.6); 16,384 new tokens assumed", integer=True),
    Quantity("hardware.hbm_usable_fraction", "usable HBM share",
             "HBM reservations (runtime, fragmentation) not given (PAPER.md 8.6); 0.9 assumed", upper=1.0),
    Quantity("hardware.storage_bytes_per_s", "storage read rate per node",
             "3FS cluster size and per-SSD bandwidth not given (PAPER.md 8.6); default inf: 3FS saturates every "
             "SNIC (PAPER.md 8.1), so only a lower rate changes a run",
             finite_base="inf: one node's SNIC rate s x B (each node reads at min(s x B, storage))"),
)}
"""Every quantity a sensitivity run may perturb, by dotted field name."""

DEFAULT_QUANTITIES: tuple[str, ...] = tuple(n for n in QUANTITIES if n != "hardware.storage_bytes_per_s")
"""The quantities of the default run (``configs/sensitivity.py``)."""

LEFT_OUT: dict[str, str] = {
    "de_join_s": "0 by default (the paper gives no admission cost, PAPER.md 8.6): a factor on 0 stays 0",
    "attention_time_error": "0 by default (the paper gives no error for its attention-time estimate, PAPER.md "
                            "5.5): a factor on 0 stays 0",
    "layerwise_depth": "an integer, 2 (double buffering): -25% and +25% round back to 2",
    "z_factor": "a paper value (PAPER.md 5.3: 1.05), not an unknown of 8.6",
    "compute_quota_s": "a paper value (PAPER.md 8.4: 300 ms), not an unknown of 8.6",
    "hardware.{cnic,snic,dram}_bytes_per_s, hardware.dram_buffer_bytes, hardware.gpus_per_node, block_tokens":
        "paper values (PAPER.md 8.1)",
    "compute model constants (sim.compute.PUBLIC_FIGURES)": "DeepSeek's public throughput figures and the H800 "
    "datasheet (PAPER.md 9), the calibration itself",
}
"""Fields of the simulator that no sensitivity run perturbs, with the reason (quantities of
:data:`QUANTITIES` a config does not select are listed with theirs)."""


# ---- the headline figures -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Headline:
    """One headline figure: ``name`` in the outputs, read as ``key`` from the named values of
    ``study`` (:func:`.registry.run_study`)."""

    name: str
    study: str
    key: str
    label: str


def headlines(studies: Sequence[StudyConfig]) -> list[Headline]:
    """The headline figures of ``studies``: the ablation's speedup over Basic of every variant
    but Basic (``ablation_speedup_<variant>_vs_basic``), Fig. 7's best-cell DualPath speedup
    (``fig7_speedup_dualpath_vs_basic``: the study's ``max_speedup_dualpath_vs_basic``, the one
    cell's with a one-cell grid) and the online max-APS gain averaged over the rows
    (``online_aps_gain_dualpath_vs_basic``: ``mean_aps_gain_dualpath_vs_basic``)."""
    out = []
    for s in studies:
        if isinstance(s, AblationStudyConfig):
            out += [Headline(f"ablation_speedup_{v}_vs_basic", "ablation", f"speedup_{v}_vs_basic",
                             f"ablation: {v} speedup over Basic") for v in s.variants if v != "basic"]
        elif isinstance(s, Fig7StudyConfig):
            out.append(Headline("fig7_speedup_dualpath_vs_basic", "fig7", "max_speedup_dualpath_vs_basic",
                                "Fig. 7: DualPath speedup over Basic"))
        elif isinstance(s, OnlineStudyConfig):
            out.append(Headline("online_aps_gain_dualpath_vs_basic", "online", "mean_aps_gain_dualpath_vs_basic",
                                "online: max-APS gain of DualPath over Basic"))
    return out


# ---- config -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
    """A sensitivity run.

    Attributes:
      quantities: names of :data:`QUANTITIES` to perturb, one at a time.
      change: the relative change, in (0, 1): low = base x (1 - change), high = base x (1 + change).
      studies: the studies whose headlines are measured (ablation, Fig. 7, online; at least one,
        each at most once), each needing ``basic`` and ``dualpath`` among its variants.

    Raises:
      ConfigError: naming ``quantities``, ``change``, ``studies`` or ``<study>.variants``.
    """

    quantities: tuple[str, ...] = DEFAULT_QUANTITIES
    change: float = 0.25
    studies: tuple[StudyConfig, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "quantities", tuple(self.quantities))
        if not self.quantities:
            raise ConfigError("quantities", "must name at least one quantity")
        for name in self.quantities:
            check_in("quantities", name, tuple(QUANTITIES))
        if len(set(self.quantities)) != len(self.quantities):
            raise ConfigError("quantities", f"names a quantity twice: {list(self.quantities)}")
        check_positive("change", self.change)
        if not self.change < 1.0:
            raise ConfigError("change", f"must be < 1 (a factor 1 - change > 0 on every value; got {self.change})")
        object.__setattr__(self, "studies", tuple(self.studies))
        if not self.studies:
            raise ConfigError("studies", "must name at least one study")
        kinds = [type(s).study for s in self.studies]
        for kind in kinds:
            check_in("studies", kind, tuple(SECTIONS))
        if len(set(kinds)) != len(kinds):
            raise ConfigError("studies", f"names a study twice: {kinds}")
        for s in self.studies:
            missing = [v for v in ("basic", "dualpath") if v not in s.variants]
            if missing:
                raise ConfigError(f"{type(s).study}.variants", f"needs {missing}: every headline is a gain over Basic")


def sensitivity_config(config) -> SensitivityConfig:
    """The typed config of a ``configs/sensitivity.py`` ConfigDict: ``quantities``, ``change``,
    ``studies`` (section names) and one study ConfigDict per section (``ablation``, ``fig7``,
    ``online``: as in ``configs/sim_<study>.py``).

    Raises:
      ConfigError: naming the field, with its section for a study's (``online.search.rel_tol``).
    """
    names = tuple(config["studies"]) if "studies" in config else ()
    studies = []
    for section in names:
        check_in("studies", section, tuple(SECTIONS))
        if section not in config:
            raise ConfigError(section, f"is listed in studies but the config has no {section!r} section")
        sub = config[section]
        if sub.get("study") != section:
            raise ConfigError(f"{section}.study", f"must be {section!r} (got {sub.get('study')!r})")
        try:
            studies.append(from_config_dict(sub))
        except ConfigError as e:
            raise ConfigError(f"{section}.{e.field}", e.message) from None
    return SensitivityConfig(quantities=tuple(config.get("quantities", DEFAULT_QUANTITIES)),
                             change=float(config.get("change", 0.25)), studies=tuple(studies))


# ---- perturbations -----------------------------------------------------------------------------------
def perturb_sim(sim: SimConfig, quantity: Quantity, factor: float) -> SimConfig:
    """``sim`` with ``quantity`` at :meth:`Quantity.scaled` ``(sim, factor)``.

    Raises:
      ConfigError: naming the field when the value is invalid for it.
    """
    value = quantity.scaled(sim, factor)
    if quantity.on_hardware:
        return sim.replace(hardware=dataclasses.replace(sim.hardware, **{quantity.field: value}))
    return sim.replace(**{quantity.field: value})


def perturb_study(study: StudyConfig, quantity: Quantity, factor: float) -> StudyConfig:
    """``study`` with ``quantity`` scaled by ``factor`` in its base SimConfig and in each row's
    (Fig. 7, online), each relative to its own base value.

    Raises:
      ConfigError: naming the field when a value is invalid for it.
    """
    changes: dict = {"sim": perturb_sim(study.sim, quantity, factor)}
    rows = getattr(study, "rows", None)
    if rows:
        changes["rows"] = tuple(dataclasses.replace(r, sim=perturb_sim(r.sim, quantity, factor)) for r in rows)
    return dataclasses.replace(study, **changes)


def headline_sims(study: StudyConfig) -> list[SimConfig]:
    """The SimConfigs a study's runs are built on: its rows' (Fig. 7, online), else its base."""
    rows = getattr(study, "rows", None)
    return [r.sim for r in rows] if rows else [study.sim]


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration of the sensitivity run: the base (``quantity`` None) or one quantity at
    its ``low`` or ``high`` value.

    Attributes:
      label: ``base`` or ``<quantity>_<side>`` (its folder under ``runs/``).
      quantity, side: the quantity perturbed and ``low`` / ``high`` (None, ``base`` for the base).
      factor: the factor asked for (``1 -/+ change``).
      studies: the perturbed study configs (empty when ``error`` is set).
      error: why the configs could not be built (a ConfigError's line), else empty.
    """

    label: str
    quantity: str | None
    side: str
    factor: float
    studies: tuple[StudyConfig, ...]
    error: str = ""


def plan_cases(config: SensitivityConfig) -> list[Case]:
    """The base case, then each quantity of ``config`` at low and at high."""
    cases = [Case("base", None, "base", 1.0, config.studies)]
    for name in config.quantities:
        q = QUANTITIES[name]
        for side, factor in (("low", 1.0 - config.change), ("high", 1.0 + config.change)):
            try:
                studies = tuple(perturb_study(s, q, factor) for s in config.studies)
                cases.append(Case(f"{name}_{side}", name, side, factor, studies))
            except ConfigError as e:
                cases.append(Case(f"{name}_{side}", name, side, factor, (), f"ConfigError: {e}"))
    return cases


# ---- the figures ------------------------------------------------------------------------------------
def is_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def relative_changes(base: float, low: float, high: float) -> dict[str, float]:
    """``rel_low = low / base - 1``, ``rel_high = high / base - 1`` and ``swing = max(|rel_low|,
    |rel_high|)`` over the defined ones (NaN for an undefined value: a failed case or a NaN
    figure; the swing is NaN only when both are)."""
    nan = float("nan")
    rel = {}
    for side, v in (("low", low), ("high", high)):
        rel[f"rel_{side}"] = v / base - 1.0 if is_finite(v) and is_finite(base) and base != 0 else nan
    defined = [abs(v) for v in rel.values() if not math.isnan(v)]
    rel["swing"] = max(defined) if defined else nan
    return rel


def tornado_order(rows: Sequence[Mapping]) -> list[Mapping]:
    """``rows`` (each with ``quantity`` and ``swing``) by decreasing swing, NaN swings last, ties
    by quantity name: the tornado's order from the top."""
    def key(r):
        s = r.get("swing")
        undefined = s is None or not is_finite(s)
        return (undefined, 0.0 if undefined else -float(s), str(r.get("quantity")))
    return sorted(rows, key=key)
