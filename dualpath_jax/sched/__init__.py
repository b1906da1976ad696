"""Scheduling policies shared by the real engine and the simulator (PAPER.md section 5).

Pure: no engine, simulator, store or transfer imports; no clocks. See :mod:`.policy` for the
protocol the runtimes follow.
"""

from dualpath_jax.sched.batching import AttentionTimeModel, BatchItem, form_batch, form_batch_fifo
from dualpath_jax.sched.de import balance_target, de_phase1, de_phase2
from dualpath_jax.sched.errors import PolicyError, PolicyTypeError, RunStalled
from dualpath_jax.sched.pe import classify_pe, pe_fetch
from dualpath_jax.sched.policy import ClusterScheduler
from dualpath_jax.sched.plugin import load_scheduler, scheduler_name
from dualpath_jax.sched.read_side import ReadPlan, check_read_plan, shorter_queue_side, split_de_blocks
from dualpath_jax.sched.variants import ABLATION_VARIANTS, VARIANTS, Variant, get_variant
from dualpath_jax.sched.types import (LOADINGS, POLICIES, Assignment, EngineLoad, SchedRequest,
                                      SchedulerConfig)

__all__ = [
    "ABLATION_VARIANTS", "VARIANTS", "Variant", "get_variant",
    "AttentionTimeModel", "Assignment", "BatchItem", "ClusterScheduler", "EngineLoad", "LOADINGS", "POLICIES",
    "PolicyError", "PolicyTypeError",
    "ReadPlan", "RunStalled", "SchedRequest", "SchedulerConfig", "balance_target", "check_read_plan", "classify_pe",
    "de_phase1", "de_phase2", "form_batch", "form_batch_fifo", "load_scheduler", "pe_fetch", "scheduler_name",
    "shorter_queue_side", "split_de_blocks",
]
