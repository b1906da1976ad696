"""The engine ablation (paper Fig. 12 right, on the real engine): agents from the agentic traces,
the five variants of ``sched.ABLATION_VARIANTS`` on one emulated cluster, tables, plots, checks.

Used by ``experiments/run_engine.py``; every step is a function so tests and notebooks can call
it. Workload (documented in ``configs/engine_ablation.py``): the first ``num_agents`` agent
conversations of ``../shared/data/agentic_traces`` (sub-agents dropped, one token scope per
trajectory so hits stay within a trajectory, PAPER.md A.4) that have ``rounds`` rounds, cut to
those rounds, with every token count divided by ``token_divisor``
(:func:`dualpath_jax.workload.scale_tokens`: a 64-token trace block becomes ``64 / divisor``
tokens, the hash-prefix structure is kept); agents whose context would exceed
``max_context_tokens`` or whose later rounds append more than ``max_append_tokens`` (long tool
outputs) are skipped, so the tiny model replays them on a CPU in the paper's regime of short
appends over long cached contexts. With ``warm_start`` the store is seeded with every agent's
first prompt (:func:`seed_store`). Every run is decided by the config's ``scheduler`` (a
``ClusterScheduler`` subclass ``"pkg.module:Class"``; ``""`` for the built-in one).

First-run compilation is a stage of its own (:func:`compile_runs`, before calibration): every
program the calibration and the variants run is compiled there, called exactly as the PEs and DEs
call it, so the timed runs compile nothing (a timed stage that does is logged) and the stage ETA,
which counts only those runs, holds on a cold compilation cache too; every stage's seconds of XLA
compilation and programs compiled are measured (:class:`CompileClock`) and written to
``ablation.json`` (``stages``: ``stage``, ``wall_s``, ``compile_s``, ``programs`` in order).

Link rates come from the host's speed (:func:`calibrate_links`: the median JCT of a few Oracle
passes, before every repeat), or from a saved ``calibration.json`` (``calibrate.from_file``), or
the config. Every variant runs ``repeats`` times, interleaved (repeat r runs every variant before
repeat r + 1); figures are computed per repeat (a speedup is Basic's JCT over the variant's in
the same repeat) and reported as the mean with a 95% Student-t interval over the repeats
(:func:`dualpath_jax.studies.seeds.estimate`, as the simulator's studies over seeds): ``name``,
``name_ci95`` (half width), ``name_lo``, ``name_hi``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from dualpath_jax.config import ConfigError
from dualpath_jax.engine import report
from dualpath_jax.engine.cluster import ClusterResult, EngineCluster
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.faults import FaultConfig
from dualpath_jax.engine.prefill import PrefillPath, prefill_kv
from dualpath_jax.engine.profile import fit_time_model, prefill_shape, profile_prefill, warm_up_prefill
from dualpath_jax.kvcache import block_keys, layout_for, pack_full_blocks
from dualpath_jax.metrics import writers
from dualpath_jax.model import cost, get_spec, init_params
from dualpath_jax.model.hf import load_hf_checkpoint
from dualpath_jax.sched import BatchItem, form_batch, scheduler_name
from dualpath_jax.store import KVStore, StoreConfig
from dualpath_jax.studies.engine_config import (CALIBRATION_FILE, CALIBRATION_FORMAT, CalibrateConfig,
                                                EngineAblationConfig, EngineArrivals, EngineWorkload,
                                                calibration_fingerprint, calibration_path, check_fingerprint,
                                                engine_ablation_config, read_calibration)
from dualpath_jax.studies.plots import plot_variant_bars
from dualpath_jax.studies.seeds import CI_SUFFIX, LEVEL, estimate
from dualpath_jax.workload import (Trajectory, load_agentic_traces, poisson_arrivals_s, prompt_token_ids,
                                   scale_tokens)

__all__ = ["check_config", "select_agents", "start_times", "Setup", "round_shapes", "expected_shapes", "seed_store",
           "run_variant", "calibrate_links", "load_compute_ratio", "run_ablation", "CompileClock", "compile_runs",
           "describe_time_model", "combine_calibrations", "put_estimate", "aggregate_rows", "ray_runtime",
           "run_dir"]


check_config = engine_ablation_config
"""Check an engine-ablation config before anything runs; returns its typed form
(:func:`.engine_config.engine_ablation_config`)."""


CALIBRATED_FIELDS = ("cluster.snic_bytes_per_s", "cluster.cnic_bytes_per_s")
"""Fields the run replaces when it measures the link rates (``calibrate.load_over_oracle`` > 0) or
reads them (``calibrate.from_file``)."""


def check_overrides(config, overridden: Sequence[str]) -> None:
    """Reject command-line overrides that the run would replace.

    Args:
      config: the engine-ablation config (after the overrides).
      overridden: dotted names of the fields given on the command line
        (``dualpath_jax.config.overridden_fields``).

    Raises:
      ConfigError: naming the field and what to change instead: a link rate while calibration
        sets the rates (``calibrate.load_over_oracle`` > 0 or ``calibrate.from_file``).
    """
    ratio, saved = config.calibrate.load_over_oracle, config.calibrate.get("from_file", "")
    for field in overridden:
        if field in CALIBRATED_FIELDS and saved:
            raise ConfigError(field, f"is replaced by the saved calibration (calibrate.from_file={saved!r}); drop "
                              f"--config.calibrate.from_file and add --config.calibrate.load_over_oracle=0 to run "
                              f"at the given rates")
        if field in CALIBRATED_FIELDS and ratio:
            raise ConfigError(field, f"is replaced by calibration (calibrate.load_over_oracle={ratio} sets the SNIC "
                              f"rate from Oracle's JCT, CNIC = calibrate.cnic_over_snic x SNIC); add "
                              f"--config.calibrate.load_over_oracle=0 to run at the given rates")


def select_agents(cfg: EngineWorkload) -> list[Trajectory]:
    """The replayed agents (module docstring); ``cfg`` is the ``workload`` section.

    ``cfg.traces_dir``: folder of ``*.json.gz`` traces (empty: ``workload.agentic_dir()``).

    Raises:
      ConfigError: ``workload.num_agents`` agents cannot be found under the limits.
      FileNotFoundError: no trace files in the folder.
    """
    ts = load_agentic_traces(cfg.traces_dir or None, limit=cfg.max_files, subagents="drop",
                             token_scope="trajectory")
    ts = scale_tokens(ts, int(cfg.token_divisor))
    out = []
    for traj in ts:
        if traj.num_rounds < cfg.rounds:
            continue
        traj = _head(traj, int(cfg.rounds))
        if traj.total_tokens > cfg.max_context_tokens or int(traj.num_append_tokens[1:].max(initial=0)) > \
                cfg.max_append_tokens:
            continue
        out.append(traj)
        if len(out) == cfg.num_agents:
            return out
    raise ConfigError("workload.num_agents", f"found only {len(out)} agents with >= {cfg.rounds} rounds, "
                      f"<= {cfg.max_context_tokens} tokens and <= {cfg.max_append_tokens} appended tokens per "
                      f"later round in the first {cfg.max_files} trace files")


def _head(traj: Trajectory, rounds: int) -> Trajectory:
    """The first ``rounds`` rounds, without re-validation: ``scale_tokens`` can leave a hashed
    round whose rounded-up partial tail is a whole scaled block (e.g. a 63-token tail / 32 -> 2
    tokens = one 2-token block), which ``Trajectory`` validation rejects although the round's
    tokens are well defined (its hash blocks followed by its tail)."""
    cut = lambda x: x[:rounds]  # noqa: E731
    return Trajectory.unchecked(
        agent_id=traj.agent_id, num_append_tokens=cut(traj.num_append_tokens), num_gen_tokens=cut(traj.num_gen_tokens),
        num_hit_tokens=cut(traj.num_hit_tokens), think_time_s=cut(traj.think_time_s), token_scope=traj.token_scope,
        block_tokens=traj.block_tokens, hashes=None if traj.hashes is None else traj.hashes.head(rounds),
        start_offset_s=traj.start_offset_s, parent_id=traj.parent_id, source=traj.source)


def start_times(cfg: EngineArrivals, num_agents: int) -> np.ndarray:
    """Offline: every agent at t = 0; online: Poisson arrivals at ``cfg.aps`` agents/s."""
    if cfg.mode == "offline":
        return np.zeros(num_agents)
    if cfg.mode == "online":
        return poisson_arrivals_s(num_agents, cfg.aps, cfg.seed)
    raise ConfigError("arrivals.mode", f"must be 'offline' or 'online' (got {cfg.mode!r})")


class CompileClock:
    """Seconds and count of XLA programs compiled in this process, from JAX's backend-compile
    events. A program read from the persistent compilation cache counts too (the event times the
    compile-or-load step; a load takes milliseconds), so a count of 0 means the in-memory cache
    held every program."""

    _EVENT = "/jax/core/compile/backend_compile_duration"
    seconds = 0.0
    count = 0
    _listening = False

    @classmethod
    def start(cls) -> None:
        """Listen to JAX's compile events (once per process)."""
        if not cls._listening:
            jax.monitoring.register_event_duration_secs_listener(cls._on_event)
            cls._listening = True

    @classmethod
    def _on_event(cls, event: str, duration_s: float, **_) -> None:
        if event == cls._EVENT:
            cls.seconds += duration_s
            cls.count += 1

    @classmethod
    def read(cls) -> tuple[float, int]:
        return cls.seconds, cls.count


def describe_time_model(tm, spec) -> str:
    """The fitted PE time model in words: seconds of one attention layer per new token and per
    (query, key) pair, and one example."""
    per_pair = tm.seconds_per_flop * tm.flops_per_key
    return (f"an attention layer takes {tm.seconds_per_token * 1e6:.3g} us per new token + {per_pair * 1e9:.3g} ns "
            f"per (query, key) pair (64 new tokens over 1024 cached: {tm.time_s(1024, 64) * 1e3:.3g} ms per layer, "
            f"{tm.time_s(1024, 64) * spec.n_layers * 1e3:.3g} ms for all {spec.n_layers})")


class Setup:
    """Model, layout, profiled time model and the prefill shapes shared by every variant of a run
    (compiled by :func:`compile_runs`)."""

    def __init__(self, config: EngineAblationConfig, agents: list[Trajectory], log: Callable = print):
        self.config = config = check_config(config)
        if config.model.checkpoint:  # a local Hugging Face checkpoint (its config was checked with the config)
            self.spec, params = load_hf_checkpoint(config.model.checkpoint, dtype=jnp.float32)
        else:
            self.spec = get_spec(config.model.name)
            params = init_params(self.spec, jax.random.PRNGKey(config.model.seed))
        self.cluster = config.cluster
        self.scheduler_cls = config.scheduler
        self.layout = layout_for(self.spec, config.model.kv_dtype)
        self.cluster.check_layout(self.layout.full_block_bytes)
        self.params = jax.tree.map(np.asarray, params)
        self.agents = agents
        n_eng = self.cluster.num_pe + self.cluster.num_de
        self.devices = jax.devices()[:n_eng]
        t0, (c0, _) = time.perf_counter(), CompileClock.read()
        dev = self.devices[0]
        dev_params = jax.device_put(self.params, dev)
        self.samples = profile_prefill(dev_params, self.spec, dev, [tuple(p) for p in config.profile.pairs],
                                       block_tokens=self.layout.block_tokens, repeats=config.profile.repeats)
        self.time_model = fit_time_model(self.spec, self.samples)
        ctx_tok, app_tok = typical_round(agents)
        layer_s = self.time_model.time_s(ctx_tok, app_tok)
        self.prefill_tokens_per_s = (ctx_tok + app_tok) / max(layer_s * self.spec.n_layers, 1e-9)
        self.rounds = round_shapes(agents, self.layout.block_tokens, bool(config.workload.warm_start))
        self.warm_shapes = expected_shapes(self.rounds, self.layout.block_tokens, self.time_model, self.cluster)
        self.setup_s = time.perf_counter() - t0
        log(f"profiled {len(self.samples)} (cached, bsz) pairs in {self.setup_s:.1f} s "
            f"({CompileClock.read()[0] - c0:.1f} s compiling); time model: "
            f"{describe_time_model(self.time_model, self.spec)}")
        # runtime="ray": every node a Ray actor in its own process, kept for all of this study's runs
        self.runtime = ray_runtime(config) if config.runtime == "ray" else None

    def close(self) -> None:
        """Stop the ``ray`` runtime's node actors (nothing under ``threads``)."""
        if self.runtime is not None:
            self.runtime.close()


def ray_runtime(config: EngineAblationConfig):
    """A :class:`~dualpath_jax.engine.ray_runtime.RayRuntime` on ``config.runtime_address`` with
    the node placement of ``config.ray`` (its actors start with the first run)."""
    from dualpath_jax.engine.ray_runtime import RayRuntime  # noqa: PLC0415 (imports Ray)

    return RayRuntime(config.runtime_address, gpus_per_engine=config.ray.gpus_per_engine,
                      pe_resource=config.ray.pe_resource, de_resource=config.ray.de_resource)


def typical_round(agents: list[Trajectory]) -> tuple[int, int]:
    """Mean (hit, append) tokens over the rounds that have a hit."""
    hits = np.concatenate([a.num_hit_tokens for a in agents])
    apps = np.concatenate([a.num_append_tokens for a in agents])
    sel = hits > 0
    if not np.any(sel):
        return 0, max(int(apps.mean()), 1)
    return int(hits[sel].mean()), max(int(apps[sel].mean()), 1)


def round_shapes(agents: list[Trajectory], z: int, warm_start: bool) -> list[tuple[int, int]]:
    """Estimated ``(hit, append)`` tokens of every round as the engine will see it: the hit is the
    trace's hit cut to whole blocks; with a warm start round 0's hit is its prompt's whole blocks
    (at least one token computed)."""
    out = []
    for a in agents:
        for r, (hit0, app0) in enumerate(zip(a.num_hit_tokens, a.num_append_tokens)):
            prompt = int(hit0) + int(app0)
            hit = (prompt - 1) // z * z if (r == 0 and warm_start) else int(hit0) // z * z
            out.append((hit, prompt - hit))
    return out


def expected_shapes(rounds: list[tuple[int, int]], z: int, time_model, cluster: ClusterConfig) -> set:
    """Prefill ``(T, P)`` buckets the run will likely use: each round whole (FIFO batches) and as
    the compute-quota chunks it would get alone."""
    shapes = set()
    for hit, app in rounds:
        shapes.add(prefill_shape(hit, app, z))
        cached, remaining = hit, app
        while remaining > 0:
            (item,) = form_batch([BatchItem(0, cached, remaining)], cluster.compute_quota_s, time_model)[:1]
            shapes.add(prefill_shape(cached, item.remaining, z))
            cached += item.remaining
            remaining -= item.remaining
    return shapes


def seed_store(setup: "Setup", path: Path, *, log: Callable = print) -> int:
    """Write every agent's first prompt's whole blocks to a store at ``path`` (a warm start: the
    agents resume conversations whose prefix is cached, so every replayed round is a hit round,
    as in the paper's agentic workload). KV computed by the runtime's own prefill in 512-token
    chunks; returns the blocks written.

    Raises:
      RuntimeError: a block could not be written.
    """
    shutil.rmtree(path, ignore_errors=True)
    z, dev = setup.layout.block_tokens, setup.devices[0]
    params = jax.device_put(setup.params, dev)
    written = 0
    with KVStore(setup.layout, StoreConfig(backend="file", path=str(path), fsync=False)) as store:
        for traj in setup.agents:
            prompt = prompt_token_ids(traj, 0, setup.spec.vocab_size)
            n = len(prompt) // z
            if n == 0:
                continue
            kv = prefill_kv(params, setup.spec, prompt[:n * z], dev, block_tokens=z)
            for res in store.write(block_keys(setup.layout, prompt)[:n], pack_full_blocks(setup.layout, kv)):
                if not res.ok:
                    raise RuntimeError(f"seed store: {res.failure}")
            written += n
    log(f"seeded the store with {written} Full Blocks of the agents' first prompts")
    return written


def run_variant(setup: Setup, name: str, store_dir: Path, seed_dir: Path | None = None, *,
                progress: bool | None = None, agents: list[Trajectory] | None = None,
                faults: FaultConfig | None = None, arrival_seed: int | None = None) -> ClusterResult:
    """One variant on a fresh store (a copy of ``seed_dir`` if given), so every variant starts
    from the same stored KV and sees the same hits. ``progress``: a bar of finished requests
    (default: when stderr is a terminal); ``agents``: replay these instead of ``setup.agents``;
    ``faults``: faults to inject (:mod:`dualpath_jax.engine.faults`); ``arrival_seed``: the seed of
    online arrivals (default ``arrivals.seed``)."""
    agents = setup.agents if agents is None else agents
    cfg = setup.cluster.for_variant(name)
    shutil.rmtree(store_dir, ignore_errors=True)
    if seed_dir is not None:
        shutil.copytree(seed_dir, store_dir)
    store = KVStore(setup.layout, StoreConfig(backend="file", path=str(store_dir), fsync=False,
                                              io_threads=cfg.store_io_threads, timeout_s=cfg.timeout_s))
    try:
        cluster = EngineCluster(cfg, setup.spec, setup.params, setup.layout, store, time_model=setup.time_model,
                                prefill_tokens_per_s=setup.prefill_tokens_per_s, devices=setup.devices,
                                scheduler_cls=setup.scheduler_cls, faults=faults,
                                runtime=getattr(setup, "runtime", None))
        arr = setup.config.arrivals
        if arrival_seed is not None:
            arr = dataclasses.replace(arr, seed=int(arrival_seed))
        result = cluster.run(agents, start_times(arr, len(agents)), use_think_time=arr.use_think_time,
                             progress=progress, desc=name)
    finally:
        store.close()
        shutil.rmtree(store_dir, ignore_errors=True)
    return result


def compile_runs(setup: Setup, store_dir: Path, seed_dir: Path | None, *, log: Callable = print,
                 progress: bool | None = None) -> dict:
    """First-run compilation, as a stage of its own: every PE device's prefill shapes
    (``setup.warm_shapes``, through a :class:`~dualpath_jax.engine.prefill.PrefillPath` as the PE
    calls them, so the timed runs find them in JAX's in-memory cache) and one Oracle run of the
    agent with the longest context, which compiles the DE decode step of every batch-row and
    block-table bucket the run can use and the block copies. The later runs then start warm (the
    persistent compilation cache of an earlier process makes this stage take seconds). Returns
    its wall and compilation seconds and the programs compiled.
    """
    t0, (c0, n0) = time.perf_counter(), CompileClock.read()
    for e in range(setup.cluster.num_pe):
        d = setup.devices[e % len(setup.devices)]
        warm_up_prefill(setup.params, setup.spec, d, setup.warm_shapes,
                        path=PrefillPath(setup.params, setup.spec, setup.layout, device=d))
    longest = max(setup.agents, key=lambda a: int(a.num_prompt_tokens.max()) + int(a.num_gen_tokens.max()))
    run_variant(setup, "oracle", store_dir, seed_dir, progress=progress, agents=[longest])
    wall, (c1, n1) = time.perf_counter() - t0, CompileClock.read()
    log(f"compiled {len(setup.warm_shapes)} prefill shapes on {setup.cluster.num_pe} PE(s) and a warm-up run "
        f"({longest.num_rounds} rounds of one agent, Oracle) in {wall:.1f} s: {c1 - c0:.1f} s of XLA compilation, "
        f"{n1 - n0} programs")
    return {"wall_s": wall, "compile_s": c1 - c0, "programs": n1 - n0}


def _pe_compute_s(summary: dict) -> float:
    return float(sum(v for k, v in summary["compute_s"].items() if k.startswith("pe")))


def calibrate_links(setup: Setup, cfg: CalibrateConfig, store_dir: Path, seed_dir: Path | None, *,
                    log: Callable = print, progress: bool | None = None) -> dict:
    """Set the emulated link rates (``setup.cluster``) from this host's measured speed or a saved
    calibration (``cfg``: the ``calibrate`` section); returns the record of this calibration
    (:func:`combine_calibrations` makes ``calibration.json`` of a run's records).

    * Measured (``cfg.load_over_oracle = x > 0``, no ``from_file``): Oracle (no KV I/O, so its JCT
      is the host's compute-bound JCT of the workload) runs ``cfg.passes`` times; every SNIC is set
      to the rate at which reading all of the run's hit KV through one SNIC takes ``x`` times the
      median JCT, every CNIC to ``cfg.cnic_over_snic`` times that. The PE node's own SNIC then
      feeds only ``1/x`` of its compute, the storage-bound regime of the paper (PAPER.md 1.2,
      2.6), whatever the host's speed. The median of the passes, not one pass, because one pass
      can be slowed by other work on the host by tens of percent; the wall JCT rather than the
      PE's compute seconds because over repeated passes the latter spread more.
    * ``cfg.from_file``: the rates of that ``calibration.json`` (its fingerprint checked against
      this config when the config was built, and its estimated hit tokens against these agents).
    * ``x = 0``: the configured rates.

    The record: ``format``, ``source`` (``"measured" | "file" | "config"``), ``snic_bytes_per_s``,
    ``cnic_bytes_per_s`` (bytes/s), ``fingerprint`` (:func:`.engine_config.calibration_fingerprint`),
    ``hit_tokens_estimated``; measured: ``load_over_oracle``, ``cnic_over_snic``, ``passes``,
    ``oracle_jct_s`` and ``oracle_pe_compute_s`` (one per pass, seconds), ``oracle_jct_s_median``,
    ``hit_bytes``; from a file: ``from_file`` and the file's own record under ``saved``.

    Raises:
      ConfigError: ``calibrate.from_file`` was measured on agents with other hit tokens.
    """
    base = {"format": CALIBRATION_FORMAT, "fingerprint": calibration_fingerprint(setup.config),
            "hit_tokens_estimated": int(sum(h for h, _ in setup.rounds))}
    if cfg.from_file:
        path = calibration_path(cfg.from_file)
        saved = read_calibration(path)
        check_fingerprint(saved["fingerprint"], setup.config, str(path))
        if saved.get("hit_tokens_estimated") != base["hit_tokens_estimated"]:
            raise ConfigError("calibrate.from_file", f"{path} was measured on agents with "
                              f"{saved.get('hit_tokens_estimated')} hit tokens, these agents have "
                              f"{base['hit_tokens_estimated']} (other trace files?); measure a new calibration")
        snic, cnic = float(saved["snic_bytes_per_s"]), float(saved["cnic_bytes_per_s"])
        setup.cluster = setup.cluster.replace(snic_bytes_per_s=snic, cnic_bytes_per_s=cnic)
        log(f"calibration from {path}: SNIC {snic / 1e6:.3f} MB/s, CNIC {cnic / 1e6:.3f} MB/s "
            f"({saved.get('source', '?')} there)")
        return {**base, "source": "file", "from_file": str(path), "snic_bytes_per_s": snic,
                "cnic_bytes_per_s": cnic, "saved": saved}
    if not cfg.load_over_oracle:
        return {**base, "source": "config", "snic_bytes_per_s": setup.cluster.snic_bytes_per_s,
                "cnic_bytes_per_s": setup.cluster.cnic_bytes_per_s}
    t0 = time.perf_counter()
    jcts, pe_s = [], []
    for _ in range(cfg.passes):
        s = report.summarize(run_variant(setup, "oracle", store_dir, seed_dir, progress=progress))
        jcts.append(float(s["jct_s"]))
        pe_s.append(_pe_compute_s(s))
    jct = float(statistics.median(jcts))
    hit_bytes = s["hit_tokens"] * setup.layout.bytes_per_token
    snic = hit_bytes / (cfg.load_over_oracle * jct)
    cnic = snic * cfg.cnic_over_snic
    setup.cluster = setup.cluster.replace(snic_bytes_per_s=snic, cnic_bytes_per_s=cnic)
    log(f"calibration: Oracle JCT {', '.join(f'{j:.3f}' for j in jcts)} s over {cfg.passes} pass(es), median "
        f"{jct:.3f} s, for {hit_bytes / 1e6:.1f} MB of hit KV -> SNIC {snic / 1e6:.3f} MB/s, CNIC {cnic / 1e6:.3f} "
        f"MB/s ({time.perf_counter() - t0:.1f} s)")
    return {**base, "source": "measured", "snic_bytes_per_s": snic, "cnic_bytes_per_s": cnic,
            "load_over_oracle": cfg.load_over_oracle, "cnic_over_snic": cfg.cnic_over_snic, "passes": cfg.passes,
            "oracle_jct_s": jcts, "oracle_pe_compute_s": pe_s, "oracle_jct_s_median": jct, "hit_bytes": hit_bytes}


def combine_calibrations(records: Sequence[dict]) -> dict:
    """``calibration.json`` of a run from the records of its calibrations (:func:`calibrate_links`,
    one per repeat with ``calibrate.each_repeat``): the first record's fields, ``snic_bytes_per_s``
    and ``cnic_bytes_per_s`` the median over the records (what ``calibrate.from_file`` applies to
    every repeat), and every record under ``per_repeat``. Raises ``ValueError`` for no records."""
    if not records:
        raise ValueError("records: no calibration")
    out = {k: v for k, v in records[0].items() if k not in ("repeat", "oracle_jct_s", "oracle_pe_compute_s",
                                                             "oracle_jct_s_median")}
    for key in ("snic_bytes_per_s", "cnic_bytes_per_s"):
        out[key] = float(statistics.median(r[key] for r in records))
    out["per_repeat"] = [{k: v for k, v in r.items() if k not in ("format", "fingerprint", "hit_tokens_estimated",
                                                                    "saved")} for r in records]
    return out


def load_compute_ratio(setup: Setup) -> dict:
    """The regime the emulated hardware reproduces (PAPER.md 1.2), estimated before the runs: over
    the rounds with a hit, the time to read their hit KV through one SNIC over the PE's time to
    compute their appended tokens (fitted time model), and the model-level cache-compute ratio
    in GB/PFLOP (``model.cost``). :func:`run_ablation` adds the measured ratio (Oracle's PE
    compute seconds)."""
    c, bpt, spec = setup.cluster, setup.layout.bytes_per_token, setup.spec
    hit_rounds = [(h, a) for h, a in setup.rounds if h > 0]
    load = sum(h * bpt / c.snic_bytes_per_s for h, _ in hit_rounds)
    compute = sum(spec.n_layers * setup.time_model.time_s(h, a) for h, a in hit_rounds)
    ratio = [cost.cache_compute_ratio(spec, h, a, "f32") for h, a in hit_rounds]
    return {"load_over_compute_estimated": float(load / max(compute, 1e-12)),
            "hit_read_s_one_snic": float(load), "hit_rounds": len(hit_rounds),
            "cache_compute_gb_per_pflop": float(np.mean(ratio)) if ratio else 0.0}


def _row(name: str, s: dict, basic_jct: float | None) -> dict:
    row = {"variant": name, "jct_s": s["jct_s"], "ttft_p50_s": s["ttft_p50_s"], "ttft_p99_s": s["ttft_p99_s"],
           "ttst_s": s["ttst_mean_s"], "tpot_s": s["tpot_s"]}
    for node, b in s["snic_bytes"].items():
        row[f"snic_read_MB_{node}"] = b / 1e6
    for node, b in s["snic_busy_s"].items():
        row[f"snic_busy_s_{node}"] = b
    row["snic_max_avg"] = s["snic_max_avg_mean"]
    row["speedup_vs_basic"] = basic_jct / s["jct_s"] if basic_jct else math.nan
    for eng, sec in s["compute_s"].items():
        row[f"compute_s_{eng}"] = sec
    row["failed"] = s["num_failed"]
    row["read_failures"] = s["read_failures"]
    row["persist_failures"] = s["persist_failures"]
    return row


COUNT_COLUMNS = ("failed", "read_failures", "persist_failures")
"""Table columns summed over repeats (every other number is a mean with a 95% interval)."""

def put_estimate(named: dict, name: str, values: Sequence[float]) -> None:
    """``named[name]`` = mean over repeats; with two or more, also ``name_ci95`` (half width),
    ``name_lo`` and ``name_hi`` (the interval's ends). As :func:`.seeds.put`, without the NaN
    interval lines of a single repeat."""
    e = estimate(values)
    named[name] = e.mean
    if e.n >= 2:
        named[name + CI_SUFFIX] = e.half
        named[name + "_lo"] = e.lo
        named[name + "_hi"] = e.hi


def aggregate_rows(rows: Sequence[dict]) -> dict:
    """One variant's table rows of every repeat -> one row: :data:`COUNT_COLUMNS` summed, every
    other number the mean over repeats with ``<column>_ci95`` (NaN below two repeats)."""
    out = {"variant": rows[0]["variant"], "repeats": len(rows)}
    for key in rows[0]:
        if key == "variant":
            continue
        values = [r.get(key, math.nan) for r in rows]
        if key in COUNT_COLUMNS:
            out[key] = int(sum(values))
        else:
            e = estimate(values)
            out[key], out[key + CI_SUFFIX] = e.mean, e.half
    return out


def _fmt(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "nan"
    return f"{mean:.4g} ± {half:.2g}" if math.isfinite(half) else f"{mean:.4g}"


def run_ablation(config, workdir, *, log: Callable = print, progress: bool | None = None) -> dict:
    """Run every variant ``repeats`` times, write the artifacts (see ``configs/engine_ablation.py``),
    return named values (means over repeats, with ``_ci95``, ``_lo``, ``_hi``; :func:`printed`
    selects the printed lines).

    ``config``: an :class:`EngineAblationConfig` or the ConfigDict it is built from (checked first).

    ``progress``: tqdm bars on stderr: one over the preparation stages (setup, seeding, first-run
    compilation) with elapsed time, then one over the runs (calibration, each variant of each
    repeat, token check) with elapsed time and ETA, and one over the current run's requests with
    rate and ETA; ``log`` lines are printed above them. Default: only when stderr is a terminal.

    Raises:
      ConfigError: a field is invalid, or ``calibrate.from_file`` does not fit these agents.
    """
    config = check_config(config)
    CompileClock.start()
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if show:
        log = _above_bars(log)
    prep = ["setup"] + (["seed store"] if config.workload.warm_start else []) + ["compile"]
    runs = [n for r in range(config.repeats)
            for n in ([f"calibrate r{r}"] if _calibrates(config.calibrate, r) else [])
            + [_run_name(v, r) for v in config.variants]] + ["token check"]
    stages = _Stages(show, log)
    workdir = Path(workdir)
    setup = None
    try:
        with stages.phase("engine ablation: preparing", prep):
            with stages.stage("setup"):
                agents = select_agents(config.workload)
                setup = Setup(config, agents, log=log)
            n_req = sum(a.num_rounds for a in agents)
            if scheduler_name(setup.scheduler_cls):
                log(f"scheduler {scheduler_name(setup.scheduler_cls)}")
            log(f"{len(agents)} agents, {n_req} requests; estimated hit KV {sum(h for h, _ in setup.rounds)} tokens, "
                f"appended {sum(a for _, a in setup.rounds)} tokens")
            seed_dir = workdir / "seed_store" if config.workload.warm_start else None
            if seed_dir is not None:
                with stages.stage("seed store"):
                    seed_store(setup, seed_dir, log=log)
            with stages.stage("compile"):
                compile_runs(setup, workdir / "kvstore", seed_dir, log=log, progress=show)
        with stages.phase("engine ablation", runs, eta=True):
            return _run_variants(config, workdir, setup, seed_dir, log, show, stages)
    finally:
        if setup is not None:
            setup.close()  # the ray runtime's node actors


def _calibrates(cfg: CalibrateConfig, repeat: int) -> bool:
    """Whether an Oracle calibration runs before ``repeat``."""
    return cfg.measured and (repeat == 0 or cfg.each_repeat)


def _run_name(variant: str, repeat: int) -> str:
    """A run's name in stages, logs and the token check: ``"<variant> r<repeat>"``."""
    return f"{variant} r{repeat}"


def run_dir(workdir: Path, variant: str, repeat: int) -> Path:
    """Where a run's ``requests/forwards/summary.json`` go: ``runs/<variant>`` for repeat 0 (the
    files ``crosscheck_engine_sim.py`` reads), ``runs/<variant>/r<repeat>`` for the others."""
    d = Path(workdir) / "runs" / variant
    return d if repeat == 0 else d / f"r{repeat}"


class _Stages:
    """Stages of the ablation: their wall and compilation seconds and programs compiled, and
    (``show``) a tqdm bar per phase. A phase's ETA extrapolates from its own finished stages, so
    the preparation (setup, seeding, first-run compilation) does not skew the runs' ETA. A timed
    stage (calibration, a variant) that compiles is logged: its times include the compilation."""

    def __init__(self, show: bool, log: Callable = print):
        self.show, self.log = show, log
        self.bar = None
        self.times: list[dict] = []  # {"stage", "wall_s", "compile_s", "programs"} in order

    @contextlib.contextmanager
    def phase(self, desc: str, names: list[str], *, eta: bool = False):
        fmt = "{desc}: {n_fmt}/{total_fmt} stages [{elapsed}" + ("<{remaining}" if eta else "") + "]{postfix}"
        self.bar = tqdm.tqdm(total=len(names), unit="stage", desc=desc, disable=not self.show, dynamic_ncols=True,
                             bar_format=fmt)
        with self.bar:
            yield

    @contextlib.contextmanager
    def stage(self, name: str, *, timed: bool = False, **fields):
        self.bar.set_postfix_str(name)
        t0, (c0, n0) = time.perf_counter(), CompileClock.read()
        yield
        c1, n1 = CompileClock.read()
        self.times.append({"stage": name, **fields, "wall_s": time.perf_counter() - t0, "compile_s": c1 - c0,
                           "programs": n1 - n0})
        if timed and n1 > n0:
            self.log(f"  note: {n1 - n0} program(s) compiled during {name} ({c1 - c0:.2f} s): its times include "
                     f"them")
        self.bar.update(1)


def _above_bars(log: Callable) -> Callable:
    """``log`` for use while tqdm bars are drawn: the bars step aside for each line, then redraw."""
    def write(msg):
        with tqdm.tqdm.external_write_mode():
            log(msg)
    return write


def _run_variants(config: EngineAblationConfig, workdir: Path, setup: Setup, seed_dir: Path | None,
                  log: Callable, show: bool, stages: _Stages) -> dict:
    names, repeats = list(config.variants), config.repeats
    results, summaries = {}, {}  # (variant, repeat) -> ClusterResult / summary
    records, rates = [], []  # calibration records; per repeat (SNIC, CNIC) bytes/s
    for r in range(repeats):
        if r == 0 or _calibrates(config.calibrate, r):
            with stages.stage(f"calibrate r{r}", timed=True) if _calibrates(config.calibrate, r) else \
                    contextlib.nullcontext():
                records.append({"repeat": r, **calibrate_links(setup, config.calibrate, workdir / "kvstore",
                                                               seed_dir, log=log, progress=show)})
            writers.write_json(workdir / CALIBRATION_FILE, combine_calibrations(records))
        rates.append((setup.cluster.snic_bytes_per_s, setup.cluster.cnic_bytes_per_s))
        for name in names:
            t0 = time.perf_counter()
            with stages.stage(_run_name(name, r), timed=True, variant=name, repeat=r):
                res = run_variant(setup, name, workdir / "kvstore", seed_dir, progress=show,
                                  arrival_seed=config.arrivals.seed + r)
            s = report.summarize(res, window_s=config.window_s)
            results[name, r], summaries[name, r] = res, s
            d = run_dir(workdir, name, r)
            writers.write_json(d / "requests.json", report.request_rows(res))
            writers.write_json(d / "forwards.json", report.forward_rows(res))
            writers.write_json(d / "summary.json", {**s, "links": res.links, "runtime_shapes": res.runtime_shapes,
                                                    "snic_bytes_per_s": rates[r][0], "cnic_bytes_per_s": rates[r][1]})
            snic_mb = ", ".join(f"{k}={v / 1e6:.1f}" for k, v in s["snic_bytes"].items())
            log(f"  {_run_name(name, r):12s} JCT {s['jct_s']:7.2f} s  TTFT p50 {s['ttft_p50_s']:6.3f} s  TPOT "
                f"{s['tpot_s'] * 1e3:6.1f} ms  SNIC MB {snic_mb}"
                f"  failed {s['num_failed']}  failed block reads {s['read_failures']} / persists "
                f"{s['persist_failures']}"
                + (f"  attempts run again {s['attempts_run_again']}" if s["attempts_run_again"] else "")
                + (f"  worker errors {s['worker_errors']}" if s["worker_errors"] else "")
                + f"  ({time.perf_counter() - t0:.1f} s wall)")
    t0 = time.perf_counter()
    with stages.stage("token check"):  # every run of every repeat
        tokens = report.check_tokens({f"{n}/r{r}": res for (n, r), res in results.items()}, setup.params, setup.spec,
                                     tie_tol=config.tie_tol, chunk_tokens=config.reference_chunk_tokens or None)
    if seed_dir is not None:
        shutil.rmtree(seed_dir, ignore_errors=True)
    log(f"token check over {len(results)} runs: identical {tokens['tokens_identical']} (tie-aware "
        f"{tokens['tokens_identical_tie_aware']}), {tokens['reference_checked_tokens']} tokens recomputed without "
        f"the cache in {time.perf_counter() - t0:.1f} s")
    writers.write_json(workdir / "tokens.json", tokens)
    calibration = combine_calibrations(records)
    regime = load_compute_ratio(setup)  # at the last repeat's rates
    bpt = setup.layout.bytes_per_token
    measured = []  # per repeat: the hit KV read through one SNIC vs Oracle's PE compute seconds
    for r in range(repeats):
        if ("oracle", r) in summaries:
            o = summaries["oracle", r]
            read_s, pe_s = o["hit_tokens"] * bpt / rates[r][0], _pe_compute_s(o)
            measured.append({"repeat": r, "hit_read_s_one_snic": read_s, "pe_compute_s_oracle": pe_s,
                             "load_over_compute": read_s / max(pe_s, 1e-12)})
    if measured:
        regime["hit_read_s_one_snic_measured"] = measured[0]["hit_read_s_one_snic"]
        regime["pe_compute_s_oracle"] = estimate([m["pe_compute_s_oracle"] for m in measured]).mean
        regime["load_over_compute_measured"] = estimate([m["load_over_compute"] for m in measured]).mean
        regime["per_repeat"] = measured
    per_repeat_rows = {n: [_row(n, summaries[n, r], summaries.get(("basic", r), {}).get("jct_s"))
                           | {"snic_MB_per_s": rates[r][0] / 1e6} for r in range(repeats)] for n in names}
    rows = [aggregate_rows(per_repeat_rows[n]) for n in names]
    _write_tables(workdir, setup, rows, [row | {"repeat": r} for n in names for r, row in
                                         enumerate(per_repeat_rows[n])], repeats)
    keys = ("jct_s", "ttft_p50_s", "ttft_p99_s", "ttst_mean_s", "tpot_s", "snic_max_avg_mean")
    ablation = {"repeats": repeats, "level": LEVEL,
                "variants": {n: {**_variant_summary([summaries[n, r] for r in range(repeats)], keys),
                                 "runs": [{"repeat": r, **{k: summaries[n, r][k] for k in _RUN_KEYS}}
                                          for r in range(repeats)]} for n in names},
                "tokens_identical": tokens["tokens_identical"],
                "tokens_identical_tie_aware": tokens["tokens_identical_tie_aware"], "regime": regime,
                "calibration": calibration, "snic_bytes_per_s": [a for a, _ in rates],
                "cnic_bytes_per_s": [b for _, b in rates],
                "time_model": {"seconds_per_token": setup.time_model.seconds_per_token,
                               "seconds_per_flop": setup.time_model.seconds_per_flop,
                               "flops_per_key": setup.time_model.flops_per_key},
                "profile": [vars(s) for s in setup.samples], "prefill_tokens_per_s": setup.prefill_tokens_per_s,
                "scheduler": scheduler_name(setup.scheduler_cls), "stages": stages.times,
                **runtime_figures(config.runtime, results.values())}
    writers.write_json(workdir / "ablation.json", ablation)
    _plots(workdir, results, summaries, names, repeats)
    return {**_named_values(names, repeats, summaries, measured, regime, tokens, rates),
            **{k: v for k, v in runtime_figures(config.runtime, results.values()).items() if k != "runtime"}}


def runtime_figures(runtime: str, results) -> dict:
    """``runtime``; ``engine_processes``: the most engine processes of any run (1 under ``threads``);
    ``cross_process_kv_bytes``: KV bytes that crossed a process boundary through JAX's transfer
    server, summed over every run (0 under ``threads``)."""
    results = list(results)
    return {"runtime": runtime, "engine_processes": max((r.processes for r in results), default=1),
            "cross_process_kv_bytes": int(sum(r.cross_process_kv_bytes for r in results))}


_RUN_KEYS = ("jct_s", "ttft_p50_s", "ttft_p99_s", "ttst_mean_s", "tpot_s", "snic_bytes", "snic_busy_s",
             "snic_max_avg_mean", "compute_s", "num_failed", "read_failures", "persist_failures", "bytes_conserved")


def _variant_summary(runs: list[dict], keys: Sequence[str]) -> dict:
    """A variant's entry of ``ablation.json``: each of ``keys`` as the mean over repeats (named as
    before: ``ttst_s``, ``snic_max_avg``) with ``_ci95``, counts summed, ``bytes_conserved`` over all."""
    rename = {"ttst_mean_s": "ttst_s", "snic_max_avg_mean": "snic_max_avg"}
    out = {}
    for k in keys:
        e = estimate([s[k] for s in runs])
        out[rename.get(k, k)], out[rename.get(k, k) + CI_SUFFIX] = e.mean, e.half
    for k in ("num_failed", "read_failures", "persist_failures"):
        out[k] = int(sum(s[k] for s in runs))
    out["bytes_conserved"] = all(s["bytes_conserved"] for s in runs)
    return out


def _write_tables(workdir: Path, setup: Setup, rows: list[dict], run_rows: list[dict], repeats: int) -> None:
    """``ablation.md/.csv``: one row per variant (mean and ``_ci95`` columns in the CSV, ``mean ±
    half width`` in the Markdown); ``ablation_runs.md/.csv``: every run."""
    cl = setup.cluster
    shape = f"{cl.prefill_nodes}P{cl.decode_nodes}D"
    if cl.engines_per_node > 1:
        shape += f" x {cl.engines_per_node} engines per node"
    what = f"mean ± 95% CI over {repeats} repeats" if repeats > 1 else "1 repeat"
    title = f"Engine ablation ({shape} emulated, agentic traces; {what})"
    writers.write_table(workdir / "ablation", rows, title=title)
    md_rows = [{k: (_fmt(v, row.get(k + CI_SUFFIX, math.nan)) if isinstance(v, float) else v)
                for k, v in row.items() if not k.endswith(CI_SUFFIX)} for row in rows]
    (workdir / "ablation.md").write_text(f"# {title}\n\n" + writers.markdown_table(md_rows))
    writers.write_table(workdir / "ablation_runs", run_rows, title=f"Engine ablation, every run ({shape} emulated)")


def _named_values(names, repeats, summaries, measured, regime, tokens, rates) -> dict:
    rs = range(repeats)
    named: dict = {"repeats": repeats}
    for n in names:
        put_estimate(named, f"jct_s_{n}", [summaries[n, r]["jct_s"] for r in rs])
    for n in names:
        put_estimate(named, f"ttft_p50_s_{n}", [summaries[n, r]["ttft_p50_s"] for r in rs])
    if "basic" in names:  # ratios per repeat, then the mean over repeats
        for n in names:
            if n != "basic":
                put_estimate(named, f"speedup_{n}_vs_basic",
                             [summaries["basic", r]["jct_s"] / summaries[n, r]["jct_s"] for r in rs])
    if "dualpath" in names and "oracle" in names:
        put_estimate(named, "dualpath_over_oracle_jct",
                     [summaries["dualpath", r]["jct_s"] / summaries["oracle", r]["jct_s"] for r in rs])
    # SNIC Max/Avg is undefined for a variant that reads nothing through a SNIC (Oracle): left out
    for n in names:
        values = [summaries[n, r]["snic_max_avg_mean"] for r in rs]
        if any(math.isfinite(v) for v in values):
            put_estimate(named, f"snic_max_avg_{n}", values)
    put_estimate(named, "snic_bytes_per_s", [a for a, _ in rates])
    if measured:
        put_estimate(named, "load_over_compute", [m["load_over_compute"] for m in measured])
    else:
        named["load_over_compute"] = regime["load_over_compute_estimated"]
    runs = list(summaries.values())
    named["num_failed"] = sum(s["num_failed"] for s in runs)
    # blocks that could not be read (recomputed) or persisted (later rounds hit less): both change a
    # variant's work, so a difference between variants has a visible cause
    named["read_failures"] = sum(s["read_failures"] for s in runs)
    named["persist_failures"] = sum(s["persist_failures"] for s in runs)
    named["bytes_conserved"] = all(s["bytes_conserved"] for s in runs)
    named["tokens_identical_tie_aware"] = tokens["tokens_identical_tie_aware"]
    named["tokens_identical"] = tokens["tokens_identical"]
    return named


def _plots(workdir: Path, results: dict, summaries: dict, names: list[str], repeats: int) -> None:
    series, errors = {}, {}
    for label, key in (("JCT", "jct_s"), ("TTFT p50", "ttft_p50_s")):
        est = [estimate([summaries[n, r][key] for r in range(repeats)]) for n in names]
        series[label], errors[label] = [e.mean for e in est], [e.half for e in est]
    what = f"mean ± 95% CI over {repeats} repeats" if repeats > 1 else "1 repeat"
    plot_variant_bars(workdir / "ablation.png", names, series, errors=errors, ylabel="seconds",
                      title=f"Engine ablation ({what})")
    xs, ys = {}, {}
    for n in names:  # repeat 0
        if n not in ("basic", "dualpath"):
            continue
        by_link: dict = {}
        for r in results[n, 0].transfers:
            if r.link.startswith("snic_read/") and r.outcome.value == "ok":
                by_link.setdefault(r.link, []).append((r.finish_s, r.num_bytes))
        for link, pts in sorted(by_link.items()):
            pts.sort()
            xs[f"{n} {link}"] = [p[0] for p in pts]
            ys[f"{n} {link}"] = list(np.cumsum([p[1] / 1e6 for p in pts]))
    if ys:
        writers.plot_lines(workdir / "snic_read_bytes.png", xs, ys, xlabel="time (s)", ylabel="MB read",
                           title="Storage NIC reads over time (repeat 0)", marker="")
