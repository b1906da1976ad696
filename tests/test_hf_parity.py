"""Logits parity against Hugging Face transformers (Qwen2ForCausalLM, Qwen3ForCausalLM,
Qwen3MoeForCausalLM, LlamaForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM; dense and MoE;
default, YaRN and Llama 3 RoPE).

The checkpoints and reference logits under tests/data/hf were written by transformers itself
(scripts/make_hf_goldens.py, torch float32 on CPU); this project only reads them. The live test at the
bottom rebuilds a fresh random model in torch when transformers is installed.
"""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.model import forward, forward_with_cache
from dualpath_jax.model.hf import load_hf_checkpoint

DATA = os.path.join(os.path.dirname(__file__), "data", "hf")
# f32 on both sides: the logits (about 0.7 at most) agree to about 3e-7; 5e-6 still tells a RoPE
# frequency 5% off (9e-5 here) or an mscale not squared (5e-4)
ATOL = 5e-6
CASES = ["qwen2_tiny", "deepseek_v3_tiny", "deepseek_v3_tiny_noqlora", "deepseek_v2_lite_tiny",
         "deepseek_v3_moe_tiny", "deepseek_v2_moe_tiny", "qwen2_yarn_tiny", "llama_tiny", "qwen3_tiny",
         "qwen3_moe_tiny",
         # V2 top-1 with norm_topk_prob (scaled, not normalised), rope_interleave false and hidden_act
         # swish (both mean nothing else to V2); V3 with n_shared_experts 0 (zero-width tensors)
         "deepseek_v2_moe_top1_tiny", "deepseek_v3_moe_no_shared_tiny"]


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_transformers_logits(name):
    spec, params = load_hf_checkpoint(os.path.join(DATA, name))
    ref = np.load(os.path.join(DATA, name, "reference.npz"))
    logits = np.asarray(forward(params, spec, jnp.asarray(ref["tokens"])))
    assert logits.shape == ref["logits"].shape
    np.testing.assert_allclose(logits, ref["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_layerwise_with_cache_matches_transformers_logits(name):
    spec, params = load_hf_checkpoint(os.path.join(DATA, name))
    ref = np.load(os.path.join(DATA, name, "reference.npz"))
    tokens = jnp.asarray(ref["tokens"])
    _, kv = forward_with_cache(params, spec, tokens[:65], None)
    logits, _ = forward_with_cache(params, spec, tokens[65:], kv)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"][65:], atol=ATOL, rtol=0)


ROPE_CASES = [n for n in CASES if "rope_inv_freq" in np.load(os.path.join(DATA, n, "reference.npz"))]


@pytest.mark.parametrize("name", ROPE_CASES)
def test_rope_frequencies_and_scale_match_transformers(name):
    """RoPE's frequencies and its cos/sin factor as transformers derived them from the config.json
    (YaRN, Llama 3), compared directly rather than through the logits."""
    from dualpath_jax.model.layers import rope_inv_freq

    spec, _ = load_hf_checkpoint(os.path.join(DATA, name))
    ref = np.load(os.path.join(DATA, name, "reference.npz"))
    dim = spec.qk_rope_head_dim if spec.is_mla else spec.head_dim
    np.testing.assert_allclose(np.asarray(rope_inv_freq(dim, spec.rope_theta, spec.rope_scaling)),
                               ref["rope_inv_freq"], rtol=1e-6, atol=0)
    scale = 1.0 if spec.rope_scaling is None else spec.rope_scaling.cos_sin_scale
    assert scale == pytest.approx(float(ref["rope_attention_scaling"]), rel=1e-12)


def test_spec_read_from_config():
    spec, _ = load_hf_checkpoint(os.path.join(DATA, "deepseek_v3_tiny", "config.json"))  # (its config.json: the same)
    assert (spec.attention, spec.kv_lora_rank, spec.qk_rope_head_dim, spec.q_lora_rank) == ("mla", 32, 8, 32)
    spec, _ = load_hf_checkpoint(os.path.join(DATA, "qwen2_tiny"))
    assert (spec.attention, spec.n_kv_heads, spec.head_dim) == ("gqa", 2, 16)


def _copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(os.path.join(DATA, name), dst)
    return dst


def test_moe_and_yarn_fields_read_from_config():
    spec, params = load_hf_checkpoint(os.path.join(DATA, "deepseek_v3_moe_tiny"))
    assert (spec.n_routed_experts, spec.n_activated_experts, spec.n_shared_experts, spec.first_k_dense) == (8, 2, 1, 1)
    assert (spec.moe_scoring, spec.moe_topk_method, spec.moe_n_group, spec.moe_topk_group) == (
        "sigmoid", "noaux_tc", 4, 2)
    assert (spec.moe_norm_topk, spec.moe_routed_scale) == (True, 2.5)
    rope = spec.rope_scaling
    assert (rope.kind, rope.factor, rope.original_max_position, rope.mscale, rope.mscale_all_dim) == (
        "yarn", 4.0, 256, 0.9, 0.8)
    # YaRN eq. 21: cos/sin times mscale(4, 0.9) / mscale(4, 0.8); MLA's softmax scale times mscale(4, 0.8)^2
    m = lambda s: 0.1 * s * np.log(4.0) + 1  # noqa: E731
    assert rope.cos_sin_scale == pytest.approx(m(0.9) / m(0.8))
    assert spec.attn_scale == pytest.approx(24 ** -0.5 * m(0.8) ** 2)
    assert "router" not in params["layers"][0]["mlp"]  # first_k_dense_replace = 1
    moe = params["layers"][1]["mlp"]
    assert moe["w_gate"].shape == (8, 64, 32) and moe["router"].shape == (64, 8) and moe["router_bias"].shape == (8,)
    spec, params = load_hf_checkpoint(os.path.join(DATA, "deepseek_v2_moe_tiny"))
    assert (spec.moe_scoring, spec.moe_topk_method, spec.moe_topk_group, spec.moe_norm_topk) == (
        "softmax", "group_limited_greedy", 1, False)
    assert "router_bias" not in params["layers"][1]["mlp"] and spec.rope_scaling.cos_sin_scale == 1.0


def test_gqa_variants_read_from_config():
    spec, params = load_hf_checkpoint(os.path.join(DATA, "llama_tiny"))
    assert (spec.qkv_bias, spec.o_bias, spec.qk_norm, spec.rope_scaling.kind) == (True, True, False, "llama3")
    assert params["layers"][0]["bo"].shape == (64,)
    spec, params = load_hf_checkpoint(os.path.join(DATA, "qwen3_tiny"))
    assert (spec.qkv_bias, spec.o_bias, spec.qk_norm, spec.head_dim, spec.tie_embeddings) == (
        False, False, True, 32, True)
    assert params["layers"][0]["q_norm"].shape == (32,) and "lm_head" not in params
    spec, params = load_hf_checkpoint(os.path.join(DATA, "qwen3_moe_tiny"))
    assert (spec.n_routed_experts, spec.n_activated_experts, spec.n_shared_experts, spec.first_k_dense) == (8, 2, 0, 0)
    assert (spec.moe_scoring, spec.moe_topk_method, spec.moe_norm_topk) == ("softmax", "greedy", True)
    assert "shared" not in params["layers"][0]["mlp"]


def test_fused_expert_tensors_read_as_the_per_expert_ones(tmp_path):
    """transformers 5 holds a layer's experts as gate_up_proj [E, 2Fm, D] and down_proj [E, D, Fm]; a
    checkpoint written that way gives the same params as the Hub's per-expert tensors."""
    from safetensors.numpy import load_file, save_file
    d = _copy(tmp_path, "deepseek_v3_moe_tiny")
    tensors = load_file(d / "model.safetensors")
    for layer in (1, 2):
        pre = f"model.layers.{layer}.mlp.experts."
        gate, up, down = ([tensors.pop(f"{pre}{j}.{w}_proj.weight") for j in range(8)] for w in ("gate", "up", "down"))
        tensors[pre + "gate_up_proj"] = np.stack([np.concatenate([g, u]) for g, u in zip(gate, up)])
        tensors[pre + "down_proj"] = np.stack(down)
    save_file(tensors, d / "model.safetensors")
    _, fused = load_hf_checkpoint(d)
    _, ref = load_hf_checkpoint(os.path.join(DATA, "deepseek_v3_moe_tiny"))
    for key in ("w_gate", "w_up", "w_down"):
        np.testing.assert_array_equal(np.asarray(fused["layers"][2]["mlp"][key]),
                                      np.asarray(ref["layers"][2]["mlp"][key]))
    del tensors["model.layers.2.mlp.experts.down_proj"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"'model\.layers\.2\.mlp\.experts\.down_proj' missing"):
        load_hf_checkpoint(d)


@pytest.mark.parametrize("change, field", [
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}}, "rope_parameters.rope_type"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 0.5,
                          "original_max_position_embeddings": 256}}, "rope_parameters.factor"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": "4"}}, "rope_parameters.factor"),
    ({"rope_scaling": {"type": "ntk", "factor": 4.0}, "rope_parameters": None}, "rope_scaling.type"),
    ({"rope_parameters": [1, 2]}, "rope_parameters: must be a JSON object"),
    ({"rope_scaling": "yarn", "rope_parameters": None}, "rope_scaling: must be a JSON object"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 0.5}},
     "rope_parameters.beta_fast"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"topk_group": 5}, "topk_group"),
    ({"n_group": 3}, "n_group"),
    ({"scoring_func": "softmax"}, "scoring_func"),
    ({"index_n_heads": 2, "index_head_dim": 8, "index_topk": 16}, "index_n_heads"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}, "quantization_config"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_or_inconsistent_settings_rejected_naming_the_key(tmp_path, change, field):
    d = _copy(tmp_path, "deepseek_v3_moe_tiny")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ConfigError, match=r"config\.json: " + field.replace(".", r"\.")):
        load_hf_checkpoint(d)


@pytest.mark.parametrize("name, change", [
    ("qwen3_tiny", {"model_type": "llama"}),                 # its q/k norms
    ("qwen2_tiny", {"model_type": "llama"}),                 # its q/k/v biases
    ("deepseek_v2_moe_tiny", {"n_shared_experts": 0}),       # its shared experts
])
def test_weights_the_config_does_not_describe_are_an_error(tmp_path, name, change):
    """A config.json that leaves out a key its checkpoint needs would run another model; the loader
    refuses the weights left unread."""
    d = _copy(tmp_path, name)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError, match=r"tensor\(s\) the config\.json does not describe"):
        load_hf_checkpoint(d)


def test_a_missing_expert_names_it(tmp_path):
    from safetensors.numpy import load_file, save_file
    d = _copy(tmp_path, "deepseek_v2_moe_tiny")
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"'model\.layers\.1\.mlp\.experts\.5\.up_proj\.weight' missing"):
        load_hf_checkpoint(d)


def test_unknown_architecture_and_missing_tensor(tmp_path):
    d = _copy(tmp_path, "qwen2_tiny")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(ConfigError, match="model_type"):
        load_hf_checkpoint(d)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(tmp_path / "nowhere")
    # a config.json that is not a JSON object names the file (not a JSONDecodeError or AttributeError)
    for text, problem in (("{not json", "not a readable JSON file"),
                          ("[1, 2]", r"must hold a JSON object \(got list\)")):
        (d / "config.json").write_text(text)
        with pytest.raises(ConfigError, match=rf"config\.json: {problem}") as e:
            load_hf_checkpoint(d)
        assert e.value.field == str(d / "config.json")


@pytest.mark.hf
def test_live_transformers_parity():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import importlib.util
    import sys
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_hf_goldens.py")
    spec_ = importlib.util.spec_from_file_location("make_hf_goldens", script)
    mod = importlib.util.module_from_spec(spec_)
    sys.modules["make_hf_goldens"] = mod
    spec_.loader.exec_module(mod)
    torch.manual_seed(123)
    import tempfile
    models = [mod.make_qwen2(), mod.make_deepseek_v3(None), mod.make_deepseek_v3_moe(), mod.make_qwen2_yarn(),
              mod.make_llama(), mod.make_qwen3(), mod.make_qwen3_moe()]
    if hasattr(transformers, "DeepseekV2ForCausalLM"):  # transformers >= 4.52
        models += [mod.make_deepseek_v2(32), mod.make_deepseek_v2_moe()]
    for model in models:
        model = model.float().eval()
        mod._perturb_norms_and_biases(model)
        mod._spread_routers(model)
        tokens = np.random.default_rng(5).integers(0, 512, size=40)
        with torch.no_grad():
            want = model(torch.from_numpy(tokens)[None]).logits[0].numpy()
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            spec, params = load_hf_checkpoint(tmp)
        got = np.asarray(forward(params, spec, jnp.asarray(tokens, jnp.int32)))
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    del transformers
