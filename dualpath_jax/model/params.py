"""Parameter pytrees: ``init_params`` and shape helpers.

Params are plain nested dicts of arrays (no hidden state)::

    {"embed": [V, D], "final_norm": [D], "lm_head": [D, V] (absent if tied),
     "layers": [ {"attn_norm": [D], <attention weights>, "mlp_norm": [D],
                  "mlp": {"w_gate": [D, F], "w_up": [D, F], "w_down": [F, D]}}, ... L ]}

A MoE layer's ``mlp`` (``spec.is_moe_layer``; E routed experts of width Fm = ``moe_d_ff``) is
``{"router": [D, E], "router_bias": [E] (noaux_tc only), "w_gate"/"w_up": [E, D, Fm],
"w_down": [E, Fm, D], "shared": {a SwiGLU of width n_shared_experts * Fm} (when shared experts)}``.

Attention weights: GQA ``wq [D, N*H], wk/wv [D, K*H], wo [N*H, D]`` plus ``bq/bk/bv`` when
``spec.qkv_bias``, ``bo [D]`` when ``spec.o_bias``, ``q_norm/k_norm [H]`` when ``spec.qk_norm``;
MLA ``wq [D, N*(nope+R)]`` (or ``wq_a [D, q_lora], q_a_norm [q_lora], wq_b [q_lora, N*(nope+R)]``),
``wkv_a [D, C+R], kv_a_norm [C], wkv_b [C, N*(nope+v)], wo [N*v, D]``. Matrices are stored
``[in, out]`` (transposed w.r.t. ``torch.nn.Linear``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dualpath_jax.model.spec import ModelSpec

__all__ = ["init_params", "param_shapes", "count_params"]


def param_shapes(spec: ModelSpec) -> dict:
    """Nested dict of parameter shapes (tuples) for ``spec``'s functional model (``layers`` a list of L
    per-layer dicts: a MoE layer's ``mlp`` differs from a dense one's)."""
    d, f = spec.d_model, spec.d_ff
    layer: dict = {"attn_norm": (d,), "mlp_norm": (d,)}
    if spec.is_mla:
        n, c, r = spec.n_heads, spec.kv_lora_rank, spec.qk_rope_head_dim
        qk = spec.qk_nope_head_dim + r
        if spec.q_lora_rank:
            layer.update(wq_a=(d, spec.q_lora_rank), q_a_norm=(spec.q_lora_rank,),
                         wq_b=(spec.q_lora_rank, n * qk))
        else:
            layer["wq"] = (d, n * qk)
        layer.update(wkv_a=(d, c + r), kv_a_norm=(c,), wkv_b=(c, n * (spec.qk_nope_head_dim + spec.v_head_dim)),
                     wo=(n * spec.v_head_dim, d))
    else:
        n, k, h = spec.n_heads, spec.n_kv_heads, spec.head_dim
        layer.update(wq=(d, n * h), wk=(d, k * h), wv=(d, k * h), wo=(n * h, d))
        if spec.qkv_bias:
            layer.update(bq=(n * h,), bk=(k * h,), bv=(k * h,))
        if spec.o_bias:
            layer["bo"] = (d,)
        if spec.qk_norm:
            layer.update(q_norm=(h,), k_norm=(h,))
    dense = {**layer, "mlp": _swiglu_shapes(d, f)}
    layers = [dense] * spec.n_layers
    if spec.n_routed_experts:
        e, fm = spec.n_routed_experts, spec.moe_d_ff
        moe: dict = {"router": (d, e), "w_gate": (e, d, fm), "w_up": (e, d, fm), "w_down": (e, fm, d)}
        if spec.moe_topk_method == "noaux_tc":
            moe["router_bias"] = (e,)
        if spec.n_shared_experts:
            moe["shared"] = _swiglu_shapes(d, spec.n_shared_experts * fm)
        layers = [{**layer, "mlp": moe} if spec.is_moe_layer(i) else dense for i in range(spec.n_layers)]
    shapes = {"embed": (spec.vocab_size, d), "final_norm": (d,), "layers": layers}
    if not spec.tie_embeddings:
        shapes["lm_head"] = (d, spec.vocab_size)
    return shapes


def _swiglu_shapes(d: int, f: int) -> dict:
    return {"w_gate": (d, f), "w_up": (d, f), "w_down": (f, d)}


def count_params(spec: ModelSpec) -> int:
    """Number of scalars in the functional model's params (every routed expert counted)."""
    leaves = jax.tree_util.tree_leaves(param_shapes(spec), is_leaf=lambda x: isinstance(x, tuple))
    total = 0
    for shape in leaves:
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def init_params(spec: ModelSpec, key: jax.Array, dtype=jnp.float32, *, std: float = 0.02) -> dict:
    """Random params: matrices ~ N(0, std), biases ~ N(0, std), norm weights ~ 1 + N(0, 0.1).

    Norm weights and biases are randomised (not left at 1 / 0) so tests exercise them.

    Args:
      spec: model spec.
      key: PRNG key.
      dtype: parameter dtype, a floating dtype (float32 or bfloat16 in practice).
      std: standard deviation of the matrices, biases and embedding (unitless).

    Returns:
      The params pytree of :func:`param_shapes` (layout in the module docstring), every leaf an
      array of ``dtype``; ``embed [V, D]``, ``final_norm [D]``, ``lm_head [D, V]`` unless
      ``spec.tie_embeddings``, and ``layers`` a list of L per-layer dicts.

    Raises:
      ValueError: ``dtype`` is not a floating dtype (an integer dtype would truncate the N(0, std)
        weights to zero).
    """
    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(f"dtype: must be a floating dtype such as float32 or bfloat16 (got {dtype!r})")
    shapes = param_shapes(spec)
    out: dict = {}
    key, k_embed, k_norm, k_head = jax.random.split(key, 4)
    out["embed"] = (std * jax.random.normal(k_embed, shapes["embed"])).astype(dtype)
    out["final_norm"] = (1.0 + 0.1 * jax.random.normal(k_norm, shapes["final_norm"])).astype(dtype)
    if "lm_head" in shapes:
        out["lm_head"] = (std * jax.random.normal(k_head, shapes["lm_head"])).astype(dtype)
    layers = []
    for layer_shapes, layer_key in zip(shapes["layers"], jax.random.split(key, spec.n_layers)):
        layers.append(_init_tree(layer_shapes, layer_key, dtype, std))
    out["layers"] = layers
    return out


def _init_tree(shapes: dict, key: jax.Array, dtype, std: float) -> dict:
    tree = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        sub = jax.random.fold_in(key, i)
        if isinstance(shape, dict):
            tree[name] = _init_tree(shape, sub, dtype, std)
        elif name.endswith("norm"):
            tree[name] = (1.0 + 0.1 * jax.random.normal(sub, shape)).astype(dtype)
        else:
            tree[name] = (std * jax.random.normal(sub, shape)).astype(dtype)
    return tree
