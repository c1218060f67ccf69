"""Admission by measured load: take a new session only when the application can hold it at full quality.

Pure (STYLE.md guideline 5): the sessions' latest summaries and the reservations in, a verdict out. The capacity is
the number of sessions a profile holds at full quality, measured by bench/bench_capacity.py (docs/benchmarks.md);
the live load decides below it: while any admitted session is out of budget (video degraded, or voice runtime/real
at or above the accept bound) nobody new comes in. Like LiveKit's workers that stop taking jobs above a load
threshold, the verdict also feeds ``/v1/stats`` so that a load balancer can route elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from mirage_ray.adapt import ACCEPT_BELOW
from mirage_ray.metrics import SessionSummary

RETRY_FULL_S = 30.0  # a full server: sessions last minutes, try again in about this long
RETRY_OVER_BUDGET_S = 15.0  # the degrade ladder restores after ~15 s of stable frames
RESERVATION_S = 10.0  # an admitted session counts before its first summary arrives, for at most this long


def capacity_for(ingress_replicas: int | None, sessions_per_replica: int, max_sessions: int) -> int:
    """Sessions the application may hold now: what its running ingress replicas hold, never above ``max_sessions``.

    Autoscaling adds and removes ingress replicas (docs/scaling.md); admission follows them, so a session is never
    let in before a replica with room for it is running. ``None`` (the count is not known yet, or Serve's controller
    is unreachable) counts one replica: the one asking is running. Never below one session, for the same reason.
    """
    replicas = 1 if ingress_replicas is None else max(1, ingress_replicas)
    return min(max_sessions, replicas * sessions_per_replica)


@dataclass(frozen=True)
class Verdict:
    """Whether a new session may start; ``reason`` is for the client (close reason) and the logs."""

    admitted: bool
    reason: str
    retry_after_s: float = 0.0


def over_budget(summary: SessionSummary) -> str | None:
    """Why this session is out of budget now, or None."""
    if summary.degrade_level > 0:
        return f"session {summary.session_id} runs degraded (level {summary.degrade_level})"
    if summary.audio_ratio is not None and summary.audio_ratio >= ACCEPT_BELOW:
        return f"session {summary.session_id} voice runtime/real {summary.audio_ratio:.2f} >= {ACCEPT_BELOW}"
    return None


class AdmissionPolicy:
    """Capacity from measurement, live load from the sessions' summaries, reservations for sessions just let in."""

    def __init__(self, capacity: int, live_load: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.live_load = live_load  # refuse while an admitted session is out of budget
        self._reserved: dict[str, float] = {}  # session id -> when it was admitted (until its first summary)

    def set_capacity(self, capacity: int) -> None:
        """The capacity changes with the running ingress replicas (:func:`capacity_for`)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity

    def reserve(self, session_id: str, now_s: float) -> None:
        self._reserved[session_id] = now_s

    def release(self, session_id: str) -> None:
        self._reserved.pop(session_id, None)

    def _live_reservations(self, known: set[str], now_s: float) -> int:
        for sid in [s for s, t in self._reserved.items() if s in known or now_s - t > RESERVATION_S]:
            del self._reserved[sid]
        return len(self._reserved)

    def decide(self, summaries: Iterable[SessionSummary], now_s: float) -> Verdict:
        """May one more session start now? (The caller reserves the slot when it is admitted.)"""
        live = list(summaries)
        count = len(live) + self._live_reservations({s.session_id for s in live}, now_s)
        if count >= self.capacity:
            reason = f"server full ({count}/{self.capacity} sessions); retry in {RETRY_FULL_S:.0f} s"
            return Verdict(False, reason, RETRY_FULL_S)
        for summary in live if self.live_load else ():
            why = over_budget(summary)
            if why is not None:
                return Verdict(False, f"server busy: {why}; retry in {RETRY_OVER_BUDGET_S:.0f} s", RETRY_OVER_BUDGET_S)
        return Verdict(True, f"admitted ({count + 1}/{self.capacity} sessions)")

    def load(self, summaries: Iterable[SessionSummary], now_s: float) -> dict[str, Any]:
        """What a load balancer needs: capacity, sessions, headroom, load (0..1), accepting, and why not."""
        live = list(summaries)
        count = len(live) + self._live_reservations({s.session_id for s in live}, now_s)
        verdict = self.decide(live, now_s)
        headroom = max(0, self.capacity - count) if verdict.admitted else 0
        return {
            "capacity": self.capacity,
            "sessions": count,
            "headroom": headroom,
            "load": 1.0 if not verdict.admitted else round(min(1.0, count / self.capacity), 3),
            "accepting": verdict.admitted,
            "reason": verdict.reason,
            "retry_after_s": verdict.retry_after_s,
        }


class AdmissionGate(Protocol):
    """Where an ingress asks whether a new session may start (the controller's global view, or a local one)."""

    async def admit(self, session_id: str) -> Verdict: ...

    async def release(self, session_id: str) -> None: ...

    async def load(self) -> dict[str, Any]: ...


class LocalAdmission:
    """The same policy over one replica's own sessions (tests, and the ingress when the controller is away)."""

    def __init__(
        self,
        capacity: int,
        summaries: Callable[[], Iterable[SessionSummary]],
        clock: Callable[[], float] = time.monotonic,
        live_load: bool = True,
    ) -> None:
        self.policy = AdmissionPolicy(capacity, live_load)
        self._summaries = summaries
        self._clock = clock

    async def admit(self, session_id: str) -> Verdict:
        now = self._clock()
        verdict = self.policy.decide(self._summaries(), now)
        if verdict.admitted:
            self.policy.reserve(session_id, now)
        return verdict

    async def release(self, session_id: str) -> None:
        self.policy.release(session_id)

    async def load(self) -> dict[str, Any]:
        return {**self.policy.load(self._summaries(), self._clock()), "scope": "replica"}
