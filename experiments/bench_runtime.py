"""Engine runtimes side by side: the engine ablation's JCT with ``ray`` over ``threads``.

    python experiments/bench_runtime.py --workdir=workdir/bench_runtime
    python experiments/bench_runtime.py --config=configs/engine_ablation.py:quick --config.repeats=3 --workdir=W

Runs the engine ablation's agents (``--config``, default ``configs/engine_ablation.py:quick``)
on both runtimes in one process, at the same emulated link rates: one calibration (Oracle passes
under ``threads``, as ``run_engine.py`` does; or ``--config.calibrate.from_file``), then for every
repeat and variant a ``threads`` run and a ``ray`` run (1P2D: three node processes, KV between
them over JAX's transfer server), their order alternating between repeats so a slow drift of the
host's load hits both alike. The ``ray`` node actors compile their programs in an untimed pass
over every variant first (the study's ``compile`` stage does the same for ``threads``).

Every ratio is taken within a repeat (a ``ray`` JCT over the ``threads`` JCT of the same variant
and repeat); the headline ``ray_over_threads_jct`` is the mean over repeats of the per-repeat
mean over variants, with its 95% Student-t interval (``_ci95``), and
``ray_over_threads_jct_<variant>`` per variant; ``pe_compute_ray_over_threads`` compares the
seconds the PE spent computing its forwards (measured inside its process), which separates CPU
contention from transport and control latency, and ``cpu_ray_over_threads`` the CPU-seconds the
whole machine was busy during each run (Linux ``/proc/stat``; every process, Ray's daemons
included). Those of the driver and the node processes are split by kind of thread
(:func:`~dualpath_jax.engine.profile.thread_cpu_s`): ``xla_cpu_ray_over_threads`` (XLA's
threads: its intra-op pool and the threads its CPU client runs computations on, known in every
process as those that started with its backend), ``python_cpu_ray_over_threads`` (Python
threads, with the native code they run inline), and the CPU-seconds per run that ``ray`` adds in
native library threads (``native_cpu_ray_minus_threads_s``: Ray's core workers, gRPC) and outside
these processes (``other_cpu_ray_minus_threads_s``: Ray's daemons, and whatever else the host runs).
``ray_actor_calls_per_run`` counts the calls of the run's hot paths that the node actors serve per
``ray`` run (orders, polls, the driver's requests for read-queue changes before its ticks,
reservations, hit offers, hand-offs: ``ClusterResult.actor_calls``; not the few that start and
end a run), and ``read_q_calls_per_run`` those requests for read-queue changes alone;
``extra_cpu_ms_per_actor_call`` divides the CPU-seconds a ``ray`` run costs the machine beyond its
``threads`` twin by its calls (an upper bound of one call's cost: the transport's copies and
packing are in it too). ``threads_cpu_busy_share`` and ``ray_cpu_busy_share`` are the share of
the machine's cores busy during a run (its CPU-seconds over cores times its wall time; the mean
over the variants, each run's in ``runtime_bench.json``): near 1, the run is CPU-bound, and
every CPU-second a runtime adds lengthens it. Once per repeat, before its runs,
``ray_idle_cpu_s_per_s`` measures what Ray costs the machine with the node actors up and idle
(2 s) and ``ray_bare_call_cpu_ms`` the machine CPU of a call to an actor that does nothing
beyond that (the floor under any actor call; 1,000 calls, one after another);
``ray_cgraph_step_cpu_ms`` and ``ray_cgraph_waiting_cores`` measure the alternative, Ray Compiled
Graphs, on the same host: the machine CPU of one execution of a compiled graph that hands a value to
three do-nothing actors and gathers their answers (the shape of the driver's orders and polls), and
the cores that graph keeps busy beyond Ray's idle rate while it waits for its next input.
Tokens of every run are checked against each other
and a no-cache recompute (``tokens_identical``). Writes ``runtime_bench.json`` (every run's JCT),
``config.json``, ``env.json`` and ``metrics.json`` to the workdir and ends with ``name: value``
lines; ``host_busy_cores_before`` is the machine's load from other processes, measured for 1 s
before anything starts (a warning is printed above 0.25 cores: the machine-wide CPU figures then
count that load). About 2.5 to 5.5 minutes for ``:quick`` (5 repeats) on a 2-core CPU (the host's speed sets
the calibrated link rates, so its runs' length).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

_CONFIG_DEFAULT = str(Path(__file__).resolve().parent.parent / "configs" / "engine_ablation.py") + ":quick"

if __name__ == "__main__":
    from dualpath_jax.studies.cli import force_host_devices  # (imports no JAX)

    force_host_devices(sys.argv[1:], _CONFIG_DEFAULT)  # one JAX device per engine on a CPU host

from absl import flags, logging  # noqa: E402

from dualpath_jax.studies import cli  # noqa: E402  (imports no JAX)

_CONFIG = cli.define_config_file(
    "config", _CONFIG_DEFAULT, "Engine ablation config whose agents, cluster, variants and repeats both runtimes "
    "run (configs/engine_ablation.py:quick by default); --config.runtime_address and --config.ray.* place the "
    "ray runtime's node actors.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_runtime",
                               "Output directory (new or empty; --overwrite replaces an earlier run).")
_JIT_CACHE = flags.DEFINE_string(
    "jit_cache_dir",
    os.environ.get("DUALPATH_JIT_CACHE", os.path.join(tempfile.gettempdir(), "dualpath_jax_jit_cache")),
    "Persistent XLA compilation cache, shared with the node actors; empty to disable.")


def _busy_cpu_s() -> float:
    """CPU-seconds the whole machine has spent busy so far (Linux ``/proc/stat``; NaN elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


_BUSY_PROBE_S = 1.0
_BUSY_HOST_CORES = 0.25  # above this many cores busy before the runs, the machine-wide CPU figures are suspect


def _host_busy_cores(seconds: float = _BUSY_PROBE_S) -> float:
    """Cores the whole machine keeps busy over ``seconds`` while this process sleeps (its load
    from other processes; NaN off Linux)."""
    cpu0 = _busy_cpu_s()
    time.sleep(seconds)
    return (_busy_cpu_s() - cpu0) / seconds


class _Echo:
    """A Ray actor that does nothing: the cost of a bare actor call."""

    def call(self, x):
        return x


def _ray_floor(ray, calls: int = 1000, idle_s: float = 2.0) -> tuple[float, float]:
    """Machine CPU of Ray with the node actors up and idle (CPU-seconds per second over
    ``idle_s``) and of a bare actor call beyond that (ms: submit, run and answer of ``calls``
    calls of a do-nothing actor, one after another, less the idle rate over their time)."""
    idle = _host_busy_cores(idle_s)
    echo = ray.remote(_Echo).options(num_cpus=0, max_concurrency=64).remote()
    try:
        ray.get(echo.call.remote(None))
        cpu0, t0 = _busy_cpu_s(), time.perf_counter()
        for _ in range(calls):
            ray.get(echo.call.remote(None))
        cpu = _busy_cpu_s() - cpu0 - idle * (time.perf_counter() - t0)
    finally:
        ray.kill(echo)
    return 1e3 * cpu / calls, idle


def _cgraph_floor(ray, idle: float, actors: int = 3, steps: int = 300, wait_s: float = 2.0) -> tuple[float, float]:
    """Ray Compiled Graphs (``ray.dag``, ``experimental_compile``), the low-overhead alternative to
    actor calls for an exchange that repeats: a graph that hands one value to ``actors``
    do-nothing actors and gathers their answers, as the driver's orders and polls would go. Returns
    the machine CPU of one execution (ms, ``steps`` one after another, less Ray's idle rate
    ``idle`` in cores) and the cores the compiled graph keeps busy, beyond ``idle``, while it waits
    ``wait_s`` seconds for input; NaNs where this Ray cannot compile the graph."""
    try:
        from ray.dag import InputNode, MultiOutputNode
    except ImportError:
        return float("nan"), float("nan")
    echoes = [ray.remote(_Echo).options(num_cpus=0).remote() for _ in range(actors)]
    graph = None
    try:
        with InputNode() as inp:
            graph = MultiOutputNode([e.call.bind(inp) for e in echoes]).experimental_compile()
        for _ in range(10):
            ray.get(graph.execute(None))
        cpu0, t0 = _busy_cpu_s(), time.perf_counter()
        for _ in range(steps):
            ray.get(graph.execute(None))
        step_ms = 1e3 * (_busy_cpu_s() - cpu0 - idle * (time.perf_counter() - t0)) / steps
        waiting = _host_busy_cores(wait_s) - idle
    except Exception as e:  # noqa: BLE001  (a beta API: its failure must not end the benchmark)
        print(f"warning: Ray Compiled Graphs unavailable here ({type(e).__name__}: {e})", flush=True)
        return float("nan"), float("nan")
    finally:
        if graph is not None:
            graph.teardown()
        for e in echoes:
            ray.kill(e)
    return step_ms, waiting


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import jax

    cli.use_jit_cache(_JIT_CACHE.value)

    from dualpath_jax.engine import report
    from dualpath_jax.engine.profile import start_backends, thread_cpu_s
    from dualpath_jax.metrics import writers
    from dualpath_jax.studies.engine_ablation import (Setup, calibrate_links, check_config, compile_runs,
                                                      ray_runtime, run_variant, seed_store, select_agents)
    from dualpath_jax.studies.seeds import estimate, printed, put as put_estimate

    driver_xla_threads = start_backends()  # before anything else starts JAX's backend

    config = check_config(_CONFIG.value)
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_config(workdir, _CONFIG.value)
    writers.write_env(workdir, device=f"{jax.default_backend()} x {jax.device_count()}")
    log = lambda s: print(s, flush=True)  # noqa: E731
    busy_before = _host_busy_cores()
    if busy_before > _BUSY_HOST_CORES:
        log(f"warning: the machine was already busy before the benchmark ({busy_before:.2f} of "
            f"{os.cpu_count()} cores over {_BUSY_PROBE_S:g} s): the machine-wide CPU figures (cpu_ray_over_threads, "
            f"other_cpu_ray_minus_threads_s, ray_idle_cpu_s_per_s, ray_bare_call_cpu_ms, ray_cgraph_*, "
            f"*_cpu_busy_share) count that load too, and the JCTs share the cores with it")
    t_start = time.perf_counter()
    agents = select_agents(config.workload)
    setup = Setup(config, agents, log=log)  # threads; the ray runtime is attached per run below
    runtime = ray_runtime(config)
    store_dir = workdir / "kvstore"
    seed_dir = workdir / "seed_store" if config.workload.warm_start else None
    try:
        if seed_dir is not None:
            seed_store(setup, seed_dir, log=log)
        setup.runtime = None
        compile_runs(setup, store_dir, seed_dir, log=log, progress=False)
        calibration = calibrate_links(setup, config.calibrate, store_dir, seed_dir, log=log, progress=False)
        log(f"link rates: SNIC {setup.cluster.snic_bytes_per_s / 1e6:.2f} MB/s, CNIC "
            f"{setup.cluster.cnic_bytes_per_s / 1e6:.2f} MB/s (both runtimes)")
        setup.runtime = runtime
        t0 = time.perf_counter()
        for name in config.variants:  # the node actors compile (untimed)
            run_variant(setup, name, store_dir, seed_dir, progress=False)
        log(f"ray node actors warmed up in {time.perf_counter() - t0:.1f} s (pids {runtime.pids}); XLA's threads: "
            f"{len(driver_xla_threads)} in the driver, {[len(t) for t in runtime.xla_threads.values()]} in the nodes")
        runs, results, floors = [], {}, []
        for r in range(config.repeats):
            floors.append(_ray_floor(runtime.ray()))
            floors[-1] += _cgraph_floor(runtime.ray(), floors[-1][1])
            order = ("threads", "ray") if r % 2 == 0 else ("ray", "threads")
            for name in config.variants:
                for which in order:
                    setup.runtime = runtime if which == "ray" else None
                    pids = [os.getpid(), *runtime.pids]  # the driver and the node processes (idle under threads)
                    xla = {os.getpid(): driver_xla_threads, **runtime.xla_threads}
                    cpu0, kinds0, wall0 = _busy_cpu_s(), thread_cpu_s(pids, xla), time.perf_counter()
                    res = run_variant(setup, name, store_dir, seed_dir, progress=False,
                                      arrival_seed=config.arrivals.seed + r)
                    cpu_s, kinds = _busy_cpu_s() - cpu0, thread_cpu_s(pids, xla)
                    wall_s = time.perf_counter() - wall0
                    kinds = {k: kinds[k] - kinds0[k] for k in kinds}
                    s = report.summarize(res, window_s=config.window_s)
                    results[f"{name}/{which}/r{r}"] = res
                    runs.append({"variant": name, "runtime": which, "repeat": r, "jct_s": s["jct_s"],
                                 "pe_compute_s": sum(v for k, v in res.compute_s.items() if k.startswith("pe")),
                                 "machine_cpu_s": cpu_s, "run_wall_s": wall_s,
                                 "cpu_busy_share": cpu_s / (os.cpu_count() * wall_s),
                                 **{f"cpu_{k}_s": v for k, v in kinds.items()},
                                 "cpu_other_s": cpu_s - sum(kinds.values()),
                                 "num_failed": s["num_failed"], "processes": res.processes,
                                 "cross_process_kv_bytes": res.cross_process_kv_bytes,
                                 "actor_calls": res.actor_calls})
                    log(f"  r{r} {name:10s} {which:7s} JCT {s['jct_s']:7.3f} s  failed {s['num_failed']}"
                        f"  processes {res.processes}  cross-process KV {res.cross_process_kv_bytes / 1e6:.1f} MB")
        tokens = report.check_tokens(results, setup.params, setup.spec, tie_tol=config.tie_tol,
                                     chunk_tokens=config.reference_chunk_tokens or None)
    finally:
        runtime.close()

    def ratios(key: str, op=lambda ray, threads: ray / threads) -> tuple[dict, list]:
        """Per variant, ``op(ray run's key, threads run's key)`` (their ratio), per repeat; and per
        repeat the mean of those over the variants."""
        v = {(x["variant"], x["runtime"], x["repeat"]): x[key] for x in runs}
        rs = range(config.repeats)
        per_variant = {n: [op(v[n, "ray", r], v[n, "threads", r]) for r in rs] for n in config.variants}
        return per_variant, [sum(per_variant[n][r] for n in config.variants) / len(config.variants) for r in rs]

    per_variant, per_repeat = ratios("jct_s")
    pe_ratio, cpu_ratio = ratios("pe_compute_s")[1], ratios("machine_cpu_s")[1]
    named: dict = {"repeats": config.repeats}
    put_estimate(named, "ray_over_threads_jct", per_repeat)
    for n in config.variants:
        put_estimate(named, f"ray_over_threads_jct_{n}", per_variant[n])
    put_estimate(named, "pe_compute_ray_over_threads", pe_ratio)
    put_estimate(named, "cpu_ray_over_threads", cpu_ratio)
    put_estimate(named, "xla_cpu_ray_over_threads", ratios("cpu_xla_s")[1])
    put_estimate(named, "python_cpu_ray_over_threads", ratios("cpu_python_s")[1])
    minus = lambda ray, threads: ray - threads  # noqa: E731
    put_estimate(named, "native_cpu_ray_minus_threads_s", ratios("cpu_native_s", minus)[1])
    put_estimate(named, "other_cpu_ray_minus_threads_s", ratios("cpu_other_s", minus)[1])

    def repeat_means(which: str, value) -> list:
        """Per repeat, the mean of ``value(run)`` over that repeat's runs on runtime ``which``."""
        groups = [[x for x in runs if x["runtime"] == which and x["repeat"] == r] for r in range(config.repeats)]
        return [sum(value(x) for x in xs) / len(xs) for xs in groups]

    for which in ("threads", "ray"):
        put_estimate(named, f"{which}_cpu_busy_share", repeat_means(which, lambda x: x["cpu_busy_share"]))
    ray_runs = [x for x in runs if x["runtime"] == "ray"]
    for x in ray_runs:
        x["calls"] = sum(x["actor_calls"].values())
    extra_s = ratios("machine_cpu_s", minus)[0]  # per variant, per repeat: ray's CPU-seconds over its threads twin's
    for x in ray_runs:
        x["extra_cpu_ms_per_call"] = 1e3 * extra_s[x["variant"]][x["repeat"]] / max(x["calls"], 1)
    put_estimate(named, "ray_actor_calls_per_run", repeat_means("ray", lambda x: x["calls"]))
    put_estimate(named, "read_q_calls_per_run", repeat_means("ray", lambda x: x["actor_calls"].get("read_q", 0)))
    put_estimate(named, "extra_cpu_ms_per_actor_call", repeat_means("ray", lambda x: x["extra_cpu_ms_per_call"]))
    put_estimate(named, "ray_bare_call_cpu_ms", [f[0] for f in floors])
    put_estimate(named, "ray_idle_cpu_s_per_s", [f[1] for f in floors])
    put_estimate(named, "ray_cgraph_step_cpu_ms", [f[2] for f in floors])
    put_estimate(named, "ray_cgraph_waiting_cores", [f[3] for f in floors])
    named["engine_processes"] = max(x["processes"] for x in runs)
    named["cross_process_kv_bytes"] = int(sum(x["cross_process_kv_bytes"] for x in runs))
    named["num_failed"] = int(sum(x["num_failed"] for x in runs))
    named["tokens_identical"] = tokens["tokens_identical"]
    named["snic_bytes_per_s"] = setup.cluster.snic_bytes_per_s
    named["host_busy_cores_before"] = busy_before
    named["wall_s"] = time.perf_counter() - t_start
    writers.write_json(workdir / "runtime_bench.json", {
        "runs": runs, "calibration": calibration, "per_variant_ratio": per_variant, "per_repeat_ratio": per_repeat,
        "ray_over_threads_jct": estimate(per_repeat).mean, "tokens": tokens})
    writers.write_named_values(workdir, named)
    writers.append_metrics(workdir, {"experiment": "bench_runtime", **named})
    print()
    print(writers.format_named_values(printed(named)))


if __name__ == "__main__":
    from dualpath_jax.studies.engine_config import describe_engine_config  # (imports no JAX)
    cli.run(main, config=_CONFIG, describe=describe_engine_config)
