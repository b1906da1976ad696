"""Cross-check: the simulator, given the real engine's measured costs, predicts its JCT.

    python experiments/run_engine.py --workdir=workdir/engine
    python experiments/crosscheck_engine_sim.py --engine_workdir=workdir/engine --workdir=workdir/crosscheck

From the engine run it takes: the requests each variant ran (agent, round, hit / append / generated
tokens, arrival); a compute model fitted by least squares to every measured PE forward ((cached,
bsz) pairs -> the forward's wall seconds less its waits on emulated links) and DE decode step
((batch, context) -> seconds); the DE's measured time to admit a request (Oracle's joins, where no
link is emulated); the links' delivered rates (bytes per busy second of the SNIC reads and of the
CNICs, over every run: each emulated transfer also pays thread hand-offs; ``--link_rates=configured``
uses the configured rates instead); buffer and HBM sizes of its config. The simulator then runs
the same five variants on a cluster of one engine per node with those numbers, and the table
compares JCTs; the simulator uses the scheduler class the engine run used (its config's
``scheduler``). Every repeat of the engine run is simulated from its own measurements (its
forwards, its links, its calibrated rates, its requests), so each ratio has one value per repeat.
Ends with ``jct_ratio_<variant>`` (simulated / measured: the mean over repeats, with ``_ci95``,
the 95% Student-t half width, from two repeats on), ``max_abs_jct_error`` (per repeat the largest
``|ratio - 1|`` over the variants; mean and ``_ci95``) and ``repeats``. Writes
``crosscheck.json`` (per repeat: every variant's engine and simulated JCT, the fitted compute
model, the link rates), ``crosscheck.md/.csv`` (means over repeats) and ``metrics.json``.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
from absl import flags, logging

from dualpath_jax.config import ConfigError
from dualpath_jax.metrics import writers
from dualpath_jax.sched import load_scheduler
from dualpath_jax.sim import HardwareConfig, SimAgent, SimConfig, Simulator, variant_config
from dualpath_jax.sim.compute import fit_compute_model
from dualpath_jax.studies import cli
from dualpath_jax.studies.engine_ablation import put_estimate
from dualpath_jax.studies.seeds import estimate, printed

_ENGINE = flags.DEFINE_string("engine_workdir", "workdir/engine", "Workdir of a run_engine.py run.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/crosscheck", "Output directory (new or empty; --overwrite replaces "
                                "an earlier run).")
_RATES = flags.DEFINE_enum("link_rates", "measured", ["measured", "configured"],
                           "Link rates given to the simulator: the engine links' delivered rates (bytes / busy "
                           "seconds) or the configured emulation rates.")


def _agents(requests: list[dict], offline: bool) -> list[SimAgent]:
    by_agent = collections.defaultdict(list)
    for r in requests:
        by_agent[r["trajectory_id"]].append(r)
    agents = []
    for rounds in by_agent.values():
        rounds.sort(key=lambda r: r["round"])
        hit = np.array([r["hit_tokens"] for r in rounds], np.int64)
        prompt = np.array([r["prompt_tokens"] for r in rounds], np.int64)
        gen = np.array([max(r["gen_tokens"], 1) for r in rounds], np.int64)
        # the engine seeds the store with each agent's first prompt, so round 0 hits it too
        start = 0.0 if offline else float(rounds[0]["arrival_s"])
        agents.append(SimAgent(start, prompt - hit, gen, None, hit, initial_context=int(hit[0])))
    return agents


def _effective_rates(src: Path, variants, repeat: int) -> dict[str, float]:
    """Delivered bytes per busy second of the engine's SNIC reads and CNICs (both directions), over
    the runs of one repeat."""
    tot = collections.defaultdict(lambda: [0.0, 0.0])
    for v in variants:
        links = json.loads((_run_dir(src, v, repeat) / "summary.json").read_text())["links"]
        for name, st in links.items():
            cls = name.split("/")[0]
            key = "cnic" if cls.startswith("cnic") else cls
            tot[key][0] += st["bytes"]
            tot[key][1] += st["busy_s"]
    return {k: b / t for k, (b, t) in tot.items() if t > 0}


def _run_dir(src: Path, variant: str, repeat: int) -> Path:
    """Where ``run_engine.py`` wrote repeat ``repeat`` of ``variant`` (repeat 0 at the variant's top)."""
    return src / "runs" / variant / (f"r{repeat}" if repeat else "")


def _crosscheck_repeat(src: Path, cfg: dict, metrics: dict, variants, repeat: int, scheduler_cls) -> dict:
    """Simulate repeat ``repeat`` of the engine run from that repeat's own measurements: its
    forwards and DE steps (the compute model), its links' delivered rates, its SNIC rate, and
    the requests each variant ran. Returns ``{"rows": [...], "compute_model", "snic_bytes_per_s",
    "cnic_bytes_per_s", "measured_rates", "de_join_s"}`` (one row per variant: engine and
    simulated JCT in seconds and their ratio)."""
    cl = cfg["cluster"]
    pre, dec = [], []
    de_join_s = 0.0
    for v in variants:
        f = json.loads((_run_dir(src, v, repeat) / "forwards.json").read_text())
        # the PE is occupied for the forward's wall time; the simulator adds waits on emulated links
        # itself, so the fitted part is the rest: compute and per-forward overheads. Oracle's links
        # are bypassed: its load waits are host copies, part of the forward's cost.
        emulated = v != "oracle"
        pre += [([i["cached"] for i in x["items"]], [i["bsz"] for i in x["items"]],
                 x["wall_s"] - (x["load_wait_s"] if emulated else 0.0)) for x in f["pe_forwards"]]
        dec += [(x["batch"], x["context_tokens"], x["wall_s"]) for x in f["de_steps"]]
        if not emulated and f.get("de_join_count"):
            # a DE's decode thread stops while it admits a request; with Oracle's links bypassed its
            # measured join time is that overhead alone (elsewhere it also holds the emulated H2D copy)
            de_join_s = sum(f["de_join_s"].values()) / max(sum(f["de_join_count"].values()), 1)
    model = fit_compute_model(pre, dec)
    # this repeat's configured rates (every repeat is calibrated on its own)
    first = _run_dir(src, next(iter(variants)), repeat) / "summary.json"
    run_summary = json.loads(first.read_text()) if first.exists() else {}
    snic = float(run_summary.get("snic_bytes_per_s", metrics["snic_bytes_per_s"]))
    cnic = snic * float(cl["cnic_bytes_per_s"]) / float(cl["snic_bytes_per_s"])
    measured = _effective_rates(src, variants, repeat)
    if _RATES.value == "measured":
        # each emulated transfer also pays thread hand-offs and sleep overshoot: the links' delivered
        # rates (bytes / busy seconds over the repeat's runs) are what the engine's requests saw
        snic, cnic = measured["snic_read"], measured["cnic"]
    hw = HardwareConfig(gpus_per_node=1, snic_bytes_per_s=snic, cnic_bytes_per_s=cnic, dram_bytes_per_s=1e13,
                        dram_buffer_bytes=float(cl["buffer_bytes"]), hbm_bytes=float(cl["de_hbm_kv_bytes"]),
                        hbm_usable_fraction=1.0, cnic_kv_share=1.0)
    served = cfg["model"].get("checkpoint") or cfg["model"]["name"]  # (a checkpoint's config.json, else the preset)
    base = SimConfig(model=served, prefill_nodes=cl["prefill_nodes"], decode_nodes=cl["decode_nodes"],
                     hardware=hw, kv_dtype=cfg["model"]["kv_dtype"], weight_dtype="f32",
                     activation_reserve_bytes=float(cl["de_hbm_kv_bytes"] - cl["pe_hbm_kv_bytes"]),
                     fetch_period_s=float(cl["fetch_period_s"]), compute_quota_s=float(cl["compute_quota_s"]),
                     basic_max_batch_tokens=int(cl["basic_max_batch_tokens"]), compute=model,
                     de_join_s=de_join_s)
    offline = cfg.get("arrivals", {}).get("mode", "offline") == "offline"
    rows = []
    for v in variants:
        run = _run_dir(src, v, repeat)
        reqs = json.loads((run / "requests.json").read_text())
        res = Simulator(variant_config(base, v), _agents(reqs, offline), scheduler_cls=scheduler_cls).run()
        engine_jct = float(json.loads((run / "summary.json").read_text())["jct_s"])
        rows.append({"variant": v, "repeat": repeat, "engine_jct_s": engine_jct, "sim_jct_s": res.end_s,
                     "sim_over_engine": res.end_s / engine_jct})
    return {"repeat": repeat, "rows": rows, "compute_model": model, "snic_bytes_per_s": snic,
            "cnic_bytes_per_s": cnic, "measured_rates": measured, "de_join_s": de_join_s}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    src = cli.check_finished(_ENGINE.value, "engine_workdir")  # a failed or partial engine run is refused
    out = cli.open_workdir(_WORKDIR.value)
    cfg = json.loads((src / "config.json").read_text())
    metrics = json.loads((src / "metrics.json").read_text())
    ablation = json.loads((src / "ablation.json").read_text())
    ran, order = ablation["variants"], list(cfg.get("variants", ()))  # (ablation.json's keys are sorted)
    variants = [v for v in order if v in ran] + sorted(v for v in ran if v not in order)
    needed = ("requests.json", "forwards.json", "summary.json")
    repeats = [k for k in range(int(ablation.get("repeats", 1)))
               if all((_run_dir(src, v, k) / f).exists() for v in variants for f in needed)]
    if not repeats:
        raise ConfigError("engine_workdir", f"{src} holds no repeat with runs/<variant>/{{{','.join(needed)}}} for "
                          "every variant")
    scheduler_cls = load_scheduler(cfg.get("scheduler", "") or "", field="scheduler")  # as the engine ran
    per_repeat = []
    for k in repeats:
        per_repeat.append(_crosscheck_repeat(src, cfg, metrics, variants, k, scheduler_cls))
        for r in per_repeat[-1]["rows"]:
            print(f"repeat {k} {r['variant']:10s} engine JCT {r['engine_jct_s']:7.2f} s   simulated "
                  f"{r['sim_jct_s']:7.2f} s   ratio {r['sim_over_engine']:.3f}", flush=True)
    named, rows = {}, []
    for v in variants:
        ratios = [r["sim_over_engine"] for rep in per_repeat for r in rep["rows"] if r["variant"] == v]
        put_estimate(named, f"jct_ratio_{v}", ratios)
        e = estimate(ratios)
        rows.append({"variant": v, "engine_jct_s": _mean(per_repeat, v, "engine_jct_s"),
                     "sim_jct_s": _mean(per_repeat, v, "sim_jct_s"), "sim_over_engine": e.mean,
                     "sim_over_engine_ci95": e.half, "repeats": e.n})
    # per repeat: the largest |simulated / measured - 1| over the variants
    put_estimate(named, "max_abs_jct_error",
                 [max(abs(r["sim_over_engine"] - 1) for r in rep["rows"]) for rep in per_repeat])
    named["repeats"] = len(per_repeat)
    writers.write_json(out / "crosscheck.json", {"rows": rows, "link_rates": _RATES.value, "repeats": per_repeat})
    writers.write_table(out / "crosscheck", rows,
                        title=f"Simulator vs real engine JCT (mean over {len(per_repeat)} repeat(s), 95% CI)")
    writers.write_named_values(out, named)
    print()
    print(writers.format_named_values(printed(named)))


def _mean(per_repeat: list, variant: str, key: str) -> float:
    xs = [r[key] for rep in per_repeat for r in rep["rows"] if r["variant"] == variant]
    return sum(xs) / len(xs)


if __name__ == "__main__":
    cli.run(main)
