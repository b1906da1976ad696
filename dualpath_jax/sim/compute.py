"""Compute model: prefill forward and decode step times from FLOPs, bytes and a few constants.

Prefill, one engine's share of a forward pass over ``(cached, bsz)`` pairs::

    t = L * prefill_layer_overhead_s
        + linear_flops / (peak * eff_linear) + (attention + indexer flops) / (peak * eff_attention)

Decode, one engine's step over ``B`` sequences holding ``ctx`` tokens in total::

    t = L * decode_layer_overhead_s + (weight_bytes_per_gpu + ctx * kv_bytes_per_token) / (hbm_bw * eff_memory)

FLOPs and bytes come from :mod:`dualpath_jax.model.cost`. With DP attention + EP (MoE models) a
group's forward or step takes the slowest member's time (the runtimes take the max).

Calibration (:func:`calibrate_from_public`), from DeepSeek's public description of its V3/R1
inference service on H800 nodes (PAPER.md section 9), never from the paper's result figures:

* prefill: 73.7k input tokens/s per node at a 56.3% cache-hit rate -> 32.2k computed tokens/s per
  node, 4.03k per GPU. With DeepSeek-V3's FLOPs per token at an assumed mean context of
  ``ASSUMED_CONTEXT_TOKENS`` and FP8 peak, this gives the single efficiency ``eff_linear =
  eff_attention`` (the public figure cannot separate them). The per-layer fixed overhead
  (``prefill_layer_overhead_s``, launch + EP dispatch/combine latency) is an assumption, 0.5 ms.
* decode: 14.8k output tokens/s per node at 20-22 tokens/s per user -> about 88 sequences per GPU
  and a 1/21 s step. The memory term at that batch and the assumed context uses the datasheet
  HBM bandwidth with ``eff_memory``; the rest of the step is the per-layer overhead.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dualpath_jax.config import check_non_negative, check_positive
from dualpath_jax.model import cost
from dualpath_jax.model.spec import ModelSpec, get_spec

__all__ = ["ComputeModel", "calibrate_from_public", "ASSUMED_CONTEXT_TOKENS", "PUBLIC_FIGURES"]

ASSUMED_CONTEXT_TOKENS = 4096
"""Mean context of DeepSeek's public online traffic (not published; an assumption)."""

PUBLIC_FIGURES = {
    "prefill_input_tokens_per_s_per_node": 73.7e3,
    "prefill_cache_hit_rate": 0.563,
    "decode_output_tokens_per_s_per_node": 14.8e3,
    "decode_tokens_per_s_per_user": 21.0,
    "gpus_per_node": 8,
    "h800_fp8_flops": 1979e12,
    "h800_hbm_bytes_per_s": 3.35e12,
    "source": "DeepSeek V3/R1 inference system overview (open-source week day 6, 2025-03); H800 datasheet",
}


@dataclasses.dataclass(frozen=True)
class ComputeModel:
    """Prefill/decode time model of one engine (see module docstring).

    Attributes:
      eff_linear, eff_attention: fractions of ``peak_flops`` reached by GEMMs / attention.
      eff_memory: fraction of HBM bandwidth reached by decode.
      prefill_layer_overhead_s, decode_layer_overhead_s: fixed seconds per layer per forward / step.
      weight_bytes_per_gpu: weights an engine reads per decode step (resident weights share).
      kv_bytes_per_token: KV bytes per token (all layers) read by decode attention.
    """

    spec: ModelSpec
    peak_flops: float
    hbm_bytes_per_s: float
    eff_linear: float
    eff_attention: float
    eff_memory: float
    prefill_layer_overhead_s: float
    decode_layer_overhead_s: float
    weight_bytes_per_gpu: float
    kv_bytes_per_token: float

    def __post_init__(self):
        for f in ("peak_flops", "hbm_bytes_per_s", "eff_linear", "eff_attention", "eff_memory"):
            check_positive(f"compute.{f}", getattr(self, f))
        for f in ("prefill_layer_overhead_s", "decode_layer_overhead_s", "weight_bytes_per_gpu",
                  "kv_bytes_per_token"):
            check_non_negative(f"compute.{f}", getattr(self, f))
        spec = self.spec
        # scalar constants for the hot path (same formulas as dualpath_jax.model.cost.prefill_flops)
        probe = cost.prefill_flops(spec, 0, 1)
        set_ = object.__setattr__
        set_(self, "_lin_s_per_token", float(probe["linear"]) / (self.peak_flops * self.eff_linear))
        per_key = float(probe["attention"]) + float(probe["indexer"])  # one token attending one key
        attn_per_key = float(probe["attention"])
        set_(self, "_attn_s_per_key", attn_per_key / (self.peak_flops * self.eff_attention))
        set_(self, "_idx_s_per_key", (per_key - attn_per_key) / (self.peak_flops * self.eff_attention))
        set_(self, "_topk", spec.index_topk if spec.index_n_heads else None)
        set_(self, "_overhead_s", spec.n_layers * self.prefill_layer_overhead_s)

    def _keys(self, cached: float, bsz: float, cap) -> float:
        first, last = cached + 1.0, cached + bsz
        total = (first + last) * bsz / 2.0
        if cap is None or last <= cap:
            return total
        lo = max(first, cap + 1.0)
        n_over = last - lo + 1.0
        return total - (lo + last) * n_over / 2.0 + cap * n_over

    def attention_time_s(self, cached, bsz) -> float:
        """Attention (+ DSA indexer) seconds of one engine's forward over pairs ``cached[i], bsz[i]``.

        This is the quantity the PE compute quota bounds (PAPER.md section 5.5).
        """
        if isinstance(cached, (int, float)):
            cached, bsz = (cached,), (bsz,)
        t = 0.0
        for c, b in zip(cached, bsz):
            if b > 0:
                t += self._attn_s_per_key * self._keys(c, b, self._topk)
                if self._idx_s_per_key:
                    t += self._idx_s_per_key * self._keys(c, b, None)
        return t

    def time_s(self, cached: int, bsz: int) -> float:
        """Alias of :meth:`attention_time_s` for one pair (the ``sched`` batcher's time-model protocol)."""
        return self.attention_time_s(cached, bsz)

    def prefill_time_s(self, cached, bsz) -> float:
        """Seconds of one engine's forward over pairs ``cached[i], bsz[i]`` (sequences of token counts)."""
        tokens = sum(bsz)
        if tokens <= 0:
            return 0.0
        return self._overhead_s + self._lin_s_per_token * tokens + self.attention_time_s(cached, bsz)

    def decode_step_s(self, batch: int, context_tokens: float) -> float:
        """Seconds of one decode step of ``batch`` sequences holding ``context_tokens`` KV in total."""
        if batch <= 0:
            return 0.0
        if self.spec.index_n_heads:  # DSA reads at most top-k KV entries per sequence
            context_tokens = min(context_tokens, batch * self.spec.index_topk)
        mem = self.weight_bytes_per_gpu + context_tokens * self.kv_bytes_per_token
        return self.spec.n_layers * self.decode_layer_overhead_s + mem / (self.hbm_bytes_per_s * self.eff_memory)

    def prefill_tokens_per_s(self, context_tokens: int, append_tokens: int, batch: int = 4) -> float:
        """Computed tokens per second of one engine for ``batch`` equal requests (for alpha/beta)."""
        t = self.prefill_time_s([context_tokens] * batch, [append_tokens] * batch)
        return batch * append_tokens / t


def weight_bytes_per_gpu(spec: ModelSpec, ep_size: int, weight_dtype: str) -> float:
    """Resident weight bytes per GPU: non-expert weights replicated, routed experts split over ``ep_size``."""
    nbytes = cost.DTYPE_BYTES[weight_dtype]
    total = cost.total_params(spec)
    if not spec.n_routed_experts:
        return total * nbytes
    moe_layers = sum(spec.is_moe_layer(l) for l in range(spec.n_layers))
    routed = moe_layers * spec.n_routed_experts * 3 * spec.d_model * spec.moe_d_ff
    return ((total - routed) + routed / max(ep_size, 1)) * nbytes


def calibrate_from_public(spec: ModelSpec, *, peak_flops: float, hbm_bytes_per_s: float, ep_size: int,
                          weight_dtype: str = "fp8", kv_dtype: str | None = None,
                          prefill_layer_overhead_s: float = 0.5e-3, eff_memory: float = 0.7) -> ComputeModel:
    """A :class:`ComputeModel` for ``spec`` with efficiencies derived from :data:`PUBLIC_FIGURES`.

    The efficiencies are measured on DeepSeek-V3 (the public figures' model) and reused for every
    model; ``peak_flops`` selects the compute dtype (FP8 for DeepSeek models, BF16 for Qwen).
    """
    pub = PUBLIC_FIGURES
    ref = get_spec("deepseek-v3.2").replace(name="deepseek-v3", index_n_heads=0, index_head_dim=0, index_topk=0)
    ctx = ASSUMED_CONTEXT_TOKENS
    per_gpu_tokens_s = (pub["prefill_input_tokens_per_s_per_node"] * (1 - pub["prefill_cache_hit_rate"])
                        / pub["gpus_per_node"])
    # flops of one computed token at mean context ctx (prefix ~ hit share of ctx, append the rest)
    hit = int(ctx * pub["prefill_cache_hit_rate"])
    f = cost.prefill_flops(ref, hit, ctx - hit)
    flops_per_token = float(f["total"]) / (ctx - hit)
    eff = per_gpu_tokens_s * flops_per_token / pub["h800_fp8_flops"]
    # decode: batch per GPU and step time from the public figures
    batch = pub["decode_output_tokens_per_s_per_node"] / pub["decode_tokens_per_s_per_user"] / pub["gpus_per_node"]
    step = 1.0 / pub["decode_tokens_per_s_per_user"]
    ref_kv = cost.kv_bytes_per_token(ref, "fp8")
    ref_w = weight_bytes_per_gpu(ref, 144, "fp8")  # the public decode deployment spans 18 nodes (EP144)
    mem_s = (ref_w + batch * ctx * ref_kv) / (pub["h800_hbm_bytes_per_s"] * eff_memory)
    decode_layer_overhead = max(step - mem_s, 0.0) / ref.n_layers
    return ComputeModel(
        spec=spec, peak_flops=peak_flops, hbm_bytes_per_s=hbm_bytes_per_s, eff_linear=eff, eff_attention=eff,
        eff_memory=eff_memory, prefill_layer_overhead_s=prefill_layer_overhead_s,
        decode_layer_overhead_s=decode_layer_overhead,
        weight_bytes_per_gpu=weight_bytes_per_gpu(spec, ep_size, weight_dtype),
        kv_bytes_per_token=cost.kv_bytes_per_token(spec, kv_dtype))
