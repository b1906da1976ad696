"""experiments/bench_datapath.py: every config field checked before the run starts (one
ConfigError naming it), headline ratios paired within a repeat and reported as mean ± 95% CI
with min/max, and the ``name: value`` lines it ends with are what metrics.json holds."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from config_files import get_config
from dualpath_jax.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "bench_datapath.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_bench_datapath", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only (its flags are defined when it runs)
    return module


# ---- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [None, "quick"])
def test_committed_configs_pass(bench, variant):
    bench.validate(get_config("bench_datapath", variant))


@pytest.mark.parametrize("field, value", [
    ("seed", -1),
    ("store.model", "nope"),
    ("store.kv_dtype", "zz"),
    ("store.num_blocks", 0),
    ("store.io_threads", 0),
    ("store.repeats", 0),
    ("store.repeats", 1),  # no interval from one repeat
    ("model.base", "nope"),
    ("model.n_layers", 0),
    ("model.d_model", 0),
    ("model.n_heads", 5),  # not divisible by n_kv_heads=2
    ("model.n_kv_heads", 0),
    ("model.head_dim", 15),  # odd: no RoPE
    ("model.d_ff", -4),
    ("batch_size", 0),
    ("cached_tokens", 0),
    ("cached_tokens", 100),  # not a multiple of the 64-token block
    ("append_tokens", 0),
    ("append_tokens", 200_000),  # prompt past the model's max_position
    ("depth", 0),
    ("depth", 17),  # more layers in flight than the quick model's 16
    ("repeats", 0),
    ("repeats", 1),
    ("passes", 0),
    ("kv_dtype", "zz"),
])
def test_each_bad_field_raises_a_config_error_naming_it(bench, field, value):
    cfg = get_config("bench_datapath", "quick")
    *parents, leaf = field.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError) as err:
        bench.validate(cfg)
    assert err.value.field == field, str(err.value)
    assert "\n" not in str(err.value)


def test_bad_field_on_the_command_line_is_one_line_and_opens_no_workdir(tmp_path):
    workdir = tmp_path / "w"
    done = subprocess.run([sys.executable, str(SCRIPT), "--config=configs/bench_datapath.py:quick",
                           f"--workdir={workdir}", "--config.cached_tokens=100"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode != 0
    assert out.splitlines() == [
        "ConfigError: cached_tokens: must be divisible by block_tokens (got cached_tokens=100, block_tokens=64)"]
    assert not workdir.exists()


# ---- paired ratios ---------------------------------------------------------------------------

def test_store_ratio_is_the_mean_of_per_repeat_ratios(bench):
    # cold: repeat 0 plain 2 s / store 1 s = 2, repeat 1 plain 2 s / store 4 s = 0.5
    # (a ratio of medians would be 2 / 2.5 = 0.8); warm: 1 in both repeats
    times = {("plain", "cold"): [2.0, 2.0], ("store", "cold"): [1.0, 4.0],
             ("plain", "warm"): [1.0, 2.0], ("store", "warm"): [1.0, 2.0]}
    named = bench.store_ratios(times)
    t1 = math.tan(math.pi * (0.975 - 0.5))  # Student t quantile, 1 degree of freedom (Cauchy)
    half = t1 * abs(2.0 - 0.5) / 2  # t * s / sqrt(2), s = |a - b| / sqrt(2)
    assert named["store_read_ratio"] == 1.25
    assert named["store_read_ratio_ci95"] == pytest.approx(half, rel=1e-5)  # 6 significant digits
    assert (named["store_read_ratio_min"], named["store_read_ratio_max"]) == (0.5, 2.0)
    assert named["store_read_ratio_warm"] == 1.0
    assert named["store_read_ratio_warm_ci95"] == 0.0
    assert (named["store_read_ratio_warm_min"], named["store_read_ratio_warm_max"]) == (1.0, 1.0)
    assert sorted(named) == sorted(f"{n}{s}" for n in ("store_read_ratio", "store_read_ratio_warm")
                                   for s in ("", "_ci95", "_min", "_max"))


def test_paired_ratios_need_the_same_repeats(bench):
    assert bench.paired_ratios([3.0, 1.0], [1.5, 4.0]) == [2.0, 0.25]
    with pytest.raises(ValueError, match="unpaired"):
        bench.paired_ratios([1.0, 2.0], [1.0])


def test_put_figure_rounds_to_what_is_printed(bench):
    named = {}
    bench.put_figure(named, "x", [1 / 3, 1 / 3, 1 / 3])
    assert named == {"x": 0.333333, "x_ci95": 0.0, "x_min": 0.333333, "x_max": 0.333333}


# ---- a whole run -------------------------------------------------------------------------------

@pytest.mark.slow
def test_quick_run_ends_with_the_metrics_json_lines(tmp_path):
    workdir = tmp_path / "w"
    done = subprocess.run([sys.executable, str(SCRIPT), "--config=configs/bench_datapath.py:quick",
                           f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    tail = done.stdout.rstrip().split("\n\n")[-1].splitlines()
    printed = dict(line.split(": ", 1) for line in tail)
    metrics = json.loads((workdir / "metrics.json").read_text())
    heads = ("store_read_ratio", "store_read_ratio_warm", "overlap_efficiency", "overlap_efficiency_depth1",
             "kv_device_peak_ratio")
    assert list(printed) == ["store_read_repeats", "repeats"] + [h + s for h in heads
                                                                 for s in ("", "_ci95", "_min", "_max")]
    for name, text in printed.items():
        assert text == json.dumps(metrics[name]), name  # the digits metrics.json holds
    for h in heads:
        assert metrics[h + "_min"] <= metrics[h] <= metrics[h + "_max"]
        assert metrics[h + "_ci95"] >= 0
