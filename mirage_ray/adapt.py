"""Adaptation policies: audio accept/fail and chunk size, the video degrade ladder, the FPS gate.

Pure state machines (STYLE.md guideline 5): numbers in, decision out. They count chunks and frames; capture times
come in as arguments; no clock, I/O or metrics sink. The session feeds them and applies what they decide.
Audio is never degraded for video: the video policy has no audio knob at all.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirage_ray.config import MirageSettings

logger = logging.getLogger(__name__)

# --- audio: the seed's numbers -----------------------------------------------------------------------------------
ACCEPT_BELOW = 0.65  # a chunk is accepted while runtime/real < this
FAIL_ABOVE = 0.80  # a chunk over this ratio counts toward an audio failure
FAIL_AFTER_CHUNKS = 40  # consecutive chunks over FAIL_ABOVE = audio failure (fallback to the cheapest converter)
GROW_ABOVE = 0.75  # grow chunk_ms when the mean ratio over the last GROW_WINDOW_CHUNKS is above this
GROW_WINDOW_CHUNKS = 40
SHRINK_BELOW = 0.55  # shrink chunk_ms when the mean ratio over the last SHRINK_WINDOW_CHUNKS is below this
SHRINK_WINDOW_CHUNKS = 120
# ours: a proposed chunk change waits for a silent block, at most this many chunks after it was proposed
APPLY_AT_LATEST_CHUNKS = 10
# chunk sizes the policy steps through (ms, 10-ms multiples); the configured start (the seed's 192 ms) and the
# configured [min, max] bounds are added, so with defaults the ladder is 80 120 160 192 240 320 400 480
CHUNK_LADDER_MS = (80, 120, 160, 240, 320, 400, 480)
# ours: video yields to audio (one degrade request) when this many of the last YIELD_WINDOW_CHUNKS chunks were over
# budget. One late chunk is scheduling noise that the playout margin absorbs and a lower video level would not have
# prevented; with small blocks (80 ms) single spikes came every few seconds and walked the ladder down to 5 fps.
YIELD_WINDOW_CHUNKS = 8
YIELD_MIN_OVER_CHUNKS = 3

REASON_ACCEPTED = "accepted"
REASON_OVER_BUDGET = "over_budget"
REASON_AUDIO_FAILURE = "audio_failure"
REASON_GROW = "grow"
REASON_SHRINK = "shrink"


@dataclass(frozen=True)
class AudioDecision:
    """What to do after one converted chunk. ``new_chunk_ms`` is set on the chunk where a change takes effect."""

    accepted: bool
    failed: bool
    fallback: bool
    new_chunk_ms: int | None
    reason: str
    video_yields: bool = False  # audio is over budget often enough that video should degrade one level


def _check_ratio(ratio: float) -> float:
    if not math.isfinite(ratio) or ratio < 0.0:
        raise ValueError(f"runtime/real ratio must be a finite number >= 0, got {ratio!r}")
    return float(ratio)


class AudioPolicy:
    """Audio accept/fail and chunk-size adaptation, one ``step`` per converted chunk.

    Growth and shrink step one rung along the ladder; the change is proposed, then applied on the next silent chunk
    (or ``APPLY_AT_LATEST_CHUNKS`` chunks later), after which the ratio windows start empty (hysteresis: one
    decision, not one per chunk). An audio failure cancels a pending change and clears the windows too.
    ``video_yields`` asks the video ladder for one degrade when ``YIELD_MIN_OVER_CHUNKS`` of the last
    ``YIELD_WINDOW_CHUNKS`` chunks were over budget (then that count starts again).

    A shrink buys latency only while the smaller block stays in budget: when a block below the configured start
    makes video yield, the policy grows back one rung (reason ``grow``, applied like any change) and never shrinks
    below that size again in this session, so the block does not trade the picture for a few ms of latency.
    """

    def __init__(
        self,
        chunk_ms: int = 192,
        min_chunk_ms: int = 80,
        max_chunk_ms: int = 480,
        ladder_ms: tuple[int, ...] = CHUNK_LADDER_MS,
    ) -> None:
        if not 0 < min_chunk_ms <= chunk_ms <= max_chunk_ms:
            raise ValueError(
                f"need 0 < min_chunk_ms <= chunk_ms <= max_chunk_ms, got {min_chunk_ms}, {chunk_ms}, {max_chunk_ms}"
            )
        rungs = {v for v in ladder_ms if min_chunk_ms <= v <= max_chunk_ms} | {min_chunk_ms, chunk_ms, max_chunk_ms}
        self._ladder = tuple(sorted(rungs))
        self._chunk_ms = chunk_ms
        self._start_ms = chunk_ms
        self._shrink_floor_ms = min_chunk_ms  # raised when a shrunk block made video yield
        self._ratios: deque[float] = deque(maxlen=max(GROW_WINDOW_CHUNKS, SHRINK_WINDOW_CHUNKS))
        self._over_run = 0
        self._fell_back = False
        self._pending: tuple[int, str] | None = None  # (chunk_ms, reason)
        self._recent_over: deque[bool] = deque(maxlen=YIELD_WINDOW_CHUNKS)
        self._pending_age = 0

    @classmethod
    def from_settings(cls, settings: MirageSettings) -> AudioPolicy:
        return cls(settings.chunk_ms, settings.min_chunk_ms, settings.max_chunk_ms)

    @property
    def chunk_ms(self) -> int:
        return self._chunk_ms

    @property
    def ladder_ms(self) -> tuple[int, ...]:
        return self._ladder

    @property
    def pending_chunk_ms(self) -> int | None:
        return None if self._pending is None else self._pending[0]

    def step(self, ratio: float, *, is_silence: bool = False) -> AudioDecision:
        """Record one chunk's runtime/real ratio (processing time / chunk duration) and decide."""
        ratio = _check_ratio(ratio)
        accepted = ratio < ACCEPT_BELOW
        base_reason = REASON_ACCEPTED if accepted else REASON_OVER_BUDGET
        self._recent_over.append(not accepted)
        yields = sum(self._recent_over) >= YIELD_MIN_OVER_CHUNKS
        if yields:  # one request per episode
            self._recent_over.clear()
            self._undo_shrink()
        self._over_run = self._over_run + 1 if ratio > FAIL_ABOVE else 0
        if self._over_run >= FAIL_AFTER_CHUNKS:
            fallback = not self._fell_back
            logger.debug("audio failure after %d chunks over %.2f (fallback=%s)", self._over_run, FAIL_ABOVE, fallback)
            self._fell_back = True
            self._over_run = 0
            self._pending = None
            self._ratios.clear()
            return AudioDecision(accepted, True, fallback, None, REASON_AUDIO_FAILURE, yields)
        if self._pending is None:
            self._ratios.append(ratio)
            self._pending = self._propose()
            self._pending_age = 0
        else:
            self._pending_age += 1
        if self._pending is not None and (is_silence or self._pending_age >= APPLY_AT_LATEST_CHUNKS):
            new_chunk_ms, reason = self._pending
            logger.debug("audio chunk %d -> %d ms (%s)", self._chunk_ms, new_chunk_ms, reason)
            self._chunk_ms = new_chunk_ms
            self._pending = None
            self._ratios.clear()
            return AudioDecision(accepted, False, False, new_chunk_ms, reason, yields)
        return AudioDecision(accepted, False, False, None, base_reason, yields)

    def _undo_shrink(self) -> None:
        """Video had to yield at a block that a shrink made: grow back one rung and shrink no lower again."""
        if self._chunk_ms >= self._start_ms:
            return
        bigger = self._ladder[self._ladder.index(self._chunk_ms) + 1]
        self._shrink_floor_ms = max(self._shrink_floor_ms, bigger)
        if self._pending is None or self._pending[0] < bigger:
            logger.debug("audio chunk %d ms made video yield: back to %d ms", self._chunk_ms, bigger)
            self._pending = (bigger, REASON_GROW)
            self._pending_age = 0

    def at_silence(self) -> tuple[int, str] | None:
        """A silent (gated) block: apply a pending chunk change now, without recording a ratio.

        Returns (new chunk_ms, reason) when a change was pending.
        """
        if self._pending is None:
            return None
        new_chunk_ms, reason = self._pending
        logger.debug("audio chunk %d -> %d ms at silence (%s)", self._chunk_ms, new_chunk_ms, reason)
        self._chunk_ms = new_chunk_ms
        self._pending = None
        self._ratios.clear()
        return new_chunk_ms, reason

    def _propose(self) -> tuple[int, str] | None:
        ratios = list(self._ratios)
        rung = self._ladder.index(self._chunk_ms)
        if len(ratios) >= GROW_WINDOW_CHUNKS and _mean(ratios[-GROW_WINDOW_CHUNKS:]) > GROW_ABOVE:
            return (self._ladder[rung + 1], REASON_GROW) if rung + 1 < len(self._ladder) else None
        if len(ratios) >= SHRINK_WINDOW_CHUNKS and _mean(ratios[-SHRINK_WINDOW_CHUNKS:]) < SHRINK_BELOW:
            can_shrink = rung > 0 and self._ladder[rung - 1] >= self._shrink_floor_ms
            return (self._ladder[rung - 1], REASON_SHRINK) if can_shrink else None
        return None


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


# --- video degrade ladder ----------------------------------------------------------------------------------------
JPEG_QUALITY_STEP = 10  # step 1: 85 -> 75 -> 65 -> 55
JPEG_QUALITY_FLOOR = 55
FPS_STEP = 2.5  # step 2: 20 -> 17.5 -> 15
FPS_FLOOR = 15.0
RESOLUTION_STEPS_PX = (384, 256)  # step 3: max side 512 -> 384 -> 256
# ours, below the seed's floor (audio first): step 4, a few fps at the smallest size; step 5, video paused
LOW_FPS_STEPS = (10.0, 5.0, 2.0)
PAUSED_PROBE_FPS = 1.0  # the rate a paused directive asks for (frames are dropped unprocessed while paused)
RESTORE_FROM_PAUSE_TICKS = 50  # consecutive in-budget audio blocks (~10 s at 192 ms) before video resumes
DEGRADE_WINDOW_FRAMES = 30  # degrade when the mean ratio over the last 30 processed frames ...
DEGRADE_ABOVE = 1.0  # ... is above this (processing slower than the frame interval)
REDEGRADE_COOLDOWN_FRAMES = 30  # frames after any change before the next degrade
RESTORE_AFTER_FRAMES = 300  # the seed: restore one level after 300 consecutive stable frames ...
RESTORE_BELOW = 0.60  # ... each with the mean ratio over the last DEGRADE_WINDOW_FRAMES < 0.60
# ours, against flapping (e.g. 256 -> 384 px doubles the work): a load-driven degrade back to the level just left
# within RESTORE_PROBATION_FRAMES of a restore doubles the wait for the next restore (capped); a restore that
# survives probation resets the wait to RESTORE_AFTER_FRAMES
RESTORE_PROBATION_FRAMES = 300
RESTORE_AFTER_MAX_FRAMES = 4800

REASON_STEADY = "steady"
REASON_OVERLOAD = "overload"
REASON_RESTORE = "restore"
REASON_CONTROLLER = "controller"
REASON_REQUEST_PREFIX = "request:"


@dataclass(frozen=True)
class Level:
    """One rung of the degrade ladder; ``index`` 0 is full quality."""

    index: int
    jpeg_quality: int
    fps: float
    max_side: int
    width: int
    height: int
    paused: bool = False  # video is not processed at all (frames dropped) so that audio stays in budget

    def as_directive(self) -> dict[str, Any]:
        """The protocol's ``video: {width, height, fps, jpeg_quality}`` (plus ``paused: true`` on the last rung)."""
        directive: dict[str, Any] = {
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "jpeg_quality": self.jpeg_quality,
        }
        if self.paused:
            directive["paused"] = True
        return directive


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def build_ladder(width: int = 512, height: int = 512, fps: float = 20.0, jpeg_quality: int = 85) -> tuple[Level, ...]:
    """Level 0 is the configured video; then JPEG quality, then FPS toward 15, then resolution, then a few fps,
    then paused, in that order."""
    if width <= 0 or height <= 0 or fps <= 0 or not 0 < jpeg_quality <= 100:
        raise ValueError(f"bad base video {width}x{height} @ {fps} fps, quality {jpeg_quality}")
    side = max(width, height)
    rungs: list[tuple[int, float, int]] = [(jpeg_quality, fps, side)]
    quality = jpeg_quality
    while quality - JPEG_QUALITY_STEP >= JPEG_QUALITY_FLOOR:
        quality -= JPEG_QUALITY_STEP
        rungs.append((quality, fps, side))
    rate = fps
    while rate > FPS_FLOOR:
        rate = max(FPS_FLOOR, rate - FPS_STEP)
        rungs.append((quality, rate, side))
    rungs.extend((quality, rate, px) for px in RESOLUTION_STEPS_PX if px < side)
    smallest = rungs[-1][2]
    rungs.extend((quality, low, smallest) for low in LOW_FPS_STEPS if low < rate)
    levels = [Level(i, q, f, s, _even(width * s / side), _even(height * s / side)) for i, (q, f, s) in enumerate(rungs)]
    last = levels[-1]
    levels.append(Level(len(levels), quality, PAUSED_PROBE_FPS, smallest, last.width, last.height, paused=True))
    return tuple(levels)


@dataclass(frozen=True)
class VideoDecision:
    """The level to run at after one frame; ``changed`` when it differs from the frame before."""

    level: Level
    changed: bool
    reason: str


class VideoDegradePolicy:
    """Video degrade ladder with restore, one ``step`` per processed frame (dropped frames are not stepped).

    The per-frame ratio is processing time / frame interval at the current level's fps. Degrade one level when the
    mean ratio over the last 30 frames is > 1.0, or on ``request_degrade`` (sync, controller), never sooner than
    ``REDEGRADE_COOLDOWN_FRAMES`` after a change (a request made during the cool-down waits for its end). Restore one
    level after ``RESTORE_AFTER_FRAMES`` consecutive frames with ratio < 0.60. Any change clears the window and
    restarts both counters. ``force_level`` holds a floor that local restores do not go below.
    """

    def __init__(self, ladder: tuple[Level, ...] | None = None) -> None:
        self._ladder = ladder if ladder is not None else build_ladder()
        if not self._ladder or [lv.index for lv in self._ladder] != list(range(len(self._ladder))):
            raise ValueError("ladder must be non-empty with indices 0..n-1 in order")
        self._index = 0
        self._floor = 0
        self._ratios: deque[float] = deque(maxlen=DEGRADE_WINDOW_FRAMES)
        self._since_change = REDEGRADE_COOLDOWN_FRAMES  # no cool-down at start
        self._stable = 0
        self._request: str | None = None
        self._restore_after = RESTORE_AFTER_FRAMES
        self._restored_from: int | None = None  # level left by the latest restore, while on probation
        self._since_restore = 0
        self._paused_ok = 0  # consecutive in-budget audio blocks while paused

    @classmethod
    def from_settings(cls, settings: MirageSettings) -> VideoDegradePolicy:
        return cls(build_ladder(settings.video_width, settings.video_height, settings.video_fps, settings.jpeg_quality))

    @property
    def level(self) -> Level:
        return self._ladder[self._index]

    @property
    def ladder(self) -> tuple[Level, ...]:
        return self._ladder

    @property
    def floor(self) -> int:
        return self._floor

    @property
    def restore_after_frames(self) -> int:
        return self._restore_after

    def frame_interval_ms(self) -> float:
        return 1000.0 / self.level.fps

    def request_degrade(self, reason: str) -> None:
        """Ask for one level down at the next step allowed by the cool-down (requests made meanwhile merge)."""
        if self._request is None:
            self._request = reason

    def force_level(self, index: int) -> VideoDecision:
        """Controller directive: run at ``index`` or lower quality, and hold ``index`` as a floor for restores.

        A higher index degrades now; a lower one only lowers the floor, so restores walk down at the local pace.
        """
        if not 0 <= index < len(self._ladder):
            raise ValueError(f"level index must be in [0, {len(self._ladder) - 1}], got {index}")
        self._floor = index
        if index > self._index:
            return self._move(index, REASON_CONTROLLER)
        return VideoDecision(self.level, False, REASON_CONTROLLER)

    def release_floor(self) -> None:
        """Drop the controller's floor (e.g. the controller cannot be reached)."""
        self._floor = 0

    def step(self, processing_ms: float) -> VideoDecision:
        """Record one processed frame's processing time (ms) and decide the level for the next one."""
        ratio = _check_ratio(processing_ms) / self.frame_interval_ms()
        self._ratios.append(ratio)
        self._since_change += 1
        # stable = the recent mean is under the bar: the detector's periodic frame (every 5th) costs more than a
        # tracked one, so judging single frames would never see 300 in a row on a loaded machine
        self._stable = self._stable + 1 if _mean(list(self._ratios)) < RESTORE_BELOW else 0
        self._tick_probation()
        top = len(self._ladder) - 1
        if self._since_change >= REDEGRADE_COOLDOWN_FRAMES:
            if self._request is not None:
                reason, self._request = REASON_REQUEST_PREFIX + self._request, None
                if self._index < top:
                    return self._degrade(reason)
            overloaded = len(self._ratios) == DEGRADE_WINDOW_FRAMES and _mean(list(self._ratios)) > DEGRADE_ABOVE
            if overloaded and self._index < top:
                return self._degrade(REASON_OVERLOAD)
        if self._stable >= self._restore_after and self._index > self._floor:
            self._restored_from, self._since_restore = self._index, 0
            return self._move(self._index - 1, REASON_RESTORE)
        return VideoDecision(self.level, False, REASON_STEADY)

    def tick_paused(self, audio_in_budget: bool) -> VideoDecision:
        """While paused no frame is processed, so the audio decides: resume one level after
        ``RESTORE_FROM_PAUSE_TICKS`` consecutive in-budget blocks (above the controller's floor)."""
        if not self.level.paused:
            return VideoDecision(self.level, False, REASON_STEADY)
        self._paused_ok = self._paused_ok + 1 if audio_in_budget else 0
        if self._paused_ok >= RESTORE_FROM_PAUSE_TICKS and self._index > self._floor:
            self._paused_ok = 0
            return self._move(self._index - 1, REASON_RESTORE)
        return VideoDecision(self.level, False, REASON_STEADY)

    def _tick_probation(self) -> None:
        if self._restored_from is None:
            return
        self._since_restore += 1
        if self._since_restore >= RESTORE_PROBATION_FRAMES:
            self._restored_from, self._restore_after = None, RESTORE_AFTER_FRAMES

    def _degrade(self, reason: str) -> VideoDecision:
        if self._restored_from == self._index + 1:  # the restore we just did did not hold
            self._restore_after = min(2 * self._restore_after, RESTORE_AFTER_MAX_FRAMES)
            self._restored_from = None
        return self._move(self._index + 1, reason)

    def _move(self, index: int, reason: str) -> VideoDecision:
        logger.debug("video level %d -> %d (%s)", self._index, index, reason)
        self._index = index
        self._ratios.clear()
        self._since_change = 0
        self._stable = 0
        return VideoDecision(self.level, True, reason)


# --- FPS gate ----------------------------------------------------------------------------------------------------
DROP_FPS_GATE = "fps_gate"
# a frame up to this fraction of an interval early is still taken, so capture jitter at the target rate drops nothing
FPS_GATE_EARLY_FRACTION = 0.25


class FpsGate:
    """Process or drop each frame so the processed rate meets the target fps (never exceeds it in the long run).

    Each taken frame moves the next due time one interval on; a frame that comes after a gap of more than one
    interval restarts the schedule (no burst to catch up), and so does a capture time that goes backwards.
    """

    def __init__(self) -> None:
        self._next_due_us: int | None = None
        self._last_us: int | None = None

    def admit(self, capture_us: int, fps: float) -> bool:
        """True: process the frame; False: drop it (reason ``DROP_FPS_GATE``)."""
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"target fps must be > 0, got {fps!r}")
        capture_us = int(capture_us)
        interval_us = 1e6 / fps
        went_back = self._last_us is not None and capture_us < self._last_us
        self._last_us = capture_us
        due = self._next_due_us
        if due is None or went_back or capture_us - due >= interval_us:
            self._next_due_us = capture_us + round(interval_us)
            return True
        if capture_us >= due - FPS_GATE_EARLY_FRACTION * interval_us:
            self._next_due_us = due + round(interval_us)
            return True
        return False
