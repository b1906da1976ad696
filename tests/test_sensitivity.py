"""The sensitivity study (dualpath_jax.studies.sensitivity, experiments/sensitivity.py): perturbation
arithmetic, that each perturbed quantity reaches the simulator, the tornado order, and end-to-end runs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.sim.adapters import agents_from_trajectories
from dualpath_jax.sim.cluster import Simulator
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.runs import offline_starts
from dualpath_jax.studies import from_config_dict, run_study
from dualpath_jax.studies import sensitivity as sens
from dualpath_jax.studies.common import WorkloadSpec

from config_files import get_config

ROOT = Path(__file__).resolve().parents[1]
H800_FP8 = 1979e12  # H800 SXM datasheet, dense FP8 TFLOP/s
H800_BF16 = 989.5e12  # H800 SXM datasheet, dense BF16
DS32_KV_BYTES = 61 * (656 + 132)  # DeepSeek-V3.2: 61 layers x (656 B FP8 MLA + 132 B indexer keys), PAPER.md 8.2


def _load_config(arg=None):
    return get_config("sensitivity", arg)


# ---- perturbation arithmetic ----------------------------------------------------------------------
def test_values_factors_and_clipping():
    sim = SimConfig()  # DeepSeek-V3.2 on H800s
    q = sens.QUANTITIES
    assert q["eff_memory"].scaled(sim, 0.75) == pytest.approx(0.675)
    assert q["eff_memory"].scaled(sim, 1.25) == 1.0  # 1.125 clipped to the share's bound
    assert q["hardware.cnic_kv_share"].scaled(sim, 1.25) == 1.0
    assert q["hardware.hbm_usable_fraction"].scaled(sim, 1.25) == 1.0
    low, high = q["basic_max_batch_tokens"].scaled(sim, 0.75), q["basic_max_batch_tokens"].scaled(sim, 1.25)
    assert (low, high) == (12288, 20480) and isinstance(low, int) and isinstance(high, int)
    assert q["hardware.hbm_bytes"].scaled(sim, 0.75) == pytest.approx(60e9)
    assert q["hardware.hbm_bytes_per_s"].scaled(sim, 1.25) == pytest.approx(1.25 * 3.35e12)
    # None (catalog) and inf defaults get finite bases
    assert sim.hardware.peak_flops is None
    assert q["hardware.peak_flops"].base(sim) == pytest.approx(H800_FP8)
    assert q["hardware.peak_flops"].scaled(sim, 0.75) == pytest.approx(0.75 * H800_FP8)
    assert q["hardware.storage_bytes_per_s"].base(sim) == pytest.approx(50e9)  # one 400 Gbps SNIC per node
    assert q["prefill_layer_overhead_s"].scaled(sim, 1.25) == pytest.approx(0.625e-3)
    # the factors applied, as the tables show them
    vals = sens._values(q["eff_memory"], [from_config_dict(_load_config("tiny").ablation)], 0.25)
    assert vals["low_factor"] == 0.75 and vals["high_factor"] == pytest.approx(1 / 0.9, abs=1e-6)


def test_default_quantities_cover_the_brief():
    names = set(sens.DEFAULT_QUANTITIES)
    assert {"hardware.hbm_bytes", "hardware.hbm_bytes_per_s", "hardware.peak_flops", "attention_efficiency",
            "eff_memory", "prefill_layer_overhead_s", "fetch_period_s", "alpha_s", "beta_s",
            "hardware.cnic_kv_share", "activation_reserve_bytes", "basic_max_batch_tokens",
            "hardware.hbm_usable_fraction"} <= names
    for n in sens.DEFAULT_QUANTITIES:
        assert "8.6" in sens.QUANTITIES[n].why
    assert "de_join_s" in sens.LEFT_OUT and "layerwise_depth" in sens.LEFT_OUT


def _sim(cfg: SimConfig) -> Simulator:
    ts = WorkloadSpec(mal="32K", num_agents=2, token_divisor=8).build()
    return Simulator(cfg, agents_from_trajectories(ts, offline_starts(ts)))


# quantity -> (factor, what the simulator holds as a function of (perturbed, base) Simulators, expected)
_PROBES = {
    "hardware.hbm_bytes": (1.25, lambda p, b: p.pe_free_hbm - b.pe_free_hbm, 20e9 * 0.9),
    "hardware.hbm_usable_fraction": (1.25, lambda p, b: p.pe_free_hbm - b.pe_free_hbm, 80e9 * (1.0 - 0.9)),
    "activation_reserve_bytes": (0.75, lambda p, b: p.pe_free_hbm - b.pe_free_hbm, 1e9),
    "hardware.hbm_bytes_per_s": (1.25, lambda p, b: (p.de_model.s_per_context_token - p.de_model.s_per_key)
                                 / (b.de_model.s_per_context_token - b.de_model.s_per_key), 1 / 1.25),
    "eff_memory": (0.75, lambda p, b: (p.de_model.s_per_context_token - p.de_model.s_per_key)
                   / (b.de_model.s_per_context_token - b.de_model.s_per_key), 1 / 0.75),
    "hardware.peak_flops": (0.75, lambda p, b: (p.pe_model.s_per_token / b.pe_model.s_per_token,
                                                p.pe_model.s_per_key / b.pe_model.s_per_key), (1 / 0.75, 1 / 0.75)),
    "attention_efficiency": (0.75, lambda p, b: p.pe_model.s_per_key / b.pe_model.s_per_key, 1 / 0.75),
    "prefill_layer_overhead_s": (0.75, lambda p, b: p.pe_model.prefill_overhead_s, 61 * 0.375e-3),
    "fetch_period_s": (1.25, lambda p, b: p.driver.fetch_period_s, 0.025),
    "alpha_s": (0.75, lambda p, b: p.alpha_tokens, 2.25 * 50e9 / DS32_KV_BYTES),
    "beta_s": (1.25, lambda p, b: p.beta_tokens / b.beta_tokens, 1.25),
    "hardware.cnic_kv_share": (1.25, lambda p, b: p.cnic_in[0].rate, 50e9),  # 0.9 -> 1.0 of 400 Gbps
    "basic_max_batch_tokens": (0.75, lambda p, b: p.cfg.basic_max_batch_tokens, 12288),
    "hardware.storage_bytes_per_s": (0.75, lambda p, b: p.snic_r[0].rate, 37.5e9),
}


def test_every_default_quantity_has_a_probe():
    assert set(sens.DEFAULT_QUANTITIES) <= set(_PROBES)


@pytest.mark.parametrize("name", sorted(_PROBES))
def test_perturbed_simulator_holds_the_scaled_value(name):
    factor, probe, expected = _PROBES[name]
    base_cfg = SimConfig()
    cfg = sens.perturb_sim(base_cfg, sens.QUANTITIES[name], factor)
    assert cfg != base_cfg
    assert probe(_sim(cfg), _sim(base_cfg)) == pytest.approx(expected, rel=1e-9)


def test_perturb_study_scales_each_row_from_its_own_base():
    config = _load_config().fig7
    config.row_order = ("ds660b", "qwen32b")
    study = from_config_dict(config)
    q = sens.QUANTITIES["hardware.peak_flops"]
    out = sens.perturb_study(study, q, 0.75)
    ds, qwen = out.rows
    assert ds.sim.hardware.peak_flops == pytest.approx(0.75 * H800_FP8)  # FP8 weights
    assert qwen.sim.hardware.peak_flops == pytest.approx(0.75 * H800_FP8)  # this row sets FP8 weights too
    assert out.rows[0].sim.model == "deepseek-v3.2" and out.num_agents == study.num_agents
    bf16 = sens.perturb_sim(SimConfig(model="qwen2.5-32b"), q, 1.25)  # the model's own BF16 weights
    assert bf16.hardware.peak_flops == pytest.approx(1.25 * H800_BF16)


def test_plan_cases():
    typed = sens.sensitivity_config(_load_config("tiny"))
    cases = sens.plan_cases(typed)
    assert [c.label for c in cases] == ["base", "eff_memory_low", "eff_memory_high", "fetch_period_s_low",
                                        "fetch_period_s_high"]
    assert cases[0].studies == typed.studies
    high = cases[2]
    assert high.factor == 1.25 and high.studies[0].sim.eff_memory == 1.0
    assert high.studies[1].rows[0].sim.eff_memory == 1.0 and high.studies[2].rows[0].sim.eff_memory == 1.0
    assert cases[3].studies[0].sim.fetch_period_s == pytest.approx(0.015)
    assert len({c.studies for c in cases}) == 5
    names = [h.name for h in sens.headlines(typed.studies)]
    assert names == ["ablation_speedup_dpl_vs_basic", "ablation_speedup_dualpath_vs_basic",
                     "fig7_speedup_dualpath_vs_basic", "online_aps_gain_dualpath_vs_basic"]


# ---- the figures and their order --------------------------------------------------------------------
def test_relative_changes():
    r = sens.relative_changes(2.0, 1.5, 2.2)
    assert r["rel_low"] == pytest.approx(-0.25) and r["rel_high"] == pytest.approx(0.1)
    assert r["swing"] == pytest.approx(0.25)
    r = sens.relative_changes(2.0, float("nan"), 1.0)  # a failed side is left out of the swing
    assert math.isnan(r["rel_low"]) and r["swing"] == pytest.approx(0.5)
    assert math.isnan(sens.relative_changes(2.0, float("nan"), float("nan"))["swing"])
    assert math.isnan(sens.relative_changes(float("nan"), 1.0, 1.0)["swing"])


def test_tornado_order():
    rows = [{"quantity": "c", "swing": 0.1}, {"quantity": "d", "swing": float("nan")},
            {"quantity": "b", "swing": 0.3}, {"quantity": "a", "swing": 0.3}, {"quantity": "e", "swing": 0.0}]
    assert [r["quantity"] for r in sens.tornado_order(rows)] == ["a", "b", "c", "e", "d"]


# ---- config errors ------------------------------------------------------------------------------------
def test_config_errors_name_the_field():
    config = _load_config("tiny")
    typed = sens.sensitivity_config(config)
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(typed, quantities=("eff_memroy",))
    assert e.value.field == "quantities"
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(typed, change=1.0)
    assert e.value.field == "change"
    bad = _load_config("tiny")
    bad.online.search.rel_tol = -1.0
    with pytest.raises(ConfigError) as e:
        sens.sensitivity_config(bad)
    assert e.value.field == "online.search.rel_tol"
    bad = _load_config("tiny")
    bad.ablation.variants = ("basic", "dpl")
    with pytest.raises(ConfigError) as e:
        sens.sensitivity_config(bad)
    assert e.value.field == "ablation.variants"


# ---- end to end -----------------------------------------------------------------------------------------
def _tiny_ablation():
    config = _load_config("tiny").ablation
    config.variants = ("basic", "dualpath")
    return from_config_dict(config)


def test_run_sensitivity_end_to_end(tmp_path):
    abl = _tiny_ablation()
    config = sens.SensitivityConfig(quantities=("eff_memory", "hardware.hbm_bytes"), studies=(abl,))
    named = sens.run_sensitivity(config, tmp_path / "w", log=lambda s: None)
    out = tmp_path / "w"
    for f in ("sensitivity.md", "sensitivity.csv", "sensitivity.json",
              "tornado_ablation_speedup_dualpath_vs_basic.png", "runs/base/ablation/ablation.json"):
        assert (out / f).is_file(), f
    rows = list(csv.DictReader((out / "sensitivity.csv").open()))
    head = "ablation_speedup_dualpath_vs_basic"
    assert [(r["headline"], r["quantity"]) for r in rows] == [(head, "eff_memory"), (head, "hardware.hbm_bytes")]
    # each case ran its perturbed config: the same figures as the study run alone on it
    direct = {side: run_study(sens.perturb_study(abl, sens.QUANTITIES["eff_memory"], f), tmp_path / side,
                              log=lambda s: None)["speedup_dualpath_vs_basic"]
              for side, f in (("low", 0.75), ("high", 1.25))}
    base = run_study(abl, tmp_path / "base", log=lambda s: None)["speedup_dualpath_vs_basic"]
    mem = rows[0]
    assert float(mem["value_low"]) == direct["low"] and float(mem["value_high"]) == direct["high"]
    assert float(mem["value_base"]) == base == named["ablation_speedup_dualpath_vs_basic"]
    assert float(mem["rel_low"]) == pytest.approx(direct["low"] / base - 1)
    # 60 GB of HBM cannot hold DeepSeek-V3.2's weights with EP over 16 GPUs (58.8 GB/GPU) plus the 4 GB reserve
    hbm = rows[1]
    assert hbm["value_low"] in ("", "nan") and "hardware.hbm_bytes" in hbm["note_low"]
    assert float(hbm["high_value"]) == pytest.approx(100e9)
    assert named["failed_cases"] == 1 and named["cases"] == 5
    swings = {r["quantity"]: float(r["swing"]) for r in rows}
    assert named["max_swing_ablation_speedup_dualpath_vs_basic"] == pytest.approx(max(swings.values()))
    data = json.loads((out / "sensitivity.json").read_text())
    assert [c["label"] for c in data["cases"]][0] == "base" and "de_join_s" in data["left_out"]


def test_a_failing_base_case_raises(tmp_path):
    abl = _tiny_ablation()
    bad = dataclasses.replace(abl, sim=abl.sim.replace(activation_reserve_bytes=20e9))  # no PE HBM left for KV
    config = sens.SensitivityConfig(quantities=("alpha_s",), studies=(bad,))
    with pytest.raises(sens.RunFailed, match="ConfigError"):
        sens.run_sensitivity(config, tmp_path / "w", log=lambda s: None)


@pytest.mark.slow
def test_script_tiny(tmp_path):
    env = dict(os.environ, DUALPATH_DATA_DIR=os.environ.get("DUALPATH_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "sensitivity.py"),
                           "--config=configs/sensitivity.py:tiny", f"--workdir={tmp_path / 'w'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines()[-20:] if ": " in line)
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    for h in ("ablation_speedup_dpl_vs_basic", "ablation_speedup_dualpath_vs_basic", "fig7_speedup_dualpath_vs_basic",
              "online_aps_gain_dualpath_vs_basic"):
        assert f"max_swing_{h}" in lines and metrics[f"max_swing_quantity_{h}"] in ("eff_memory", "fetch_period_s")
        assert (tmp_path / "w" / f"tornado_{h}.png").is_file()
        assert metrics[h] > 0
    assert metrics["failed_cases"] == 0 and metrics["cases"] == 5
    for f in ("config.json", "env.json", "status.json"):
        assert (tmp_path / "w" / f).is_file()
    assert json.loads((tmp_path / "w" / "status.json").read_text())["status"] == "finished"
