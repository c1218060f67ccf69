"""The controller's pure part: from the sessions' summaries, decide video degrade/restore directives.

When a shared stage is saturated (a stage's p95 over budget, a shared queue over its threshold, or GPU memory
nearly full), degrade the session that costs the most shared-stage time per second, one per tick, with a cool-down
so the effect shows before the next. When every signal is calm for a stable period, restore in reverse: the
cheapest held session first, one per stable period. Between the saturated and calm bands nothing happens
(hysteresis). A directive is an absolute floor level, so repeating one is harmless.

State is only the latest summary per session plus the floor the controller wants for it; both come back from the
next round of pushes (a summary carries the floor the session holds), so a restarted controller rebuilds itself.
Sessions whose latest push is older than ``STALE_AFTER_S`` are forgotten. Time comes in as an argument.

Two sources feed the queue and GPU-memory signals: the sessions' summaries (``shared_queue``, ``gpu_mem_fraction``,
when an ingress knows them) and the model deployments' own reports (:class:`StageReport`: requests waiting in a
replica's batch queue, the device's memory in use), which are the application-wide view no single session has.
A replica reports every few seconds while it works; a report older than ``STAGE_REPORT_STALE_S`` is dropped.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from mirage_ray.config import MirageSettings
from mirage_ray.metrics import SessionSummary

logger = logging.getLogger(__name__)

STALE_AFTER_S = 5.0  # forget a session whose latest summary is older than this
# p95 per frame at 20 fps (50 ms a frame) above which a shared stage counts as saturated: the setting's default
STAGE_P95_BUDGET_MS: Mapping[str, float] = MirageSettings.model_fields["stage_budget_ms"].get_default(
    call_default_factory=True
)
CALM_FRACTION = 0.8  # calm when every stage's p95 is below this fraction of its budget
QUEUE_SATURATED = 8  # requests waiting at a shared stage
QUEUE_CALM = 2
GPU_MEM_SATURATED = 0.90  # fraction of GPU memory allocated
GPU_MEM_CALM = 0.80
ACTION_COOLDOWN_S = 3.0  # between two directives, so the first one's effect reaches the summaries
RESTORE_STABLE_S = 15.0  # calm this long before each restore (300 frames at 20 fps, like the local rule)
STAGE_REPORT_STALE_S = 10.0  # a deployment replica's report older than this no longer counts (it reports every 2 s)

Pressure = Literal["saturated", "neutral", "calm"]
REASON_SATURATED = "saturated"
REASON_RESTORE = "restore"
REASON_RESYNC = "resync"


@dataclass(frozen=True)
class Directive:
    """Hold session ``session_id`` at video degrade level ``level`` or lower quality (0 releases the floor)."""

    session_id: str
    level: int
    reason: str


@dataclass(frozen=True)
class StageReport:
    """One model-deployment replica's view of itself: requests waiting in its queue, and the memory in use on its
    GPU as a fraction of the device (None without a GPU)."""

    deployment: str
    replica: str
    queue: int | None = None
    gpu_mem_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageReport:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class _Entry:
    summary: SessionSummary
    received_s: float
    floor: int
    directed_s: float | None = None  # when the latest directive was sent; eligible again after a later push


class ControllerPolicy:
    """Push summaries in, tick about once a second, directives out."""

    def __init__(self, budgets_ms: Mapping[str, float] = STAGE_P95_BUDGET_MS) -> None:
        self._budgets = dict(budgets_ms)
        self._sessions: dict[str, _Entry] = {}
        self._last_action_s: float | None = None
        self._calm_since_s: float | None = None
        self._pressure: tuple[Pressure, str] = ("neutral", "")
        self._stages: dict[tuple[str, str], tuple[StageReport, float]] = {}  # (deployment, replica) -> (report, when)

    @property
    def pressure(self) -> tuple[Pressure, str]:
        """The latest tick's verdict and what caused it (e.g. ``("saturated", "video.swap p95 31.0 ms")``)."""
        return self._pressure

    def floors(self) -> dict[str, int]:
        return {sid: e.floor for sid, e in self._sessions.items()}

    def summaries(self, now_s: float) -> list[SessionSummary]:
        """The latest summary of each session that is not stale."""
        return [e.summary for e in self._sessions.values() if now_s - e.received_s <= STALE_AFTER_S]

    def forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def push_stage(self, report: StageReport, now_s: float) -> None:
        """Record a deployment replica's queue and GPU memory (judged at the next tick)."""
        self._stages[(report.deployment, report.replica)] = (report, now_s)

    def stage_reports(self, now_s: float) -> list[StageReport]:
        """The fresh reports, one per deployment replica (stale ones are dropped)."""
        for key in [k for k, (_, t) in self._stages.items() if now_s - t > STAGE_REPORT_STALE_S]:
            del self._stages[key]
        return [report for report, _ in self._stages.values()]

    def stage_view(self, now_s: float) -> dict[str, Any]:
        """Per deployment: its busiest replica's queue and fullest GPU; and the fullest GPU overall (None if none)."""
        view: dict[str, dict[str, Any]] = {}
        for report in self.stage_reports(now_s):
            entry = view.setdefault(report.deployment, {"replicas": 0, "queue": None, "gpu_mem_fraction": None})
            entry["replicas"] += 1
            entry["queue"] = _max(entry["queue"], report.queue)
            entry["gpu_mem_fraction"] = _max(entry["gpu_mem_fraction"], report.gpu_mem_fraction)
        fractions = [e["gpu_mem_fraction"] for e in view.values() if e["gpu_mem_fraction"] is not None]
        return {"gpu_mem_fraction": max(fractions) if fractions else None, "stages": view}

    def push(self, summary: SessionSummary, now_s: float) -> Directive | None:
        """Record a session's summary; returns the floor again when the session does not hold what was sent."""
        entry = self._sessions.get(summary.session_id)
        if entry is None:  # new session, or a restarted controller: adopt what the session holds
            self._sessions[summary.session_id] = _Entry(summary, now_s, summary.floor)
            return None
        entry.summary, entry.received_s = summary, now_s
        if summary.floor != entry.floor:
            return Directive(summary.session_id, entry.floor, REASON_RESYNC)
        return None

    def tick(self, now_s: float) -> Directive | None:
        """Forget stale sessions, judge the pressure, and give at most one directive."""
        for sid in [sid for sid, e in self._sessions.items() if now_s - e.received_s > STALE_AFTER_S]:
            logger.debug("forgetting stale session %s", sid)
            del self._sessions[sid]
        entries = list(self._sessions.values())
        self._pressure = self._judge(entries, self.stage_reports(now_s))
        verdict, _ = self._pressure
        if verdict != "calm":
            self._calm_since_s = None
        elif self._calm_since_s is None:
            self._calm_since_s = now_s
        if self._last_action_s is not None and now_s - self._last_action_s < ACTION_COOLDOWN_S:
            return None
        if verdict == "saturated":
            return self._degrade(entries, now_s)
        if self._calm_since_s is not None and now_s - self._calm_since_s >= RESTORE_STABLE_S:
            return self._restore(entries, now_s)
        return None

    def _judge(self, entries: list[_Entry], reports: list[StageReport]) -> tuple[Pressure, str]:
        summaries = [e.summary for e in entries]
        if not summaries:
            return "neutral", "no sessions"
        calm = True
        for stage, budget in self._budgets.items():
            values = [s.stage_p95_ms[stage] for s in summaries if stage in s.stage_p95_ms]
            if not values:
                continue
            p95 = statistics.median(values)
            if p95 > budget:
                return "saturated", f"{stage} p95 {p95:.1f} ms > {budget:.1f} ms"
            calm = calm and p95 < CALM_FRACTION * budget
        queues = [(s.shared_queue, "shared queue") for s in summaries if s.shared_queue is not None]
        queues += [(r.queue, f"{r.deployment} queue") for r in reports if r.queue is not None]
        if queues and max(queues)[0] > QUEUE_SATURATED:
            value, where = max(queues)
            return "saturated", f"{where} {value} > {QUEUE_SATURATED}"
        calm = calm and (not queues or max(queues)[0] <= QUEUE_CALM)
        memory = [(s.gpu_mem_fraction, "GPU memory") for s in summaries if s.gpu_mem_fraction is not None]
        memory += [
            (r.gpu_mem_fraction, f"{r.deployment} GPU memory") for r in reports if r.gpu_mem_fraction is not None
        ]
        if memory and max(memory)[0] > GPU_MEM_SATURATED:
            value, where = max(memory)
            return "saturated", f"{where} {value:.2f} > {GPU_MEM_SATURATED}"
        calm = calm and (not memory or max(memory)[0] < GPU_MEM_CALM)
        return ("calm", "") if calm else ("neutral", "between bands")

    def _degrade(self, entries: list[_Entry], now_s: float) -> Directive | None:
        candidates = [
            e
            for e in entries
            if max(e.floor, e.summary.degrade_level) < e.summary.max_level
            and (e.directed_s is None or e.received_s > e.directed_s)
        ]
        if not candidates:
            return None
        target = max(candidates, key=lambda e: (e.summary.video_cost_ms_per_s, e.summary.session_id))
        return self._direct(target, max(target.floor, target.summary.degrade_level) + 1, now_s, REASON_SATURATED)

    def _restore(self, entries: list[_Entry], now_s: float) -> Directive | None:
        held = [e for e in entries if e.floor > 0]
        if not held:
            return None
        target = min(held, key=lambda e: (e.summary.video_cost_ms_per_s, e.summary.session_id))
        self._calm_since_s = now_s  # each restore needs its own stable period
        return self._direct(target, target.floor - 1, now_s, REASON_RESTORE)

    def _direct(self, entry: _Entry, level: int, now_s: float, reason: str) -> Directive:
        logger.debug("session %s: floor %d -> %d (%s)", entry.summary.session_id, entry.floor, level, reason)
        entry.floor, entry.directed_s = level, now_s
        self._last_action_s = now_s
        return Directive(entry.summary.session_id, level, reason)


def _max(current: float | None, value: float | None) -> float | None:
    if value is None:
        return current
    return value if current is None else max(current, value)
