"""The reproduction report (``REPORT.md``) of ``experiments/reproduce_paper.py``.

It sets the simulator's predictions beside the paper's headline claims (PAPER.md section 6.5:
the paper's detailed values are withheld from the project, so only the abstract's claims, the
Eq. 9 range and Fig. 14's attention ratio are compared), lists every calibration input with its
source (read from the code's defaults at run time, so the report always matches the code), and
gathers each study's tables, plots and headline figures.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from dualpath_jax.metrics.writers import markdown_table
from dualpath_jax.model import cost
from dualpath_jax.sim.compute import ATTENTION_EFFICIENCY, PUBLIC_CONTEXT_TOKENS, PUBLIC_FIGURES, calibrate_config
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.hardware import HardwareConfig
from dualpath_jax.studies.seeds import CI_SUFFIX, fmt

__all__ = ["PAPER_CLAIMS", "STUDY_TITLES", "STUDY_TABLES", "calibration_markdown", "claims_rows", "build_report"]

PAPER_CLAIMS = (
    ("Offline throughput up to 1.87x over Basic (abstract; max over the Fig. 7 grid)", "1.87",
     "fig7", "max_speedup_dualpath_vs_basic"),
    ("Online capacity (max APS under SLO) on average 1.96x over Basic across the two DeepSeek models (abstract)",
     "1.96", "online", "mean_aps_gain_dualpath_vs_basic"),
    ("DualPath close to Oracle on DS 660B: offline JCT DualPath / Oracle (abstract, Fig. 7)", "close to 1",
     "fig7", "dualpath_over_oracle_jct_ds660b"),
    ("DualPath close to Oracle on DS 660B: max APS DualPath / Oracle (abstract, Fig. 10)", "close to 1",
     "online", "dualpath_over_oracle_aps_ds660b"),
    ("Ablation, DS 660B 2P4D 64K: JCT speedup of DualPath over Basic (Fig. 12 right)", "withheld",
     "ablation", "speedup_dualpath_vs_basic"),
    ("Eq. 9 lower bound on P/D for g = 8, s = 1, M = 500 GB/s, Bs = 50 GB/s (section 4.2)", "1/7 = 0.143",
     "pd_sweep", "eq9_lower"),
    ("Eq. 9 upper bound on P/D, same hardware (section 4.2)", "7/2 = 3.5", "pd_sweep", "eq9_upper"),
    ("Attention-time Max/Avg across a group's GPUs per forward, mean over the forwards of the first 5% of the "
     "task (of the run's time), DualPath (Fig. 14, section 7.5)", "1.06",
     "balance", "attn_max_avg_head_time_mean_dualpath"),
    ("The same, weighted by attention time (sum of max / sum of mean over those forwards)", "1.06 (per forward)",
     "balance", "attn_max_avg_head_time_weighted_dualpath"),
    ("The same per forward over the run's first 5% of forwards instead of its time", "1.06 (of the task)",
     "balance", "attn_max_avg_head_mean_dualpath"),
    ("The last, over those forwards in which every GPU of the group had attention work",
     "1.06 (all forwards)", "balance", "attn_max_avg_head_full_mean_dualpath"),
)
"""(claim, paper value, study, headline key)."""

STUDY_TITLES = {
    "ablation": "Fig. 12 right: ablation (Basic, +Layerwise, +DPL, +Sched = DualPath, Oracle)",
    "fig7": "Fig. 7: offline JCT vs agents",
    "fig8": "Fig. 8: P/D ratio on DS 27B",
    "fig9": "Fig. 9: append / generation length scaling",
    "online": "Fig. 10/11: online serving and max APS under SLO",
    "ttft_breakdown": "Fig. 12 left: TTFT breakdown",
    "working_set": "Section 8.2: working set vs APS",
    "balance": "Fig. 13-14: SNIC traffic and attention-time balance",
    "table3": "Table 3: scale-out",
    "pd_sweep": "Eq. 9: P/D sweep against the bottleneck-free range",
}

STUDY_TABLES = {
    "ablation": ("ablation",), "fig7": ("fig7",), "fig8": ("fig8",), "fig9": ("fig9",),
    "online": ("online_max_aps", "online_curves"), "ttft_breakdown": ("ttft_breakdown",),
    "working_set": ("working_set",), "balance": ("balance", "balance_busy"), "table3": ("table3",),
    "pd_sweep": ("pd_sweep",),
}
"""Markdown tables (file stems in the study's folder) the report includes (time series are linked only)."""

_HW_SOURCES = {
    "gpus_per_node": "paper section 7.2 (8 Hopper GPUs per node)",
    "cnic_bytes_per_s": "paper section 7.2 (400 Gbps RDMA CNIC per GPU)",
    "snics_per_node": "paper sections 2.3, 7.2 (one storage NIC per node)",
    "snic_bytes_per_s": "paper section 7.2 (400 Gbps; 3FS saturates it)",
    "dram_bytes_per_s": "paper section 4.2 (M ~ 500 GB/s)",
    "dram_buffer_bytes": "paper A.4 (80 GB/node DeepSeek; 320 GB/node Qwen, set in its configs)",
    "gpu": "assumption: H800 (the paper says Hopper, not the SKU; DeepSeek's public figures are H800's, PAPER.md 9)",
    "hbm_bytes": "H800 datasheet (80 GB HBM3); the SKU is not given by the paper",
    "hbm_bytes_per_s": "H800 datasheet (3.35 TB/s)",
    "peak_flops": "None: the GPU's dense peak in the model's compute dtype (H800 datasheet: 1979 FP8, 989.5 BF16 "
                  "TFLOP/s; dualpath_jax/sim/catalog.py)",
    "hbm_usable_fraction": "assumption (runtime, fragmentation)",
    "cnic_kv_share": "assumption (KV on a low-priority class, paper section 5.1)",
    "storage_bytes_per_s": "paper section 7.2 (3FS saturates every SNIC: unbounded)",
}

_SIM_SOURCES = {
    "block_tokens": "paper section 4.1 (64-token blocks)",
    "alpha_s": "paper A.4 (3 s of readable tokens)",
    "beta_s": "paper A.4 (5 s of per-GPU processable tokens)",
    "z_factor": "paper section 6.1 (1.05)",
    "compute_quota_s": "paper A.4 (300 ms)",
    "fetch_period_s": "assumption (not given by the paper)",
    "basic_max_batch_tokens": "assumption (Basic's FIFO batch cap; not given)",
    "layerwise_depth": "assumption (double buffering)",
    "activation_reserve_bytes": "assumption",
    "prefill_layer_overhead_s": "assumption (launch + EP dispatch/combine per layer)",
    "eff_memory": "FlashMLA README (dense MLA decode reads 3,000 GB/s of the H800's 3,350)",
    "attention_efficiency": "FlashMLA README (sparse MLA prefill at 640 of the H800's 989 BF16 TFLOP/s); the same "
                            "share assumed for dense MLA, GQA and, of the FP8 peak, the DSA indexer",
    "de_join_s": "assumption: 0 (the paper gives no admission cost; the H2D copy is a modelled CNIC transfer)",
    "attention_time_error": "assumption: 0 (the attention-time estimate is exact; the paper gives no error for "
                            "its profiled fit, PAPER.md 5.5)",
    "ep_sync": "None: on for MoE models (EP + DP attention, paper A.4): an EP group's engines step together",
    "pe_ep_nodes": "None: every PE node in one EP group (assumption: the paper gives no EP degree; DeepSeek's "
                   "public deployment runs prefill on EP32 units of 4 nodes)",
    "de_ep_nodes": "None: every DE node in one EP group (assumption, as pe_ep_nodes; DeepSeek's public "
                   "deployment decodes on EP144 units of 18 nodes)",
    "kv_dtype": "paper Table 1 (None: the model's own, FP8 KV for MLA, FP16 for GQA / Qwen 32B)",
    "weight_dtype": "None: the model's own (FP8 for DeepSeek's FP8 checkpoints, BF16 for dense GQA); it picks the "
                    "peak FLOP/s. Qwen 32B: FP8 set in configs/sim_fig7.py (assumption, needed to fit)",
}


MODEL_NOTES = """### Modelling choices (reviewed against PAPER.md and public data)

- **KV bytes.** Every hit token's cache entry is loaded, stored and moved whole: the KV plus, under
  DSA, the lightning indexer's keys (DeepSeek-V3.2: 61 x (656 + 132) = 48,068 B/token, PAPER.md
  8.2; DS 27B: 30 x (656 + 68) = 21,720). Table 1's cache-compute ratio leaves the indexer out, as the paper does.
- **Prefill cost.** Linear layers at the weights' dtype peak times an efficiency that DeepSeek's
  public prefill figure leaves at its own context mix (4K prompts: deepseek-ai/profile-data), attention at
  the BF16 peak and the indexer at the FP8 peak, both at FlashMLA's measured share (0.647). At
  32K-64K contexts the attention share of the work is no longer priced at the 4K mix's rate.
- **Decode cost.** One step reads the weights once and every sequence's KV (top-k entries under
  DSA, every indexer key) and computes one token per sequence and its attention; the per-layer
  remainder is calibrated so that 88 sequences of 4K context step in 1/21 s (the public 14.8k
  tokens/s per node at 21 tokens/s per user). The step grows with the batch and the context.
- **Read side.** The shorter node read queue reads (PAPER.md 5.4); equal queues, common while
  the SNICs are under half loaded, go to the node that has read fewer tokens so far (the paper
  gives no tie rule; a fixed side builds a PE/DE imbalance).
- **Basic's reads** land in the PE node's 80 GB DRAM buffer as soon as the request is placed, and
  a full (non-layer-wise) prefill forward then holds its whole batch's KV in HBM (its batch is
  capped by the PE's free HBM, and its H2D precedes its compute). Kept: for DS 660B the PE node's
  free HBM (8 x 9.2 GB) is about the buffer's size, and bounding Basic's read-ahead by it instead
  changed the quick ablation's Basic JCT by 0.09% (a 40 GB buffer: +4.8%).
- **EP groups.** A MoE model's routed experts are spread over an EP group's GPUs (all the PEs,
  all the DEs by default: `pe_ep_nodes` / `de_ep_nodes`), which also sets the weights per GPU,
  and the group steps together: its forward (decode step) lasts as long as its slowest member's
  own part (attention and the non-expert layers: projections, dense MLPs, shared experts) plus
  the routed experts' time at the group's mean tokens per GPU (PAPER.md 5.5: every GPU syncs after
  attention to enter the MoE stage, whose experts compute all members' tokens; the router's
  balance is assumed).
  An EP group is also one scheduler group, whose engines fetch together (PAPER.md 5.1: a group
  is one or more nodes), so that the group's forwards are balanced across the engines that wait
  for each other; Fig. 14's Max/Avg is over an EP group's GPUs, as the paper's caption has it.
- **Group forwards.** An EP group's forward starts when any member has ready work; idle
  members join the EP exchange with no tokens, as an engine loop that runs forwards back to back
  does, and each member's batch stays under the compute quota (PAPER.md 5.5). Kept; the balance
  study splits Fig. 14's ratio by the number of busy members. A member's attention time is the
  batch former's own estimate (``ComputeModel``), so a forward in which every member fills the
  quota is balanced to within 1e-4; on GPUs the estimate's error adds to the paper's ratio
  (``sim.attention_time_error`` models it; 0 here: the paper gives no figure for it).
- **Admission.** A DE admits a request at no decode-time cost (``de_join_s`` 0): the paper gives
  none, and the H2D copy of the request's KV is a modelled transfer that the request waits for.
- **Links.** A transfer streams through all its links at once at its slowest link's rate and is
  booked where every link has that rate to spare for the whole transfer (the earliest such
  stretch, before later bookings when it fits), so no link carries more than its rate; contention
  beyond that (congestion, fair sharing of a link's rate among transfers) is not modelled.

`experiments/sensitivity.py` reruns the headline figures with each assumed quantity at -25% and +25%.
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return format(v, ".4g")
    return str(v)


def calibration_markdown() -> str:
    """Markdown of every calibration input and its source (values read from the code)."""
    lines = ["## Calibration inputs and their sources", "",
             "Every number the simulator uses, with its source. Nothing is fitted to the paper's result figures.",
             "", "### Compute model (dualpath_jax/sim/compute.py)", "",
             f"Public figures ({PUBLIC_FIGURES['source']}):", ""]
    lines.append(markdown_table([{"figure": k, "value": _fmt(v)} for k, v in PUBLIC_FIGURES.items() if k != "source"]))
    lines += [f"Context mix of the public figures: `PUBLIC_CONTEXT_TOKENS = {PUBLIC_CONTEXT_TOKENS}`-token prompts "
              "(DeepSeek's published prefill/decode profiles, stated to match its online deployment); attention "
              f"kernels at `ATTENTION_EFFICIENCY = {ATTENTION_EFFICIENCY:.3f}` of the BF16 peak (FlashMLA sparse "
              "prefill, 640 of 989 TFLOP/s).", "",
              "Derived coefficients per model (``calibrate_config``: FLOPs and bytes of ``dualpath_jax.model.cost`` "
              "over the efficiencies implied by the public figures; EP over the PE nodes of the default deployment, "
              "one EP group; "
              "each model's own dtypes, Qwen 32B as in Fig. 7's config):", ""]
    rows = []
    hw = HardwareConfig()
    for model, p, dtypes in (("ds-27b", 1, {}), ("deepseek-v3.2", 2, {}),
                             ("qwen2.5-32b", 1, {"kv_dtype": "fp16", "weight_dtype": "fp8"})):
        cfg = SimConfig(model=model, prefill_nodes=p, **dtypes)
        m = calibrate_config(cfg, cfg.ep_gpus("pe"))
        row = {"model": model, "kv_dtype": cfg.kv_dtype, "weight_dtype": cfg.weight_dtype,
               "stored_kv_bytes_per_token": cost.stored_kv_bytes_per_token(cfg.spec, cfg.kv_dtype)}
        row.update({f.name: getattr(m, f.name) for f in dataclasses.fields(m)})
        row["prefill_tokens_per_s_per_GPU (ctx 32K, append 429)"] = m.prefill_tokens_per_s(32768, 429)
        row["decode_step_ms (64 seqs x 32K)"] = m.decode_step_s(64, 64 * 32768) * 1e3
        rows.append(row)
    lines.append(markdown_table(rows))
    lines += ["### Hardware defaults (dualpath_jax/sim/hardware.py)", ""]
    lines.append(markdown_table([{"field": f.name, "value": _fmt(getattr(hw, f.name)),
                                  "source": _HW_SOURCES.get(f.name, "")} for f in dataclasses.fields(HardwareConfig)]))
    sim = SimConfig()
    lines += ["### Simulator defaults (dualpath_jax/sim/config.py)", ""]
    lines.append(markdown_table([{"field": name, "value": _fmt(getattr(sim, name)), "source": src}
                                 for name, src in _SIM_SOURCES.items()]))
    lines += ["### Workload", "",
              "- Paper Table 2 datasets (PAPER.md section 6.2): a seeded generator whose per-MAL parameters were "
              "fitted to Table 2's means (`dualpath_jax.workload.synthetic.PAPER_PARAMS`); 500 base trajectories, "
              "more agents by prepending a 64-token round with one generated token (paper A.3); zero think time "
              "(paper section 8.2). Per-trajectory distributions are not published: their shapes are assumptions.",
              "- Fig. 9 scaling: every round's append or generation length times the factor, then truncation at "
              "the MAL (paper section 7.3).", "- Online: Poisson agent arrivals at APS with a fixed number of "
              "agents per run (see each config).", ""]
    return "\n".join(lines)


def claims_rows(named: Mapping[str, Mapping], seeds: Mapping[str, int] | None = None) -> list[dict]:
    """One row per :data:`PAPER_CLAIMS` entry: claim, paper, simulated (blank if the study did not
    run; ``mean ± 95% half width`` over the study's seeds when its figures carry ``_ci95``), source,
    a note on bounds (unbracketed max-APS searches, over every seed's search; the range a bracketed
    gain's searches leave it in) and the seeds
    (``seeds``: study -> R; blank if not given)."""
    seeds = seeds or {}
    rows = []
    for claim, paper, study, key in PAPER_CLAIMS:
        values = named.get(study, {})
        value = values.get(key)
        note = ""
        if value is None and f"{key}_at_least" in values:
            value, note = values[f"{key}_at_least"], "lower bound (DualPath's search not bracketed)"
        if values.get("unbracketed_searches"):
            note = (note + "; " if note else "") + f"{values['unbracketed_searches']} max-APS searches not bracketed"
        if study == "online" and value is not None:
            models = [k[len("max_aps_"):].removesuffix("_at_least")[:-len("_basic")] for k in values
                      if k.startswith("max_aps_") and k.removesuffix("_at_least").endswith("_basic")]
            note = (note + "; " if note else "") + f"models run: {', '.join(models) or 'none'}"
            if f"{key}_search_lo" in values:  # what the searches' rates leave open (online.online)
                note += (f"; the searches' rates leave it between {_fmt(values[f'{key}_search_lo'])} and "
                         f"{_fmt(values[f'{key}_search_hi'])}")
        if study == "fig7" and key == "max_speedup_dualpath_vs_basic" and "max_speedup_at" in values:
            note = f"at {values['max_speedup_at']}"
        shown = key if key in values else f"{key}_at_least"
        rows.append({"claim": claim, "paper": paper, "simulated": "" if value is None else _with_ci(values, shown),
                     "source": f"{study}: {key}", "note": note,
                     "seeds": "" if value is None or not seeds.get(study) else seeds[study]})
    return rows


def _with_ci(values: Mapping, key: str) -> str:
    """``values[key]`` formatted, with `` ± <half width>`` when ``values`` holds its ``<key>_ci95``
    (a mean over seeds, :mod:`.seeds`) and the half width is defined."""
    v = values[key]
    half = values.get(key + CI_SUFFIX)
    if isinstance(half, float) and not math.isnan(half) and isinstance(v, (int, float)):
        return fmt(v, half)
    return _fmt(v)


def _headline_rows(values: Mapping) -> list[dict]:
    """A study's ``name: value`` figures as table rows, each ``mean ± half width`` (the ``_ci95``,
    ``_lo`` and ``_hi`` companions folded into their figure)."""
    companions = {k[:-len(CI_SUFFIX)] + s for k in values if k.endswith(CI_SUFFIX) for s in (CI_SUFFIX, "_lo", "_hi")}
    return [{"name": k, "value": _with_ci(values, k)} for k in values if k not in companions]


def _demote(md: str) -> str:
    return "\n".join("#### " + line[2:] if line.startswith("# ") else line for line in md.splitlines())


def build_report(workdir, studies: Sequence[str], named: Mapping[str, Mapping], wall_s: Mapping[str, float],
                 errors: Mapping[str, str], *, variant: str, scheduler: str = "",
                 seeds: Mapping[str, int] | None = None) -> Path:
    """Write ``workdir/REPORT.md`` from the studies' folders ``workdir/<study>``; returns its path.

    ``named``: each study's ``name: value`` figures (means over seeds with ``_ci95`` / ``_lo`` /
    ``_hi``, shown as ``mean ± half width``); ``wall_s``: seconds per study; ``errors``: the
    traceback of each failed study; ``variant``: the config variant run (``quick``, ...);
    ``scheduler``: the scheduler plug-in every study ran with (``""``: the built-in one);
    ``seeds``: the seeds each study ran (its config's ``seeds``)."""
    seeds = seeds or {}
    workdir = Path(workdir)
    total = sum(wall_s.values())
    lines = ["# DualPath simulator: reproduction of the paper's experiments", "",
             f"Variant: `{variant}`; studies: {', '.join(studies)}; total wall time {total:.0f} s "
             "(2-core CPU, simulated virtual time)."
             + (f" Scheduler plug-in: `{scheduler}` (every run)." if scheduler else ""), "",
             "All tables are **predictions** of the discrete-event simulator (`dualpath_jax/sim/`) with the "
             "public calibration listed below; no parameter was tuned to the paper's results. Quick / tiny "
             "variants use smaller models, batches and clusters than the paper (see each study's config).", "",
             "Each configuration runs once per seed (workload generator seed and, online, Poisson arrival seed "
             "offset by the seed index; `seeds` in each study's config); every figure is computed within a seed "
             "(a speedup is Basic's JCT over DualPath's in the same seed) and shown as the mean over the seeds "
             "± the half width of its 95% Student-t interval (no interval with 1 seed).", "",
             "## Paper headline claims vs simulation", ""]
    lines.append(markdown_table(claims_rows(named, seeds)))
    lines.append(calibration_markdown())
    lines += [MODEL_NOTES, "## Studies", ""]
    for study in studies:
        lines += [f"### {study}: {STUDY_TITLES.get(study, study)}", "",
                  f"Config: `configs/sim_{study}.py` ({variant})"
                  + (f"; {seeds[study]} seed{'s' if seeds[study] != 1 else ''}" if study in seeds else "")
                  + f"; wall time {wall_s.get(study, float('nan')):.1f} s; outputs in `{study}/`.", ""]
        if study in errors:
            lines += ["**FAILED**:", "", "```", errors[study], "```", ""]
            continue
        values = named.get(study, {})
        if values:
            lines.append(markdown_table(_headline_rows(values)))
        for stem in STUDY_TABLES.get(study, (study,)):
            md = workdir / study / f"{stem}.md"
            if md.exists():
                lines += [_demote(md.read_text()), ""]
        for png in sorted((workdir / study).glob("*.png")):
            lines += [f"![{study} {png.stem}]({study}/{png.name})", ""]
    path = workdir / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path
