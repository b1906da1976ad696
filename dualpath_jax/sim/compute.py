"""Compute model: prefill forward and decode step times from FLOPs, bytes and a few constants.

Prefill, one engine's share of a forward pass over ``(cached, bsz)`` pairs (PAPER.md 5.5: the
attention term is what the compute quota bounds)::

    t = L * prefill_layer_overhead_s + linear_flops / (peak[compute dtype] * eff_linear)
        + attention_flops / (peak[bf16] * eff_attention) + indexer_flops / (peak[fp8] * eff_attention)

Decode, one engine's step over ``B`` sequences holding ``ctx`` tokens in total, of which ``att``
are attended (each step reads the weights once and every sequence's KV from HBM, and computes one
token per sequence; under DSA ``att = sum_i min(ctx_i, topk)``, else ``att = ctx``)::

    t = L * decode_layer_overhead_s + (weight_bytes + att * kv_bytes
                                       + ctx * indexer_key_bytes) / (hbm_bw * eff_memory)
        + B * linear_flops_per_token / (peak * eff_linear)
        + attention_flops(att) / (peak[bf16] * eff_attention) + indexer_flops(ctx) / (peak[fp8] * eff_attention)

Memory and compute are added (no overlap assumed); the per-layer overhead absorbs the rest at the
calibration point. FLOPs and bytes come from :mod:`dualpath_jax.model.cost` (at 32.7K context it
gives DeepSeek-V3.2 74 linear + 35 DSA + 33 indexer GFLOP per token, PAPER.md 8.2).

With DP attention + EP (MoE models, PAPER.md 5.5 and 6.1) each GPU of an EP group computes its own
requests' attention and their non-expert layers (projections, dense MLPs, shared experts, LM head),
then all synchronise and the routed experts compute every GPU's tokens, spread over the group: a
group's forward or step takes its slowest member's own part plus the routed experts' time at the
group's mean tokens per GPU (``s_per_routed_token``; the router's balance is assumed, so the
stragglers the paper's intra-engine scheduling removes are those of the per-GPU part).

Calibration (:func:`calibrate_from_public`), from public figures only, never from the paper's
result figures (PAPER.md 9):

* attention: FlashMLA's token-level sparse MLA prefill kernel reaches 640 TFLOP/s (BF16) on an
  H800 SXM5 (github.com/deepseek-ai/FlashMLA README), 0.647 of the 989 TFLOP/s BF16 peak:
  ``ATTENTION_EFFICIENCY``, used for every attention kernel (an assumption for dense MLA and GQA;
  FlashAttention-3 reports a similar share on H100) and, as a share of the FP8 peak, for the DSA
  indexer's FP8 scoring (an assumption).
* prefill linear layers: DeepSeek's V3/R1 service does 73.7k input tokens/s per H800 node at a
  56.3% cache-hit rate -> 32.2k computed tokens/s per node, 4.03k per GPU. DeepSeek's published
  prefill profile (github.com/deepseek-ai/profile-data README: "in line with DeepSeek V3/R1's actual
  online deployment") uses 4K-token prompts and 16K tokens per GPU per forward: that is the context
  mix the throughput figure is taken at (``PUBLIC_CONTEXT_TOKENS``; the service's own mean is not
  published). At that mix a computed DeepSeek-V3 token is 73 GFLOP linear + 54 GFLOP (dense MLA)
  attention; the attention time at ``ATTENTION_EFFICIENCY`` and the per-forward layer overhead
  are taken off the measured time per token, and the rest gives ``eff_linear`` (about 0.23 of the
  FP8 peak: the end-to-end share, EP communication and imbalance included). The linear share of the
  work at 32K-64K contexts thus no longer inherits the attention cost of 4K prompts. Sensitivity:
  with ``ATTENTION_EFFICIENCY`` 25% lower, ``eff_linear`` becomes 0.28 and a DeepSeek-V3.2 token at
  32.7K context costs 2% less (the calibration point pins the total).
* decode: 14.8k output tokens/s per node at 20-22 tokens/s per user -> about 88 sequences per GPU
  and a 1/21 s step, at the published decode profile's 4K-token prompts (same README), on the
  public EP144 deployment (18 nodes). Memory at the datasheet HBM bandwidth times ``eff_memory``
  (FlashMLA's dense decode kernel reads 3,000 GB/s of the H800's 3,350 in its memory-bound
  configuration, 0.9), compute at the prefill efficiencies; the per-layer overhead is what the
  1/21 s step leaves (about 0.14 ms per layer: EP dispatch/combine latency not hidden).
  Checked by ``tests/test_sim_compute.py``: the calibrated model gives 21 tokens/s per user and 14.8k
  output tokens/s per node back at that point, and its step grows with the batch and the context.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, SupportsIndex

import numpy as np

from dualpath_jax.config import ConfigError, check_non_negative
from dualpath_jax.model import cost
from dualpath_jax.model.spec import ModelSpec, get_spec
from dualpath_jax.sim import catalog

__all__ = ["ComputeModel", "calibrate_from_public", "fit_compute_model", "weight_bytes_per_gpu",
           "ASSUMED_CONTEXT_TOKENS", "PUBLIC_CONTEXT_TOKENS", "PUBLIC_FIGURES", "ATTENTION_EFFICIENCY",
           "public_decode_point", "calibrate_config", "role_models"]

PUBLIC_CONTEXT_TOKENS = 4096
"""Prompt length of DeepSeek's published prefill and decode profiles, stated to be in line with its
online deployment (github.com/deepseek-ai/profile-data); the context mix of :data:`PUBLIC_FIGURES`."""

ASSUMED_CONTEXT_TOKENS = PUBLIC_CONTEXT_TOKENS
"""Alias of :data:`PUBLIC_CONTEXT_TOKENS` (the service's own mean context is not published)."""

ATTENTION_EFFICIENCY = 640e12 / 989e12
"""Share of the BF16 peak an attention kernel reaches: FlashMLA sparse MLA prefill, 640 TFLOP/s on
an H800 SXM5 (github.com/deepseek-ai/FlashMLA README) over its 989 TFLOP/s dense BF16 peak."""

PUBLIC_FIGURES: dict[str, Any] = {
    "prefill_input_tokens_per_s_per_node": 73.7e3,
    "prefill_cache_hit_rate": 0.563,
    "prefill_prompt_tokens": PUBLIC_CONTEXT_TOKENS,
    "prefill_tokens_per_forward_per_gpu": 16384,
    "decode_output_tokens_per_s_per_node": 14.8e3,
    "decode_tokens_per_s_per_user": 21.0,
    "decode_context_tokens": PUBLIC_CONTEXT_TOKENS,
    "decode_ep_size": 144,
    "gpus_per_node": 8,
    "h800_fp8_flops": 1979e12,
    "h800_bf16_flops": 989e12,
    "h800_hbm_bytes_per_s": 3.35e12,
    "flashmla_sparse_prefill_flops": 640e12,
    "flashmla_decode_hbm_bytes_per_s": 3.0e12,
    "source": "DeepSeek V3/R1 inference system overview (open-source week day 6, 2025-03; decode on "
              "EP144 units of 18 nodes); github.com/deepseek-ai/profile-data (4K prompts, 16K tokens per "
              "GPU per prefill forward); github.com/deepseek-ai/FlashMLA README; H800 datasheet",
}


@dataclasses.dataclass(frozen=True)
class ComputeModel:
    """Linear time model of one engine, in seconds (see the module docstring for the physics).

    Prefill, one forward over pairs ``(cached_i, bsz_i)``::

        prefill_overhead_s + s_per_token * sum(bsz) + s_per_key * sum(keys_i) + s_per_index_key * sum(all_keys_i)

    where ``keys_i = sum_{j<bsz_i} min(cached_i + j + 1, topk)`` (DSA caps the keys a query attends
    to; without DSA ``topk`` is infinite) and ``all_keys_i`` is the same sum uncapped (the DSA
    indexer scores every key). Decode, one step of ``B`` sequences holding ``ctx`` tokens, ``att``
    of them attended (:meth:`decode_step_s`; DSA: ``sum_i min(ctx_i, topk)``)::

        decode_overhead_s + s_per_sequence * B + s_per_context_token * att
            + s_per_index_context_token * ctx

    (``s_per_context_token``: reading one token's KV and attending to it; ``s_per_index_context_token``:
    reading and scoring its DSA indexer key, for every context token.)

    ``s_per_routed_token`` is the routed experts' share of ``s_per_token`` and of
    ``s_per_sequence``: under expert parallelism a GPU computes it for the tokens routed to its
    experts, the EP group's mean tokens per GPU when the router balances them, not for its own
    (``routed_tokens`` of :meth:`prefill_time_s`, ``routed_batch`` of :meth:`decode_step_s`).

    :func:`calibrate_from_public` derives the coefficients from FLOPs, bytes and public
    throughput figures; :func:`fit_compute_model` fits them to measured forwards (the real
    engine's profile) by least squares.

    Attributes:
      weight_bytes_per_gpu: resident weights, for HBM capacity (not a time term).
      topk: DSA top-k, or None for dense attention.
      s_per_routed_token: seconds per token of the routed experts (0 for a dense model), included in
        ``s_per_token`` and ``s_per_sequence``.

    Raises:
      ConfigError: a negative coefficient (``compute.<field>``), or ``s_per_routed_token`` above
        ``s_per_token`` or ``s_per_sequence``.
    """

    prefill_overhead_s: float
    s_per_token: float
    s_per_key: float
    s_per_index_key: float = 0.0
    decode_overhead_s: float = 0.0
    s_per_sequence: float = 0.0
    s_per_context_token: float = 0.0
    weight_bytes_per_gpu: float = 0.0
    s_per_index_context_token: float = 0.0
    topk: int | None = None
    s_per_routed_token: float = 0.0

    def __post_init__(self):
        for f in ("prefill_overhead_s", "s_per_token", "s_per_key", "s_per_index_key", "decode_overhead_s",
                  "s_per_sequence", "s_per_context_token", "weight_bytes_per_gpu", "s_per_index_context_token",
                  "s_per_routed_token"):
            check_non_negative(f"compute.{f}", getattr(self, f))
        if self.s_per_routed_token > min(self.s_per_token, self.s_per_sequence):
            raise ConfigError("compute.s_per_routed_token", f"{self.s_per_routed_token:g} s is part of s_per_token "
                              f"({self.s_per_token:g} s) and s_per_sequence ({self.s_per_sequence:g} s): it cannot "
                              f"exceed either")

    def __reduce__(self):  # pickle and copy by the fields (a compiled frozen class has no __setstate__)
        return ComputeModel, tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    @staticmethod
    def _keys(cached: float, bsz: float, cap) -> float:
        first, last = cached + 1.0, cached + bsz
        total = (first + last) * bsz / 2.0
        if cap is None or last <= cap:
            return total
        lo = cap + 1.0
        if first > lo:
            lo = first
        n_over = last - lo + 1.0
        return total - (lo + last) * n_over / 2.0 + cap * n_over

    def attention_time_s(self, cached, bsz) -> float:
        """Attention (+ DSA indexer) seconds of one engine's forward over pairs ``cached[i], bsz[i]``.

        This is the quantity the PE compute quota bounds (PAPER.md section 5.5).
        """
        if isinstance(cached, (int, float)):
            cached, bsz = (cached,), (bsz,)
        keys, sk, si, topk = self._keys, self.s_per_key, self.s_per_index_key, self.topk
        t = 0.0
        for c, b in zip(cached, bsz):
            if b > 0:
                t += sk * keys(c, b, topk)
                if si:
                    t += si * keys(c, b, None)
        return t

    def time_s(self, cached: float, bsz: float) -> float:
        """:meth:`attention_time_s` of one pair (the ``sched`` batcher's time-model protocol)."""
        return self.attention_time_s((cached,), (bsz,))

    def max_bsz_within(self, cached: float, seconds: float) -> float:
        """Largest real ``bsz`` with ``time_s(cached, bsz) <= seconds`` (closed form; ``inf`` if free).

        ``time_s`` is piecewise quadratic in ``bsz``: queries attend to ``cached + j + 1`` keys up
        to the DSA cap ``topk`` and ``topk`` after it, while the indexer term is uncapped. The
        batcher verifies the estimate with ``time_s``, so only its speed depends on it.
        """
        if seconds <= 0:
            return 0.0
        sk, si, c = self.s_per_key, self.s_per_index_key, float(cached)
        root = _positive_root
        cap = self.topk
        x = root(0.5 * (sk + si), (c + 0.5) * (sk + si), -seconds)
        if cap is None:
            return x
        n1 = max(cap - c, 0.0)  # queries below the cap
        if x <= n1:
            return x
        k1 = (2.0 * c + n1 + 1.0) * n1 / 2.0  # keys of the first n1 queries
        return root(0.5 * si, sk * cap + si * (c + 0.5), sk * (k1 - cap * n1) - seconds)

    def prefill_time_s(self, cached, bsz, *, attention_s: float | None = None,
                       routed_tokens: float | None = None) -> float:
        """Seconds of one engine's forward over pairs ``cached[i], bsz[i]`` (sequences of token counts).

        ``attention_s``: :meth:`attention_time_s` of the same pairs when the caller has it already.
        ``routed_tokens``: the tokens whose routed-expert work this GPU computes (under EP the group's
        mean tokens per GPU); default ``sum(bsz)``, its own.
        """
        tokens = sum(bsz)
        if tokens <= 0:
            return 0.0
        if attention_s is None:
            attention_s = self.attention_time_s(cached, bsz)
        t = self.prefill_overhead_s + self.s_per_token * tokens + attention_s
        if routed_tokens is not None:
            t += self.s_per_routed_token * (routed_tokens - tokens)
        return t

    def decode_step_s(self, batch: float, context_tokens: float, attended_tokens: float | None = None,
                      routed_batch: float | None = None) -> float:
        """Seconds of one decode step of ``batch`` sequences holding ``context_tokens`` KV in total.

        ``attended_tokens``: the KV entries the step's attention reads, with DSA the sum over the
        sequences of ``min(context, topk)`` (the indexer still scores every key). Default:
        ``min(context_tokens, batch * topk)``, exact when no sequence is shorter than ``topk`` or
        none longer; a batch that mixes both reads less than that bound. ``routed_batch``: the
        sequences whose routed-expert work this GPU computes (under EP the group's mean per GPU;
        0 gives the GPU's own part alone); default ``batch``.
        """
        if batch <= 0:
            return 0.0
        every = context_tokens
        if attended_tokens is not None:
            context_tokens = attended_tokens
        elif self.topk is not None and context_tokens > batch * self.topk:
            context_tokens = float(batch * self.topk)  # DSA reads at most top-k KV entries per sequence
        t = (self.decode_overhead_s + self.s_per_sequence * batch + self.s_per_context_token * context_tokens
             + self.s_per_index_context_token * every)
        if routed_batch is not None:
            t += self.s_per_routed_token * (routed_batch - batch)
        return t

    def attended(self, context_tokens: float) -> float:
        """KV entries one decode step of a sequence of ``context_tokens`` reads: ``min(context, topk)``
        with DSA (PAPER.md 6.1: top-k 2048), all of them otherwise. The simulator passes a
        sequence's mean context over its decode, so a sequence whose context crosses top-k during
        the decode is priced slightly above the mean of its steps' (e.g. +4% for 1,500 tokens and
        2,000 generated at top-k 2,048)."""
        topk = self.topk
        return context_tokens if topk is None or context_tokens <= topk else float(topk)

    def prefill_tokens_per_s(self, context_tokens: float, append_tokens: float, batch: SupportsIndex = 4) -> float:
        """Computed tokens per second of one engine for ``batch`` equal requests (for alpha/beta)."""
        n = operator.index(batch)
        t = self.prefill_time_s([context_tokens] * n, [append_tokens] * n)
        return n * append_tokens / t


def _positive_root(a: float, b: float, g: float) -> float:
    """The positive root of ``a x^2 + b x + g = 0`` for ``g <= 0`` (``inf`` if none)."""
    if a <= 0:
        return float("inf") if b <= 0 else -g / b
    return (-b + (b * b - 4.0 * a * g) ** 0.5) / (2.0 * a)


def fit_compute_model(prefill_samples, decode_samples=(), *, weight_bytes_per_gpu: float = 0.0) -> ComputeModel:
    """Least-squares fit of a dense-attention :class:`ComputeModel` to measured engine times.

    Args:
      prefill_samples: iterable of ``(cached_list, bsz_list, seconds)``: one forward each.
      decode_samples: iterable of ``(batch, context_tokens, seconds)``: one decode step each.

    Returns:
      the fitted model (negative coefficients clipped to 0; ``topk`` None).

    Raises:
      ValueError: fewer prefill samples than coefficients.
    """
    rows, ys = [], []
    for cached, bsz, sec in prefill_samples:
        keys = sum(ComputeModel._keys(c, b, None) for c, b in zip(cached, bsz) if b > 0)
        rows.append([1.0, float(sum(bsz)), keys])
        ys.append(float(sec))
    if len(rows) < 3:
        raise ValueError(f"prefill_samples: need at least 3 forwards to fit 3 coefficients, got {len(rows)}")
    coef = np.clip(np.linalg.lstsq(np.asarray(rows), np.asarray(ys), rcond=None)[0], 0.0, None)
    dec = np.zeros(3)
    decode_samples = list(decode_samples)
    if len(decode_samples) >= 3:
        a = np.asarray([[1.0, float(b), float(c)] for b, c, _ in decode_samples])
        dec = np.clip(np.linalg.lstsq(a, np.asarray([float(t) for *_, t in decode_samples]), rcond=None)[0], 0.0, None)
    return ComputeModel(prefill_overhead_s=float(coef[0]), s_per_token=float(coef[1]), s_per_key=float(coef[2]),
                        decode_overhead_s=float(dec[0]), s_per_sequence=float(dec[1]),
                        s_per_context_token=float(dec[2]), weight_bytes_per_gpu=weight_bytes_per_gpu)


def weight_bytes_per_gpu(spec: ModelSpec, ep_size: SupportsIndex, weight_dtype: str) -> float:
    """Resident weight bytes per GPU: non-expert weights replicated, routed experts split over ``ep_size``."""
    nbytes = cost.DTYPE_BYTES[weight_dtype]
    total = cost.total_params(spec)
    if not spec.n_routed_experts:
        return total * nbytes
    moe_layers = sum(spec.is_moe_layer(l) for l in range(spec.n_layers))
    routed = moe_layers * spec.n_routed_experts * 3 * spec.d_model * spec.moe_d_ff
    return ((total - routed) + routed / max(operator.index(ep_size), 1)) * nbytes


def public_decode_point() -> tuple[float, float, float]:
    """``(sequences per GPU, context tokens per sequence, step seconds)`` of DeepSeek's public decode
    figures (:data:`PUBLIC_FIGURES`): 14.8k tokens/s per node / 21 tokens/s per user / 8 GPUs, 4K, 1/21 s."""
    pub = PUBLIC_FIGURES
    batch = pub["decode_output_tokens_per_s_per_node"] / pub["decode_tokens_per_s_per_user"] / pub["gpus_per_node"]
    return batch, float(pub["decode_context_tokens"]), 1.0 / pub["decode_tokens_per_s_per_user"]


def _public_reference() -> ModelSpec:
    """DeepSeek-V3 (the public figures' model): V3.2 without the DSA indexer."""
    return get_spec("deepseek-v3.2").replace(name="deepseek-v3", index_n_heads=0, index_head_dim=0, index_topk=0)


def calibrate_from_public(spec: ModelSpec, *, peak_flops: float, hbm_bytes_per_s: float, ep_size: SupportsIndex,
                          weight_dtype: str = "fp8", kv_dtype: str | None = None,
                          prefill_layer_overhead_s: float = 0.5e-3, eff_memory: float = 0.9,
                          attention_peak_flops: float | None = None, indexer_peak_flops: float | None = None,
                          attention_efficiency: float = ATTENTION_EFFICIENCY) -> ComputeModel:
    """A :class:`ComputeModel` for ``spec`` from the public figures (module docstring).

    The efficiencies are measured on DeepSeek-V3 (the public figures' model) on H800s and reused,
    as shares of each GPU's peak, for every model and GPU.

    Args:
      spec: the model.
      peak_flops: dense peak FLOP/s of the linear layers' compute dtype (FP8 for DeepSeek models,
        BF16 for Qwen), per GPU.
      hbm_bytes_per_s: HBM bandwidth per GPU (datasheet).
      ep_size: GPUs the routed experts are spread over (weights per GPU).
      weight_dtype, kv_dtype: byte sizes of weights and KV (KV default: the model's own).
      prefill_layer_overhead_s: fixed seconds per layer per forward (launch, EP dispatch/combine).
      eff_memory: share of ``hbm_bytes_per_s`` that decode reads reach.
      attention_peak_flops: peak of the attention kernels' BF16 math (default: ``peak_flops`` / 2
        when the linear layers run FP8, as on Hopper and Blackwell, else ``peak_flops``).
      indexer_peak_flops: peak of the DSA indexer's FP8 scoring (default: ``peak_flops`` when the
        linear layers run FP8, else ``attention_peak_flops``).
      attention_efficiency: share of those peaks the attention kernels reach.

    Returns:
      the model: ``s_per_token = linear FLOPs per token / (peak_flops * eff_linear)``, ``s_per_key``
      (``s_per_index_key``) = attention (indexer) FLOPs per query-key pair / (its peak *
      attention_efficiency), ``prefill_overhead_s = L * prefill_layer_overhead_s``; decode
      ``overhead = L * decode_layer_overhead + weight bytes / (hbm * eff_memory)``, ``s_per_sequence =
      s_per_token``, ``s_per_context_token`` = KV bytes / (hbm * eff_memory) + ``s_per_key``
      (one query), ``s_per_index_context_token`` likewise for the indexer keys,
      ``s_per_routed_token`` = the routed experts' FLOPs per token
      (:func:`~dualpath_jax.model.cost.routed_active_params`) / (``peak_flops * eff_linear``).

    Raises:
      ValueError: the public figures leave no time for the linear layers (an attention efficiency
        too low to be consistent with them).
    """
    pub = PUBLIC_FIGURES
    ref = _public_reference()
    ctx = PUBLIC_CONTEXT_TOKENS
    fp8, bf16 = pub["h800_fp8_flops"], pub["h800_bf16_flops"]
    per_gpu_tokens_s = (pub["prefill_input_tokens_per_s_per_node"] * (1 - pub["prefill_cache_hit_rate"])
                        / pub["gpus_per_node"])
    # one computed token of a 4K prompt at the public hit rate: prefix = hit share, append = the rest
    hit = int(ctx * pub["prefill_cache_hit_rate"])
    f = cost.prefill_flops(ref, hit, ctx - hit)
    per_token = {k: float(v) / (ctx - hit) for k, v in f.items()}
    overhead_per_token = ref.n_layers * prefill_layer_overhead_s / pub["prefill_tokens_per_forward_per_gpu"]
    linear_s = 1.0 / per_gpu_tokens_s - per_token["attention"] / (bf16 * attention_efficiency) - overhead_per_token
    if linear_s <= 0:
        raise ValueError(f"attention_efficiency: {attention_efficiency} leaves no time for the linear layers in "
                         f"the public prefill figure ({per_gpu_tokens_s:.0f} computed tokens/s per GPU)")
    eff_linear = per_token["linear"] / (fp8 * linear_s)
    # decode at the public point (the public deployment's experts span 18 nodes, EP144)
    batch, dctx, step = public_decode_point()
    eff_hbm_ref = pub["h800_hbm_bytes_per_s"] * eff_memory
    ref_w = weight_bytes_per_gpu(ref, pub["decode_ep_size"], "fp8")
    d = cost.decode_flops(ref, dctx)
    ref_step = ((ref_w + batch * dctx * cost.kv_bytes_per_token(ref, "fp8")) / eff_hbm_ref
                + batch * float(d["linear"]) / (fp8 * eff_linear)
                + batch * float(d["attention"]) / (bf16 * attention_efficiency))
    decode_layer_overhead = max(step - ref_step, 0.0) / ref.n_layers
    # the model at hand
    fp8_linear = weight_dtype in ("fp8", "float8")
    attn_peak = attention_peak_flops if attention_peak_flops is not None else (
        peak_flops / 2.0 if fp8_linear else peak_flops)
    index_peak = indexer_peak_flops if indexer_peak_flops is not None else (peak_flops if fp8_linear else attn_peak)
    probe = cost.prefill_flops(spec, 0, 1)  # one token attending to one key: the per-key costs
    weights = weight_bytes_per_gpu(spec, ep_size, weight_dtype)
    eff_hbm = hbm_bytes_per_s * eff_memory
    s_key = float(probe["attention"]) / (attn_peak * attention_efficiency)
    s_index_key = float(probe["indexer"]) / (index_peak * attention_efficiency)
    index_bytes = (cost.stored_kv_bytes_per_token(spec, kv_dtype) - cost.kv_bytes_per_token(spec, kv_dtype))
    s_token = float(probe["linear"]) / (peak_flops * eff_linear)
    s_routed = 2.0 * cost.routed_active_params(spec) / (peak_flops * eff_linear)
    return ComputeModel(
        prefill_overhead_s=spec.n_layers * prefill_layer_overhead_s,
        s_per_token=s_token,
        s_per_key=s_key,
        s_per_index_key=s_index_key,
        decode_overhead_s=spec.n_layers * decode_layer_overhead + weights / eff_hbm,
        s_per_sequence=s_token,
        s_per_context_token=cost.kv_bytes_per_token(spec, kv_dtype) / eff_hbm + s_key,
        s_per_index_context_token=index_bytes / eff_hbm + s_index_key,
        weight_bytes_per_gpu=weights,
        topk=spec.index_topk if spec.index_n_heads else None,
        s_per_routed_token=s_routed)


def calibrate_config(cfg, ep_size: SupportsIndex) -> ComputeModel:
    """:func:`calibrate_from_public` for a :class:`~dualpath_jax.sim.config.SimConfig`'s model,
    dtypes and hardware, on engines whose routed experts span ``ep_size`` GPUs.

    The linear layers run at ``cfg.peak_flops`` (the weights' dtype); with ``hardware.peak_flops``
    unset, the attention's BF16 and the DSA indexer's FP8 peaks come from the catalog entry of
    ``hardware.gpu`` (the indexer at BF16 on a GPU without FP8), else they follow the set peak.
    """
    hw = cfg.hardware
    attn = index = None
    if hw.peak_flops is None:
        peaks = catalog.gpu_spec(hw.gpu).peak_flops
        attn = float(peaks["bf16"])
        index = float(peaks.get("fp8", attn))
    return calibrate_from_public(cfg.spec, peak_flops=cfg.peak_flops, hbm_bytes_per_s=hw.hbm_bytes_per_s,
                                 ep_size=ep_size, weight_dtype=cfg.weight_dtype, kv_dtype=cfg.kv_dtype,
                                 prefill_layer_overhead_s=cfg.prefill_layer_overhead_s, eff_memory=cfg.eff_memory,
                                 attention_peak_flops=attn, indexer_peak_flops=index,
                                 attention_efficiency=cfg.attention_efficiency)


def role_models(cfg) -> tuple[ComputeModel, ComputeModel]:
    """``(PE model, DE model)`` of a :class:`~dualpath_jax.sim.config.SimConfig`: its explicit
    ``compute`` for both, else :func:`calibrate_config` with the routed experts spread over an EP
    group's GPUs of each role (``cfg.ep_gpus``): PEs and DEs differ only in that."""
    if cfg.compute is not None:
        return cfg.compute, cfg.compute
    return calibrate_config(cfg, cfg.ep_gpus("pe")), calibrate_config(cfg, cfg.ep_gpus("de"))
