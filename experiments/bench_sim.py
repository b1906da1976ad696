"""Simulator speed: wall time and simulated events per second at the paper's scales.

    python experiments/bench_sim.py --workdir=workdir/bench_sim            # 2P4D + 48P96D
    python experiments/bench_sim.py --workdir=/tmp/bs --skip_large         # 2P4D only

Cases (DeepSeek-V3.2, MAL 64K, offline, DualPath variant):
  * 2P4D with 2,048 agents (target: under 30 s on a 2-core CPU);
  * 48P96D with 48K agents (target: under 10 minutes).
The simulator's event loop and the scheduler run compiled by mypyc when the install built them
(``setup.py``; the first output line says which). With the compiled core, the 2P4D case is run
again with the Python sources (``DUALPATH_PURE_PYTHON=1``, in a subprocess) for the side-by-side
``speedup_compiled_2p4d``.

Ends with ``wall_s_2p4d``, ``wall_s_48p96d`` and ``events_per_s`` (over all cases), also written
to ``workdir/metrics.json``, plus ``python_ref_loop_s``: the mean time of a fixed pure-Python loop
(20 M additions) run before and after the cases, so that wall times taken on a shared machine whose
single-thread speed drifts can be compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags, logging

from dualpath_jax import native
from dualpath_jax.metrics import writers
from dualpath_jax.sim import SimConfig, Simulator, agents_from_trajectories, variant_config
from dualpath_jax.sim.experiment import offline_starts, paper_workload

_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_sim", "Output directory.")
_SKIP_LARGE = flags.DEFINE_bool("skip_large", False, "Skip the 48P96D / 48K-agent case.")
_VARIANT = flags.DEFINE_string("variant", "dualpath", "Ablation variant to time.")
_AGENTS_SMALL = flags.DEFINE_integer("agents_small", 2048, "Agents of the 2P4D case.")
_AGENTS_LARGE = flags.DEFINE_integer("agents_large", 48 * 1024, "Agents of the 48P96D case.")
_COMPARE = flags.DEFINE_bool("compare_python", True, "With the compiled core, also time the 2P4D case with "
                             "the Python sources (a subprocess with DUALPATH_PURE_PYTHON=1).")


def _case(name: str, prefill_nodes: int, decode_nodes: int, num_agents: int) -> dict:
    t0 = time.perf_counter()
    ts = paper_workload("64K", num_agents, seed=0)
    agents = agents_from_trajectories(ts, offline_starts(ts))
    setup_s = time.perf_counter() - t0
    cfg = variant_config(SimConfig(prefill_nodes=prefill_nodes, decode_nodes=decode_nodes), _VARIANT.value)
    t1 = time.perf_counter()
    res = Simulator(cfg, agents).run()
    run_s = time.perf_counter() - t1
    out = {"case": name, "agents": num_agents, "requests": int(ts.round_offsets[-1]), "events": res.events,
           "setup_s": setup_s, "run_s": run_s, "wall_s": setup_s + run_s, "events_per_s": res.events / run_s,
           "jct_s": res.end_s}
    print(f"{name}: {num_agents} agents, {out['requests']} requests, {res.events} events, wall {out['wall_s']:.1f} s "
          f"({out['events_per_s']:.0f} events/s), simulated JCT {res.end_s:.0f} s", flush=True)
    return out


def _ref_loop_s() -> float:
    """Seconds of a fixed pure-Python loop: this machine's single-thread speed right now."""
    t0 = time.perf_counter()
    total = 0
    for i in range(20_000_000):
        total += i
    return time.perf_counter() - t0


def _python_core_2p4d_s(workdir: Path) -> float:
    """Wall seconds of the 2P4D case with the Python sources, in a subprocess (same flags)."""
    out = workdir / "python_core"
    cmd = [sys.executable, __file__, "--skip_large", "--nocompare_python", f"--workdir={out}",
           f"--variant={_VARIANT.value}", f"--agents_small={_AGENTS_SMALL.value}"]
    subprocess.run(cmd, env=dict(os.environ, DUALPATH_PURE_PYTHON="1"), check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())["wall_s_2p4d"]


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend-probe INFO lines out of the output
    workdir = Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    writers.write_env(workdir, device="simulator (virtual time)")
    print(f"core: {native.STATUS}", flush=True)
    ref_before = _ref_loop_s()
    rows = [_case("2p4d", 2, 4, _AGENTS_SMALL.value)]
    if not _SKIP_LARGE.value:
        rows.append(_case("48p96d", 48, 96, _AGENTS_LARGE.value))
    python_2p4d = _python_core_2p4d_s(workdir) if native.COMPILED and _COMPARE.value else None
    ref_after = _ref_loop_s()
    if python_2p4d is not None:
        print(f"2p4d with the Python sources: wall {python_2p4d:.1f} s", flush=True)
    print(f"reference loop: {ref_before:.2f} s before, {ref_after:.2f} s after", flush=True)
    writers.write_table(workdir / "bench_sim", rows, title="Simulator wall time")
    named = {"wall_s_2p4d": rows[0]["wall_s"]}
    if len(rows) > 1:
        named["wall_s_48p96d"] = rows[1]["wall_s"]
    named["events_per_s"] = sum(r["events"] for r in rows) / sum(r["run_s"] for r in rows)
    if python_2p4d is not None:
        named["wall_s_2p4d_python"] = python_2p4d
        named["speedup_compiled_2p4d"] = python_2p4d / rows[0]["wall_s"]
    named["python_ref_loop_s"] = (ref_before + ref_after) / 2
    writers.write_named_values(workdir, named)
    print()
    print(writers.format_named_values(named))


if __name__ == "__main__":
    app.run(main)
