"""Shared pieces of the engine-cluster tests: a fast emulated cluster, stream trajectories, the
tiny model and one call that runs a cluster (``tests/test_engine_cluster.py``, ``tests/test_faults.py``)."""

import jax
import numpy as np

from dualpath_jax.engine.cluster import EngineCluster
from dualpath_jax.engine.prefill import store_layout
from dualpath_jax.model import get_spec, init_params
from dualpath_jax.sched import AttentionTimeModel
from dualpath_jax.store import KVStore, StoreConfig
from dualpath_jax.workload import Trajectory

FAST = dict(snic_bytes_per_s=2e9, cnic_bytes_per_s=8e9, timeout_s=30.0, run_timeout_s=120.0,
            pe_hbm_kv_bytes=4 * 2**20, de_hbm_kv_bytes=4 * 2**20, max_decode_batch=4)
TIME_MODEL = AttentionTimeModel(flops_per_key=256.0, seconds_per_flop=1e-10, seconds_per_token=1e-5)


def stream(name, append, gen) -> Trajectory:
    """A stream trajectory: each round hits the whole context before it."""
    append, gen = np.array(append), np.array(gen)
    hit = np.concatenate([[0], np.cumsum(append + gen)[:-1]])
    return Trajectory(name, append, gen, hit, np.zeros(len(append)))


def tiny_model():
    """``(spec, host params, f32 store layout)`` of the tiny GQA model (keys scoped to its weights)."""
    spec = get_spec("tiny-gqa")
    params = jax.tree.map(np.asarray, init_params(spec, jax.random.PRNGKey(0)))
    return spec, params, store_layout(spec, params, "f32")


def run_cluster(model, config, agents, *, store=None, starts=None, faults=None):
    """Run ``agents`` (all at t = 0 unless ``starts``) on a cluster of ``config`` over ``store``
    (a fresh memory store by default)."""
    spec, params, layout = model
    store = store or KVStore(layout, StoreConfig(backend="memory"))
    cluster = EngineCluster(config, spec, params, layout, store, time_model=TIME_MODEL, prefill_tokens_per_s=1e4,
                            faults=faults)
    return cluster.run(agents, [0.0] * len(agents) if starts is None else starts, progress=False)
