"""experiments/bench_sim.py: every case's wall time as a ratio to the reference loop timed beside
it, per repeat, with 95% intervals; the ``name: value`` lines it ends with are metrics.json."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from dualpath_jax.studies.seeds import estimate

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "bench_sim.py"
TINY = ("--agents_small=8", "--agents_large=8", "--ref_loop_additions=100000")  # a run of about a second
# the compiled-build path without a compiled build: this process claims to be compiled, its
# subprocess (DUALPATH_PURE_PYTHON=1) runs the sources: the same code, timed side by side
AS_COMPILED = ("import runpy, sys; from dualpath_jax import native; native.COMPILED = True; "
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _run(*args, compiled=False):
    head = [sys.executable, "-c", AS_COMPILED] if compiled else [sys.executable]
    return subprocess.run([*head, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _named_lines(stdout):
    """The ``name: value`` lines after the output's last blank line."""
    tail = stdout.rstrip().split("\n\n")[-1].splitlines()
    return dict(line.split(": ", 1) for line in tail)


def _check_mean(metrics, name, values):
    e = estimate(values)
    six = lambda x: float(format(x, ".6g"))  # noqa: E731 (the figures are given to 6 significant digits)
    assert metrics[name] == six(e.mean)
    if len(values) >= 2:
        assert metrics[name + "_ci95"] == six(e.half)
    else:
        assert name + "_ci95" not in metrics


def _check_output(done, workdir):
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    lines = _named_lines(done.stdout)
    assert set(lines) == set(metrics)
    for name, text in lines.items():
        assert float(text) == metrics[name], name  # the same number, not a rounding of it
    return metrics, json.loads((workdir / "cases.json").read_text())


def test_each_case_is_a_ratio_to_the_loop_beside_it_with_its_interval(tmp_path):
    done = _run(*TINY, "--repeats=3", "--repeats_large=2", f"--workdir={tmp_path / 'w'}")
    metrics, rows = _check_output(done, tmp_path / "w")
    assert [(r["case"], r["repeat"]) for r in rows] == [
        ("2p4d", 0), ("48p96d", 0), ("2p4d", 1), ("48p96d", 1), ("2p4d", 2)]
    for r in rows:
        assert r["build"] == "python" and r["ref_loop_s"] > 0
        assert r["wall_over_ref_loop"] == pytest.approx(r["wall_s"] / r["ref_loop_s"], rel=1e-12)
    for case in ("2p4d", "48p96d"):
        mine = [r for r in rows if r["case"] == case]
        assert metrics[f"repeats_{case}"] == len(mine)
        _check_mean(metrics, f"wall_s_{case}", [r["wall_s"] for r in mine])
        _check_mean(metrics, f"wall_s_{case}_over_ref_loop", [r["wall_s"] / r["ref_loop_s"] for r in mine])
        _check_mean(metrics, f"events_per_s_{case}", [r["events_per_s"] for r in mine])
        assert len({(r["events"], r["requests"]) for r in mine}) == 1  # the same simulation every repeat
    # events_per_s: the largest case's; the loop: 1 + one per run, all in this process
    assert metrics["events_per_s"] == metrics["events_per_s_48p96d"]
    assert metrics["events_per_s_ci95"] == metrics["events_per_s_48p96d_ci95"]
    assert "python_ref_loop_s_ci95" in metrics and not any("compiled" in k for k in metrics)
    assert "| 2p4d | python | 3 |" in (tmp_path / "w" / "bench_sim_mean.md").read_text()


def test_one_repeat_gives_no_interval_and_the_compiled_path_pairs_builds_per_repeat(tmp_path):
    done = _run(*TINY, "--skip_large", "--repeats=2", f"--workdir={tmp_path / 'c'}", compiled=True)
    metrics, rows = _check_output(done, tmp_path / "c")
    # repeat 0: the Python build's subprocess first, repeat 1: the compiled build first
    assert [(r["build"], r["repeat"]) for r in rows] == [
        ("python", 0), ("compiled", 0), ("compiled", 1), ("python", 1)]
    assert (tmp_path / "c" / "python_build" / "r1" / "cases.json").is_file()
    py = {r["repeat"]: r for r in rows if r["build"] == "python"}
    co = {r["repeat"]: r for r in rows if r["build"] == "compiled"}
    _check_mean(metrics, "speedup_compiled_2p4d", [py[k]["wall_s"] / co[k]["wall_s"] for k in (0, 1)])
    _check_mean(metrics, "wall_s_2p4d_compiled_over_ref_loop", [co[k]["wall_over_ref_loop"] for k in (0, 1)])
    for name in ("wall_s_2p4d", "wall_s_2p4d_over_ref_loop", "events_per_s", "events_per_s_compiled",
                 "wall_s_2p4d_compiled", "speedup_compiled_2p4d"):
        assert math.isfinite(metrics[name + "_ci95"]), name
    done = _run(*TINY, "--skip_large", "--repeats=1", f"--workdir={tmp_path / 'one'}")
    metrics, rows = _check_output(done, tmp_path / "one")
    assert len(rows) == 1 and metrics["repeats_2p4d"] == 1
    assert not any(k.endswith("_ci95") and k != "python_ref_loop_s_ci95" for k in metrics)


@pytest.mark.parametrize("flag", ["--repeats=0", "--repeats_large=-1", "--agents_small=0", "--ref_loop_additions=0"])
def test_a_flag_out_of_range_is_one_line_naming_it(tmp_path, flag):
    done = _run(flag, f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1
    name, value = flag[2:].split("=")
    assert done.stderr.strip() == f"ConfigError: {name}: must be >= 1 (got {value})"
    assert not (tmp_path / "w").exists()
