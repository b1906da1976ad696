"""The benchmarks' outputs (experiments/bench_kernels.py, experiments/bench_transfer.py): the
``name: value`` lines that end the output are the figures of ``metrics.json``, the same names and
values, every measured figure with its ``_min``/``_max`` spread; a bad flag is one line naming it,
before any work."""

import json
import math
import pathlib
import re

import pytest
from script_runs import run_script

NAMED = re.compile(r"([A-Za-z0-9_]+): (\S+)")


def _run(script, *args, timeout=180):
    return run_script(script, *args, timeout=timeout)


def _named_tail(stdout: str) -> dict[str, str]:
    """The ``name: value`` lines that end ``stdout``, in order."""
    tail = []
    for line in reversed(stdout.rstrip().splitlines()):
        m = NAMED.fullmatch(line)
        if not m:
            break
        tail.append(m.groups())
    return dict(reversed(tail))


def _same(printed: str, written) -> bool:
    """A printed value means what metrics.json holds: the same number, bool, or nan for null."""
    if written is None:
        return printed in ("nan", "inf", "-inf")
    if isinstance(written, bool):
        return printed == str(written)
    if isinstance(written, (int, float)):
        return float(printed) == written
    return False


def _check_printed_is_written(stdout: str, workdir: pathlib.Path) -> tuple[dict, dict]:
    printed = _named_tail(stdout)
    written = json.loads((workdir / "metrics.json").read_text())
    assert printed, stdout[-2000:]
    for name, value in printed.items():
        assert name in written, f"{name} printed but not in metrics.json"
        assert _same(value, written[name]), f"{name}: printed {value}, written {written[name]!r}"
    return printed, written


def _check_spread(printed: dict, names) -> None:
    """Every figure of ``names`` is printed with ``_min <= median <= _max``."""
    for name in names:
        lo, mid, hi = (float(printed[name + s]) for s in ("_min", "", "_max"))
        assert lo <= mid <= hi, (name, lo, mid, hi)


def test_bench_kernels_prints_exactly_its_metrics_json_each_figure_with_its_spread(tmp_path):
    done = _run("bench_kernels.py", "--sizes=quick", "--problems=kv_write_b4_32", "--repeats=2",
                f"--workdir={tmp_path / 'k'}")
    assert done.returncode == 0, done.stderr[-2000:]
    printed, written = _check_printed_is_written(done.stdout, tmp_path / "k")
    assert set(printed) == set(written)  # everything written is printed
    figures = [f"kv_write_b4_32_{impl}_{kind}" for impl in ("reference", "pallas") for kind in ("ms", "gbps")]
    figures.append("kv_write_b4_32_pallas_speedup_vs_reference")
    _check_spread(printed, figures)
    assert set(printed) == {f + s for f in figures for s in ("", "_min", "_max")} | {"pallas_matches_reference"}
    assert printed["pallas_matches_reference"] == "1"


def test_bench_transfer_prints_exactly_its_headline_figures_each_with_its_spread(tmp_path):
    done = _run("bench_transfer.py", f"--workdir={tmp_path / 't'}", "--repeats=2", "--sizes=65536",
                "--blocks_per_pull=4", "--bytes_per_repeat=1048576", "--max_pulls=20")
    assert done.returncode == 0, done.stderr[-2000:]
    printed, written = _check_printed_is_written(done.stdout, tmp_path / "t")
    cases = ("layer_block", "64kib", "layer_blocks_x4")
    figures = ["transfer_server_over_memcpy", "pull_latency_us_layer_block"]
    figures += [f"{kind}_gb_per_s_{case}" for case in cases for kind in ("pull", "memcpy")]
    _check_spread(printed, figures)
    assert set(printed) == ({f + s for f in figures for s in ("", "_min", "_max")}
                            | {"cross_process_kv_bytes", "num_failed_pulls", "bytes_exact", "bench_wall_s"})
    assert printed["bytes_exact"] == "True" and printed["num_failed_pulls"] == "0"
    # the full-precision figures in base units stay in metrics.json, agreeing with the headline ones
    for case in cases:
        gbps = written[f"pull_bytes_per_s_{case}"] / 1e9
        assert math.isclose(gbps, written[f"pull_gb_per_s_{case}"], rel_tol=1e-3)
    latency_us = 1e6 * written["pull_latency_s_layer_block"]
    assert math.isclose(latency_us, written["pull_latency_us_layer_block"], rel_tol=1e-3)


@pytest.mark.parametrize("script, args, start", [
    ("bench_kernels.py", ["--repeats=0"], "ConfigError: repeats: must be >= 1 (got 0)"),
    ("bench_kernels.py", ["--seed=-1"], "ConfigError: seed: must be in 0..4294967294 (got -1)"),
    ("bench_kernels.py", ["--tune_problem=foo"],
     "ConfigError: tune_problem: 'foo' is not a prefill problem of --sizes=auto (allowed: prefill_192_32, "),
    ("bench_kernels.py", ["--sizes=quick", "--problems=decode_b4_256", "--tune_problem=prefill_192_32"],
     "ConfigError: tune_problem: 'prefill_192_32' is not a prefill problem of --sizes=quick among "
     "--problems=decode_b4_256"),
    ("bench_transfer.py", ["--model=foo"], "ConfigError: model: unknown preset 'foo'"),
    ("bench_transfer.py", ["--pull_timeout_s=0"], "ConfigError: pull_timeout_s: must be > 0 (got 0.0)"),
    ("bench_transfer.py", ["--max_num_parallel_copies=0"], "ConfigError: max_num_parallel_copies: must be > 0"),
])
def test_a_bad_flag_is_one_line_naming_it_before_any_work(tmp_path, script, args, start):
    done = _run(script, *args, f"--workdir={tmp_path / 'w'}", timeout=60)
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith(start), line
    assert not (tmp_path / "w").exists()  # stopped before opening the workdir
