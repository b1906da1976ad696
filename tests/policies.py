"""Scheduler plug-ins for the tests, loaded by name (``policies:AlwaysDE`` with ``tests/`` on the path).

:class:`AlwaysDE` replaces DualPath's read-side choice (PAPER.md 5.4: the shorter read queue) by
"always the DE side" under dual loading. Its effect is visible in any run's results: with
``loading="dual"`` no hit byte crosses a PE node's storage NIC; ``pe_read`` runs are unchanged.
"""

from dualpath_jax.sched import ClusterScheduler, ReadPlan


class AlwaysDE(ClusterScheduler):
    """Every dual-loading read on the DE side; other loading modes as the built-in scheduler."""

    def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
        if self.config.loading == "dual" and hit_blocks > 0:
            return ReadPlan("de", hit_blocks)
        return super().read_plan(req, pe_node, de_node, read_q, hit_blocks, block_tokens)


class NotAScheduler:
    """A class that is not a ClusterScheduler (the loader must reject it)."""


class NeverOnADE(ClusterScheduler):
    """A broken policy: never places a request on a DE (every run stalls)."""

    def fetch_de(self, group_id, loads):
        return []


class DEUnderPEReads(ClusterScheduler):
    """A broken policy: reads on the DE side even under ``pe_read`` loading (a protocol error)."""

    def read_plan(self, req, pe_node, de_node, read_q, hit_blocks, block_tokens):
        if hit_blocks > 0 and self.config.loading != "oracle":
            return ReadPlan("de", hit_blocks)
        return super().read_plan(req, pe_node, de_node, read_q, hit_blocks, block_tokens)
