"""A local Hugging Face checkpoint as the engine's served model (``model.checkpoint``): its config
and weights read or refused in one line naming the field, and its tokens through the cluster
equal to a no-cache recompute."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.studies import engine_ablation as ea
from dualpath_jax.studies.engine_config import calibration_fingerprint, engine_ablation_config

from config_files import engine_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
HF_TINY = ROOT / "tests" / "data" / "hf" / "qwen2_tiny"


def test_a_checkpoint_that_is_not_one_is_one_error_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.checkpoint.*not a directory holding a config\.json"):
        engine_ablation_config(engine_config(**{"model.checkpoint": str(tmp_path)}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    with pytest.raises(ConfigError, match=r"config\.json: model_type"):
        engine_ablation_config(engine_config(**{"model.checkpoint": str(tmp_path)}))
    typed = engine_ablation_config(engine_config(**{"model.checkpoint": str(HF_TINY)}))
    spec = typed.model.spec()
    # the checkpoint's config.json: 3 layers, 4 query heads of 2 KV heads, hidden 64, vocab 512
    assert (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_model, spec.vocab_size) == (3, 4, 2, 64, 512)
    assert calibration_fingerprint(typed)["model.checkpoint"] == str(HF_TINY)


def test_the_served_model_is_named_and_a_too_large_one_refused(tmp_path):
    """A preset whose f32 parameters would not fit this host is one error naming model.name, before
    anything is allocated; a path given as model.name points to model.checkpoint; a checkpoint is
    kept as an absolute path, and its calibration fingerprint follows what the folder holds."""
    lines = []
    with pytest.raises(ConfigError, match=r"^model\.name: qwen2\.5-32b has 32\.8B parameters, 131 GB in f32: more "
                       r"than half of this host's .* the simulator \(sim\.model\) prices full-size ones$"):
        ea.Setup(engine_ablation_config(engine_config(**{"model.name": "qwen2.5-32b"})), [], log=lines.append)
    assert lines == ["model: qwen2.5-32b (GQA, 64 layers, 32763.88M parameters)"]
    with pytest.raises(ConfigError, match=r"^model\.name: .* is a path, not a preset: .* model\.checkpoint$"):
        engine_ablation_config(engine_config(**{"model.name": str(HF_TINY)}))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(HF_TINY, ckpt)
    relative = os.path.relpath(ckpt)
    typed = engine_ablation_config(engine_config(**{"model.checkpoint": relative}))
    assert typed.model.checkpoint == str(ckpt)
    before = calibration_fingerprint(typed)
    assert before == calibration_fingerprint(engine_ablation_config(engine_config(**{"model.checkpoint": str(ckpt)})))
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": 1e-5}))  # other weights' config, same path
    assert calibration_fingerprint(typed)["model.checkpoint_files"] != before["model.checkpoint_files"]


def _no_weights(d):
    (d / "model.safetensors").unlink()


def _truncated(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])


def _one_more_layer(d):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": cfg["num_hidden_layers"] + 1}))


def _index(text):
    def damage(d):
        (d / "model.safetensors.index.json").write_text(text)
    return damage


@pytest.mark.parametrize("damage, message", [
    (_no_weights, r"ckpt: no model\.safetensors or model\.safetensors\.index\.json \(PyTorch \.bin .*\)"),
    (_index('{"metadata": {}}'), r"ckpt/model\.safetensors\.index\.json: weight_map: must be an object of tensor "
                                 r"name -> shard file name \(got none\)"),
    (_index('[1, 2]'), r"ckpt/model\.safetensors\.index\.json: weight_map: must be an object .* \(got none\)"),
    (_index('{"weight_map": \n'), r"ckpt/model\.safetensors\.index\.json: line 2 column 1: invalid JSON .*"),
    (_truncated, r"ckpt/model\.safetensors: not a readable safetensors file \(.+\)"),
    (_one_more_layer, r"ckpt: tensor 'model\.layers\.3\.input_layernorm\.weight' missing from checkpoint"),
])
def test_a_checkpoint_whose_weights_cannot_be_read_is_one_error_naming_the_field(tmp_path, damage, message):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(HF_TINY, ckpt)
    damage(ckpt)
    config = engine_ablation_config(engine_config(**{"model.checkpoint": str(ckpt)}))  # its config.json is fine
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: .*" + message + "$"):
        ea.Setup(config, [], log=lambda *_: None)


@pytest.mark.skipif(not __import__("dualpath_jax.workload", fromlist=["agentic_dir"]).agentic_dir().is_dir(),
                    reason="shared traces not available")
def test_the_engine_serves_the_checkpoints_weights():
    import jax

    from dualpath_jax.model.hf import load_hf_checkpoint
    config = engine_ablation_config(engine_config(**{"model.checkpoint": str(HF_TINY), "profile.repeats": 1}))
    setup = ea.Setup(config, ea.select_agents(config.workload)[:1], log=lambda *_: None)
    spec, params = load_hf_checkpoint(str(HF_TINY))
    assert setup.spec == spec
    flat, ref = jax.tree.leaves(setup.params), jax.tree.leaves(params)
    assert len(flat) == len(ref) and all(np.array_equal(a, np.asarray(b)) for a, b in zip(flat, ref))


@pytest.mark.slow
@pytest.mark.skipif(not __import__("dualpath_jax.workload", fromlist=["agentic_dir"]).agentic_dir().is_dir(),
                    reason="shared traces not available")
@pytest.mark.parametrize("checkpoint", [HF_TINY, HF_TINY.parent / "deepseek_v3_moe_tiny"], ids=lambda p: p.name)
def test_a_checkpoint_runs_through_the_cluster_with_the_recompute_tokens(tmp_path, checkpoint):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "run_engine.py"),
                           f"--config={ROOT / 'configs' / 'engine_ablation.py'}:quick",
                           f"--config.model.checkpoint={checkpoint}", "--config.workload.num_agents=2",
                           "--config.variants=('basic','dualpath')", "--config.repeats=1",
                           "--config.calibrate.passes=1", f"--jit_cache_dir={tmp_path / 'jit'}", "--progress=off",
                           f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert metrics["tokens_identical"] is True and metrics["num_failed"] == 0 and metrics["bytes_conserved"] is True
