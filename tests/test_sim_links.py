"""The simulator's links (``sim.hardware.Server`` / ``reserve``): every transfer is booked on all
its hops at once at its slowest hop's rate, in the earliest stretch where each has room, against a
plain reference that keeps every booking and against closed-form cases."""

import numpy as np
import pytest

from dualpath_jax.sim.hardware import Server, reserve


def _fits(flows, path, nbytes, rate, t0):
    """Plain reference: do ``path``'s servers have ``rate`` (times the server's count in the path)
    to spare from ``t0`` for ``nbytes / rate`` seconds, given the booked ``flows`` (start, end, rate)?"""
    t1 = t0 + nbytes / rate
    for s in set(path):
        need = path.count(s) * rate
        for p in sorted({t0} | {a for a, _, _ in flows[s.name] if t0 < a < t1}):
            if sum(r for a, b, r in flows[s.name] if a <= p < b) + need > s.rate * (1 + 1e-9):
                return False
    return True


@pytest.mark.parametrize("seed", range(30))
def test_reserve_books_the_earliest_start_with_room_on_every_hop(seed):
    """Random paths of 1-4 hops (some crossing a server twice) at random issue times, against a
    plain reference that keeps every booked transfer: a transfer streams at its slowest hop's
    rate (a server crossed k times counts its rate / k); it starts at the earliest time from its
    issue time on at which every hop has that rate to spare for the whole transfer (no earlier
    candidate, the issue time or a booked transfer's end, has room), so no server ever carries
    more than its rate; every hop counts the bytes once per crossing."""
    rng = np.random.default_rng(seed)
    servers = [Server(f"s{i}", float(rng.choice([1.0, 2.0, 5.0]))) for i in range(4)]
    flows = {s.name: [] for s in servers}
    now = 0.0
    for _ in range(40):
        k = int(rng.integers(1, 5))
        idx = rng.permutation(4)[:k] if rng.random() < 0.7 else rng.integers(0, 4, size=k)
        path = [servers[i] for i in idx]
        nbytes = float(rng.uniform(0.1, 4))
        now += float(rng.uniform(0, 0.5))
        earliest = now + float(rng.choice([0.0, rng.uniform(0, 2)]))
        start, end = reserve(tuple(path), nbytes, earliest, now)
        rate = min(s.rate / path.count(s) for s in path)
        assert end - start == pytest.approx(nbytes / rate, rel=1e-12) and start >= earliest
        assert _fits(flows, path, nbytes, rate, start)
        ends = {b for s in path for _, b, _ in flows[s.name] if earliest <= b < start}
        assert not any(_fits(flows, path, nbytes, rate, t) for t in {earliest} | ends if t < start)
        for s in set(path):
            flows[s.name].append((start, end, path.count(s) * rate))
        for s in servers:
            assert s.bytes == pytest.approx(sum((b - a) * r for a, b, r in flows[s.name]), rel=1e-9)


def test_forgetting_bookings_that_ended_changes_no_later_booking(monkeypatch):
    """``reserve(..., now)`` forgets what ended by ``now`` (here after every booking): 2,000 random
    transfers issued at non-decreasing times get the same (start, end) as with nothing forgotten."""
    import dualpath_jax.sim.hardware as hardware

    def run(prune: bool):
        rng = np.random.default_rng(7)
        servers = [Server(f"s{i}", float(r)) for i, r in enumerate([1.0, 1.0, 2.0, 10.0])]
        now, out = 0.0, []
        for _ in range(2000):
            now += float(rng.exponential(0.3))
            path = tuple(servers[i] for i in rng.permutation(4)[:rng.integers(1, 4)])
            earliest = now + float(rng.choice([0.0, rng.uniform(0, 1)]))
            out.append(reserve(path, float(rng.uniform(0.1, 2)), earliest, now if prune else 0.0))
        return out, max(len(s._t) for s in servers)

    kept, steps_kept = run(False)
    monkeypatch.setattr(hardware, "_PRUNE_STEPS", 1)
    pruned, steps_pruned = run(True)
    assert pruned == kept and steps_pruned < steps_kept


def test_a_transfer_fills_an_idle_stretch_and_a_cnic_never_carries_twice_its_rate():
    """Closed form on a DE -> PE read (DE DRAM -> DE CNIC out -> PE CNIC in, all CNICs 45 GB/s):
    the DE's CNIC out is booked until t = 1 s; a 45 GB read through it runs [1, 2] and holds the
    PE's CNIC in then; the PE's own 45 GB load (PE DRAM -> PE CNIC out -> PE CNIC in), issued at
    0, fills the PE CNIC in's idle [0, 1]; a second one finds it busy until 2 and runs [2, 3]."""
    de_dram, pe_dram = Server("dram[de]", 500e9), Server("dram[pe]", 500e9)
    de_out, pe_out, pe_in = Server("cnic_out[de]", 45e9), Server("cnic_out[pe]", 45e9), Server("cnic_in[pe]", 45e9)
    de_out.free_at = 1.0
    assert reserve((de_dram, de_out, pe_in), 45e9, 0.0) == (1.0, 2.0)
    assert reserve((pe_dram, pe_out, pe_in), 45e9, 0.0) == (0.0, 1.0)
    assert reserve((pe_dram, pe_out, pe_in), 45e9, 0.0) == (2.0, 3.0)
    assert pe_in.free_at == 3.0 and pe_in.backlog_s(0.5) == pytest.approx(2.5)
    # a DRAM 10x as fast carries ten such transfers side by side, not an eleventh
    dram, nics = Server("dram", 10.0), [Server(f"n{i}", 1.0) for i in range(11)]
    assert [reserve((n, dram), 1.0, 0.0) for n in nics] == [(0.0, 1.0)] * 10 + [(1.0, 2.0)]
