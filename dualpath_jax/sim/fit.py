"""Start-of-run checks that every request fits the simulated cluster (PAPER.md 2.3-2.6).

A read lands whole in a node's DRAM buffer, a DE holds the whole request's KV, a PE the prompt's
KV it computes over; a request that can never fit is an error at the start (naming the hardware
field and the request), not a stall hours into a run.
"""

from __future__ import annotations

import warnings

import numpy as np

from dualpath_jax.config import ConfigError
from dualpath_jax.model.spec import ContextBeyondModelWarning
from dualpath_jax.sim.agents import FlatRounds
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.hardware import HardwareConfig

__all__ = ["ContextBeyondModelWarning", "check_requests_fit", "kv_memory", "no_hbm_left"]


def kv_memory(cfg: SimConfig, pe_model, de_model, kvb: float) -> tuple[float, float, float]:
    """HBM left for KV on each engine after its weights (PAPER.md 2.1, 3).

    Args:
      cfg: the run's config; pe_model, de_model: the PE and DE :class:`~.compute.ComputeModel`
        (``weight_bytes_per_gpu``); kvb: KV bytes per token.

    Returns:
      ``(pe_free_hbm, de_hbm, pe_max_kv_tokens)``: a PE's free HBM after weights and
      ``activation_reserve_bytes``, a DE's after weights (bytes), and the tokens of KV one PE batch
      may hold (all L layers in full prefill, ``layerwise_depth`` of them layer-wise).

    Raises:
      ConfigError: no HBM is left on PEs or DEs; names ``sim.activation_reserve_bytes`` when the
        PEs' weights fit but the reserve takes the rest, ``sim.hardware.hbm_bytes`` for a dense model
        or a GPU with less HBM than the default one, else ``sim.prefill_nodes`` / ``sim.decode_nodes``
        (too few GPUs share the routed experts).
    """
    hw = cfg.hardware
    usable = hw.hbm_bytes * hw.hbm_usable_fraction
    pe_free_hbm = usable - pe_model.weight_bytes_per_gpu - cfg.activation_reserve_bytes
    de_hbm = usable - de_model.weight_bytes_per_gpu
    # more GPUs share a MoE model's routed experts (EP); a dense model's weights are whole on each GPU
    dense = not cfg.spec.n_routed_experts
    hbm_field = "sim.hardware.hbm_bytes" if dense or hw.hbm_bytes < HardwareConfig().hbm_bytes else None
    if pe_free_hbm <= 0 < usable - pe_model.weight_bytes_per_gpu:  # the weights fit: the reserve does not
        raise ConfigError("sim.activation_reserve_bytes", f"{cfg.activation_reserve_bytes:,.0f} B leave no HBM for "
                          f"KV on PEs: {usable - pe_model.weight_bytes_per_gpu:,.0f} B of usable HBM are left after "
                          f"the weights ({pe_model.weight_bytes_per_gpu / 1e9:.1f} GB/GPU)")
    if pe_free_hbm <= 0:
        raise ConfigError(hbm_field or ("sim.pe_ep_nodes" if cfg.pe_ep_nodes else "sim.prefill_nodes"),
                          no_hbm_left(cfg.model, pe_model, cfg.ep_gpus("pe"), "PE", hw, dense=dense,
                                      ep_field="sim.pe_ep_nodes" if cfg.pe_ep_nodes else None))
    if de_hbm <= 0:
        raise ConfigError(hbm_field or ("sim.de_ep_nodes" if cfg.de_ep_nodes else "sim.decode_nodes"),
                          no_hbm_left(cfg.model, de_model, cfg.ep_gpus("de"), "DE", hw, dense=dense,
                                      ep_field="sim.de_ep_nodes" if cfg.de_ep_nodes else None))
    # layer-wise: the layers in flight (at most all of them: a model shallower than the depth holds all)
    layers_on_device = (min(cfg.layerwise_depth, cfg.spec.n_layers) / cfg.spec.n_layers
                        if cfg.prefill == "layerwise" else 1.0)
    return pe_free_hbm, de_hbm, pe_free_hbm / (kvb * layers_on_device)


def check_requests_fit(cfg: SimConfig, flat: FlatRounds, *, kvb: float, de_hbm: float, pe_free_hbm: float,
                       pe_max_kv_tokens: float) -> None:
    """Check that every request of ``flat`` can run.

    Args:
      cfg: the run's config; flat: every round of every agent.
      kvb: KV bytes per token; de_hbm: a DE's HBM for KV after weights (bytes); pe_free_hbm: a
        PE's (after weights and the activation reserve); pe_max_kv_tokens: tokens of KV one PE
        batch may hold (all layers in full prefill, ``layerwise_depth`` layers layer-wise).

    Raises:
      ConfigError: naming the hardware field that one request does not fit
        (``sim.hardware.hbm_bytes``, ``sim.hardware.dram_buffer_bytes``) and the request.

    Warns:
      ContextBeyondModelWarning: requests whose context exceeds the model's
        ``max_position_embeddings`` (their count and the longest).
    """
    if not flat.hit.size:
        return
    hit, append, gen, where = flat.hit, flat.append, flat.gen, flat.where
    context = hit + append + gen  # a DE holds the request's whole KV (SchedRequest.hbm_bytes)
    k = int(np.argmax(context))
    over = int(np.count_nonzero(context > cfg.spec.max_position))
    if over:  # priced all the same (the cost model has no limit), but no such request could run
        warnings.warn(f"sim.model: {over} of {context.size} requests run past {cfg.spec.name}'s "
                      f"max_position_embeddings ({cfg.spec.max_position} tokens; the longest, {where(k)}, reaches "
                      f"{context[k]}); the run prices them as if the model took them (cut the workload, e.g. "
                      f"workload.mal, or choose a model whose context holds them)", ContextBeyondModelWarning,
                      stacklevel=2)
    if context[k] * kvb > de_hbm:
        raise ConfigError("sim.hardware.hbm_bytes", f"{where(k)} needs {context[k]} tokens "
                          f"({context[k] * kvb:,.0f} B) of DE HBM but only {de_hbm:,.0f} B is free after weights")
    prompt = hit + append  # a PE's last chunk computes over prompt - 1 cached tokens plus one new one
    k = int(np.argmax(prompt))
    if prompt[k] > pe_max_kv_tokens:
        where_kv = ("all its layers" if cfg.prefill == "full"
                    else f"{cfg.layerwise_depth} of {cfg.spec.n_layers} layers at a time")
        raise ConfigError("sim.hardware.hbm_bytes", f"{where(k)} has a {prompt[k]}-token prompt; a PE's free HBM "
                          f"({pe_free_hbm:,.0f} B after weights and sim.activation_reserve_bytes) holds "
                          f"the KV of {int(pe_max_kv_tokens)} tokens with prefill={cfg.prefill!r} ({where_kv})")
    if cfg.loading != "oracle":
        # the DE buffer holds a request's whole prompt KV until the DE's H2D (DE-side hits plus the
        # PE's hand-off, PAPER.md 2.3-2.5), and a PE-side read (whole Full Blocks, at most the
        # prompt) its hits: each waits for buffer space for all of it
        k = int(np.argmax(prompt))
        buffer = cfg.hardware.dram_buffer_bytes
        if prompt[k] * kvb > buffer:
            raise ConfigError("sim.hardware.dram_buffer_bytes", f"{where(k)} has a {prompt[k]}-token prompt "
                              f"({prompt[k] * kvb:,.0f} B of KV) but a node's DRAM buffer holds {buffer:,.0f} B (the "
                              f"DE buffer holds a request's whole prompt KV until the DE copies it to HBM)")


def no_hbm_left(model: str, compute, engines: int, kind: str, hw: HardwareConfig, *, dense: bool = False,
                ep_field: str | None = None) -> str:
    """Why ``kind`` engines (``"PE"`` / ``"DE"``) have no HBM left for KV after their weights
    (``dense``: a model without routed experts, whose weights more GPUs do not share; ``ep_field``:
    the config field that sets their EP group's size, when set)."""
    nodes = f"nodes to an EP group ({ep_field})" if ep_field else ("prefill" if kind == "PE" else "decode") + " nodes"
    if dense:
        return (f"{model} weights ({compute.weight_bytes_per_gpu / 1e9:.1f} GB/GPU: a dense model's, whole on every "
                f"GPU) leave no HBM for KV on {kind}s ({hw.hbm_bytes / 1e9:.0f} GB each); raise "
                f"sim.hardware.hbm_bytes or store the weights in fewer bytes (sim.weight_dtype)")
    return (f"{model} weights ({compute.weight_bytes_per_gpu / 1e9:.1f} GB/GPU with EP over {engines} GPUs) leave no "
            f"HBM for KV on {kind}s ({hw.hbm_bytes / 1e9:.0f} GB each); add {nodes} (more GPUs share the "
            f"routed experts) or raise sim.hardware.hbm_bytes")
