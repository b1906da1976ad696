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
import operator
from typing import Any, SupportsIndex

import numpy as np

from dualpath_jax.config import check_non_negative
from dualpath_jax.model import cost
from dualpath_jax.model.spec import ModelSpec, get_spec

__all__ = ["ComputeModel", "calibrate_from_public", "fit_compute_model", "weight_bytes_per_gpu",
           "ASSUMED_CONTEXT_TOKENS", "PUBLIC_FIGURES"]

ASSUMED_CONTEXT_TOKENS = 4096
"""Mean context of DeepSeek's public online traffic (not published; an assumption)."""

PUBLIC_FIGURES: dict[str, Any] = {
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
    """Linear time model of one engine, in seconds (see the module docstring for the physics).

    Prefill, one forward over pairs ``(cached_i, bsz_i)``::

        prefill_overhead_s + s_per_token * sum(bsz) + s_per_key * sum(keys_i) + s_per_index_key * sum(all_keys_i)

    where ``keys_i = sum_{j<bsz_i} min(cached_i + j + 1, topk)`` (DSA caps the keys a query attends
    to; without DSA ``topk`` is infinite) and ``all_keys_i`` is the same sum uncapped (the DSA
    indexer scores every key). Decode, one step of ``B`` sequences holding ``ctx`` tokens::

        decode_overhead_s + s_per_sequence * B + s_per_context_token * min(ctx, B * topk)

    :func:`calibrate_from_public` derives the coefficients from FLOPs, bytes and public
    throughput figures; :func:`fit_compute_model` fits them to measured forwards (the real
    engine's profile) by least squares.

    Attributes:
      weight_bytes_per_gpu: resident weights, for HBM capacity (not a time term).
      topk: DSA top-k, or None for dense attention.
    """

    prefill_overhead_s: float
    s_per_token: float
    s_per_key: float
    s_per_index_key: float = 0.0
    decode_overhead_s: float = 0.0
    s_per_sequence: float = 0.0
    s_per_context_token: float = 0.0
    weight_bytes_per_gpu: float = 0.0
    topk: int | None = None

    def __post_init__(self):
        for f in ("prefill_overhead_s", "s_per_token", "s_per_key", "s_per_index_key", "decode_overhead_s",
                  "s_per_sequence", "s_per_context_token", "weight_bytes_per_gpu"):
            check_non_negative(f"compute.{f}", getattr(self, f))

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

    def prefill_time_s(self, cached, bsz, *, attention_s: float | None = None) -> float:
        """Seconds of one engine's forward over pairs ``cached[i], bsz[i]`` (sequences of token counts).

        ``attention_s``: :meth:`attention_time_s` of the same pairs when the caller has it already.
        """
        tokens = sum(bsz)
        if tokens <= 0:
            return 0.0
        if attention_s is None:
            attention_s = self.attention_time_s(cached, bsz)
        return self.prefill_overhead_s + self.s_per_token * tokens + attention_s

    def decode_step_s(self, batch: float, context_tokens: float) -> float:
        """Seconds of one decode step of ``batch`` sequences holding ``context_tokens`` KV in total."""
        if batch <= 0:
            return 0.0
        if self.topk is not None and context_tokens > batch * self.topk:
            context_tokens = float(batch * self.topk)  # DSA reads at most top-k KV entries per sequence
        return self.decode_overhead_s + self.s_per_sequence * batch + self.s_per_context_token * context_tokens

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


def calibrate_from_public(spec: ModelSpec, *, peak_flops: float, hbm_bytes_per_s: float, ep_size: SupportsIndex,
                          weight_dtype: str = "fp8", kv_dtype: str | None = None,
                          prefill_layer_overhead_s: float = 0.5e-3, eff_memory: float = 0.7) -> ComputeModel:
    """A :class:`ComputeModel` for ``spec`` with efficiencies derived from :data:`PUBLIC_FIGURES`.

    The efficiencies are measured on DeepSeek-V3 (the public figures' model) and reused for every
    model; ``peak_flops`` selects the compute dtype (FP8 for DeepSeek models, BF16 for Qwen).
    Coefficients: ``s_per_token = linear FLOPs per token / (peak * eff)``, ``s_per_key`` (and
    ``s_per_index_key``) = attention (indexer) FLOPs per query-key pair / (peak * eff),
    ``prefill_overhead_s = L * prefill_layer_overhead_s``; decode ``overhead = L *
    decode_layer_overhead + weight bytes / (HBM bw * eff_memory)``, ``s_per_context_token = KV bytes
    per token / (HBM bw * eff_memory)``.
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
    probe = cost.prefill_flops(spec, 0, 1)
    weights = weight_bytes_per_gpu(spec, ep_size, weight_dtype)
    eff_hbm = hbm_bytes_per_s * eff_memory
    return ComputeModel(
        prefill_overhead_s=spec.n_layers * prefill_layer_overhead_s,
        s_per_token=float(probe["linear"]) / (peak_flops * eff),
        s_per_key=float(probe["attention"]) / (peak_flops * eff),
        s_per_index_key=float(probe["indexer"]) / (peak_flops * eff),
        decode_overhead_s=spec.n_layers * decode_layer_overhead + weights / eff_hbm,
        s_per_sequence=0.0,
        s_per_context_token=cost.kv_bytes_per_token(spec, kv_dtype) / eff_hbm,
        weight_bytes_per_gpu=weights,
        topk=spec.index_topk if spec.index_n_heads else None)
