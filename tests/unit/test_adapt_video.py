"""VideoDegradePolicy (ladder, degrade, restore, hysteresis, controller floor) and FpsGate, with scripted inputs.

Frame processing times are chosen so ratios are exact in binary at 20 fps (50 ms a frame): 55 ms = 1.1,
50 ms = 1.0, 30 ms = 0.6, 25 ms = 0.5, 37.5 / 62.5 ms = 0.75 / 1.25.
"""

from __future__ import annotations

import itertools
import random

import pytest

from mirage_ray.adapt import (
    DEGRADE_WINDOW_FRAMES,
    REDEGRADE_COOLDOWN_FRAMES,
    RESTORE_AFTER_FRAMES,
    RESTORE_AFTER_MAX_FRAMES,
    RESTORE_BELOW,
    RESTORE_FROM_PAUSE_TICKS,
    FpsGate,
    Level,
    VideoDecision,
    VideoDegradePolicy,
    build_ladder,
)
from mirage_ray.config import MirageSettings

OVER_MS = 55.0
HEAVY_MS = 120.0  # over budget at every level (ratio 1.8 at 15 fps)
STABLE_MS = 25.0


def feed(policy: VideoDegradePolicy, ms: float, n: int) -> list[VideoDecision]:
    return [policy.step(ms) for _ in range(n)]


def changes(decisions: list[VideoDecision]) -> list[tuple[int, int, str]]:
    """(frame number from 1, new level index, reason) for each change."""
    return [(i + 1, d.level.index, d.reason) for i, d in enumerate(decisions) if d.changed]


def degraded_to(index: int) -> VideoDegradePolicy:
    policy = VideoDegradePolicy()
    for _ in range(index):
        feed(policy, HEAVY_MS, DEGRADE_WINDOW_FRAMES)
    assert policy.level.index == index
    return policy


def test_seed_numbers() -> None:
    assert (RESTORE_AFTER_FRAMES, RESTORE_BELOW) == (300, 0.60)


def test_default_ladder_order_quality_then_fps_then_resolution() -> None:
    rungs = [(lv.jpeg_quality, lv.fps, lv.max_side) for lv in build_ladder()]
    assert rungs == [
        (85, 20.0, 512),
        (75, 20.0, 512),
        (65, 20.0, 512),
        (55, 20.0, 512),
        (55, 17.5, 512),
        (55, 15.0, 512),
        (55, 15.0, 384),
        (55, 15.0, 256),
        (55, 10.0, 256),  # below the seed's floor: a few fps ...
        (55, 5.0, 256),
        (55, 2.0, 256),
        (55, 1.0, 256),  # ... then paused (1 fps is the rate the paused directive asks for)
    ]
    assert [lv.paused for lv in build_ladder()] == [False] * 11 + [True]


def test_level_directive_is_the_protocol_video_object() -> None:
    assert build_ladder()[6].as_directive() == {"width": 384, "height": 384, "fps": 15.0, "jpeg_quality": 55}
    wide = build_ladder(640, 480, 30.0, 90)
    assert [lv.fps for lv in wide if lv.jpeg_quality == 60][:2] == [30.0, 27.5]
    assert (wide[-6].width, wide[-6].height) == (384, 288)
    assert (wide[-5].width, wide[-5].height) == (256, 192)
    assert (wide[-5].fps, wide[-5].jpeg_quality) == (15.0, 60)
    assert wide[-1].as_directive() == {"width": 256, "height": 192, "fps": 1.0, "jpeg_quality": 60, "paused": True}


def test_from_settings_builds_the_ladder_from_the_configured_video() -> None:
    settings = MirageSettings(video_fps=15.0, jpeg_quality=75, context_ms=400, chunk_ms=200)
    rungs = [(lv.jpeg_quality, lv.fps, lv.max_side) for lv in VideoDegradePolicy.from_settings(settings).ladder]
    assert rungs[:5] == [(75, 15.0, 512), (65, 15.0, 512), (55, 15.0, 512), (55, 15.0, 384), (55, 15.0, 256)]
    assert rungs[5:] == [(55, 10.0, 256), (55, 5.0, 256), (55, 2.0, 256), (55, 1.0, 256)]


def test_degrades_on_the_30th_overloaded_frame_then_cools_down() -> None:
    policy = VideoDegradePolicy()
    decisions = feed(policy, OVER_MS, 4 * DEGRADE_WINDOW_FRAMES)
    assert changes(decisions) == [(30, 1, "overload"), (60, 2, "overload"), (90, 3, "overload"), (120, 4, "overload")]
    assert policy.level.fps == 17.5


def test_mean_exactly_1_never_degrades_even_when_hovering() -> None:
    steady = VideoDegradePolicy()
    assert changes(feed(steady, 50.0, 2000)) == []
    hovering = VideoDegradePolicy()
    assert changes([hovering.step(37.5 if i % 2 else 62.5) for i in range(2000)]) == []


def test_constant_load_settles_without_oscillation() -> None:
    policy = VideoDegradePolicy()
    # 52 ms: ratio 1.04 at 20 fps through the JPEG steps, 0.91 at 17.5 fps: settles there, never restores
    decisions = feed(policy, 52.0, 10_000)
    assert [c[0] for c in changes(decisions)] == [30, 60, 90, 120]
    assert policy.level.index == 4


def test_restores_on_the_300th_stable_frame_not_the_299th() -> None:
    policy = degraded_to(1)
    assert changes(feed(policy, STABLE_MS, RESTORE_AFTER_FRAMES - 1)) == []
    last = policy.step(STABLE_MS)
    assert (last.changed, last.level.index, last.reason) == (True, 0, "restore")


def test_restore_walks_back_one_level_per_300_frames_in_reverse_order() -> None:
    policy = degraded_to(7)
    decisions = feed(policy, 10.0, 7 * RESTORE_AFTER_FRAMES)
    assert changes(decisions) == [(300 * k, 7 - k, "restore") for k in range(1, 8)]


def test_a_recent_mean_at_the_bar_restarts_the_restore_count() -> None:
    policy = degraded_to(1)
    # 270 stable frames, then 30 at ratio 0.60: the 30-frame mean stays under 0.60 for 29 of them (299 stable in a
    # row) and reaches exactly 0.60 on the 30th, which is not stable and restarts the count
    assert changes(feed(policy, STABLE_MS, 270) + feed(policy, 30.0, DEGRADE_WINDOW_FRAMES)) == []
    assert changes(feed(policy, STABLE_MS, 299)) == []
    assert policy.step(STABLE_MS).changed


def test_a_periodic_detector_spike_does_not_block_the_restore() -> None:
    """Every 5th frame pays the detector (ratio 1.2 here); the 30-frame mean stays under 0.60, so it restores."""
    policy = degraded_to(1)
    decisions = [policy.step(60.0 if i % 5 == 4 else 20.0) for i in range(RESTORE_AFTER_FRAMES)]
    assert changes(decisions) == [(RESTORE_AFTER_FRAMES, 0, "restore")]


def test_ratio_hovering_at_060_never_restores() -> None:
    at = degraded_to(1)
    assert changes(feed(at, 30.0, 3000)) == []
    around = degraded_to(1)
    assert changes([around.step(29.0 if i % 2 else 31.0) for i in range(3000)]) == []


def test_request_degrade_applies_at_once_when_cooled() -> None:
    policy = VideoDegradePolicy()
    policy.request_degrade("late")
    decision = policy.step(STABLE_MS)
    assert (decision.changed, decision.level.index, decision.reason) == (True, 1, "request:late")


def test_requests_during_cool_down_wait_and_merge() -> None:
    policy = VideoDegradePolicy()
    policy.request_degrade("late")
    policy.step(STABLE_MS)  # level 1
    policy.request_degrade("late")
    policy.request_degrade("controller")
    decisions = feed(policy, STABLE_MS, 200)
    assert changes(decisions) == [(REDEGRADE_COOLDOWN_FRAMES, 2, "request:late")]


def paused() -> VideoDegradePolicy:
    policy = VideoDegradePolicy()
    policy.force_level(len(policy.ladder) - 1)
    policy.release_floor()
    return policy


def test_request_at_the_last_level_is_ignored() -> None:
    policy = paused()
    policy.request_degrade("late")
    assert changes(feed(policy, 50.0, 100)) == []


def test_controller_floor_holds_until_lowered() -> None:
    policy = VideoDegradePolicy()
    forced = policy.force_level(3)
    assert (forced.changed, forced.level.index, forced.reason) == (True, 3, "controller")
    assert changes(feed(policy, 10.0, 1000)) == []  # stable, but held at the floor
    lowered = policy.force_level(1)
    assert (lowered.changed, lowered.level.index) == (False, 3)
    # already stable for long enough: the next frame restores, then one level per 300 frames down to the floor
    assert changes(feed(policy, 10.0, 600)) == [(1, 2, "restore"), (301, 1, "restore")]
    policy.release_floor()  # 299 stable frames since the last restore: the next one is the 300th
    assert changes(feed(policy, 10.0, 300)) == [(1, 0, "restore")]


def test_controller_floor_does_not_block_local_degrade() -> None:
    policy = VideoDegradePolicy()
    policy.force_level(2)
    assert changes(feed(policy, 80.0, 30)) == [(30, 3, "overload")]
    assert policy.force_level(2).level.index == 3  # a lower floor is not a restore


@pytest.mark.parametrize("bad", [-1, 12])
def test_force_level_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match="level index"):
        VideoDegradePolicy().force_level(bad)


def test_paused_video_resumes_after_enough_in_budget_audio_blocks() -> None:
    top = len(build_ladder()) - 1
    policy = paused()
    assert policy.level.paused
    for _ in range(RESTORE_FROM_PAUSE_TICKS - 1):
        assert not policy.tick_paused(True).changed
    assert not policy.tick_paused(False).changed  # one block over budget starts the count again
    decisions = [policy.tick_paused(True) for _ in range(RESTORE_FROM_PAUSE_TICKS)]
    assert [d.changed for d in decisions] == [False] * (RESTORE_FROM_PAUSE_TICKS - 1) + [True]
    assert (policy.level.index, policy.level.paused, policy.level.fps) == (top - 1, False, 2.0)
    assert not policy.tick_paused(True).changed  # not paused: audio ticks change nothing


def test_paused_video_holds_at_the_controller_floor() -> None:
    top = len(build_ladder()) - 1
    policy = VideoDegradePolicy()
    policy.force_level(top)
    assert not any(policy.tick_paused(True).changed for _ in range(3 * RESTORE_FROM_PAUSE_TICKS))


def test_a_restore_that_does_not_hold_doubles_the_next_wait() -> None:
    policy = degraded_to(1)
    feed(policy, STABLE_MS, 300)
    assert policy.level.index == 0
    assert changes(feed(policy, OVER_MS, 30)) == [(30, 1, "overload")]  # back within probation
    assert policy.restore_after_frames == 600
    assert changes(feed(policy, STABLE_MS, 600)) == [(600, 0, "restore")]
    feed(policy, STABLE_MS, 300)  # this restore holds through probation
    assert policy.restore_after_frames == RESTORE_AFTER_FRAMES


def test_resolution_flapping_backs_off() -> None:
    """Work grows with pixels: 256 px is calm (ratio 0.54) but 384 px overloads (1.22); restores get rarer."""
    policy = VideoDegradePolicy()
    decisions = []
    for _ in range(40_000):
        side = policy.level.max_side
        decisions.append(policy.step(36.0 * (side / 256) ** 2))
    restores = [frame for frame, _, reason in changes(decisions) if reason == "restore"]
    gaps = [b - a for a, b in itertools.pairwise(restores)]
    assert gaps == sorted(gaps)
    assert gaps[-1] >= RESTORE_AFTER_MAX_FRAMES
    assert len(restores) <= 12  # about 120 without the back-off (one per 330 frames)
    assert all(d.level.index >= 6 for d in decisions[300:])


def test_level_is_frozen_data() -> None:
    level = build_ladder()[0]
    assert isinstance(level, Level)
    with pytest.raises(AttributeError):
        level.fps = 10.0  # type: ignore[misc]


# --- FpsGate -------------------------------------------------------------------------------------------------------
def run_gate(times_us: list[int], fps: float) -> list[bool]:
    gate = FpsGate()
    return [gate.admit(t, fps) for t in times_us]


def test_gate_30_to_20_fps_keeps_two_of_three() -> None:
    times = [round(i * 1e6 / 30) for i in range(3000)]
    kept = run_gate(times, 20.0)
    assert sum(kept) == 2000
    assert kept[:6] == [True, False, True, True, False, True]


def test_gate_keeps_every_frame_at_or_below_the_target_even_with_jitter() -> None:
    rng = random.Random(7)
    jittered = [i * 50_000 + rng.randint(-8_000, 8_000) for i in range(2000)]
    assert all(run_gate(jittered, 20.0))
    assert all(run_gate([i * 66_667 for i in range(500)], 20.0))


def test_gate_follows_a_target_change() -> None:
    gate = FpsGate()
    times = [round(i * 1e6 / 30) for i in range(600)]  # 20 s at 30 fps
    first = [gate.admit(t, 20.0) for t in times[:300]]
    second = [gate.admit(t, 15.0) for t in times[300:]]
    assert sum(first) == 200
    assert sum(second) == 150


def test_gate_does_not_burst_after_a_pause_or_a_clock_jump() -> None:
    gate = FpsGate()
    first = [gate.admit(round(i * 1e6 / 30), 20.0) for i in range(30)]
    resumed = [gate.admit(10_000_000 + round(i * 1e6 / 30), 20.0) for i in range(30)]
    assert sum(first) == sum(resumed) == 20
    assert gate.admit(-5_000_000, 20.0)  # the client clock went back: start again


def test_gate_works_at_int64_extremes() -> None:
    top = 2**63 - 1 - 10_000_000
    assert sum(run_gate([top + round(i * 1e6 / 30) for i in range(300)], 20.0)) == 200
    bottom = -(2**63)
    assert sum(run_gate([bottom + round(i * 1e6 / 30) for i in range(300)], 20.0)) == 200


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_gate_refuses_bad_fps(bad: float) -> None:
    with pytest.raises(ValueError, match="fps"):
        FpsGate().admit(0, bad)
