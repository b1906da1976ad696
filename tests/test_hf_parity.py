"""Logits parity against Hugging Face transformers (Qwen2ForCausalLM, DeepseekV2ForCausalLM,
DeepseekV3ForCausalLM).

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
CASES = ["qwen2_tiny", "deepseek_v3_tiny", "deepseek_v3_tiny_noqlora", "deepseek_v2_lite_tiny"]


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_transformers_logits(name):
    spec, params = load_hf_checkpoint(os.path.join(DATA, name))
    ref = np.load(os.path.join(DATA, name, "reference.npz"))
    logits = np.asarray(forward(params, spec, jnp.asarray(ref["tokens"])))
    assert logits.shape == ref["logits"].shape
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_layerwise_with_cache_matches_transformers_logits(name):
    spec, params = load_hf_checkpoint(os.path.join(DATA, name))
    ref = np.load(os.path.join(DATA, name, "reference.npz"))
    tokens = jnp.asarray(ref["tokens"])
    _, kv = forward_with_cache(params, spec, tokens[:65], None)
    logits, _ = forward_with_cache(params, spec, tokens[65:], kv)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"][65:], atol=1e-4, rtol=0)


def test_spec_read_from_config():
    spec, _ = load_hf_checkpoint(os.path.join(DATA, "deepseek_v3_tiny"))
    assert (spec.attention, spec.kv_lora_rank, spec.qk_rope_head_dim, spec.q_lora_rank) == ("mla", 32, 8, 32)
    spec, _ = load_hf_checkpoint(os.path.join(DATA, "qwen2_tiny"))
    assert (spec.attention, spec.n_kv_heads, spec.head_dim) == ("gqa", 2, 16)


def _copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(os.path.join(DATA, name), dst)
    return dst


def test_moe_checkpoint_rejected_naming_field(tmp_path):
    d = _copy(tmp_path, "deepseek_v3_tiny")
    cfg = json.loads((d / "config.json").read_text())
    cfg["first_k_dense_replace"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="first_k_dense_replace"):
        load_hf_checkpoint(d)


def test_unknown_architecture_and_missing_tensor(tmp_path):
    d = _copy(tmp_path, "qwen2_tiny")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type"):
        load_hf_checkpoint(d)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(tmp_path / "nowhere")


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
    models = [mod.make_qwen2(), mod.make_deepseek_v3(None)]
    if hasattr(transformers, "DeepseekV2ForCausalLM"):  # transformers >= 4.52
        models.append(mod.make_deepseek_v2(32))
    for model in models:
        model = model.float().eval()
        mod._perturb_norms_and_biases(model)
        tokens = np.random.default_rng(5).integers(0, 512, size=40)
        with torch.no_grad():
            want = model(torch.from_numpy(tokens)[None]).logits[0].numpy()
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            spec, params = load_hf_checkpoint(tmp)
        got = np.asarray(forward(params, spec, jnp.asarray(tokens, jnp.int32)))
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    del transformers
