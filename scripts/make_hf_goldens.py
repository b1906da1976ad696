"""Write tiny random-weight Hugging Face checkpoints and their reference logits for the parity tests.

Uses ``transformers`` (Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, LlamaForCausalLM,
DeepseekV2ForCausalLM, DeepseekV3ForCausalLM; dense and MoE, default, YaRN and Llama 3 RoPE) and
``torch`` on CPU in float32:
each model is built from a tiny config with random weights, saved with ``save_pretrained`` (config.json
+ model.safetensors) under ``tests/data/hf/<name>/``, and run on fixed token ids; the logits are saved as
``reference.npz`` (``tokens`` i32[T], ``logits`` f32[T, V], and the RoPE ``rope_inv_freq`` f32[dim/2]
and ``rope_attention_scaling`` transformers derived from the config). ``tests/test_hf_parity.py`` reads the
checkpoint with ``load_hf_checkpoint`` and compares this project's forward against those logits.

Usage (needs the ``hf`` extra; ``pip install torch==2.13.0 transformers``):
    python scripts/make_hf_goldens.py [--out tests/data/hf]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import transformers

SEQ_LEN = 96


def _perturb_norms_and_biases(model: torch.nn.Module) -> None:
    # transformers initialises RMSNorm weights to 1 and biases to 0; perturb both so the test exercises them.
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith(".bias"):
            with torch.no_grad():
                p.add_(0.1 * torch.randn(p.shape, generator=g))


# the tiny GQA shape the Qwen2, Llama and Qwen3 builders share
_TINY_GQA = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6)


def make_qwen2() -> transformers.PreTrainedModel:
    cfg = transformers.Qwen2Config(**{**_TINY_GQA, "num_hidden_layers": 3}, rope_theta=10000.0,
                                   tie_word_embeddings=False, use_sliding_window=False)
    return transformers.Qwen2ForCausalLM(cfg)


# the tiny DeepSeek MLA shape both DeepSeek builders share: every layer dense (first_k_dense_replace = layers)
_TINY_MLA = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=4,
    num_experts_per_tok=2, first_k_dense_replace=3, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
    v_head_dim=16, max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False,
    attention_bias=False, n_group=1, topk_group=1)


def make_deepseek_v3(q_lora_rank) -> transformers.PreTrainedModel:
    cfg = transformers.DeepseekV3Config(**_TINY_MLA, q_lora_rank=q_lora_rank, rope_theta=10000.0,
                                        rope_interleave=True)
    return transformers.DeepseekV3ForCausalLM(cfg)


def make_deepseek_v2(q_lora_rank) -> transformers.PreTrainedModel:
    """DeepSeek-V2's MLA (V2-Lite: ``q_lora_rank`` None), every layer dense."""
    cfg = transformers.DeepseekV2Config(**_TINY_MLA, q_lora_rank=q_lora_rank,
                                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return transformers.DeepseekV2ForCausalLM(cfg)


# MoE layers after one dense layer, eight routed experts (two per token) in four groups, one shared
_TINY_MOE = {**_TINY_MLA, "n_routed_experts": 8, "first_k_dense_replace": 1, "n_group": 4, "topk_group": 2}


def _yarn(**extra) -> dict:
    """YaRN over a 256-token original context (a factor of 4: some frequencies kept, some ramped, some
    interpolated at rope width 8 or 16)."""
    return {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 256,
            "beta_fast": 32.0, "beta_slow": 1.0, **extra}


def make_deepseek_v3_moe() -> transformers.PreTrainedModel:
    """DeepSeek-V3's MoE (sigmoid router, bias-corrected group top-k, normalised weights times 2.5)
    and YaRN with both mscales (cos/sin scaled, MLA's softmax scale too)."""
    cfg = transformers.DeepseekV3Config(**_TINY_MOE, q_lora_rank=32, rope_interleave=True, norm_topk_prob=True,
                                        routed_scaling_factor=2.5,
                                        rope_parameters=_yarn(mscale=0.9, mscale_all_dim=0.8))
    return transformers.DeepseekV3ForCausalLM(cfg)


def make_deepseek_v2_moe() -> transformers.PreTrainedModel:
    """DeepSeek-V2's MoE (softmax router, group-limited greedy top-k: both experts of the best of four
    groups, which greedy top-2 often does not pick; unnormalised weights) without
    query LoRA, and YaRN with DeepSeek-V2-Lite's mscales (0.707 both: cos/sin unscaled, softmax scaled)."""
    cfg = transformers.DeepseekV2Config(**{**_TINY_MOE, "topk_group": 1}, q_lora_rank=None,
                                        topk_method="group_limited_greedy",
                                        norm_topk_prob=False, routed_scaling_factor=1.0,
                                        rope_parameters=_yarn(mscale=0.707, mscale_all_dim=0.707))
    return transformers.DeepseekV2ForCausalLM(cfg)


def make_deepseek_v2_moe_top1() -> transformers.PreTrainedModel:
    """DeepSeek-V2's MoE with one expert per token and ``norm_topk_prob`` set: DeepSeek's code (and
    transformers, which ignores the flag) scales the single weight by ``routed_scaling_factor``
    instead of normalising it; ``rope_interleave: false`` (a key V2 has no use for: it always
    rotates interleaved pairs) and ``hidden_act: swish`` (SiLU under another name)."""
    cfg = transformers.DeepseekV2Config(**{**_TINY_MOE, "num_experts_per_tok": 1}, q_lora_rank=16,
                                        topk_method="greedy", norm_topk_prob=True, routed_scaling_factor=2.0,
                                        hidden_act="swish", rope_interleave=False,
                                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return transformers.DeepseekV2ForCausalLM(cfg)


def make_deepseek_v3_moe_no_shared() -> transformers.PreTrainedModel:
    """DeepSeek-V3's MoE without shared experts (transformers writes zero-width shared-expert
    tensors for ``n_shared_experts: 0``)."""
    cfg = transformers.DeepseekV3Config(**{**_TINY_MOE, "n_shared_experts": 0}, q_lora_rank=32,
                                        rope_interleave=True, norm_topk_prob=True, routed_scaling_factor=2.5,
                                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return transformers.DeepseekV3ForCausalLM(cfg)


def make_qwen2_yarn() -> transformers.PreTrainedModel:
    """Qwen2 with YaRN (Qwen2.5's long-context setting: ``attention_factor`` inferred from the factor)."""
    cfg = transformers.Qwen2Config(**_TINY_GQA, tie_word_embeddings=False, use_sliding_window=False,
                                   rope_parameters=_yarn())
    return transformers.Qwen2ForCausalLM(cfg)


def make_llama() -> transformers.PreTrainedModel:
    """Llama with biases on q/k/v/o and Llama 3.1's RoPE scaling over a 64-token original context
    (at rope width 16 some frequencies kept, some blended, some divided)."""
    cfg = transformers.LlamaConfig(**_TINY_GQA, attention_bias=True, tie_word_embeddings=False,
                                   rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 64})
    return transformers.LlamaForCausalLM(cfg)


def make_qwen3() -> transformers.PreTrainedModel:
    """Qwen3: per-head q/k RMSNorm, a head_dim other than hidden / heads, tied embeddings."""
    cfg = transformers.Qwen3Config(**_TINY_GQA, head_dim=32, tie_word_embeddings=True, use_sliding_window=False,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return transformers.Qwen3ForCausalLM(cfg)


def make_qwen3_moe() -> transformers.PreTrainedModel:
    """Qwen3-MoE: every layer eight experts, two per token, their softmax weights renormalised."""
    cfg = transformers.Qwen3MoeConfig(**_TINY_GQA, head_dim=16, num_experts=8, num_experts_per_tok=2,
                                      moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1,
                                      mlp_only_layers=[], tie_word_embeddings=False, use_sliding_window=False,
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return transformers.Qwen3MoeForCausalLM(cfg)


def _spread_routers(model: torch.nn.Module) -> None:
    # a router initialised like a linear layer scores every expert about alike on a 64-wide model; widen its
    # weights so the top-k is decided by clear margins, and give V3's balance bias a value of its own
    g = torch.Generator().manual_seed(2)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        with torch.no_grad():
            if name.endswith("mlp.gate.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("e_score_correction_bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "hf"))
    parser.add_argument("--only", default="", help="comma-separated names to (re)write (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    makers = {"qwen2_tiny": make_qwen2, "deepseek_v3_tiny": lambda: make_deepseek_v3(32),
              "deepseek_v3_tiny_noqlora": lambda: make_deepseek_v3(None),
              "deepseek_v2_lite_tiny": lambda: make_deepseek_v2(None),
              "deepseek_v3_moe_tiny": make_deepseek_v3_moe, "deepseek_v2_moe_tiny": make_deepseek_v2_moe,
              "qwen2_yarn_tiny": make_qwen2_yarn, "llama_tiny": make_llama, "qwen3_tiny": make_qwen3,
              "qwen3_moe_tiny": make_qwen3_moe, "deepseek_v2_moe_top1_tiny": make_deepseek_v2_moe_top1,
              "deepseek_v3_moe_no_shared_tiny": make_deepseek_v3_moe_no_shared}
    only = [n for n in args.only.split(",") if n]
    if unknown := sorted(set(only) - set(makers)):
        parser.error(f"--only: unknown names {unknown} (known: {sorted(makers)})")
    models = {name: make() for name, make in makers.items() if not only or name in only}
    tokens = np.random.default_rng(0).integers(0, 512, size=SEQ_LEN).astype(np.int32)
    for name, model in models.items():
        model = model.float().eval()
        _perturb_norms_and_biases(model)
        _spread_routers(model)
        out_dir = os.path.join(args.out, name)
        model.save_pretrained(out_dir, safe_serialization=True)
        with torch.no_grad():
            logits = model(torch.from_numpy(tokens.astype(np.int64))[None]).logits[0].numpy()
        rotary = model.model.rotary_emb  # the RoPE frequencies and cos/sin factor transformers derived
        np.savez(os.path.join(out_dir, "reference.npz"), tokens=tokens, logits=logits.astype(np.float32),
                 rope_inv_freq=rotary.inv_freq.numpy().astype(np.float32),
                 rope_attention_scaling=np.float64(rotary.attention_scaling))
        print(f"{name}: wrote {out_dir} logits {logits.shape}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
