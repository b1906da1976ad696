"""Simulator speed: wall time and simulated events per second at the paper's scales, as a ratio to
a fixed pure-Python loop timed beside every run.

    python experiments/bench_sim.py --workdir=workdir/bench_sim            # 2P4D x3 + 48P96D x1 (10-20 min a build)
    python experiments/bench_sim.py --workdir=/tmp/bs --skip_large         # 2P4D only, 3 repeats (~1 min a build)
    python experiments/bench_sim.py --workdir=W --repeats_large=3          # an interval for 48P96D too (30-60 min)
    python experiments/bench_sim.py --workdir=/tmp/bs --skip_large --agents_small=128 --repeats=2   # seconds

Cases (DeepSeek-V3.2, MAL 64K, offline, DualPath variant). ``--repeats`` (default 3) runs the 2P4D
case that many times and ``--repeats_large`` (default 1; a run takes 10-20 minutes) the 48P96D
one, one repeat after another. Every run of a case is timed between two runs of a fixed pure-Python
loop (20 M additions, ``--ref_loop_additions``), and its wall time is also given in units of that
loop's time: ``wall_s_<case>_over_ref_loop`` = the run's wall seconds / the mean of the loop's
seconds just before and just after it, paired within the repeat. The loop measures this host's
single-thread Python speed at that moment (on one shared 2-core machine it has taken from 0.52 s to
1.3 s), so the ratio largely cancels the machine, its clock and the load of other processes, which
the absolute time carries: it is the figure to compare between runs and machines (not wholly
machine-free: the simulator also waits on memory, which the loop hardly touches, and a host busy
enough to share the core still shows in the interval). The absolute ``wall_s_<case>`` is what a
user of this machine waits.

Targets for the default (pure-Python) build, each as the ratio and as the absolute on a 2-core
CPU whose loop takes 0.53 s (the ratios are the absolute targets over that loop):
  * 2P4D with 2,048 agents: ``wall_s_2p4d_over_ref_loop`` under 57 loops (``wall_s_2p4d`` under 30 s);
  * 48P96D with 48K (49,152) agents: ``wall_s_48p96d_over_ref_loop`` under 1,130 loops (under 10 minutes).

Builds: a default install runs the Python sources, timed here alone. With the opt-in compiled
core installed (``DUALPATH_COMPILE=1 pip install -e .``; the first output line says which build
this process runs), every repeat runs the cases with both builds, side by side: the Python sources
in a subprocess with ``DUALPATH_PURE_PYTHON=1`` (its files in ``workdir/python_build/r<repeat>``)
and the compiled build here, alternating which goes first from one repeat to the next.

Ends with ``name: value`` lines, each figure the mean over its case's repeats followed by
``<name>_ci95``, the half width of its 95% Student-t interval (from two repeats on; a case run once
has no ``_ci95``), for the Python build: ``wall_s_<case>`` (seconds), ``wall_s_<case>_over_ref_loop``
(loop times), ``events_per_s_<case>`` (simulated events per second of the simulation, its setup left
out) and ``events_per_s`` (that of the largest case run: 48P96D, or 2P4D with ``--skip_large``);
with the compiled build also the same figures suffixed ``_compiled`` (``wall_s_<case>_compiled``,
``wall_s_<case>_compiled_over_ref_loop``, ``events_per_s_<case>_compiled``,
``events_per_s_compiled``) and ``speedup_compiled_<case>`` (the Python build's wall seconds over
the compiled build's, paired within each repeat); then ``python_ref_loop_s`` (seconds a loop, over
every loop this process ran) and ``repeats_<case>``. The same names and values are written to
``workdir/metrics.json``; the per-repeat rows (``repeat``, ``ref_loop_s``, ``wall_over_ref_loop``
beside each run's figures) to ``workdir/cases.json`` and ``workdir/bench_sim.{md,csv}``, and their
means with intervals per case and build to ``workdir/bench_sim_mean.{md,csv}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import flags, logging

from dualpath_jax import native
from dualpath_jax.config import ConfigError
from dualpath_jax.metrics import writers
from dualpath_jax.sim import SimConfig, Simulator, agents_from_trajectories, offline_starts, variant_config
from dualpath_jax.studies import cli, seeds
from dualpath_jax.workload import paper_dataset

_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_sim", "Output directory.")
_SKIP_LARGE = flags.DEFINE_bool("skip_large", False, "Skip the 48P96D / 48K-agent case.")
_VARIANT = flags.DEFINE_string("variant", "dualpath", "Ablation variant to time.")
_AGENTS_SMALL = flags.DEFINE_integer("agents_small", 2048, "Agents of the 2P4D case (>= 1).")
_AGENTS_LARGE = flags.DEFINE_integer("agents_large", 48 * 1024, "Agents of the 48P96D case (>= 1).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs of the 2P4D case (>= 1), each between two runs of the reference "
                                "loop; two or more give the figures a 95% interval.")
_REPEATS_LARGE = flags.DEFINE_integer("repeats_large", 1, "Runs of the 48P96D case (>= 1; 10-20 minutes each on "
                                      "a 2-core CPU), each between two runs of the reference loop.")
_REF_LOOP = flags.DEFINE_integer("ref_loop_additions", 20_000_000, "Additions of the pure-Python reference loop "
                                 "(>= 1): ratios to it compare only between runs with the same value.")
_COMPARE = flags.DEFINE_bool("compare_builds", True, "With the compiled core installed, also time the Python "
                             "sources (a subprocess with DUALPATH_PURE_PYTHON=1) for the side-by-side figures.")

BUILD = "compiled" if native.COMPILED else "python"
CASES = {"2p4d": (2, 4), "48p96d": (48, 96)}
"""Case name -> (prefill nodes, decode nodes)."""
COLUMNS = ["case", "build", "repeat", "agents", "requests", "events", "setup_s", "run_s", "wall_s", "ref_loop_s",
           "wall_over_ref_loop", "events_per_s", "jct_s"]
_TIMED = ("setup_s", "run_s", "wall_s", "ref_loop_s", "wall_over_ref_loop", "events_per_s")
"""The columns that vary from one repeat to the next (the others are the same every repeat)."""


def _check_flags() -> None:
    """Raises ConfigError naming the first flag out of range."""
    for flag in (_REPEATS, _REPEATS_LARGE, _AGENTS_SMALL, _AGENTS_LARGE, _REF_LOOP):
        if flag.value < 1:
            raise ConfigError(flag.name, f"must be >= 1 (got {flag.value})")


def _plan() -> dict[str, int]:
    """Case name -> its repeats, in the order the cases run within a repeat."""
    plan = {"2p4d": _REPEATS.value}
    if not _SKIP_LARGE.value:
        plan["48p96d"] = _REPEATS_LARGE.value
    return plan


def _agents(case: str) -> int:
    return _AGENTS_SMALL.value if case == "2p4d" else _AGENTS_LARGE.value


def _case(name: str, repeat: int) -> dict:
    """One timed run of case ``name``: its row of ``COLUMNS`` but the reference loop's two (seconds,
    events, events per second of the simulation and its simulated JCT in seconds)."""
    prefill_nodes, decode_nodes = CASES[name]
    num_agents = _agents(name)
    t0 = time.perf_counter()
    ts = paper_dataset("64K", num_agents=num_agents, seed=0)
    agents = agents_from_trajectories(ts, offline_starts(ts))
    setup_s = time.perf_counter() - t0
    cfg = variant_config(SimConfig(prefill_nodes=prefill_nodes, decode_nodes=decode_nodes), _VARIANT.value)
    t1 = time.perf_counter()
    res = Simulator(cfg, agents).run()
    run_s = time.perf_counter() - t1
    return {"case": name, "build": BUILD, "repeat": repeat, "agents": num_agents,
            "requests": int(ts.round_offsets[-1]), "events": res.events, "setup_s": setup_s, "run_s": run_s,
            "wall_s": setup_s + run_s, "events_per_s": res.events / run_s, "jct_s": res.end_s}


def _print(row: dict) -> None:
    print(f"{row['case']} [{row['build']}] repeat {row['repeat']}: {row['agents']} agents, {row['requests']} "
          f"requests, {row['events']} events, wall {row['wall_s']:.1f} s = {row['wall_over_ref_loop']:.1f} "
          f"reference loops of {row['ref_loop_s']:.2f} s ({row['events_per_s']:.0f} events/s), simulated JCT "
          f"{row['jct_s']:.0f} s", flush=True)


def _ref_loop_s() -> float:
    """Seconds of a fixed pure-Python loop (``--ref_loop_additions`` additions): this machine's
    single-thread speed right now."""
    t0 = time.perf_counter()
    total = 0
    for i in range(_REF_LOOP.value):
        total += i
    return time.perf_counter() - t0


def _timed_block(repeat: int, cases: list[str], loops: list[float]) -> list[dict]:
    """One run of each of ``cases`` in this process, each between two reference loops (the loop
    after one case is the loop before the next); appends the loops' seconds to ``loops``. Each row
    gets ``ref_loop_s`` (the mean of its two loops) and ``wall_over_ref_loop`` (wall_s over it)."""
    rows = []
    before = _ref_loop_s()
    loops.append(before)
    for name in cases:
        row = _case(name, repeat)
        after = _ref_loop_s()
        loops.append(after)
        row["ref_loop_s"] = (before + after) / 2
        row["wall_over_ref_loop"] = row["wall_s"] / row["ref_loop_s"]
        rows.append({c: row[c] for c in COLUMNS})
        _print(rows[-1])
        before = after
    return rows


def _python_build_block(workdir: Path, repeat: int, cases: list[str]) -> list[dict]:
    """One run of each of ``cases`` with the Python sources, in a subprocess (same flags, one repeat)."""
    out = workdir / "python_build" / f"r{repeat}"
    cmd = [sys.executable, __file__, "--nocompare_builds", f"--workdir={out}", f"--variant={_VARIANT.value}",
           f"--agents_small={_AGENTS_SMALL.value}", f"--agents_large={_AGENTS_LARGE.value}",
           f"--skip_large={'48p96d' not in cases}", "--repeats=1", "--repeats_large=1",
           f"--ref_loop_additions={_REF_LOOP.value}"]
    subprocess.run(cmd, env=dict(os.environ, DUALPATH_PURE_PYTHON="1"), check=True, stdout=subprocess.DEVNULL)
    rows = json.loads((out / "cases.json").read_text())
    for row in rows:
        row["repeat"] = repeat
        _print(row)
    return rows


def _put(named: dict, name: str, values: list[float]) -> None:
    """``name``: the mean of ``values``; ``name_ci95``: its 95% half width, from two values on."""
    e = seeds.estimate(values)
    named[name] = writers.significant(e.mean)  # as printed: the lines and metrics.json hold the same numbers
    if e.n >= 2:
        named[name + seeds.CI_SUFFIX] = writers.significant(e.half)


def _summary(rows: list[dict], loops: list[float], plan: dict[str, int]) -> dict:
    """The headline figures of the per-repeat ``rows`` (see the module docstring)."""
    named: dict = {}
    by = lambda build, case: [r for r in rows if r["build"] == build and r["case"] == case]  # noqa: E731
    builds = [b for b in ("python", "compiled") if any(r["build"] == b for r in rows)]
    for build in builds:
        sfx = "_compiled" if build == "compiled" else ""
        for case in plan:
            mine = by(build, case)
            _put(named, f"wall_s_{case}{sfx}", [r["wall_s"] for r in mine])
            _put(named, f"wall_s_{case}{sfx}_over_ref_loop", [r["wall_over_ref_loop"] for r in mine])
            _put(named, f"events_per_s_{case}{sfx}", [r["events_per_s"] for r in mine])
        _put(named, f"events_per_s{sfx}", [r["events_per_s"] for r in by(build, list(plan)[-1])])
    if len(builds) == 2:
        for case in plan:
            compiled = {r["repeat"]: r["wall_s"] for r in by("compiled", case)}
            _put(named, f"speedup_compiled_{case}",
                 [r["wall_s"] / compiled[r["repeat"]] for r in by("python", case) if r["repeat"] in compiled])
    _put(named, "python_ref_loop_s", loops)
    for case, n in plan.items():
        named[f"repeats_{case}"] = n
    return named


def _write_means(stem: Path, rows: list[dict]) -> None:
    """``<stem>.{md,csv}``: per case and build, the repeats and the mean of each timed column of
    ``rows`` with its 95% half width (``<column>_ci95`` in the CSV, ``mean ± half`` in the Markdown)."""
    out, shown = [], []
    for key in dict.fromkeys((r["case"], r["build"]) for r in rows):
        mine = [r for r in rows if (r["case"], r["build"]) == key]
        row = {"case": key[0], "build": key[1], "repeats": len(mine),
               **{c: mine[0][c] for c in ("agents", "requests", "events", "jct_s")}}
        cells = dict(row)
        for c in _TIMED:
            e = seeds.estimate(r[c] for r in mine)
            row[c], row[c + seeds.CI_SUFFIX] = e.mean, e.half
            cells[c] = seeds.fmt(e.mean, e.half)
        out.append(row)
        shown.append(cells)
    writers.write_table(stem, out)
    stem.with_name(stem.name + ".md").write_text(
        "# Simulator wall time (mean ± 95% CI over each case's repeats)\n\n" + writers.markdown_table(shown))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    _check_flags()
    plan = _plan()
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_env(workdir, device="simulator (virtual time)")
    print(f"core: {native.STATUS}", flush=True)
    compare = native.COMPILED and _COMPARE.value
    rows: list[dict] = []
    loops: list[float] = []  # seconds of every reference loop run in this process
    for r in range(max(plan.values())):
        cases = [c for c, n in plan.items() if r < n]
        blocks = ("python", "here") if r % 2 == 0 else ("here", "python")
        for block in blocks if compare else ("here",):
            rows += _python_build_block(workdir, r, cases) if block == "python" else _timed_block(r, cases, loops)
    print(f"reference loop: {len(loops)} runs, {min(loops):.2f}-{max(loops):.2f} s", flush=True)
    writers.write_json(workdir / "cases.json", rows)
    writers.write_table(workdir / "bench_sim", rows, columns=COLUMNS, title="Simulator wall time, per repeat")
    _write_means(workdir / "bench_sim_mean", rows)
    named = _summary(rows, loops, plan)
    writers.write_named_values(workdir, named)
    print()
    print(writers.format_named_values(named))


if __name__ == "__main__":
    cli.run(main)
