"""Checksummed, atomically published Full Block storage on tensorstore (file or memory backend)."""

from dualpath_jax.store.kvstore import (BlockRead, KVStore, LookupResult, StoreConfig, StoreError, StoreStats,
                                        WriteResult, default_store_path)
from dualpath_jax.store.record import BlockFailure, FailureCause, header_bytes

__all__ = ["BlockFailure", "BlockRead", "FailureCause", "KVStore", "LookupResult", "StoreConfig", "StoreError",
           "StoreStats", "WriteResult", "default_store_path", "header_bytes"]
