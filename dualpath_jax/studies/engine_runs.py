"""The engine ablation's building blocks: its agents, the shared setup of its runs, the seeded
store, one variant's run, the compilation stage and the link calibration.

:mod:`dualpath_jax.studies.engine_ablation` runs the study from these; ``bench_runtime.py`` and
``soak.py`` call them directly. Workload (documented in ``configs/engine_ablation.py``): the
first ``num_agents`` agent conversations of ``../shared/data/agentic_traces`` (sub-agents
dropped, one token scope per trajectory so hits stay within a trajectory, PAPER.md A.4) that have
``rounds`` rounds, cut to those rounds, with every token count divided by ``token_divisor``
(:func:`dualpath_jax.workload.scale_tokens`: a 64-token trace block becomes ``64 / divisor``
tokens, the hash-prefix structure is kept); agents whose context would exceed
``max_context_tokens`` or whose later rounds append more than ``max_append_tokens`` (long tool
outputs) are skipped, so the tiny model replays them on a CPU in the paper's regime of short
appends over long cached contexts. With ``warm_start`` the store is seeded with every agent's
first prompt (:func:`seed_store`). Every run is decided by the config's ``scheduler`` (a
``ClusterScheduler`` subclass ``"pkg.module:Class"``; ``""`` for the built-in one).

First-run compilation is a stage of its own (:func:`compile_runs`, before calibration): every
program the calibration and the variants run is compiled there, called exactly as the PEs and DEs
call it, so the timed runs compile nothing; every stage's seconds of XLA compilation and programs
compiled are measured (:class:`~dualpath_jax.engine.profile.CompileClock`). Link rates come from the host's speed
(:func:`calibrate_links`: the median JCT of a few Oracle passes), or from a saved
``calibration.json`` (``calibrate.from_file``), or the config.
"""


from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dualpath_jax.config import ConfigError
from dualpath_jax.engine import report
from dualpath_jax.engine.cluster import ClusterResult, EngineCluster
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.faults import FaultConfig
from dualpath_jax.engine.prefill import PrefillPath, prefill_kv, store_layout
from dualpath_jax.engine.profile import CompileClock, fit_time_model, prefill_shape, profile_prefill, warm_up_prefill
from dualpath_jax.kvcache import block_keys, pack_full_blocks
from dualpath_jax.model import cost, count_params, get_spec, init_params
from dualpath_jax.model.hf import load_hf_checkpoint
from dualpath_jax.sched import BatchItem, ClusterScheduler, SchedulerConfig
from dualpath_jax.store import KVStore, StoreConfig
from dualpath_jax.studies.engine_config import (ARRIVAL_MODES, CALIBRATION_FORMAT, CalibrateConfig,
                                                EngineAblationConfig, EngineArrivals, EngineWorkload,
                                                calibration_fingerprint, calibration_path, check_fingerprint,
                                                engine_ablation_config, read_calibration)
from dualpath_jax.studies.common import check_recorded_arrivals, existing_mooncake_file, scale_trace_tokens
from dualpath_jax.workload import (Trajectory, agentic_dir, load_agentic_traces, load_mooncake_traces,
                                   poisson_arrivals_s, prompt_token_ids, recorded_arrivals_s)
from dualpath_jax.workload.agentic import trace_files

__all__ = ["CALIBRATED_FIELDS", "check_overrides", "select_agents", "start_times", "CompileClock",
           "describe_time_model", "Setup", "ray_runtime", "round_shapes", "expected_shapes", "seed_store",
           "run_variant", "compile_runs", "pe_compute_s", "calibrate_links", "combine_calibrations",
           "load_compute_ratio"]



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


def select_agents(cfg: EngineWorkload, *, recorded_arrivals: bool = False) -> list[Trajectory]:
    """The replayed agents (module docstring); ``cfg`` is the ``workload`` section;
    ``recorded_arrivals``: the run replays the trace's arrivals (``arrivals.mode='recorded'``),
    which every session of the file must have recorded.

    ``cfg.traces_dir``: agentic: folder of ``*.json.gz`` / ``*.json`` traces, or one trace file
    (empty: ``workload.agentic_dir()``); mooncake (``cfg.source``): ``conversation`` (empty),
    ``synthetic`` or a ``.jsonl`` file, its sessions each isolated in its own token scope.

    Raises:
      ConfigError: ``workload.num_agents`` agents cannot be found under the limits;
        ``workload.traces_dir`` holds no trace files (or, when empty, the default folder);
        ``arrivals.mode`` with ``recorded_arrivals`` when a session's first turn has no timestamp.
    """
    if cfg.source == "mooncake":
        path = existing_mooncake_file(cfg.traces_dir, "workload.traces_dir")
        ts = load_mooncake_traces([path], token_scope="session", block_tokens=int(cfg.mooncake_block_tokens))
        if recorded_arrivals:
            check_recorded_arrivals(path, int(cfg.mooncake_block_tokens), "arrivals.mode")
    else:
        try:
            ts = load_agentic_traces(cfg.traces_dir or None, limit=cfg.max_files, subagents="drop",
                                     token_scope="trajectory")
        except FileNotFoundError as e:
            hint = "" if cfg.traces_dir else (" (the default folder: set workload.traces_dir, or DUALPATH_DATA_DIR "
                                              "to the folder holding agentic_traces/)")
            raise ConfigError("workload.traces_dir", f"{e}{hint}") from None
    ts = scale_trace_tokens(ts, int(cfg.token_divisor))  # (ConfigError naming workload.token_divisor)
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
    mooncake = cfg.source == "mooncake"
    read = 0 if mooncake else len(trace_files(cfg.traces_dir or agentic_dir())[:cfg.max_files])
    where = f"the sessions of {path}" if mooncake else (
        f"the {read} trace file{'s' if read != 1 else ''} read from {cfg.traces_dir or 'the default folder'} (at most "
        f"workload.max_files={cfg.max_files}; each file is one agent, its conversation without its sub-agents)")
    widen = "workload.rounds, workload.max_context_tokens" + (" and " if mooncake else ", workload.max_files and ")
    raise ConfigError("workload.num_agents", f"found only {len(out)} agent{'s' if len(out) != 1 else ''} with >= "
                      f"{cfg.rounds} rounds, "
                      f"<= {cfg.max_context_tokens} tokens and <= {cfg.max_append_tokens} appended tokens per "
                      f"later round in {where} ({widen}workload.max_append_tokens widen the choice)")


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


def offline_arrivals(cfg: EngineArrivals) -> EngineArrivals:
    """``cfg`` offline and without think times: the runs that measure compute (calibration's
    Oracle passes, the compile stage's warm-up), where arrival gaps and think times are waiting."""
    return dataclasses.replace(cfg, mode="offline", speedup=1.0, use_think_time=False)


def start_times(cfg: EngineArrivals, agents: Sequence[Trajectory]) -> np.ndarray:
    """f64[A] start of each of ``agents``, seconds: offline, every agent at t = 0; online, Poisson
    arrivals at ``cfg.aps`` agents/s; recorded, each agent's ``start_offset_s`` (a Mooncake
    session's first timestamp) minus the earliest, divided by ``cfg.speedup``.

    Raises:
      ConfigError: naming ``arrivals.mode`` for an unknown mode.
    """
    if cfg.mode == "offline":
        return np.zeros(len(agents))
    if cfg.mode == "online":
        return poisson_arrivals_s(len(agents), cfg.aps, cfg.seed)
    if cfg.mode == "recorded":
        return recorded_arrivals_s([a.start_offset_s for a in agents], cfg.speedup)
    raise ConfigError("arrivals.mode", f"must be one of {list(ARRIVAL_MODES)} (got {cfg.mode!r})")


def check_waits(config: EngineAblationConfig, agents: Sequence[Trajectory]) -> None:
    """Refuse, before anything runs, an agent whose recorded waits alone outlast the run's deadline
    (``cluster.run_timeout_s``): its start (``arrivals.mode='recorded'``; online starts are drawn,
    not recorded) plus, with ``arrivals.use_think_time``, its rounds' think times.

    Raises:
      ConfigError: naming ``arrivals.use_think_time`` (or, without it, ``arrivals.speedup``), with
        the agent, the file or folder it was read from and its waits.
    """
    arr, limit = config.arrivals, config.cluster.run_timeout_s
    if not arr.use_think_time and arr.mode != "recorded":
        return
    starts = start_times(arr, agents) if arr.mode == "recorded" else np.zeros(len(agents))
    for agent, start in zip(agents, starts):
        think = float(np.sum(agent.think_time_s)) if arr.use_think_time else 0.0
        if not float(start) + think < limit:  # (a NaN never passes)
            what = " + ".join(x for x, on in ((f"starts at {float(start):.4g} s", arr.mode == "recorded"),
                                              (f"thinks {think:.4g} s", arr.use_think_time)) if on)
            raise ConfigError("arrivals.use_think_time" if arr.use_think_time else "arrivals.speedup",
                              f"agent {agent.agent_id} (from {agent.source or 'no file'}) {what} as recorded, beyond "
                              f"cluster.run_timeout_s={limit:g}: the run would end on its deadline first (raise "
                              f"cluster.run_timeout_s{', or drop use_think_time' if arr.use_think_time else ''})")


def describe_time_model(tm) -> str:
    """The fitted PE time model in words: seconds of one layer per new token and per (query, key)
    pair, and one example per layer and per forward, with its attention (what the compute quota
    bounds)."""
    per_pair = tm.seconds_per_flop * tm.flops_per_key
    return (f"a layer takes {tm.seconds_per_token * 1e6:.3g} us per new token + {per_pair * 1e9:.3g} ns "
            f"per (query, key) pair (64 new tokens over 1024 cached: {tm.layer_s(1024, 64) * 1e3:.3g} ms per layer, "
            f"{tm.forward_s(1024, 64) * 1e3:.3g} ms for all {tm.layers}, of which attention "
            f"{tm.time_s(1024, 64) * 1e3:.3g} ms)")


def _check_fits_host(model, log: Callable) -> None:
    """Log the served model; raise ConfigError (naming ``model.checkpoint`` or ``model.name``) when
    its f32 parameters would take more than half of this host's memory (the full-size presets are
    the simulator's)."""
    spec = model.spec()
    n = count_params(spec)
    field, what = ("model.checkpoint", model.checkpoint) if model.checkpoint else ("model.name", model.name)
    moe = f", MoE {spec.n_activated_experts} of {spec.n_routed_experts} experts" if spec.n_routed_experts else ""
    log(f"model: {what} ({spec.attention.upper()}, {spec.n_layers} layers, {n / 1e6:.2f}M parameters{moe}"
        f"{'; model.name is not used' if model.checkpoint else ''})")
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 4 * n > host / 2:
        raise ConfigError(field, f"{what} has {n / 1e9:.1f}B parameters, {4 * n / 1e9:.0f} GB in f32: more than "
                          f"half of this host's {host / 1e9:.0f} GB of memory. The engine serves models that fit "
                          "one host and device; the simulator (sim.model) prices full-size ones")


class Setup:
    """Model, layout, profiled time model and the prefill shapes shared by every variant of a run
    (compiled by :func:`compile_runs`).

    Raises:
      ConfigError: ``model.checkpoint`` names a checkpoint whose weights cannot be read (no
        weight file, a truncated or damaged one, a tensor missing or of the wrong shape).
    """

    def __init__(self, config: EngineAblationConfig, agents: list[Trajectory], log: Callable = print):
        self.config = config = engine_ablation_config(config)
        check_waits(config, agents)
        _check_fits_host(config.model, log)
        if config.model.checkpoint:  # a local Hugging Face checkpoint (its config was checked with the config)
            try:
                self.spec, params = load_hf_checkpoint(config.model.checkpoint, dtype=jnp.float32)
            except (FileNotFoundError, ValueError) as e:  # no weights, an unreadable file, a missing tensor
                raise ConfigError("model.checkpoint", str(e)) from e
        else:
            self.spec = get_spec(config.model.name)
            params = init_params(self.spec, jax.random.PRNGKey(config.model.seed))
        self.cluster = config.cluster
        self.scheduler_cls = config.scheduler
        self.params = jax.tree.map(np.asarray, params)
        # the store's keys are scoped to this spec and these weights (their fingerprint)
        self.layout = store_layout(self.spec, self.params, config.model.kv_dtype)
        self.cluster.check_layout(self.layout.full_block_bytes)
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
        forward_s = self.time_model.forward_s(ctx_tok, app_tok)
        self.prefill_tokens_per_s = (ctx_tok + app_tok) / max(forward_s, 1e-9)
        self.rounds = round_shapes(agents, self.layout.block_tokens, bool(config.workload.warm_start))
        self.warm_shapes = expected_shapes(self.rounds, self.layout.block_tokens, self.time_model, self.cluster,
                                           self.scheduler_cls)
        self.setup_s = time.perf_counter() - t0
        fit = [self.time_model.layer_s(s.cached, s.bsz) / s.layer_s for s in self.samples]
        log(f"profiled {len(self.samples)} (cached, bsz) pairs in {self.setup_s:.1f} s "
            f"({CompileClock.read()[0] - c0:.1f} s compiling); time model: "
            f"{describe_time_model(self.time_model)}; it predicts {min(fit):.2f}x to {max(fit):.2f}x "
            "the profiled times")
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
                      pe_resource=config.ray.pe_resource, de_resource=config.ray.de_resource,
                      start_timeout_s=config.ray.start_timeout_s)


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


def expected_shapes(rounds: list[tuple[int, int]], z: int, time_model, cluster: ClusterConfig,
                    scheduler_cls: type = ClusterScheduler) -> set:
    """Prefill ``(T, P)`` buckets the run will likely use: each round whole (FIFO batches) and as
    the chunks that ``scheduler_cls``'s ``form_pe_batch`` under the ``dualpath`` policy (the
    compute quota of ``cluster``) gives it alone."""
    pe_groups, de_groups = cluster.groups()
    sched = scheduler_cls(SchedulerConfig(policy="dualpath", loading="dual", z_factor=cluster.z_factor,
                                          compute_quota_s=cluster.compute_quota_s), pe_groups, de_groups)
    shapes = set()
    for hit, app in rounds:
        shapes.add(prefill_shape(hit, app, z))
        cached, remaining = hit, app
        while remaining > 0:
            try:
                batch = sched.form_pe_batch([BatchItem(0, cached, remaining)], time_model=time_model,
                                            max_tokens=cluster.basic_max_batch_tokens)
            except Exception:  # noqa: BLE001 - a policy that needs state of its own: no chunks to predict
                batch = []
            step = min(batch[0].remaining, remaining) if batch else 0
            if step <= 0:  # a policy that leaves it out alone: no chunk to predict
                break
            shapes.add(prefill_shape(cached, step, z))
            cached += step
            remaining -= step
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
                faults: FaultConfig | None = None, arrival_seed: int | None = None,
                arrivals: EngineArrivals | None = None) -> ClusterResult:
    """One variant on a fresh store (a copy of ``seed_dir`` if given), so every variant starts
    from the same stored KV and sees the same hits. ``progress``: a bar of finished requests
    (default: when stderr is a terminal); ``agents``: replay these instead of ``setup.agents``;
    ``faults``: faults to inject (:mod:`dualpath_jax.engine.faults`); ``arrival_seed``: the seed of
    online arrivals (default ``arrivals.seed``); ``arrivals``: these instead of the config's."""
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
        arr = setup.config.arrivals if arrivals is None else arrivals
        if arrival_seed is not None:
            arr = dataclasses.replace(arr, seed=int(arrival_seed))
        result = cluster.run(agents, start_times(arr, agents), use_think_time=arr.use_think_time,
                             progress=progress, desc=name)
    finally:
        store.close()
        shutil.rmtree(store_dir, ignore_errors=True)
    return result


def compile_runs(setup: Setup, store_dir: Path, seed_dir: Path | None, *, log: Callable = print,
                 progress: bool | None = None) -> dict:
    """First-run compilation, as a stage of its own: every PE device's prefill shapes
    (``setup.warm_shapes``, through a :class:`~dualpath_jax.engine.prefill.PrefillPath` as the PE
    calls them, so the timed runs find them in JAX's in-memory cache; under ``ray`` in the PE node
    actors' processes too) and one Oracle run of the agent with the longest context (offline,
    without think times), which
    compiles the DE decode step of every batch-row and block-table bucket the run can use and the
    block copies. The later runs then start warm (the
    persistent compilation cache of an earlier process makes this stage take seconds). Returns
    its wall and compilation seconds and the programs compiled, in this process (``programs``)
    and in the PE node actors' (``node_programs``, 0 under ``threads``).
    """
    t0, (c0, n0) = time.perf_counter(), CompileClock.read()
    for e in range(setup.cluster.num_pe):
        d = setup.devices[e % len(setup.devices)]
        warm_up_prefill(setup.params, setup.spec, d, setup.warm_shapes,
                        path=PrefillPath(setup.params, setup.spec, setup.layout, device=d))
    longest = max(setup.agents, key=lambda a: int(a.num_prompt_tokens.max()) + int(a.num_gen_tokens.max()))
    run_variant(setup, "oracle", store_dir, seed_dir, progress=progress, agents=[longest],
                arrivals=offline_arrivals(setup.config.arrivals))
    runtime, node_programs = getattr(setup, "runtime", None), 0
    if runtime is not None:  # ray: the PE node actors (started by the run above) compile in their own processes
        node_programs = runtime.warm_up_prefill(setup.warm_shapes)
    wall, (c1, n1) = time.perf_counter() - t0, CompileClock.read()
    log(f"compiled {len(setup.warm_shapes)} prefill shapes on {setup.cluster.num_pe} PE(s) and a warm-up run "
        f"({longest.num_rounds} rounds of one agent, Oracle) in {wall:.1f} s: {c1 - c0:.1f} s of XLA compilation, "
        f"{n1 - n0} programs" + (f" here and {node_programs} in the PE node processes" if runtime else ""))
    return {"wall_s": wall, "compile_s": c1 - c0, "programs": n1 - n0, "node_programs": node_programs}


def pe_compute_s(summary: dict) -> float:
    """Seconds the PEs of a run spent computing (``summary``: :func:`~dualpath_jax.engine.report.summarize`'s)."""
    return float(sum(v for k, v in summary["compute_s"].items() if k.startswith("pe")))


def calibrate_links(setup: Setup, cfg: CalibrateConfig, store_dir: Path, seed_dir: Path | None, *,
                    log: Callable = print, progress: bool | None = None) -> dict:
    """Set the emulated link rates (``setup.cluster``) from this host's measured speed or a saved
    calibration (``cfg``: the ``calibrate`` section); returns the record of this calibration
    (:func:`combine_calibrations` makes ``calibration.json`` of a run's records).

    * Measured (``cfg.load_over_oracle = x > 0``, no ``from_file``): Oracle (no KV I/O, so its JCT
      is the host's compute-bound JCT of the workload) runs ``cfg.passes`` times, offline and
      without think times whatever the run's arrivals (arrival gaps and think times would count
      waiting as compute); every SNIC is set
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
      ConfigError: ``calibrate.from_file`` was measured on agents with other hit tokens; or
        (``calibrate.load_over_oracle``) an Oracle pass failed requests, or the agents have no hit
        tokens, so no rate can be measured.
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
    offline = offline_arrivals(setup.config.arrivals)
    give = "or give the link rates (calibrate.load_over_oracle=0 with cluster.snic_bytes_per_s and cnic_bytes_per_s)"
    no_hits = "these agents hit no stored KV, so no read can be timed against their compute: use agents with cached " \
        f"prefixes, {give}"
    if not base["hit_tokens_estimated"]:
        raise ConfigError("calibrate.load_over_oracle", no_hits)
    for _ in range(cfg.passes):
        res = run_variant(setup, "oracle", store_dir, seed_dir, progress=progress, arrivals=offline)
        s = report.summarize(res)
        if s["num_failed"]:
            first = next((r.error for r in res.requests if r.error), "?")
            raise ConfigError("calibrate.load_over_oracle", f"the Oracle pass that measures the link rates failed "
                              f"{s['num_failed']} of {s['num_requests']} requests (the first: {first}); fix that, "
                              f"{give}")
        jcts.append(float(s["jct_s"]))
        pe_s.append(pe_compute_s(s))
    jct = float(statistics.median(jcts))
    hit_bytes = s["hit_tokens"] * setup.layout.bytes_per_token
    if not hit_bytes:
        raise ConfigError("calibrate.load_over_oracle", no_hits)
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
    compute = sum(setup.time_model.forward_s(h, a) for h, a in hit_rounds)
    ratio = [cost.cache_compute_ratio(spec, h, a, "f32") for h, a in hit_rounds]
    return {"load_over_compute_estimated": float(load / max(compute, 1e-12)),
            "hit_read_s_one_snic": float(load), "hit_rounds": len(hit_rounds),
            "cache_compute_gb_per_pflop": float(np.mean(ratio)) if ratio else 0.0}
