"""The engine ablation's calibration (saved, reused, checked; median of Oracle passes), its
repeats with 95% intervals, and the warm-up that leaves nothing to compile inside a timed run."""

import dataclasses
import json
import math
import pathlib
import types

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.sched import ClusterScheduler
from dualpath_jax.studies import engine_ablation as ea
from dualpath_jax.studies import engine_runs as er
from dualpath_jax.studies.engine_config import (CALIBRATION_FORMAT, CalibrateConfig, calibration_fingerprint,
                                                engine_ablation_config)
from dualpath_jax.studies.seeds import printed

from config_files import engine_config, get_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
T975 = {1: 12.7062, 2: 4.3027, 4: 2.7764}  # two-sided 95% Student-t critical values (any t table)


def _saved(tmp_path, config, **fields):
    data = {"format": CALIBRATION_FORMAT, "source": "measured", "snic_bytes_per_s": 4e6, "cnic_bytes_per_s": 3.2e7,
            "fingerprint": calibration_fingerprint(engine_ablation_config(config)), "hit_tokens_estimated": 1000}
    data.update(fields)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data))
    return path


# ---- config ---------------------------------------------------------------------------------------
def test_quick_config_repeats_five_times_and_calibrates_on_three_passes():
    cfg = engine_ablation_config(engine_config())
    assert cfg.repeats == 5 and cfg.calibrate.passes == 3 and cfg.calibrate.from_file == ""
    assert cfg.calibrate.each_repeat
    assert cfg.calibrate.measured


@pytest.mark.parametrize("path, value", [("repeats", 0), ("repeats", 1.5), ("calibrate.passes", 0),
                                         ("calibrate.from_file", 3), ("calibrate.each_repeat", "yes"),
                                         ("variants", ()), ("arrivals.seed", -3), ("arrivals.seed", 1.5),
                                         ("profile.pairs", ()), ("profile.pairs", "abc"),
                                         ("profile.pairs", ((0, 64), (0, 64))),
                                         ("profile.pairs[1].cached", ((0, 64), (-1, 64))),
                                         ("profile.pairs[0].bsz", ((0, 0), (1024, 64))),
                                         ("profile.pairs[0]", ((0,), (1024, 64))),
                                         ("ray.gpus_per_engine", 1.5),  # above one GPU: whole GPUs
                                         ("ray.pe_resource", "pe_host")])  # placement, under runtime=threads
def test_bad_repeat_and_calibration_fields_are_named(path, value):
    data = engine_config().to_dict()  # a plain dict: values of any type reach the check
    node = data
    *head, leaf = path.split("[")[0].split(".") if "[" in path else path.split(".")
    for part in head:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError) as e:
        engine_ablation_config(data)
    assert e.value.field == path


def test_a_saved_calibration_is_read_from_the_file_or_its_workdir(tmp_path):
    config = engine_config()
    path = _saved(tmp_path, config)
    for given in (str(path), str(tmp_path)):
        cfg = engine_ablation_config(engine_config(**{"calibrate.from_file": given}))
        assert cfg.calibrate.from_file == given and not cfg.calibrate.measured


@pytest.mark.parametrize("fields, message", [
    ({"format": 1}, f"not a calibration.json of format {CALIBRATION_FORMAT} \\(got format 1\\); measure a new"),
    ({"snic_bytes_per_s": 0.0}, "snic_bytes_per_s must be a positive number"),
    ({"cnic_bytes_per_s": "fast"}, "cnic_bytes_per_s must be a positive number"),
    ({"fingerprint": None}, "no fingerprint"),
])
def test_a_bad_saved_calibration_is_one_error_naming_the_field(tmp_path, fields, message):
    _saved(tmp_path, engine_config(), **fields)
    with pytest.raises(ConfigError, match=r"^calibrate\.from_file: .*" + message):
        engine_ablation_config(engine_config(**{"calibrate.from_file": str(tmp_path)}))


def test_a_missing_or_unreadable_calibration_is_one_error_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^calibrate\.from_file: no calibration file"):
        CalibrateConfig(from_file=str(tmp_path / "nope.json"))
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"^calibrate\.from_file: .* is not a readable JSON calibration"):
        CalibrateConfig(from_file=str(tmp_path))


@pytest.mark.parametrize("path, value", [("workload.num_agents", 9), ("model.name", "tiny-mla"),
                                         ("cluster.decode_nodes", 3)])
def test_a_calibration_of_another_model_or_workload_is_refused_naming_what_differs(tmp_path, path, value):
    _saved(tmp_path, engine_config())
    with pytest.raises(ConfigError) as e:
        engine_ablation_config(engine_config(**{path: value, "calibrate.from_file": str(tmp_path)}))
    assert e.value.field == "calibrate.from_file"
    assert f"measured for {path}=" in str(e.value) and f"this run has {path}={value!r}" in str(e.value)


def test_a_calibration_refused_names_every_field_that_differs(tmp_path):
    _saved(tmp_path, engine_config())
    with pytest.raises(ConfigError, match=r"was measured for model\.name='tiny-gqa', workload\.num_agents=\d+, "
                                          r"this run has model\.name='tiny-mla', workload\.num_agents=9; use the "
                                          r"same values"):
        engine_ablation_config(engine_config(**{"workload.num_agents": 9, "model.name": "tiny-mla",
                                          "calibrate.from_file": str(tmp_path)}))


def test_a_repeat_in_another_regime_is_flagged_against_the_repeats_median():
    """The measured load/compute per repeat: one a third or more from the median (a host that
    slowed down for it) is flagged with a warning naming it; fewer than 3 repeats flag nothing."""
    def measured(ratios):
        return [{"repeat": r, "load_over_compute": x, "pe_compute_s_oracle": 1.0} for r, x in enumerate(ratios)]

    lines = []
    assert ea._regime_outliers(measured([3.28, 1.87, 3.22]), lines.append) == [1]  # 3.22 / 1.87 = 1.72
    assert len(lines) == 1 and lines[0].startswith("warning: repeat 1 ran in another regime: load/compute 1.87 "
                                                   "against the repeats' median 3.22")
    assert ea._regime_outliers(measured([3.28, 3.15, 3.22]), lines.append) == []
    assert ea._regime_outliers(measured([2.0, 2.6, 2.0]), lines.append) == []  # 1.3: within the factor
    assert ea._regime_outliers(measured([2.0, 2.7, 2.0, 1.5]), lines.append) == [1, 3]  # median 2.0: 1.35 and 1.33
    assert ea._regime_outliers(measured([3.3, 1.0]), lines.append) == []  # 2 repeats: no median to trust
    assert len(lines) == 3


def test_a_calibration_holds_under_any_arrivals(tmp_path):
    _saved(tmp_path, engine_config())  # its Oracle passes ran offline, whatever the arrivals of its run
    cfg = engine_ablation_config(engine_config(**{"arrivals.mode": "online", "arrivals.use_think_time": True,
                                            "calibrate.from_file": str(tmp_path)}))
    assert cfg.calibrate.from_file == str(tmp_path) and cfg.arrivals.mode == "online"


def test_a_link_rate_override_is_refused_while_a_saved_calibration_sets_the_rates(tmp_path):
    _saved(tmp_path, engine_config())
    config = engine_config(**{"calibrate.from_file": str(tmp_path), "calibrate.load_over_oracle": 0.0})
    with pytest.raises(ConfigError, match=r"^cluster\.cnic_bytes_per_s: is replaced by the saved calibration"):
        ea.check_overrides(config, ["cluster.cnic_bytes_per_s"])
    ea.check_overrides(config, ["cluster.max_decode_batch"])


def test_an_interrupted_run_leaves_no_seed_store(tmp_path, monkeypatch):
    """The warm start's seed store is the run's scratch: removed when the run stops early too."""
    closed = []
    monkeypatch.setattr(ea, "select_agents", lambda *a, **k: [])
    monkeypatch.setattr(ea, "Setup", lambda *a, **k: types.SimpleNamespace(
        scheduler_cls=ClusterScheduler, rounds=[], close=lambda: closed.append(True)))
    monkeypatch.setattr(ea, "seed_store", lambda setup, path, log: (path / "blocks").mkdir(parents=True))
    monkeypatch.setattr(ea, "compile_runs", lambda *a, **k: None)

    def interrupted(*args, **kwargs):
        assert (tmp_path / "seed_store" / "blocks").is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(ea, "_run_variants", interrupted)
    config = engine_ablation_config(engine_config(**{"workload.warm_start": True}))
    with pytest.raises(KeyboardInterrupt):
        ea.run_ablation(config, tmp_path, log=lambda s: None, progress=False)
    assert not (tmp_path / "seed_store").exists() and closed == [True]


# ---- calibration ----------------------------------------------------------------------------------
def _setup(config, hit_tokens=1000):
    cfg = engine_ablation_config(config)
    return types.SimpleNamespace(config=cfg, cluster=cfg.cluster, rounds=[(hit_tokens - 200, 7), (200, 3)],
                                 layout=types.SimpleNamespace(bytes_per_token=1024))


def test_measured_calibration_uses_the_median_of_the_oracle_passes(tmp_path, monkeypatch):
    jcts, arrivals = iter([3.0, 1.0, 2.0]), []
    monkeypatch.setattr(er, "run_variant", lambda *a, **k: arrivals.append(k["arrivals"]))
    monkeypatch.setattr(ea.report, "summarize", lambda res: {"jct_s": next(jcts), "hit_tokens": 5000, "num_failed": 0,
                                                             "num_requests": 9, "compute_s": {"pe0": 0.5, "de1": 9.0}})
    # the passes run offline and without think times, whatever the run's arrivals
    setup = _setup(engine_config(**{"arrivals.mode": "online", "arrivals.aps": 0.5, "arrivals.use_think_time": True}))
    cal = ea.calibrate_links(setup, setup.config.calibrate, tmp_path / "s", None, log=lambda s: None)
    # 5000 hit tokens x 1 KiB over 2.5 x the median JCT (2 s); CNIC 8 x SNIC
    assert cal["snic_bytes_per_s"] == pytest.approx(5000 * 1024 / (2.5 * 2.0))
    assert setup.cluster.snic_bytes_per_s == cal["snic_bytes_per_s"]
    assert setup.cluster.cnic_bytes_per_s == pytest.approx(8 * 5000 * 1024 / 5.0)
    assert cal["oracle_jct_s"] == [3.0, 1.0, 2.0] and cal["oracle_pe_compute_s"] == [0.5] * 3
    assert cal["source"] == "measured" and cal["hit_tokens_estimated"] == 1000
    assert [(a.mode, a.use_think_time, a.aps) for a in arrivals] == [("offline", False, 0.5)] * 3


def _request(error=""):
    return types.SimpleNamespace(error=error)


@pytest.mark.parametrize("summary, requests, message", [
    ({"num_failed": 2, "hit_tokens": 5000}, [_request(), _request("timeout: run exceeded run_timeout_s=20.0")],
     r"^calibrate\.load_over_oracle: the Oracle pass that measures the link rates failed 2 of 9 requests \(the "
     r"first: timeout: run exceeded run_timeout_s=20\.0\); fix that, or give the link rates \(calibrate\."
     r"load_over_oracle=0 with cluster\.snic_bytes_per_s and cnic_bytes_per_s\)$"),
    ({"num_failed": 0, "hit_tokens": 0}, [],
     r"^calibrate\.load_over_oracle: these agents hit no stored KV, so no read can be timed against their "
     r"compute: use agents with cached prefixes"),
])
def test_a_calibration_that_cannot_measure_rates_says_why_instead_of_setting_none(tmp_path, monkeypatch, summary,
                                                                                   requests, message):
    monkeypatch.setattr(er, "run_variant", lambda *a, **k: types.SimpleNamespace(requests=requests))
    monkeypatch.setattr(ea.report, "summarize", lambda res: {"jct_s": 1.0, "num_requests": 9,
                                                             "compute_s": {"pe0": 0.5}, **summary})
    setup = _setup(engine_config())
    with pytest.raises(ConfigError, match=message):
        ea.calibrate_links(setup, setup.config.calibrate, tmp_path / "s", None, log=lambda s: None)
    assert setup.cluster.snic_bytes_per_s == ClusterConfig().snic_bytes_per_s  # unchanged


def test_agents_estimated_to_hit_nothing_are_refused_before_any_oracle_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(er, "run_variant", lambda *a, **k: pytest.fail("no Oracle pass for agents without hits"))
    setup = _setup(engine_config(), hit_tokens=0)
    with pytest.raises(ConfigError, match=r"^calibrate\.load_over_oracle: these agents hit no stored KV"):
        ea.calibrate_links(setup, setup.config.calibrate, tmp_path / "s", None, log=lambda s: None)


def test_a_saved_calibration_sets_its_rates_without_an_oracle_pass(tmp_path, monkeypatch):
    _saved(tmp_path, engine_config())
    monkeypatch.setattr(er, "run_variant", lambda *a, **k: pytest.fail("no Oracle pass with a saved calibration"))
    setup = _setup(engine_config(**{"calibrate.from_file": str(tmp_path)}))
    cal = ea.calibrate_links(setup, setup.config.calibrate, tmp_path / "s", None, log=lambda s: None)
    assert (setup.cluster.snic_bytes_per_s, setup.cluster.cnic_bytes_per_s) == (4e6, 3.2e7)
    assert cal["source"] == "file" and cal["saved"]["source"] == "measured"
    other = _setup(engine_config(**{"calibrate.from_file": str(tmp_path)}), hit_tokens=1064)
    with pytest.raises(ConfigError, match=r"^calibrate\.from_file: .* 1000 hit tokens, these agents have 1064"):
        ea.calibrate_links(other, other.config.calibrate, tmp_path / "s", None, log=lambda s: None)


def test_a_run_saves_the_median_rates_of_its_calibrations_and_every_calibration():
    records = [{"repeat": r, "format": CALIBRATION_FORMAT, "fingerprint": {"model.name": "m"}, "source": "measured",
                "hit_tokens_estimated": 7, "snic_bytes_per_s": snic, "cnic_bytes_per_s": 8 * snic,
                "oracle_jct_s": [1.0, 2.0, 3.0], "oracle_jct_s_median": 2.0}
               for r, snic in enumerate([5e6, 9e6, 6e6])]
    out = ea.combine_calibrations(records)
    assert (out["snic_bytes_per_s"], out["cnic_bytes_per_s"]) == (6e6, 48e6)  # medians over the repeats
    assert out["fingerprint"] == {"model.name": "m"} and out["format"] == CALIBRATION_FORMAT
    assert "oracle_jct_s" not in out and [p["snic_bytes_per_s"] for p in out["per_repeat"]] == [5e6, 9e6, 6e6]
    assert out["per_repeat"][1]["oracle_jct_s"] == [1.0, 2.0, 3.0] and "fingerprint" not in out["per_repeat"][1]
    with pytest.raises(ValueError):
        ea.combine_calibrations([])


def test_without_calibration_the_configured_rates_are_recorded(tmp_path):
    setup = _setup(engine_config(**{"calibrate.load_over_oracle": 0.0}))
    cal = ea.calibrate_links(setup, setup.config.calibrate, tmp_path / "s", None, log=lambda s: None)
    assert cal["source"] == "config"
    assert cal["snic_bytes_per_s"] == ClusterConfig().snic_bytes_per_s


# ---- repeats and intervals ------------------------------------------------------------------------
def test_estimates_are_the_mean_with_a_student_t_interval():
    named = {}
    ea.put_estimate(named, "x", [1.0, 2.0, 3.0])
    half = T975[2] * 1.0 / math.sqrt(3)  # s = 1
    assert named["x"] == 2.0 and named["x_ci95"] == pytest.approx(half, rel=1e-4)
    assert (named["x_lo"], named["x_hi"]) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-4)
    assert list(printed(named)) == ["x", "x_ci95"]
    one = {}
    ea.put_estimate(one, "y", [4.0])
    assert one == {"y": 4.0}  # one repeat: no interval lines


def test_table_rows_average_numbers_and_sum_failure_counts():
    rows = [{"variant": "basic", "jct_s": 10.0, "failed": 1, "read_failures": 0, "persist_failures": 2},
            {"variant": "basic", "jct_s": 14.0, "failed": 0, "read_failures": 3, "persist_failures": 0}]
    out = ea.aggregate_rows(rows)
    assert out["jct_s"] == 12.0 and out["repeats"] == 2
    assert out["jct_s_ci95"] == pytest.approx(T975[1] * math.sqrt(8) / math.sqrt(2), rel=1e-4)
    assert (out["failed"], out["read_failures"], out["persist_failures"]) == (1, 3, 2)


def test_ratios_are_taken_per_repeat_then_averaged():
    def summary(jct, oracle=False):
        return {"jct_s": jct, "ttft_p50_s": 0.1, "snic_max_avg_mean": math.nan if oracle else 1.5, "num_failed": 0,
                "read_failures": 0, "persist_failures": 0, "bytes_conserved": True}

    basic, dual, oracle = [2.0, 6.0], [1.0, 2.0], [0.5, 0.5]
    summaries = {}
    for r in range(2):
        summaries["basic", r], summaries["dualpath", r] = summary(basic[r]), summary(dual[r])
        summaries["oracle", r] = summary(oracle[r], oracle=True)
    tokens = {"tokens_identical": True, "tokens_identical_tie_aware": True}
    measured = [{"load_over_compute": 3.0}, {"load_over_compute": 5.0}]
    rates = [(4e6, 3.2e7), (6e6, 4.8e7)]
    named = ea._named_values(["basic", "dualpath", "oracle"], 2, summaries, measured, {}, tokens, rates)
    # per repeat 2 and 3 (the ratio of the means would be 4 / 1.5 = 2.67)
    assert named["speedup_dualpath_vs_basic"] == pytest.approx(2.5)
    assert named["speedup_dualpath_vs_basic_ci95"] == pytest.approx(T975[1] * math.sqrt(0.5) / math.sqrt(2), rel=1e-4)
    assert named["dualpath_over_oracle_jct"] == pytest.approx(3.0)  # (2 + 4) / 2
    assert named["jct_s_basic"] == 4.0 and named["load_over_compute"] == 4.0
    assert "snic_max_avg_oracle" not in named and named["snic_max_avg_dualpath_ci95"] == 0.0
    assert named["repeats"] == 2 and named["tokens_identical"] is True
    assert named["snic_bytes_per_s"] == 5e6 and named["snic_bytes_per_s_ci95"] == pytest.approx(T975[1] * 1e6,
                                                                                                rel=1e-4)
    # without Oracle runs nothing is measured: the estimate keeps its own name
    named = ea._named_values(["basic", "dualpath"], 2, summaries, [], {"load_over_compute_estimated": 13.3}, tokens,
                             rates)
    assert "load_over_compute" not in named and named["load_over_compute_estimated"] == 13.3


def test_repeat_zero_keeps_the_run_folder_other_tools_read(tmp_path):
    assert ea.run_dir(tmp_path, "basic", 0) == tmp_path / "runs" / "basic"
    assert ea.run_dir(tmp_path, "basic", 2) == tmp_path / "runs" / "basic" / "r2"


# ---- warm-up --------------------------------------------------------------------------------------
def test_warm_up_compiles_what_a_pe_forward_runs():
    """After :func:`warm_up_prefill` a PE's own path runs the same shapes without compiling (or
    loading) a single program: the warm-up calls the programs exactly as the PE does."""
    import jax

    from dualpath_jax.engine.prefill import PrefillChunk, PrefillPath
    from dualpath_jax.engine.profile import prefill_shape, warm_up_prefill
    from dualpath_jax.kvcache import layout_for
    from dualpath_jax.model import get_spec, init_params

    spec = get_spec("tiny-gqa")
    params = jax.tree.map(np.asarray, init_params(spec, jax.random.PRNGKey(0)))
    layout = layout_for(spec, "f32")
    z, dev = layout.block_tokens, jax.devices()[0]
    cases = [(40, 3 * z + 5), (16, 0)]  # (new tokens, cached tokens)
    jax.clear_caches()
    ea.CompileClock.start()
    assert warm_up_prefill(params, spec, dev, {prefill_shape(c, t, z) for t, c in cases}, block_tokens=z) == 2
    path = PrefillPath(params, spec, layout, device=dev)  # a PE's path, built after the warm-up
    before = ea.CompileClock.read()
    for t, cached in cases:
        kv = [tuple(np.ones((cached, *s), np.float32) for s in path.kv_shapes)] if cached else None
        path.forward([PrefillChunk(np.arange(t, dtype=np.int32), cached)], lambda layer: [kv])
    assert ea.CompileClock.read()[1] == before[1]


# ---- end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not __import__("dualpath_jax.workload", fromlist=["agentic_dir"]).agentic_dir().is_dir(),
                    reason="shared traces not available")
def test_a_second_run_reuses_the_first_runs_link_rates(tmp_path):
    import subprocess
    import sys

    def run(workdir, *args):
        done = subprocess.run([sys.executable, str(ROOT / "experiments" / "run_engine.py"),
                               f"--config={ROOT / 'configs' / 'engine_ablation.py'}:quick",
                               "--config.workload.num_agents=2", "--config.variants=('basic','oracle')",
                               "--config.calibrate.passes=1", f"--jit_cache_dir={tmp_path / 'jit'}", "--progress=off",
                               f"--workdir={workdir}", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((workdir / "metrics.json").read_text()), json.loads((workdir / "ablation.json").read_text())

    first, _ = run(tmp_path / "a", "--config.repeats=2")
    saved = json.loads((tmp_path / "a" / "calibration.json").read_text())
    per_repeat = [p["snic_bytes_per_s"] for p in saved["per_repeat"]]
    assert saved["source"] == "measured" and len(per_repeat) == 2 and len(saved["per_repeat"][0]["oracle_jct_s"]) == 1
    assert saved["snic_bytes_per_s"] == pytest.approx(sum(per_repeat) / 2)  # the median of two
    assert first["snic_bytes_per_s"] == pytest.approx(sum(per_repeat) / 2)
    second, ablation = run(tmp_path / "b", "--config.repeats=1", f"--config.calibrate.from_file={tmp_path / 'a'}")
    assert second["snic_bytes_per_s"] == saved["snic_bytes_per_s"]
    assert ablation["cnic_bytes_per_s"] == [saved["cnic_bytes_per_s"]]
    assert not [s for s in ablation["stages"] if s["stage"].startswith("calibrate")]
    reused = json.loads((tmp_path / "b" / "calibration.json").read_text())
    assert reused["source"] == "file" and reused["from_file"] == str(tmp_path / "a" / "calibration.json")


def test_the_engine_replays_mooncake_sessions_as_the_simulator_reads_them(tmp_path):
    from dualpath_jax.studies.engine_config import EngineWorkload
    from dualpath_jax.workload import load_mooncake_trace, scale_tokens

    rows = [{"timestamp": 1000 * k, "input_length": 1100 + 700 * k, "output_length": 40,
             "hash_ids": list(range(1, 4 + k))} for k in range(4)]  # one 4-turn conversation
    rows.append({"timestamp": 500, "input_length": 600, "output_length": 10, "hash_ids": [90, 91]})  # one turn
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wl = EngineWorkload(source="mooncake", traces_dir=str(path), num_agents=1, rounds=3, token_divisor=32,
                        max_context_tokens=4096, max_append_tokens=1024)
    (agent,) = er.select_agents(wl)
    # the first three turns of the 4-turn session, every length divided by 32 (16-token blocks)
    want = scale_tokens(load_mooncake_trace(path, token_scope="session")[0], 32)
    assert agent.agent_id == "mc/s00000" and agent.token_scope == "mc/s00000"
    np.testing.assert_array_equal(agent.num_prompt_tokens, want.num_prompt_tokens[:3])
    np.testing.assert_array_equal(agent.num_hit_tokens, want.num_hit_tokens[:3])
    assert agent.num_prompt_tokens.tolist() == [-(-1100 // 32), 1800 // 32 + 1, 2500 // 32 + 1]
    with pytest.raises(ConfigError, match=r"workload\.num_agents: found only 1 agent .* in the sessions of"):
        er.select_agents(dataclasses.replace(wl, num_agents=2))
    with pytest.raises(ConfigError, match=r"workload\.traces_dir: no Mooncake trace"):
        er.select_agents(dataclasses.replace(wl, traces_dir=str(tmp_path / "none.jsonl")))
    with pytest.raises(ConfigError, match=r"workload\.source"):
        EngineWorkload(source="sharegpt")


def test_a_calibration_older_than_a_workload_field_matches_where_the_run_keeps_its_default():
    from dualpath_jax.studies.engine_config import check_fingerprint

    cfg = engine_ablation_config(engine_config())
    older = {k: v for k, v in calibration_fingerprint(cfg).items()
             if k not in ("workload.source", "workload.mooncake_block_tokens")}  # written before those fields
    check_fingerprint(older, cfg, "old.json")  # the run keeps their defaults: accepted
    mooncake = engine_ablation_config(engine_config(**{"workload.source": "mooncake"}))
    with pytest.raises(ConfigError, match=r"calibrate\.from_file: old\.json does not record workload\.source"):
        check_fingerprint(older, mooncake, "old.json")
    with pytest.raises(ConfigError, match=r"old\.json does not record model\.name"):
        check_fingerprint({k: v for k, v in older.items() if k != "model.name"}, cfg, "old.json")
    committed = json.loads((ROOT / "experiments/results/engine_ablation/calibration.json").read_text())
    check_fingerprint(committed["fingerprint"], engine_ablation_config(get_config("engine_ablation", "")),
                      "calibration.json")


def test_recorded_arrivals_replay_the_sessions_start_times():
    cfg = engine_ablation_config(engine_config(**{"workload.source": "mooncake", "arrivals.mode": "recorded",
                                            "arrivals.speedup": 2.0}))
    agents = [types.SimpleNamespace(start_offset_s=x) for x in (12.0, 10.0, 19.0)]
    np.testing.assert_allclose(er.start_times(cfg.arrivals, agents), [1.0, 0.0, 4.5])  # (t - 10 s) / 2
    offline = er.offline_arrivals(cfg.arrivals)  # what calibration's Oracle passes run
    assert (offline.mode, offline.speedup) == ("offline", 1.0)
    np.testing.assert_array_equal(er.start_times(offline, agents), [0.0, 0.0, 0.0])
    with pytest.raises(ConfigError, match=r"^arrivals\.mode: 'recorded' replays a Mooncake trace's .*share no clock"):
        engine_ablation_config(engine_config(**{"arrivals.mode": "recorded"}))  # the agentic traces
    with pytest.raises(ConfigError, match=r"^arrivals\.speedup: speeds up arrivals.mode='recorded'"):
        engine_ablation_config(engine_config(**{"arrivals.mode": "online", "arrivals.speedup": 2.0}))
    with pytest.raises(ConfigError, match=r"^arrivals\.speedup"):
        engine_ablation_config(engine_config(**{"workload.source": "mooncake", "arrivals.mode": "recorded",
                                          "arrivals.speedup": -1.0}))


def test_recorded_arrivals_refuse_a_session_whose_arrival_is_not_recorded(tmp_path):
    from dualpath_jax.studies.engine_config import EngineWorkload
    path = tmp_path / "named.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (
        {"session_id": "a", "input_length": 600, "output_length": 4, "timestamp": 1000},
        {"session_id": "b", "input_length": 700, "output_length": 4, "delay": 50})))
    wl = EngineWorkload(source="mooncake", traces_dir=str(path), num_agents=1, rounds=1)
    with pytest.raises(ConfigError, match=r"^arrivals\.mode: replays recorded arrivals, but session 'b'"):
        er.select_agents(wl, recorded_arrivals=True)
    assert len(er.select_agents(wl)) == 1  # offline or online arrivals need no timestamps


def test_recorded_waits_beyond_the_run_deadline_are_refused_before_the_run():
    from dualpath_jax.workload import Trajectory

    def agent(name, think, start=0.0):
        n = len(think)
        return Trajectory(name, np.full(n, 64), np.ones(n, np.int64), np.arange(n) * 65, np.asarray(think),
                          start_offset_s=start, source=f"/traces/{name}.json.gz")

    cfg = engine_ablation_config(engine_config(**{"arrivals.use_think_time": True}))
    limit = cfg.cluster.run_timeout_s
    er.check_waits(cfg, [agent("a", [0.0, limit / 2, limit / 2 - 1.0])])  # 1 s to spare: runs
    with pytest.raises(ConfigError, match=rf"^arrivals.use_think_time: agent b \(from /traces/b\.json\.gz\) thinks "
                                          rf"{limit:g} s as recorded, beyond cluster.run_timeout_s={limit:g}"):
        er.check_waits(cfg, [agent("a", [0.0, 1.0]), agent("b", [0.0, limit / 2, limit / 2])])
    er.check_waits(engine_ablation_config(engine_config()), [agent("b", [0.0, 2 * limit])])  # think times not replayed
    recorded = engine_ablation_config(engine_config(**{"workload.source": "mooncake", "arrivals.mode": "recorded",
                                                 "arrivals.speedup": 2.0}))
    early, late = agent("m0", [0.0], start=100.0), agent("m1", [0.0], start=100.0 + 2 * limit)
    with pytest.raises(ConfigError, match=rf"^arrivals.speedup: agent m1 \(from /traces/m1\.json\.gz\) starts at "
                                          rf"{limit:g} s as recorded"):
        er.check_waits(recorded, [early, late])  # (start offsets counted from the earliest, over the speedup)
    er.check_waits(recorded, [early, agent("m1", [0.0], start=100.0 + 2 * limit - 4.0)])


def test_too_few_agents_in_one_trace_file_says_a_file_is_one_agent(tmp_path):
    import gzip
    from dualpath_jax.studies.engine_config import EngineWorkload
    doc = {"id": "t1", "requests": [{"t": float(i), "type": "n", "in": 64 * (i + 1), "out": 1,
                                     "hash_ids": list(range(i + 1))} for i in range(5)]}
    path = tmp_path / "t1.json.gz"
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    wl = EngineWorkload(traces_dir=str(path), num_agents=2, rounds=4, token_divisor=1, max_context_tokens=4096,
                        max_append_tokens=1024)
    with pytest.raises(ConfigError, match=rf"^workload\.num_agents: found only 1 agent .* in the 1 trace file read "
                                          rf"from {path} \(.*each file is one agent"):
        er.select_agents(wl)
    (tmp_path / "t2.json.gz").write_bytes(gzip.compress(json.dumps({**doc, "id": "t2"}).encode()))
    with pytest.raises(ConfigError, match=rf"found only 2 agents .* in the 2 trace files read from {tmp_path} "):
        er.select_agents(dataclasses.replace(wl, traces_dir=str(tmp_path), num_agents=3))
