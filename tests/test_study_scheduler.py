"""Studies in their own layer: typed study configs, the explicit run cache, and a scheduler plug-in
(``tests/policies.py``) that reaches every run of a study and the entry points.

The plug-in :class:`policies.AlwaysDE` reads every dual-loading hit on the DE side, so its effect
is checked against physics rather than recorded numbers: no byte crosses a PE node's storage NIC
in a dual-loading run, the bytes read are the run's hit tokens times the model's KV bytes per
token, and the built-in DualPath scheduler (shorter read queue) does use the PE side.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.model import cost
from dualpath_jax.model.spec import get_spec
from dualpath_jax.sched import ClusterScheduler
from dualpath_jax.studies import RunCache, from_config_dict, run_study
from dualpath_jax.studies.common import WorkloadSpec, sim_config
from dualpath_jax.studies.config import AblationStudyConfig
from dualpath_jax.studies.runs import offline_run
from dualpath_jax.workload import agentic_dir

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # the plug-in module, by name, as a researcher's package would be
from policies import AlwaysDE  # noqa: E402
from config_files import get_config  # noqa: E402
from config_files import load_sim_config as load_config  # noqa: E402

POLICY = "policies:AlwaysDE"


def pe_de_bytes(snic_bytes: dict, prefill_nodes: int) -> tuple[float, float]:
    """(bytes read through PE nodes' SNICs, through DE nodes' SNICs); nodes 0..P-1 are PE nodes."""
    pe_links = {f"snic_read[{i}]" for i in range(prefill_nodes)}
    pe = sum(b for link, b in snic_bytes.items() if link in pe_links)
    return pe, sum(snic_bytes.values()) - pe


# ---- typed configs ---------------------------------------------------------------------------------
def test_config_dict_becomes_a_typed_config_with_the_loaded_scheduler():
    config = load_config("ablation")
    typed = from_config_dict(config)
    assert isinstance(typed, AblationStudyConfig) and typed.scheduler is ClusterScheduler
    assert (typed.mal, typed.num_agents, typed.seed, typed.sim.model) == ("64K", (32, 64), 0, "deepseek-v3.2")
    config.scheduler = POLICY
    assert from_config_dict(config).scheduler is AlwaysDE
    assert AblationStudyConfig(scheduler=POLICY).scheduler is AlwaysDE  # a string is loaded, a class kept
    fig7 = from_config_dict(load_config("fig7", None))
    assert [(r.key, r.sim.model, r.sim.prefill_nodes, r.sim.decode_nodes) for r in fig7.rows] == [
        ("ds27b", "ds-27b", 1, 1), ("ds660b", "deepseek-v3.2", 2, 4), ("qwen32b", "qwen2.5-32b", 1, 2)]
    assert fig7.rows[2].sim.hardware.dram_buffer_bytes == 320e9 and fig7.rows[2].sim.kv_dtype == "fp16"
    assert fig7.rows[0].sim.hardware.dram_buffer_bytes == fig7.sim.hardware.dram_buffer_bytes  # row merged on base


@pytest.mark.parametrize("change,field", [
    ({"scheduler": "nope:Nope"}, "scheduler"),
    ({"scheduler": "policies:NotAScheduler"}, "scheduler"),
    ({"scheduler": "no_colon"}, "scheduler"),
    ({"num_agent": (8,)}, "num_agent"),
    ({"variants": ("basic", "fast")}, "variants"),
    ({"num_agents": (8, 0)}, "num_agents"),
    ({"mal": "16K"}, "mal"),
    ({"study": "fig99"}, "study"),
    ({"seeds": 0}, "seeds"),
    ({"seeds": 1.5}, "seeds"),
])
def test_config_errors_name_the_field(change, field):
    data = {**load_config("ablation").to_dict(), **change}
    with pytest.raises(ConfigError) as e:
        from_config_dict(data)
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")


def test_row_and_case_errors_name_the_field():
    online = load_config("online").to_dict()
    with pytest.raises(ConfigError, match="row_order"):
        from_config_dict({**online, "row_order": ("ds27b", "gpt")})
    online["rows"]["ds27b"]["aps_grdi"] = (1.0,)
    with pytest.raises(ConfigError, match=r"rows\.ds27b\.aps_grdi"):
        from_config_dict(online)
    table3 = load_config("table3").to_dict()
    with pytest.raises(ConfigError, match="offline_cases"):
        from_config_dict({**table3, "offline_cases": (("2x2", 8),)})
    with pytest.raises(ConfigError, match="scale"):
        from_config_dict({**load_config("fig9").to_dict(), "scale": ("append", "think")})
    with pytest.raises(ConfigError, match=r"workload\.token_divisor"):
        from_config_dict({**load_config("fig8").to_dict(), "workload": {"mal": "32K", "token_divisor": 0}})


# ---- the run cache ---------------------------------------------------------------------------------
def test_run_cache_is_an_lru_owned_by_the_caller():
    cache = RunCache(max_entries=2)
    calls = []

    def compute(k):
        return lambda: calls.append(k) or k * 10

    assert cache.get_or_run("a", compute(1)) == (10, False)
    assert cache.get_or_run("b", compute(2)) == (20, False)
    assert cache.get_or_run("a", compute(99)) == (10, True)  # "a" is now the most recent
    assert cache.get_or_run("c", compute(3)) == (30, False)  # evicts "b", the least recent
    assert [k for k, _ in cache.items()] == ["a", "c"] and calls == [1, 2, 3]
    assert (cache.hits, cache.misses, len(cache)) == (1, 3, 2)
    with pytest.raises(ConfigError, match="max_entries"):
        RunCache(max_entries=0)


def test_offline_runs_are_cached_per_scheduler_and_equal_fresh_ones():
    base = sim_config({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1})
    wl = WorkloadSpec(mal="32K", num_agents=6, token_divisor=8)
    cache = RunCache()
    first = offline_run(base, "dualpath", wl, None, cache=cache)
    again = offline_run(base, "dualpath", wl, None, cache=cache)
    fresh = offline_run(base, "dualpath", wl, None)  # no cache: computed anew
    assert (first["cached"], again["cached"], fresh["cached"]) == (False, True, False)
    assert again["jct_s"] == first["jct_s"] == fresh["jct_s"] and again["snic_bytes"] == fresh["snic_bytes"]
    other = offline_run(base, "dualpath", wl, None, scheduler_cls=AlwaysDE, cache=cache)
    assert not other["cached"] and len(cache) == 2  # another scheduler is another run


# ---- the plug-in through studies ----------------------------------------------------------------------
def test_custom_policy_runs_through_the_ablation(tmp_path):
    config = load_config("ablation")
    config.num_agents = (16,)
    config.variants = ("basic", "dpl", "dualpath")
    builtin = from_config_dict(config)
    custom = AblationStudyConfig(sim=builtin.sim, mal=builtin.mal, num_agents=builtin.num_agents,
                                 variants=builtin.variants, scheduler=POLICY)
    named = {}
    for name, typed in (("builtin", builtin), ("custom", custom)):
        named[name] = run_study(typed, tmp_path / name, log=lambda s: None)
    out = {name: json.loads((tmp_path / name / "ablation.json").read_text()) for name in named}
    assert out["custom"]["scheduler"] == POLICY and out["builtin"]["scheduler"] == ""
    p = builtin.sim.prefill_nodes
    pe_custom = {v: pe_de_bytes(out["custom"]["variants"][v]["snic_bytes"], p) for v in builtin.variants}
    pe_builtin = {v: pe_de_bytes(out["builtin"]["variants"][v]["snic_bytes"], p) for v in builtin.variants}
    for v in ("dpl", "dualpath"):  # dual loading: every block through a DE node's SNIC
        assert pe_custom[v][0] == 0.0 and pe_custom[v][1] > 0.0
        assert sum(pe_custom[v]) == pytest.approx(sum(pe_builtin[v]), rel=1e-12)  # same hits, other side
    assert pe_builtin["dualpath"][0] > 0.0  # the built-in read-side choice uses PE SNICs too
    assert pe_custom["basic"] == pe_builtin["basic"] and pe_custom["basic"][1] == 0.0  # pe_read: the hook's default
    assert named["custom"]["jct_s_basic"] == named["builtin"]["jct_s_basic"]
    # the tables say which policy they hold (the built-in one is not named)
    assert (tmp_path / "custom" / "ablation.md").read_text().splitlines()[0].endswith(f"(1 seed; scheduler {POLICY})")
    assert "scheduler" not in (tmp_path / "builtin" / "ablation.md").read_text().splitlines()[0]


def test_custom_policy_runs_through_fig8_and_every_run_uses_it(tmp_path):
    config = load_config("fig8")
    config.scheduler = POLICY
    typed = from_config_dict(config)
    cache = RunCache()
    run_study(typed, tmp_path, log=lambda s: None, cache=cache)
    runs = [(key, s) for key, s in cache.items() if key[0] == "offline"]
    assert len(runs) == len(typed.clusters) * len(typed.num_agents) * len(typed.variants)
    kvb = cost.stored_kv_bytes_per_token(get_spec(typed.sim.model), typed.sim.kv_dtype)
    for (_, cfg, scheduler_cls, _wl), s in runs:
        assert scheduler_cls is AlwaysDE
        pe, de = pe_de_bytes(s["snic_bytes"], cfg.prefill_nodes)
        assert pe + de == pytest.approx(s["hit_tokens"] * kvb, rel=1e-9)  # every hit byte read once
        if cfg.loading == "dual":
            assert pe == 0.0 and de > 0.0
        else:
            assert de == 0.0
    assert json.loads((tmp_path / "fig8.json").read_text())["results"]


# ---- the plug-in from the command line -----------------------------------------------------------------
def _run(script, *args):
    path = [str(TESTS)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_run_sim_takes_a_scheduler_plug_in(tmp_path):
    done = _run("run_sim.py", f"--config={ROOT / 'configs' / 'sim_ablation.py'}:tiny", "--config.num_agents=(8,)",
                f"--config.scheduler={POLICY}", f"--workdir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"scheduler {POLICY}" in done.stdout
    assert json.loads((tmp_path / "config.json").read_text())["scheduler"] == POLICY
    out = json.loads((tmp_path / "ablation.json").read_text())
    assert out["scheduler"] == POLICY
    for v in ("dpl", "dualpath"):
        pe, de = pe_de_bytes(out["variants"][v]["snic_bytes"], 2)
        assert pe == 0.0 and de > 0.0


def test_run_sim_rejects_a_bad_scheduler_naming_the_field(tmp_path):
    done = _run("run_sim.py", f"--config={ROOT / 'configs' / 'sim_ablation.py'}:tiny", "--config.scheduler=nope:Nope",
                f"--workdir={tmp_path / 'w'}")
    assert done.returncode != 0
    assert "ConfigError: scheduler: cannot import module 'nope'" in done.stderr
    assert "(a module of your own must be importable: run from its folder with PYTHONPATH=." in done.stderr
    assert not (tmp_path / "w").exists()  # checked before the workdir is touched


BOTH_RUNTIMES = pytest.mark.parametrize("script, config", [
    ("run_sim.py", "sim_ablation.py:tiny"),
    pytest.param("run_engine.py", "engine_ablation.py:quick", marks=pytest.mark.skipif(
        not agentic_dir().is_dir(), reason="shared traces not available")),
])


def _failed_in_one_line(tmp_path, script, config, *args) -> str:
    """Run ``script`` with ``config`` and ``args``; check it failed in one line (no traceback) with
    its workdir marked failed, and return that line."""
    done = _run(script, f"--config={ROOT / 'configs' / config}", *args, f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert json.loads((tmp_path / "w" / "status.json").read_text())["status"] == "failed"
    return done.stderr.strip().splitlines()[-1]


@BOTH_RUNTIMES
def test_a_scheduler_that_stalls_the_run_is_one_line_saying_what_waits(tmp_path, script, config):
    line = _failed_in_one_line(tmp_path, script, config, "--config.scheduler=policies:NeverOnADE")
    assert re.fullmatch(r"RunStalled: (simulation|engine run) stalled at t = [0-9.]+ s: .*waits? for a DE\. "
                        r"Scheduler: NeverOnADE", line), line


@BOTH_RUNTIMES
def test_a_scheduler_that_breaks_the_protocol_is_one_line_naming_its_hook(tmp_path, script, config):
    line = _failed_in_one_line(tmp_path, script, config, "--config.scheduler=policies:DEUnderPEReads",
                               "--config.variants=('basic',)")
    assert re.fullmatch(r"PolicyError: DEUnderPEReads\.read_plan: \('de', \d+\) for \d+ hit blocks under "
                        r"loading='pe_read': side 'de' is not one of 'pe' .*", line), line


def test_run_sim_rejects_an_override_the_study_sets_per_run(tmp_path):
    done = _run("run_sim.py", f"--config={ROOT / 'configs' / 'sim_ablation.py'}:tiny", "--config.sim.loading", "split",
                f"--workdir={tmp_path / 'w'}")
    assert done.returncode != 0
    assert "ConfigError: sim.loading: study 'ablation' sets it for each run from config.variants" in done.stderr


def test_reproduce_paper_applies_the_scheduler_to_every_study(tmp_path):
    done = _run("reproduce_paper.py", f"--workdir={tmp_path}", "--config_arg=tiny", "--studies=fig8,pd_sweep",
                f"--scheduler={POLICY}")
    assert done.returncode == 0, done.stderr[-3000:]
    for study in ("fig8", "pd_sweep"):
        assert json.loads((tmp_path / study / "config.json").read_text())["scheduler"] == POLICY
    assert f"Scheduler plug-in: `{POLICY}`" in (tmp_path / "REPORT.md").read_text()
    fig8, pd = from_config_dict(load_config("fig8")), from_config_dict(load_config("pd_sweep"))
    runs = len(fig8.clusters) * len(fig8.num_agents) * len(fig8.variants) + len(pd.clusters) * len(pd.variants)
    assert done.stdout.count(f"[{POLICY}]") == runs  # every run's log line names the plug-in


def test_engine_ablation_config_checks_the_scheduler():
    from dualpath_jax.studies.engine_ablation import check_config

    config = get_config("engine_ablation", "quick")
    assert config.scheduler == ""
    config.scheduler = POLICY
    check_config(config)  # a loadable plug-in passes
    config.scheduler = "policies:NotAScheduler"
    with pytest.raises(ConfigError) as e:
        check_config(config)
    assert e.value.field == "scheduler" and "not a dualpath_jax.sched.ClusterScheduler subclass" in str(e.value)
