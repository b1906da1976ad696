"""The real engine: prefill engines (PE) over the store and transfer layers."""

from dualpath_jax.engine.prefill import (PrefillConfig, PrefillEngine, PrefillReport, PrefillRequest, PrefillResult,
                                         PreparedBatch, compute_layers)

__all__ = ["PrefillConfig", "PrefillEngine", "PrefillReport", "PrefillRequest", "PrefillResult", "PreparedBatch",
           "compute_layers"]
