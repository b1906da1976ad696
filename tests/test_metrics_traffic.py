"""Traffic metrics on hand-computed cases and against a brute-force overlap reference."""

import numpy as np
import pytest

from dualpath_jax.metrics import (AttentionRecord, TransferRecord, TransferTable, attention_max_avg, bytes_per_link,
                                  bytes_per_path, cumulative_bytes, link_bytes_in_windows, link_utilization,
                                  max_avg_ratio, storage_nic_max_avg)

TRANSFERS = [
    TransferRecord("snic/a", 0.0, 2.0, 100, path="pe_read"),
    TransferRecord("snic/b", 1.0, 2.0, 50, path="de_read"),
    TransferRecord("snic/a", 2.5, 2.5, 30, path="persist"),     # instantaneous
]


def test_windows_by_hand():
    w = link_bytes_in_windows(TRANSFERS, 1.0, links=["snic/a", "snic/b", "snic/c"], start_s=0.0, end_s=2.9)
    np.testing.assert_allclose(w.edges_s, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(w.bytes, [[50, 50, 30], [0, 50, 0], [0, 0, 0]])
    np.testing.assert_allclose(w.bytes_per_s(), w.bytes)
    # Max/Avg over the 3 SNICs (idle snic/c counts): 50/(50/3), 50/(100/3), 30/10
    np.testing.assert_allclose(max_avg_ratio(w.bytes), [3.0, 1.5, 3.0])
    starts, ratio = storage_nic_max_avg(TRANSFERS, ["snic/a", "snic/b"], 1.0, start_s=0.0, end_s=2.9)
    np.testing.assert_allclose(starts, [0, 1, 2])
    np.testing.assert_allclose(ratio, [2.0, 1.0, 2.0])
    np.testing.assert_allclose(max_avg_ratio(np.zeros((2, 1))), [np.nan])


def test_cumulative_bytes_matches_bruteforce_overlaps():
    rng = np.random.default_rng(0)
    n = 200
    start = rng.uniform(0, 100, n)
    finish = start + np.where(rng.random(n) < 0.2, 0.0, rng.exponential(5.0, n))
    size = rng.integers(1, 10**9, n).astype(np.float64)
    edges = np.linspace(-1, 130, 57)
    got = cumulative_bytes(start, finish, size, edges)
    want = []
    for e in edges:
        total = 0.0
        for s, f, b in zip(start, finish, size):
            if f == s:
                total += b if s < e else 0.0
            else:
                total += b * min(max((e - s) / (f - s), 0.0), 1.0)
        want.append(total)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-3)
    assert got[-1] == pytest.approx(size.sum())


def test_bytes_per_path_link_and_utilization():
    assert bytes_per_path(TRANSFERS) == {"de_read": 50.0, "pe_read": 100.0, "persist": 30.0}
    assert bytes_per_link(TransferTable.from_records(TRANSFERS)) == {"snic/a": 130.0, "snic/b": 50.0}
    util = link_utilization(TRANSFERS, {"snic/a": 100.0, "snic/b": 100.0, "snic/c": 100.0}, start_s=0.0, end_s=3.0)
    assert util == pytest.approx({"snic/a": 130 / 300, "snic/b": 50 / 300, "snic/c": 0.0})
    # over [0, 1] only half of the first transfer counts
    assert link_utilization(TRANSFERS, 100.0, start_s=0.0, end_s=1.0)["snic/a"] == pytest.approx(0.5)


def test_transfer_record_validation():
    with pytest.raises(ValueError, match="finish_s"):
        TransferRecord("x", 2.0, 1.0, 5)
    with pytest.raises(ValueError, match="num_bytes"):
        TransferRecord("x", 0.0, 1.0, -5)


def test_attention_max_avg_by_hand():
    recs = [AttentionRecord("pe0", 0, 0, 0.1), AttentionRecord("pe0", 0, 1, 0.3),
            AttentionRecord("pe0", 1, 0, 0.2), AttentionRecord("pe0", 1, 1, 0.2),
            AttentionRecord("pe1", 0, 2, 0.0), AttentionRecord("pe1", 0, 3, 0.0)]
    out = attention_max_avg(recs)
    steps, ratio = out["pe0"]
    np.testing.assert_array_equal(steps, [0, 1])
    np.testing.assert_allclose(ratio, [1.5, 1.0])
    np.testing.assert_allclose(out["pe1"][1], [np.nan])


def test_duck_typed_transfer_records_from_the_transfer_layer():
    """Records shaped like dualpath_jax.transfer.TransferRecord (tag, outcome) are accepted;
    failed transfers moved nothing."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class LinkRecord:
        link: str
        num_bytes: int
        start_s: float
        finish_s: float
        outcome: str
        tag: str

    recs = [LinkRecord("h2d/pe0", 64, 0.0, 1.0, "ok", "layer0"), LinkRecord("h2d/pe0", 99, 1.0, 2.0, "timeout", "x")]
    assert bytes_per_path(recs) == {"layer0": 64.0}
    assert bytes_per_link(recs) == {"h2d/pe0": 64.0}
