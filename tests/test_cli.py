"""The experiment scripts' shared command line (dualpath_jax.studies.cli): one-line errors naming
the field, --print_config, overrides and variants (workdirs and --resume: test_workdir.py)."""

import dataclasses
import gzip
import json

import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.sched.knobs import SchedKnobs
from dualpath_jax.sim.hardware import HardwareConfig
from dualpath_jax.workload import agentic_dir

from script_runs import ABLATION_TINY, ROOT, SMALL, lines as _lines, run_script as _run


# ---- one-line errors ------------------------------------------------------------------------------
def test_a_misspelled_override_is_one_line_naming_the_closest_field(tmp_path):
    done = _run("run_sim.py", ABLATION_TINY, "--config.num_agent=(8,)", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1
    (line,) = _lines(done.stderr)
    assert line.startswith("ConfigError: --config.num_agent: no field 'num_agent'")
    assert "did you mean num_agents" in line
    assert not (tmp_path / "w").exists()


def test_a_misspelled_nested_override_names_the_closest_fields(tmp_path):
    done = _run("run_sim.py", ABLATION_TINY, "--config.workload.sourse=agentic", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1
    (line,) = _lines(done.stderr)
    assert "--config.workload.sourse: no field 'workload.sourse'" in line and "workload.source" in line
    done = _run("run_sim.py", ABLATION_TINY, "--config.sim.hardwre.snic_bytes_per_s=1", f"--workdir={tmp_path / 'w'}")
    (line,) = _lines(done.stderr)
    assert "no field 'sim.hardwre'" in line and "did you mean sim.hardware" in line
    # a name far from every field of its section gets that section's fields, never the section itself
    for script, section in (("run_sim.py", "sim"), ("run_engine.py", "cluster")):
        config = (ABLATION_TINY,) if script == "run_sim.py" else ()
        done = _run(script, *config, f"--config.{section}.nope=1", f"--workdir={tmp_path / 'w'}")
        (line,) = _lines(done.stderr)
        hint = line.partition("did you mean ")[2].rstrip("?").split(", ")
        assert hint and all(h.startswith(f"{section}.") and h.count(".") == 1 for h in hint), line


def test_an_unknown_field_points_to_where_its_setting_lives():
    """A field under the wrong section gets the same field elsewhere; an ablation switch in a
    config that runs variants gets the variants (not a field the study would overwrite); the
    runners' names for the trace folder point to each other."""
    from dualpath_jax.studies.cmdline import _unknown_field_hint
    names = ["num_agents", "mal", "variants", "workload", "workload.path", "workload.seed", "sim", "sim.loading",
             "sim.beta_s"]
    assert _unknown_field_hint("workload.num_agents", True, names) == "; did you mean num_agents?"
    assert _unknown_field_hint("workload.mal", True, names) == "; did you mean mal?"
    assert _unknown_field_hint("workload.traces_dir", True, names) == "; did you mean workload.path?"
    for dotted in ("loading", "cluster.prefill", "sim.policy"):
        hint = _unknown_field_hint(dotted, True, names)
        assert hint.startswith(f"; {dotted.rpartition('.')[2]} is one of the switches (loading, prefill, policy) "
                               f"that each run's variant sets: list the runs in variants, e.g. --config.variants=")
    # without variants the field where it lives; a missing section is not its field's name
    assert _unknown_field_hint("loading", True, [n for n in names if n != "variants"]) == "; did you mean sim.loading?"
    assert "num_agents" not in _unknown_field_hint("workload.num_agents", False, names)  # (.x below it)


def test_switches_and_misspelled_flags_get_their_hint_on_the_command_line(tmp_path):
    done = _run("run_engine.py", "--config.cluster.loading=dual", f"--workdir={tmp_path / 'w'}")
    (line,) = _lines(done.stderr)
    assert done.returncode == 1 and line.startswith("ConfigError: --config.cluster.loading: no field 'cluster."
                                                    "loading' in ") and "list the runs in variants" in line
    done = _run("run_sim.py", ABLATION_TINY, "--confg.seeds=1", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1 and _lines(done.stderr) == ["FlagError: Unknown command line flag 'confg.seeds'; "
                                                            "did you mean --config.seeds?"]


def test_the_engine_script_reports_an_unknown_key_in_one_line_before_loading_jax(tmp_path):
    # issue #22: "an unknown config key ... three tracebacks that end in ml_collections' AttributeError"
    done = _run("run_engine.py", "--config.workload.num_agent=8", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1
    (line,) = _lines(done.stderr)
    assert "--config.workload.num_agent" in line and "did you mean workload.num_agents" in line
    done = _run("run_engine.py", "--config.nope=1", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1 and len(_lines(done.stderr)) == 1 and "no field 'nope'" in done.stderr


def test_config_and_flag_errors_are_one_line(tmp_path):
    cases = [
        (("--config.sim.z_factor=nan",), "ConfigError: sim.z_factor: must be finite (got nan)"),
        (("--config.workload.source=agentic", "--config.workload.gen_factor=2"), "ConfigError: workload.gen_factor:"),
        (("--config.workload.source=nope",), "ConfigError: workload.source: must be one of"),
        (("--workdri=x",), "Unknown command line flag 'workdri'"),
        # limits that keep a run finite: counts far beyond the paper's
        (("--config.seeds=1e30",), "ConfigError: seeds: must be <= 1,000 (got 10000000000000000"),
        (("--config.workload.num_base=1e9",), "ConfigError: workload.num_base: must be <= 100,000"),
        (("--config.sim.hardware.gpus_per_node=1e6",), "ConfigError: sim.hardware.gpus_per_node: must be <= 1,024"),
    ]
    for args, expected in cases:
        done = _run("run_sim.py", ABLATION_TINY, *args, f"--workdir={tmp_path / 'w'}")
        assert done.returncode == 1, args
        (line,) = _lines(done.stderr)
        assert expected in line, (args, line)
    done = _run("run_sim.py", "--config=configs/no_such.py", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1 and _lines(done.stderr) == ["ConfigError: --config: no such config file "
                                                            "'configs/no_such.py'"]
    done = _run("run_sim.py", "--config=configs/sim_ablaton.py:tiny", f"--workdir={tmp_path / 'w'}")
    (line,) = _lines(done.stderr)
    assert done.returncode == 1 and line.startswith("ConfigError: --config: no such config file "
                                                    "'configs/sim_ablaton.py'; did you mean "
                                                    "configs/sim_ablation.py:tiny")
    noget = tmp_path / "noget.py"
    noget.write_text("X = 1\n")
    done = _run("run_sim.py", f"--config={noget}", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1 and _lines(done.stderr) == [
        f"ConfigError: --config: {noget}: defines no get_config() (a config file returns its ConfigDict from "
        f"get_config)"]
    # a config file that fails is named with its line; one that returns no config says what it returned
    broken = {"syntax": ("def get_config(:\n  return 1\n", "line 1: SyntaxError: invalid syntax"),
              "imports": ("X = 1\nimport no_such_module_here\n", "line 2: ModuleNotFoundError: No module named "
                                                                    "'no_such_module_here'"),
              "raises": ("def get_config():\n  raise ValueError('boom')\n", "line 2: ValueError: boom"),
              "none": ("def get_config():\n  return None\n", "get_config() returned NoneType, not a config"),
              "int": ("def get_config():\n  return 42\n", "get_config() returned int, not a config")}
    not_a_config = " (an ml_collections ConfigDict or a dict)"
    for name, (text, message) in broken.items():
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        done = _run("run_sim.py", f"--config={path}", f"--workdir={tmp_path / 'w'}")
        assert done.returncode == 1 and _lines(done.stderr) == [
            f"ConfigError: --config: {path}{',' if 'line' in message else ':'} {message}"
            f"{'' if 'line' in message else not_a_config}"], (name, done.stderr[-800:])
    assert not (tmp_path / "w").exists()
    # checked once the model is sized (the run has started: its workdir is marked failed)
    done = _run("run_sim.py", ABLATION_TINY, "--config.sim.activation_reserve_bytes=1e30",
                f"--workdir={tmp_path / 'r'}")
    (line,) = _lines(done.stderr)
    assert done.returncode == 1 and line.startswith("ConfigError: sim.activation_reserve_bytes: ") and \
        "leave no HBM for KV on PEs" in line


def test_verbose_shows_the_traceback(tmp_path):
    done = _run("run_sim.py", ABLATION_TINY, "--config.sim.z_factor=nan", "--verbose", f"--workdir={tmp_path / 'w'}")
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr
    assert "ConfigError: sim.z_factor: must be finite" in done.stderr


def test_a_bad_trace_file_is_one_line_and_the_run_is_marked_failed(tmp_path):
    traces = tmp_path / "traces"
    traces.mkdir()
    doc = {"id": "t", "block_size": 64, "requests": [
        {"t": 0.0, "type": "n", "in": 130, "out": 3, "hash_ids": [1, 2]},
        {"t": 1.0, "type": "n", "in": 130, "out": 3, "hash_ids": [[1, 2], [3]]}]}
    (traces / "t.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))
    workdir = tmp_path / "w"
    done = _run("run_sim.py", ABLATION_TINY, *SMALL, "--config.workload.source=agentic",
                f"--config.workload.path={traces}", f"--workdir={workdir}")
    assert done.returncode == 1
    (line,) = _lines(done.stderr)
    assert line == f"TraceFormatError: {traces / 't.json.gz'}: requests[1]: hash_ids: must contain only integers " \
                   f"(got [1, 2])"
    status = json.loads((workdir / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == line and status["input_error"] is True
    # it failed before its first output: running again (input fixed or not) needs no --overwrite
    again = _run("run_sim.py", ABLATION_TINY, *SMALL, "--config.workload.source=agentic",
                 f"--config.workload.path={traces}", f"--workdir={workdir}")
    assert again.returncode == 1 and _lines(again.stderr) == [line]


# ---- --print_config -------------------------------------------------------------------------------
def _table(text):
    """``{name: (value, type, default, meaning)}`` of a --print_config table."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name "))
    cols = [lines[header].index(c) for c in ("value", "type", "default", "meaning")]
    out = {}
    for line in lines[header + 1:]:
        name = line[:cols[0]].strip()
        out[name] = tuple(line[a:b].strip() for a, b in zip(cols, cols[1:] + [None]))
    return out


def test_print_config_lists_every_field_with_type_default_and_meaning():
    done = _run("run_sim.py", ABLATION_TINY, "--config.sim.z_factor=1.2", "--print_config")
    assert done.returncode == 0, done.stderr
    table = _table(done.stdout)
    assert table["sim.z_factor"][:3] == ("1.2", "float", repr(SchedKnobs.__dataclass_fields__["z_factor"].default))
    assert "balance target" in table["sim.z_factor"][3]
    assert table["num_agents"][0] == "(32, 64)"  # the :tiny variant, resolved
    assert table["workload.source"][:3] == ("'synthetic'", "str", "'synthetic'")
    for f in dataclasses.fields(HardwareConfig):  # every field listed, each with a meaning
        assert table[f"sim.hardware.{f.name}"][3], f.name
    assert all(row[3] for name, row in table.items()), [n for n, r in table.items() if not r[3]]


def test_print_config_of_the_engine_and_demo_scripts():
    done = _run("run_engine.py", "--config.cluster.snic_bytes_per_s=5e6", "--print_config")
    assert done.returncode == 0, done.stderr
    table = _table(done.stdout)
    assert table["cluster.snic_bytes_per_s"][:3] == ("5e+06", "float", "3e+06")
    assert table["workload.num_agents"][2] == "24" and table["workload.num_agents"][3] == "agents replayed."
    assert all(row[3] for row in table.values()), [n for n, r in table.items() if not r[3]]
    done = _run("run_demo.py", f"--config={ROOT / 'configs' / 'demo.py'}:quick", "--print_config")
    assert done.returncode == 0, done.stderr
    table = _table(done.stdout)
    assert table["seq_len"][:3] == ("96", "int", "256")  # the :quick value; the file's default


def test_an_int_field_takes_a_float_literal_of_an_integral_value():
    done = _run("run_engine.py", "--config.cluster.pe_hbm_kv_bytes=1e9", "--config.cluster.buffer_bytes=2.5e8",
                "--config.window_s=2e0", "--config.cluster.de_hbm_kv_bytes", "1.28e8", "--print_config")
    assert done.returncode == 0, done.stderr
    table = _table(done.stdout)
    assert table["cluster.pe_hbm_kv_bytes"][:2] == ("1000000000", "int")
    assert table["cluster.buffer_bytes"][:2] == ("250000000", "int")
    assert table["cluster.de_hbm_kv_bytes"][:2] == ("128000000", "int")  # the space form too
    assert table["window_s"][:2] == ("2.0", "float")  # a float field as ml_collections reads it
    done = _run("run_engine.py", "--config.cluster.pe_hbm_kv_bytes=1.5", "--print_config")
    assert done.returncode == 1
    (line,) = _lines(done.stderr)
    assert "--config.cluster.pe_hbm_kv_bytes=1.5" in line and "int()" in line


# ---- the simulator CLI on real traces -------------------------------------------------------------
needs_data = pytest.mark.skipif(not agentic_dir().is_dir(), reason="shared traces not available")


def _trace_rounds(num_agents: int, mal_tokens: int) -> int:
    """Requests of the first ``num_agents`` agentic conversations (with their sub-agents as their own
    trajectories), each trajectory cut before its first round with in + max(out, 1) > MAL, one whose
    first round is over it dropped with its sub-agents: counted from the raw JSON."""
    def rounds(requests):
        n = 0
        for r in requests:
            if r["type"] == "subagent":
                continue
            if r["in"] + max(r["out"], 1) > mal_tokens:
                break
            n += 1
        return n

    def walk(requests):  # this trajectory's rounds and its kept sub-agents'
        n = rounds(requests)
        if n == 0:
            return 0, False
        return n + sum(walk(r["requests"])[0] for r in requests if r["type"] == "subagent"), True

    total = agents = 0
    for path in sorted(agentic_dir().glob("*.json.gz")):
        n, kept = walk(json.loads(gzip.decompress(path.read_bytes()))["requests"])
        if kept:
            total, agents = total + n, agents + 1
        if agents == num_agents:
            return total
    raise AssertionError("too few agents")


@needs_data
@pytest.mark.parametrize("sizes", [pytest.param((8,), id="8-agents"),
                                   pytest.param(None, id="tiny", marks=pytest.mark.slow)])
def test_the_tiny_ablation_runs_on_agentic_traces_from_the_command_line(tmp_path, sizes):
    args = [ABLATION_TINY, "--config.workload.source=agentic", f"--workdir={tmp_path}"]
    if sizes:
        args.append(f"--config.num_agents={sizes}")
    done = _run("run_sim.py", *args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "ablation.json").read_text())
    assert out["workload"]["source"] == "agentic"
    sizes = sizes or (32, 64)
    for variant, summary in out["variants"].items():
        for n in sizes:
            assert summary["requests_by_agents"][str(n)] == _trace_rounds(n, 65536), (variant, n)
            assert summary["jct_s_by_agents"][str(n)] > 0
    assert "agentic traces, MAL 64K" in done.stdout
    named = json.loads((tmp_path / "metrics.json").read_text())
    assert named["jct_s_dualpath"] == pytest.approx(sum(out["variants"]["dualpath"]["jct_s_by_agents"].values())
                                                    / len(sizes))
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "finished"


@needs_data
def test_the_workload_source_reaches_other_studies(tmp_path):
    done = _run("run_sim.py", f"--config={ROOT / 'configs' / 'sim_fig8.py'}:tiny", "--config.workload.source=mooncake",
                "--config.workload.token_divisor=8", "--config.num_agents=(4,)", f"--workdir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mooncake 32K" in done.stdout
    rows = json.loads((tmp_path / "fig8.json").read_text())["results"]
    assert rows and all(r["requests"] > 0 for r in rows)


# ---- seeds: mean and 95% CI on the command line (issue #23) -------------------------------------------
def test_run_sim_takes_seeds_and_prints_each_figure_with_its_half_width(tmp_path):
    workdir = tmp_path / "w"
    done = _run("run_sim.py", ABLATION_TINY, *SMALL, "--config.seeds=2", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-2000:]
    names = [line.split(": ", 1)[0] for line in _lines(done.stdout.split("\n\n")[-1])]
    assert names == ["jct_s_basic", "jct_s_basic_ci95", "jct_s_dualpath", "jct_s_dualpath_ci95",
                     "speedup_dualpath_vs_basic", "speedup_dualpath_vs_basic_ci95", "wall_s"]  # _lo/_hi: metrics.json
    metrics = json.loads((workdir / "metrics.json").read_text())
    jct = {x["seed"]: x["jct_s"] for x in json.loads((workdir / "ablation.json").read_text())["variants"]["basic"][
        "by_seed"]}
    assert sorted(jct) == [0, 1] and jct[0] != jct[1]  # two workload seeds
    half = 12.706204736 * abs(jct[0] - jct[1]) / 2  # t_{0.975, 1} * s / sqrt(2), s = |a - b| / sqrt(2)
    assert metrics["jct_s_basic"] == pytest.approx((jct[0] + jct[1]) / 2, rel=1e-12)
    assert metrics["jct_s_basic_ci95"] == pytest.approx(half, rel=1e-8)
    assert metrics["jct_s_basic_lo"] == pytest.approx(metrics["jct_s_basic"] - half, rel=1e-8)
    assert "jct_s_basic_lo" not in done.stdout and f"jct_s_basic_ci95: {metrics['jct_s_basic_ci95']:.6g}" in done.stdout
    done = _run("run_sim.py", ABLATION_TINY, "--config.seeds=0", f"--workdir={tmp_path / 'bad'}")
    assert done.returncode == 1 and _lines(done.stderr) == ["ConfigError: seeds: must be > 0 (got 0)"]


def test_reproduce_paper_seeds_override_every_study_and_the_report_shows_intervals(tmp_path):
    done = _run("reproduce_paper.py", f"--workdir={tmp_path}", "--config_arg=tiny", "--studies=fig8,pd_sweep",
                "--seeds=2")
    assert done.returncode == 0, done.stderr[-3000:]
    for study in ("fig8", "pd_sweep"):
        assert json.loads((tmp_path / study / "config.json").read_text())["seeds"] == 2
    report = (tmp_path / "REPORT.md").read_text()
    assert "(tiny); 2 seeds;" in report and "mean ± 95% CI over 2 seeds" in report
    claims = [line for line in report.splitlines() if line.startswith("| Eq. 9 lower bound")]
    assert claims == ["| Eq. 9 lower bound on P/D for g = 8, s = 1, M = 500 GB/s, Bs = 50 GB/s (section 4.2) | "
                      "1/7 = 0.143 | 0.1429 | pd_sweep: eq9_lower |  | 2 |"]  # analytic: no interval
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "pd_sweep.eq9_lower" in metrics and "pd_sweep.eq9_lower_ci95" not in metrics


# ---- the engine ablation's output (issue #24 items 6 and 7) ------------------------------------------
@needs_data
@pytest.mark.slow
def test_the_engine_ablation_reports_compilation_as_a_stage_and_no_nan_headline(tmp_path):
    done = _run("run_engine.py", f"--config={ROOT / 'configs' / 'engine_ablation.py'}:quick",
                "--config.workload.num_agents=2", "--config.variants=('basic','oracle')", "--config.repeats=2",
                "--config.calibrate.passes=1", f"--jit_cache_dir={tmp_path / 'jit'}", "--progress=off",
                f"--workdir={tmp_path / 'w'}", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "AttentionTimeModel(" not in done.stdout and lines[0].startswith("model: tiny-gqa (GQA, 4 layers")
    assert lines[1].startswith("profiled ") and "time model: a layer takes" in lines[1]
    assert "of which attention" in lines[1]
    assert "the profiled times" in lines[1]
    assert any(line.startswith("compiled ") and "of XLA compilation" in line for line in lines)
    stages = {s["stage"]: s for s in json.loads((tmp_path / "w" / "ablation.json").read_text())["stages"]}
    assert list(stages) == ["setup", "seed store", "compile", "calibrate r0", "basic r0", "oracle r0",
                            "calibrate r1", "basic r1", "oracle r1", "token check"]
    # a cold cache: the compile stage compiles, and the timed runs after it compile nothing
    assert stages["compile"]["compile_s"] > 0 and stages["compile"]["programs"] > 0
    for name in ("calibrate r0", "basic r0", "oracle r0", "calibrate r1", "basic r1", "oracle r1"):
        assert stages[name]["programs"] == 0 and stages[name]["compile_s"] == 0.0, (name, stages)
    named = [line for line in lines if ": " in line and not line.startswith(" ")]
    assert not [line for line in named if line.split(": ", 1)[1] == "nan"], named
    assert "jct_s_basic_ci95" in done.stdout and "jct_s_basic_lo" not in done.stdout  # lo/hi: metrics.json only
    assert "jct_s_basic_lo" in json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert "snic_max_avg_basic" in done.stdout and "snic_max_avg_oracle" not in done.stdout


def test_a_comma_list_of_variants_is_told_the_tuple_syntax():
    from dualpath_jax.sched.variants import get_variant
    tuple_syntax = r"""--config.variants="\('basic','dualpath'\)\""""
    with pytest.raises(ConfigError, match="unknown variant 'basic,dualpath'.*" + tuple_syntax) as e:
        get_variant("basic,dualpath")
    assert e.value.field == "variants"
    with pytest.raises(ConfigError, match=tuple_syntax):  # --config.variants='(basic,dualpath)': no inner quotes
        get_variant("(basic,dualpath)")
    with pytest.raises(ConfigError) as e:
        get_variant("basics")
    assert "tuple" not in str(e.value)


def test_a_variant_may_be_any_combination_of_the_switches():
    from dualpath_jax.sched.variants import VARIANTS, get_variant
    v = get_variant("dual+full+dualpath")
    assert (v.name, v.loading, v.prefill, v.policy) == ("dual+full+dualpath", "dual", "full", "dualpath")
    for name, ladder in VARIANTS.items():  # the ladder's switches, written out, are the same variant
        written = get_variant(f"{ladder.loading}+{ladder.prefill}+{ladder.policy}")
        assert (written.loading, written.prefill, written.policy) == (ladder.loading, ladder.prefill, ladder.policy)
    for bad, problem in (("dual+full", "'<loading>\\+<prefill>\\+<policy>'"),
                         ("dual+chunked+dualpath", "prefill must be one of \\['full', 'layerwise'\\]"),
                         ("disk+full+dualpath", "loading must be one of"),
                         ("dual+full+fifo", "policy must be one of")):
        with pytest.raises(ConfigError, match=problem) as e:
            get_variant(bad)
        assert e.value.field == "variants"


def test_a_custom_variant_runs_its_switches_in_a_study(tmp_path):
    """Written out, the ladder's dualpath is the same run; DualPath without layer-wise prefill
    differs from both its neighbours."""
    done = _run("run_sim.py", ABLATION_TINY, "--config.num_agents=(32,)",
                "--config.variants=('basic','dualpath','dual+layerwise+dualpath','dual+full+dualpath')",
                f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 0, done.stderr[-2000:]
    named = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert named["jct_s_dual+layerwise+dualpath"] == named["jct_s_dualpath"]
    assert named["jct_s_dual+full+dualpath"] not in (named["jct_s_dualpath"], named["jct_s_basic"])
    assert "speedup_dual+full+dualpath_vs_basic" in done.stdout


def test_a_study_s_workload_error_names_the_field_the_user_sets(tmp_path):
    traces = tmp_path / "traces"
    traces.mkdir()
    doc = {"id": "one", "block_size": 64, "requests": [
        {"t": 0.0, "type": "n", "in": 200, "out": 4, "hash_ids": [1, 2, 3]}]}
    (traces / "one.json").write_text(json.dumps(doc))
    done = _run("run_sim.py", ABLATION_TINY, "--config.workload.source=agentic", f"--config.workload.path={traces}",
                f"--workdir={tmp_path / 'w'}")
    (line,) = _lines(done.stderr)  # the ablation sets its agent counts at the top level, not under workload
    assert done.returncode == 1 and line.startswith("ConfigError: num_agents: the agentic trace ") and \
        "holds only 1 agent within MAL 64K (got 32; an agentic trace file is one agent" in line


def test_an_engine_config_given_to_the_simulator_and_back_is_named_as_such(tmp_path):
    done = _run("run_sim.py", "--config=configs/engine_ablation.py:quick", f"--workdir={tmp_path / 'a'}")
    assert done.returncode == 1 and _lines(done.stderr) == [
        "ConfigError: study: the config has no study: it is the real engine's config (configs/engine_ablation.py), "
        "which experiments/run_engine.py runs"]
    done = _run("run_engine.py", ABLATION_TINY, f"--workdir={tmp_path / 'b'}")
    assert done.returncode == 1 and _lines(done.stderr) == [
        "ConfigError: study: 'ablation': a simulator study's config, which experiments/run_sim.py runs (the "
        "engine's is configs/engine_ablation.py)"]


def test_trace_stats_and_reproduce_paper_refuse_empty_or_negative_selections(tmp_path):
    for script, args, expected in [
            ("trace_stats.py", ("--source=agentic", "--max_files=-1"), "ConfigError: max_files: must be >= 0"),
            ("trace_stats.py", ("--seed=-1", "--num_agents=10"), "ConfigError: seed: must be >= 0 (got -1)"),
            ("trace_stats.py", ("--num_agents=1000000000",), "ConfigError: num_agents: must be <= 1,000,000"),
            ("reproduce_paper.py", ("--studies=", "--config_arg=tiny"), "UsageError: --studies: names no study"),
            ("reproduce_paper.py", ("--seeds=1000000000000", "--config_arg=tiny"),
             "UsageError: --seeds: must be an integer in [1, 1000]")]:
        done = _run(script, *args, f"--workdir={tmp_path / 'w'}", "--overwrite")
        assert done.returncode == 1, (script, args)
        (line,) = _lines(done.stderr)
        assert line.startswith(expected), (args, line)


def test_a_misspelled_config_file_variant_is_one_line_with_the_closest_variant(tmp_path):
    done = _run("run_engine.py", f"--config={ROOT / 'configs' / 'engine_ablation.py'}:qiuck", f"--workdir={tmp_path}")
    assert done.returncode == 1
    assert _lines(done.stderr) == ["ConfigError: config: configs/engine_ablation.py has no variant 'qiuck'; did you "
                                   "mean quick? (known: quick, big)"]
    done = _run("soak.py", f"--config={ROOT / 'configs' / 'soak.py'}:quick", f"--workdir={tmp_path}")
    assert done.returncode == 1
    assert _lines(done.stderr) == ["ConfigError: config: configs/soak.py has no variant 'quick' (it takes none)"]


def test_the_engine_script_names_a_missing_trace_folder_and_a_bad_divisor_in_one_line(tmp_path):
    done = _run("run_engine.py", f"--config.workload.traces_dir={tmp_path / 'none'}", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1
    (line,) = _lines(done.stderr)
    assert line.startswith("ConfigError: workload.traces_dir: ")
    assert "neither a folder nor a trace file (it does not exist)" in line
    done = _run("run_engine.py", "--config.workload.token_divisor=7", f"--workdir={tmp_path / 'w2'}")
    assert done.returncode == 1
    (line,) = _lines(done.stderr)  # the trace's own block size (64 tokens) is what 7 must divide
    assert line.startswith("ConfigError: workload.token_divisor: must divide the 64-token hash blocks of trace_")
    assert line.endswith(" (got 7)")


def test_the_kernel_benchmark_runs_named_problems_and_checks_pallas_against_the_reference(tmp_path):
    import csv

    done = _run("bench_kernels.py", "--problems=nope", f"--workdir={tmp_path / 'bad'}")
    assert done.returncode == 1
    (line,) = _lines(done.stderr)
    assert line.startswith("ConfigError: problems: unknown for --sizes=auto: nope (known: prefill_192_32,")
    done = _run("bench_kernels.py", "--sizes=quick", "--problems=decode_mla_b4_256,kv_write_b4_32", "--repeats=3",
                f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "w" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["problem"], r["implementation"]) for r in rows] == [
        ("decode_mla_b4_256", "reference"), ("decode_mla_b4_256", "pallas"),
        ("kv_write_b4_32", "reference"), ("kv_write_b4_32", "pallas")]
    for r in rows:
        assert 0 < float(r["time_min_ms"]) <= float(r["time_ms"]) <= float(r["time_max_ms"])
    # the scatter is exact; decode agrees within the bfloat16 bound the script checks
    assert float(rows[3]["max_abs_err"]) == 0.0 and float(rows[1]["max_abs_err"]) < 3e-2
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert metrics["pallas_matches_reference"] == 1
    assert done.stdout.rstrip().splitlines()[-1] == "pallas_matches_reference: 1"
    # --tune: four tile configurations, then the fastest timed again on fresh runs for the figure
    done = _run("bench_kernels.py", "--sizes=quick", "--problems=prefill_192_32", "--tune_problem=prefill_192_32",
                "--repeats=2", f"--workdir={tmp_path / 't'}")
    assert done.returncode == 0, done.stderr[-2000:]
    tried = [line for line in done.stdout.splitlines() if line.startswith("  tune prefill_192_32 [")]
    assert len(tried) == 4
    ms = {line.split("[")[1].split("]")[0]: float(line.split("]: ")[1].split(" ms")[0]) for line in tried}
    # the script compares unrounded times: a configuration tied with the fastest at the printed 1 us may win
    fastest = {desc for desc, t in ms.items() if t == min(ms.values())}
    with open(tmp_path / "t" / "results.csv") as f:
        (pallas,) = [r for r in csv.DictReader(f) if r["implementation"] == "pallas"]
    assert pallas["note"] in {f"{desc} (the fastest of 4, timed again)" for desc in fastest}


def test_field_meanings_come_from_the_source_when_a_compiled_class_has_no_docstring(monkeypatch):
    """The opt-in compiled build keeps no run-time docstrings (mypyc leaves a filler): --print_config's
    meanings are read from the module's .py source instead."""
    from dualpath_jax.config import field_docs
    from dualpath_jax.sim.hardware import HardwareConfig

    want = field_docs(HardwareConfig)
    monkeypatch.setattr(HardwareConfig, "__doc__", "mypyc filler docstring")
    assert field_docs(HardwareConfig) == want and want["gpus_per_node"].startswith("g, engines per node")


def test_a_jit_cache_dir_that_is_a_file_is_one_error_and_a_new_one_is_made(tmp_path):
    from dualpath_jax.studies import cli
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^jit_cache_dir: .*file is a file, not a directory") as e:
        cli.check_jit_cache_dir(str(tmp_path / "file"))
    assert e.value.field == "jit_cache_dir"
    made = tmp_path / "a" / "b"
    assert cli.check_jit_cache_dir(str(made)) == str(made) and made.is_dir()
    assert cli.check_jit_cache_dir("") == ""
    # use_jit_cache: the same check, then JAX's cache there ("" leaves JAX's setting)
    import jax
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        assert cli.use_jit_cache("") == "" and jax.config.jax_compilation_cache_dir == before[0]
        with pytest.raises(ConfigError, match=r"^jit_cache_dir: .*file is a file"):
            cli.use_jit_cache(str(tmp_path / "file"))
        assert jax.config.jax_compilation_cache_dir == before[0]
        cli.use_jit_cache(str(made))
        assert (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs) == \
            (str(made), 0.0)
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
