"""Block layouts of the KV cache: Layer Blocks ``[1, Z, Bt]`` and Full Blocks ``[L, Z, Bt]``.

PAPER.md section 2.2 (paper §4.1 and appendix A.5): a **Layer Block** is a byte tensor
``[1, tokens, bytes]`` holding one layer's KV of ``block_tokens`` (Z) tokens, ``bytes`` being the
cache bytes per layer per token (Bt); a **Full Block** ``[layer, tokens, bytes]`` is the
concatenation of the L Layer Blocks of the same tokens, so a Full Block sliced along its first
axis *is* a list of Layer Blocks and no layout conversion is ever needed. All storage I/O uses
Full Blocks; layer-wise loading moves Layer Blocks.

Per token and layer, the Bt bytes are the concatenation of the layout's fields (``KVField``) in
order, each field's values stored row-major in the field's dtype:

* GQA: ``k [K, H]`` then ``v [K, H]`` (post-RoPE keys; the model's ``LayerKV``).
* MLA: ``latent [C]`` then ``k_rope [R]``; with ``kv_dtype="fp8"`` FlashMLA's layout
  (PAPER.md section 1.2): ``latent`` in float8_e4m3fn, one float32 scale per 128 latent values
  (``latent_scale``), ``k_rope`` in bfloat16 -- 656 B per token per layer for C=512, R=64.

This module is the one place byte sizes of KV blocks come from (``dualpath_jax.shapes``).

**Scope.** Block keys and storage paths live under :attr:`BlockLayout.scope`, a digest of
everything that decides what a block's bytes mean: the byte layout (L, Z, kv dtype, fields), the
whole :class:`~dualpath_jax.model.spec.ModelSpec` (``spec_digest``: every field, so a spec that
keeps its name but changes e.g. ``rope_theta`` or ``d_model`` gets other keys) and the
``namespace``, which the engine sets to the weights fingerprint
(:func:`dualpath_jax.model.fingerprint.weights_fingerprint`; the engine's
:func:`dualpath_jax.engine.prefill.store_layout` builds such a layout), so two parameter sets of one
architecture never read each other's KV.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import ml_dtypes
import numpy as np

from dualpath_jax.config import ConfigError, check_in, check_positive
from dualpath_jax.model.spec import ModelSpec
from dualpath_jax.shapes import BLOCK_TOKENS

__all__ = ["KV_DTYPES", "FP8_SCALE_GROUP", "KVField", "BlockLayout", "layout_for", "spec_digest"]

KV_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "fp16": np.dtype(np.float16),
    "fp8": np.dtype(ml_dtypes.float8_e4m3fn),
}
"""Storage dtypes of cached KV by name (names as in :mod:`dualpath_jax.model.cost`)."""

FP8_SCALE_GROUP = 128
"""Latent values sharing one float32 scale in FlashMLA's FP8 KV layout."""


@dataclasses.dataclass(frozen=True)
class KVField:
    """One named part of a token's per-layer KV record.

    Attributes:
      name: field name (``"k"``, ``"v"``, ``"latent"``, ``"latent_scale"``, ``"k_rope"``).
      shape: per-token shape, e.g. ``(K, H)`` or ``(C,)``.
      dtype: numpy dtype name of the stored values.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def values_per_token(self) -> int:
        return math.prod(self.shape)

    @property
    def bytes_per_token(self) -> int:
        return self.values_per_token * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Byte layout of one model's Layer and Full Blocks.

    Glossary letters: L = ``n_layers``, Z = ``block_tokens``, Bt = ``bytes_per_token_per_layer``.

    Attributes:
      model_name, attention: copied from the ModelSpec (part of the scope).
      n_layers: L.
      block_tokens: Z, tokens per block (64 by default, PAPER.md section 2.2).
      kv_dtype: storage dtype name, one of :data:`KV_DTYPES`.
      fields: per-token fields, in byte order.
      namespace: scope qualifier naming the weights: the engine puts the parameters' fingerprint
        here (:func:`dualpath_jax.model.fingerprint.weights_fingerprint`), so caches of two
        parameter sets of one architecture never share keys. ``""`` names no weights.
      spec_digest: :func:`spec_digest` of the whole ModelSpec (set by :func:`layout_for`), so two
        specs that differ in any field never share keys.

    Raises:
      ConfigError: naming the field, for non-positive sizes, an unknown ``kv_dtype`` or an
        empty ``fields``.
    """

    model_name: str
    attention: str
    n_layers: int
    block_tokens: int
    kv_dtype: str
    fields: tuple[KVField, ...]
    namespace: str = ""
    spec_digest: str = ""

    def __post_init__(self):
        check_positive("layout.n_layers", self.n_layers, integer=True)
        check_positive("layout.block_tokens", self.block_tokens, integer=True)
        check_in("layout.kv_dtype", self.kv_dtype, tuple(KV_DTYPES))
        if not self.fields:
            raise ConfigError("layout.fields", "must name at least one field")
        for f in self.fields:
            for d in f.shape:
                check_positive(f"layout.fields.{f.name}.shape", d, integer=True)

    # ---- sizes (the only source of KV block byte sizes) --------------------------------------
    @property
    def bytes_per_token_per_layer(self) -> int:
        """Bt: bytes of one token's KV in one layer."""
        return sum(f.bytes_per_token for f in self.fields)

    @property
    def bytes_per_token(self) -> int:
        """Bytes of one token's KV over all L layers."""
        return self.n_layers * self.bytes_per_token_per_layer

    @property
    def layer_block_bytes(self) -> int:
        """Bytes of one Layer Block: Z * Bt."""
        return self.block_tokens * self.bytes_per_token_per_layer

    @property
    def full_block_bytes(self) -> int:
        """Bytes of one Full Block: L * Z * Bt."""
        return self.n_layers * self.layer_block_bytes

    @property
    def layer_block_shape(self) -> tuple[int, int, int]:
        """``(1, Z, Bt)``."""
        return (1, self.block_tokens, self.bytes_per_token_per_layer)

    @property
    def full_block_shape(self) -> tuple[int, int, int]:
        """``(L, Z, Bt)``."""
        return (self.n_layers, self.block_tokens, self.bytes_per_token_per_layer)

    @property
    def field_offsets(self) -> tuple[int, ...]:
        """Byte offset of each field inside a token's Bt-byte record."""
        offsets, acc = [], 0
        for f in self.fields:
            offsets.append(acc)
            acc += f.bytes_per_token
        return tuple(offsets)

    @property
    def is_fp8_scaled(self) -> bool:
        """True for FlashMLA's FP8 latent layout (latent values quantized with group scales)."""
        return any(f.name == "latent_scale" for f in self.fields)

    def kv_bytes(self, num_tokens: int) -> int:
        """Bytes of ``num_tokens`` tokens' KV over all layers."""
        return int(num_tokens) * self.bytes_per_token

    @property
    def scope(self) -> str:
        """Hex digest (32 chars) identifying model spec + weights + layout; block keys and storage
        paths live under it: BLAKE2b-128 (person ``dpkv-scope``) of ``"<model_name>|<attention>|
        L=<L>|Z=<Z>|<kv_dtype>|<name>:<shape>:<dtype>;...|ns=<namespace>|spec=<spec_digest>"``
        (no line breaks; fields joined by ``;``, shapes as Python tuples)."""
        h = hashlib.blake2b(digest_size=16, person=b"dpkv-scope")
        desc = (f"{self.model_name}|{self.attention}|L={self.n_layers}|Z={self.block_tokens}|"
                f"{self.kv_dtype}|" + ";".join(f"{f.name}:{f.shape}:{f.dtype}" for f in self.fields)
                + f"|ns={self.namespace}|spec={self.spec_digest}")
        h.update(desc.encode())
        return h.hexdigest()


def _canonical(value):
    """``value`` with every whole float written as an int (``10000.0`` -> ``10000``), in lists and
    dicts too, so that specs that compare equal (``rope_theta=10000`` and ``10000.0``) digest equal."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def spec_digest(spec: ModelSpec) -> str:
    """Hex digest (32 chars) of every field of ``spec``: BLAKE2b-128 (person ``dpkv-spec``) of its
    fields (nested ``rope_scaling`` included) as canonical JSON (sorted keys, no spaces, whole
    floats as ints: two specs that compare equal have one digest)."""
    desc = json.dumps(_canonical(dataclasses.asdict(spec)), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.blake2b(desc.encode(), digest_size=16, person=b"dpkv-spec").hexdigest()


def layout_for(spec: ModelSpec, kv_dtype: str = "f32", *, block_tokens: int = BLOCK_TOKENS,
               namespace: str = "") -> BlockLayout:
    """The block layout of ``spec``'s KV cache stored as ``kv_dtype``.

    Args:
      spec: model spec; GQA gives fields ``k, v [K, H]``, MLA ``latent [C], k_rope [R]``.
      kv_dtype: ``"f32" | "bf16" | "fp16" | "fp8"``. For MLA, ``"fp8"`` is FlashMLA's layout
        (fp8 latent + f32 scale per 128 values + bf16 rope key; PAPER.md section 1.2); for GQA
        it is a float8_e4m3fn cast of K and V that saturates at +-448 (e4m3fn has no infinity;
        no scale, so values beyond its range are clipped).
      block_tokens: Z.
      namespace: the weights fingerprint (see :class:`BlockLayout`); a layout for a store should
        come from :func:`dualpath_jax.engine.prefill.store_layout`, which sets it.

    Raises:
      ConfigError: ``kv_dtype`` unknown or ``block_tokens`` not positive.
    """
    check_in("kv_dtype", kv_dtype, tuple(KV_DTYPES))
    check_positive("block_tokens", block_tokens, integer=True)
    name = KV_DTYPES[kv_dtype].name
    if spec.is_mla:
        c, r = spec.kv_lora_rank, spec.qk_rope_head_dim
        if kv_dtype == "fp8":
            fields = (KVField("latent", (c,), name),
                      KVField("latent_scale", (-(-c // FP8_SCALE_GROUP),), "float32"),
                      KVField("k_rope", (r,), KV_DTYPES["bf16"].name))
        else:
            fields = (KVField("latent", (c,), name), KVField("k_rope", (r,), name))
    else:
        shape = (spec.n_kv_heads, spec.head_dim)
        fields = (KVField("k", shape, name), KVField("v", shape, name))
    return BlockLayout(model_name=spec.name, attention=spec.attention, n_layers=spec.n_layers,
                       block_tokens=block_tokens, kv_dtype=kv_dtype, fields=fields, namespace=namespace,
                       spec_digest=spec_digest(spec))
