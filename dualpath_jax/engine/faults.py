"""Fault injection for the engine: corrupted and slow reads, failed transfers, crashing workers.

Faults are a feature of the runtime, not of its tests: ``EngineCluster`` takes a
:class:`FaultConfig` (the ``faults`` section of an engine config; ``experiments/soak.py`` turns
every kind on) and a :class:`FaultInjector` decides, from seeded generators, where each fault
lands: one generator per kind of fault, so that the ``n``-th decision of a kind is the same
whatever the run's threads draw meanwhile. What the runtime must guarantee under them
(``tests/test_faults.py``, ``soak.py``):

* **read corruption**: a block's stored record gets one flipped byte just before a read of it
  (bit rot on the storage side). The store's checksums reject it, that block and the rest of
  the hit are recomputed from tokens, and the DE persists the recomputed blocks again (the
  store heals). Tokens stay identical to a no-cache recompute.
* **slow reads**: a read job waits ``slow_read_s`` before its reads start (a congested or
  throttled storage node).
* **transfer failures**: one hop of a KV move (SNIC read, CNIC H2D, PE<->DE RDMA, persist)
  fails as a timed-out or broken transfer would (``TransferFailed``), before any byte moved
  (counted in ``ClusterResult.faults``, not in the links' failed transfers). A failed persist
  loses that block (the next round recomputes it); any other failed move fails the request's
  attempt, which is run again (``ClusterConfig.max_attempts``).
* **worker crashes**: a worker's job raises ``InjectedCrash`` (a ``RuntimeError``) at its start,
  as an unexpected bug or an out-of-memory error would: a PE forward, a DE join or decode step,
  a node reader's job, a PE sender's or a DE persister's job. ``crash_rate`` crashes random jobs;
  ``crash_worker`` crashes one named worker once, after ``crash_after_jobs`` of its jobs or at
  its first job after ``crash_at_s`` seconds. The runtime's supervision catches it, fails the
  attempts the job held, releases what they held, and runs them again; a persister's crash only
  loses the block it was writing, as a failed persist does.

Worker names: ``pe<e>`` (forwards), ``de<e>`` (joins and steps), ``reader<n>`` (node ``n``'s read
jobs), ``pe<e>-send`` and ``de<e>-persist``, with the engine's global id.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

from dualpath_jax.config import ConfigError, check_fraction, check_non_negative

__all__ = ["FaultConfig", "FaultInjector", "InjectedCrash"]


class InjectedCrash(RuntimeError):
    """An injected worker failure (stands for any unexpected exception of a worker's job)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class FaultConfig:
    """Which faults to inject and how often (module docstring). All off by default.

    Attributes:
      read_corruption_rate: probability, per block read, that the block's record is corrupted
        on storage (one flipped byte) just before the read.
      slow_read_rate: probability that a read job waits ``slow_read_s`` seconds before reading.
      slow_read_s: seconds of one slow read.
      transfer_failure_rate: probability that one KV move over the emulated fabric fails.
      crash_rate: probability that a worker's job raises :class:`InjectedCrash` at its start.
      crash_worker: a worker (module docstring) that crashes once ("" = none).
      crash_after_jobs: ``crash_worker`` crashes at its job number ``crash_after_jobs + 1``.
      crash_at_s: or at its first job after this many seconds into the run (< 0: off).
      seed: seed of the injector's generators.

    Raises:
      ConfigError: naming the field (``faults.<name>``), for a rate outside [0, 1], a negative
        count or duration, or a malformed worker name.
    """

    read_corruption_rate: float = 0.0
    slow_read_rate: float = 0.0
    slow_read_s: float = 0.0
    transfer_failure_rate: float = 0.0
    crash_rate: float = 0.0
    crash_worker: str = ""
    crash_after_jobs: int = 0
    crash_at_s: float = -1.0
    seed: int = 0

    field_prefix: ClassVar[str] = "faults."

    def __post_init__(self):
        p = self.field_prefix
        for f in ("read_corruption_rate", "slow_read_rate", "transfer_failure_rate", "crash_rate"):
            check_fraction(p + f, getattr(self, f))
        check_non_negative(p + "slow_read_s", self.slow_read_s)
        check_non_negative(p + "crash_after_jobs", self.crash_after_jobs, integer=True)
        check_non_negative(p + "seed", self.seed, integer=True)
        if not isinstance(self.crash_at_s, (int, float)) or self.crash_at_s != self.crash_at_s:
            raise ConfigError(p + "crash_at_s", f"must be a number (got {self.crash_at_s!r})")
        w = self.crash_worker
        if w and not _valid_worker(w):
            raise ConfigError(p + "crash_worker", f"must be pe<e>, de<e>, reader<n>, pe<e>-send or "
                              f"de<e>-persist (got {w!r})")

    @property
    def enabled(self) -> bool:
        """Whether any fault can be injected."""
        return bool(self.read_corruption_rate or (self.slow_read_rate and self.slow_read_s)
                    or self.transfer_failure_rate or self.crash_rate or self.crash_worker)


def _valid_worker(name: str) -> bool:
    base, _, suffix = name.partition("-")
    for prefix, suffixes in (("pe", ("", "send")), ("de", ("", "persist")), ("reader", ("",))):
        if base.startswith(prefix) and base[len(prefix):].isdigit() and suffix in suffixes:
            return True
    return False


class FaultInjector:
    """Draws the faults of one run (thread-safe).

    Each kind of fault has its own seeded generator, so the decisions of one kind are a fixed
    sequence whatever order the run's threads draw in: how many faults of each kind a run sees
    depends only on how many jobs, read jobs, block reads and moves it makes, not on how the
    threads interleave (with one shared generator, a read job's slow-read draw would take
    whichever number the other kinds' draws left it).

    Args:
      config: what to inject.
      now: seconds since the run started (for ``crash_at_s``).
      stream: None: the generators are seeded with ``config.seed``; an int: with ``config.seed``
        and ``stream`` (the ``ray`` runtime gives each node process its own injector, ``stream`` =
        its node id, so the nodes draw independently of each other).

    ``counts`` holds how many faults of each kind were injected (``"read_corruption"``,
    ``"slow_read"``, ``"transfer_failure"``, ``"crash"``).
    """

    def __init__(self, config: FaultConfig, now: Callable[[], float] = time.perf_counter, stream: int | None = None):
        self.config, self.now = config, now
        self._seed = str(config.seed) if stream is None else f"{config.seed}/{int(stream)}"
        self._rngs: dict[str, random.Random] = {}
        self._lock = threading.Lock()
        self._jobs: Counter = Counter()
        self._targeted_done = False
        self.counts: Counter = Counter()

    def _rng(self, kind: str) -> random.Random:
        """The generator of ``kind`` decisions (call under the lock)."""
        rng = self._rngs.get(kind)
        if rng is None:
            rng = self._rngs[kind] = random.Random(f"{self._seed}/{kind}")
        return rng

    def _draw(self, rate: float, kind: str) -> bool:
        if rate <= 0.0:
            return False
        with self._lock:
            return self._rng(kind).random() < rate

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def job(self, worker: str) -> None:
        """Call at the start of each job of ``worker``.

        Raises:
          InjectedCrash: this job crashes.
        """
        cfg = self.config
        if not (cfg.crash_rate or cfg.crash_worker):
            return
        with self._lock:
            self._jobs[worker] += 1
            n = self._jobs[worker]
            targeted = (worker == cfg.crash_worker and not self._targeted_done
                        and (n > cfg.crash_after_jobs if cfg.crash_at_s < 0 else self.now() >= cfg.crash_at_s))
            if targeted:
                self._targeted_done = True
        if targeted or self._draw(cfg.crash_rate, "crash"):
            self._count("crash")
            raise InjectedCrash(f"injected crash of {worker} at its job {n}")

    def transfer_fails(self) -> bool:
        """Whether the next KV move fails."""
        if self._draw(self.config.transfer_failure_rate, "transfer_failure"):
            self._count("transfer_failure")
            return True
        return False

    def before_read(self, store, keys) -> None:
        """Called by a node reader before it reads ``keys`` of ``store``: maybe wait (slow read),
        maybe corrupt some of the blocks on storage (one flipped byte each)."""
        cfg = self.config
        if cfg.slow_read_s and self._draw(cfg.slow_read_rate, "slow_read"):
            self._count("slow_read")
            time.sleep(cfg.slow_read_s)
        if not cfg.read_corruption_rate:
            return
        for key in keys:
            if not self._draw(cfg.read_corruption_rate, "read_corruption"):
                continue
            data = store.raw_read(key)
            if not data:
                continue
            with self._lock:
                rng = self._rng("corrupted_byte")  # not the decisions' stream
                pos = rng.randrange(len(data))
                bit = 1 << rng.randrange(8)
            corrupted = bytearray(data)
            corrupted[pos] ^= bit
            store.raw_write(key, bytes(corrupted))
            self._count("read_corruption")
