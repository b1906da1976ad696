"""Closed-form analysis of the paper: the bottleneck-free P/D range (Eq. 1-9) and the working set.

Bottleneck-free analysis (PAPER.md section 2.6, paper section 4.2). Notation: P, D prefill /
decode nodes, ``r = P/D``; g GPUs per node with one CNIC of bandwidth B each; s SNIC bandwidth per
node in units of B (storage bandwidth per node ``s * B``); M host memory bandwidth per node (reads
and writes share it). With every SNIC saturated and reads spread evenly, the load of each checked
resource as a fraction of its capacity is::

    PE CNIC read   (1)  2 s / g
    PE CNIC write  (2)  (s / g) (1 + 1/r)          <= 1  <=>  r >= s / (g - s)         (3)
    DE CNIC read   (4)  (s / g) (r + 2)            <= 1  <=>  r <= (g - 2 s) / s       (5)
    DE CNIC write  (6)  (s / g) (2 r + 1)          <= 1  <=>  r <= (g - s) / (2 s)     (7)
    PE DRAM             2 B s / M
    DE DRAM             (3 + 2 r) B s / M          <= 1  <=>  r <= (M / (B s) - 3) / 2 (8)

so (9) ``s/(g-s) <= P/D <= min{(g-2s)/s, (g-s)/(2s), (M/(Bs)-3)/2}``; the paper's g = 8, s = 1,
M = 500 GB/s, B s = 50 GB/s give ``1/7 <= P/D <= 7/2``. Outside the range the busiest resource
caps the aggregate storage read rate; if every path scales down together (the even split the
analysis assumes) the deliverable fraction of the SNICs' bandwidth is ``min(1, 1 / max load)``
(:func:`even_split_storage_fraction`; a smarter split may do better, so it is a lower estimate).

The same accounting for Basic (every read on the PE side, only the P PE SNICs saturated: per
PE node ``s B`` goes storage -> PE DRAM -> PE HBM -> DE DRAM -> DE HBM), derived here, not in the
paper (:func:`basic_link_loads`)::

    PE CNIC read 2 s / g, PE CNIC write s / g, DE CNIC read (s / g) r, DE CNIC write 2 (s / g) r,
    PE DRAM 2 B s / M, DE DRAM 2 r B s / M

so Basic can use at most ``P / (P + D) * min(1, 1 / max load)`` of the aggregate SNIC bandwidth.

Working set (PAPER.md section 6.5, paper section 8.2): with agents arriving at APS and living
for a mean trajectory completion time T, Little's law gives ``APS * T`` live agents whose context
grows from 0 to the mean total length, so on average half of it is held::

    working_set_bytes = APS * T * mean_total_tokens / 2 * kv_bytes_per_token
"""

from __future__ import annotations

import dataclasses

from dualpath_jax.config import check_non_negative, check_positive

__all__ = ["PDRange", "bottleneck_free_pd_range", "pd_range_for_hardware", "link_loads", "basic_link_loads",
           "even_split_storage_fraction", "basic_storage_fraction", "working_set_bytes"]


@dataclasses.dataclass(frozen=True)
class PDRange:
    """Eq. 9: ``lower <= P/D <= upper`` (``feasible`` when lower <= upper).

    Attributes:
      lower: ``s / (g - s)`` (PE CNIC write, Eq. 3); ``inf`` when ``s >= g``.
      upper: minimum of ``upper_terms``.
      upper_terms: ``{"de_cnic_read": (g-2s)/s, "de_cnic_write": (g-s)/(2s),
        "de_dram": (M/(Bs)-3)/2}`` (Eq. 5, 7, 8).
      pe_cnic_read_ok: Eq. 1 holds (``2 s <= g``), independent of P/D.
      pe_dram_ok: ``2 B s <= M``, independent of P/D.
    """

    lower: float
    upper: float
    upper_terms: dict
    pe_cnic_read_ok: bool
    pe_dram_ok: bool

    @property
    def feasible(self) -> bool:
        return self.pe_cnic_read_ok and self.pe_dram_ok and self.lower <= self.upper

    def contains(self, p_over_d: float) -> bool:
        """Whether ``p_over_d`` is bottleneck-free (inside a feasible range, ends included)."""
        return self.feasible and self.lower <= p_over_d <= self.upper


def _check(g, s, mem_over_bs):
    check_positive("gpus_per_node", g)
    check_positive("s", s)
    check_positive("mem_over_bs", mem_over_bs)


def bottleneck_free_pd_range(gpus_per_node: float, s: float, dram_bytes_per_s: float,
                             cnic_bytes_per_s: float) -> PDRange:
    """Eq. 9 for g = ``gpus_per_node``, storage bandwidth per node ``s * B`` with B =
    ``cnic_bytes_per_s`` and M = ``dram_bytes_per_s`` (PAPER.md section 2.6).

    Raises:
      ConfigError: naming the argument, for a non-positive value.
    """
    for name, v in (("dram_bytes_per_s", dram_bytes_per_s), ("cnic_bytes_per_s", cnic_bytes_per_s)):
        check_positive(name, v)
    g, mem_over_bs = float(gpus_per_node), float(dram_bytes_per_s) / (float(cnic_bytes_per_s) * float(s))
    _check(g, s, mem_over_bs)
    lower = s / (g - s) if g > s else float("inf")
    terms = {"de_cnic_read": (g - 2 * s) / s, "de_cnic_write": (g - s) / (2 * s), "de_dram": (mem_over_bs - 3) / 2}
    return PDRange(lower=lower, upper=min(terms.values()), upper_terms=terms, pe_cnic_read_ok=2 * s <= g,
                   pe_dram_ok=2.0 <= mem_over_bs)


def pd_range_for_hardware(hw, *, kv_share: bool = False) -> PDRange:
    """Eq. 9 for a :class:`~dualpath_jax.sim.hardware.HardwareConfig`.

    ``s = snics_per_node * snic_bytes_per_s / B``. With ``kv_share`` B is the CNIC bandwidth left
    to KV traffic (``cnic_bytes_per_s * cnic_kv_share``, what the simulator gives KV), else the
    nominal CNIC rate. The storage rate per node ``B s`` is the same either way.
    """
    b = hw.cnic_bytes_per_s * (hw.cnic_kv_share if kv_share else 1.0)
    s = hw.node_snic_bytes_per_s / b
    return bottleneck_free_pd_range(hw.gpus_per_node, s, hw.dram_bytes_per_s, b)


def link_loads(p_over_d: float, gpus_per_node: float, s: float, mem_over_bs: float) -> dict[str, float]:
    """Load / capacity of each resource of Eq. 1-8 when every SNIC is saturated (module docstring).

    Args:
      p_over_d: r = P/D (> 0).
      gpus_per_node: g.
      s: storage bandwidth per node in units of one CNIC's bandwidth B.
      mem_over_bs: M / (B s).
    Returns:
      ``{"pe_cnic_read", "pe_cnic_write", "de_cnic_read", "de_cnic_write", "pe_dram", "de_dram"}``;
      a value above 1 is a bottleneck.
    Raises:
      ConfigError: naming the argument, for a non-positive value.
    """
    check_positive("p_over_d", p_over_d)
    g, r = float(gpus_per_node), float(p_over_d)
    _check(g, s, mem_over_bs)
    return {"pe_cnic_read": 2 * s / g, "pe_cnic_write": (s / g) * (1 + 1 / r), "de_cnic_read": (s / g) * (r + 2),
            "de_cnic_write": (s / g) * (2 * r + 1), "pe_dram": 2 / mem_over_bs, "de_dram": (3 + 2 * r) / mem_over_bs}


def basic_link_loads(p_over_d: float, gpus_per_node: float, s: float, mem_over_bs: float) -> dict[str, float]:
    """Load / capacity of each resource when Basic saturates the P PE SNICs (module docstring);
    same arguments, keys and errors as :func:`link_loads`."""
    check_positive("p_over_d", p_over_d)
    g, r = float(gpus_per_node), float(p_over_d)
    _check(g, s, mem_over_bs)
    return {"pe_cnic_read": 2 * s / g, "pe_cnic_write": s / g, "de_cnic_read": (s / g) * r,
            "de_cnic_write": 2 * (s / g) * r, "pe_dram": 2 / mem_over_bs, "de_dram": 2 * r / mem_over_bs}


def basic_storage_fraction(p_over_d: float, gpus_per_node: float, s: float, mem_over_bs: float) -> float:
    """Fraction of the aggregate SNIC bandwidth ``(P + D) s B`` Basic can use:
    ``P / (P + D) * min(1, 1 / max(basic_link_loads))``."""
    worst = max(basic_link_loads(p_over_d, gpus_per_node, s, mem_over_bs).values())
    r = float(p_over_d)
    return r / (1.0 + r) * min(1.0, 1.0 / worst)


def even_split_storage_fraction(p_over_d: float, gpus_per_node: float, s: float, mem_over_bs: float) -> float:
    """Fraction of the aggregate SNIC bandwidth ``(P + D) s B`` that dual-path reads can use when
    every path scales down together: ``min(1, 1 / max(link_loads))`` (1 inside the Eq. 9 range)."""
    worst = max(link_loads(p_over_d, gpus_per_node, s, mem_over_bs).values())
    return min(1.0, 1.0 / worst)


def working_set_bytes(aps: float, mean_completion_s: float, mean_total_tokens: float,
                      kv_bytes_per_token: float) -> float:
    """Working set of PAPER.md section 6.5 / paper section 8.2 (module docstring), in bytes.

    Args:
      aps: agent arrivals per second.
      mean_completion_s: mean trajectory completion time ("average JCT") at that APS, seconds.
      mean_total_tokens: mean total tokens of a trajectory (Table 2 "Total").
      kv_bytes_per_token: KV bytes of one token over all layers.
    Raises:
      ConfigError: naming the argument, for a negative value.
    """
    for name, v in (("aps", aps), ("mean_completion_s", mean_completion_s),
                    ("mean_total_tokens", mean_total_tokens), ("kv_bytes_per_token", kv_bytes_per_token)):
        check_non_negative(name, v)
    return float(aps) * float(mean_completion_s) * float(mean_total_tokens) / 2.0 * float(kv_bytes_per_token)
