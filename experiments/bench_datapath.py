"""Data-path benchmark: store reads vs plain file reads, load/compute overlap, device KV peak.

    python experiments/bench_datapath.py --config=configs/bench_datapath.py --workdir=workdir/bench_datapath

Measures, in one run:

1. **Store read throughput**: ``KVStore.read`` of N Full Blocks (every check of the record
   format made: header, key and layout, length, one CRC-32C per Layer Block) vs a plain
   sequential ``np.fromfile`` of the same files, side by side in the same run (the order of the
   two alternates between repeats), both with a cold page cache (each file's pages evicted with
   ``posix_fadvise(DONTNEED)`` before every pass -- the paper's 3FS has no DRAM cache, PAPER.md
   section 2.1) and both warm (a pass right after a pass of the same kind). Ratio = plain time /
   store time: ``store_read_ratio`` cold (target >= 0.8), ``store_read_ratio_warm`` warm
   (target >= 0.9, where the cost of the checks and of copies shows). The store reads with its
   ``io_threads`` (the plain read is one thread); each pass keeps all it read alive until it ends.
2. **Overlap efficiency** of layer-wise prefill: ``time(layerwise prefill with loading) /
   max(time(loading only), time(compute only))`` with the H2D link rate set so that loading a
   layer takes as long as computing it (1.0 = perfect overlap, 2.0 = none). Every part is the one
   prefill path the cluster's PEs run (``dualpath_jax.engine.prefill.PrefillPath``): the
   layerwise time is the engine's ``layers_s`` (loader start to last layer done, including the
   first layer's unhidden load); compute-only is the path's layer loop (``run_layers``) with every
   layer's KV already on the device; loading-only streams all layers through the path's loader
   and the same link without compute.
3. The same with ``depth=1`` (no double buffering).
4. Peak device bytes of loaded KV, layerwise vs full (from the loader's live arrays).

Writes ``config.json``, ``env.json``, ``metrics.json`` to the workdir; ends with ``name: value``
lines ``store_read_ratio``, ``store_read_ratio_warm``, ``overlap_efficiency``,
``overlap_efficiency_depth1``, ``kv_device_peak_ratio``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time

import jax
import numpy as np
from absl import flags, logging

from dualpath_jax.engine import PrefillChunk, PrefillConfig, PrefillEngine, PrefillPath, PrefillRequest, store_layout
from dualpath_jax.kvcache import block_keys, layout_for, pack_full_blocks
from dualpath_jax.model import get_spec, init_params
from dualpath_jax.model.forward import layer_kv_shapes
from dualpath_jax.metrics import writers
from dualpath_jax.store import KVStore, StoreConfig
from dualpath_jax.studies import cli
from dualpath_jax.transfer import Link, LinkConfig, Medium

_CONFIG = cli.define_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "bench_datapath.py"), "Benchmark config.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_datapath",
                                "Output directory (new or empty, --overwrite replaces an earlier run; scratch "
                                "stores are created in it and removed).")


def _evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (POSIX_FADV_DONTNEED; no root needed)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_store(cfg, workdir: str) -> dict[str, float]:
    """Section 1: returns throughputs (bytes/s) and ratios, cold and warm."""
    layout = layout_for(get_spec(cfg.model), cfg.kv_dtype)
    root = os.path.join(workdir, "store_read")
    shutil.rmtree(root, ignore_errors=True)
    store = KVStore(layout, StoreConfig(path=root, io_threads=cfg.io_threads, fsync=False))
    rng = np.random.default_rng(0)
    keys = block_keys(layout, np.arange(cfg.num_blocks * layout.block_tokens) % 50000)
    payload = rng.integers(0, 256, size=layout.full_block_shape, dtype=np.uint8)
    for i, key in enumerate(keys):
        payload[0, 0, :8] = np.frombuffer(np.int64(i).tobytes(), np.uint8)
        (res,) = store.write([key], [payload])
        assert res.ok, res.failure
    paths = [store.path_of(k) for k in keys]
    total = sum(os.path.getsize(p) for p in paths)

    def store_pass() -> float:
        t0 = time.perf_counter()
        out = store.read(keys)
        dt = time.perf_counter() - t0
        bad = [r.failure for r in out if not r.ok]
        assert not bad, bad[:3]
        return dt

    def plain_pass() -> float:
        t0 = time.perf_counter()
        out = [np.fromfile(p, dtype=np.uint8) for p in paths]
        dt = time.perf_counter() - t0
        assert sum(a.nbytes for a in out) == total
        return dt

    times = {("store", "cold"): [], ("plain", "cold"): [], ("store", "warm"): [], ("plain", "warm"): []}
    for rep in range(cfg.repeats):
        order = [("store", store_pass), ("plain", plain_pass)]
        if rep % 2:
            order.reverse()
        for name, fn in order:
            _evict(paths)
            times[(name, "cold")].append(fn())
        for name, fn in order:
            fn()  # warm the page cache
            times[(name, "warm")].append(fn())
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"store_block_bytes": float(layout.full_block_bytes), "store_total_bytes": float(total)}
    print(f"\n(1) store read: {cfg.num_blocks} Full Blocks of {layout.model_name}/{layout.kv_dtype} "
          f"({layout.full_block_bytes / 1e6:.2f} MB each, {total / 1e6:.0f} MB), median of {cfg.repeats}")
    for cache in ("cold", "warm"):
        s, p = med[("store", cache)], med[("plain", cache)]
        out[f"store_read_bytes_per_s_{cache}"] = total / s
        out[f"plain_read_bytes_per_s_{cache}"] = total / p
        print(f"    {cache}: KVStore.read {total / s / 1e9:6.2f} GB/s   "
              f"plain np.fromfile {total / p / 1e9:6.2f} GB/s   "
              f"ratio {p / s:.3f}")
    out["store_read_ratio"] = med[("plain", "cold")] / med[("store", "cold")]
    out["store_read_ratio_warm"] = med[("plain", "warm")] / med[("store", "warm")]
    return out


def _time_loader(path: PrefillPath, chunks, fetch, rate) -> float:
    """Loading only: every layer through the path's loader and an H2D link at ``rate``, no compute."""
    link = Link(LinkConfig("bench.h2d", Medium.PE_BUFFER, Medium.PE_HBM, rate_bytes_per_s=rate))
    t0 = time.perf_counter()
    with path.loader(chunks, fetch, link) as loader:
        for layer in range(path.spec.n_layers):
            loader.get(layer)
            loader.release(layer)
    return time.perf_counter() - t0


def bench_overlap(cfg, workdir: str) -> dict[str, float]:
    """Sections 2-4: compute only, loading only, layerwise (depth, 1) and full prefill.

    Each repeat is a paired measurement taken within a few seconds: compute-only passes, the H2D
    link rate set from their best (loading a layer takes as long as computing it), loading-only
    passes and the layerwise runs at that rate; every kind takes the best of ``passes`` runs
    (as ``timeit`` does: other processes on a shared machine only ever add time). Efficiencies
    are per repeat, reported as the median (with min..max over repeats).
    The store holds random KV (timing does not depend on the values; correctness of the data
    path is covered by tests/test_prefill.py).
    """
    base = get_spec(cfg.model.base)
    spec = base.replace(name=f"bench-{base.name}", n_layers=cfg.model.n_layers, d_model=cfg.model.d_model,
                        n_heads=cfg.model.n_heads, n_kv_heads=cfg.model.n_kv_heads, head_dim=cfg.model.head_dim,
                        d_ff=cfg.model.d_ff)
    L = spec.n_layers
    params = init_params(spec, jax.random.PRNGKey(cfg.seed))
    layout = store_layout(spec, params, cfg.kv_dtype)
    root = os.path.join(workdir, "overlap_store")
    shutil.rmtree(root, ignore_errors=True)
    store = KVStore(layout, StoreConfig(path=root, fsync=False))
    rng = np.random.default_rng(cfg.seed)
    prompts = [rng.integers(0, spec.vocab_size, cfg.cached_tokens + cfg.append_tokens) for _ in range(cfg.batch_size)]
    reqs = [PrefillRequest(f"r{b}", p) for b, p in enumerate(prompts)]
    for p in prompts:
        kvs = [tuple(rng.standard_normal((cfg.cached_tokens, *s), np.float32) for s in layer_kv_shapes(spec))
               for _ in range(L)]
        results = store.write(block_keys(layout, p[:cfg.cached_tokens]), pack_full_blocks(layout, kvs))
        assert all(r.ok for r in results)

    def engine(mode, depth, rate):
        link = Link(LinkConfig("pe.h2d", Medium.PE_BUFFER, Medium.PE_HBM, rate_bytes_per_s=rate))
        return PrefillEngine(params, spec, store, h2d_link=link,
                             config=PrefillConfig(mode=mode, depth=depth, write_back=False))

    eng = engine("layerwise", cfg.depth, None)
    batch = eng.prepare(reqs)
    assert all(h * layout.block_tokens == cfg.cached_tokens for h in batch.hit_blocks), batch.hit_blocks
    fetch = lambda l: batch.fetch_layer(layout, l)  # noqa: E731
    chunks = [PrefillChunk(p[cfg.cached_tokens:], cfg.cached_tokens, logits="none") for p in prompts]
    dev = [jax.block_until_ready(jax.device_put(eng.path.cache_blocks(chunks, fetch(l)), eng.device))
           for l in range(L)]
    layer_bytes = cfg.batch_size * cfg.cached_tokens * layout.bytes_per_token_per_layer  # what the link carries

    def compute_pass() -> float:
        t0 = time.perf_counter()
        eng.path.run_layers(chunks, lambda l: dev[l], lambda l: None)
        return time.perf_counter() - t0

    compute_pass()  # compile
    engine("layerwise", cfg.depth, None).run(reqs)  # compile the engine's path too
    rows = []
    for _ in range(cfg.repeats):
        t_compute = min(compute_pass() for _ in range(cfg.passes))
        rate = layer_bytes / (t_compute / L)  # loading a layer takes as long as computing it
        t_load = min(_time_loader(eng.path, chunks, fetch, rate) for _ in range(cfg.passes))
        bound = max(t_load, t_compute)
        row = {"compute": t_compute, "load": t_load, "rate": rate}
        for label, depth in (("layerwise", cfg.depth), ("depth1", 1)):
            reps = [engine("layerwise", depth, rate).run(reqs)[1] for _ in range(cfg.passes)]
            rep = min(reps, key=lambda r: r.layers_s)
            row[label], row[f"{label}_eff"], row[f"{label}_report"] = rep.layers_s, rep.layers_s / bound, rep
        rows.append(row)
    _, full_rep = engine("full", L, statistics.median(r["rate"] for r in rows)).run(reqs)
    dev.clear()  # free the device copies (the closures above keep the name)
    batch.lease.release()
    store.close()
    shutil.rmtree(root, ignore_errors=True)

    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    out = {
        "layer_kv_bytes": float(layer_bytes), "h2d_rate_bytes_per_s": med("rate"),
        "time_compute_only_s": med("compute"), "time_loading_only_s": med("load"),
        "time_layerwise_s": med("layerwise"), "time_layerwise_depth1_s": med("depth1"),
        "time_full_s": full_rep.layers_s,
        "overlap_efficiency": med("layerwise_eff"), "overlap_efficiency_depth1": med("depth1_eff"),
        "overlap_efficiency_min": min(r["layerwise_eff"] for r in rows),
        "overlap_efficiency_max": max(r["layerwise_eff"] for r in rows),
        "kv_device_peak_bytes_layerwise": float(rows[0]["layerwise_report"].kv_device_peak_bytes),
        "kv_device_peak_bytes_depth1": float(rows[0]["depth1_report"].kv_device_peak_bytes),
        "kv_device_peak_bytes_full": float(full_rep.kv_device_peak_bytes),
    }
    out["kv_device_peak_ratio"] = out["kv_device_peak_bytes_layerwise"] / out["kv_device_peak_bytes_full"]
    print(f"\n(2) overlap: {spec.name} L={L} D={spec.d_model} N={spec.n_heads} K={spec.n_kv_heads} H={spec.head_dim} "
          f"F={spec.d_ff}; batch {cfg.batch_size} x ({cfg.cached_tokens} hit + {cfg.append_tokens} new) tokens")
    print(f"    {layer_bytes / 1e6:.2f} MB of hit KV per layer, {1e3 * med('compute') / L:.1f} ms compute per layer; "
          f"H2D link rate {med('rate') / 1e6:.1f} MB/s; median over {cfg.repeats} repeats of the best of "
          f"{cfg.passes} passes")
    print(f"    {'run':20s} {'layers_s':>9s} {'/max(load,compute)':>19s} {'(min..max)':>14s} {'KV peak MB':>11s}")
    print(f"    {'compute only':20s} {med('compute'):9.3f}")
    print(f"    {'loading only':20s} {med('load'):9.3f}")
    for label, key in ((f"layerwise depth={cfg.depth}", "layerwise"), ("layerwise depth=1", "depth1")):
        effs = [r[key + "_eff"] for r in rows]
        print(f"    {label:20s} {med(key):9.3f} {med(key + '_eff'):19.3f} {min(effs):6.3f}..{max(effs):6.3f} "
              f"{rows[0][key + '_report'].kv_device_peak_bytes / 1e6:11.2f}")
    print(f"    {'full':20s} {full_rep.layers_s:9.3f} {'':34s} {full_rep.kv_device_peak_bytes / 1e6:11.2f}")
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    cfg = _CONFIG.value
    workdir = str(cli.open_workdir(_WORKDIR.value))
    writers.write_config(workdir, cfg)
    writers.write_env(workdir, device=f"{jax.default_backend()} x {jax.device_count()}")
    t0 = time.perf_counter()
    metrics = bench_store(cfg.store, workdir)
    metrics.update(bench_overlap(cfg, workdir))
    metrics["bench_wall_s"] = time.perf_counter() - t0
    writers.write_json(os.path.join(workdir, "metrics.json"), metrics)
    print()
    for key in ("store_read_ratio", "store_read_ratio_warm", "overlap_efficiency", "overlap_efficiency_depth1",
                "kv_device_peak_ratio"):
        print(f"{key}: {metrics[key]:.4g}")


if __name__ == "__main__":
    cli.run(main, config=_CONFIG)
