"""On-storage record of one Full Block: a checksummed header followed by the block's bytes.

Layout (little-endian)::

    offset  size   field
    0       8      magic b"DPKVBLK1"
    8       4      header_bytes (u32)       -- payload starts here; a multiple of 64
    12      4      n_layers L (u32)
    16      4      block_tokens Z (u32)
    20      4      bytes_per_token_per_layer Bt (u32)
    24      8      payload_bytes = L*Z*Bt (u64)
    32      16     layout scope (BLAKE2b-128, see BlockLayout.scope)
    48      16     block key (BLAKE2b-128)
    64      4*L    CRC-32 of each Layer Block (u32 each)
    64+4L   4      CRC-32 of bytes [0, 64+4L)
    ...            zero padding up to header_bytes
    header_bytes   payload: the Full Block [L, Z, Bt], layer-major

One CRC per Layer Block lets a reader that asks for a single layer (a byte-range read of
``header + layer payload``) verify exactly what it read; a full read verifies all L. The header
CRC guards the metadata (a flipped byte anywhere in the record is caught). CRC-32 (zlib) is the
checksum of gzip/PNG; it detects every single-byte error and all burst errors up to 32 bits.

Failures are values, never bare ``False``: :class:`BlockFailure` carries a :class:`FailureCause`.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import zlib

import numpy as np

from dualpath_jax.kvcache import BlockLayout

__all__ = ["MAGIC", "FailureCause", "BlockFailure", "header_bytes", "encode_record", "parse_header",
           "verify_full", "verify_layer", "RecordHeader"]

MAGIC = b"DPKVBLK1"
_FIXED = struct.Struct("<8sIIIIQ16s16s")  # 64 bytes
_ALIGN = 64


class FailureCause(str, enum.Enum):
    """Why a block could not be delivered."""

    MISSING = "missing"                    # no such key
    CHECKSUM_MISMATCH = "checksum_mismatch"  # header or layer CRC does not match the bytes
    TRUNCATED = "truncated"                # fewer bytes than the header promises
    BAD_HEADER = "bad_header"              # wrong magic / layout / key / length
    UNREADABLE = "unreadable"              # backend or path error on a read/lookup (permissions, not a directory, I/O)
    UNWRITABLE = "unwritable"              # backend or path error on a write (disk full, permissions, not a directory)
    TIMEOUT = "timeout"                    # the operation did not finish within its deadline


@dataclasses.dataclass(frozen=True)
class BlockFailure:
    """A typed failure: which block, why, and a human-readable detail."""

    key: str
    cause: FailureCause
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class RecordHeader:
    header_bytes: int
    n_layers: int
    block_tokens: int
    bytes_per_token_per_layer: int
    payload_bytes: int
    scope: str
    key: str
    layer_crcs: tuple[int, ...]


def header_bytes(layout: BlockLayout) -> int:
    """Size of the header for ``layout``: 64 + 4L + 4, rounded up to 64 bytes."""
    raw = _FIXED.size + 4 * layout.n_layers + 4
    return -(-raw // _ALIGN) * _ALIGN


def _crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_record(layout: BlockLayout, key: str, block: np.ndarray) -> bytes:
    """Serialize a Full Block ``uint8[L, Z, Bt]`` with its header.

    Raises:
      ValueError: ``block`` does not have the layout's Full Block shape or dtype.
    """
    block = np.asarray(block)
    if block.dtype != np.uint8 or block.shape != layout.full_block_shape:
        raise ValueError(f"block: expected uint8{list(layout.full_block_shape)}, got {block.dtype}{list(block.shape)}")
    block = np.ascontiguousarray(block)
    hb = header_bytes(layout)
    crcs = [_crc(block[layer]) for layer in range(layout.n_layers)]
    fixed = _FIXED.pack(MAGIC, hb, layout.n_layers, layout.block_tokens, layout.bytes_per_token_per_layer,
                        block.nbytes, bytes.fromhex(layout.scope), bytes.fromhex(key))
    head = fixed + struct.pack(f"<{layout.n_layers}I", *crcs)
    head += struct.pack("<I", _crc(head))
    return head + b"\0" * (hb - len(head)) + block.tobytes()


def parse_header(layout: BlockLayout, key: str, data) -> RecordHeader | BlockFailure:
    """Parse and check the header at the start of ``data`` (bytes-like).

    Returns a :class:`RecordHeader`, or a :class:`BlockFailure` with cause ``TRUNCATED`` (too
    short for a header), ``BAD_HEADER`` (magic/layout/key mismatch) or ``CHECKSUM_MISMATCH``.
    """
    hb = header_bytes(layout)
    mv = memoryview(data)
    if len(mv) < hb:
        if len(mv) >= len(MAGIC) and bytes(mv[:len(MAGIC)]) != MAGIC:
            return BlockFailure(key, FailureCause.BAD_HEADER, "bad magic")
        return BlockFailure(key, FailureCause.TRUNCATED, f"{len(mv)} bytes, header needs {hb}")
    magic, hb_rec, n_layers, z, bt, payload, scope, rkey = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        return BlockFailure(key, FailureCause.BAD_HEADER, "bad magic")
    n_crc = _FIXED.size + 4 * layout.n_layers
    if n_layers != layout.n_layers or hb_rec != hb:
        crc_ok = False
    else:
        (stored,) = struct.unpack_from("<I", mv, n_crc)
        crc_ok = _crc(mv[:n_crc]) == stored
    if not crc_ok:
        return BlockFailure(key, FailureCause.CHECKSUM_MISMATCH, "header CRC mismatch")
    expect = (layout.block_tokens, layout.bytes_per_token_per_layer, layout.full_block_bytes, layout.scope, key)
    got = (z, bt, payload, scope.hex(), rkey.hex())
    if got != expect:
        return BlockFailure(key, FailureCause.BAD_HEADER,
                            f"header (Z, Bt, payload, scope, key) = {got}, expected {expect}")
    crcs = struct.unpack_from(f"<{n_layers}I", mv, _FIXED.size)
    return RecordHeader(hb, n_layers, z, bt, payload, scope.hex(), rkey.hex(), tuple(crcs))


def verify_full(layout: BlockLayout, key: str, data: bytes) -> np.ndarray | BlockFailure:
    """Check a whole record and return its Full Block ``uint8[L, Z, Bt]`` (a read-only view of ``data``).

    Returns a :class:`BlockFailure` (``TRUNCATED``, ``BAD_HEADER``, ``CHECKSUM_MISMATCH``) on failure.
    """
    head = parse_header(layout, key, data)
    if isinstance(head, BlockFailure):
        return head
    total = head.header_bytes + head.payload_bytes
    if len(data) < total:
        return BlockFailure(key, FailureCause.TRUNCATED, f"{len(data)} bytes, record needs {total}")
    if len(data) > total:
        return BlockFailure(key, FailureCause.BAD_HEADER, f"{len(data)} bytes, record is {total}")
    block = np.frombuffer(data, np.uint8, count=head.payload_bytes, offset=head.header_bytes)
    block = block.reshape(layout.full_block_shape)
    for layer, crc in enumerate(head.layer_crcs):
        if _crc(block[layer]) != crc:
            return BlockFailure(key, FailureCause.CHECKSUM_MISMATCH, f"layer {layer} CRC mismatch")
    return block


def verify_layer(layout: BlockLayout, key: str, head: RecordHeader, layer: int,
                 data: bytes) -> np.ndarray | BlockFailure:
    """Check one Layer Block's bytes against the header's CRC; returns ``uint8[1, Z, Bt]``."""
    if len(data) < layout.layer_block_bytes:
        return BlockFailure(key, FailureCause.TRUNCATED,
                            f"layer {layer}: {len(data)} of {layout.layer_block_bytes} bytes")
    if _crc(data) != head.layer_crcs[layer]:
        return BlockFailure(key, FailureCause.CHECKSUM_MISMATCH, f"layer {layer} CRC mismatch")
    return np.frombuffer(data, np.uint8).reshape(layout.layer_block_shape)
