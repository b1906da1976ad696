"""Cost accounting against the paper's Table 1 and closed-form cases."""

import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.model import cost, get_spec

# PAPER.md section 1.2, Table 1: GB/PFLOP at 16K and 64K context, 429 appended tokens.
TABLE1 = {"qwen2.5-32b": (117.0, 267.0), "deepseek-v3.2": (13.0, 36.0)}


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_cache_compute_ratio_reproduces_table1(name):
    spec = get_spec(name)
    for ctx, want in zip((16 * 1024, 64 * 1024), TABLE1[name]):
        got = cost.cache_compute_ratio(spec, ctx, 429)
        assert abs(got - want) / want <= 0.10, (name, ctx, got, want)


def test_kv_bytes_per_token_known_layouts():
    # Qwen2.5-32B FP16: 2 (K,V) * 8 heads * 128 dims * 2 B * 64 layers = 256 KiB.
    assert cost.kv_bytes_per_token(get_spec("qwen2.5-32b"), "fp16") == 256 * 1024
    # DeepSeek-V3.2 FlashMLA FP8: 512 + 4*4 + 64*2 = 656 B per layer, 61 layers.
    ds = get_spec("deepseek-v3.2")
    assert cost.kv_bytes_per_token_per_layer(ds, "fp8") == 656
    assert cost.kv_bytes_per_token(ds, "fp8") == 656 * 61
    assert cost.kv_bytes_per_token_per_layer(ds, "bf16") == (512 + 64) * 2
    assert cost.kv_bytes_per_token_per_layer(ds, "fp8", include_indexer=True) == 656 + 132
    # What the data path moves per token: the KV plus the DSA indexer key (128 fp8 + one f32 scale
    # on V3.2, 64 + 4 on DS 27B); Qwen has no indexer.
    assert cost.stored_kv_bytes_per_token(ds, "fp8") == 61 * (656 + 128 + 4) == 48068
    assert cost.stored_kv_bytes_per_token(get_spec("ds-27b"), "fp8") == 30 * (656 + 64 + 4)
    assert cost.stored_kv_bytes_per_token(get_spec("qwen2.5-32b"), "fp16") == 256 * 1024
    with pytest.raises(ConfigError, match="kv_dtype"):
        cost.kv_bytes_per_token(ds, "int3")


def test_deepseek_v32_total_params_is_671b():
    # Public model card: 671B parameters (MTP module excluded).
    assert abs(cost.total_params(get_spec("deepseek-v3.2")) / 1e9 - 671) < 3


def test_routed_active_params_closed_form():
    # DeepSeek-V3.2: 58 MoE layers (61, first 3 dense) x 8 activated experts x gate/up/down 7168 x 2048
    assert cost.routed_active_params(get_spec("deepseek-v3.2")) == 58 * 8 * 3 * 7168 * 2048
    assert cost.routed_active_params(get_spec("qwen2.5-32b")) == 0  # dense
    spec = get_spec("deepseek-v3.2")
    # the rest of a token's linear weights: attention projections and indexer, 3 dense MLPs, the
    # shared expert and router of 58 MoE layers, the LM head
    rest = cost.active_linear_params(spec) - cost.routed_active_params(spec)
    assert rest == (61 * cost._attn_linear_params(spec) + 3 * 3 * 7168 * 18432
                    + 58 * (3 * 7168 * 2048 + 7168 * 256) + 7168 * 129280)


def test_prefill_flops_closed_form_gqa():
    spec = get_spec("tiny-gqa")
    f = cost.prefill_flops(spec, 10, 3)
    # keys attended: 11 + 12 + 13 = 36; per key per layer 4*N*H
    assert f["attention"] == spec.n_layers * 4 * spec.n_heads * spec.head_dim * 36
    assert f["linear"] == 2 * cost.active_linear_params(spec) * 3
    assert f["indexer"] == 0


def test_dsa_topk_caps_attention_keys():
    spec = get_spec("deepseek-v3.2")
    per_key = spec.n_layers * (2 * 128 * 576 + 2 * 128 * 512)
    f = cost.prefill_flops(spec, 100_000, 4)
    assert f["attention"] == pytest.approx(per_key * 4 * 2048)
    # below top-k nothing is capped
    f = cost.prefill_flops(spec, 100, 2)
    assert f["attention"] == pytest.approx(per_key * (101 + 102))
    # crossing the cap inside the batch: keys 2047, 2048, 2048(capped from 2049)
    f = cost.prefill_flops(spec, 2046, 3)
    assert f["attention"] == pytest.approx(per_key * (2047 + 2048 + 2048))
    assert f["indexer"] == pytest.approx(spec.n_layers * 2 * 64 * 128 * (2047 + 2048 + 2049))


def test_vectorised_flops_match_scalar():
    spec = get_spec("ds-27b")
    ctx, app = np.array([0, 500, 5000]), np.array([10, 1, 429])
    vec = cost.prefill_flops(spec, ctx, app)["total"]
    for i in range(3):
        assert vec[i] == pytest.approx(float(cost.prefill_flops(spec, ctx[i], app[i])["total"]))


def test_decode_bytes_weights_plus_kv():
    spec = get_spec("qwen2.5-32b")
    b = cost.decode_bytes(spec, [1000, 3000], weight_dtype="bf16", kv_dtype="fp16")
    weights = (cost.active_linear_params(spec)) * 2
    assert b == pytest.approx(weights + 4000 * 256 * 1024)


def test_decode_bytes_under_dsa_read_top_k_kv_and_every_indexer_key():
    """DeepSeek-V3.2 (top-k 2048, FP8): per layer 656 B of KV for min(context, 2048) tokens and
    132 B of indexer key (128 fp8 + an f32 scale) for every token of the context."""
    spec = get_spec("deepseek-v3.2")
    ctx = [1000, 32768]
    b = cost.decode_bytes(spec, ctx, weight_dtype="fp8", kv_dtype="fp8")
    weights_only = cost.decode_bytes(spec, [0, 0], weight_dtype="fp8", kv_dtype="fp8")
    assert b - weights_only == pytest.approx(61 * 656 * (1000 + 2048) + 61 * 132 * (1000 + 32768))
