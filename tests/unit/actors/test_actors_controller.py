"""The controller actor's admission bookkeeping, as a plain object (no Ray needed for its logic)."""

from __future__ import annotations

from actors.controller import ControllerActor


def summary(sid: str, level: int) -> dict:
    return {
        "session_id": sid,
        "t_s": 0.0,
        "stage_p95_ms": {},
        "video_ratio": 0.5,
        "audio_ratio": 0.2,
        "degrade_level": level,
        "max_level": 11,
        "floor": 0,
        "fps_out": 20.0,
        "video_cost_ms_per_s": 100.0,
    }


def test_a_released_session_no_longer_counts_even_if_a_late_push_arrives() -> None:
    controller = ControllerActor(capacity=2)
    assert controller.admit("a")["admitted"]
    controller.push(summary("a", level=4))  # a degraded session: nobody new comes in
    assert not controller.admit("b")["admitted"]
    controller.release("a")
    controller.push(summary("a", level=4))  # its last push, delivered after the release
    assert controller.admit("b")["admitted"]
    assert controller.load()["sessions"] == 1
