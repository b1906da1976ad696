import math

import numpy as np
import pytest

from dualpath_jax.config import ConfigError, argv_flag_values, from_mapping
from dualpath_jax.model import ModelSpec, get_spec, preset_names


def test_presets_exist_and_validate():
    assert set(preset_names()) >= {"tiny-gqa", "tiny-mla", "qwen2.5-32b", "deepseek-v3.2", "ds-27b"}
    ds = get_spec("DeepSeek-V3.2")
    assert (ds.n_layers, ds.kv_lora_rank, ds.index_topk, ds.first_k_dense) == (61, 512, 2048, 3)


def test_unknown_preset_names_field():
    with pytest.raises(ConfigError, match=r"model\.name.*unknown preset 'llama'"):
        get_spec("llama")


@pytest.mark.parametrize("change,field", [
    (dict(d_model=-4), "d_model"),
    (dict(n_layers=0), "n_layers"),
    (dict(n_heads=6), "n_heads"),            # 6 not divisible by 4 KV heads... see base below
    (dict(attention="mqa"), "attention"),
    (dict(head_dim=15), "head_dim"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(vocab_size=2.5), "vocab_size"),
])
def test_invalid_gqa_specs_name_field(change, field):
    base = dict(name="x", attention="gqa", vocab_size=10, d_model=8, n_layers=1, n_heads=8, n_kv_heads=4,
                head_dim=4, d_ff=8)
    with pytest.raises(ConfigError) as e:
        ModelSpec(**{**base, **change})
    assert e.value.field.endswith(field)


@pytest.mark.parametrize("change,field", [
    (dict(kv_lora_rank=0), "kv_lora_rank"),
    (dict(qk_rope_head_dim=3), "qk_rope_head_dim"),
    (dict(index_n_heads=4), "index_n_heads"),
    (dict(n_routed_experts=4, n_activated_experts=8, moe_d_ff=4), "n_activated_experts"),
    (dict(first_k_dense=5), "first_k_dense"),
    (dict(qk_norm=True), "qk_norm"),
    (dict(o_bias=True), "o_bias"),
])
def test_invalid_mla_specs_name_field(change, field):
    base = get_spec("tiny-mla")
    with pytest.raises(ConfigError) as e:
        base.replace(**change)
    assert e.value.field.endswith(field)


def test_from_mapping_rejects_unknown_key():
    with pytest.raises(ConfigError, match="n_hedas"):
        from_mapping(ModelSpec, {"name": "x", "attention": "gqa", "n_hedas": 3})


def test_argv_flag_values_reads_both_absl_forms():
    argv = ["--config", "configs/engine_ablation.py:quick", "--config.cluster.decode_nodes=3", "--workdir", "/tmp/w",
            "--progress", "--config.cluster.engines_per_node", "2", "positional", "--config.cluster.decode_nodes=4"]
    assert argv_flag_values(argv) == {"--config": "configs/engine_ablation.py:quick", "--workdir": "/tmp/w",
                                      "--progress": "", "--config.cluster.decode_nodes": "4",
                                      "--config.cluster.engines_per_node": "2"}
    assert argv_flag_values(["--a=-1", "--b", "-2"]) == {"--a": "-1", "--b": ""}  # "-2" is not taken as a value


# DeepSeek-V2-Lite's config.json (huggingface.co/deepseek-ai/DeepSeek-V2-Lite), the fields read
DEEPSEEK_V2_LITE = {
    "model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"], "vocab_size": 102400,
    "hidden_size": 2048, "intermediate_size": 10944, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_key_value_heads": 16, "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 64, "n_shared_experts": 2,
    "num_experts_per_tok": 6, "moe_intermediate_size": 1408, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000, "tie_word_embeddings": False,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
}


def test_a_deepseek_v2_lite_config_reads_as_mla_with_moe():
    from dualpath_jax.model import cost
    from dualpath_jax.model.spec import spec_from_hf_config

    spec = spec_from_hf_config(DEEPSEEK_V2_LITE, name="v2-lite")
    assert (spec.attention, spec.q_lora_rank, spec.kv_lora_rank, spec.qk_rope_head_dim) == ("mla", 0, 512, 64)
    assert (spec.n_routed_experts, spec.n_activated_experts, spec.n_shared_experts, spec.first_k_dense,
            spec.moe_d_ff) == (64, 6, 2, 1, 1408)
    assert spec.rope_interleave and spec.rope_theta == 10000.0
    # its router: softmax, greedy top-6, weights unnormalised (transformers' DeepseekV2Config defaults)
    assert (spec.moe_scoring, spec.moe_topk_method, spec.moe_norm_topk, spec.moe_routed_scale) == (
        "softmax", "greedy", False, 1.0)
    # YaRN under the old "type" key: equal mscales leave cos/sin as they are and scale the softmax by
    # mscale(40, 0.707)^2 = (0.1 * 0.707 * ln 40 + 1)^2
    rope = spec.rope_scaling
    assert (rope.kind, rope.factor, rope.original_max_position, rope.cos_sin_scale) == ("yarn", 40.0, 4096, 1.0)
    assert spec.attn_scale == pytest.approx(192 ** -0.5 * (0.1 * 0.707 * math.log(40) + 1) ** 2)
    # MLA caches the latent and the rope key per token per layer: (512 + 64) values, bf16 = 2 bytes each
    assert cost.kv_bytes_per_token_per_layer(spec, "bf16") == (512 + 64) * 2
    assert cost.kv_bytes_per_token(spec, "bf16") == 27 * (512 + 64) * 2
    with pytest.raises(ConfigError, match="model_type"):
        spec_from_hf_config({**DEEPSEEK_V2_LITE, "model_type": "deepseek_v4"})


def test_from_mapping_names_a_nested_dataclass_field_as_the_user_reached_it():
    from dualpath_jax.sim.config import SimConfig
    from dualpath_jax.sim.hardware import HardwareConfig

    with pytest.raises(ConfigError) as e:  # --config.sim.hardware.snic_bytes_per_s=-1
        from_mapping(SimConfig, {"hardware": {"snic_bytes_per_s": -1.0}}, prefix="sim.")
    assert e.value.field == "sim.hardware.snic_bytes_per_s" and str(e.value).endswith("must be > 0 (got -1.0)")
    with pytest.raises(ConfigError) as e:  # the advisor's top-level --config.hardware.snic_bytes_per_s=-1
        from_mapping(HardwareConfig, {"snic_bytes_per_s": -1.0}, prefix="hardware.")
    assert e.value.field == "hardware.snic_bytes_per_s"
    with pytest.raises(ConfigError) as e:  # a field the dataclass already names from the root stays as it is
        from_mapping(SimConfig, {"prefill_nodes": 0}, prefix="sim.")
    assert e.value.field == "sim.prefill_nodes"


def test_config_error_keeps_its_field_through_pickle_and_a_one_argument_rebuild():
    import pickle

    e = pickle.loads(pickle.dumps(ConfigError("cluster.buffer_bytes", "must be > 0 (got 0)")))
    assert (e.field, str(e)) == ("cluster.buffer_bytes", "cluster.buffer_bytes: must be > 0 (got 0)")
    # how ml_collections re-raises a config file's error: type(e)(text)
    wrapped = type(e)("Error whilst parsing config file:\n\n...")
    assert (wrapped.field, str(wrapped)) == ("", "Error whilst parsing config file:\n\n...")
    again = pickle.loads(pickle.dumps(wrapped))
    assert (again.field, str(again)) == ("", str(wrapped))


@pytest.mark.parametrize("change,field", [
    (dict(moe_n_group=3), "moe_n_group"),                         # 3 groups of 8 experts
    (dict(moe_topk_group=5), "moe_topk_group"),                   # more groups kept than there are
    (dict(moe_topk_group=1, n_activated_experts=3), "moe_topk_group"),  # one group of 2 holds fewer than 3
    (dict(moe_n_group=8, moe_topk_group=2), "moe_n_group"),       # noaux_tc ranks a group by its best two
    (dict(moe_scoring="relu"), "moe_scoring"),
    (dict(moe_topk_method="top_p"), "moe_topk_method"),
    (dict(moe_routed_scale=0.0), "moe_routed_scale"),
])
def test_invalid_moe_routing_names_field(change, field):
    with pytest.raises(ConfigError) as e:
        get_spec("tiny-moe").replace(**change)
    assert e.value.field.endswith(field)


@pytest.mark.parametrize("fields,field", [
    (dict(kind="ntk"), "kind"),
    (dict(kind="linear", factor=0.5), "factor"),
    (dict(kind="yarn", factor=4.0), "original_max_position"),
    (dict(kind="yarn", factor=4.0, original_max_position=256, beta_fast=0.5), "beta_fast"),  # < beta_slow 1
    (dict(kind="llama3", factor=8.0), "original_max_position"),
    (dict(kind="llama3", factor=8.0, original_max_position=8192, low_freq_factor=4.0), "high_freq_factor"),
])
def test_invalid_rope_scaling_names_field(fields, field):
    from dualpath_jax.model.spec import RopeScaling

    with pytest.raises(ConfigError) as e:
        RopeScaling(**fields)
    assert e.value.field == "rope_scaling." + field


def test_yarn_bounds_and_scales_in_closed_form():
    """YaRN (arXiv 2309.00071): dimension index d(r) = dim * ln(L / (2 pi r)) / (2 ln theta) for r
    rotations over the original context L; the ramp runs between d(beta_fast) and d(beta_slow)."""
    from dualpath_jax.model.spec import RopeScaling

    rope = RopeScaling(kind="yarn", factor=40.0, original_max_position=4096, mscale=1.0, mscale_all_dim=1.0)
    d = lambda r: 64 * math.log(4096 / (2 * math.pi * r)) / (2 * math.log(10000.0))  # noqa: E731
    assert rope.yarn_ramp_bounds(64, 10000.0) == (math.floor(d(32)), math.ceil(d(1)))
    assert rope.cos_sin_scale == 1.0 and rope.mla_softmax_factor == pytest.approx((0.1 * math.log(40) + 1) ** 2)
    plain = RopeScaling(kind="yarn", factor=4.0, original_max_position=256)
    assert plain.cos_sin_scale == pytest.approx(0.1 * math.log(4) + 1) and plain.mla_softmax_factor == 1.0
    assert RopeScaling(kind="linear", factor=4.0).cos_sin_scale == 1.0


# the fields read of Kimi-K2-Instruct's config.json (huggingface.co/moonshotai/Kimi-K2-Instruct: DeepSeek-V3's
# architecture, model_type kimi_k2, here deepseek_v3): YaRN with beta_fast == beta_slow == 1
KIMI_K2 = {**{k: v for k, v in DEEPSEEK_V2_LITE.items() if k not in ("q_lora_rank",)},
           "model_type": "deepseek_v3", "vocab_size": 163840, "hidden_size": 7168, "intermediate_size": 18432,
           "num_hidden_layers": 61, "num_attention_heads": 64, "num_key_value_heads": 64, "q_lora_rank": 1536,
           "n_routed_experts": 384, "n_shared_experts": 1, "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
           "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "routed_scaling_factor": 2.827,
           "max_position_embeddings": 131072, "rope_theta": 50000.0,
           "rope_scaling": {"type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
                            "beta_fast": 1.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}}


def _transformers_yarn_inv_freq(dim, base, factor, original, beta_fast, beta_slow, truncate):
    """``transformers``' ``_compute_yarn_parameters`` (modeling_rope_utils.py) in plain numpy: the
    correction range floored / ceiled when ``truncate``, and its ``linear_ramp_factor`` adding 0.001 to
    equal bounds."""
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    extrapolation = 1 - np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    return 1 / (factor * pos_freqs) * (1 - extrapolation) + 1 / pos_freqs * extrapolation


@pytest.mark.parametrize("truncate", [True, False])  # False: equal bounds, the 0.001 guard
def test_yarn_with_beta_fast_equal_to_beta_slow_loads_and_matches_transformers(truncate):
    """transformers warns only for beta_fast < beta_slow; equal betas give a one-index ramp (truncated:
    between floor and ceil of the same correction dimension) or a step (0.001 wide)."""
    from dualpath_jax.model.layers import rope_inv_freq
    from dualpath_jax.model.spec import spec_from_hf_config

    cfg = {**KIMI_K2, "rope_scaling": {**KIMI_K2["rope_scaling"], "truncate": truncate}}
    spec = spec_from_hf_config(cfg, name="kimi-k2")
    rope = spec.rope_scaling
    assert (rope.kind, rope.factor, rope.beta_fast, rope.beta_slow, rope.truncate) == (
        "yarn", 32.0, 1.0, 1.0, truncate)
    got = np.asarray(rope_inv_freq(spec.qk_rope_head_dim, spec.rope_theta, rope))
    want = _transformers_yarn_inv_freq(64, 50000.0, 32.0, 4096, 1.0, 1.0, truncate)
    assert got.shape == (32,) and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=2e-6)
    low, high = rope.yarn_ramp_bounds(64, 50000.0)
    assert (low, high) == ((19, 20) if truncate else (pytest.approx(19.165, abs=1e-3),) * 2)
    # up to the bound the frequencies are kept, past it divided by the factor
    plain = 1 / 50000.0 ** (np.arange(0, 64, 2) / 64)
    np.testing.assert_allclose(got[:20], plain[:20], rtol=2e-6)
    np.testing.assert_allclose(got[20:] * 32.0, plain[20:], rtol=2e-6)


def test_kimi_k2_reads_as_deepseek_v3():
    """Kimi-K2's config.json (model_type kimi_k2, architectures DeepseekV3ForCausalLM): its weights
    counted by hand (norm weights aside), 1.026T (published: 1T total, 32B active)."""
    from dualpath_jax.model import cost
    from dualpath_jax.model.spec import spec_from_hf_config

    kimi = spec_from_hf_config({**KIMI_K2, "model_type": "kimi_k2"}, name="kimi-k2")
    assert kimi == spec_from_hf_config(KIMI_K2, name="kimi-k2")
    d, heads, vocab = 7168, 64, 163840
    # MLA: q down 1536, q up to heads x (128 nope + 64 rope), kv down to 512 + 64, kv up to heads x (128 + 128), out
    attn = d * 1536 + 1536 * heads * 192 + d * (512 + 64) + 512 * heads * 256 + heads * 128 * d
    expert = 3 * d * 2048  # gate, up, down of one 2048-wide expert
    dense, router = 3 * d * 18432, d * 384
    assert cost.total_params(kimi) == 2 * vocab * d + 61 * attn + dense + 60 * (385 * expert + router)
    assert cost.active_linear_params(kimi) == vocab * d + 61 * attn + dense + 60 * (9 * expert + router)


def test_rope_scaling_from_a_mapping():
    spec = from_mapping(ModelSpec, {**{k: v for k, v in vars(get_spec("tiny-gqa")).items() if k != "rope_scaling"},
                                    "rope_scaling": {"kind": "linear", "factor": 2.0}})
    assert spec.rope_scaling.kind == "linear" and spec.rope_scaling.factor == 2.0
    with pytest.raises(ConfigError) as e:
        from_mapping(ModelSpec, {**vars(get_spec("tiny-gqa")), "rope_scaling": {"kind": "yarn", "factor": 2.0}},
                     prefix="model.")
    assert e.value.field == "model.rope_scaling.original_max_position"


# the fields read of four config.json files on huggingface.co (meta-llama/Llama-3.1-8B, Qwen/Qwen3-8B,
# Qwen/Qwen3-30B-A3B, mistralai/Mistral-7B-v0.3)
LLAMA31_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
              "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
              "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
QWEN3_8B = {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000, "rope_scaling": None,
            "attention_bias": False, "tie_word_embeddings": False, "use_sliding_window": False,
            "sliding_window": None}
QWEN3_30B_A3B = {**QWEN3_8B, "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                 "num_hidden_layers": 48, "num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8,
                 "moe_intermediate_size": 768, "norm_topk_prob": True, "decoder_sparse_step": 1,
                 "mlp_only_layers": []}
MISTRAL_7B = {"model_type": "mistral", "vocab_size": 32768, "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
              "sliding_window": None, "tie_word_embeddings": False}


def test_llama_qwen3_and_mistral_configs_read_as_gqa():
    from dualpath_jax.model import cost
    from dualpath_jax.model.spec import spec_from_hf_config

    llama = spec_from_hf_config(LLAMA31_8B)
    assert (llama.attention, llama.n_kv_heads, llama.head_dim, llama.qkv_bias, llama.o_bias, llama.qk_norm) == (
        "gqa", 8, 128, False, False, False)
    assert (llama.rope_scaling.kind, llama.rope_scaling.factor, llama.rope_scaling.original_max_position) == (
        "llama3", 8.0, 8192)
    # K and V of 8 heads x 128 per layer, 32 layers, fp16: 128 KiB per token
    assert cost.kv_bytes_per_token(llama, "fp16") == 2 * 8 * 128 * 32 * 2 == 131072
    qwen3 = spec_from_hf_config(QWEN3_8B)
    assert (qwen3.qk_norm, qwen3.qkv_bias, qwen3.head_dim, qwen3.rope_theta) == (True, False, 128, 1e6)
    moe = spec_from_hf_config(QWEN3_30B_A3B)
    assert (moe.n_routed_experts, moe.n_activated_experts, moe.moe_d_ff, moe.first_k_dense, moe.n_shared_experts) == (
        128, 8, 768, 0, 0)
    assert moe.is_moe_layer(0) and moe.moe_norm_topk and moe.moe_scoring == "softmax"
    # the model cards: Llama-3.1-8B 8.03B parameters; Qwen3-30B-A3B 30.5B of which 3.3B activated
    assert cost.total_params(llama) == pytest.approx(8.03e9, rel=0.01)
    assert cost.total_params(moe) == pytest.approx(30.5e9, rel=0.01)
    assert cost.active_linear_params(moe) + moe.vocab_size * moe.d_model == pytest.approx(3.3e9, rel=0.03)
    mistral = spec_from_hf_config(MISTRAL_7B)
    assert (mistral.head_dim, mistral.o_bias, mistral.rope_scaling) == (128, False, None)


@pytest.mark.parametrize("config, change, key", [
    (MISTRAL_7B, {"sliding_window": 4096}, "sliding_window"),
    (QWEN3_8B, {"use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window"),
    (QWEN3_30B_A3B, {"mlp_only_layers": [0, 1]}, "mlp_only_layers"),
    (QWEN3_30B_A3B, {"decoder_sparse_step": 2}, "decoder_sparse_step"),
    (QWEN3_30B_A3B, {"num_experts_per_tok": 200}, "num_experts_per_tok"),
    (LLAMA31_8B, {"attention_bias": "yes"}, "attention_bias"),
    (LLAMA31_8B, {"tie_word_embeddings": "false"}, "tie_word_embeddings"),
    # no head_dim key: hidden_size // num_attention_heads = 111, odd (RoPE rotates pairs)
    ({k: v for k, v in LLAMA31_8B.items() if k != "head_dim"}, {"hidden_size": 3552, "num_attention_heads": 32},
     "head_dim (absent: hidden_size 3552 // num_attention_heads 32)"),
    (LLAMA31_8B, {"rope_scaling": {**LLAMA31_8B["rope_scaling"], "high_freq_factor": 0.5}},
     "rope_scaling.high_freq_factor"),
])
def test_bad_gqa_configs_name_the_key(config, change, key):
    from dualpath_jax.model.spec import spec_from_hf_config

    with pytest.raises(ConfigError) as e:
        spec_from_hf_config({**config, **change}, path="c.json")
    assert e.value.field == f"c.json: {key}"


def test_absent_keys_take_transformers_defaults():
    """As transformers' config classes: Qwen3's head_dim 128 (not hidden / heads), Mistral's 4096-token
    sliding window, DeepSeek-V3's router (8 groups, 4 kept, x2.5) and shared expert, a top-level
    original_max_position_embeddings over the RoPE dict's."""
    from dualpath_jax.model.spec import spec_from_hf_config

    small = {**QWEN3_8B, "hidden_size": 1024, "num_attention_heads": 16}
    del small["head_dim"]
    assert spec_from_hf_config(small).head_dim == 128
    with pytest.raises(ConfigError, match="sliding_window"):
        spec_from_hf_config({k: v for k, v in MISTRAL_7B.items() if k != "sliding_window"})
    v3 = {k: v for k, v in DEEPSEEK_V2_LITE.items()
          if k not in ("n_shared_experts", "num_experts_per_tok", "first_k_dense_replace", "q_lora_rank")}
    spec = spec_from_hf_config({**v3, "model_type": "deepseek_v3"})
    assert (spec.moe_n_group, spec.moe_topk_group, spec.moe_routed_scale, spec.moe_norm_topk) == (8, 4, 2.5, True)
    assert (spec.n_shared_experts, spec.n_activated_experts, spec.first_k_dense, spec.q_lora_rank) == (1, 8, 3, 1536)
    llama = spec_from_hf_config({**LLAMA31_8B, "original_max_position_embeddings": 4096})
    assert llama.rope_scaling.original_max_position == 4096


def test_deepseek_v2_normalising_its_weights_does_not_scale_them():
    """DeepSeek-V2's modeling code normalises the chosen weights or scales them, not both."""
    from dualpath_jax.model.spec import spec_from_hf_config

    spec = spec_from_hf_config({**DEEPSEEK_V2_LITE, "norm_topk_prob": True, "routed_scaling_factor": 16.0})
    assert (spec.moe_norm_topk, spec.moe_routed_scale) == (True, 1.0)
    spec = spec_from_hf_config({**DEEPSEEK_V2_LITE, "norm_topk_prob": False, "routed_scaling_factor": 16.0})
    assert (spec.moe_norm_topk, spec.moe_routed_scale) == (False, 16.0)
    # one expert per token: DeepSeek-V2's code normalises only when top_k > 1, else it scales
    spec = spec_from_hf_config({**DEEPSEEK_V2_LITE, "num_experts_per_tok": 1, "norm_topk_prob": True,
                                "routed_scaling_factor": 16.0})
    assert (spec.moe_norm_topk, spec.moe_routed_scale) == (False, 16.0)


@pytest.mark.parametrize("value, interleaved", [(True, True), (False, False), (None, False), (1, True)])
def test_rope_interleave_is_read_as_transformers_reads_it(value, interleaved):
    """V3: the key's truth value (transformers: ``if config.rope_interleave``; absent: its default,
    true); V2: always interleaved (no other layout in its code)."""
    from dualpath_jax.model.spec import spec_from_hf_config

    v3 = {**KIMI_K2, "model_type": "deepseek_v3"}
    assert spec_from_hf_config({**v3, "rope_interleave": value}).rope_interleave is interleaved
    assert spec_from_hf_config({k: v for k, v in v3.items() if k != "rope_interleave"}).rope_interleave
    assert spec_from_hf_config({**DEEPSEEK_V2_LITE, "rope_interleave": value}).rope_interleave
    with pytest.raises(ConfigError, match="rope_interleave: must be true or false"):
        spec_from_hf_config({**v3, "rope_interleave": "no"})


def test_a_config_without_model_type_says_it_is_missing():
    from dualpath_jax.model.spec import spec_from_hf_config

    with pytest.raises(ConfigError, match=r"^c\.json: model_type: required field is missing \(supported: 'qwen2'"):
        spec_from_hf_config({"hidden_size": 8}, path="c.json")
    with pytest.raises(ConfigError, match=r"unknown preset 'tiny-mo'; did you mean tiny-moe"):
        get_spec("tiny-mo")


def test_null_counts_and_absent_limits_read_as_transformers_and_deepseek_do():
    """An explicit null n_routed_experts / n_shared_experts is none (DeepSeek's modeling code:
    ``if config.n_routed_experts is not None``), a null group count under a grouped router is
    refused; an absent max_position_embeddings is the model_type's transformers default; Mistral has
    no projection biases whatever attention_bias says (transformers' Mistral ignores it); Qwen's
    use_sliding_window slides only the layers from max_window_layers on (none when it covers all)."""
    from dualpath_jax.model import cost
    from dualpath_jax.model.spec import spec_from_hf_config

    dense = spec_from_hf_config({**DEEPSEEK_V2_LITE, "n_routed_experts": None})
    assert dense.n_routed_experts == 0
    assert cost.total_params(dense) == cost.total_params(spec_from_hf_config({**DEEPSEEK_V2_LITE,
                                                                              "n_routed_experts": 0}))
    assert spec_from_hf_config({**DEEPSEEK_V2_LITE, "n_shared_experts": None}).n_shared_experts == 0
    assert spec_from_hf_config({k: v for k, v in DEEPSEEK_V2_LITE.items() if k != "n_shared_experts"}
                               ).n_shared_experts == 2  # absent: DeepseekV2Config's default
    grouped = {**DEEPSEEK_V2_LITE, "topk_method": "group_limited_greedy", "n_group": None, "topk_group": 1}
    with pytest.raises(ConfigError) as e:
        spec_from_hf_config(grouped, path="c.json")
    assert e.value.field == "c.json: n_group"
    assert spec_from_hf_config({**grouped, "topk_method": "greedy"}).moe_topk_method == "greedy"
    for config, want in ((LLAMA31_8B, 2048), (QWEN3_8B, 32768), (MISTRAL_7B, 131072),
                         ({**DEEPSEEK_V2_LITE, "rope_scaling": None}, 2048),
                         ({**DEEPSEEK_V2_LITE, "model_type": "deepseek_v3", "rope_scaling": None}, 4096)):
        absent = {k: v for k, v in config.items() if k != "max_position_embeddings"}
        assert spec_from_hf_config(absent).max_position == want, config["model_type"]
    mistral = spec_from_hf_config({**MISTRAL_7B, "attention_bias": True})
    assert (mistral.qkv_bias, mistral.o_bias) == (False, False)
    assert spec_from_hf_config({**LLAMA31_8B, "attention_bias": True}).o_bias is True
    full = spec_from_hf_config({**QWEN3_8B, "use_sliding_window": True, "max_window_layers": 36})
    assert full.n_layers == 36
    with pytest.raises(ConfigError, match="layers from 35 on would slide, of 36"):
        spec_from_hf_config({**QWEN3_8B, "use_sliding_window": True, "max_window_layers": 35, "sliding_window": 4096})
    # Qwen3-MoE slides every layer; a null sliding_window slides none
    with pytest.raises(ConfigError, match="layers from 0 on would slide, of 48"):
        spec_from_hf_config({**QWEN3_30B_A3B, "use_sliding_window": True, "sliding_window": 4096})
    assert spec_from_hf_config({**QWEN3_30B_A3B, "use_sliding_window": True, "sliding_window": None}).n_layers == 48
