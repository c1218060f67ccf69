"""The controller actor: a thin Ray shim around the pure ControllerPolicy.

Named and restartable (``max_restarts=-1``); it holds only what the next round of session pushes rebuilds.

Besides the sessions' pushes it hears the model deployments' stage reports (queue, GPU memory: the global view no
session has), and it watches how many ingress replicas are RUNNING (``serve.status()`` every ``REPLICA_POLL_S``) so
that admission's capacity follows autoscaling (docs/scaling.md), and whether Serve is deleting the application
(what the ingress replicas ask it instead of calling ``serve.status()`` themselves: see ``application_deleting``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

import ray

from mirage_ray.admission import AdmissionPolicy, capacity_for
from mirage_ray.controller_policy import ControllerPolicy, Directive, StageReport
from mirage_ray.metrics import SessionSummary

logger = logging.getLogger(__name__)

ENDED_MEMORY_S = 60.0  # how long pushes from a released session are ignored
CONTROLLER_NAME = "mirage_controller"
CONTROLLER_NAMESPACE = "mirage"
REPLICA_POLL_S = 2.0  # how often the running ingress replicas are counted (admission's capacity follows them)
INGRESS_DEPLOYMENT = "Ingress"


def running_replicas(status: Any, app_name: str, deployment: str) -> int | None:
    """RUNNING replicas of one deployment in a ``serve.status()`` answer (None when the app or deployment is absent)."""
    app = status.applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return None
    states = app.deployments[deployment].replica_states
    return sum(count for state, count in states.items() if str(getattr(state, "value", state)) == "RUNNING")


def application_deleting(status: Any, app_name: str) -> bool:
    """Whether a ``serve.status()`` answer shows ``app_name`` being deleted (an absent app is not being deleted).

    ``serve.status()`` itself is costly for a media process: it builds pydantic models of every deployment and
    cloudpickles their request routers, tens of ms of pure Python under the interpreter lock on a small CPU. Polled
    every second in the ingress it stalled the event loop each time (the voice's round trip p95 was twice its p50,
    the spikes 1.1 s apart), so the controller, which polls it anyway, answers for it.
    """
    from ray.serve.schema import ApplicationStatus

    app = status.applications.get(app_name)
    return app is not None and app.status == ApplicationStatus.DELETING


class ControllerActor:
    """Each push returns the directive waiting for the pushing session, if any (directives target one session)."""

    def __init__(
        self,
        stage_budget_ms: dict[str, float] | None = None,
        capacity: int = 8,
        live_load: bool = True,
        sessions_per_replica: int | None = None,
        app_name: str = "mirage",
    ) -> None:
        """``capacity`` is the application's ceiling (max_sessions); with ``sessions_per_replica`` the capacity
        follows the running ingress replicas of ``app_name`` below it (without: fixed, e.g. in unit tests)."""
        self._policy = ControllerPolicy(stage_budget_ms) if stage_budget_ms else ControllerPolicy()
        self._admission = AdmissionPolicy(capacity, live_load)
        self._max_sessions = capacity
        self._per_replica = sessions_per_replica
        self._app_name = app_name
        self.ingress_replicas: int | None = None  # None until counted (capacity is max_sessions meanwhile)
        self._deleting: tuple[bool, float] | None = None  # (deleting, wall time the status was asked) once read
        self._pending: dict[str, Directive] = {}
        self._ended: dict[str, float] = {}  # released sessions -> when: a push still on its way is not a new session
        self.started_at = time.time()
        if sessions_per_replica is not None:
            threading.Thread(target=self._watch_replicas, name="ingress-replicas", daemon=True).start()

    def _watch_replicas(self) -> None:
        from ray import serve

        while True:
            try:
                asked_at = time.time()
                status = serve.status()
                self.ingress_replicas = running_replicas(status, self._app_name, INGRESS_DEPLOYMENT)
                self._deleting = (application_deleting(status, self._app_name), asked_at)
            except Exception as exc:  # Serve's controller restarting: keep the last count
                logger.debug("serve.status() failed: %s", exc)
            time.sleep(REPLICA_POLL_S)

    def _follow_replicas(self) -> None:
        if self._per_replica is not None:
            self._admission.set_capacity(capacity_for(self.ingress_replicas, self._per_replica, self._max_sessions))

    def deleting(self, since: float) -> bool | None:
        """Whether Serve is deleting the application, as of the last poll; None when this cannot be said for a
        replica started at wall time ``since``: not watched, not read yet, or a deletion seen before ``since`` (this
        detached actor outlives a deleted application: that deletion may concern the one before a redeploy)."""
        if self._deleting is None:
            return None
        deleting, asked_at = self._deleting
        return None if deleting and asked_at < since else deleting

    def admit(self, session_id: str) -> dict[str, Any]:
        """The application-wide admission verdict for a new session (its slot is reserved when admitted)."""
        now = time.monotonic()
        self._follow_replicas()
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
        self._follow_replicas()
        report = self._admission.load(self._policy.summaries(now), now)
        return {
            **report,
            "max_sessions": self._max_sessions,
            "ingress_replicas": self.ingress_replicas,
            **self._policy.stage_view(now),
        }

    def report_stage(self, report: dict[str, Any]) -> None:
        """A model deployment replica's queue and GPU memory (actors/metrics_sink.py StageReporter)."""
        self._policy.push_stage(StageReport.from_dict(report), time.monotonic())

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


def get_or_create_controller(
    stage_budget_ms: dict[str, float],
    capacity: int,
    live_load: bool = True,
    sessions_per_replica: int | None = None,
    app_name: str = "mirage",
) -> Any:
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
    ).remote(stage_budget_ms, capacity, live_load, sessions_per_replica, app_name)
