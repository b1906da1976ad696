"""Hardware catalog: datasheet numbers of the GPUs (and their usual nodes) the simulator can model.

Every figure is per GPU and **dense**: NVIDIA's datasheets print Tensor Core peaks "with
sparsity" (2:4 structured sparsity); the dense peak is half of that figure. FLOP/s count a
multiply-add as 2 FLOPs, as :mod:`dualpath_jax.model.cost` does.

=====  ===============  ====  =========  ====  ============  ==========  ========  ================
key    GPU              FP8   BF16/FP16  FP32  HBM           HBM B/W     NVLink    NIC per GPU
=====  ===============  ====  =========  ====  ============  ==========  ========  ================
h800   H800 SXM5        1979  989.5      67    80 GB HBM3    3.35 TB/s   400 GB/s  400 Gb/s (paper)
h100   H100 SXM5        1979  989.5      67    80 GB HBM3    3.35 TB/s   900 GB/s  400 Gb/s CX-7
h200   H200 SXM         1979  989.5      67    141 GB HBM3e  4.8 TB/s    900 GB/s  400 Gb/s CX-7
b200   B200 (HGX B200)  4500  2250       75    180 GB HBM3e  8 TB/s      1.8 TB/s  400 Gb/s CX-7
a100   A100 SXM4 80GB   --    312        19.5  80 GB HBM2e   2.039 TB/s  600 GB/s  200 Gb/s CX-6
=====  ===============  ====  =========  ====  ============  ==========  ========  ================

FLOP/s columns in dense TFLOP/s; B200 also has FP4 at 9000. FP32 is the non-Tensor-Core peak
(no sparsity). NVLink is the total bidirectional bandwidth per GPU (the datasheets' figure; each
direction carries half); the simulator does not model NVLink, it is listed for reference. NIC:
one RDMA NIC per GPU on the reference 8-GPU node (CX = ConnectX), each direction.

Sources (TF = TFLOP/s; ``*`` = the datasheet's figure with sparsity, halved for the table):

* **H800**: *NVIDIA H800 Tensor Core GPU datasheet* (H800 SXM5: FP8 3,958* / BF16 1,979* /
  FP16 1,979* / FP32 67 TFLOPS, 80 GB at 3.35 TB/s, NVLink 400 GB/s). PAPER.md section 9 quotes
  the same H800 numbers (~1979 FP8, ~989 BF16 dense, 80 GB HBM3 at ~3.35 TB/s). The NIC is the
  paper's testbed (PAPER.md 6.1 / paper section 7.2: eight 400 Gbps RDMA CNICs and one 400 Gbps
  SNIC per node of 8 Hopper GPUs).
* **H100**: *NVIDIA H100 Tensor Core GPU datasheet*, H100 SXM column
  (https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet): FP8 3,958* /
  BF16 1,979* / FP16 1,979* / FP32 67 TFLOPS, 80 GB at 3.35 TB/s, NVLink 900 GB/s. NIC: *NVIDIA
  DGX H100 datasheet* (8x single-port ConnectX-7, 400 Gb/s InfiniBand/Ethernet, one per GPU;
  storage on separate ConnectX-7 400 Gb/s ports).
* **H200**: *NVIDIA H200 Tensor Core GPU datasheet*, H200 SXM column
  (https://www.nvidia.com/en-us/data-center/h200/): same compute as H100 SXM, 141 GB HBM3e at
  4.8 TB/s, NVLink 900 GB/s. NIC: *NVIDIA DGX H200 datasheet* (8x ConnectX-7 400 Gb/s).
* **B200**: *NVIDIA HGX B200* specifications (https://www.nvidia.com/en-us/data-center/hgx/), per
  8-GPU board: FP4 144 PF*, FP8 72 PF*, FP16/BF16 36 PF*, FP32 600 TF, 1.4 TB HBM3e at 64 TB/s,
  NVLink 1.8 TB/s per GPU; per GPU: FP4 9000, FP8 4500, BF16 2250, FP32 75 TF, 180 GB at 8 TB/s
  (*NVIDIA DGX B200 datasheet*: 1,440 GB, 64 TB/s for 8 GPUs). NIC: the DGX B200 datasheet lists
  8x single-port ConnectX-7 at 400 Gb/s (one per GPU), which is the default here; HGX B200 nodes
  built with ConnectX-8 SuperNICs run 800 Gb/s per GPU: pass ``cnic_bytes_per_s=100e9`` (and
  ``snic_bytes_per_s``) to :func:`hardware_for` for those.
* **A100**: *NVIDIA A100 Tensor Core GPU datasheet*, A100 80GB SXM column
  (nvidia.com, ``nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf``): BF16 624* / FP16 624* /
  FP32 19.5 TFLOPS, no FP8, 80 GB HBM2e at 2,039 GB/s, NVLink 600 GB/s. NIC: *NVIDIA DGX A100
  datasheet* (8x single-port ConnectX-6 VPI, 200 Gb/s HDR InfiniBand, one per GPU; storage on
  ConnectX-6 200 Gb/s ports).

Host DRAM bandwidth and the PE/DE buffer size are CPU and deployment choices, not GPU ones:
:func:`hardware_for` keeps :class:`~dualpath_jax.sim.hardware.HardwareConfig`'s defaults (the
paper's M = 500 GB/s, 80 GB buffer per node) unless overridden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dualpath_jax.config import ConfigError

if TYPE_CHECKING:
    from dualpath_jax.sim.hardware import HardwareConfig

__all__ = ["GPUSpec", "GPUS", "DTYPES", "canonical_dtype", "gpu_spec", "peak_flops", "compute_peak", "hardware_for"]


@dataclasses.dataclass(frozen=True)
class GPUSpec:
    """One GPU's datasheet numbers and the NIC rate of its usual 8-GPU node.

    Attributes:
      name: the product as the datasheet names it.
      peak_flops: dense peak FLOP/s per GPU by compute dtype (``fp4``, ``fp8``, ``bf16``, ``fp16``,
        ``fp32``); a dtype missing from it has no hardware support (A100: no FP8).
      hbm_bytes: HBM per GPU (bytes, 1 GB = 1e9 B).
      hbm_bytes_per_s: HBM bandwidth per GPU (bytes/s).
      nvlink_bytes_per_s: NVLink bandwidth per GPU, total of both directions (bytes/s).
      nic_bytes_per_s: one RDMA NIC per GPU on the reference node, each direction (bytes/s); the
        node's storage NIC is taken at the same rate.
      source: where the numbers come from (see the module docstring).
    """

    name: str
    peak_flops: Mapping[str, float]
    hbm_bytes: float
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float
    nic_bytes_per_s: float
    source: str


def _gbps(gbit_per_s: float) -> float:
    return gbit_per_s * 1e9 / 8


_HOPPER_PEAKS = MappingProxyType({"fp8": 3958e12 / 2, "bf16": 1979e12 / 2, "fp16": 1979e12 / 2, "fp32": 67e12})

GPUS: Mapping[str, GPUSpec] = MappingProxyType({
    "h800": GPUSpec("NVIDIA H800 SXM5", _HOPPER_PEAKS, 80e9, 3.35e12, 400e9, _gbps(400),
                    "NVIDIA H800 Tensor Core GPU datasheet; NIC: paper section 7.2"),
    "h100": GPUSpec("NVIDIA H100 SXM5", _HOPPER_PEAKS, 80e9, 3.35e12, 900e9, _gbps(400),
                    "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM); NIC: DGX H100 datasheet"),
    "h200": GPUSpec("NVIDIA H200 SXM", _HOPPER_PEAKS, 141e9, 4.8e12, 900e9, _gbps(400),
                    "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM); NIC: DGX H200 datasheet"),
    "b200": GPUSpec("NVIDIA B200 (HGX B200)",
                    MappingProxyType({"fp4": 18e15 / 2, "fp8": 9e15 / 2, "bf16": 4.5e15 / 2, "fp16": 4.5e15 / 2,
                                      "fp32": 75e12}),
                    180e9, 8e12, 1.8e12, _gbps(400),
                    "NVIDIA HGX B200 specifications and DGX B200 datasheet (per GPU: board figures / 8)"),
    "a100": GPUSpec("NVIDIA A100 SXM4 80GB",
                    MappingProxyType({"bf16": 624e12 / 2, "fp16": 624e12 / 2, "fp32": 19.5e12}),
                    80e9, 2.039e12, 600e9, _gbps(200),
                    "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM); NIC: DGX A100 datasheet"),
})
"""The catalog, by key (lower case)."""

DTYPES = ("fp4", "fp8", "bf16", "fp16", "fp32")
"""Compute dtypes the catalog knows (canonical names)."""

_ALIASES = {"float8": "fp8", "bfloat16": "bf16", "float16": "fp16", "f32": "fp32", "float32": "fp32"}


def canonical_dtype(dtype: str, *, field: str = "dtype") -> str:
    """The catalog's name of a compute dtype: ``fp8``/``float8`` -> ``fp8``, ``bf16``/``bfloat16``
    -> ``bf16``, ``fp16``/``float16`` -> ``fp16``, ``f32``/``float32``/``fp32`` -> ``fp32``, ``fp4``.

    Raises:
      ConfigError: naming ``field`` for an unknown dtype, listing the known ones.
    """
    key = _ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if key not in DTYPES:
        raise ConfigError(field, f"unknown compute dtype {dtype!r}; known: {list(DTYPES) + sorted(_ALIASES)}")
    return key


def gpu_spec(gpu: str, *, field: str = "hardware.gpu") -> GPUSpec:
    """The catalog entry of ``gpu`` (case-insensitive key: ``h800``, ``h100``, ``h200``, ``b200``, ``a100``).

    Raises:
      ConfigError: naming ``field`` for an unknown GPU, listing the known ones.
    """
    key = str(gpu).lower()
    if key not in GPUS:
        raise ConfigError(field, f"unknown GPU {gpu!r}; known: {sorted(GPUS)}")
    return GPUS[key]


def peak_flops(gpu: str, dtype: str, *, gpu_field: str = "hardware.gpu", dtype_field: str = "dtype") -> float:
    """Dense peak FLOP/s of one ``gpu`` in compute dtype ``dtype`` (see the module's table).

    Raises:
      ConfigError: naming ``gpu_field`` for an unknown GPU, ``dtype_field`` for an unknown dtype or
        one the GPU has no Tensor Core support for (e.g. FP8 on A100), listing the known ones.
    """
    spec = gpu_spec(gpu, field=gpu_field)
    key = canonical_dtype(dtype, field=dtype_field)
    if key not in spec.peak_flops:
        raise ConfigError(dtype_field, f"{spec.name} has no {key} peak; it has {sorted(spec.peak_flops)} "
                          "(choose another dtype, or set hardware.peak_flops)")
    return float(spec.peak_flops[key])


def compute_peak(hw: HardwareConfig, dtype: str, *, dtype_field: str = "dtype") -> float:
    """Peak FLOP/s of one GPU of ``hw`` for a model computing in ``dtype``: ``hw.peak_flops`` when
    set, else the catalog's dense peak of ``hw.gpu`` in ``dtype``.

    Raises:
      ConfigError: as :func:`peak_flops` (only when ``hw.peak_flops`` is None).
    """
    if hw.peak_flops is not None:
        return float(hw.peak_flops)
    return peak_flops(hw.gpu, dtype, dtype_field=dtype_field)


def hardware_for(gpu: str, **overrides: Any) -> HardwareConfig:
    """A :class:`~dualpath_jax.sim.hardware.HardwareConfig` for nodes of 8 ``gpu`` GPUs: the
    catalog's HBM size and bandwidth, one NIC per GPU (CNIC) and one storage NIC per node (SNIC)
    at the reference node's rate; every other field at its default; ``overrides`` on top.
    ``hardware_for("h800")`` equals ``HardwareConfig()`` (the paper's testbed).

    Raises:
      ConfigError: ``hardware.gpu`` for an unknown GPU; ``hardware.<field>`` for a bad override.
    """
    from dualpath_jax.sim.hardware import HardwareConfig

    spec = gpu_spec(gpu)
    fields = {f.name for f in dataclasses.fields(HardwareConfig)}
    for key in overrides:
        if key not in fields:
            raise ConfigError(f"hardware.{key}", f"unknown field for HardwareConfig; known: {sorted(fields)}")
    base = dict(gpu=str(gpu).lower(), hbm_bytes=spec.hbm_bytes, hbm_bytes_per_s=spec.hbm_bytes_per_s,
                cnic_bytes_per_s=spec.nic_bytes_per_s, snic_bytes_per_s=spec.nic_bytes_per_s)
    return HardwareConfig(**{**base, **overrides})
