"""A session's ``stats`` body: the metrics' counts and timings, the fps window, and the session's own state.

The session sends it as its ``stats`` message, and each message starts a new fps window. ``GET /v1/stats`` shows
the same body and leaves the window alone, so observers change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mirage_ray import protocol

CONTROLLER_OK = "ok"
CONTROLLER_UNREACHABLE = "unreachable (local rules)"
FPS_DECIMALS = 2


class FpsWindow:
    """Frames in and out per second since the window started (the session's previous ``stats`` message)."""

    def __init__(self, now: float) -> None:
        self._start = (now, 0, 0)  # (time, frames in, frames out)

    def rates(self, now: float, frames_in: int, frames_out: int) -> tuple[float, float]:
        """(fps in, fps out) since the window started; 0.0 when no time has passed."""
        started, start_in, start_out = self._start
        elapsed = now - started
        if elapsed <= 0:
            return 0.0, 0.0
        return (
            round((frames_in - start_in) / elapsed, FPS_DECIMALS),
            round((frames_out - start_out) / elapsed, FPS_DECIMALS),
        )

    def restart(self, now: float, frames_in: int, frames_out: int) -> None:
        self._start = (now, frames_in, frames_out)


@dataclass(frozen=True)
class AudioState:
    """What the session adds to the metrics' audio counts."""

    chunk_ms: int
    samples_in: int
    samples_out: int
    late_blocks: int
    failed: bool


def build_stats_message(
    metrics: dict[str, Any],
    fps: FpsWindow,
    now: float,
    *,
    audio: AudioState,
    video: dict[str, Any],
    fail_closed: Mapping[str, int],
    stage_failures: Mapping[str, int],
    controller_ok: bool,
) -> dict[str, Any]:
    """The ``stats`` message: ``metrics`` (a fresh ``SessionMetrics.stats()`` body, extended in place) with the fps
    in and out at ``now`` (the window is only read), the voice's runtime/real (the seed's ratio), the audio state, the
    video level, the fail-closed and stage-failure counts, and whether the controller answers."""
    metrics["fps_in"], metrics["fps_out"] = fps.rates(now, metrics["frames"]["in"], metrics["frames"]["out"])
    metrics["runtime_ratio"] = metrics["ratio"]["audio"]
    metrics["audio"].update(
        chunk_ms=audio.chunk_ms,
        samples_in=audio.samples_in,
        samples_out=audio.samples_out,
        late_blocks=audio.late_blocks,
        failed=audio.failed,
    )
    metrics["video"] = video
    metrics["fail_closed"] = dict(fail_closed)
    metrics["stage_failures"] = dict(stage_failures)
    metrics["controller"] = CONTROLLER_OK if controller_ok else CONTROLLER_UNREACHABLE
    return protocol.stats(metrics)
