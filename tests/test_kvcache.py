"""Block layouts, packing and block keys (dualpath_jax.kvcache)."""

import hashlib

import ml_dtypes
import numpy as np
import pytest

from dualpath_jax.config import ConfigError
from dualpath_jax.kvcache import (block_keys, decode_tokens, encode_tokens, full_block_from_layer_blocks, gather_layer,
                                  layer_block, layout_for, pack_full_blocks, unpack_full_blocks)
from dualpath_jax.model import cost, get_spec, preset_names


# ---- sizes: closed-form values -----------------------------------------------------------------
def test_sizes_closed_form():
    gqa = layout_for(get_spec("tiny-gqa"), "f32")  # K=2, H=16, L=4
    assert gqa.bytes_per_token_per_layer == 2 * 2 * 16 * 4 == 256
    assert gqa.layer_block_shape == (1, 64, 256) and gqa.layer_block_bytes == 64 * 256
    assert gqa.full_block_shape == (4, 64, 256) and gqa.full_block_bytes == 4 * 64 * 256
    mla = layout_for(get_spec("tiny-mla"), "bf16")  # C=32, R=8
    assert mla.bytes_per_token_per_layer == (32 + 8) * 2
    # PAPER.md section 2.2: DS-V3.2 Layer Block 64 x 656 B ~ 41 KB, Full Block ~ 2.56 MB;
    # Qwen2.5-32B Layer Block 256 KiB, Full Block 16 MiB.
    ds = layout_for(get_spec("deepseek-v3.2"), "fp8")
    assert ds.bytes_per_token_per_layer == 656
    assert ds.layer_block_bytes == 64 * 656 and ds.full_block_bytes == 61 * 64 * 656
    qw = layout_for(get_spec("qwen2.5-32b"), "bf16")
    assert qw.layer_block_bytes == 256 * 1024 and qw.full_block_bytes == 16 * 1024 * 1024


@pytest.mark.parametrize("name", preset_names())
@pytest.mark.parametrize("kv_dtype", ["f32", "bf16", "fp16", "fp8"])
def test_sizes_agree_with_cost_model(name, kv_dtype):
    spec = get_spec(name)
    lay = layout_for(spec, kv_dtype)
    assert lay.bytes_per_token_per_layer == cost.kv_bytes_per_token_per_layer(spec, kv_dtype)
    assert lay.bytes_per_token == cost.kv_bytes_per_token(spec, kv_dtype)


def test_bad_inputs_name_the_field():
    with pytest.raises(ConfigError, match="kv_dtype"):
        layout_for(get_spec("tiny-gqa"), "int4")
    with pytest.raises(ConfigError, match="block_tokens"):
        layout_for(get_spec("tiny-gqa"), block_tokens=0)
    lay = layout_for(get_spec("tiny-gqa"))
    with pytest.raises(ValueError, match="kv"):
        encode_tokens(lay, (np.zeros((3, 2, 8), np.float32), np.zeros((3, 2, 8), np.float32)))
    with pytest.raises(ValueError, match="multiple of block_tokens"):
        pack_full_blocks(lay, [(np.zeros((65, 2, 16), np.float32),) * 2] * 4)
    with pytest.raises(ValueError, match="layers"):
        pack_full_blocks(lay, [(np.zeros((64, 2, 16), np.float32),) * 2] * 3)


# ---- packing ----------------------------------------------------------------------------------
def _random_kvs(spec, num_tokens, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if spec.is_mla:
        shapes = [(num_tokens, spec.kv_lora_rank), (num_tokens, spec.qk_rope_head_dim)]
    else:
        shapes = [(num_tokens, spec.n_kv_heads, spec.head_dim)] * 2
    return [tuple(rng.standard_normal(s).astype(dtype) for s in shapes) for _ in range(spec.n_layers)]


def test_token_record_byte_order_by_hand():
    """A token's record is k's bytes then v's bytes (row-major), nothing else."""
    lay = layout_for(get_spec("tiny-gqa"), "f32")
    k = np.arange(3 * 2 * 16, dtype=np.float32).reshape(3, 2, 16)
    v = -k - 0.5
    raw = encode_tokens(lay, (k, v))
    assert raw.dtype == np.uint8 and raw.shape == (3, 256)
    for t in range(3):
        assert raw[t].tobytes() == k[t].tobytes() + v[t].tobytes()


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-mla"])
@pytest.mark.parametrize("kv_dtype,np_dtype", [("f32", np.float32), ("bf16", ml_dtypes.bfloat16),
                                               ("fp16", np.float16)])
def test_pack_unpack_round_trip_exact(name, kv_dtype, np_dtype):
    spec = get_spec(name)
    lay = layout_for(spec, kv_dtype)
    kvs = _random_kvs(spec, 3 * 64, np_dtype)
    blocks = pack_full_blocks(lay, kvs)
    assert blocks.shape == (3, *lay.full_block_shape) and blocks.dtype == np.uint8
    back = unpack_full_blocks(lay, blocks)
    for (a, b), (a2, b2) in zip(kvs, back):
        assert a2.dtype == np_dtype and np.array_equal(a, a2) and np.array_equal(b, b2)


def test_layer_blocks_are_slices_of_full_blocks():
    spec = get_spec("tiny-gqa")
    lay = layout_for(spec)
    kvs = _random_kvs(spec, 2 * 64, np.float32)
    blocks = pack_full_blocks(lay, kvs)
    for p in range(2):
        lbs = [layer_block(blocks[p], layer) for layer in range(spec.n_layers)]
        assert all(lb.shape == lay.layer_block_shape for lb in lbs)
        assert np.array_equal(full_block_from_layer_blocks(lbs), blocks[p])
        for layer in range(spec.n_layers):  # a Layer Block decodes to that layer's 64 tokens
            k, v = decode_tokens(lay, lbs[layer])
            assert np.array_equal(k, kvs[layer][0][p * 64:(p + 1) * 64])
            assert np.array_equal(v, kvs[layer][1][p * 64:(p + 1) * 64])


def test_gather_layer_over_a_subset_of_blocks():
    spec = get_spec("tiny-mla")
    lay = layout_for(spec)
    kvs = _random_kvs(spec, 4 * 64, np.float32)
    blocks = list(pack_full_blocks(lay, kvs))
    latent, rope = gather_layer(lay, blocks[1:3], 2)
    assert latent.flags["C_CONTIGUOUS"] and not np.shares_memory(latent, blocks[1])
    assert np.array_equal(latent, kvs[2][0][64:192]) and np.array_equal(rope, kvs[2][1][64:192])
    empty = gather_layer(lay, [], 0)
    assert empty[0].shape == (0, spec.kv_lora_rank) and empty[1].shape == (0, spec.qk_rope_head_dim)


def test_fp8_mla_layout_quantization_error():
    """FlashMLA FP8: latent in e4m3 with one f32 scale per 128 values; rope key in bf16."""
    spec = get_spec("tiny-mla").replace(name="mla-c256", kv_lora_rank=256)
    lay = layout_for(spec, "fp8")
    assert [f.name for f in lay.fields] == ["latent", "latent_scale", "k_rope"]
    assert lay.bytes_per_token_per_layer == 256 + 4 * 2 + 2 * spec.qk_rope_head_dim
    kvs = _random_kvs(spec, 64, np.float32, seed=3)
    (latent, rope), = unpack_full_blocks(lay, pack_full_blocks(lay, kvs))[:1]
    x = kvs[0][0]
    # Independent bound: e4m3 has 3 mantissa bits -> relative rounding error <= 2**-4 of the
    # value, plus the subnormal step (2**-9 of the group scale amax/448) near zero.
    amax = np.abs(x.reshape(64, 2, 128)).max(-1).repeat(128, axis=-1)
    bound = np.abs(x) * 2.0**-4 + amax / 448 * 2.0**-9 + 1e-12
    assert np.all(np.abs(latent - x) <= bound)
    assert np.array_equal(rope, kvs[0][1].astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("amax", [1e-45, 1e-44, 1e-43, 3e-42, 1e-40, 1e-38, 1e-36, 1e-30])
def test_fp8_mla_layout_keeps_tiny_latents_finite(amax):
    """A group of tiny latents (all below float32's normal range) decodes to finite values within
    e4m3's bound of a scale no smaller than float32's smallest normal number, never NaN."""
    spec = get_spec("tiny-mla")
    lay = layout_for(spec, "fp8")
    x = np.zeros((2, spec.kv_lora_rank), np.float32)
    x[0] = np.float32(amax) * np.linspace(-1, 1, spec.kv_lora_rank, dtype=np.float32)
    x[1] = 0.5
    rope = np.zeros((2, spec.qk_rope_head_dim), np.float32)
    latent, _ = decode_tokens(lay, encode_tokens(lay, (x, rope)))
    assert np.isfinite(latent).all()
    scale = max(float(np.abs(x[0]).max()) / 448, float(np.finfo(np.float32).tiny))
    assert np.all(np.abs(latent[0] - x[0]) <= np.abs(x[0]) * 2.0**-4 + scale * 2.0**-9)
    assert np.array_equal(latent[1], x[1])


def test_fp8_gqa_layout_saturates_instead_of_making_nan():
    """float8_e4m3fn has no infinity: a plain cast of |x| >= 464 gives NaN, which attention would
    spread to every logit. The GQA FP8 layout saturates at the largest finite value, 448."""
    lay = layout_for(get_spec("tiny-gqa"), "fp8")
    shape = (3, *lay.fields[0].shape)
    k = np.zeros(shape, np.float32)
    k[0, 0, :3] = [500.0, -1e6, 447.9]
    v = np.full(shape, 2.0**-3, np.float32)  # exact in e4m3
    k2, v2 = decode_tokens(lay, encode_tokens(lay, (k, v)))
    assert np.isfinite(k2).all() and np.isfinite(v2).all()
    assert list(k2[0, 0, :2]) == [448.0, -448.0] and abs(k2[0, 0, 2] - 447.9) <= 447.9 * 2.0**-4
    assert np.array_equal(v2, v) and np.array_equal(k2[1:], k[1:])


# ---- keys ---------------------------------------------------------------------------------------
def test_block_keys_chain_by_hand():
    lay = layout_for(get_spec("tiny-gqa"))
    tokens = np.arange(200, dtype=np.int32)
    keys = block_keys(lay, tokens)
    assert len(keys) == 3  # the trailing 8 tokens form no block
    parent = bytes.fromhex(lay.scope)
    for i, key in enumerate(keys):
        h = hashlib.blake2b(digest_size=16, person=b"dpkv-chain")
        h.update(parent + tokens[i * 64:(i + 1) * 64].astype("<i4").tobytes())
        assert key == h.hexdigest()
        parent = bytes.fromhex(key)
    assert block_keys(lay, tokens, max_blocks=2) == keys[:2]
    assert block_keys(lay, []) == [] and block_keys(lay, tokens[:63]) == []  # no complete block
    with pytest.raises(ValueError, match="tokens: expected a 1-D integer array"):
        block_keys(lay, [1.5, 2.0])


def test_block_key_depends_on_every_earlier_token():
    lay = layout_for(get_spec("tiny-gqa"))
    base = np.random.default_rng(0).integers(0, 512, 256)
    keys = block_keys(lay, base)
    for pos, first_changed in [(0, 0), (63, 0), (64, 1), (200, 3)]:
        other = base.copy()
        other[pos] += 1
        k2 = block_keys(lay, other)
        assert k2[:first_changed] == keys[:first_changed]
        assert all(a != b for a, b in zip(k2[first_changed:], keys[first_changed:]))


def test_block_keys_are_scoped_per_model_and_layout():
    tokens = np.zeros(64, np.int32)
    spec = get_spec("tiny-gqa")
    ks = {block_keys(layout_for(spec, "f32"), tokens)[0], block_keys(layout_for(spec, "bf16"), tokens)[0],
          block_keys(layout_for(spec, "f32", namespace="w2"), tokens)[0],
          block_keys(layout_for(get_spec("tiny-mla"), "f32"), tokens)[0]}
    assert len(ks) == 4
    with pytest.raises(ValueError, match="tokens"):
        block_keys(layout_for(spec), np.array([-1] * 64))


def test_scope_by_hand_covers_the_whole_spec_and_the_namespace():
    """Reference derivation of the documented scope rule (kvcache/layout.py module docstring)."""
    import dataclasses
    import json

    spec = get_spec("tiny-mla")
    lay = layout_for(spec, "fp8", block_tokens=32, namespace="w-abc")
    def whole_floats_as_ints(v):
        if isinstance(v, dict):
            return {k: whole_floats_as_ints(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [whole_floats_as_ints(x) for x in v]
        return int(v) if isinstance(v, float) and v == int(v) else v

    spec_json = json.dumps(whole_floats_as_ints(dataclasses.asdict(spec)), sort_keys=True, separators=(",", ":"))
    digest = hashlib.blake2b(spec_json.encode(), digest_size=16, person=b"dpkv-spec").hexdigest()
    fields = "latent:(32,):float8_e4m3fn;latent_scale:(1,):float32;k_rope:(8,):bfloat16"
    desc = f"tiny-mla|mla|L={spec.n_layers}|Z=32|fp8|{fields}|ns=w-abc|spec={digest}"
    assert lay.spec_digest == digest
    assert lay.scope == hashlib.blake2b(desc.encode(), digest_size=16, person=b"dpkv-scope").hexdigest()


def test_scope_changes_with_any_spec_field_that_changes_the_kv():
    """A spec that keeps its name, layer count and KV field shapes but changes RoPE, the hidden
    size, the norm epsilon or RoPE scaling computes other KV: it must get other keys."""
    from dualpath_jax.model import RopeScaling

    spec = get_spec("tiny-gqa")
    variants = [spec, spec.replace(rope_theta=spec.rope_theta * 2), spec.replace(d_model=2 * spec.d_model),
                spec.replace(rms_norm_eps=1e-5), spec.replace(qkv_bias=not spec.qkv_bias),
                spec.replace(rope_scaling=RopeScaling(kind="linear", factor=2.0))]
    layouts = [layout_for(s) for s in variants]
    assert all(lay.fields == layouts[0].fields and lay.n_layers == layouts[0].n_layers for lay in layouts)
    assert len({lay.scope for lay in layouts}) == len(variants)
    tokens = np.arange(64, dtype=np.int32)
    assert len({block_keys(lay, tokens)[0] for lay in layouts}) == len(variants)
    # equal specs share a scope, whether a number was given as an int or a float
    assert layout_for(spec.replace(rope_theta=int(spec.rope_theta))).scope == layouts[0].scope
    assert layout_for(spec.replace(rope_scaling=RopeScaling(kind="linear", factor=2))).scope == layouts[5].scope
    # the same spec built twice (a fresh object) keeps its scope: caches survive restarts
    again = get_spec("tiny-gqa").replace(rope_theta=spec.rope_theta * 2)
    assert layout_for(again).scope == layouts[1].scope
