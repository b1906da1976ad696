"""The paper's simulator studies: the Eq. 9 analysis against the paper's numbers and hand-derived
cases, every study end to end on its ``tiny`` config, and physical properties of storage-bound toys."""

import csv
import dataclasses
import gzip
import json
import math
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from dualpath_jax.config import ConfigError
from dualpath_jax.model import cost
from dualpath_jax.model.spec import get_spec
from dualpath_jax.sched import ClusterScheduler
from dualpath_jax.sim import analysis
from dualpath_jax.sim.config import SimConfig, sim_config_dict
from dualpath_jax.sim.hardware import HardwareConfig
from dualpath_jax.studies import STUDIES, STUDY_CONFIGS, from_config_dict, run_study
from dualpath_jax.studies.common import OnlineWindow, WorkloadSpec, parse_cluster, sim_config, with_cluster
from dualpath_jax.studies.config import check_sim_overrides, per_run_sim_fields
from dualpath_jax.studies.report import build_report
from dualpath_jax.studies.runs import TTFT_COMPONENTS, offline_run, online_run, ttft_components
from dualpath_jax.workload import agentic_dir

from config_files import CONFIGS
from config_files import load_sim_config as load_config


# ---- Eq. 1-9 -------------------------------------------------------------------------------------
def test_eq9_paper_values():
    r = analysis.bottleneck_free_pd_range(8, 1, 500e9, 50e9)
    assert r.lower == pytest.approx(1 / 7)
    assert r.upper == pytest.approx(3.5)
    assert r.upper_terms == pytest.approx({"de_cnic_read": 6.0, "de_cnic_write": 3.5, "de_dram": 3.5})
    assert r.feasible and r.contains(1 / 7) and r.contains(3.5) and r.contains(0.5)
    assert not r.contains(0.14) and not r.contains(3.51)


@pytest.mark.parametrize("g,s,mem,b,lower,terms", [
    # s = 2 SNICs' worth per node: Bs = 100 GB/s, M/(Bs) = 5
    (8, 2, 500e9, 50e9, 2 / 6, {"de_cnic_read": 2.0, "de_cnic_write": 1.5, "de_dram": 1.0}),
    # SNIC half a CNIC (s = 0.5), M = 200 GB/s: Bs = 25 GB/s, M/(Bs) = 8
    (8, 0.5, 200e9, 50e9, 0.5 / 7.5, {"de_cnic_read": 14.0, "de_cnic_write": 7.5, "de_dram": 2.5}),
])
def test_eq9_hand_computed(g, s, mem, b, lower, terms):
    r = analysis.bottleneck_free_pd_range(g, s, mem, b)
    assert r.lower == pytest.approx(lower)
    assert r.upper_terms == pytest.approx(terms)
    assert r.upper == pytest.approx(min(terms.values()))


def test_eq9_infeasible_and_errors():
    # s = 3.5: the lower bound 3.5/4.5 exceeds (g-2s)/s = 1/3.5, and M/(Bs) = 500/175 < 3 makes Eq. 8 negative
    r = analysis.bottleneck_free_pd_range(8, 3.5, 500e9, 50e9)
    assert r.lower == pytest.approx(3.5 / 4.5)
    assert r.upper_terms == pytest.approx({"de_cnic_read": 1 / 3.5, "de_cnic_write": 4.5 / 7,
                                           "de_dram": (500 / 175 - 3) / 2})
    assert not r.feasible and not r.contains(0.5)
    assert not analysis.bottleneck_free_pd_range(8, 5, 500e9, 50e9).pe_cnic_read_ok  # 2s > g: Eq. 1 fails
    with pytest.raises(ConfigError, match="cnic_bytes_per_s"):
        analysis.bottleneck_free_pd_range(8, 1, 500e9, 0.0)


def test_link_loads_reach_one_at_the_bounds():
    g, s, m = 8, 1.0, 10.0
    assert analysis.link_loads(1 / 7, g, s, m)["pe_cnic_write"] == pytest.approx(1.0)
    assert analysis.link_loads(6.0, g, s, m)["de_cnic_read"] == pytest.approx(1.0)
    assert analysis.link_loads(3.5, g, s, m)["de_cnic_write"] == pytest.approx(1.0)
    assert analysis.link_loads(3.5, g, s, m)["de_dram"] == pytest.approx(1.0)
    assert analysis.even_split_storage_fraction(1.0, g, s, m) == 1.0
    # P/D = 8: DE CNIC write (1/8)(2*8+1) = 17/8 is the busiest
    assert analysis.even_split_storage_fraction(8.0, g, s, m) == pytest.approx(8 / 17)
    # Basic at P/D = 8: DE CNIC write 2 * 8/8 = 2 -> 8/9 of the SNICs, halved
    assert analysis.basic_storage_fraction(8.0, g, s, m) == pytest.approx(8 / 9 / 2)
    assert analysis.basic_storage_fraction(0.5, g, s, m) == pytest.approx(1 / 3)


def test_pd_range_for_hardware_defaults_and_kv_share():
    hw = HardwareConfig()
    nominal = analysis.pd_range_for_hardware(hw)
    assert (nominal.lower, nominal.upper) == (pytest.approx(1 / 7), pytest.approx(3.5))
    eff = analysis.pd_range_for_hardware(hw, kv_share=True)  # B = 45 GB/s, s = 10/9, Bs = 50 GB/s
    s = 10 / 9
    assert eff.lower == pytest.approx(s / (8 - s))
    assert eff.upper == pytest.approx(min((8 - 2 * s) / s, (8 - s) / (2 * s), 3.5))


def test_working_set_bytes_hand_computed():
    # 0.5 APS x 1000 s = 500 live agents holding half of 55,958 tokens of 40,016 B each
    assert analysis.working_set_bytes(0.5, 1000.0, 55958.0, 40016.0) == pytest.approx(500 * 27979 * 40016)
    with pytest.raises(ConfigError, match="aps"):
        analysis.working_set_bytes(-1.0, 1.0, 1.0, 1.0)


# ---- config plumbing ------------------------------------------------------------------------------
def test_registry_and_errors_name_fields():
    assert set(STUDIES) == set(STUDY_CONFIGS) and "ablation" in STUDIES
    assert parse_cluster("48P96D") == (48, 96)
    with pytest.raises(ConfigError, match="clusters"):
        parse_cluster("2x4", "clusters")
    with pytest.raises(ConfigError, match="workload.mal"):
        WorkloadSpec(mal="16K")
    with pytest.raises(ConfigError, match="hardware.snic_bytes_per_s"):
        sim_config({"hardware": {"snic_bytes_per_s": 0}})
    with pytest.raises(ConfigError, match="sim.hardware.snic_gbps"):
        sim_config({"model": "ds-27b"}, {"hardware": {"snic_gbps": 400}})
    assert sim_config({"model": "ds-27b", "hardware": {"hbm_bytes": 1e11}},
                      {"hardware": {"dram_buffer_bytes": 3.2e11}}).hardware.hbm_bytes == 1e11  # merged per key
    with pytest.raises(ConfigError, match=r"^config: configs/sim_fig7.py has no variant 'huge' "
                                          r"\(known: quick, tiny\)$"):
        load_config("fig7", "huge")


def test_online_window_sizes_runs_by_horizon():
    wl = WorkloadSpec(mal="32K", num_agents=7, seed=3)
    assert OnlineWindow().workload(wl, 5.0).num_agents == 7  # bounded batch: the configured agents
    timed = OnlineWindow(horizon_s=100.0, warmup_s=20.0, max_agents_per_run=60)
    assert timed.workload(wl, 0.25).num_agents == 25  # ceil(0.25 x 100)
    assert timed.workload(wl, 0.333).num_agents == 34
    assert timed.workload(wl, 5.0).num_agents == 60  # capped
    assert timed.workload(wl, 0.25).seed == 3
    with pytest.raises(ConfigError, match="warmup_s"):
        OnlineWindow(warmup_s=5.0)
    with pytest.raises(ConfigError, match="warmup_s"):
        OnlineWindow(horizon_s=100.0, warmup_s=100.0)
    # the ConfigDict's top-level window is each row's default; a row may set its own
    online = from_config_dict(load_config("online"))
    assert [(r.key, r.window.horizon_s, r.window.warmup_s) for r in online.rows] == [("ds27b", 24.0, 4.0)]
    with pytest.raises(ConfigError, match="warmup_s"):
        from_config_dict({**load_config("ttft_breakdown").to_dict(), "warmup_s": 30.0})


# ---- every study end to end ---------------------------------------------------------------------
OUTPUTS = {
    "fig7": ("fig7.md", "fig7.csv", "fig7.png", "fig7.json"),
    "fig8": ("fig8.md", "fig8.csv", "fig8.png", "fig8.json"),
    "fig9": ("fig9.md", "fig9.csv", "fig9.png", "fig9.json"),
    "online": ("online_curves.md", "online_curves.csv", "online_max_aps.md", "online_latency.png",
               "online_completion.png", "online.json"),
    "ttft_breakdown": ("ttft_breakdown.md", "ttft_breakdown.csv", "ttft_breakdown_dualpath.png", "ttft_breakdown.json"),
    "working_set": ("working_set.md", "working_set.csv", "working_set.png", "working_set.json"),
    "balance": ("balance.md", "balance.csv", "balance_busy.md", "balance_busy.csv", "balance_snic.csv",
                "balance_snic.png", "balance_attention.png", "balance.json"),
    "table3": ("table3.md", "table3.csv", "table3.png", "table3.json"),
    "pd_sweep": ("pd_sweep.md", "pd_sweep.csv", "pd_sweep.png", "pd_sweep.json"),
}


@pytest.mark.parametrize("study", sorted(OUTPUTS))
def test_study_runs_and_writes_files(study, tmp_path):
    config = load_config(study)
    assert config.study == study
    named = STUDIES[study](from_config_dict(config), tmp_path, log=lambda s: None)
    for name in OUTPUTS[study]:
        assert (tmp_path / name).stat().st_size > 0, name
    assert named and all(isinstance(k, str) for k in named)
    json.loads((tmp_path / f"{'online' if study == 'online' else study}.json").read_text())


def test_quick_and_full_configs_build():
    for study in OUTPUTS:
        for arg in (None, "quick"):
            config = load_config(study, arg)
            assert config.study == study
            assert type(from_config_dict(config)).study == study


def test_every_sim_field_can_be_overridden_from_the_command_line(monkeypatch):
    sim_fields = {f.name for f in dataclasses.fields(SimConfig)} - {"compute"}
    hw_fields = {f.name for f in dataclasses.fields(HardwareConfig)}
    for path in sorted(CONFIGS.glob("sim_*.py")):
        config = load_config(path.stem[len("sim_"):], None)
        assert set(config.sim) == sim_fields and set(config.sim.hardware) == hw_fields, path.name
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "study config", flag_values=fv)
    argv = ["run_sim", f"--config={CONFIGS / 'sim_ablation.py'}:quick", "--config.sim.hardware.snic_bytes_per_s=25e9",
            "--config.sim.beta_s=1", "--config.sim.ep_sync=false"]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
    fv(argv)
    cfg = from_config_dict(fv.config).sim
    assert (cfg.hardware.snic_bytes_per_s, cfg.beta_s, cfg.ep_sync, cfg.model) == (25e9, 1.0, False, "deepseek-v3.2")
    assert cfg.hardware.dram_buffer_bytes == HardwareConfig().dram_buffer_bytes  # untouched fields keep defaults
    with pytest.raises(ConfigError, match="sim.snic_gbps"):
        sim_config_dict(snic_gbps=400)
    with pytest.raises(ConfigError, match="sim.hardware.snic_gbps"):
        sim_config_dict(hardware={"snic_gbps": 400})


def test_overrides_a_study_would_overwrite_in_each_run_are_rejected():
    fig7, table3, ablation = load_config("fig7", None), load_config("table3", None), load_config("ablation", None)
    per_run = per_run_sim_fields(fig7)
    assert {k: per_run[k] for k in ("model", "prefill_nodes", "loading", "hardware.dram_buffer_bytes")} == {
        "model": "config.rows.ds27b.sim", "prefill_nodes": "config.rows.ds27b.sim", "loading": "config.variants",
        "hardware.dram_buffer_bytes": "config.rows.qwen32b.sim"}
    assert "beta_s" not in per_run and "hardware.snic_bytes_per_s" not in per_run
    with pytest.raises(ConfigError, match=r"sim\.prefill_nodes: study 'fig7' sets it for each run from "
                                          r"config\.rows\.ds27b\.sim"):
        check_sim_overrides(fig7, ["num_agents", "sim.prefill_nodes"])
    with pytest.raises(ConfigError, match=r"sim\.decode_nodes: .* from config\.offline_cases and config\.online_cases"):
        check_sim_overrides(table3, ["sim.decode_nodes"])
    with pytest.raises(ConfigError, match=r"sim\.loading: study 'ablation' sets it for each run from config\.variants"):
        check_sim_overrides(ablation, ["sim.loading"])
    # fields no run sets pass, and so does the cluster of a study without cluster rows
    check_sim_overrides(fig7, ["sim.beta_s", "sim.hardware.snic_bytes_per_s", "variants"])
    check_sim_overrides(ablation, ["sim.prefill_nodes"])


def test_table3_online_cases_are_measured_after_their_ramp_up(tmp_path):
    """Table 3's online latencies are those of the loaded cluster: requests issued in the first
    online_warmup_fraction of a case's arrival window (agents / APS) are not measured."""
    from dualpath_jax.studies import RunCache
    from dualpath_jax.studies.runs import online_run
    config = load_config("table3")
    cache = RunCache()
    named = run_study(from_config_dict(config), tmp_path, log=lambda s: None, cache=cache)
    study = from_config_dict(config)
    assert study.online_warmup_fraction == 0.5
    for cluster, aps, n in study.online_cases:
        base = [s for k, s in cache.items() if k[0] == "online" and k[3].num_agents == n][0]
        sim = with_cluster(study.sim, cluster, "online_cases")
        whole = online_run(sim, "dualpath", study.workload.replace(num_agents=n), aps, 0, None)
        late = online_run(sim, "dualpath", study.workload.replace(num_agents=n), aps, 0, None, warmup_s=0.5 * n / aps)
        assert base.stats["num_requests"] == late.stats["num_requests"] < whole.stats["num_requests"]
        assert named[f"ttft_s_{cluster}_{aps:g}aps_dualpath"] == pytest.approx(late.stats["ttft_mean_s"], rel=1e-12)
    with pytest.raises(ConfigError, match="online_warmup_fraction: must be < 1"):
        from_config_dict({**config.to_dict(), "online_warmup_fraction": 1.0})


def test_report_gathers_claims_tables_and_plots(tmp_path):
    named = {}
    for study in ("fig7", "pd_sweep"):
        named[study] = run_study(from_config_dict(load_config(study)), tmp_path / study, log=lambda s: None)
    path = build_report(tmp_path, ["fig7", "pd_sweep"], named, {"fig7": 1.0, "pd_sweep": 2.0}, {}, variant="tiny")
    text = path.read_text()
    assert "| Eq. 9 lower bound on P/D" in text and "| 1/7 = 0.143 | 0.1429 |" in text
    assert "![fig7 fig7](fig7/fig7.png)" in text and "#### Fig. 7: offline JCT vs agents" in text
    assert "PUBLIC_CONTEXT_TOKENS" in text and "storage_bytes_per_s" in text


# ---- physical properties on storage-bound toys ---------------------------------------------------
SLOW_SNIC = {"snic_bytes_per_s": 0.25e9}  # 250 MB/s: reading dominates a tiny workload


def test_storage_bound_offline_order_and_lower_bounds():
    wl = WorkloadSpec(mal="32K", num_agents=16, token_divisor=8)
    base = sim_config({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1, "hardware": SLOW_SNIC})
    runs = {v: offline_run(base, v, wl, log=None) for v in ("basic", "dualpath", "oracle")}
    kvb = cost.stored_kv_bytes_per_token(get_spec("ds-27b"), "fp8")
    hit_bytes = runs["basic"]["hit_tokens"] * kvb
    assert runs["basic"]["snic_read_bytes"] == pytest.approx(hit_bytes)
    assert runs["oracle"]["snic_read_bytes"] == 0.0
    # one PE SNIC must carry every hit byte; dual loading has two SNICs
    assert runs["basic"]["jct_s"] >= hit_bytes / SLOW_SNIC["snic_bytes_per_s"]
    assert runs["dualpath"]["jct_s"] >= hit_bytes / (2 * SLOW_SNIC["snic_bytes_per_s"])
    assert runs["oracle"]["jct_s"] <= runs["dualpath"]["jct_s"] < runs["basic"]["jct_s"]
    assert runs["basic"]["jct_s"] / runs["dualpath"]["jct_s"] > 1.5  # storage-bound: close to 2x


def test_snic_balance_dualpath_beats_round_robin_when_storage_bound(tmp_path):
    config = load_config("balance")  # 1P2D: round robin alternates PE/DE -> the PE SNIC reads half
    config.sim.hardware = SLOW_SNIC
    config.num_agents = 24
    config.window_s = 5.0
    named = STUDIES["balance"](from_config_dict(config), tmp_path, log=lambda s: None)
    assert named["snic_max_avg_p50_dpl"] == pytest.approx(1.5, abs=0.05)
    assert named["snic_max_avg_p50_dualpath"] < named["snic_max_avg_p50_dpl"] - 0.2
    assert named["snic_max_avg_mean_dualpath"] < named["snic_max_avg_mean_dpl"]
    for v in ("dpl", "dualpath"):  # Max/Avg of an 8-engine group lies in [1, 8]; each forward runs >= 1 chunk
        assert 1.0 <= named[f"attn_max_avg_head_weighted_{v}"] <= 8.0
        assert 1.0 <= named[f"attn_max_avg_weighted_{v}"] <= 8.0
        assert named[f"chunks_per_forward_{v}"] >= 1.0
        assert 0.0 <= named[f"full_forward_share_head_{v}"] <= 1.0
    rows = list(csv.DictReader((tmp_path / "balance_busy.csv").open()))
    for v in ("dpl", "dualpath"):  # the per-busy-count rows partition the variant's forwards
        mine = [r for r in rows if r["variant"] == v]
        assert sum(int(r["forwards"]) for r in mine) == json.loads((tmp_path / "balance.json").read_text())[
            "rows"][("dpl", "dualpath").index(v)]["forwards"]
        for r in mine:  # k of n members busy: Max/Avg >= n / k (= when the busy ones are equal)
            assert float(r["max_avg_mean"]) >= int(r["members"]) / int(r["busy"]) - 1e-9


def test_de_nodes_share_requests_when_storage_bound():
    """Phase 1 must see an idle DE group's current load (it reports even without work)."""
    from dualpath_jax.sim import Simulator, agents_from_trajectories, offline_starts, variant_config
    ts = WorkloadSpec(mal="32K", num_agents=32, token_divisor=8).build()
    base = sim_config({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 2, "hardware": SLOW_SNIC})
    sim = Simulator(variant_config(base, "dualpath"), agents_from_trajectories(ts, offline_starts(ts)))
    res = sim.run()
    node = np.asarray([sim.node_of[d] for d in res.requests["de"]])
    share = np.mean(node == 1)
    assert 0.35 <= share <= 0.65


def test_ttft_components_sum_to_ttft_and_oracle_reads_nothing():
    wl = WorkloadSpec(mal="32K", num_agents=12, token_divisor=8)
    base = sim_config({"model": "ds-27b", "prefill_nodes": 1, "decode_nodes": 1, "hardware": SLOW_SNIC})
    for variant in ("dualpath", "oracle"):
        s = online_run(base, variant, wl, 1.0, log=None).stats
        parts = [s[f"{c}_mean"] for c in TTFT_COMPONENTS]
        assert all(p >= -1e-12 for p in parts)
        assert sum(parts) == pytest.approx(s["ttft_mean_s"], rel=1e-9)
        if variant == "oracle":
            assert s["read_transfer_s_mean"] == 0.0 and s["read_wait_s_mean"] == 0.0
        else:  # hits cross the SNIC (the split itself: test_ttft_components_by_hand)
            assert s["read_transfer_s_mean"] > 0.0
    assert math.isfinite(s["completion_mean_s"]) and s["num_failed"] == 0


def test_ttft_components_by_hand():
    # 1) a 1 GB side at 1 GB/s in a 2 s read: 1 s transfer, 1 s waiting; 2) a 2 GB side in a 0.5 s
    # read (the buffer already held part of it): the transfer is capped at the read; 3) no bytes
    # (Oracle, or no hit recorded as NaN): nothing to transfer or wait for
    r = {"arrival_s": [0.0, 0.0, 1.0], "placed_s": [1.0, 0.5, 2.0], "read_done_s": [3.0, 1.0, 2.0],
         "prefill_start_s": [4.0, 1.0, 2.5], "first_token_s": [6.0, 1.25, 3.0],
         "read_bytes_pe": [1e9, 0.0, np.nan], "read_bytes_de": [0.5e9, 2e9, np.nan]}
    c = ttft_components(r, 1e9)
    want = {"schedule_s": [1.0, 0.5, 1.0], "read_wait_s": [1.0, 0.0, 0.0], "read_transfer_s": [1.0, 0.5, 0.0],
            "prefill_queue_s": [1.0, 0.0, 0.5], "prefill_compute_s": [2.0, 0.25, 0.5]}
    assert set(c) == set(want) == set(TTFT_COMPONENTS)
    for k, v in want.items():
        np.testing.assert_allclose(c[k], v, rtol=0, atol=1e-12, err_msg=k)


# ---- the workload's source (issue #24) --------------------------------------------------------------------
def test_workload_spec_checks_its_source_fields(tmp_path):
    assert WorkloadSpec().source == "synthetic" and WorkloadSpec().label == "MAL 64K"
    cases = [({"source": "sharegpt"}, "workload.source"), ({"path": "x.jsonl"}, "workload.path"),
             ({"subagents": "merge"}, "workload.subagents"),
             ({"source": "mooncake", "path": str(tmp_path / "none.jsonl")}, "workload.path"),
             ({"source": "agentic", "path": str(tmp_path)}, "workload.path"),  # a folder without traces
             ({"source": "mooncake", "gen_factor": 2.0}, "workload.gen_factor"),
             ({"source": "mooncake", "token_divisor": 3}, "workload.token_divisor"),
             ({"source": "mooncake", "mooncake_block_tokens": 64, "token_divisor": 128}, "workload.token_divisor"),
             ({"source": "mooncake", "mooncake_block_tokens": 0}, "workload.mooncake_block_tokens"),
             ({"mooncake_block_tokens": 64}, "workload.mooncake_block_tokens")]  # a synthetic workload
    (tmp_path / "t.jsonl").write_text("")
    for fields, name in cases:
        fields = {"path": str(tmp_path / "t.jsonl"), **fields} if fields.get("source") == "mooncake" and \
            "path" not in fields else fields
        with pytest.raises(ConfigError) as e:
            WorkloadSpec(**fields)
        assert e.value.field == name, fields
    with pytest.raises(ConfigError, match="^workload.source: fig9 scales"):
        from_config_dict({**load_config("fig9").to_dict(), "workload": {"source": "mooncake",
                                                                         "path": str(tmp_path / "t.jsonl")}})


def test_an_agentic_trace_is_scaled_by_its_own_block_size_and_a_trace_beyond_the_mal_is_one_error(tmp_path):
    def trace(folder, block, first_in):
        folder.mkdir()
        ids = lambda n: list(range(1, n // block + 1))  # noqa: E731
        doc = {"id": folder.name, "block_size": block, "requests": [
            {"t": 0.0, "type": "n", "in": first_in, "out": 4, "hash_ids": ids(first_in)},
            {"t": 1.0, "type": "n", "in": first_in + 300, "out": 2, "hash_ids": ids(first_in + 300)}]}
        (folder / "t.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))
        return str(folder)

    big = WorkloadSpec(source="agentic", path=trace(tmp_path / "b128", 128, 1000), num_agents=1, mal="32K",
                       token_divisor=128)  # divides the trace's 128-token blocks (not the usual 64)
    # P blocks of Z = 128 and a t-token tail -> P * Z/d + min(ceil(t / d), Z/d - 1) (scale_tokens): with
    # Z/d = 1 a tail keeps no token; 1000 = 7 * 128 + 104 -> 7, 1300 = 10 * 128 + 20 -> 10; hit 7 blocks -> 7
    np.testing.assert_array_equal(big.build().num_prompt_tokens, [7, 10])
    np.testing.assert_array_equal(big.build().num_hit_tokens, [0, 7])
    small = WorkloadSpec(source="agentic", path=trace(tmp_path / "b16", 16, 1000), num_agents=1, mal="32K",
                         token_divisor=32)
    with pytest.raises(ConfigError, match=r"^workload.token_divisor: must divide the 16-token hash blocks of b16 "
                                         r"\(got 32\)$"):
        small.build()
    long = WorkloadSpec(source="agentic", path=trace(tmp_path / "long", 64, 40000), num_agents=1, mal="32K")
    with pytest.raises(ConfigError, match=r"^workload.mal: .*long: no agent fits mal_tokens=32768"):
        long.build()


def _mooncake_rows():
    row = lambda ts, n_in, out, ids: {"timestamp": ts, "input_length": n_in, "output_length": out,  # noqa: E731
                                      "hash_ids": ids}
    return [row(0, 1500, 10, [0, 1, 2]), row(10, 40000, 5, [7] * 79),  # a session whose one round is over 32K
            row(20, 2000, 3, [0, 1, 5, 6]), row(30, 600, 8, [9, 10]), row(40, 700, 9, [11, 12])]


def test_a_trace_workload_is_its_first_agents_cut_at_the_mal(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _mooncake_rows()))
    wl = WorkloadSpec(source="mooncake", path=str(path), mal="32K", num_agents=2)
    assert wl.label == "mooncake trace m.jsonl, MAL 32K"
    assert wl.replace(token_divisor=2, use_think_time=True).label == \
        "mooncake trace m.jsonl, MAL 32K, tokens / 2, recorded think times"
    ts = wl.build()
    # sessions by hand: s0 = lines 1 and 3 (line 3 continues line 1's blocks 0, 1); s1 = line 2, whose
    # one round (40,000 + 5 tokens) exceeds 32K = 32,768, so it is skipped; s2 = line 4
    assert list(ts.agent_ids) == ["m/s00000", "m/s00002"]
    np.testing.assert_array_equal(ts.num_prompt_tokens, [1500, 2000, 600])
    np.testing.assert_array_equal(ts.num_hit_tokens, [0, 1024, 0])
    assert wl.replace(num_agents=3).build().agent_ids[-1] == "m/s00003"
    with pytest.raises(ConfigError, match=r"^workload.num_agents: .* holds only 3 agents within MAL 32K \(got 4; "
                                         r"an agent whose first prompt alone is longer than the MAL is left out"):
        wl.replace(num_agents=4).build()
    scaled = wl.replace(token_divisor=8).build()
    np.testing.assert_array_equal(scaled.num_prompt_tokens, [1500 // 512 * 64 + -(-(1500 % 512) // 8),
                                                             2000 // 512 * 64 + -(-(2000 % 512) // 8),
                                                             600 // 512 * 64 + -(-(600 % 512) // 8)])


def test_a_mooncake_workload_of_another_block_size_and_an_agentic_workload_of_one_file(tmp_path):
    path = tmp_path / "b64.jsonl"
    rows = [{"timestamp": 0, "input_length": 150, "output_length": 3, "hash_ids": [7, 8, 9]},
            {"timestamp": 500, "input_length": 200, "output_length": 2, "hash_ids": [7, 8, 9, 10]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wl = WorkloadSpec(source="mooncake", path=str(path), mal="32K", num_agents=1, mooncake_block_tokens=64)
    ts = wl.build()
    np.testing.assert_array_equal(ts.num_prompt_tokens, [150, 200])
    np.testing.assert_array_equal(ts.num_hit_tokens, [0, 128])  # 2 full 64-token blocks of round 0
    np.testing.assert_array_equal(wl.replace(token_divisor=16).build().num_hit_tokens, [0, 8])
    doc = {"id": "solo", "block_size": 64, "requests": [
        {"t": 0.0, "type": "n", "in": 200, "out": 4, "hash_ids": [1, 2, 3]},
        {"t": 2.0, "type": "n", "in": 300, "out": 2, "hash_ids": [1, 2, 3, 4]}]}
    one = tmp_path / "solo.json"
    one.write_text(json.dumps(doc))
    ts = WorkloadSpec(source="agentic", path=str(one), mal="32K", num_agents=1).build()
    assert list(ts.agent_ids) == ["solo"]
    np.testing.assert_array_equal(ts.num_hit_tokens, [0, 192])


@pytest.mark.skipif(not agentic_dir().is_dir(), reason="shared traces not available")
def test_an_agentic_workload_keeps_sub_agents_with_their_conversation():
    wl = WorkloadSpec(source="agentic", num_agents=5, mal="32K")
    ts = wl.build()
    roots = [a for a, p in zip(ts.agent_ids, ts.parent_ids) if p is None]
    assert len(roots) == 5
    assert all(p is None or p in ts.agent_ids for p in ts.parent_ids)  # no orphan sub-agent
    assert int(np.max(ts.num_prompt_tokens + ts.num_gen_tokens)) <= 32768
    fits = []  # from the raw files: conversations whose first round fits the MAL, in name order
    for path in sorted(agentic_dir().glob("*.json.gz")):
        first = next(r for r in json.loads(gzip.decompress(path.read_bytes()))["requests"] if r["type"] != "subagent")
        if first["in"] + max(first["out"], 1) <= 32768:
            fits.append(path.name.split(".")[0])
        if len(fits) == 5:
            break
    assert roots == fits
    drop = wl.replace(subagents="drop").build()
    assert all(p is None for p in drop.parent_ids) and len(drop) == 5


@pytest.mark.skipif(not agentic_dir().is_dir(), reason="shared traces not available")
def test_the_working_set_counts_sub_agents_among_the_live_trajectories(tmp_path):
    """Little's law over trajectories: APS counts root agents, while the mean completion time and
    mean total length are per trajectory, so the rate of trajectories is APS times the
    trajectories per root (sub-agents included)."""
    config = load_config("working_set")
    config.workload.source, config.workload.mal = "agentic", "32K"
    study = from_config_dict(config)
    STUDIES["working_set"](study, tmp_path, log=lambda s: None)
    for run in json.loads((tmp_path / "working_set.json").read_text())["runs"]:
        ts = study.window.workload(study.workload, run["aps"]).build()  # the run's agents
        per_root = len(ts) / sum(p is None for p in ts.parent_ids)
        assert per_root > 1.0  # these conversations spawn sub-agents
        live = run["aps"] * per_root * run["completion_mean_s"]
        assert run["live_agents_est"] == pytest.approx(live, rel=1e-12)
        assert run["working_set_GB"] == pytest.approx(
            live * run["mean_total_tokens"] / 2 * run["kv_bytes_per_token"] / 1e9, rel=1e-12)


def test_every_config_file_lists_every_workload_field_it_does_not_set_per_run():
    from dualpath_jax.studies.common import workload_config_dict
    per_run = {"ablation": {"mal", "num_agents"}, "fig7": {"mal", "num_agents"}, "fig8": {"num_agents"},
               "fig9": {"num_agents", "append_factor", "gen_factor"}, "balance": {"num_agents"},
               "table3": {"num_agents"}}
    fields = {f.name for f in dataclasses.fields(WorkloadSpec)} - {"seed"}
    for study in STUDIES:
        workload = load_config(study)["workload"]
        assert set(workload) == fields - per_run.get(study, set()), study
    with pytest.raises(ConfigError, match="^workload.nope"):
        workload_config_dict(nope=1)


class DEIfLongHit(ClusterScheduler):
    """A plug-in with a long name, for the log's columns."""


def test_run_log_columns_line_up_with_a_long_scheduler_name():
    lines = []
    wl = WorkloadSpec(mal="32K", num_agents=4, token_divisor=8)
    base = SimConfig(model="ds-27b", prefill_nodes=1, decode_nodes=1)
    for v in ("dpl", "dualpath", "layerwise"):
        offline_run(base, v, wl, lines.append, scheduler_cls=DEIfLongHit)
    assert all("DEIfLongHit]" in line for line in lines)
    assert len({line.index(" JCT ") for line in lines}) == 1, lines  # one column, whatever the variant


def test_print_config_gives_every_field_of_every_study_a_meaning():
    from dualpath_jax.studies.config import describe_study_config
    for study in STUDIES:
        config = load_config(study)
        text = describe_study_config(config)
        rows = text.splitlines()[2:]
        leaves = []
        stack = [("", config.to_dict())]
        while stack:
            prefix, node = stack.pop()
            for k, v in node.items():
                if isinstance(v, dict):
                    stack.append((f"{prefix}{k}.", v))
                else:
                    leaves.append(f"{prefix}{k}")
        assert sorted(r.split()[0] for r in rows) == sorted(leaves), study
        for r in rows:
            assert r.rstrip().endswith("."), (study, r)  # every line ends with its one-line meaning


def test_a_trace_workload_is_the_same_for_every_seed(tmp_path):
    from dualpath_jax.studies.seeds import seed_workloads
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _mooncake_rows()))
    wl = WorkloadSpec(source="mooncake", path=str(path), mal="32K", num_agents=2)
    assert seed_workloads(wl, 3) == [wl, wl, wl]  # one run, computed once by the run cache


# ---- seeds (the rest in test_sim_seeds.py) ----------------------------------------------------------
@pytest.mark.parametrize("study", sorted(OUTPUTS))
def test_every_study_reports_an_interval_with_two_seeds(study, tmp_path):
    config = load_config(study)
    config.seeds = 2
    named = STUDIES[study](from_config_dict(config), tmp_path, log=lambda s: None)
    figures = [k for k in named if f"{k}_ci95" in named]
    assert figures, study
    for k in figures:
        assert {f"{k}_lo", f"{k}_hi"} <= set(named)
        if math.isfinite(named[f"{k}_ci95"]):
            assert named[f"{k}_lo"] == pytest.approx(named[k] - named[f"{k}_ci95"])
    for name in OUTPUTS[study]:
        assert (tmp_path / name).stat().st_size > 0, name
    assert "mean ± 95% CI over 2 seeds" in (tmp_path / OUTPUTS[study][0]).read_text().splitlines()[0]
