"""The simulator's synchronisation units: a PE or DE EP group under ``ep_sync``, else one engine.

A DE unit advances a continuous decode-step counter at the rate of its current step time, so a
decode needs no event per token: only joins and completions are events (:mod:`.cluster`). With EP
every member waits for the slowest (PAPER.md 2.1, 5.5): a step takes the slowest member's own part
(attention, non-expert layers) plus the routed experts' part, which the members share
(:class:`~dualpath_jax.sim.compute.ComputeModel`'s ``s_per_routed_token``).
"""

from __future__ import annotations

import heapq
import math

__all__ = ["Unit"]


class Unit:
    """A synchronisation unit (see the module docstring).

    Attributes:
      engines: the member engine ids.
      busy, kick: a PE unit is in a forward; its forward start is queued for the end of this instant.
      version, next_t: the pending DE event that counts (older ones are stale) and when it fires (s).
      steps, last_t, step_s: decode steps done by ``last_t`` (virtual s), and the current step time (s).
      own_s, batch: a DE unit's slowest member's own part of a step (s), and the sequences its
        members decode (their routed-expert work is shared).
      heap: a DE unit's requests as (step count at completion, request id, DE, mean context).
      seconds: a DE unit's requests whose second token is still to come, as (step count at that
        token, request id): its time is known once the counter passes it (:meth:`advance`).
    """

    __slots__ = ("engines", "busy", "kick", "version", "next_t", "steps", "last_t", "step_s", "own_s", "batch", "heap",
                 "seconds")

    def __init__(self, engines: list[int]):
        self.engines = engines
        self.busy = False
        self.kick = False
        self.version = 0
        self.next_t = math.inf
        self.steps = 0.0
        self.last_t = 0.0
        self.step_s = 0.0
        self.own_s = 0.0
        self.batch = 0
        self.heap: list = []
        self.seconds: list = []

    def advance(self, now: float, second_token_s) -> None:
        """Count the decode steps done since ``last_t`` (which is in the future while the unit is
        stalled admitting a request: no steps then), and write into ``second_token_s`` (the
        per-request column) when each second token the counter passed came: the step time was
        constant since ``last_t`` (it changes only after an advance)."""
        t0, steps0 = self.last_t, self.steps
        if now > self.last_t:
            if self.step_s > 0:
                self.steps += (now - self.last_t) / self.step_s
            self.last_t = now
        seconds = self.seconds
        while seconds and seconds[0][0] <= self.steps + 1e-9:  # (as the completions' tolerance)
            target, rid = heapq.heappop(seconds)
            t = t0 + max(target - steps0, 0.0) * self.step_s  # (a count set by next_completion: t0)
            second_token_s[rid] = min(t, now) if now > t0 else t0

    def set_step(self, de_step: list[float], de: int, own_s: float, shared_s: float) -> None:
        """Set DE ``de``'s own part of a step in ``de_step`` and the unit's step time ``step_s`` to
        the slowest member's own part plus ``shared_s`` (the members' shared routed-expert time):
        only when the slowest member gets faster are the members scanned again."""
        old = de_step[de]
        de_step[de] = own_s
        if own_s >= self.own_s:
            self.own_s = own_s
        elif old == self.own_s:
            self.own_s = max(map(de_step.__getitem__, self.engines))
        self.step_s = self.own_s + shared_s if self.batch else 0.0

    def next_completion(self) -> float | None:
        """If the unit's next completion (at its current step time) comes before its pending event,
        make it the pending event and return its time (seconds); else None. A pending event due
        earlier is kept (it fires, finds nothing due and reschedules), so joins between two
        completions cost no extra events. A completion whose remaining steps take less time than
        the clock can resolve at ``last_t`` (a float64 ulp: 1.5e-11 s at 1e5 s) is due at
        ``last_t``: its step count is reached now, as the clock cannot move past ``last_t`` by so
        little (the event would fire at ``last_t``, count no step and reschedule there forever)."""
        if not self.heap:
            return None
        left = self.heap[0][0] - self.steps
        t = self.last_t
        if left > 0.0:
            t = self.last_t + left * self.step_s
            if t <= self.last_t:
                self.steps = self.heap[0][0]
                t = self.last_t
        if t < self.next_t:
            self.version += 1  # supersedes the later pending event
            self.next_t = t
            return t
        return None
