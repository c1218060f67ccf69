"""The controller actor: a thin Ray shim around the pure ControllerPolicy.

Named and restartable (``max_restarts=-1``); it holds only what the next round of session pushes rebuilds.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import ray

from mirage_ray.admission import AdmissionPolicy
from mirage_ray.controller_policy import ControllerPolicy, Directive
from mirage_ray.metrics import SessionSummary

ENDED_MEMORY_S = 60.0  # how long pushes from a released session are ignored
CONTROLLER_NAME = "mirage_controller"
CONTROLLER_NAMESPACE = "mirage"


class ControllerActor:
    """Each push returns the directive waiting for the pushing session, if any (directives target one session)."""

    def __init__(
        self, stage_budget_ms: dict[str, float] | None = None, capacity: int = 8, live_load: bool = True
    ) -> None:
        self._policy = ControllerPolicy(stage_budget_ms) if stage_budget_ms else ControllerPolicy()
        self._admission = AdmissionPolicy(capacity, live_load)
        self._pending: dict[str, Directive] = {}
        self._ended: dict[str, float] = {}  # released sessions -> when: a push still on its way is not a new session
        self.started_at = time.time()

    def admit(self, session_id: str) -> dict[str, Any]:
        """The application-wide admission verdict for a new session (its slot is reserved when admitted)."""
        now = time.monotonic()
        verdict = self._admission.decide(self._policy.summaries(now), now)
        if verdict.admitted:
            self._admission.reserve(session_id, now)
        return asdict(verdict)

    def release(self, session_id: str) -> None:
        """A session ended: its slot is free now (not after its summaries go stale)."""
        now = time.monotonic()
        self._admission.release(session_id)
        self._policy.forget(session_id)
        self._pending.pop(session_id, None)
        self._ended[session_id] = now
        for sid in [s for s, t in self._ended.items() if now - t > ENDED_MEMORY_S]:
            del self._ended[sid]

    def load(self) -> dict[str, Any]:
        """Capacity, sessions, headroom and load of the whole application (for /v1/stats and load balancers)."""
        now = time.monotonic()
        return self._admission.load(self._policy.summaries(now), now)

    def push(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        now = time.monotonic()
        pushed = SessionSummary.from_dict(summary)
        if pushed.session_id in self._ended:
            return None
        for directive in (self._policy.push(pushed, now), self._policy.tick(now)):
            if directive is not None:
                self._pending[directive.session_id] = directive
        directive = self._pending.pop(pushed.session_id, None)
        return asdict(directive) if directive is not None else None

    def snapshot(self) -> dict[str, Any]:
        """What the controller currently believes (for tests and operators)."""
        pressure, why = self._policy.pressure
        return {
            "started_at": self.started_at,
            "pressure": pressure,
            "why": why,
            "floors": self._policy.floors(),
            "sessions": len(self._policy.summaries(time.monotonic())),
            "admission": self.load(),
        }


def get_or_create_controller(stage_budget_ms: dict[str, float], capacity: int, live_load: bool = True) -> Any:
    """The named controller actor handle (created on first use, restarted by Ray when it dies)."""
    actor_cls = ray.remote(ControllerActor)
    return actor_cls.options(
        name=CONTROLLER_NAME,
        namespace=CONTROLLER_NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
    ).remote(stage_budget_ms, capacity, live_load)
