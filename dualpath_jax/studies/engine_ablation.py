"""The engine ablation (paper Fig. 12 right, on the real engine): agents from the agentic traces,
the five variants of ``sched.ABLATION_VARIANTS`` on one emulated cluster, tables, plots, checks.

Used by ``experiments/run_engine.py``; every step is a function so tests and notebooks can call
it, and the building blocks (agents, setup, seeding, one variant's run, the compilation stage,
the link calibration) live in :mod:`dualpath_jax.studies.engine_runs`, re-exported here. The
compilation stage comes first and every stage's wall seconds, seconds of XLA compilation and
programs compiled are written to ``ablation.json`` (``stages``: ``stage``, ``wall_s``,
``compile_s``, ``programs`` in order); a timed stage that compiles is logged, and the stage ETA
counts only the timed runs, so it holds on a cold compilation cache too.

Link rates come from the host's speed (:func:`calibrate_links`, before every repeat), or from a
saved ``calibration.json`` (``calibrate.from_file``), or the config. Every variant runs
``repeats`` times, interleaved (repeat r runs every variant before repeat r + 1); figures are
computed per repeat (a speedup is Basic's JCT over the variant's in the same repeat) and reported
as the mean with a 95% Student-t interval over the repeats
(:func:`dualpath_jax.studies.seeds.estimate`, as the simulator's studies over seeds): ``name``,
``name_ci95`` (half width), ``name_lo``, ``name_hi``.
"""


from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tqdm

from dualpath_jax.engine import report
from dualpath_jax.metrics import writers
from dualpath_jax.sched import scheduler_name
from dualpath_jax.studies.engine_config import (CALIBRATION_FILE, CalibrateConfig, EngineAblationConfig,
                                                engine_ablation_config)
from dualpath_jax.studies.engine_runs import (CALIBRATED_FIELDS, CompileClock, Setup, calibrate_links,
                                              check_overrides, combine_calibrations, compile_runs,
                                              describe_time_model, expected_shapes, load_compute_ratio,
                                              pe_compute_s, ray_runtime, round_shapes, run_variant, seed_store,
                                              select_agents, start_times)
from dualpath_jax.studies.plots import plot_variant_bars
from dualpath_jax.studies.seeds import CI_SUFFIX, LEVEL, estimate, fmt

__all__ = ["check_config", "select_agents", "start_times", "Setup", "round_shapes", "expected_shapes", "seed_store",
           "run_variant", "calibrate_links", "load_compute_ratio", "run_ablation", "CompileClock", "compile_runs",
           "describe_time_model", "combine_calibrations", "put_estimate", "aggregate_rows", "ray_runtime",
           "run_dir", "check_overrides", "CALIBRATED_FIELDS", "pe_compute_s"]


check_config = engine_ablation_config
"""Check an engine-ablation config before anything runs; returns its typed form
(:func:`.engine_config.engine_ablation_config`)."""


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
                agents = select_agents(config.workload, recorded_arrivals=config.arrivals.mode == "recorded")
                setup = Setup(config, agents, log=log)
            n_req = sum(a.num_rounds for a in agents)
            if scheduler_name(setup.scheduler_cls):
                log(f"scheduler {scheduler_name(setup.scheduler_cls)}")
            log(f"{config.workload.label}: {len(agents)} agents, {n_req} requests; estimated hit KV "
                f"{sum(h for h, _ in setup.rounds)} tokens, appended {sum(a for _, a in setup.rounds)} tokens")
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
        if config.workload.warm_start:  # an interrupted or failed run leaves no seed store behind either
            shutil.rmtree(workdir / "seed_store", ignore_errors=True)


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
            read_s, pe_s = o["hit_tokens"] * bpt / rates[r][0], pe_compute_s(o)
            measured.append({"repeat": r, "hit_read_s_one_snic": read_s, "pe_compute_s_oracle": pe_s,
                             "load_over_compute": read_s / max(pe_s, 1e-12)})
    if measured:
        regime["hit_read_s_one_snic_measured"] = measured[0]["hit_read_s_one_snic"]
        regime["pe_compute_s_oracle"] = estimate([m["pe_compute_s_oracle"] for m in measured]).mean
        regime["load_over_compute_measured"] = estimate([m["load_over_compute"] for m in measured]).mean
        regime["per_repeat"] = measured
        regime["outlier_repeats"] = _regime_outliers(measured, log)
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
                               "flops_per_key": setup.time_model.flops_per_key,
                               "layers": setup.time_model.layers},
                "profile": [vars(s) for s in setup.samples], "prefill_tokens_per_s": setup.prefill_tokens_per_s,
                "scheduler": scheduler_name(setup.scheduler_cls), "stages": stages.times,
                **runtime_figures(config.runtime, results.values())}
    writers.write_json(workdir / "ablation.json", ablation)
    _plots(workdir, results, summaries, names, repeats)
    return {**_named_values(names, repeats, summaries, measured, regime, tokens, rates),
            **{k: v for k, v in runtime_figures(config.runtime, results.values()).items() if k != "runtime"}}


OUTLIER_FACTOR = 1.33
"""A repeat whose measured load/compute is this factor or more above or below the repeats' median is
flagged."""


def _regime_outliers(measured: list[dict], log) -> list[int]:
    """The repeats whose measured load/compute (hit KV read through one SNIC over Oracle's PE
    compute seconds) is :data:`OUTLIER_FACTOR` times the repeats' median or more, or that median
    over the factor or less, each logged as a warning: its host ran at another speed than the
    others' (other work on its cores), so its runs sit in another regime and widen every interval.
    Needs 3 repeats (none flagged below), each with a hit read."""
    ratios = [m["load_over_compute"] for m in measured]
    if len(measured) < 3 or min(ratios) <= 0:  # (no hit read: no regime to compare)
        return []
    median = float(np.median(ratios))
    out = []
    for m in measured:
        if max(m["load_over_compute"] / median, median / m["load_over_compute"]) >= OUTLIER_FACTOR:
            out.append(m["repeat"])
            log(f"warning: repeat {m['repeat']} ran in another regime: load/compute {m['load_over_compute']:.2f} "
                f"against the repeats' median {median:.2f} (Oracle's PE compute {m['pe_compute_s_oracle']:.2f} s): "
                f"the host's speed changed (other work on its cores?), so its speedups differ from the others' "
                f"and widen the intervals; rerun on an idle host or with more repeats")
    return out


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
    policy = f"; scheduler {scheduler_name(setup.scheduler_cls)}" if scheduler_name(setup.scheduler_cls) else ""
    title = f"Engine ablation ({shape} emulated, {setup.config.workload.label}; {what}{policy})"
    writers.write_table(workdir / "ablation", rows, title=title)
    md_rows = [{k: (fmt(v, row.get(k + CI_SUFFIX, math.nan)) if isinstance(v, float) else v)
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
    else:  # no Oracle run to measure it: the fitted time model's estimate, under its own name
        named["load_over_compute_estimated"] = regime["load_over_compute_estimated"]
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
