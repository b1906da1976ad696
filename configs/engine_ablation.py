"""Engine ablation (paper Fig. 12 right on the real engine): agentic traces on an emulated 1P2D cluster.

Command:
    python experiments/run_engine.py --workdir=workdir/engine
    python experiments/run_engine.py --config=configs/engine_ablation.py:big --workdir=workdir/engine_big
Variants (``sched.ABLATION_VARIANTS``): Basic (pe_read, full, round_robin), +Layerwise
(pe_read, layerwise, round_robin), +DPL (dual, layerwise, round_robin; naive read side that
alternates PE, DE per request), DualPath (dual, layerwise, dualpath) and Oracle (oracle, layerwise,
dualpath: no KV I/O cost). Every variant replays the same agents on a fresh KV store.

Workload: the first 24 agent conversations of ``../shared/data/agentic_traces`` (Claude Code
traces, first 300 files; ``workload.traces_dir`` names another trace folder, or the environment
variable ``DUALPATH_DATA_DIR`` another folder holding ``agentic_traces/``) that have at least
``rounds`` = 4 rounds, cut to those rounds; sub-agents dropped; each trajectory its own token scope
(hits only within a trajectory, PAPER.md A.4); every token count divided by ``token_divisor`` = 32
(``workload.scale_tokens``: a 64-token trace block becomes 2 tokens, prefix structure kept); agents
whose context exceeds ``max_context_tokens`` = 2048 or whose later rounds append more than
``max_append_tokens`` = 128 tokens (long tool outputs) skipped, so the 4-layer ``tiny-gqa`` model
(1 KiB of f32 KV per token) replays them on a CPU in the agentic regime (short appends over long
cached contexts). Warm start: the store is seeded with each agent's first prompt, so every replayed
round is a hit round (96 requests, ~70K hit tokens = 71 MB of KV, ~5.4K appended tokens, ~800
generated). All agents start at t = 0 (offline, the metric is JCT); ``arrivals.mode="online"``
gives Poisson arrivals at ``aps``, ``"recorded"`` (with ``workload.source="mooncake"``) each
session's recorded arrival divided by ``arrivals.speedup``.

Emulated hardware, 1P2D: one PE node and two DE nodes of one engine each (one JAX CPU device per
engine), 256 MiB DRAM buffer per node. Link rates are calibrated to the host (``calibrate``):
before every repeat (``each_repeat``; False: once, before the first), Oracle (no KV I/O) runs
``passes`` = 3 times and the SNIC rate is set so that reading all hit KV through one SNIC takes
``load_over_oracle`` = 2.5 x the median Oracle JCT (on a 2-core CPU about 17-18 MB/s per direction for
the default workload, 9-11 MB/s for ``:quick``; the host's speed sets it);
CNIC = 8 x SNIC per engine (the paper's 8 GPUs with one CNIC each share one SNIC per node). The PE
node's SNIC thus feeds only 1/2.5 of its compute, while the three SNICs together can feed it all:
the storage-bound regime of PAPER.md 1.2/2.6 (``load_over_compute`` in the output: hit KV read
time through one SNIC over Oracle's PE compute seconds, 3-4: Oracle's JCT also holds the DEs'
decoding, so it exceeds the PE's compute seconds). Every program the calibration and the variants
run is compiled before the calibration (``stages`` in ``ablation.json``: the timed stages compile
nothing). ``calibration.json`` in the workdir holds the rates, the Oracle passes they come from and
a fingerprint of the model, workload and topology (the Oracle passes run offline, without think
times, whatever the arrivals);
``calibrate.from_file=<calibration.json or a workdir>`` runs every repeat at that file's rates
(the median over its calibrations) without an Oracle pass, so two variants, two configs or two
code versions compare at identical link rates (a file of another model, workload or
topology is refused with one line naming the field that differs). ``calibrate.load_over_oracle=0``
uses ``cluster.snic_bytes_per_s``/``cnic_bytes_per_s`` as given.

Repeats: every variant runs ``repeats`` = 3 times (``:quick``: 5), interleaved (repeat r runs every
variant, in order, before repeat r + 1, so a slow change of the host's load hits every variant
alike); online, repeat r draws its arrivals with seed ``arrivals.seed + r``; offline every repeat
does the same work, so the spread is timing noise. Every figure is computed per repeat (a speedup
or ratio within one repeat) and reported as the mean over repeats with a 95% Student-t interval:
``name`` (mean), ``name_ci95`` (half width) lines, ``name_lo``/``name_hi`` in ``metrics.json``.
The token check covers every run.

Expected run time on a 2-core CPU shared with other jobs (load average 4-7): default about 3
minutes with the persistent jit cache of an earlier run (a cold cache adds 1-1.5 minutes of
compilation); ``:quick`` (8 agents) about 2 minutes warm, 3.5-4.5 minutes cold; ``:big`` (32
agents x 6 rounds, contexts up to 4K tokens, 385K hit tokens, plus ``split``: each request's
blocks read from both sides, beyond the paper) about half an hour (11 minutes with
``--config.repeats=1``). ``--config.repeats=1
--config.calibrate.passes=1`` gives one pass of each variant without an interval.
Output (workdir): ``ablation.json`` ({"repeats", "variants": {name: {"jct_s", "jct_s_ci95",
"ttft_p50_s", ..., "runs": [per repeat]}}, "calibration", "snic_bytes_per_s": [per repeat],
"stages", "tokens_identical", ...}), ``calibration.json`` (above), ``ablation.md/.csv`` (per variant,
mean ± 95% CI over the repeats: JCT, TTFT p50/p99, TTST, TPOT, MB read and busy seconds per SNIC,
SNIC Max/Avg, speedup vs Basic, compute seconds per engine, the SNIC rate; summed over the
repeats: failed requests, block reads that failed (recomputed) and blocks that could not be
persisted (later rounds hit less)), ``ablation_runs.md/.csv`` (the same for every run),
``ablation.png`` (means with 95% error bars), ``snic_read_bytes.png`` (repeat 0), ``tokens.json``
(token check of every run vs each other and a no-cache recompute),
``runs/<variant>/{requests,forwards,summary}.json`` for repeat 0 and ``runs/<variant>/r<k>/`` for
repeat k (per request timeline, tokens and failures; per PE forward (engine, (cached, bsz) pairs,
seconds) and per DE step, for calibrating the simulator), ``config.json``, ``env.json``,
``metrics.json``, ``metrics.jsonl`` and the ``name: value`` lines (``repeats``,
``jct_s_<variant>``, ``speedup_<variant>_vs_basic``, ``dualpath_over_oracle_jct``,
``snic_bytes_per_s``, ``load_over_compute`` (measured: needs ``oracle`` among the variants; without
it ``load_over_compute_estimated``, the hit rounds' read time over their appended tokens' compute
by the fitted time model, which leaves out the cold rounds' compute and so reads higher), each with
``_ci95``; ``num_failed``,
``read_failures``, ``persist_failures``, ``bytes_conserved`` and ``tokens_identical`` over every
run, ``engine_processes`` and ``cross_process_kv_bytes``, ...).

Runtime: ``runtime="threads"`` (default) runs every engine as a thread of this process;
``runtime="ray"`` runs every node as a Ray actor in its own process (1P2D: three engine processes
plus the driver; KV between them over JAX's transfer server; ``engine_processes`` and
``cross_process_kv_bytes``, summed over every run, say so), on a local Ray instance started inside
the run or on the cluster at ``runtime_address`` (``"auto"`` after ``ray start``); ``ray.*``
places the node actors (GPUs per engine, a custom resource per role). See the README's "Engines
as processes and across hosts".
"""

import ml_collections

from dualpath_jax.config import config_variant_error, to_dict
from dualpath_jax.engine.config import ClusterConfig

_PER_VARIANT = ("loading", "prefill", "policy")  # set by each variant (``variants``)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.scheduler = ""  # "pkg.module:Class": a ClusterScheduler subclass for every run ("" = built-in)
    config.variants = ("basic", "layerwise", "dpl", "dualpath", "oracle")
    # model.name: a preset with random parameters that fits one device (tiny-gqa, tiny-mla, tiny-moe; the
    # full-size presets are for the simulator); model.checkpoint: a local Hugging Face checkpoint
    # directory (Qwen2/3, Qwen3-MoE, Llama, Mistral, DeepSeek-V2/V3) served instead ("" = the preset)
    config.model = ml_collections.ConfigDict({"name": "tiny-gqa", "kv_dtype": "f32", "seed": 0, "checkpoint": ""})
    # workload.source: agentic (Claude Code traces) or mooncake (traces_dir: conversation, synthetic or a file)
    config.workload = ml_collections.ConfigDict({
        "source": "agentic", "max_files": 300, "num_agents": 24, "rounds": 4, "token_divisor": 32,
        "max_context_tokens": 2048, "max_append_tokens": 128, "warm_start": True, "traces_dir": "",
        "mooncake_block_tokens": 512})
    config.arrivals = ml_collections.ConfigDict({"mode": "offline", "aps": 1.0, "seed": 0, "speedup": 1.0,
                                                "use_think_time": False})
    # the emulated cluster: every ClusterConfig field at its default (the switches come from each
    # variant), then the knobs this CPU-scale run sets on purpose
    config.cluster = ml_collections.ConfigDict(
        {k: v for k, v in to_dict(ClusterConfig()).items() if k not in _PER_VARIANT})
    # the engine's runs last seconds with millisecond forwards: a 20 ms scheduling tick (the
    # simulator's assumption for the paper's cluster) would add a visible share to every TTFT
    config.cluster.fetch_period_s = 0.005
    # FIFO batches of the tiny model sized to the PE's 8 MiB device KV budget, not the paper's GPUs
    config.cluster.basic_max_batch_tokens = 8192
    config.profile = ml_collections.ConfigDict({
        "pairs": ((0, 64), (1024, 64), (2048, 128), (3008, 32), (1024, 512), (2048, 1024)), "repeats": 3})
    # Link rates from the host's speed: SNIC such that reading all hit KV through one SNIC takes
    # load_over_oracle x Oracle's JCT (0 = use cluster.snic_bytes_per_s / cnic_bytes_per_s as given).
    # The median JCT of `passes` Oracle passes sets the rates, before every repeat (each_repeat);
    # from_file reuses a saved calibration.json.
    config.calibrate = ml_collections.ConfigDict({"load_over_oracle": 2.5, "cnic_over_snic": 8.0, "passes": 3,
                                                  "each_repeat": True, "from_file": ""})
    config.repeats = 3  # runs of every variant, interleaved; figures are means with a 95% interval
    config.window_s = 1.0
    config.tie_tol = 1e-4
    config.reference_chunk_tokens = 512
    # threads: every engine a thread of this process; ray: every node a Ray actor in its own process
    # (KV between them over JAX's transfer server), on a local Ray instance or the cluster at
    # runtime_address ("auto" after `ray start`); ray.*: GPUs per engine and role resources for placement
    config.runtime = "threads"
    config.runtime_address = ""
    config.ray = ml_collections.ConfigDict({"gpus_per_engine": 0.0, "pe_resource": "", "de_resource": ""})
    if arg == "quick":
        config.workload.num_agents = 8
        config.workload.max_files = 120
        # its runs last 1-3 s, so one burst of other work on the host moves a run by tens of
        # percent: five repeats keep the mean within a few percent
        config.repeats = 5
    elif arg == "big":
        config.variants = ("basic", "layerwise", "dpl", "dualpath", "split", "oracle")
        config.workload.num_agents = 32
        config.workload.rounds = 6
        config.workload.max_files = 609
        config.workload.max_context_tokens = 4096
        config.cluster.max_decode_batch = 24
        config.cluster.de_hbm_kv_bytes = 128 * 2**20
    elif arg not in (None, ""):
        raise config_variant_error("configs/engine_ablation.py", arg, ("quick", "big"))
    return config
