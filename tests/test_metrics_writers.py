"""Run-artifact writers: config/env/metrics JSON, tables, plots, named values."""

import dataclasses
import json

import ml_collections
import numpy as np

from dualpath_jax.metrics import (append_metrics, format_named_values, markdown_table, plot_lines, read_metrics,
                                  to_jsonable, write_config, write_env, write_named_values, write_table)


@dataclasses.dataclass(frozen=True)
class Cfg:
    name: str = "x"
    rate_bytes_per_s: float = 1e9


def test_to_jsonable_is_strict():
    obj = {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "d": (1, np.int64(2)), "e": Cfg()}
    assert to_jsonable(obj) == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": [1, 2],
                                "e": {"name": "x", "rate_bytes_per_s": 1e9}}


def test_config_env_and_metrics_files(tmp_path):
    cfg = ml_collections.ConfigDict({"model": {"name": "tiny-gqa"}, "num_agents": 4})
    assert json.loads(write_config(tmp_path, cfg).read_text()) == {"model": {"name": "tiny-gqa"}, "num_agents": 4}
    write_config(tmp_path / "dc", Cfg())
    assert json.loads((tmp_path / "dc" / "config.json").read_text())["name"] == "x"
    env = json.loads(write_env(tmp_path, device="cpu").read_text())
    assert env["device"] == "cpu" and env["packages"]["numpy"] == np.__version__ and env["python"]
    append_metrics(tmp_path, {"step": 0, "jct_s": np.float64(12.5)})
    append_metrics(tmp_path, {"step": 1, "jct_s": float("inf")})
    assert read_metrics(tmp_path) == [{"jct_s": 12.5, "step": 0}, {"jct_s": None, "step": 1}]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    write_named_values(tmp_path, {"jct_s": 3.0})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"jct_s": 3.0}


def test_tables(tmp_path):
    rows = [{"system": "Basic", "jct_s": 12.3456, "agents": 512}, {"system": "a|b", "jct_s": float("nan")}]
    assert markdown_table(rows, float_format=".3g") == (
        "| system | jct_s | agents |\n|---|---|---|\n| Basic | 12.3 | 512 |\n| a\\|b | nan |  |\n")
    md, csv_path = write_table(tmp_path / "t", rows, title="JCT")
    assert md.read_text().startswith("# JCT\n\n| system |")
    assert csv_path.read_text() == "system,jct_s,agents\nBasic,12.3456,512\na|b,,\n"


def test_plot_and_named_values(tmp_path):
    path = plot_lines(tmp_path / "p" / "jct.png", [512, 1024], {"Basic": [10, 20], "DualPath": [6, 11]},
                      xlabel="agents", ylabel="JCT (s)", logx=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_named_values({"turns_mean": 157.0, "hit_rate": 0.98712345, "n": 3}) == \
        "turns_mean: 157\nhit_rate: 0.987123\nn: 3"
