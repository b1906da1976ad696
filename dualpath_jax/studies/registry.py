"""The paper's simulator studies by name, and one call that runs any of them.

=================  ==========================================  ===============================
name               paper                                       function
=================  ==========================================  ===============================
ablation           Fig. 12 right ablation                      :func:`.ablation.ablation`
fig7               Fig. 7 offline JCT vs agents (3 models)     :func:`.offline.fig7`
fig8               Fig. 8 P/D ratio on DS 27B                  :func:`.offline.fig8`
fig9               Fig. 9 append / generation scaling          :func:`.offline.fig9`
online             Fig. 10/11 online serving, max APS          :func:`.online.online`
ttft_breakdown     Fig. 12 left TTFT breakdown                 :func:`.online.ttft_breakdown`
balance            Fig. 13-14 SNIC / attention Max/Avg         :func:`.offline.balance`
table3             Table 3 scale-out                           :func:`.online.table3`
pd_sweep           Eq. 9 bottleneck-free P/D range             :func:`.offline.pd_sweep`
working_set        section 8.2 working set                     :func:`.online.working_set`
=================  ==========================================  ===============================

Configs: ``configs/sim_<name>.py`` (a ConfigDict, turned into the study's typed config by
:func:`.config.from_config_dict`); one entry point runs any of them
(``experiments/run_sim.py``), ``experiments/reproduce_paper.py`` runs all and writes the report.
Every study runs each configuration for its config's ``seeds`` and returns each figure as the mean
over them with ``<name>_ci95`` (the 95% half width), ``<name>_lo`` and ``<name>_hi``
(:mod:`.seeds`); names, strings and analytic bounds (the Eq. 9 range) have no interval.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dualpath_jax.config import ConfigError
from dualpath_jax.sched import scheduler_name
from dualpath_jax.studies.ablation import ablation
from dualpath_jax.studies.config import StudyConfig
from dualpath_jax.studies.offline import balance, fig7, fig8, fig9, pd_sweep
from dualpath_jax.studies.online import online, table3, ttft_breakdown, working_set
from dualpath_jax.studies.runs import Log, RunCache
from dualpath_jax.studies.seeds import policy_caption

__all__ = ["STUDIES", "run_study"]

STUDIES: dict[str, Callable[..., dict]] = {
    "ablation": ablation,
    "fig7": fig7,
    "fig8": fig8,
    "fig9": fig9,
    "online": online,
    "ttft_breakdown": ttft_breakdown,
    "balance": balance,
    "table3": table3,
    "pd_sweep": pd_sweep,
    "working_set": working_set,
}
"""Study name -> function ``(config, workdir, log=print, *, cache=None) -> {name: value}`` (means over
the config's seeds, each with ``_ci95`` / ``_lo`` / ``_hi``)."""


def run_study(config: StudyConfig, workdir: Path | str, *, log: Log = print, cache: RunCache | None = None) -> dict:
    """Run the study of typed ``config`` (its class names the study) into ``workdir`` (created);
    returns its ``name: value`` headline figures. ``cache``: runs shared with other studies (a
    fresh one if None).

    Raises:
      ConfigError: naming ``study`` when ``config`` is not a study config.
    """
    if type(config).study not in STUDIES:
        raise ConfigError("study", f"{type(config).__name__} is not a study config; known: {sorted(STUDIES)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with policy_caption(scheduler_name(config.scheduler)):  # tables and plots name a plug-in policy
        return STUDIES[type(config).study](config, workdir, log=log, cache=cache)
