"""The P/D advisor (dualpath_jax.studies.advisor): Eq. 9 pruning, the coarse-to-fine search against
a brute-force minimum, the binding resource in real simulated runs, validation bookkeeping and
the script's outputs and errors."""

import json
import math

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.sim import analysis
from dualpath_jax.studies import RunCache, advisor_runs
from dualpath_jax.studies.advisor import AdvisorConfig, Evaluation, _prune, advise, exhaustive, regret
from dualpath_jax.studies.advisor_report import advisor_config, validate, validation_cases, write_advice
from dualpath_jax.studies.common import WorkloadSpec, sim_config
from dualpath_jax.workload import agentic_dir

from config_files import get_config
from script_runs import run_script

KNOBS = dict(buffer_gb=(80.0, 40.0, 160.0), alpha_beta=((3.0, 5.0), (1.5, 2.5), (6.0, 10.0)),
             compute_quota_s=(0.3, 0.15, 0.6))


def _cfg(nodes, **kw):
    return AdvisorConfig(sim=sim_config({"model": "ds-27b"}), nodes=nodes, workload=WorkloadSpec(num_agents=4),
                         **{**KNOBS, "seeds": 1, **kw})


@pytest.fixture
def analytic(monkeypatch):
    """Replace the simulated offline runs by ``objective(choice, seed)`` (None: infeasible)."""
    def install(objective):
        def offline(self, choices, seed):
            self._keys.update((c, seed) for c in choices)
            out = []
            for c in choices:
                v = objective(c, seed)
                out.append(Evaluation(c, seed, math.inf, False, "does not fit") if v is None else
                           Evaluation(c, seed, float(v), stats={"utilization": {"snic": 0.5, "pe_compute": 0.9}}))
            return out
        monkeypatch.setattr(advisor_runs.Evaluator, "_offline", offline)
    return install


def _brute_force(cfg, objective):
    vals = {c: objective(c, 0) for c in cfg.space()}
    feasible = {c: v for c, v in vals.items() if v is not None}
    return min(feasible, key=lambda c: (feasible[c], cfg.space().index(c)))


# ---- Eq. 9 pruning --------------------------------------------------------------------------------
def test_pruning_keeps_the_range_and_the_nearest_split_outside_each_end():
    rng = analysis.PDRange(lower=0.5, upper=1.5, upper_terms={}, pe_cnic_read_ok=True, pe_dram_ok=True)
    # P/D of 10 nodes: 1/9, 2/8, 3/7 = .43 | 4/6, 5/5, 6/4 = 1.5 | 7/3 = 2.3, 8/2, 9/1
    assert _prune(10, rng) == [3, 4, 5, 6, 7]
    empty = analysis.PDRange(lower=2.0, upper=1.0, upper_terms={}, pe_cnic_read_ok=True, pe_dram_ok=True)
    assert _prune(10, empty) == list(range(1, 10))


def test_pruning_on_the_paper_hardware_keeps_the_eq9_ratios_of_1_7_to_7_2():
    rng = analysis.pd_range_for_hardware(sim_config({}).hardware)
    assert rng.lower == pytest.approx(1 / 7) and rng.upper == pytest.approx(3.5)
    # 16 nodes: 1/15 is below 1/7 (kept: nearest below), 2/14 = 1/7 .. 12/4 = 3 inside, 13/3 above (kept), 14, 15 out
    assert _prune(16, rng) == list(range(1, 14))


# ---- the search against brute force ----------------------------------------------------------------
def _bowl(p_star, *, quota=0.15, ab=(1.5, 2.5)):
    def objective(c, seed):
        v = 100.0 + 3.0 * (c.p - p_star) ** 2
        v *= 0.99 if c.compute_quota_s == quota else 1.0
        v *= 0.98 if (c.alpha_s, c.beta_s) == ab else 1.0
        return v
    return objective


@pytest.mark.parametrize("p_star", [1, 4, 7, 12])
def test_the_search_finds_the_brute_force_optimum_with_a_fifth_of_the_runs(analytic, p_star):
    cfg = _cfg(16, prune=False)
    objective = _bowl(p_star)
    analytic(objective)
    advice = advise(cfg, log=None)
    best = _brute_force(cfg, objective)
    assert advice.best.choice == best
    assert (best.p, best.compute_quota_s, best.alpha_s) == (p_star, 0.15, 1.5)
    assert advice.runs <= 0.2 * len(cfg.space())  # 15 splits x 27 knob combinations


def test_an_optimum_beyond_the_kept_edge_is_found_by_walking_out(analytic):
    cfg = _cfg(16)  # the paper's hardware: splits 14 and 15 are pruned (P/D above 7/2)
    objective = lambda c, seed: 1000.0 - 10.0 * c.p  # noqa: E731  (more PE nodes is always better)
    analytic(objective)
    advice = advise(cfg, log=None)
    assert advice.kept == list(range(1, 14))
    assert advice.best.choice.p == 15 and advice.best.choice == _brute_force(cfg, objective)
    assert [c.p for c in advice.stages["pd_edge"]] == [14, 15]


def test_knobs_change_the_split_when_they_favour_another(analytic):
    # at the first knob values P = 5 is best; quota 0.6 is better there and moves the optimum to P = 6
    def objective(c, seed):
        centre = 6 if c.compute_quota_s == 0.6 else 5
        return 100.0 + 5.0 * (c.p - centre) ** 2 - (8.0 if c.compute_quota_s == 0.6 else 0.0)
    cfg = _cfg(10, prune=False)
    analytic(objective)
    advice = advise(cfg, log=None)
    assert advice.best.choice == _brute_force(cfg, objective)
    assert (advice.best.choice.p, advice.best.choice.compute_quota_s) == (6, 0.6)


def test_infeasible_splits_are_skipped_and_a_budget_that_fits_nothing_is_one_error(analytic):
    cfg = _cfg(8, prune=False)
    objective = lambda c, seed: None if c.p < 3 else 50.0 + c.p  # noqa: E731
    analytic(objective)
    advice = advise(cfg, log=None)
    assert advice.best.choice.p == 3 and advice.best.feasible
    analytic(lambda c, seed: None)
    with pytest.raises(ConfigError, match="^nodes: no configuration of 8 nodes holds the workload: does not fit"):
        advise(cfg, log=None)


def test_a_feasible_split_between_infeasible_coarse_points_is_still_found(analytic):
    cfg = _cfg(8, prune=False)  # the coarse batch is P = 1, 3, 5, 7: none fits; only P = 4 does
    objective = lambda c, seed: 70.0 if c.p == 4 else None  # noqa: E731
    analytic(objective)
    assert advise(cfg, log=None).best.choice.p == 4


def test_ties_go_to_the_earlier_configuration_as_in_the_exhaustive_sweep(analytic):
    cfg = _cfg(6, prune=False)
    analytic(lambda c, seed: 7.0)
    advice = advise(cfg, log=None)
    _, best = exhaustive(cfg)
    assert advice.best.choice == best.choice == cfg.space()[0]


def test_the_interval_comes_from_the_seeds(analytic, tmp_path):
    cfg = _cfg(6, prune=False, seeds=4)
    analytic(lambda c, seed: 10.0 + abs(c.p - 2) + seed)  # seeds 0..3 of the best: 10, 11, 12, 13
    advice = advise(cfg, log=None)
    assert advice.per_seed == [10.0, 11.0, 12.0, 13.0]
    named = write_advice(tmp_path, advice)
    assert named["predicted_jct_s"] == 11.5
    # Student t_{0.975, 3} = 3.182446 times s / sqrt(4)
    assert named["predicted_jct_s_ci95"] == pytest.approx(3.182446 * np.std([10, 11, 12, 13], ddof=1) / 2, rel=1e-5)
    assert named["recommended_cluster"] == "2P4D" and named["binding_resource"] == "pe_compute"


@pytest.mark.skipif(not agentic_dir().is_dir(), reason="shared traces not available")
def test_an_offline_trace_is_one_run_whatever_the_seeds(analytic):
    cfg = AdvisorConfig(sim=sim_config({"model": "ds-27b"}), nodes=4, seeds=3,
                        workload=WorkloadSpec(source="agentic", num_agents=2, mal="32K"))
    analytic(lambda c, seed: 5.0 + c.p)
    advice = advise(cfg, log=None)
    assert advice.per_seed == [6.0] and advice.runs == 3  # the three splits, no seed repeats


def test_regret_for_both_objectives():
    assert regret(_cfg(4), 110.0, 100.0) == pytest.approx(0.10)
    assert regret(_cfg(4, objective="max_aps"), 9.0, 10.0) == pytest.approx(0.10)
    assert math.isnan(regret(_cfg(4), 1.0, math.inf))


# ---- utilization in real simulated runs --------------------------------------------------------------
def _one_run(model_fields, variant="dualpath", **wl):
    cfg = AdvisorConfig(sim=sim_config({"model": "ds-27b", **model_fields}), nodes=3, variant=variant,
                        workload=WorkloadSpec(mal="32K", num_agents=16, token_divisor=8, **wl), seeds=1)
    ev = advisor_runs.Evaluator(cfg, RunCache(max_entries=64))
    return ev.evaluate([cfg.base_choice.with_split(1, 3)])[0]


def test_a_storage_bound_probe_binds_on_the_snics():
    # compute 1000x an H800, 0.2 GB/s of storage per node: reads take almost the whole run
    e = _one_run({"hardware": {"peak_flops": 1979e15, "snic_bytes_per_s": 2e8}}, gen_factor=1e-3)
    u = e.stats["utilization"]
    assert max(u, key=u.get) == "snic" and u["snic"] > 0.9


def test_slow_compute_binds_on_the_pes_and_oracle_reads_nothing():
    e = _one_run({"hardware": {"peak_flops": 2e13}}, variant="oracle")
    u = e.stats["utilization"]
    assert u["snic"] == 0.0
    assert max(u, key=u.get) == "pe_compute" and u["pe_compute"] > 0.5
    assert 0.0 < u["de_hbm"] < 1.0


# ---- validation and the script ------------------------------------------------------------------------
def test_validation_compares_the_advice_with_the_exhaustive_sweep_of_the_same_runs(tmp_path):
    case = advisor_config(get_config("advise", "tiny"), name="tiny")
    named = validate([case], tmp_path, RunCache(max_entries=1 << 12), log=lambda s: None)
    row = json.loads((tmp_path / "validate.json").read_text())["rows"][0]
    sweep = json.loads((tmp_path / "tiny" / "advise.json").read_text())["sweep"]
    values = [r["objective"] for r in sweep if r["feasible"]]
    assert row["sweep_value"] == min(values)  # the sweep's best is the minimum over every configuration
    assert row["space"] == len(sweep) == 3 * 2 * 2
    mine = [r["objective"] for r in sweep if r["cluster"] == row["advisor_choice"].split()[0]
            and f"buffer {r['buffer_gb']:g} GB alpha {r['alpha_s']:g} s beta {r['beta_s']:g} s quota "
            f"{r['compute_quota_s']:g} s" in row["advisor_choice"]]
    assert mine == [row["advisor_value"]]  # the same run, memoised: the advisor saw what the sweep saw
    assert named["tiny_regret"] == pytest.approx(row["advisor_value"] / row["sweep_value"] - 1.0)
    extra = row["advisor_runs"] - row["advisor_search_runs"]
    assert named["advisor_run_fraction"] == pytest.approx(row["advisor_runs"] / (row["sweep_runs"] + extra))
    assert (tmp_path / "tiny" / "advise.png").stat().st_size > 0


def test_the_validation_config_names_three_workloads_with_their_own_fields():
    cases = validation_cases(get_config("advise", "validate"))
    assert [c.name for c in cases] == ["ds660b_offline_64k", "ds27b_online", "qwen32b_offline_32k"]
    ds660b, ds27b, qwen = cases
    assert (ds660b.sim.model, ds660b.nodes, ds660b.objective, ds660b.workload.mal) == ("deepseek-v3.2", 6, "jct", "64K")
    assert (ds27b.objective, ds27b.sim.hardware.gpus_per_node, ds27b.window.horizon_s) == ("max_aps", 4, 150.0)
    assert ds660b.sim.hardware.gpus_per_node == 8  # a case's override does not leak into the others
    assert (qwen.sim.kv_dtype, qwen.sim.weight_dtype) == ("fp16", "fp8")
    assert all(len(c.space()) == (c.nodes - 1) * 27 for c in cases)
    bad = get_config("advise", "validate")
    bad.cases.ds27b_online.nodes = 1
    with pytest.raises(ConfigError, match=r"^cases\.ds27b_online\.nodes: must be >= 2"):
        validation_cases(bad)


def test_advisor_config_errors_name_the_field_as_the_config_spells_it():
    cfg = get_config("advise", "tiny")
    cfg.aps_search.max_runs = 0
    with pytest.raises(ConfigError, match=r"^aps_search\.max_runs: must be > 0 \(got 0\)$"):
        advisor_config(cfg)
    cfg = get_config("advise", "tiny")
    cfg.compute_quota_s = ("(nan,)",)  # --config.compute_quota_s=(nan,) arrives as a tuple of one string
    with pytest.raises(ConfigError, match=r"^compute_quota_s: must be a tuple of numbers, e.g. \(0.2, 0.3\)"):
        advisor_config(cfg)


def _run(*args, timeout=600):
    return run_script("advise.py", *args, timeout=timeout)


def test_a_hugging_face_config_is_a_model(tmp_path):
    done = _run("--config=configs/advise.py:tiny", "--config.model=tests/data/hf/qwen2_tiny/config.json",
                f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "advising tests/data/hf/qwen2_tiny/config.json: 4 nodes" in done.stdout


def test_the_script_prints_the_recommendation_and_writes_it(tmp_path):
    done = _run("--config=configs/advise.py:tiny", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines()[-16:] if ": " in line)
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert lines["recommended_cluster"] == metrics["recommended_cluster"]
    p, d = int(lines["recommended_p"]), int(lines["recommended_d"])
    assert p + d == 4 and lines["recommended_cluster"] == f"{p}P{d}D"
    assert float(lines["predicted_jct_s"]) > 0 and "predicted_jct_s_ci95" in lines
    assert lines["binding_resource"] in advisor_runs.RESOURCES
    for name in ("advise.md", "advise.csv", "advise_runs.csv", "advise.png", "advise.json"):
        assert (tmp_path / "w" / name).is_file()


@pytest.mark.parametrize("override,expected", [
    ("--config.nodes=1", "nodes: must be >= 2"),
    ("--config.hardware.gpu=x100", "hardware.gpu: unknown GPU 'x100'"),
    ("--config.objective=latency", "objective:"),
    ("--config.alpha_beta=((3,),)", "alpha_beta: expected (alpha_s, beta_s) pairs"),
    ("--config.model=/no/such/config.json", "ConfigError: model: unknown model '/no/such/config.json'"),
])
def test_bad_input_is_one_line_naming_the_field(tmp_path, override, expected):
    done = _run("--config=configs/advise.py:tiny", override, f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 1
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and expected in lines[0], done.stderr[-2000:]
