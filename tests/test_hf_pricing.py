"""The weights' dtype the simulator prices a Hugging Face ``config.json`` in (``hf_weight_dtype``):
what the file declares (an FP8 ``quantization_config``, else ``torch_dtype`` / ``dtype``), never the
presets' FP8-for-DeepSeek rule; other quantization is refused unless ``sim.weight_dtype`` is set."""

import json

import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.model.hf_config import hf_weight_dtype
from dualpath_jax.sim.config import SimConfig

# the fields read of config.json files on huggingface.co (deepseek-ai/DeepSeek-V2-Lite, Qwen/Qwen3-30B-A3B,
# meta-llama/Llama-3.1-8B-Instruct), with their torch_dtype
V2_LITE = {
    "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
    "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "q_lora_rank": None,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "moe_intermediate_size": 1408,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1, "topk_group": 1, "topk_method": "greedy",
    "scoring_func": "softmax", "norm_topk_prob": False, "routed_scaling_factor": 1.0,
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000, "tie_word_embeddings": False,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "torch_dtype": "bfloat16"}
QWEN3_MOE = {
    "model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
    "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": True,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "rope_scaling": None, "attention_bias": False, "tie_word_embeddings": False,
    "use_sliding_window": False, "sliding_window": None, "torch_dtype": "bfloat16"}
LLAMA31_8B = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "attention_bias": False, "mlp_bias": False,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
# DeepSeek-V3's block-scaled FP8 quantization_config (huggingface.co/deepseek-ai/DeepSeek-V3)
DEEPSEEK_FP8 = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}


def _compressed_tensors(*weights):
    """An llm-compressor ``quantization_config`` with one config group per ``(num_bits, type)`` of
    ``weights``, laid out as huggingface.co/RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8's (one group, 8-bit
    float weights and input activations)."""
    groups = {}
    for i, (bits, kind) in enumerate(weights):
        scheme = {"actorder": None, "block_structure": None, "dynamic": False, "group_size": None, "num_bits": bits,
                  "observer": "minmax", "observer_kwargs": {}, "strategy": "channel", "symmetric": True, "type": kind}
        groups[f"group_{i}"] = {"input_activations": {**scheme, "strategy": "tensor"}, "output_activations": None,
                                "targets": ["Linear"], "weights": scheme}
    return {"config_groups": groups, "format": "float-quantized" if weights == ((8, "float"),) else "pack-quantized",
            "global_compression_ratio": 1.5, "ignore": ["lm_head"], "kv_cache_scheme": None,
            "quant_method": "compressed-tensors", "quantization_status": "compressed"}


def _write(tmp_path, name, cfg, drop=()):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k not in drop}))
    return str(folder)


@pytest.mark.parametrize("cfg, change, drop, expected", [
    (V2_LITE, {}, (), "bf16"),
    (V2_LITE, {"torch_dtype": "float32"}, (), "bf16"),       # an MLA + MoE model: not the presets' FP8
    (V2_LITE, {}, ("torch_dtype",), "bf16"),                 # no dtype at all
    (QWEN3_MOE, {"torch_dtype": "float32"}, (), "bf16"),     # a GQA MoE model
    (QWEN3_MOE, {}, ("torch_dtype",), "bf16"),
    (QWEN3_MOE, {"torch_dtype": None, "dtype": "float16"}, (), "fp16"),   # transformers 5 names it dtype
    (QWEN3_MOE, {"torch_dtype": "float16"}, (), "fp16"),
    (V2_LITE, {"quantization_config": DEEPSEEK_FP8}, (), "fp8"),
    (V2_LITE, {"quantization_config": None, "torch_dtype": "float32"}, (), "bf16"),
    (LLAMA31_8B, {"quantization_config": _compressed_tensors((8, "float"))}, (), "fp8"),
    (LLAMA31_8B, {"quantization_config": {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0}}, (), "fp8"),
    (LLAMA31_8B, {"quantization_config": _compressed_tensors((8, "float"), (8, "float"))}, (), "fp8"),
])
def test_a_config_json_is_priced_in_the_dtype_it_declares(tmp_path, cfg, change, drop, expected):
    folder = _write(tmp_path, "m", {**cfg, **change}, drop)
    assert hf_weight_dtype(folder) == expected
    assert SimConfig(model=folder).weight_dtype == expected
    assert SimConfig(model=folder, weight_dtype="f32").weight_dtype == "f32"  # an explicit one always wins


def test_presets_keep_their_weight_dtype():
    """The paper's setups: DeepSeek-V3.2 and DS 27B in FP8 (PAPER.md 6.1), Qwen2.5-32B in BF16."""
    assert {name: SimConfig(model=name).weight_dtype for name in
            ("deepseek-v3.2", "ds-27b", "qwen2.5-32b", "tiny-gqa", "tiny-mla", "tiny-moe")} == {
        "deepseek-v3.2": "fp8", "ds-27b": "fp8", "qwen2.5-32b": "bf16", "tiny-gqa": "bf16", "tiny-mla": "fp8",
        "tiny-moe": "fp8"}
    assert hf_weight_dtype("DeepSeek-V3.2") is None and hf_weight_dtype("/no/such/config.json") is None


@pytest.mark.parametrize("cfg, quant, method", [
    # Qwen/Qwen2.5-72B-Instruct-AWQ, Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4
    (QWEN3_MOE, {"bits": 4, "group_size": 128, "quant_method": "awq", "version": "gemm", "zero_point": True}, "'awq'"),
    (QWEN3_MOE, {"bits": 4, "group_size": 128, "quant_method": "gptq", "desc_act": False}, "'gptq'"),
    (LLAMA31_8B, {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
     "'bitsandbytes'"),
    (LLAMA31_8B, _compressed_tensors((4, "int")), "'compressed-tensors' (4-bit int weights)"),          # W4A16
    (LLAMA31_8B, _compressed_tensors((8, "int")), "'compressed-tensors' (8-bit int weights)"),          # W8A8 int8
    (LLAMA31_8B, _compressed_tensors((8, "float"), (4, "float")),
     "'compressed-tensors' (8-bit float, 4-bit float weights)"),                                     # FP8 + NVFP4
    (V2_LITE, "fp8", "'fp8'"),  # not an object: refused as the checkpoint loader refuses it
])
def test_other_quantization_is_refused_naming_quantization_config(tmp_path, cfg, quant, method):
    folder = _write(tmp_path, "q", {**cfg, "quantization_config": quant, "torch_dtype": "float16"})
    with pytest.raises(ConfigError) as e:
        SimConfig(model=folder)
    assert e.value.field == f"{folder}/config.json: quantization_config"
    assert method in e.value.message and "sim.weight_dtype" in e.value.message and "\n" not in str(e.value)
    # an explicit sim.weight_dtype prices it so
    assert SimConfig(model=folder, weight_dtype="fp16").weight_dtype == "fp16"


@pytest.mark.parametrize("key, value", [("torch_dtype", "float64"), ("dtype", "int8"), ("torch_dtype", 16)])
def test_a_dtype_the_simulator_does_not_price_names_its_key(tmp_path, key, value):
    folder = _write(tmp_path, "d", {**QWEN3_MOE, key: value}, drop=("torch_dtype",) if key == "dtype" else ())
    with pytest.raises(ConfigError) as e:
        SimConfig(model=folder)
    assert e.value.field == f"{folder}/config.json: {key}" and "sim.weight_dtype" in e.value.message
    assert SimConfig(model=folder, weight_dtype="bf16").weight_dtype == "bf16"
