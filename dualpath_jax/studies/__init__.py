"""The paper's experiments as functions over either runtime: a layer above ``engine/`` and ``sim/``.

* :mod:`.config`   typed (frozen) study configs and :func:`from_config_dict`, which builds them
  from a ``configs/sim_<study>.py`` ConfigDict with errors naming the field; :mod:`.common` their
  shared pieces (workload spec, cluster names, layered SimConfig, online run window).
* :mod:`.runs`     one simulated run reduced to the studies' metrics; :class:`RunCache`, the
  explicit memo that callers share between studies; :func:`run_offline` for notebooks.
* :mod:`.ablation`, :mod:`.offline`, :mod:`.online`   the simulator studies (paper Fig. 7-14,
  Table 3, Eq. 9, section 8.2); :mod:`.registry` names them (``STUDIES``, :func:`run_study`).
* :mod:`.report`   ``REPORT.md`` of ``experiments/reproduce_paper.py``.
* :mod:`.plots`    the studies' matplotlib figures.
* :mod:`.engine_ablation`   the five-variant ablation on the real engine (imports JAX; not
  imported here), on the typed config of :mod:`.engine_config`.

Every study runs its simulations with the scheduler class its config names (``scheduler``:
``"pkg.module:Class"``, ``""`` for the built-in :class:`~dualpath_jax.sched.ClusterScheduler`).
"""

from dualpath_jax.studies.common import WorkloadSpec
from dualpath_jax.studies.config import STUDY_CONFIGS, StudyConfig, check_sim_overrides, from_config_dict
from dualpath_jax.studies.registry import STUDIES, run_study
from dualpath_jax.studies.runs import RunCache, offline_run, online_run, paper_workload, run_offline

__all__ = ["STUDIES", "STUDY_CONFIGS", "RunCache", "StudyConfig", "WorkloadSpec", "check_sim_overrides",
           "from_config_dict", "offline_run", "online_run", "paper_workload", "run_offline", "run_study"]
