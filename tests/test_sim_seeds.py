"""Studies over seeds: the interval helpers against hand computation, per-seed workloads and
ratios, and the online max-APS searches run per seed (their gains taken within a seed)."""

import csv
import json
import math

import numpy as np
import pytest

from dualpath_jax.studies import from_config_dict, run_study
from dualpath_jax.studies.common import WorkloadSpec

from config_files import load_sim_config as load_config


# ---- seeds: R runs per configuration, mean and 95% CI (issue #23) ------------------------------------
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305}  # Student t, two-sided 95%, by dof (any t table)


def _hand_ci(values):
    """(mean, half width) of a sample by hand: t_{0.975, n-1} * s / sqrt(n), s with n - 1."""
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T975[n - 1] * s / math.sqrt(n)


def test_estimate_and_helpers_against_hand_computation():
    from dualpath_jax.studies.seeds import aggregate, arrival_seeds, estimate, fmt, printed, put, seed_workloads
    e = estimate([1.0, 2.0, 4.0])  # mean 7/3, s = sqrt(7/3)
    assert (e.mean, e.n) == (pytest.approx(7 / 3), 3)
    assert e.half == pytest.approx(4.302652730 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-8)
    assert (e.lo, e.hi) == (pytest.approx(e.mean - e.half), pytest.approx(e.mean + e.half))
    one = estimate([5.0])
    assert one.mean == 5.0 and math.isnan(one.half) and math.isnan(one.lo) and one.n == 1
    assert estimate([2.0, float("nan"), 4.0]).n == 2 and estimate([2.0, float("nan"), 4.0]).mean == 3.0
    assert math.isnan(estimate([float("nan")]).mean)
    named = {}
    put(named, "x", [1.0, 3.0])  # s = sqrt(2): half = 12.706 * sqrt(2) / sqrt(2)
    assert named["x"] == 2.0 and named["x_ci95"] == pytest.approx(12.706204736) and \
        named["x_lo"] == pytest.approx(2.0 - 12.706204736) and named["x_hi"] == pytest.approx(2.0 + 12.706204736)
    assert list(printed({**named, "other_lo": 1.0})) == ["x", "x_ci95", "other_lo"]  # only put's companions go
    assert fmt(1.23456, 0.0123) == "1.235 ± 0.012" and fmt(1.23456, float("nan")) == "1.235"
    assert fmt(1470.3, 142.7) == "1470 ± 140" and fmt(0.028, 6.4e-5) == "0.028000 ± 6.4e-05"
    assert fmt(1.0, 0.0) == "1 ± 0" and fmt(3.1, 0.996) == "3.1 ± 1.0"
    # never coarser than the interval: the mean to the half width's last decimal place
    assert fmt(1.00012, 5.9e-6) == "1.0001200 ± 5.9e-06" and fmt(12.0, 0.5) == "12.00 ± 0.50"
    # positional above 1e4 (not 1.235e+04), and a rounding-noise width adds at most 8 significant digits
    assert fmt(12345.6, 0.8) == "12345.60 ± 0.80" and fmt(28650.2, 41) == "28650 ± 41"
    assert fmt(0.3, 3.2e-17) == "0.30000000 ± 3.2e-17" and fmt(1234567, 89000) == "1.235e+06 ± 89000"
    wl = WorkloadSpec(mal="32K", num_agents=4, seed=7)
    assert [w.seed for w in seed_workloads(wl, 3)] == [7, 8, 9] and arrival_seeds(2, 3) == [2, 3, 4]
    rows = [{"v": "a", "seed": 0, "x": 1.0, "n": 3, "ok": True}, {"v": "a", "seed": 1, "x": 3.0, "n": 5, "ok": False},
            {"v": "b", "seed": 0, "x": 7.0, "n": 2, "ok": True}]
    assert aggregate(rows, ("v",), count=True) == [
        {"v": "a", "x": 2.0, "x_ci95": pytest.approx(12.706204736), "n": 4.0, "n_ci95": pytest.approx(12.706204736),
         "ok": False, "seeds": 2},
        {"v": "b", "x": 7.0, "x_ci95": pytest.approx(float("nan"), nan_ok=True), "n": 2,
         "n_ci95": pytest.approx(float("nan"), nan_ok=True), "ok": True, "seeds": 1}]


def _ablation(tmp_path, seeds, name):
    from dualpath_jax.studies import RunCache
    config = load_config("ablation")
    config.num_agents = (8,)
    config.variants = ("basic", "dualpath", "oracle")
    config.seeds = seeds
    cache = RunCache()
    named = run_study(from_config_dict(config), tmp_path / name, log=lambda s: None, cache=cache)
    runs = {(key[1].loading, key[1].policy, key[3].seed): s for key, s in cache.items() if key[0] == "offline"}
    return named, runs


def test_two_seeds_run_two_workloads_and_report_the_mean_and_ci_of_per_seed_ratios(tmp_path):
    named, runs = _ablation(tmp_path, 2, "r2")
    assert len(runs) == 2 * 3  # every variant once per seed
    jct = {(v, seed): s["jct_s"] for (loading, policy, seed), s in runs.items()
           for v in [{"pe_read": "basic", "oracle": "oracle"}.get(loading, "dualpath")]}
    # different workloads: the generator's trajectories and the runs' hit tokens differ between seeds
    a, b = (WorkloadSpec(mal="64K", num_agents=8, seed=s).build() for s in (0, 1))
    assert not np.array_equal(a.num_append_tokens[:20], b.num_append_tokens[:20])
    hits = {seed: s["hit_tokens"] for (loading, _, seed), s in runs.items() if loading == "pe_read"}
    assert hits[0] != hits[1] and jct[("basic", 0)] != jct[("basic", 1)]
    speedups = [jct[("basic", r)] / jct[("dualpath", r)] for r in (0, 1)]  # within each seed
    mean, half = _hand_ci(speedups)
    assert named["speedup_dualpath_vs_basic"] == pytest.approx(mean, rel=1e-12)
    assert named["speedup_dualpath_vs_basic_ci95"] == pytest.approx(half, rel=1e-8)
    assert named["speedup_dualpath_vs_basic_lo"] == pytest.approx(mean - half, rel=1e-8)
    over = [jct[("dualpath", r)] / jct[("oracle", r)] for r in (0, 1)]
    assert named["dualpath_over_oracle_jct"] == pytest.approx(sum(over) / 2, rel=1e-12)
    assert named["jct_s_basic_ci95"] == pytest.approx(_hand_ci([jct[("basic", r)] for r in (0, 1)])[1], rel=1e-8)
    out = json.loads((tmp_path / "r2" / "ablation.json").read_text())
    assert [x["jct_s"] for x in out["variants"]["basic"]["by_seed"]] == [jct[("basic", 0)], jct[("basic", 1)]]
    md = (tmp_path / "r2" / "ablation.md").read_text()
    assert "mean ± 95% CI over 2 seeds" in md.splitlines()[0]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("|")]
    cell = dict(zip(table[0], next(row for row in table if row[0] == "dualpath")))["speedup_vs_basic"]
    shown, shown_half = (float(x) for x in cell.split(" ± "))  # the mean to its printed precision
    assert shown == pytest.approx(mean, rel=5e-4) and shown_half == pytest.approx(half, rel=0.05)
    rows = list(csv.DictReader((tmp_path / "r2" / "ablation.csv").open()))
    assert float(rows[1]["speedup_vs_basic_ci95"]) == pytest.approx(half, rel=1e-8)
    # one seed: no interval, and the value of seed 0 alone
    one, runs1 = _ablation(tmp_path, 1, "r1")
    assert one["speedup_dualpath_vs_basic"] == jct[("basic", 0)] / jct[("dualpath", 0)]
    assert math.isnan(one["speedup_dualpath_vs_basic_ci95"]) and math.isnan(one["speedup_dualpath_vs_basic_hi"])
    md1 = (tmp_path / "r1" / "ablation.md").read_text()
    assert md1.splitlines()[0].endswith("(1 seed)") and "±" not in md1


def test_an_offline_trace_study_runs_once_and_reports_one_seed_not_a_zero_width_interval(tmp_path):
    """A trace's trajectories are the same for every seed, so an offline study's seeds would be
    copies of one deterministic run: it runs once and says "1 seed", with no interval (three
    copies would give a half width of 0, an interval claiming certainty the runs do not have)."""
    import json as json_

    from dualpath_jax.studies import RunCache
    path = tmp_path / "m.jsonl"
    rows = [{"timestamp": 100 * i, "input_length": 1100 + 50 * i, "output_length": 8, "hash_ids": [i, i + 1, i + 2]}
            for i in range(12)]
    path.write_text("".join(json_.dumps(r) + "\n" for r in rows))
    config = load_config("ablation")
    config.num_agents = (8,)
    config.variants = ("basic", "dualpath")
    config.seeds = 3
    config.workload.source, config.workload.path, config.workload.mal = "mooncake", str(path), "32K"
    cache = RunCache()
    named = run_study(from_config_dict(config), tmp_path / "w", log=lambda s: None, cache=cache)
    assert sum(key[0] == "offline" for key, _ in cache.items()) == 2  # each variant once
    assert math.isfinite(named["jct_s_basic"]) and math.isnan(named["jct_s_basic_ci95"])
    assert math.isnan(named["speedup_dualpath_vs_basic_ci95"])
    md = (tmp_path / "w" / "ablation.md").read_text()
    assert md.splitlines()[0].endswith("(1 seed)") and "±" not in md


def test_table3_on_a_trace_runs_its_offline_cases_once_and_its_online_cases_per_seed(tmp_path):
    # defect: Table 3 ran its offline cases once per seed on a trace too, and reported R copies of
    # one deterministic JCT as "1.397 +- 0" over R seeds; its online cases do differ by seed
    # (Poisson arrivals), so they keep their R runs and their intervals
    import json as json_

    from dualpath_jax.studies import RunCache
    path = tmp_path / "m.jsonl"
    rows = [{"timestamp": 100 * i, "input_length": 1100 + 10 * i, "output_length": 8, "hash_ids": [i, i + 1, i + 2]}
            for i in range(40)]
    path.write_text("".join(json_.dumps(r) + "\n" for r in rows))
    config = load_config("table3")
    config.seeds = 2
    config.workload.source, config.workload.path, config.workload.mal = "mooncake", str(path), "32K"
    study = from_config_dict(config)
    cache = RunCache()
    named = run_study(study, tmp_path / "w", log=lambda s: None, cache=cache)
    offline = sum(key[0] == "offline" for key, _ in cache.items())
    online = sum(key[0] == "online" for key, _ in cache.items())
    assert offline == len(study.offline_cases) * len(study.variants)  # once each
    assert online == 2 * len(study.online_cases) * len(study.variants)  # per seed
    cluster, n = study.offline_cases[0]
    for v in study.variants:
        assert math.isfinite(named[f"jct_s_{cluster}_{n}_{v}"]) and math.isnan(named[f"jct_s_{cluster}_{n}_{v}_ci95"])
        assert math.isnan(named[f"jct_ratio_large_over_small_{v}_ci95"])
        c, aps, _ = study.online_cases[0]
        assert math.isfinite(named[f"ttft_s_{c}_{aps:g}aps_{v}_ci95"])  # two seeds: an interval
    md = (tmp_path / "w" / "table3.md").read_text()
    assert md.splitlines()[0].endswith("offline rows: 1 run of the trace) (mean ± 95% CI over 2 seeds)")
    saved = json_.loads((tmp_path / "w" / "table3.json").read_text())
    assert (saved["seeds"], saved["offline_seeds"]) == (2, 1)
    assert {r["mode"]: r["seeds"] for r in saved["rows"]} == {"offline": 1, "online": 2}


def test_fig7_max_is_the_cell_with_the_highest_mean_speedup(tmp_path):
    config = load_config("fig7")
    config.seeds = 2
    named = run_study(from_config_dict(config), tmp_path, log=lambda s: None)
    runs = json.loads((tmp_path / "fig7.json").read_text())["runs"]
    assert {r["seed"] for r in runs} == {0, 1}
    cells = {}
    for r in runs:
        if r["variant"] == "dualpath":
            basic = next(b for b in runs if b["variant"] == "basic" and
                         (b["mal"], b["agents"], b["seed"]) == (r["mal"], r["agents"], r["seed"]))
            cells.setdefault((r["mal"], r["agents"]), []).append(basic["jct_s"] / r["jct_s"])
    best = max(cells, key=lambda k: sum(cells[k]))
    mean, half = _hand_ci(cells[best])
    assert named["max_speedup_dualpath_vs_basic"] == pytest.approx(mean, rel=1e-12)
    assert named["max_speedup_dualpath_vs_basic_ci95"] == pytest.approx(half, rel=1e-8)
    assert named["max_speedup_at"] == f"ds27b {best[0]} {best[1]} agents"
    grid = [sum(v[r] for v in cells.values()) / len(cells) for r in (0, 1)]  # per seed: mean over the grid
    assert named["mean_speedup_dualpath_vs_basic_ci95"] == pytest.approx(_hand_ci(grid)[1], rel=1e-8)


def test_online_max_aps_is_searched_per_seed_and_the_gain_taken_within_a_seed(tmp_path):
    from dualpath_jax.studies import RunCache
    config = load_config("online")
    config.seeds = 2
    config.variants = ("basic", "dualpath")
    config.slo.ttft_s = 0.04  # tight enough for the tiny runs to bracket their capacity
    config.slo.window_s = 0.0  # the whole span: the tiny runs barely slow with the rate, and 5 s windows of
    # their TTFT scatter around so tight a bound
    cache = RunCache(max_entries=64)
    named = run_study(from_config_dict(config), tmp_path, log=lambda s: None, cache=cache)
    arrivals = {(key[3].seed, key[5]) for key, _ in cache.items() if key[0] == "online"}
    assert arrivals == {(0, 0), (1, 1)}  # seed r: workload seed r and arrival seed r
    out = json.loads((tmp_path / "online.json").read_text())
    by_seed = {(r["variant"], r["seed"]): r for r in out["max_aps_by_seed"]}
    assert set(out["trials"]) == {f"ds27b/{v}/seed{r}" for v in ("basic", "dualpath") for r in (0, 1)}
    for v in ("basic", "dualpath"):
        aps = [by_seed[(v, r)]["max_aps"] for r in (0, 1)]
        assert [t["aps"] for t in out["trials"][f"ds27b/{v}/seed0"]][0] == 0.5  # each seed's own search
        mean, half = _hand_ci(aps)
        assert named[f"max_aps_ds27b_{v}"] == pytest.approx(mean, rel=1e-12)
        if half == 0:
            assert named[f"max_aps_ds27b_{v}_ci95"] == 0.0
        else:
            assert named[f"max_aps_ds27b_{v}_ci95"] == pytest.approx(half, rel=1e-8)
    gains = [by_seed[("dualpath", r)]["max_aps"] / by_seed[("basic", r)]["max_aps"] for r in (0, 1)]
    bracketed = all(by_seed[k]["bracketed"] for k in by_seed)
    assert bracketed or all(by_seed[("basic", r)]["bracketed"] for r in (0, 1))  # one of the checks below runs
    if bracketed:
        assert named["aps_gain_ds27b_dualpath_vs_basic"] == pytest.approx(sum(gains) / 2, rel=1e-12)
    elif all(by_seed[("basic", r)]["bracketed"] for r in (0, 1)):
        # DualPath's capacity is at least its max APS, Basic's below its lowest failing rate
        failing = [min(t["aps"] for t in out["trials"][f"ds27b/basic/seed{r}"]
                       if not t["meets_slo"] and t["aps"] > by_seed[("basic", r)]["max_aps"]) for r in (0, 1)]
        bound = [by_seed[("dualpath", r)]["max_aps"] / failing[r] for r in (0, 1)]
        assert named["aps_gain_ds27b_dualpath_vs_basic_at_least"] == pytest.approx(sum(bound) / 2, rel=1e-12)
    assert named["unbracketed_searches"] == sum(not r["bracketed"] for r in by_seed.values())
    for r in (0, 1):  # the table's gain: exact where both searches bracketed, else nan (null in JSON)
        gain, both = by_seed[("dualpath", r)]["gain_vs_basic"], by_seed[("dualpath", r)]["bracketed"] and \
            by_seed[("basic", r)]["bracketed"]
        assert gain == pytest.approx(gains[r], rel=1e-12) if both else gain is None
    curves = list(csv.DictReader((tmp_path / "online_curves.csv").open()))
    grid = [r for r in curves if float(r["aps"]) in (0.5, 2.0)]
    assert grid and all(int(r["seeds"]) == 2 for r in grid)  # the grid: every seed ran it


def test_online_searches_that_never_fail_give_no_gain_and_a_capped_rate_is_flagged(tmp_path):
    config = load_config("online")
    config.variants = ("basic", "dualpath")
    lines = []
    named = run_study(from_config_dict(config), tmp_path, log=lines.append)
    out = json.loads((tmp_path / "online.json").read_text())
    rows = {r["variant"]: r for r in out["max_aps_by_seed"]}
    window = from_config_dict(config).rows[0].window
    assert not rows["basic"]["bracketed"] and rows["basic"]["max_aps"] > window.capped_above_aps  # never failed
    assert rows["dualpath"]["gain_vs_basic"] is None and rows["basic"]["over_oracle"] is None
    assert math.isnan(named["aps_gain_ds27b_dualpath_vs_basic"]) and named["unbracketed_searches"] == 2
    table = (tmp_path / "online_max_aps.md").read_text()
    assert "nan unless both searches bracketed" in table
    warned = [x for x in lines if "WARNING: above" in x]
    assert len(warned) == 2 and all(f"above {window.capped_above_aps:g} APS" in x for x in warned)
    assert f"at most {window.max_agents_per_run} agents" in "\n".join(lines)


def test_unbracketed_searches_give_bounds_not_point_values_or_partial_means(tmp_path, monkeypatch):
    """A max APS whose search never failed in some seed is a lower bound (``_at_least``); a
    ratio in the max-APS table needs every seed's; the mean gain over models needs every model's
    (a mean over the models that happened to bracket would change its meaning with the outcome)."""
    import dualpath_jax.studies.online as online_mod
    from dualpath_jax.metrics.latency import ApsTrial, MaxApsResult
    from dualpath_jax.studies.report import claims_rows

    # (row, variant, seed) -> (max APS, bracketed): ds27b exact (gain 2 in both seeds); ds660b's
    # DualPath search never fails in seed 1
    outcome = {("ds27b", "basic"): (1.0, True), ("ds27b", "dualpath"): (2.0, True),
               ("ds660b", "basic"): (1.0, True)}

    def fake_search(run, slo, **kw):
        cells = dict(zip(run.__code__.co_freevars, (c.cell_contents for c in run.__closure__)))  # (rc, v, r)
        row, v, r = cells["rc"].key, cells["v"], cells["r"]
        aps, bracketed = outcome.get((row, v), (2.0, True) if r == 0 else (64.0, False))
        trials = (ApsTrial(aps, True, 1.0, 0.01),) + ((ApsTrial(2 * aps, False, 9.0, 0.01),) if bracketed else ())
        return MaxApsResult(aps, bracketed, trials, resolved=bracketed)

    monkeypatch.setattr(online_mod, "max_aps_under_slo", fake_search)
    config = load_config("online")
    config.seeds = 2
    config.variants = ("basic", "dualpath")
    config.row_order = ("ds27b", "ds660b")
    config.rows.ds27b.aps_grid = (0.5,)
    config.rows.ds660b.update({"aps_grid": (0.5,), "initial_aps": 0.5, "horizon_s": 24.0, "warmup_s": 4.0})
    lines = []
    named = online_mod.online(from_config_dict(config), tmp_path, log=lines.append)
    assert named["max_aps_ds27b_dualpath"] == 2.0 and named["aps_gain_ds27b_dualpath_vs_basic"] == 2.0
    # each max APS lies between its passing and its failing rate: Basic in [1, 2), DualPath in [2, 4)
    assert (named["aps_gain_ds27b_dualpath_vs_basic_search_lo"], named["aps_gain_ds27b_dualpath_vs_basic_search_hi"]) \
        == (2.0 / 2.0, 4.0 / 1.0)
    assert "mean_aps_gain_dualpath_vs_basic_search_lo" not in named  # (no exact mean)
    assert "max_aps_ds660b_dualpath" not in named and named["max_aps_ds660b_dualpath_at_least"] == 33.0
    assert math.isnan(named["mean_aps_gain_dualpath_vs_basic"])  # not ds27b's 2 alone
    assert any("not every row's gain is exact" in x for x in lines)
    rows = {(r["row"], r["variant"]): r for r in json.loads((tmp_path / "online.json").read_text())["max_aps"]}
    assert rows[("ds27b", "dualpath")]["gain_vs_basic"] == 2.0
    assert rows[("ds660b", "dualpath")]["gain_vs_basic"] is None  # (NaN in JSON): seed 1 has no exact gain
    claim = [r for r in claims_rows({"online": named}) if r["source"] == "online: mean_aps_gain_dualpath_vs_basic"]
    assert claim[0]["note"].endswith("models run: ds27b, ds660b")
    # every search bracketed: the mean gain, and the range its searches leave it in (ds660b: Basic in
    # [1, 2), DualPath in [3, 6): 1.5 to 6; with ds27b's 1 to 4, 1.25 to 5 on average)
    outcome[("ds660b", "dualpath")] = (3.0, True)
    named = online_mod.online(from_config_dict(config), tmp_path / "exact", log=lines.append)
    assert named["mean_aps_gain_dualpath_vs_basic"] == 2.5
    assert (named["mean_aps_gain_dualpath_vs_basic_search_lo"], named["mean_aps_gain_dualpath_vs_basic_search_hi"]) \
        == (1.25, 5.0)
    claim = [r for r in claims_rows({"online": named}) if r["source"] == "online: mean_aps_gain_dualpath_vs_basic"]
    assert claim[0]["note"].endswith("the searches' rates leave it between 1.25 and 5")


def test_a_gain_with_a_seed_whose_basic_fails_even_at_the_lowest_rate_is_nan_not_a_mean_of_the_others(
        tmp_path, monkeypatch):
    import dualpath_jax.studies.online as online_mod
    from dualpath_jax.metrics.latency import ApsTrial, MaxApsResult

    def fake_search(run, slo, **kw):  # DualPath 2 APS (4 fails); Basic 1 APS (2 fails), but nothing in seed 1
        cells = dict(zip(run.__code__.co_freevars, (c.cell_contents for c in run.__closure__)))  # (rc, v, r)
        v, r = cells["v"], cells["r"]
        if v == "basic" and r == 1:  # bracketed below: search.min_aps itself failed
            return MaxApsResult(0.0, True, (ApsTrial(1.0, False, 9.0, 0.01), ApsTrial(kw["min_aps"], False, 9.0, 0.01)))
        aps = 2.0 if v == "dualpath" else 1.0
        return MaxApsResult(aps, True, (ApsTrial(aps, True, 1.0, 0.01), ApsTrial(2 * aps, False, 9.0, 0.01)))

    monkeypatch.setattr(online_mod, "max_aps_under_slo", fake_search)
    config = load_config("online")
    config.seeds = 2
    config.variants = ("basic", "dualpath")
    config.rows.ds27b.aps_grid = (0.5,)
    lines = []
    named = online_mod.online(from_config_dict(config), tmp_path, log=lines.append)
    assert named["max_aps_ds27b_basic"] == 0.5  # (1 and 0)
    assert math.isnan(named["aps_gain_ds27b_dualpath_vs_basic"])  # not seed 0's 2 alone
    assert math.isnan(named["mean_aps_gain_dualpath_vs_basic"])
    assert any("aps_gain_ds27b_dualpath_vs_basic: nan; seed(s) 1 have no ratio" in x for x in lines)


def test_a_gain_lower_bound_divides_by_the_denominators_lowest_failing_rate():
    from dualpath_jax.metrics.latency import ApsTrial, MaxApsResult
    from dualpath_jax.studies.online import _lowest_failing

    trials = tuple(ApsTrial(a, ok, 1.0, 0.01) for a, ok in ((4.0, True), (8.0, False), (5.657, False), (4.757, False),
                                                            (2.0, True)))
    # Basic's capacity lies in [4.0, 4.757): a DualPath lower bound of 10 APS is at least 10 / 4.757 times it
    assert _lowest_failing(MaxApsResult(4.0, True, trials)) == 4.757
