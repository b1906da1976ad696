"""Shape-bucketed compute of the runtime: one PE prefill layer, one batched DE decode step.

The model's :func:`dualpath_jax.model.layer_forward` is compiled per exact ``(T, S)``; a serving
engine sees a new pair almost every request (and every decode step grows S), so compiling per
shape would dominate a CPU run. The runtime therefore pads to buckets and masks:

* :func:`prefill_layer`: one request's T new tokens (padded to ``bucket_tokens(T)`` rows) over
  its cached KV held as ``P`` blocks of Z tokens (padded to ``bucket_blocks(P)``), through
  :func:`dualpath_jax.kernels.prefill_attention` with ``cached_len``/``new_len`` masks. Padded
  query rows come after the real ones, so causal masking keeps them out of real rows.
* :func:`decode_step`: all active requests of a DE (padded to a fixed batch of B rows) advance
  one token: each row's new KV is written into the DE's block pool with
  :func:`dualpath_jax.kernels.kv_write`, then :func:`dualpath_jax.kernels.decode_attention` reads
  its first ``kv_len`` tokens through its block table (padded to ``bucket_blocks``). The pools
  are donated, so the update is in place where the backend allows it.

Both follow :func:`dualpath_jax.model.layers.gqa_attention` step for step (same RMSNorm, RoPE,
projections, SwiGLU MLP, softmax scale); only the attention kernel differs from the model's
dense one (same f32 math on masked keys), so logits agree to float rounding and greedy tokens
agree except on near-ties of the top two logits (see :func:`top2_gap`). GQA models only (the
tiny presets' ``tiny-gqa`` and Qwen2-style specs).

Shapes use the glossary of :mod:`dualpath_jax.shapes`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dualpath_jax.config import ConfigError
from dualpath_jax.kernels import decode_attention, kv_write, prefill_attention
from dualpath_jax.model import forward, forward_with_cache, kv_concat, unembed
from dualpath_jax.model.layers import apply_rope, rms_norm, rope_cos_sin, swiglu_mlp
from dualpath_jax.model.spec import ModelSpec

__all__ = ["MIN_BUCKET_TOKENS", "bucket_tokens", "bucket_blocks", "check_supported", "prefill_layer",
           "last_token_logits", "decode_step", "set_blocks", "get_block", "top2_gap", "prefill_kv", "reference_greedy"]

MIN_BUCKET_TOKENS = 16
"""Smallest padded query length of a prefill call."""


def bucket_tokens(n: int) -> int:
    """Padded length of ``n`` new tokens: the next power of two, at least :data:`MIN_BUCKET_TOKENS`."""
    n = max(int(n), MIN_BUCKET_TOKENS)
    return 1 << (n - 1).bit_length()


def bucket_blocks(p: int) -> int:
    """Padded block count of ``p`` blocks: the next power of two (at least 1)."""
    p = max(int(p), 1)
    return 1 << (p - 1).bit_length()


def check_supported(spec: ModelSpec) -> None:
    """Raise ConfigError (field ``model.name``) unless the runtime supports ``spec`` (GQA)."""
    if spec.attention != "gqa":
        raise ConfigError("model.name", f"the engine runtime runs GQA models; {spec.name} uses {spec.attention}")


def _qkv(lp: dict, spec: ModelSpec, x: jax.Array, positions: jax.Array):
    """Projections and RoPE of rows ``x [T, D]`` at ``positions i32[T]`` (as gqa_attention)."""
    t = x.shape[0]
    n, kh, h = spec.n_heads, spec.n_kv_heads, spec.head_dim
    q, k, v = x @ lp["wq"], x @ lp["wk"], x @ lp["wv"]
    if spec.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    cos, sin = rope_cos_sin(positions, h, spec.rope_theta)
    return apply_rope(q.reshape(t, n, h), cos, sin), apply_rope(k.reshape(t, kh, h), cos, sin), v.reshape(t, kh, h)


def _finish_layer(lp: dict, spec: ModelSpec, h: jax.Array, attn: jax.Array) -> jax.Array:
    h = h + (attn.reshape(h.shape[0], -1) @ lp["wo"]).astype(h.dtype)
    return h + swiglu_mlp(lp["mlp"], rms_norm(h, lp["mlp_norm"], spec.rms_norm_eps))


@functools.partial(jax.jit, static_argnames=("spec", "implementation"))
def prefill_layer(lp: dict, spec: ModelSpec, h: jax.Array, positions: jax.Array, k_cache: jax.Array,
                  v_cache: jax.Array, cached_len: jax.Array, new_len: jax.Array, *,
                  implementation: str = "auto") -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One decoder layer of one request over its cached KV (padded shapes, see module docstring).

    Args:
      lp: ``params["layers"][l]``.
      h: ``[T, D]`` hidden states of the new tokens (rows ``>= new_len`` are padding).
      positions: ``i32[T]`` absolute positions (``cached_len + arange(T)``).
      k_cache, v_cache: ``[P, Z, K, H]`` the cached tokens' KV, first ``cached_len`` tokens valid.
      cached_len, new_len: ``i32[]`` scalars.

    Returns:
      ``(h_out [T, D], (k_new [T, K, H], v_new [T, K, H]))``.
    """
    x = rms_norm(h, lp["attn_norm"], spec.rms_norm_eps)
    q, k, v = _qkv(lp, spec, x, positions)
    table = jnp.arange(k_cache.shape[0], dtype=jnp.int32)[None]
    out = prefill_attention(q[None], k[None], v[None], k_cache, v_cache, table, cached_len[None], new_len[None],
                            scale=spec.attn_scale, implementation=implementation, check_values=False)[0]
    return _finish_layer(lp, spec, h, out), (k, v)


@functools.partial(jax.jit, static_argnames=("spec",))
def last_token_logits(params: dict, spec: ModelSpec, h: jax.Array, index: jax.Array) -> jax.Array:
    """Logits ``f32[V]`` of row ``index`` of the final hidden states ``h [T, D]``."""
    return unembed(params, spec, jax.lax.dynamic_slice_in_dim(h, index, 1, axis=0))[0]


@functools.partial(jax.jit, static_argnames=("spec", "implementation"), donate_argnums=(4, 5))
def decode_step(params: dict, spec: ModelSpec, tokens: jax.Array, positions: jax.Array, k_pools: tuple,
                v_pools: tuple, block_table: jax.Array, active: jax.Array, *, implementation: str = "auto"):
    """Advance every active row of a DE batch by one token (greedy).

    Args:
      tokens: ``i32[B]`` the last generated token of each row (its KV is not cached yet).
      positions: ``i32[B]`` that token's absolute position (= tokens with KV so far).
      k_pools, v_pools: L arrays ``[Pt, Z, K, H]`` each: the DE's block pools (donated).
      block_table: ``i32[B, P]`` each row's blocks (token ``s`` in block ``block_table[b, s // Z]``).
      active: ``bool[B]``; inactive (padding) rows write nothing and read nothing.

    Returns:
      ``(next_tokens i32[B], gaps f32[B], k_pools, v_pools)``: greedy tokens, the top-1 minus
      top-2 logit of each row (:func:`top2_gap`), the updated pools.
    """
    h = params["embed"][tokens]
    write_len = active.astype(jnp.int32)
    kv_len = jnp.where(active, positions + 1, 0).astype(jnp.int32)
    k_out, v_out = [], []
    for layer, lp in enumerate(params["layers"]):
        x = rms_norm(h, lp["attn_norm"], spec.rms_norm_eps)
        q, k, v = _qkv(lp, spec, x, positions)
        kp = kv_write(k_pools[layer], k[:, None], block_table, positions, write_len, implementation=implementation,
                      check_values=False)
        vp = kv_write(v_pools[layer], v[:, None], block_table, positions, write_len, implementation=implementation,
                      check_values=False)
        out = decode_attention(q, kp, vp, block_table, kv_len, scale=spec.attn_scale,
                               implementation=implementation, check_values=False)
        h = _finish_layer(lp, spec, h, out)
        k_out.append(kp)
        v_out.append(vp)
    logits = unembed(params, spec, h)
    top = jax.lax.top_k(logits, 2)[0]
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), top[:, 0] - top[:, 1], tuple(k_out), tuple(v_out)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def set_blocks(k_pools: tuple, v_pools: tuple, ids: jax.Array, k_values: jax.Array, v_values: jax.Array):
    """Write blocks into the pools: ``ids i32[M]``, values ``[L, M, Z, K, H]``; ids ``>= Pt`` are dropped."""
    k_out = tuple(p.at[ids].set(k_values[l], mode="drop") for l, p in enumerate(k_pools))
    v_out = tuple(p.at[ids].set(v_values[l], mode="drop") for l, p in enumerate(v_pools))
    return k_out, v_out


@jax.jit
def get_block(k_pools: tuple, v_pools: tuple, block_id: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One block of every layer: ``([L, Z, K, H], [L, Z, K, H])``."""
    return (jnp.stack([p[block_id] for p in k_pools]), jnp.stack([p[block_id] for p in v_pools]))


def top2_gap(logits: np.ndarray) -> float:
    """``top1 - top2`` of a logit vector ``f32[V]``: how far greedy decoding is from a tie."""
    part = np.partition(np.asarray(logits, np.float64), -2)
    return float(part[-1] - part[-2])


_forward = jax.jit(forward, static_argnames=("spec",))


def prefill_kv(params: dict, spec: ModelSpec, tokens: np.ndarray, device, *, chunk_tokens: int = 512,
               block_tokens: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
    """KV of ``tokens i32[S]`` per layer (host ``[S, K, H]`` x2), computed with :func:`prefill_layer`
    in ``chunk_tokens`` chunks, each over the KV of the chunks before it (e.g. to pre-populate a
    store). ``params`` must be on ``device``."""
    tokens = np.asarray(tokens, np.int32)
    embed_table = np.asarray(params["embed"])
    kv = [(np.zeros((0, spec.n_kv_heads, spec.head_dim), np.float32),) * 2 for _ in range(spec.n_layers)]
    put = lambda x: jax.device_put(x, device)  # noqa: E731
    for lo in range(0, len(tokens), chunk_tokens):
        chunk = tokens[lo:lo + chunk_tokens]
        t_b, p_b = bucket_tokens(len(chunk)), bucket_blocks(-(-lo // block_tokens))
        h = np.zeros((t_b, spec.d_model), np.float32)
        h[:len(chunk)] = embed_table[chunk]
        h, pos = put(h), put(np.arange(lo, lo + t_b, dtype=np.int32))
        meta = (put(np.int32(lo)), put(np.int32(len(chunk))))
        for layer, lp in enumerate(params["layers"]):
            caches = []
            for x in kv[layer]:
                buf = np.zeros((p_b * block_tokens, spec.n_kv_heads, spec.head_dim), np.float32)
                buf[:lo] = x
                caches.append(put(buf.reshape(p_b, block_tokens, spec.n_kv_heads, spec.head_dim)))
            h, (k, v) = prefill_layer(lp, spec, h, pos, caches[0], caches[1], *meta)
            kv[layer] = (np.concatenate([kv[layer][0], np.asarray(k)[:len(chunk)]]),
                         np.concatenate([kv[layer][1], np.asarray(v)[:len(chunk)]]))
    return kv


def reference_greedy(params: dict, spec: ModelSpec, prompt: np.ndarray, generated: np.ndarray, *,
                     chunk_tokens: int | None = None, pad_multiple: int = 256
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain recompute of a greedy generation from tokens, teacher-forced on ``generated``.

    The sequence ``prompt ++ generated[:-1]`` goes through the model's own functions, never
    through the runtime's store, buffers, links or bucketed kernels, and the logits at each
    generated position give the token a greedy decoder would emit after the same context:

    * ``chunk_tokens=None``: one no-cache :func:`dualpath_jax.model.forward` over the sequence
      (padded at the end to a multiple of ``pad_multiple`` to bound compilations; causal
      attention keeps the padding out of real positions).
    * ``chunk_tokens=C``: :func:`dualpath_jax.model.forward_with_cache` over consecutive C-token
      chunks, each over the plain concatenated KV of the chunks before it (same math, memory
      ``O(C * S)`` instead of ``O(S^2)`` for long sequences).

    Args:
      prompt: ``i32[S]``; generated: ``i32[G]`` (G >= 1) the tokens to check.

    Returns:
      ``(tokens i32[G], gaps f64[G], margin f64[G])``: the reference's greedy token at each
      position, its top-1 minus top-2 logit, and its top-1 logit minus the logit of
      ``generated[i]`` (0 where they agree).
    """
    prompt, generated = np.asarray(prompt, np.int32), np.asarray(generated, np.int32)
    seq = np.concatenate([prompt, generated[:-1]])
    n = len(seq)
    step = pad_multiple if chunk_tokens is None else chunk_tokens
    padded = np.zeros(-(-n // step) * step, np.int32)
    padded[:n] = seq
    if chunk_tokens is None:
        logits = np.asarray(_forward(params, spec, jnp.asarray(padded)))
    else:
        rows, caches = [], None
        for lo in range(0, len(padded), chunk_tokens):
            out, new = forward_with_cache(params, spec, jnp.asarray(padded[lo:lo + chunk_tokens]), caches)
            rows.append(np.asarray(out))
            caches = new if caches is None else [kv_concat(a, b) for a, b in zip(caches, new)]
        logits = np.concatenate(rows)
    logits = logits[len(prompt) - 1:n].astype(np.float64)
    tokens = logits.argmax(axis=-1).astype(np.int32)
    part = np.partition(logits, -2, axis=-1)
    gaps = part[:, -1] - part[:, -2]
    margin = logits.max(axis=-1) - logits[np.arange(len(generated)), generated]
    return tokens, gaps, margin
