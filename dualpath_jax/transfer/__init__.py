"""DRAM buffer pools, emulated rate-limited links, and the double-buffered layer-wise loader."""

from dualpath_jax.transfer.buffer import BufferPool, BufferStats, BufferTimeoutError, Claim, Lease
from dualpath_jax.transfer.link import (Link, LinkConfig, LinkStats, Medium, Outcome, TransferRecord,
                                        TransferResult)
from dualpath_jax.transfer.loader import LayerwiseLoader, LoaderError, LoaderStats, tree_nbytes

__all__ = ["BufferPool", "BufferStats", "BufferTimeoutError", "Claim", "LayerwiseLoader", "Lease", "Link", "LinkConfig",
           "LinkStats", "LoaderError", "LoaderStats", "Medium", "Outcome", "TransferRecord", "TransferResult",
           "tree_nbytes"]
