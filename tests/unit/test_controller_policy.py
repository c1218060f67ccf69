"""ControllerPolicy: costliest session degraded first, one per tick; restores in reverse after a calm period."""

from __future__ import annotations

from collections.abc import Iterable

from mirage_ray.controller_policy import (
    ACTION_COOLDOWN_S,
    RESTORE_STABLE_S,
    STAGE_REPORT_STALE_S,
    STALE_AFTER_S,
    ControllerPolicy,
    Directive,
    StageReport,
)
from mirage_ray.metrics import SessionSummary

SATURATED_MS = 30.0  # video.swap p95 over its 25 ms budget
NEUTRAL_MS = 22.0  # between 0.8 x budget and the budget
CALM_MS = 10.0


def summary(
    sid: str,
    cost: float,
    swap_p95: float = SATURATED_MS,
    level: int = 0,
    floor: int = 0,
    max_level: int = 7,
    shared_queue: int | None = None,
    gpu: float | None = None,
) -> SessionSummary:
    return SessionSummary(
        session_id=sid,
        t_s=0.0,
        stage_p95_ms={"video.swap": swap_p95, "video.detect": 5.0},
        video_ratio=0.8,
        audio_ratio=0.4,
        degrade_level=level,
        max_level=max_level,
        floor=floor,
        fps_out=20.0,
        video_cost_ms_per_s=cost,
        shared_queue=shared_queue,
        gpu_mem_fraction=gpu,
    )


def push_all(policy: ControllerPolicy, summaries: Iterable[SessionSummary], now_s: float) -> list[Directive]:
    return [d for s in summaries if (d := policy.push(s, now_s)) is not None]


def test_degrades_the_costliest_session_first_one_per_tick() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 100.0), summary("b", 300.0), summary("c", 200.0)], now_s=0.0)
    assert policy.tick(1.0) == Directive("b", 1, "saturated")
    assert policy.pressure[0] == "saturated"
    assert "video.swap" in policy.pressure[1]
    assert policy.tick(1.0 + ACTION_COOLDOWN_S - 0.1) is None  # cool-down: the first one's effect must show
    # b has not pushed since its directive, so its cost is not known yet: the next costliest goes
    assert policy.tick(1.0 + ACTION_COOLDOWN_S) == Directive("c", 1, "saturated")
    # b reports back at level 1, still the costliest: it goes one level further
    push_all(policy, [summary("b", 250.0, level=1, floor=1), summary("c", 150.0, level=1, floor=1)], now_s=5.0)
    push_all(policy, [summary("a", 100.0)], now_s=5.0)
    assert policy.tick(1.0 + 2 * ACTION_COOLDOWN_S) == Directive("b", 2, "saturated")


def test_restores_in_reverse_after_a_stable_calm_period() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 100.0), summary("b", 300.0)], now_s=0.0)
    assert policy.tick(0.0) == Directive("b", 1, "saturated")
    push_all(policy, [summary("a", 100.0), summary("b", 90.0, level=1, floor=1)], now_s=3.0)
    assert policy.tick(3.0) == Directive("a", 1, "saturated")
    calm = [summary("a", 80.0, CALM_MS, level=1, floor=1), summary("b", 90.0, CALM_MS, level=1, floor=1)]
    restores = []
    t = 4.0
    while t <= 4.0 + 2 * RESTORE_STABLE_S:
        push_all(policy, calm, now_s=t)
        if (d := policy.tick(t)) is not None:
            restores.append((t, d))
        t += 1.0
    # the cheapest (the last degraded here) first, each after its own 15 s of calm
    assert restores == [(19.0, Directive("a", 0, "restore")), (34.0, Directive("b", 0, "restore"))]


def test_neutral_band_neither_degrades_nor_counts_as_calm() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 100.0, CALM_MS, level=1, floor=1)], now_s=0.0)
    assert policy.tick(0.0) is None  # calm starts
    push_all(policy, [summary("a", 100.0, NEUTRAL_MS, level=1, floor=1)], now_s=10.0)
    assert policy.tick(10.0) is None
    assert policy.pressure[0] == "neutral"
    push_all(policy, [summary("a", 100.0, CALM_MS, level=1, floor=1)], now_s=11.0)
    for t in range(11, 26):
        push_all(policy, [summary("a", 100.0, CALM_MS, level=1, floor=1)], now_s=float(t))
        assert policy.tick(float(t)) is None
    assert policy.tick(26.0) == Directive("a", 0, "restore")


def test_median_across_sessions_ignores_one_slow_session() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 1.0, 100.0), summary("b", 1.0, CALM_MS), summary("c", 1.0, CALM_MS)], 0.0)
    assert policy.tick(0.0) is None
    assert policy.pressure[0] == "calm"


def test_shared_queue_and_gpu_memory_saturate() -> None:
    queue = ControllerPolicy()
    push_all(queue, [summary("a", 1.0, CALM_MS, shared_queue=9)], 0.0)
    assert queue.tick(0.0) == Directive("a", 1, "saturated")
    at_threshold = ControllerPolicy()
    push_all(at_threshold, [summary("a", 1.0, CALM_MS, shared_queue=8)], 0.0)
    assert at_threshold.tick(0.0) is None
    assert at_threshold.pressure[0] == "neutral"
    memory = ControllerPolicy()
    push_all(memory, [summary("a", 1.0, CALM_MS, gpu=0.91)], 0.0)
    assert memory.tick(0.0) == Directive("a", 1, "saturated")


def test_degrade_starts_from_the_level_the_session_reached_locally() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 1.0, level=3)], 0.0)
    assert policy.tick(0.0) == Directive("a", 4, "saturated")


def test_sessions_at_the_last_level_are_skipped() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 500.0, level=7), summary("b", 1.0, level=6, floor=6, max_level=6)], 0.0)
    assert policy.tick(0.0) is None


def test_stale_sessions_are_forgotten() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 900.0)], now_s=0.0)
    push_all(policy, [summary("b", 10.0)], now_s=1.0)
    assert {s.session_id for s in policy.summaries(STALE_AFTER_S)} == {"a", "b"}
    # at 5.5 s, a's summary is 5.5 s old: forgotten, so the cheaper b is the one degraded
    assert policy.tick(STALE_AFTER_S + 0.5) == Directive("b", 1, "saturated")
    assert set(policy.floors()) == {"b"}
    assert [s.session_id for s in policy.summaries(STALE_AFTER_S + 0.5)] == ["b"]


def test_forget_on_close() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 1.0)], 0.0)
    policy.forget("a")
    assert policy.tick(0.0) is None
    assert policy.floors() == {}


def test_a_session_not_holding_its_floor_is_told_again() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 1.0)], 0.0)
    assert policy.tick(0.0) == Directive("a", 1, "saturated")
    # the directive was lost: the next push still shows floor 0
    assert policy.push(summary("a", 1.0), 1.0) == Directive("a", 1, "resync")
    assert policy.push(summary("a", 1.0, level=1, floor=1), 2.0) is None


def test_a_restarted_controller_rebuilds_from_pushes_and_restores() -> None:
    fresh = ControllerPolicy()
    held = [summary("a", 100.0, CALM_MS, level=2, floor=2), summary("b", 50.0, CALM_MS, level=1, floor=1)]
    assert push_all(fresh, held, 0.0) == []  # adopts what the sessions hold
    assert fresh.floors() == {"a": 2, "b": 1}
    directives = []
    for t in range(0, 50):
        push_all(fresh, held, float(t))
        if (d := fresh.tick(float(t))) is not None:
            directives.append((t, d))
    assert directives[:2] == [(15, Directive("b", 0, "restore")), (30, Directive("a", 1, "restore"))]


def test_a_deployment_queue_report_degrades_the_costliest_then_restores_when_it_clears() -> None:
    policy = ControllerPolicy()
    sessions = [summary("cheap", 50.0, CALM_MS), summary("costly", 400.0, CALM_MS)]
    push_all(policy, sessions, 0.0)
    policy.push_stage(StageReport("Swapper", "r1", queue=1), 0.0)
    policy.push_stage(StageReport("Swapper", "r2", queue=12), 0.0)  # the busiest replica counts
    assert policy.tick(0.0) == Directive("costly", 1, "saturated")
    assert policy.pressure == ("saturated", "Swapper queue 12 > 8")
    policy.push_stage(StageReport("Swapper", "r2", queue=0), 1.0)  # the queue cleared
    now = 1.0
    while now < 1.0 + RESTORE_STABLE_S:
        push_all(policy, [summary("cheap", 50.0, CALM_MS), summary("costly", 400.0, CALM_MS, floor=1)], now)
        policy.push_stage(StageReport("Swapper", "r2", queue=0), now)
        assert policy.tick(now) is None
        now += 1.0
    push_all(policy, [summary("cheap", 50.0, CALM_MS), summary("costly", 400.0, CALM_MS, floor=1)], now)
    policy.push_stage(StageReport("Swapper", "r2", queue=0), now)
    assert policy.tick(now) == Directive("costly", 0, "restore")


def test_deployment_gpu_memory_saturates_and_stale_reports_drop_out() -> None:
    policy = ControllerPolicy()
    push_all(policy, [summary("a", 1.0, CALM_MS)], 0.0)
    policy.push_stage(StageReport("Enhancer", "r1", queue=0, gpu_mem_fraction=0.95), 0.0)
    assert policy.tick(0.0) == Directive("a", 1, "saturated")
    assert "Enhancer GPU memory 0.95" in policy.pressure[1]
    assert policy.stage_view(0.0) == {
        "gpu_mem_fraction": 0.95,
        "stages": {"Enhancer": {"replicas": 1, "queue": 0, "gpu_mem_fraction": 0.95}},
    }
    later = STAGE_REPORT_STALE_S + 0.1
    assert policy.stage_view(later) == {"gpu_mem_fraction": None, "stages": {}}
    push_all(policy, [summary("a", 1.0, CALM_MS, floor=1)], later)
    policy.tick(later)
    assert policy.pressure[0] == "calm"


def test_reports_without_a_gpu_give_no_memory_figure() -> None:
    policy = ControllerPolicy()
    policy.push_stage(StageReport.from_dict({"deployment": "Voice", "replica": "r", "queue": 0, "extra": 1}), 0.0)
    assert policy.stage_view(0.0)["gpu_mem_fraction"] is None
    assert StageReport.from_dict(StageReport("Voice", "r", 3, None).to_dict()) == StageReport("Voice", "r", 3)
