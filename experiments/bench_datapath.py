"""Data-path benchmark: store reads vs plain file reads, load/compute overlap, device KV peak.

    python experiments/bench_datapath.py --config=configs/bench_datapath.py --workdir=workdir/bench_datapath

Measures, in one run:

1. **Store read throughput**: ``KVStore.read`` of N Full Blocks (every check of the record
   format made: header, key and layout, length, one CRC-32C per Layer Block) vs a plain
   sequential ``np.fromfile`` of the same files, side by side in the same run: every repeat times
   one pass of each, back to back (the order of the two alternates between repeats), with a cold
   page cache (each file's pages evicted with ``posix_fadvise(DONTNEED)`` before every pass -- the
   paper's 3FS has no DRAM cache, PAPER.md section 2.1) and then warm (a pass right after a pass of
   the same kind). Ratio = plain time / store time of the same repeat: ``store_read_ratio`` cold
   (target >= 0.8), ``store_read_ratio_warm`` warm (target >= 0.9, where the cost of the checks and
   of copies shows). The store reads with its ``io_threads`` (the plain read is one thread); each
   pass keeps all it read alive until it ends.
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

Every headline figure is computed per repeat (a ratio of two times measured within that repeat),
then reported as the mean over repeats with its 95% Student-t interval (``_ci95``, the half width,
:func:`dualpath_jax.studies.seeds.estimate`) and the range over repeats (``_min``, ``_max``):
``store_read_ratio`` and ``store_read_ratio_warm`` over ``store.repeats``; ``overlap_efficiency``,
``overlap_efficiency_depth1`` and ``kv_device_peak_ratio`` over ``repeats`` (the layerwise peak
is ``depth`` layers' KV when loading runs ahead of compute, fewer in a repeat where it does not).
Every config field is checked before the workdir is opened (:func:`validate`: one ``ConfigError``
line naming the field).

Writes ``config.json``, ``env.json``, ``metrics.json`` to the workdir; ends with ``name: value``
lines, each figure's value rounded to 6 significant digits as ``metrics.json`` holds it:
``store_read_repeats``, ``repeats`` and, each with ``_ci95``, ``_min`` and ``_max``,
``store_read_ratio``, ``store_read_ratio_warm``, ``overlap_efficiency``,
``overlap_efficiency_depth1``, ``kv_device_peak_ratio``. ``metrics.json`` also holds the
details (throughputs, times, link rate, device KV peaks).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import flags, logging

from dualpath_jax.config import (ConfigError, check_at_most, check_divides, check_in, check_non_negative,
                                 check_positive, describe_config)
from dualpath_jax.engine import PrefillChunk, PrefillConfig, PrefillEngine, PrefillPath, PrefillRequest, store_layout
from dualpath_jax.kvcache import KV_DTYPES, block_keys, layout_for, pack_full_blocks
from dualpath_jax.model import get_spec, init_params
from dualpath_jax.model.forward import layer_kv_shapes
from dualpath_jax.metrics import writers
from dualpath_jax.shapes import BLOCK_TOKENS
from dualpath_jax.store import KVStore, StoreConfig
from dualpath_jax.studies import cli
from dualpath_jax.studies.seeds import CI_SUFFIX, estimate
from dualpath_jax.transfer import Link, LinkConfig, Medium

_MODEL_DIMS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff")


def _define_flags():
    """The script's flags (defined when it runs, not when a test imports it)."""
    config = cli.define_config_file(
        "config", os.path.join(os.path.dirname(__file__), "..", "configs", "bench_datapath.py"), "Benchmark config.")
    workdir = flags.DEFINE_string("workdir", "workdir/bench_datapath",
                                  "Output directory (new or empty, --overwrite replaces an earlier run; scratch "
                                  "stores are created in it and removed).")
    return config, workdir


def _reraise(field: str, err: ConfigError):
    """``err`` again, under the config's ``field`` (a library names its own field)."""
    return ConfigError(field, f"{err.message} ({err.field})" if err.field else err.message)


def _spec_of(model_name: str, field: str):
    try:
        return get_spec(model_name)
    except ConfigError as e:
        raise ConfigError(field, e.message) from None


def bench_spec(model):
    """The overlap section's model: preset ``model.base`` with the config's dimensions."""
    base = _spec_of(model.base, "model.base")
    return base.replace(name=f"bench-{base.name}", **{f: getattr(model, f) for f in _MODEL_DIMS})


def _check_repeats(field: str, value) -> None:
    """An integer >= 2: each figure's 95% interval needs two repeats."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(field, f"must be an integer >= 2, the repeats a 95% interval needs (got {value!r})")


def _check_kv_dtype(field: str, spec, kv_dtype: str) -> None:
    """A KV dtype the project knows and ``spec``'s layout takes, else ConfigError naming ``field``."""
    check_in(field, kv_dtype, tuple(KV_DTYPES))
    try:
        layout_for(spec, kv_dtype)
    except ConfigError as e:
        raise _reraise(field, e) from None


def validate(cfg) -> None:
    """Check every field of the config (cheap: no store, no model weights, no workdir).

    Raises:
      ConfigError: naming the first bad field (``store.repeats``, ``model.n_heads``, ``depth``, ...).
    """
    check_non_negative("seed", cfg.seed, integer=True)
    # (1) store read
    st = cfg.store
    spec = _spec_of(st.model, "store.model")
    _check_kv_dtype("store.kv_dtype", spec, st.kv_dtype)
    check_positive("store.num_blocks", st.num_blocks, integer=True)
    check_positive("store.io_threads", st.io_threads, integer=True)
    _check_repeats("store.repeats", st.repeats)
    # (2)-(4) overlap
    for f in _MODEL_DIMS:
        check_positive(f"model.{f}", getattr(cfg.model, f), integer=True)
    _spec_of(cfg.model.base, "model.base")
    try:
        spec = bench_spec(cfg.model)
    except ConfigError as e:  # ModelSpec[bench-...].<dim>: the config's model.<dim>
        field = e.field.rsplit(".", 1)[-1] if e.field else ""
        if field in _MODEL_DIMS:
            raise ConfigError(f"model.{field}", e.message) from None
        raise _reraise("model.base", e) from None
    _check_kv_dtype("kv_dtype", spec, cfg.kv_dtype)
    check_positive("batch_size", cfg.batch_size, integer=True)
    check_positive("cached_tokens", cfg.cached_tokens, integer=True)
    check_divides("cached_tokens", cfg.cached_tokens, "block_tokens", BLOCK_TOKENS)
    check_positive("append_tokens", cfg.append_tokens, integer=True)
    check_at_most("append_tokens", cfg.cached_tokens + cfg.append_tokens, spec.max_position,
                  "cached_tokens + append_tokens is the prompt, at most the model's max_position")
    check_positive("depth", cfg.depth, integer=True)
    check_at_most("depth", cfg.depth, cfg.model.n_layers, "layers in flight, at most model.n_layers")
    _check_repeats("repeats", cfg.repeats)
    check_positive("passes", cfg.passes, integer=True)


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """``num[i] / den[i]`` for every repeat ``i``: two times taken in the same repeat."""
    if len(num) != len(den):
        raise ValueError(f"unpaired times: {len(num)} vs {len(den)} repeats")
    return [a / b for a, b in zip(num, den)]


def put_figure(named: dict, name: str, values: Sequence[float]) -> None:
    """Headline ``name``: the mean of the per-repeat ``values`` with ``name_ci95`` (half width of
    its 95% Student-t interval, NaN from one value), ``name_min`` and ``name_max``, each rounded
    to 6 significant digits (``writers.significant``)."""
    e = estimate(values)
    named[name] = writers.significant(e.mean)
    named[name + CI_SUFFIX] = writers.significant(e.half)
    named[name + "_min"] = writers.significant(min(values))
    named[name + "_max"] = writers.significant(max(values))


def store_ratios(times: Mapping[tuple[str, str], Sequence[float]]) -> dict[str, float]:
    """The store-read headline figures from per-repeat times ``times[(kind, cache)]`` (``kind``
    ``"store"`` or ``"plain"``, ``cache`` ``"cold"`` or ``"warm"``): plain over store per repeat."""
    named: dict[str, float] = {}
    for cache, name in (("cold", "store_read_ratio"), ("warm", "store_read_ratio_warm")):
        put_figure(named, name, paired_ratios(times[("plain", cache)], times[("store", cache)]))
    return named


def _fmt(named: Mapping, name: str) -> str:
    """``mean ± ci95 (min..max)`` of a headline figure."""
    return (f"{named[name]:.3f} ± {named[name + CI_SUFFIX]:.3f} "
            f"({named[name + '_min']:.3f}..{named[name + '_max']:.3f})")


def _evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (POSIX_FADV_DONTNEED; no root needed)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_store(cfg, workdir: str) -> tuple[dict[str, float], dict[str, float]]:
    """Section 1: the headline ratios (:func:`store_ratios`) and the details (bytes, throughputs)."""
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

    # repeat r's four times are taken back to back: times[...][r] pair up into repeat r's ratios
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
    named = store_ratios(times)
    med = {k: statistics.median(v) for k, v in times.items()}
    details = {"store_block_bytes": float(layout.full_block_bytes), "store_total_bytes": float(total)}
    print(f"\n(1) store read: {cfg.num_blocks} Full Blocks of {layout.model_name}/{layout.kv_dtype} "
          f"({layout.full_block_bytes / 1e6:.2f} MB each, {total / 1e6:.0f} MB), {cfg.repeats} repeats; "
          f"throughput from the median time, ratio plain/store per repeat: mean ± 95% CI (min..max)")
    for cache, name in (("cold", "store_read_ratio"), ("warm", "store_read_ratio_warm")):
        s, p = med[("store", cache)], med[("plain", cache)]
        details[f"store_read_bytes_per_s_{cache}"] = total / s
        details[f"plain_read_bytes_per_s_{cache}"] = total / p
        print(f"    {cache}: KVStore.read {total / s / 1e9:6.2f} GB/s   "
              f"plain np.fromfile {total / p / 1e9:6.2f} GB/s   ratio {_fmt(named, name)}")
    return named, details


def _time_loader(path: PrefillPath, chunks, fetch, rate) -> float:
    """Loading only: every layer through the path's loader and an H2D link at ``rate``, no compute."""
    link = Link(LinkConfig("bench.h2d", Medium.PE_BUFFER, Medium.PE_HBM, rate_bytes_per_s=rate))
    t0 = time.perf_counter()
    with path.loader(chunks, fetch, link) as loader:
        for layer in range(path.spec.n_layers):
            loader.get(layer)
            loader.release(layer)
    return time.perf_counter() - t0


def bench_overlap(cfg, workdir: str) -> tuple[dict[str, float], dict[str, float]]:
    """Sections 2-4: compute only, loading only, layerwise (depth, 1) and full prefill.

    Each repeat is a paired measurement taken within a few seconds: compute-only passes, the H2D
    link rate set from their best (loading a layer takes as long as computing it), loading-only
    passes and the layerwise runs at that rate; every kind takes the best of ``passes`` runs
    (as ``timeit`` does: other processes on a shared machine only ever add time), and one full
    prefill at that rate for the device KV peak ratio. Efficiencies and the peak ratio are per
    repeat, reported as the mean with its 95% interval and range over repeats (headline; the
    details are medians over repeats).
    The store holds random KV (timing does not depend on the values; correctness of the data
    path is covered by tests/test_prefill.py).
    """
    spec = bench_spec(cfg.model)
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
    engine("full", L, None).run(reqs)
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
            row[label], row[f"{label}_eff"] = rep.layers_s, rep.layers_s / bound
            row[f"{label}_peak"] = float(rep.kv_device_peak_bytes)
        _, full_rep = engine("full", L, rate).run(reqs)
        row["full"], row["full_peak"] = full_rep.layers_s, float(full_rep.kv_device_peak_bytes)
        row["peak_ratio"] = row["layerwise_peak"] / row["full_peak"]
        rows.append(row)
    dev.clear()  # free the device copies (the closures above keep the name)
    batch.lease.release()
    store.close()
    shutil.rmtree(root, ignore_errors=True)

    named: dict[str, float] = {}
    for name, key in (("overlap_efficiency", "layerwise_eff"), ("overlap_efficiency_depth1", "depth1_eff"),
                      ("kv_device_peak_ratio", "peak_ratio")):
        put_figure(named, name, [r[key] for r in rows])
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    details = {
        "layer_kv_bytes": float(layer_bytes), "h2d_rate_bytes_per_s": med("rate"),
        "time_compute_only_s": med("compute"), "time_loading_only_s": med("load"),
        "time_layerwise_s": med("layerwise"), "time_layerwise_depth1_s": med("depth1"), "time_full_s": med("full"),
        "kv_device_peak_bytes_layerwise": med("layerwise_peak"), "kv_device_peak_bytes_depth1": med("depth1_peak"),
        "kv_device_peak_bytes_full": med("full_peak"),
    }
    print(f"\n(2) overlap: {spec.name} L={L} D={spec.d_model} N={spec.n_heads} K={spec.n_kv_heads} H={spec.head_dim} "
          f"F={spec.d_ff}; batch {cfg.batch_size} x ({cfg.cached_tokens} hit + {cfg.append_tokens} new) tokens")
    print(f"    {layer_bytes / 1e6:.2f} MB of hit KV per layer, {1e3 * med('compute') / L:.1f} ms compute per layer; "
          f"H2D link rate {med('rate') / 1e6:.1f} MB/s; {cfg.repeats} repeats of the best of {cfg.passes} passes: "
          f"times median, /max(load,compute) mean ± 95% CI (min..max)")
    print(f"    {'run':20s} {'layers_s':>9s}  {'/max(load,compute)':33s} {'KV peak MB':>11s}")
    print(f"    {'compute only':20s} {med('compute'):9.3f}")
    print(f"    {'loading only':20s} {med('load'):9.3f}")
    for label, key, name in ((f"layerwise depth={cfg.depth}", "layerwise", "overlap_efficiency"),
                             ("layerwise depth=1", "depth1", "overlap_efficiency_depth1")):
        print(f"    {label:20s} {med(key):9.3f}  {_fmt(named, name):33s} {med(key + '_peak') / 1e6:11.2f}")
    print(f"    {'full':20s} {med('full'):9.3f}  {'':33s} {med('full_peak') / 1e6:11.2f}")
    print(f"    device KV peak layerwise/full: {_fmt(named, 'kv_device_peak_ratio')}")
    return named, details


def _describe(cfg) -> str:
    """``--print_config``: the fields, once they pass :func:`validate`."""
    validate(cfg)
    return describe_config(cfg)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    cfg = _CONFIG.value
    validate(cfg)  # before the workdir is opened: a bad field costs nothing
    workdir = str(cli.open_workdir(_WORKDIR.value))
    writers.write_config(workdir, cfg)
    writers.write_env(workdir, device=f"{jax.default_backend()} x {jax.device_count()}")
    t0 = time.perf_counter()
    store_named, store_details = bench_store(cfg.store, workdir)
    overlap_named, overlap_details = bench_overlap(cfg, workdir)
    named = {"store_read_repeats": cfg.store.repeats, "repeats": cfg.repeats, **store_named, **overlap_named}
    metrics = {**store_details, **overlap_details, "bench_wall_s": time.perf_counter() - t0, **named}
    writers.write_json(os.path.join(workdir, "metrics.json"), metrics)
    print()
    for key, value in named.items():  # repr: the digits metrics.json holds
        print(f"{key}: {value!r}")


if __name__ == "__main__":
    _CONFIG, _WORKDIR = _define_flags()
    cli.run(main, config=_CONFIG, describe=_describe)
