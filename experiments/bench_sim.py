"""Simulator speed: wall time and simulated events per second at the paper's scales.

    python experiments/bench_sim.py --workdir=workdir/bench_sim            # 2P4D + 48P96D (~10 min a build)
    python experiments/bench_sim.py --workdir=/tmp/bs --skip_large         # 2P4D only (~30 s a build)

Cases (DeepSeek-V3.2, MAL 64K, offline, DualPath variant), with targets for the default
(pure-Python) build on a 2-core CPU:
  * 2P4D with 2,048 agents: under 30 s;
  * 48P96D with 48K (49,152) agents: under 10 minutes.

Builds: a default install runs the Python sources, timed here alone. With the opt-in compiled
core installed (``DUALPATH_COMPILE=1 pip install -e .``; the first output line says which build
this process runs), the cases run with both builds: the Python sources first, in a subprocess
with ``DUALPATH_PURE_PYTHON=1`` (its files in ``workdir/python_build``), then the compiled build
here, side by side in the table.

Ends with ``wall_s_2p4d``, ``wall_s_48p96d`` and ``events_per_s`` (over all cases) of the Python
build; with the compiled build also ``wall_s_2p4d_compiled``, ``wall_s_48p96d_compiled``,
``events_per_s_compiled`` and ``speedup_compiled_<case>`` (Python wall time / compiled); plus
``python_ref_loop_s``: the mean time of a fixed pure-Python loop (20 M additions) run before and
after the cases, so that wall times taken on a shared machine whose single-thread speed drifts
can be compared. Also written to ``workdir/metrics.json``; the rows to ``workdir/cases.json`` and
``workdir/bench_sim.{md,csv}``.
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
from dualpath_jax.metrics import writers
from dualpath_jax.sim import SimConfig, Simulator, agents_from_trajectories, offline_starts, variant_config
from dualpath_jax.studies import cli
from dualpath_jax.workload import paper_dataset

_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_sim", "Output directory.")
_SKIP_LARGE = flags.DEFINE_bool("skip_large", False, "Skip the 48P96D / 48K-agent case.")
_VARIANT = flags.DEFINE_string("variant", "dualpath", "Ablation variant to time.")
_AGENTS_SMALL = flags.DEFINE_integer("agents_small", 2048, "Agents of the 2P4D case.")
_AGENTS_LARGE = flags.DEFINE_integer("agents_large", 48 * 1024, "Agents of the 48P96D case.")
_COMPARE = flags.DEFINE_bool("compare_builds", True, "With the compiled core installed, also time the Python "
                             "sources (a subprocess with DUALPATH_PURE_PYTHON=1) for the side-by-side figures.")

BUILD = "compiled" if native.COMPILED else "python"
COLUMNS = ["case", "build", "agents", "requests", "events", "setup_s", "run_s", "wall_s", "events_per_s", "jct_s"]


def _case(name: str, prefill_nodes: int, decode_nodes: int, num_agents: int) -> dict:
    t0 = time.perf_counter()
    ts = paper_dataset("64K", num_agents=num_agents, seed=0)
    agents = agents_from_trajectories(ts, offline_starts(ts))
    setup_s = time.perf_counter() - t0
    cfg = variant_config(SimConfig(prefill_nodes=prefill_nodes, decode_nodes=decode_nodes), _VARIANT.value)
    t1 = time.perf_counter()
    res = Simulator(cfg, agents).run()
    run_s = time.perf_counter() - t1
    row = dict(zip(COLUMNS, [name, BUILD, num_agents, int(ts.round_offsets[-1]), res.events, setup_s, run_s,
                             setup_s + run_s, res.events / run_s, res.end_s]))
    _print(row)
    return row


def _print(row: dict) -> None:
    print(f"{row['case']} [{row['build']}]: {row['agents']} agents, {row['requests']} requests, {row['events']} "
          f"events, wall {row['wall_s']:.1f} s ({row['events_per_s']:.0f} events/s), simulated JCT "
          f"{row['jct_s']:.0f} s", flush=True)


def _ref_loop_s() -> float:
    """Seconds of a fixed pure-Python loop: this machine's single-thread speed right now."""
    t0 = time.perf_counter()
    total = 0
    for i in range(20_000_000):
        total += i
    return time.perf_counter() - t0


def _python_build_rows(workdir: Path) -> list[dict]:
    """The same cases with the Python sources, in a subprocess (same flags)."""
    out = workdir / "python_build"
    cmd = [sys.executable, __file__, "--nocompare_builds", f"--workdir={out}", f"--variant={_VARIANT.value}",
           f"--agents_small={_AGENTS_SMALL.value}", f"--agents_large={_AGENTS_LARGE.value}",
           f"--skip_large={_SKIP_LARGE.value}"]
    subprocess.run(cmd, env=dict(os.environ, DUALPATH_PURE_PYTHON="1"), check=True, stdout=subprocess.DEVNULL)
    rows = json.loads((out / "cases.json").read_text())
    for row in rows:
        _print(row)
    return rows


def _named(rows: list[dict]) -> dict:
    """``wall_s_<case>`` and ``events_per_s`` of one build's rows, suffixed ``_compiled`` for that build."""
    suffix = "_compiled" if rows[0]["build"] == "compiled" else ""
    named = {f"wall_s_{r['case']}{suffix}": r["wall_s"] for r in rows}
    named[f"events_per_s{suffix}"] = sum(r["events"] for r in rows) / sum(r["run_s"] for r in rows)
    return named


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = cli.open_workdir(_WORKDIR.value)
    writers.write_env(workdir, device="simulator (virtual time)")
    print(f"core: {native.STATUS}", flush=True)
    ref_before = _ref_loop_s()
    rows = _python_build_rows(workdir) if native.COMPILED and _COMPARE.value else []
    rows.append(_case("2p4d", 2, 4, _AGENTS_SMALL.value))
    if not _SKIP_LARGE.value:
        rows.append(_case("48p96d", 48, 96, _AGENTS_LARGE.value))
    ref_after = _ref_loop_s()
    print(f"reference loop: {ref_before:.2f} s before, {ref_after:.2f} s after", flush=True)
    writers.write_json(workdir / "cases.json", rows)
    writers.write_table(workdir / "bench_sim", rows, columns=COLUMNS, title="Simulator wall time")
    named = {}
    for build in ("python", "compiled"):
        if any(r["build"] == build for r in rows):
            named.update(_named([r for r in rows if r["build"] == build]))
    for case in ("2p4d", "48p96d"):
        if f"wall_s_{case}" in named and f"wall_s_{case}_compiled" in named:
            named[f"speedup_compiled_{case}"] = named[f"wall_s_{case}"] / named[f"wall_s_{case}_compiled"]
    named["python_ref_loop_s"] = (ref_before + ref_after) / 2
    writers.write_named_values(workdir, named)
    print()
    print(writers.format_named_values(named))


if __name__ == "__main__":
    cli.run(main)
