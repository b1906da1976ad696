"""Pure-functional forward passes: per-layer, layer-by-layer over a cache, and whole-model.

The unit of execution is :func:`decoder_layer`: one decoder layer over T rows, its attention done
by an :class:`~dualpath_jax.model.attention.AttentionBackend` that knows where the cached KV
lives. :func:`layer_forward` is that layer over a contiguous cache (the dense backend): a prefill
driver can stream each layer's KV in just before it runs (layer-wise prefill, PAPER.md section 3)
and free it after; :func:`forward_with_cache` is the simplest such driver and :func:`forward` the
no-cache one-pass model built from the same function. The runtime's PE and DE run the same
:func:`decoder_layer` with the paged backends (``dualpath_jax.engine.compute``).

``LayerKV`` is a pair of arrays: GQA ``(k [S, K, H], v [S, K, H])`` (post-RoPE keys);
MLA ``(latent [S, C], k_rope [S, R])`` (post-norm latent, post-RoPE rope key).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from dualpath_jax.model.attention import AttentionBackend, DenseAttention
from dualpath_jax.model.layers import gqa_attention, mla_attention, moe_mlp, rms_norm, rope_cos_sin, swiglu_mlp
from dualpath_jax.model.spec import ModelSpec

__all__ = ["LayerKV", "embed", "unembed", "decoder_layer", "layer_forward", "forward", "forward_batch",
           "forward_with_cache", "empty_layer_kv", "kv_concat", "layer_kv_shapes"]

LayerKV = tuple  # (a [S, ...], b [S, ...]); see module docstring


def layer_kv_shapes(spec: ModelSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-token shapes of the two arrays of a LayerKV: GQA ``((K, H), (K, H))``, MLA ``((C,), (R,))``."""
    if spec.is_mla:
        return (spec.kv_lora_rank,), (spec.qk_rope_head_dim,)
    return (spec.n_kv_heads, spec.head_dim), (spec.n_kv_heads, spec.head_dim)


def empty_layer_kv(spec: ModelSpec, dtype=jnp.float32) -> LayerKV:
    """A zero-length LayerKV (S = 0) for ``spec``."""
    return tuple(jnp.zeros((0, *shape), dtype) for shape in layer_kv_shapes(spec))


def kv_concat(a: LayerKV, b: LayerKV) -> LayerKV:
    """Concatenate two LayerKVs along S (prefix first)."""
    return (jnp.concatenate([a[0], b[0]], axis=0), jnp.concatenate([a[1], b[1]], axis=0))


def embed(params: dict, spec: ModelSpec, tokens: jax.Array) -> jax.Array:
    """Token embeddings ``[T, D]`` for ``tokens i32[T]``."""
    del spec
    return params["embed"][tokens]


def unembed(params: dict, spec: ModelSpec, h: jax.Array) -> jax.Array:
    """Final RMSNorm and LM head: ``h [T, D]`` -> logits ``f32[T, V]``."""
    h = rms_norm(h, params["final_norm"], spec.rms_norm_eps)
    w = params["embed"].T if spec.tie_embeddings else params["lm_head"]
    return jnp.dot(h, w, preferred_element_type=jnp.float32)


def decoder_layer(layer_params: dict, spec: ModelSpec, h: jax.Array, positions: jax.Array,
                  backend: AttentionBackend) -> tuple[jax.Array, LayerKV, Any]:
    """One decoder layer over T rows; the attention over cached KV is ``backend``'s.

    Pre-norm residual block (Qwen2 / DeepSeek-V3): ``h + attn(norm(h))``, then ``h + mlp(norm(h))``,
    the MLP a :func:`~dualpath_jax.model.layers.moe_mlp` in a MoE layer (its params hold a
    ``router``), else a dense :func:`~dualpath_jax.model.layers.swiglu_mlp`.

    Args:
      layer_params: ``params["layers"][l]``.
      spec: model spec.
      h: hidden states ``[T, D]`` of the new tokens.
      positions: absolute positions ``i32[T]`` (RoPE).
      backend: the attention backend (:mod:`dualpath_jax.model.attention`).

    Returns:
      ``(h_out [T, D], new_kv, aux)``: ``new_kv`` the LayerKV of the T new tokens only, ``aux``
      the backend's (e.g. the updated block pools of a decode step).
    """
    x = rms_norm(h, layer_params["attn_norm"], spec.rms_norm_eps)
    rope_dim = spec.qk_rope_head_dim if spec.is_mla else spec.head_dim
    cos, sin = rope_cos_sin(positions, rope_dim, spec.rope_theta, spec.rope_scaling)
    attend = mla_attention if spec.is_mla else gqa_attention
    attn_out, new_kv, aux = attend(layer_params, spec, x, cos, sin, backend)
    h = h + attn_out.astype(h.dtype)
    x, mlp = rms_norm(h, layer_params["mlp_norm"], spec.rms_norm_eps), layer_params["mlp"]
    h = h + (moe_mlp(mlp, spec, x) if "router" in mlp else swiglu_mlp(mlp, x))
    return h, new_kv, aux


@functools.partial(jax.jit, static_argnames=("spec", "implementation"))
def layer_forward(layer_params: dict, spec: ModelSpec, h: jax.Array, positions: jax.Array,
                  cache: LayerKV | None = None, *, implementation: str = "auto"
                  ) -> tuple[jax.Array, LayerKV]:
    """:func:`decoder_layer` over T new tokens attending to ``[cache | new]`` held contiguously.

    Args:
      layer_params: ``params["layers"][l]``.
      spec: model spec (static).
      h: hidden states ``[T, D]`` of the new tokens.
      positions: absolute positions ``i32[T]`` (normally ``S_c + arange(T)``).
      cache: the layer's LayerKV of the S_c cached tokens, or None.
      implementation: attention kernel, ``"auto" | "reference" | "pallas"``.

    Returns:
      ``(h_out [T, D], new_kv)`` where ``new_kv`` is the LayerKV of the T new tokens only.
    """
    h, new_kv, _ = decoder_layer(layer_params, spec, h, positions, DenseAttention(cache, implementation))
    return h, new_kv


def forward_with_cache(params: dict, spec: ModelSpec, tokens: jax.Array, caches: Sequence[LayerKV] | None,
                       *, implementation: str = "auto") -> tuple[jax.Array, list[LayerKV]]:
    """Run ``tokens i32[T]`` layer by layer over per-layer cached KV of a prefix.

    Args:
      caches: L LayerKVs of the same S_c cached tokens (or None for no prefix). The new tokens
        get positions ``S_c .. S_c + T - 1``.

    Returns:
      ``(logits f32[T, V], new_kvs)``: ``new_kvs[l]`` is layer l's LayerKV of the T new tokens.

    Raises:
      ValueError: ``caches`` has the wrong number of layers or inconsistent lengths.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if caches is not None and len(caches) != spec.n_layers:
        raise ValueError(f"caches: expected {spec.n_layers} layers, got {len(caches)}")
    cached_len = 0 if caches is None else int(caches[0][0].shape[0])
    if caches is not None and any(int(c[0].shape[0]) != cached_len for c in caches):
        raise ValueError(f"caches: all layers must hold the same number of tokens "
                         f"(got {[int(c[0].shape[0]) for c in caches]})")
    positions = cached_len + jnp.arange(tokens.shape[0], dtype=jnp.int32)
    h = embed(params, spec, tokens)
    new_kvs = []
    for layer in range(spec.n_layers):
        cache = None if caches is None or cached_len == 0 else caches[layer]
        h, kv = layer_forward(params["layers"][layer], spec, h, positions, cache,
                              implementation=implementation)
        new_kvs.append(kv)
    return unembed(params, spec, h), new_kvs


@functools.partial(jax.jit, static_argnames=("spec", "implementation"))
def forward(params: dict, spec: ModelSpec, tokens: jax.Array, *, implementation: str = "auto") -> jax.Array:
    """Whole-model forward of one sequence without cache: ``tokens i32[T]`` -> ``f32[T, V]``.

    Token ids must be in ``[0, V)``. Under ``jit`` nothing checks them: JAX clamps an out-of-range
    embedding index instead of raising, so callers validate ids on the host (``PrefillEngine`` does).

    Args:
      params: the model's params (:func:`~dualpath_jax.model.params.init_params` layout), f32 or bf16.
      spec: model spec (static).
      tokens: ``i32[T]``, one 1-D sequence (use :func:`forward_batch` for ``i32[B, T]``).
      implementation: attention kernel, ``"auto" | "reference" | "pallas"`` (static).

    Returns:
      Logits ``f32[T, V]`` of every position.

    Raises:
      ValueError: ``tokens`` is not 1-D, or ``implementation`` is not one of the three names.
    """
    if tokens.ndim != 1:
        raise ValueError(f"tokens: must be 1-D i32[T] (got shape {tuple(tokens.shape)}); "
                         f"use forward_batch for i32[B, T]")
    positions = jnp.arange(tokens.shape[0], dtype=jnp.int32)
    h = embed(params, spec, tokens)
    for layer_params in params["layers"]:
        h, _ = layer_forward(layer_params, spec, h, positions, None, implementation=implementation)
    return unembed(params, spec, h)


@functools.partial(jax.jit, static_argnames=("spec", "implementation"))
def forward_batch(params: dict, spec: ModelSpec, tokens: jax.Array, *, implementation: str = "auto") -> jax.Array:
    """Batched :func:`forward` over equal-length sequences: ``i32[B, T]`` -> ``f32[B, T, V]``.

    Vectorised (``jax.vmap``) for dense models; a MoE model's sequences run one after another
    (``jax.lax.map``: JAX batches its grouped expert matmul, ``jax.lax.ragged_dot``, over the
    leading dimension only, and the router's group sizes would be batched too)."""
    one = functools.partial(forward, params, spec, implementation=implementation)
    return jax.lax.map(one, tokens) if spec.n_routed_experts else jax.vmap(one)(tokens)
