"""AvSync: the 150 ms drop boundary, one degrade request per lead episode, the drift soft-skip after 120."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_ray.sync import (
    LATE_US,
    LEAD_REARM_US,
    REALIGN_AFTER_LATE_FRAMES,
    AvSync,
    SyncDecision,
)

CHUNK_US = 192_000


def synced(head_us: int = 10_000_000) -> AvSync:
    sync = AvSync()
    sync.on_audio(head_us - CHUNK_US, CHUNK_US)
    assert sync.head_us == head_us
    return sync


def test_seed_numbers() -> None:
    assert (LATE_US, REALIGN_AFTER_LATE_FRAMES) == (150_000, 120)


def test_everything_is_kept_before_any_audio() -> None:
    sync = AvSync()
    decisions = [sync.on_video(t) for t in (-(2**63), 0, 2**63 - 1)]
    assert all(d == SyncDecision(True, "no_audio") for d in decisions)


def test_drop_boundary_is_strictly_more_than_150_ms_behind() -> None:
    head = 10_000_000
    sync = synced(head)
    at = sync.on_video(head - 150_000)
    assert (at.keep, at.reason, at.lag_ms) == (True, "ok", 150.0)
    late = sync.on_video(head - 150_001)
    assert (late.keep, late.reason) == (False, "late")
    assert late.lag_ms == pytest.approx(150.001)


def test_video_ahead_of_audio_is_kept() -> None:
    head = 10_000_000
    decision = synced(head).on_video(head + 2_000_000)
    assert decision.keep
    assert decision.lag_ms == -2000.0


def test_the_head_is_the_newest_chunk_end() -> None:
    sync = AvSync()
    sync.on_audio(1_000_000, 192_000)
    sync.on_audio(1_192_000, 192_000)
    assert sync.head_us == 1_384_000
    assert not sync.on_video(1_384_000 - 150_001).keep


def test_one_degrade_request_per_lead_episode_with_hysteresis() -> None:
    head = 10_000_000
    sync = synced(head)
    first = [sync.on_video(head - 200_000) for _ in range(5)]
    assert [d.degrade_request for d in first] == [True, False, False, False, False]
    # back in the window but still more than 75 ms behind: the episode goes on
    assert sync.on_video(head - 100_000).keep
    assert not sync.on_video(head - 200_000).degrade_request
    # within 75 ms: the episode ends, the next lead asks again
    assert sync.on_video(head - LEAD_REARM_US).keep
    assert sync.on_video(head - 200_000).degrade_request


def test_lag_hovering_at_150_ms_asks_once() -> None:
    head = 10_000_000
    sync = synced(head)
    requests = [sync.on_video(head - (149_000 if i % 2 else 151_000)).degrade_request for i in range(1000)]
    assert sum(requests) == 1


def test_sustained_drift_soft_skips_after_120_late_frames() -> None:
    head = 10_000_000
    sync = synced(head)
    decisions = [sync.on_video(head - 300_000) for _ in range(REALIGN_AFTER_LATE_FRAMES)]
    assert all((d.keep, d.reason) == (False, "late") for d in decisions)
    assert not sync.realigning
    skip = sync.on_video(head - 300_000)  # the 121st consecutive late frame
    assert (skip.keep, skip.reason) == (False, "realign")
    assert sync.realigning
    more = [sync.on_video(head - 400_000) for _ in range(50)]
    assert all((d.keep, d.reason) == (False, "realign") for d in more)
    # a frame within the window ends the skip and resets the drift counter
    assert sync.on_video(head - 10_000).keep
    assert sync.late_run == 0
    assert sync.on_video(head - 300_000).reason == "late"


def test_audio_is_never_touched_by_realign() -> None:
    sync = synced(10_000_000)
    for _ in range(500):
        sync.on_video(0)
    assert sync.head_us == 10_000_000  # the head only moves with audio


@pytest.mark.parametrize("origin", [-(2**63), -1, 0, 2**62, 2**63 - 1 - 20_000_000])
def test_any_int64_clock_origin_works(origin: int) -> None:
    sync = AvSync()
    sync.on_audio(np.int64(origin + 1_000_000), np.int64(CHUNK_US))
    head = origin + 1_000_000 + CHUNK_US
    assert sync.on_video(np.int64(head - 150_000)).keep
    late = sync.on_video(np.int64(head - 150_001))
    assert (late.keep, late.reason) == (False, "late")


def test_extreme_distance_between_audio_and_video_clock_values() -> None:
    sync = AvSync()
    sync.on_audio(np.int64(2**63 - 1 - CHUNK_US), np.int64(CHUNK_US))
    decision = sync.on_video(np.int64(-(2**63)))  # would overflow in int64 arithmetic
    assert not decision.keep
    assert decision.lag_ms == pytest.approx((2**64 - 1) / 1000)


def test_refuses_bad_inputs() -> None:
    sync = AvSync()
    with pytest.raises(TypeError, match="microseconds"):
        sync.on_audio(1.5, 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int64"):
        sync.on_video(2**63)
    with pytest.raises(ValueError, match="duration_us"):
        sync.on_audio(0, -1)
