"""The paper's experiments as functions over either runtime: a layer above ``engine/`` and ``sim/``.

* :mod:`.config`   typed (frozen) study configs and :func:`from_config_dict`, which builds them
  from a ``configs/sim_<study>.py`` ConfigDict with errors naming the field; :mod:`.common` their
  shared pieces (workload spec, cluster names, layered SimConfig, online run window).
* :mod:`.runs`     one simulated run reduced to the studies' metrics; :class:`RunCache`, the
  explicit memo that callers share between studies; :func:`run_offline` for notebooks.
* :mod:`.ablation`, :mod:`.offline`, :mod:`.online`   the simulator studies (paper Fig. 7-14,
  Table 3, Eq. 9, section 8.2); :mod:`.registry` names them (``STUDIES``, :func:`run_study`).
* :mod:`.seeds`    every study runs each configuration for ``seeds`` workload (and arrival) seeds
  and reports the mean with a 95% Student-t interval (``<name>_ci95``, ``_lo``, ``_hi``).
* :mod:`.sweep`    where a study's independent runs execute (serially, or on Ray), and
  :func:`~.sweep.lockstep` for searches stepped together (each seed's max-APS bisection).
* :mod:`.advisor`  the P/D advisor: the P:D split, DRAM buffer, alpha/beta and compute quota for a
  workload (Eq. 9 pruning, coarse-to-fine search); :mod:`.advisor_runs` its space and simulated
  runs, :mod:`.advisor_report` its outputs, validation and config files (``experiments/advise.py``).
* :mod:`.report`   ``REPORT.md`` of ``experiments/reproduce_paper.py``.
* :mod:`.plots`    the studies' matplotlib figures.
* :mod:`.cli`      what every experiment script shares: one-line errors, ``--print_config``, a
  workdir that never mixes runs and says whether its run finished (``status.json``).
  :mod:`.cmdline` reads the command line into the config and words its errors.
* :mod:`.engine_ablation`   the five-variant ablation on the real engine (imports JAX; not
  imported here), on the typed config of :mod:`.engine_config`; :mod:`.engine_runs` its building
  blocks (agents, setup, one variant's run, compilation stage, link calibration).

The names below load their modules on first use. Every study runs its simulations with the
scheduler class its config names (``scheduler``: ``"pkg.module:Class"``, ``""`` for the built-in
:class:`~dualpath_jax.sched.ClusterScheduler`).
"""

from dualpath_jax.lazy import lazy_exports

_LAZY = {  # public name -> the submodule that defines it (loaded on first use: PEP 562), so that a
    # script importing only .cli (e.g. the kernel benchmark on a bare device image) loads no simulator
    "WorkloadSpec": "common",
    **dict.fromkeys(["STUDY_CONFIGS", "StudyConfig", "check_sim_overrides", "from_config_dict"], "config"),
    **dict.fromkeys(["STUDIES", "run_study"], "registry"),
    **dict.fromkeys(["RunCache", "offline_run", "offline_runs", "online_run", "online_runs", "paper_workload",
                     "run_offline"], "runs"),
    "Sweep": "sweep",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
