"""The paper's simulator studies beyond the ablation, by name (registered into ``sim.studies.STUDIES``).

=================  ==========================================  ===============================
name               paper                                       function
=================  ==========================================  ===============================
fig7               Fig. 7 offline JCT vs agents (3 models)     :func:`.studies_offline.fig7`
fig8               Fig. 8 P/D ratio on DS 27B                  :func:`.studies_offline.fig8`
fig9               Fig. 9 append / generation scaling          :func:`.studies_offline.fig9`
online             Fig. 10/11 online serving, max APS          :func:`.studies_online.online`
ttft_breakdown     Fig. 12 left TTFT breakdown                 :func:`.studies_online.ttft_breakdown`
balance            Fig. 13-14 SNIC / attention Max/Avg         :func:`.studies_offline.balance`
table3             Table 3 scale-out                           :func:`.studies_online.table3`
pd_sweep           Eq. 9 bottleneck-free P/D range             :func:`.studies_offline.pd_sweep`
working_set        section 8.2 working set                     :func:`.studies_online.working_set`
=================  ==========================================  ===============================

Configs: ``configs/sim_<name>.py``; one entry point runs any of them
(``experiments/run_sim.py``), ``experiments/reproduce_paper.py`` runs all and writes the report.
"""

from __future__ import annotations

from dualpath_jax.sim.studies_offline import balance, fig7, fig8, fig9, pd_sweep
from dualpath_jax.sim.studies_online import online, table3, ttft_breakdown, working_set

__all__ = ["PAPER_STUDIES"]

PAPER_STUDIES = {
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
