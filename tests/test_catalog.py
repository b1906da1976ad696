"""Hardware catalog (datasheet numbers), per-model dtypes and the peak they pick, and models read
from a Hugging Face config.json, checked against datasheet figures and hand-computed sizes."""

import dataclasses
import json
from unittest import mock

import numpy as np
import pytest

from dualpath_jax import native
from dualpath_jax.config import ConfigError
from dualpath_jax.model import cost
from dualpath_jax.model.spec import get_spec, resolve_spec
from dualpath_jax.sim import HardwareConfig, SimAgent, SimConfig, Simulator, catalog
from dualpath_jax.sim.catalog import hardware_for, peak_flops
from dualpath_jax.sim.config import sim_config_dict
from dualpath_jax.studies.common import sim_config

T, P = 1e12, 1e15

# Datasheet figures in TFLOP/s and whether the datasheet prints them "with sparsity" (dense = half).
# H800/H100/H200: NVIDIA H800 / H100 (SXM) / H200 (SXM) Tensor Core GPU datasheets; B200: HGX B200
# specifications, per 8-GPU board (FP4 144 PF, FP8 72 PF, FP16/BF16 36 PF with sparsity, FP32 600 TF);
# A100: A100 80GB SXM datasheet.
SPARSE, DENSE = True, False
DATASHEET_TFLOPS = {
    **{(g, d): v for g in ("h800", "h100", "h200")
       for d, v in {"fp8": (3958, SPARSE), "bf16": (1979, SPARSE), "fp16": (1979, SPARSE), "fp32": (67, DENSE)}.items()},
    ("b200", "fp4"): (144_000 / 8, SPARSE), ("b200", "fp8"): (72_000 / 8, SPARSE),
    ("b200", "bf16"): (36_000 / 8, SPARSE), ("b200", "fp16"): (36_000 / 8, SPARSE), ("b200", "fp32"): (600 / 8, DENSE),
    ("a100", "bf16"): (624, SPARSE), ("a100", "fp16"): (624, SPARSE), ("a100", "fp32"): (19.5, DENSE),
}
# (HBM bytes, HBM bytes/s, NIC Gb/s per GPU of the reference node): datasheets; B200 from DGX B200's
# 1,440 GB and 64 TB/s over 8 GPUs; NICs: paper section 7.2 (H800), DGX H100/H200/B200 (ConnectX-7
# 400 Gb/s), DGX A100 (ConnectX-6 200 Gb/s).
DATASHEET_MEMORY = {"h800": (80e9, 3.35e12, 400), "h100": (80e9, 3.35e12, 400), "h200": (141e9, 4.8e12, 400),
                    "b200": (1440e9 / 8, 64e12 / 8, 400), "a100": (80e9, 2039e9, 200)}


@pytest.mark.parametrize("gpu, dtype", sorted(DATASHEET_TFLOPS))
def test_dense_peaks_are_the_datasheet_figures(gpu, dtype):
    tflops, sparse = DATASHEET_TFLOPS[(gpu, dtype)]
    assert peak_flops(gpu, dtype) == pytest.approx(tflops * T / (2 if sparse else 1), rel=1e-12)


def test_catalog_lists_exactly_the_datasheet_dtypes_and_memory():
    for gpu, spec in catalog.GPUS.items():
        assert set(spec.peak_flops) == {d for g, d in DATASHEET_TFLOPS if g == gpu}
        hbm, bw, nic_gbps = DATASHEET_MEMORY[gpu]
        hw = hardware_for(gpu)
        assert (hw.gpu, hw.hbm_bytes, hw.hbm_bytes_per_s) == (gpu, pytest.approx(hbm), pytest.approx(bw))
        assert hw.cnic_bytes_per_s == hw.snic_bytes_per_s == pytest.approx(nic_gbps * 1e9 / 8)
    assert "fp8" not in catalog.GPUS["a100"].peak_flops  # Ampere has no FP8 Tensor Cores


def test_h800_is_the_default_testbed_and_its_numbers_are_papers_section_9():
    hw = HardwareConfig()
    assert hardware_for("h800") == hw
    # PAPER.md 9: ~1979 dense FP8 and ~989 dense BF16 TFLOP/s, 80 GB HBM3 at ~3.35 TB/s
    assert (catalog.compute_peak(hw, "fp8"), hw.hbm_bytes, hw.hbm_bytes_per_s) == (1979 * T, 80e9, 3.35e12)
    assert catalog.compute_peak(hw, "bf16") == 989.5 * T
    # dtype names as the cost model spells them
    assert peak_flops("h800", "bfloat16") == peak_flops("h800", "float16") == 989.5 * T
    assert peak_flops("H100", "float8") == 1979 * T and peak_flops("h800", "f32") == 67 * T


def test_unknown_gpu_or_dtype_names_the_field_and_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"hardware\.gpu: unknown GPU 'mi300x'; known: \['a100', 'b200', "
                                          r"'h100', 'h200', 'h800'\]"):
        HardwareConfig(gpu="mi300x")
    with pytest.raises(ConfigError, match=r"hardware\.gpu: unknown GPU 'h20'"):
        hardware_for("h20")
    with pytest.raises(ConfigError, match=r"dtype: unknown compute dtype 'int3'; known: \['fp4', 'fp8', 'bf16'"):
        peak_flops("h800", "int3")
    with pytest.raises(ConfigError, match=r"dtype: NVIDIA A100 SXM4 80GB has no fp8 peak; it has "
                                          r"\['bf16', 'fp16', 'fp32'\]"):
        peak_flops("a100", "fp8")
    with pytest.raises(ConfigError, match=r"dtype: .* has no fp4 peak"):
        peak_flops("h200", "fp4")
    with pytest.raises(ConfigError, match=r"hardware\.nvlink: unknown field for HardwareConfig"):
        hardware_for("h200", nvlink=1)


def test_another_gpu_left_with_the_h800_memory_is_refused():
    with pytest.raises(ConfigError, match=r"hardware\.hbm_bytes: is the H800 default .* 'h200'.*hardware_for"):
        HardwareConfig(gpu="h200")
    with pytest.raises(ConfigError, match=r"hardware\.hbm_bytes_per_s: is the H800 default"):
        HardwareConfig(gpu="a100")  # 80 GB like the H800, but 2.039 TB/s
    assert HardwareConfig(gpu="h100").hbm_bytes == 80e9  # same memory as the H800: nothing to set
    assert HardwareConfig(gpu="h200", hbm_bytes=141e9, hbm_bytes_per_s=4.8e12) == hardware_for("h200")
    b200 = hardware_for("b200", cnic_bytes_per_s=800e9 / 8, snic_bytes_per_s=800e9 / 8)  # ConnectX-8 nodes
    assert (b200.cnic_bytes_per_s, b200.hbm_bytes, b200.dram_bytes_per_s) == (100e9, 180e9, 500e9)
    with pytest.raises(ConfigError, match=r"hardware\.peak_flops: must be > 0"):
        HardwareConfig(peak_flops=0.0)


# ---- per-model dtypes and the peak they pick -------------------------------------------------------

def test_dtypes_default_to_the_models_own_and_pick_the_peak():
    ds = SimConfig()  # DeepSeek-V3.2: FP8 KV (FlashMLA layout), FP8 weights and GEMMs
    assert (ds.kv_dtype, ds.weight_dtype, ds.compute_dtype, ds.peak_flops) == ("fp8", "fp8", "fp8", 1979 * T)
    assert (SimConfig(model="ds-27b").weight_dtype, SimConfig(model="ds-27b").peak_flops) == ("fp8", 1979 * T)
    qwen = SimConfig(model="qwen2.5-32b")  # dense GQA: FP16 KV (Table 1), BF16 weights and GEMMs
    assert (qwen.kv_dtype, qwen.weight_dtype, qwen.compute_dtype, qwen.peak_flops) == ("fp16", "bf16", "bf16",
                                                                                       989.5 * T)
    # swapping the model of a DeepSeek config does not carry DeepSeek's dtypes over
    assert ds.replace(loading="oracle").replace(model="qwen2.5-32b") == qwen.replace(loading="oracle")
    assert qwen.replace(model="deepseek-v3.2") == ds


def test_an_explicit_dtype_or_peak_wins():
    qwen = SimConfig(model="qwen2.5-32b", kv_dtype="fp8", weight_dtype="fp8")
    assert (qwen.kv_dtype, qwen.weight_dtype, qwen.peak_flops) == ("fp8", "fp8", 1979 * T)
    assert qwen.replace(model="ds-27b").kv_dtype == "fp8"  # explicit: kept across a model change
    assert SimConfig(model="qwen2.5-32b", hardware=HardwareConfig(peak_flops=5e14)).peak_flops == 5e14
    assert SimConfig(hardware=HardwareConfig(peak_flops=1979e15)).peak_flops == 1979e15
    assert SimConfig(model="qwen2.5-32b", weight_dtype="f32").peak_flops == 67 * T


def test_other_gpus_give_their_peak_and_fail_where_they_lack_the_dtype():
    assert SimConfig(hardware=hardware_for("b200")).peak_flops == 4.5 * P
    assert SimConfig(model="qwen2.5-32b", hardware=hardware_for("a100")).peak_flops == 312 * T
    assert SimConfig(model="qwen2.5-32b", hardware=hardware_for("h200")).peak_flops == 989.5 * T
    with pytest.raises(ConfigError, match=r"sim\.weight_dtype: NVIDIA A100 SXM4 80GB has no fp8 peak"):
        SimConfig(hardware=hardware_for("a100"))  # DeepSeek's FP8 GEMMs on Ampere
    SimConfig(hardware=hardware_for("a100"), weight_dtype="bf16")
    with pytest.raises(ConfigError, match=r"sim\.kv_dtype: must be one of"):
        SimConfig(kv_dtype="int4")


def test_config_files_leave_dtypes_and_peak_to_the_model():
    d = sim_config_dict()
    assert (d.kv_dtype, d.weight_dtype, d.hardware.peak_flops, d.hardware.gpu) == (None, None, None, "h800")
    assert sim_config(d, {"model": "qwen2.5-32b"}) == SimConfig(model="qwen2.5-32b")
    d.weight_dtype, d.hardware.peak_flops = "fp8", 1e15  # what --config.sim.weight_dtype=fp8 ... sets
    cfg = sim_config(d, {"model": "qwen2.5-32b"})
    assert (cfg.kv_dtype, cfg.weight_dtype, cfg.peak_flops) == ("fp16", "fp8", 1e15)
    b200 = sim_config(sim_config_dict(hardware=dataclasses.asdict(hardware_for("b200"))))
    assert (b200.hardware.hbm_bytes, b200.peak_flops) == (180e9, 4.5 * P)


@pytest.mark.skipif(bool(native.COMPILED), reason="patches a module global of the pure-Python simulator")
def test_the_simulator_calibrates_with_the_resolved_peak_and_dtypes():
    agents = [SimAgent(0.0, np.asarray([1000], np.int64), np.asarray([10], np.int64))]
    from dualpath_jax.sim import compute
    # linear layers at the weights' dtype peak; attention at the BF16 peak, the DSA indexer at FP8
    for cfg, want in ((SimConfig(), (1979 * T, 3.35e12, "fp8", "fp8", 989.5 * T, 1979 * T)),
                      (SimConfig(model="qwen2.5-32b", prefill_nodes=1, decode_nodes=1, hardware=hardware_for("h200")),
                       (989.5 * T, 4.8e12, "bf16", "fp16", 989.5 * T, 1979 * T))):
        with mock.patch.object(compute, "calibrate_from_public", wraps=compute.calibrate_from_public) as spy:
            Simulator(cfg, agents)
        assert spy.call_count == 2
        for call in spy.call_args_list:
            kw = call.kwargs
            assert (kw["peak_flops"], kw["hbm_bytes_per_s"], kw["weight_dtype"], kw["kv_dtype"],
                    kw["attention_peak_flops"], kw["indexer_peak_flops"]) == want


# ---- models read from a config.json -----------------------------------------------------------------

QWEN25_32B = {  # huggingface.co/Qwen/Qwen2.5-32B config.json
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02,
    "intermediate_size": 27648, "max_position_embeddings": 131072, "max_window_layers": 64, "model_type": "qwen2",
    "num_attention_heads": 40, "num_hidden_layers": 64, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064}

DEEPSEEK_V3 = {  # huggingface.co/deepseek-ai/DeepSeek-V3 config.json (auto_map etc. left out)
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
    "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
    "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True,
    "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                                            "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                                            "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": False,
    "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 129280}

# DeepSeek-V3.2 adds the DSA lightning indexer (PAPER.md [CFG-DS])
DEEPSEEK_V32 = {**DEEPSEEK_V3, "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
                "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048}


def _write(tmp_path, name, cfg):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_qwen_config_json_kv_bytes_and_flops_by_hand(tmp_path):
    folder = _write(tmp_path, "Qwen2.5-32B", QWEN25_32B)
    spec = resolve_spec(str(folder))
    assert spec == resolve_spec(str(folder / "config.json")) and spec.name == "Qwen2.5-32B"
    assert dataclasses.replace(spec, name="qwen2.5-32b") == get_spec("qwen2.5-32b")  # the preset, typed separately
    # KV: K and V, 8 KV heads x head_dim 128 (5120 / 40), 2 bytes in FP16
    assert cost.kv_bytes_per_token_per_layer(spec, "fp16") == 2 * 8 * 128 * 2 == 4096
    assert cost.kv_bytes_per_token(spec) == cost.kv_bytes_per_token(spec, "fp16") == 64 * 4096 == 262144
    # linear FLOPs per token = 2 x the weights a token multiplies through (norms, biases, embedding lookup
    # excluded): q, k, v, o projections, SwiGLU MLP (gate, up, down), LM head
    d, n, k, h, ff, layers, vocab = 5120, 40, 8, 128, 27648, 64, 152064
    attn = d * n * h + 2 * d * k * h + n * h * d
    active = layers * (attn + 3 * d * ff) + d * vocab
    assert active == 31_984_189_440
    f = cost.prefill_flops(spec, 1000, 1)
    assert float(f["linear"]) == 2 * active
    assert float(f["attention"]) == layers * 4 * n * h * 1001  # QK^T and PV over 1000 cached keys + itself
    cfg = SimConfig(model=str(folder), prefill_nodes=1, decode_nodes=2)
    assert (cfg.spec, cfg.kv_dtype, cfg.weight_dtype, cfg.peak_flops) == (spec, "fp16", "bf16", 989.5 * T)
    assert not cfg.uses_ep_sync


def test_deepseek_config_json_kv_bytes_and_flops_by_hand(tmp_path):
    spec = resolve_spec(str(_write(tmp_path, "DeepSeek-V3", DEEPSEEK_V3)))
    assert (spec.attention, spec.n_layers, spec.q_lora_rank, spec.kv_lora_rank, spec.qk_rope_head_dim) == (
        "mla", 61, 1536, 512, 64)
    assert (spec.n_routed_experts, spec.n_activated_experts, spec.n_shared_experts, spec.moe_d_ff,
            spec.first_k_dense, spec.index_n_heads) == (256, 8, 1, 2048, 3, 0)
    # KV: latent C = 512 plus rope key R = 64 -> 576 values per token per layer. FlashMLA's FP8 layout
    # (PAPER.md 1.2): C FP8 bytes + one FP32 scale per 128 latent values + R BF16 values
    assert spec.kv_values_per_token_per_layer == 576
    assert cost.kv_bytes_per_token_per_layer(spec, "fp8") == 512 * 1 + (512 // 128) * 4 + 64 * 2 == 656
    assert cost.kv_bytes_per_token(spec) == 61 * 656 == 40016
    assert cost.kv_bytes_per_token_per_layer(spec, "bf16") == 576 * 2
    # active linear weights per token (MLA with query LoRA, kv_b absorbed into the query/output, as
    # model.cost counts them): q_a, q_b, kv_a (latent + rope key), kv_b, o
    d, n, q, c, r, nope, v = 7168, 128, 1536, 512, 64, 128, 128
    attn = d * q + q * n * (nope + r) + d * (c + r) + c * n * (nope + v) + n * v * d
    dense_mlp = 3 * d * 18432
    moe_mlp = (8 + 1) * 3 * d * 2048 + d * 256  # 8 routed + 1 shared expert, and the router
    active = 61 * attn + 3 * dense_mlp + 58 * moe_mlp + d * 129280
    assert active == 36_624_596_992
    assert 36e9 < active < 38e9  # DeepSeek-V3 technical report: 37B activated parameters per token
    assert float(cost.prefill_flops(spec, 0, 1)["linear"]) == 2 * active
    cfg = SimConfig(model=str(tmp_path / "DeepSeek-V3"))
    assert (cfg.kv_dtype, cfg.weight_dtype, cfg.peak_flops, cfg.uses_ep_sync) == ("fp8", "fp8", 1979 * T, True)


def test_the_weight_dtype_follows_the_config_json(tmp_path):
    # BF16 weights (no FP8 quantization_config, as DeepSeek-V2's and V2-Lite's checkpoints): the BF16 peak
    bf16 = _write(tmp_path, "DeepSeek-V3-bf16", {k: v for k, v in DEEPSEEK_V3.items() if k != "quantization_config"})
    cfg = SimConfig(model=str(bf16))
    assert (cfg.weight_dtype, cfg.peak_flops, cfg.kv_dtype) == ("bf16", 989.5 * T, "fp8")
    fp16 = _write(tmp_path, "Qwen-fp16", {**QWEN25_32B, "torch_dtype": "float16"})
    assert SimConfig(model=str(fp16)).weight_dtype == "fp16"
    # newer files name it "dtype"; a float32 file is priced as GPU servers load it, in BF16 (not by the
    # presets' FP8 rule for DeepSeek models)
    newer = {**{k: v for k, v in QWEN25_32B.items() if k != "torch_dtype"}, "dtype": "float16"}
    assert SimConfig(model=str(_write(tmp_path, "Qwen-new", newer))).weight_dtype == "fp16"
    f32 = _write(tmp_path, "V3-f32", {**DEEPSEEK_V3, "torch_dtype": "float32", "quantization_config": None})
    assert SimConfig(model=str(f32)).weight_dtype == "bf16"
    # an explicit sim.weight_dtype still wins
    assert SimConfig(model=str(bf16), weight_dtype="fp8").weight_dtype == "fp8"


def test_deepseek_v32_indexer_fields_are_read(tmp_path):
    spec = resolve_spec(str(_write(tmp_path, "DeepSeek-V3.2", DEEPSEEK_V32) / "config.json"))
    assert (spec.index_n_heads, spec.index_head_dim, spec.index_topk) == (64, 128, 2048)
    assert dataclasses.replace(spec, name="deepseek-v3.2") == get_spec("deepseek-v3.2")
    # the indexer's projections: q (from the query LoRA), one key head, per-head weights; per layer
    d, q = 7168, 1536
    indexer = q * 64 * 128 + d * 128 + d * 64
    linear = float(cost.prefill_flops(spec, 0, 1)["linear"])
    assert linear == 2 * (36_624_596_992 + 61 * indexer)
    assert linear == pytest.approx(74e9, rel=0.02)  # PAPER.md 1.2: ~74 GFLOP linear per new token
    # DSA: main attention over at most index_topk keys; the indexer scores every cached key
    f = cost.prefill_flops(spec, 4000, 1)
    assert float(f["attention"]) == 61 * (2 * 128 * (512 + 64) + 2 * 128 * 512) * 2048
    assert float(f["indexer"]) == 61 * 2 * 64 * 128 * 4001


def test_every_layer_dense_means_no_moe_fields(tmp_path):
    spec = resolve_spec(str(_write(tmp_path, "dense", {**DEEPSEEK_V3, "first_k_dense_replace": 61})))
    assert (spec.n_routed_experts, spec.moe_d_ff, spec.first_k_dense) == (0, 0, 0)
    assert not SimConfig(model=str(tmp_path / "dense")).uses_ep_sync


def test_bad_config_json_names_the_file_and_field(tmp_path):
    def err(cfg, name="bad"):
        folder = _write(tmp_path, name, cfg)
        with pytest.raises(ConfigError) as e:
            SimConfig(model=str(folder))
        return e.value.field, str(e.value)

    file = str(tmp_path / "{}" / "config.json")
    assert err({k: v for k, v in QWEN25_32B.items() if k != "hidden_size"}, "a")[0] == f"{file.format('a')}: hidden_size"
    assert err({**QWEN25_32B, "num_key_value_heads": 7}, "b") == (
        f"{file.format('b')}: num_attention_heads",
        f"{file.format('b')}: num_attention_heads: must be divisible by n_kv_heads (got n_heads=40, n_kv_heads=7)")
    assert err({**QWEN25_32B, "intermediate_size": "big"}, "c")[0] == f"{file.format('c')}: intermediate_size"
    assert err({**QWEN25_32B, "model_type": "gpt_neox"}, "d")[0] == f"{file.format('d')}: model_type"
    # (layers from max_window_layers on slide: Qwen2.5-32B's 64 of 64 leave none)
    assert err({**QWEN25_32B, "use_sliding_window": True, "max_window_layers": 48}, "e")[0] == \
        f"{file.format('e')}: use_sliding_window"
    assert err({k: v for k, v in DEEPSEEK_V3.items() if k != "kv_lora_rank"}, "f")[0] == \
        f"{file.format('f')}: kv_lora_rank"
    # (DeepseekV2Config has no default for it; DeepseekV3Config's is 8)
    v2 = {k: v for k, v in DEEPSEEK_V3.items() if k not in ("num_experts_per_tok", "quantization_config")}
    assert err({**v2, "model_type": "deepseek_v2"}, "g")[0] == f"{file.format('g')}: num_experts_per_tok"
    assert err({**DEEPSEEK_V3, "num_experts_per_tok": 300}, "h")[0] == f"{file.format('h')}: num_experts_per_tok"
    assert err({**DEEPSEEK_V32, "index_topk": 0}, "i")[0] == f"{file.format('i')}: index_n_heads"
    assert err({**DEEPSEEK_V3, "moe_layer_freq": 2}, "j")[0] == f"{file.format('j')}: moe_layer_freq"
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"k/config\.json: not a readable JSON file"):
        SimConfig(model=str(tmp_path / "k"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"sim\.model: .*empty: no config\.json there"):
        SimConfig(model=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"sim\.model: unknown model 'qwen3-999b': neither a preset \(\['deepseek-v3.2'"):
        SimConfig(model="qwen3-999b")
