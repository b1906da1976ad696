"""Shape-bucketed compute of the runtime: one PE prefill layer, one batched DE decode step.

Both run the model's own :func:`dualpath_jax.model.forward.decoder_layer` (one implementation of
norms, projections, RoPE, MLA absorption and MLP, GQA and MLA alike) with a paged attention
backend (:mod:`dualpath_jax.model.attention`); what is engine-specific here is the shape
bucketing and jit caching. The model's :func:`~dualpath_jax.model.layer_forward` is compiled per
exact ``(T, S)``; a serving engine sees a new pair almost every request (and every decode step
grows S), so compiling per shape would dominate a CPU run. The runtime therefore pads to buckets
and masks:

* :func:`prefill_layer`: one request's T new tokens (padded to ``bucket_tokens(T)`` rows) over
  its cached KV held as ``P`` blocks of Z tokens (padded to ``bucket_blocks(P)``), through
  :class:`~dualpath_jax.model.attention.PagedPrefillAttention` with ``cached_len``/``new_len``
  masks. Padded query rows come after the real ones, so causal masking keeps them out of real rows.
* :func:`decode_step`: all active requests of a DE (padded to a fixed batch of B rows) advance
  one token through :class:`~dualpath_jax.model.attention.PagedDecodeAttention`: each row's new
  KV is written into the DE's block pool, then the row reads its first ``kv_len`` tokens through
  its block table (padded to ``bucket_blocks``). The pools are donated, so the update is in place
  where the backend allows it.

Only the attention kernel differs from the model's dense forward (same f32 math on masked keys),
so logits agree to float rounding and greedy tokens agree except on near-ties of the top two
logits (see :func:`top2_gap`). A layer's KV is a pair of arrays (the model's ``LayerKV``): GQA
``k, v`` with per-token shape ``(K, H)``, MLA ``latent (C,)`` and ``k_rope (R,)``
(:func:`~dualpath_jax.model.forward.layer_kv_shapes`); block pools and cached blocks hold each
array as ``[P, Z, *per-token shape]``. ``implementation`` is ``"auto" | "reference" | "pallas"``
(the kernels' dispatchers; ``auto``: Pallas on GPU, the plain-jnp reference elsewhere).

Shapes use the glossary of :mod:`dualpath_jax.shapes`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dualpath_jax.config import ConfigError
from dualpath_jax.kernels import check_block_tokens, resolve_implementation
from dualpath_jax.model.attention import PagedDecodeAttention, PagedPrefillAttention
from dualpath_jax.model.forward import decoder_layer, embed, forward, forward_with_cache, kv_concat, unembed
from dualpath_jax.model.spec import ModelSpec

__all__ = ["MIN_BUCKET_TOKENS", "check_kernel_block_tokens", "bucket_tokens", "bucket_blocks", "prefill_layer",
           "last_token_logits", "all_logits", "decode_logits", "decode_step", "set_blocks", "get_block", "top2_gap",
           "reference_greedy"]

MIN_BUCKET_TOKENS = 16
"""Smallest padded query length of a prefill call."""


def check_kernel_block_tokens(block_tokens: int, implementation: str = "auto",
                              field: str = "layout.block_tokens") -> None:
    """Raise ConfigError naming ``field`` when the attention kernels that ``implementation``
    resolves to here (``auto``: Pallas on a GPU backend) cannot tile KV blocks of ``block_tokens``
    tokens: the Pallas kernels need a power of two >= 16, the reference takes any size. An
    unknown ``implementation`` is left to the kernels' dispatchers, which name it."""
    try:
        pallas = resolve_implementation(implementation) == "pallas"
    except ValueError:
        return
    if pallas:
        try:
            check_block_tokens("block_tokens", int(block_tokens))
        except ValueError:
            raise ConfigError(field, f"{block_tokens} tokens per block: the Pallas attention kernels need a power "
                                     f"of two >= 16 (implementation='reference' takes any size)") from None


def bucket_tokens(n: int) -> int:
    """Padded length of ``n`` new tokens: the next power of two, at least :data:`MIN_BUCKET_TOKENS`."""
    n = max(int(n), MIN_BUCKET_TOKENS)
    return 1 << (n - 1).bit_length()


def bucket_blocks(p: int) -> int:
    """Padded block count of ``p`` blocks: the next power of two (at least 1)."""
    p = max(int(p), 1)
    return 1 << (p - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("spec", "implementation"))
def prefill_layer(lp: dict, spec: ModelSpec, h: jax.Array, positions: jax.Array, cache: tuple,
                  cached_len: jax.Array, new_len: jax.Array, *,
                  implementation: str = "auto") -> tuple[jax.Array, tuple]:
    """One decoder layer of one request over its cached KV (padded shapes, see module docstring).

    Args:
      lp: ``params["layers"][l]``.
      h: ``[T, D]`` hidden states of the new tokens (rows ``>= new_len`` are padding).
      positions: ``i32[T]`` absolute positions (``cached_len + arange(T)``).
      cache: the cached tokens' KV as a block pair ``([P, Z, ...], [P, Z, ...])`` (GQA
        ``[P, Z, K, H]`` x2, MLA ``[P, Z, C]`` and ``[P, Z, R]``), first ``cached_len`` tokens valid.
      cached_len, new_len: ``i32[]`` scalars.
      implementation: attention kernel, ``"auto" | "reference" | "pallas"``.

    Returns:
      ``(h_out [T, D], new_kv)``: the LayerKV of the T rows (GQA ``[T, K, H]`` x2, MLA ``[T, C]``
      and ``[T, R]``; rows ``>= new_len`` are padding).
    """
    table = jnp.arange(cache[0].shape[0], dtype=jnp.int32)
    backend = PagedPrefillAttention(cache, table, cached_len, new_len, implementation)
    h, new_kv, _ = decoder_layer(lp, spec, h, positions, backend)
    return h, new_kv


@functools.partial(jax.jit, static_argnames=("spec",))
def last_token_logits(params: dict, spec: ModelSpec, h: jax.Array, index: jax.Array) -> jax.Array:
    """Logits ``f32[V]`` of row ``index`` of the final hidden states ``h [T, D]``."""
    return unembed(params, spec, jax.lax.dynamic_slice_in_dim(h, index, 1, axis=0))[0]


@functools.partial(jax.jit, static_argnames=("spec",))
def all_logits(params: dict, spec: ModelSpec, h: jax.Array) -> jax.Array:
    """Logits ``f32[T, V]`` of every row of the final hidden states ``h [T, D]``."""
    return unembed(params, spec, h)


def decode_logits(params: dict, spec: ModelSpec, tokens: jax.Array, positions: jax.Array, pools: tuple,
                  block_table: jax.Array, active: jax.Array, *,
                  implementation: str = "auto") -> tuple[jax.Array, tuple]:
    """Next-token logits of every row of a DE batch, writing each active row's KV into the pools.

    Args:
      tokens: ``i32[B]`` the last generated token of each row (its KV is not cached yet).
      positions: ``i32[B]`` that token's absolute position (= tokens with KV so far).
      pools: L block pool pairs ``([Pt, Z, ...], [Pt, Z, ...])``, one per layer (GQA
        ``[Pt, Z, K, H]`` x2, MLA ``[Pt, Z, C]`` and ``[Pt, Z, R]``).
      block_table: ``i32[B, P]`` each row's blocks (token ``s`` in block ``block_table[b, s // Z]``).
      active: ``bool[B]``; inactive (padding) rows write nothing and read nothing.
      implementation: attention kernels, ``"auto" | "reference" | "pallas"``.

    Returns:
      ``(logits f32[B, V], pools)``: the updated pools.
    """
    h = embed(params, spec, tokens)
    out = []
    for lp, pool in zip(params["layers"], pools):
        backend = PagedDecodeAttention(pool, block_table, positions, active, implementation)
        h, _, pool = decoder_layer(lp, spec, h, positions, backend)
        out.append(pool)
    return unembed(params, spec, h), tuple(out)


@functools.partial(jax.jit, static_argnames=("spec", "implementation"), donate_argnums=(4,))
def decode_step(params: dict, spec: ModelSpec, tokens: jax.Array, positions: jax.Array, pools: tuple,
                block_table: jax.Array, active: jax.Array, *, implementation: str = "auto"):
    """Advance every active row of a DE batch by one token (greedy); arguments as :func:`decode_logits`,
    the pools donated.

    Returns:
      ``(next_tokens i32[B], gaps f32[B], pools)``: greedy tokens, the top-1 minus top-2 logit of
      each row (:func:`top2_gap`), the updated pools.
    """
    logits, pools = decode_logits(params, spec, tokens, positions, pools, block_table, active,
                                  implementation=implementation)
    top = jax.lax.top_k(logits, 2)[0]
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), top[:, 0] - top[:, 1], pools


@functools.partial(jax.jit, donate_argnums=(0,))
def set_blocks(pools: tuple, ids: jax.Array, values: tuple) -> tuple:
    """Write blocks into the pools: ``ids i32[M]``, ``values`` a pair ``([L, M, Z, ...], [L, M, Z, ...])``;
    ids ``>= Pt`` are dropped. Returns the updated pools (L pairs, donated)."""
    return tuple(tuple(p.at[ids].set(values[i][l], mode="drop") for i, p in enumerate(pair))
                 for l, pair in enumerate(pools))


@jax.jit
def get_block(pools: tuple, block_id: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One block of every layer: the pair ``([L, Z, ...], [L, Z, ...])``."""
    return tuple(jnp.stack([pair[i][block_id] for pair in pools]) for i in range(2))


def top2_gap(logits: np.ndarray) -> float:
    """``top1 - top2`` of a logit vector ``f32[V]``: how far greedy decoding is from a tie."""
    part = np.partition(np.asarray(logits, np.float64), -2)
    return float(part[-1] - part[-2])


_forward = jax.jit(forward, static_argnames=("spec",))


def reference_greedy(params: dict, spec: ModelSpec, prompt: np.ndarray, generated: np.ndarray, *,
                     forced: np.ndarray | None = None, chunk_tokens: int | None = None, pad_multiple: int = 256
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain recompute of a greedy generation from tokens, teacher-forced on ``forced``.

    The sequence ``prompt ++ forced[:-1]`` (``forced`` defaults to ``generated``: a free-running
    greedy decode feeds back its own tokens) goes through the model's own functions, never
    through the runtime's store, buffers, links or bucketed kernels, and the logits at each
    generated position give the token a greedy decoder would emit after the same context:

    * ``chunk_tokens=None``: one no-cache :func:`dualpath_jax.model.forward` over the sequence
      (padded at the end to a multiple of ``pad_multiple`` to bound compilations; causal
      attention keeps the padding out of real positions).
    * ``chunk_tokens=C``: :func:`dualpath_jax.model.forward_with_cache` over consecutive C-token
      chunks, each over the plain concatenated KV of the chunks before it (same math, memory
      ``O(C * S)`` instead of ``O(S^2)`` for long sequences).

    Args:
      prompt: ``i32[S]``; generated: ``i32[G]`` (G >= 1) the tokens to check; forced:
        ``i32[G]`` the tokens the decoder was fed (the engine's teacher-forced replay).

    Returns:
      ``(tokens i32[G], gaps f64[G], margin f64[G])``: the reference's greedy token at each
      position, its top-1 minus top-2 logit, and its top-1 logit minus the logit of
      ``generated[i]`` (0 where they agree).
    """
    prompt, generated = np.asarray(prompt, np.int32), np.asarray(generated, np.int32)
    forced = generated if forced is None else np.asarray(forced, np.int32)
    if len(forced) != len(generated):
        raise ValueError(f"forced: {len(forced)} tokens for {len(generated)} generated")
    seq = np.concatenate([prompt, forced[:-1]])
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
