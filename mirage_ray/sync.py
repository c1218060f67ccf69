"""Audio-master A/V sync: keep or drop each video frame against the audio head.

Audio is the master clock and is never stretched: video follows it by dropping. The audio head is the end
(capture time + duration) of the newest audio chunk processed, on the client's clock; video capture times are on
the same clock. Clocks start anywhere: any int64 microsecond value works, and all arithmetic is on Python ints.
Pure state machine: capture times in, decision out.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

LATE_MS = 150  # the seed: a frame more than this behind the audio head is dropped, and a video degrade requested
LATE_US = LATE_MS * 1000
# ours: a degrade-request episode ends (and may request again) once a kept frame is back within this of the head
LEAD_REARM_MS = 75
LEAD_REARM_US = LEAD_REARM_MS * 1000
REALIGN_AFTER_LATE_FRAMES = 120  # the seed: more than this many consecutive late frames = sustained drift

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

KEEP_NO_AUDIO = "no_audio"
KEEP_IN_SYNC = "ok"
DROP_LATE = "late"
DROP_REALIGN = "realign"


@dataclass(frozen=True)
class SyncDecision:
    """``keep`` or drop the frame; ``degrade_request`` once per lead episode; ``lag_ms`` behind the head (None
    before any audio; negative when video is ahead)."""

    keep: bool
    reason: str
    degrade_request: bool = False
    lag_ms: float | None = None


def _int64(name: str, value: int) -> int:
    try:
        number = operator.index(value)  # ints and numpy integers; refuses floats
    except TypeError as exc:
        raise TypeError(f"{name} must be an integer number of microseconds, got {type(value).__name__}") from exc
    if not INT64_MIN <= number <= INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {number}")
    return number


class AvSync:
    """Drops video that is late against the audio head; re-aligns after sustained drift by skipping video.

    A frame more than ``LATE_MS`` behind the head is dropped (``late``); the first of an episode also asks for a
    video degrade. After more than ``REALIGN_AFTER_LATE_FRAMES`` consecutive late frames the drops are labelled
    ``realign``: the session should skip its queued video until a frame within the window arrives, which ends the
    drift (the counter restarts).
    """

    def __init__(self) -> None:
        self._head_us: int | None = None
        self._late_run = 0
        self._lead_episode = False

    @property
    def head_us(self) -> int | None:
        return self._head_us

    @property
    def late_run(self) -> int:
        return self._late_run

    @property
    def realigning(self) -> bool:
        return self._late_run > REALIGN_AFTER_LATE_FRAMES

    def on_audio(self, capture_us: int, duration_us: int) -> None:
        """The newest processed audio chunk: its capture time and duration (µs)."""
        capture_us = _int64("capture_us", capture_us)
        duration_us = _int64("duration_us", duration_us)
        if duration_us < 0:
            raise ValueError(f"duration_us must be >= 0, got {duration_us}")
        self._head_us = capture_us + duration_us

    def on_video(self, capture_us: int) -> SyncDecision:
        """Keep or drop one video frame by its capture time (µs, client clock)."""
        capture_us = _int64("capture_us", capture_us)
        if self._head_us is None:
            return SyncDecision(True, KEEP_NO_AUDIO)
        lag_us = self._head_us - capture_us
        lag_ms = lag_us / 1000.0
        if lag_us > LATE_US:
            self._late_run += 1
            request = not self._lead_episode
            self._lead_episode = True
            if self._late_run == REALIGN_AFTER_LATE_FRAMES + 1:
                logger.debug("video drift: %d late frames, skipping video to re-align", self._late_run)
            reason = DROP_REALIGN if self.realigning else DROP_LATE
            return SyncDecision(False, reason, request, lag_ms)
        self._late_run = 0
        if lag_us <= LEAD_REARM_US:
            self._lead_episode = False
        return SyncDecision(True, KEEP_IN_SYNC, False, lag_ms)
