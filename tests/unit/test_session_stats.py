"""The stats body: fps since the window's start (read without restarting it), and the session's state added in."""

from __future__ import annotations

from mirage_ray.metrics import SessionMetrics
from mirage_ray.session_stats import CONTROLLER_UNREACHABLE, AudioState, FpsWindow, build_stats_message

AUDIO = AudioState(chunk_ms=80, samples_in=3200, samples_out=1280, late_blocks=2, failed=True)
VIDEO = {"width": 512, "height": 512, "fps": 20.0, "jpeg_quality": 85}


def test_fps_window_rates_since_its_start_and_restarts_only_when_told() -> None:
    window = FpsWindow(10.0)
    assert window.rates(10.0, 5, 5) == (0.0, 0.0)  # no time has passed
    assert window.rates(12.0, 30, 21) == (15.0, 10.5)
    assert window.rates(12.0, 30, 21) == (15.0, 10.5)  # reading leaves the window alone
    window.restart(12.0, 30, 21)
    assert window.rates(13.0, 33, 22) == (3.0, 1.0)


def test_stats_message_adds_the_session_state_to_the_metrics_body() -> None:
    metrics = SessionMetrics("s1", 0.0)
    for _ in range(4):
        metrics.frame_in()
    window = FpsWindow(0.0)
    message = build_stats_message(
        metrics.stats(),
        window,
        2.0,
        audio=AUDIO,
        video=VIDEO,
        fail_closed={"video": 1, "audio": 0},
        stage_failures={"swap": 1},
        controller_ok=False,
    )
    added = ["fps_in", "fps_out", "runtime_ratio", "video", "fail_closed", "stage_failures", "controller"]
    assert message["type"] == "stats" and list(message) == ["type", *metrics.stats(), *added]
    assert (message["fps_in"], message["fps_out"]) == (2.0, 0.0)
    assert message["runtime_ratio"] == message["ratio"]["audio"]
    assert message["audio"] == {
        **metrics.stats()["audio"],
        "chunk_ms": 80,
        "samples_in": 3200,
        "samples_out": 1280,
        "late_blocks": 2,
        "failed": True,
    }
    assert message["video"] == VIDEO and message["stage_failures"] == {"swap": 1}
    assert message["fail_closed"] == {"video": 1, "audio": 0}
    assert message["controller"] == CONTROLLER_UNREACHABLE
    assert window.rates(2.0, 4, 0) == (2.0, 0.0)  # building the message did not restart the window
