"""AudioPolicy: accept/fail and chunk-size adaptation, step by step with scripted ratios."""

from __future__ import annotations

import pytest

from mirage_ray.adapt import (
    APPLY_AT_LATEST_CHUNKS,
    FAIL_AFTER_CHUNKS,
    GROW_WINDOW_CHUNKS,
    SHRINK_WINDOW_CHUNKS,
    YIELD_MIN_OVER_CHUNKS,
    YIELD_WINDOW_CHUNKS,
    AudioDecision,
    AudioPolicy,
)
from mirage_ray.config import MirageSettings


def feed(policy: AudioPolicy, ratio: float, n: int, *, is_silence: bool = False) -> list[AudioDecision]:
    return [policy.step(ratio, is_silence=is_silence) for _ in range(n)]


def test_seed_numbers() -> None:
    assert (FAIL_AFTER_CHUNKS, GROW_WINDOW_CHUNKS, SHRINK_WINDOW_CHUNKS) == (40, 40, 120)


def test_accept_below_065_only() -> None:
    policy = AudioPolicy()
    assert policy.step(0.6499).accepted
    assert policy.step(0.6499).reason == "accepted"
    rejected = policy.step(0.65)
    assert not rejected.accepted
    assert rejected.reason == "over_budget"


def test_video_yields_when_audio_is_over_budget_often_not_on_one_spike() -> None:
    policy = AudioPolicy(chunk_ms=480, max_chunk_ms=480)
    spaced = [policy.step(0.7 if i % YIELD_WINDOW_CHUNKS == 0 else 0.3) for i in range(10 * YIELD_WINDOW_CHUNKS)]
    assert not any(d.video_yields for d in spaced)  # one late chunk per window: scheduling noise
    assert not spaced[0].accepted  # each late chunk is still counted as not accepted
    burst = [policy.step(0.7) for _ in range(3 * YIELD_MIN_OVER_CHUNKS)]
    assert [d.video_yields for d in burst] == [False, False, True] * 3  # one request per episode, then count anew
    policy.step(0.3)
    mixed = [policy.step(r) for r in (0.7, 0.3, 0.3, 0.7, 0.3, 0.3, 0.7)]  # 3 over within the window
    assert [d.video_yields for d in mixed] == [False] * 6 + [True]


def test_fails_on_the_40th_consecutive_chunk_over_080_with_one_fallback() -> None:
    policy = AudioPolicy(chunk_ms=480, max_chunk_ms=480)  # at the top rung: growth cannot interfere
    first = feed(policy, 0.81, 39)
    assert not any(d.failed for d in first)
    fortieth = policy.step(0.81)
    assert fortieth == AudioDecision(False, True, True, None, "audio_failure")
    # a second failure needs another full run, and no longer asks for a fallback
    again = feed(policy, 0.81, 40)
    assert [d.failed for d in again] == [False] * 39 + [True]
    assert not again[-1].fallback


def test_exactly_080_and_an_interruption_do_not_count_toward_failure() -> None:
    policy = AudioPolicy(chunk_ms=480, max_chunk_ms=480)
    assert not any(d.failed for d in feed(policy, 0.80, 100))
    feed(policy, 0.9, 39)
    policy.step(0.5)  # breaks the run
    assert not any(d.failed for d in feed(policy, 0.9, 39))
    assert policy.step(0.9).failed


def test_grows_one_rung_when_mean_of_last_40_is_over_075() -> None:
    policy = AudioPolicy()
    assert policy.ladder_ms == (80, 120, 160, 192, 240, 320, 400, 480)
    before = feed(policy, 0.76, 39, is_silence=True)
    assert all(d.new_chunk_ms is None for d in before)
    fortieth = policy.step(0.76, is_silence=True)
    assert fortieth.new_chunk_ms == 240
    assert fortieth.reason == "grow"
    assert policy.chunk_ms == 240


def test_mean_exactly_075_does_not_grow() -> None:
    policy = AudioPolicy()
    feed(policy, 0.75, 200, is_silence=True)
    assert policy.chunk_ms == 192


def test_grow_uses_the_mean_not_every_chunk() -> None:
    policy = AudioPolicy()
    # alternating 0.70 / 0.85 has mean 0.775 over any 40 chunks, and never 40 consecutive over 0.80
    decisions = [policy.step(0.70 if i % 2 else 0.85) for i in range(GROW_WINDOW_CHUNKS)]
    assert not any(d.failed for d in decisions)
    assert policy.pending_chunk_ms == 240


def test_a_proposed_change_waits_for_silence() -> None:
    policy = AudioPolicy()
    feed(policy, 0.76, 40)  # proposal on the 40th, not silent
    assert policy.pending_chunk_ms == 240
    assert policy.chunk_ms == 192
    waiting = feed(policy, 0.76, 3)
    assert all(d.new_chunk_ms is None for d in waiting)
    applied = policy.step(0.76, is_silence=True)
    assert applied.new_chunk_ms == 240
    assert policy.chunk_ms == 240
    assert policy.pending_chunk_ms is None


def test_a_proposed_change_applies_at_the_latest_after_n_chunks() -> None:
    policy = AudioPolicy()
    feed(policy, 0.76, 40)
    waiting = feed(policy, 0.76, APPLY_AT_LATEST_CHUNKS - 1)
    assert all(d.new_chunk_ms is None for d in waiting)
    assert policy.step(0.76).new_chunk_ms == 240


def test_hysteresis_windows_restart_after_a_change() -> None:
    policy = AudioPolicy()
    feed(policy, 0.76, 40, is_silence=True)
    assert policy.chunk_ms == 240
    # the same overload is not acted on again at once: another full window of 40 is needed
    after = feed(policy, 0.76, 39, is_silence=True)
    assert all(d.new_chunk_ms is None for d in after)
    assert policy.step(0.76, is_silence=True).new_chunk_ms == 320


def test_shrinks_one_rung_when_mean_of_last_120_is_under_055() -> None:
    policy = AudioPolicy()
    before = feed(policy, 0.5, 119, is_silence=True)
    assert all(d.new_chunk_ms is None for d in before)
    shrink = policy.step(0.5, is_silence=True)
    assert shrink.new_chunk_ms == 160
    assert shrink.reason == "shrink"
    assert all(d.new_chunk_ms is None for d in feed(policy, 0.5, 119, is_silence=True))
    assert policy.step(0.5, is_silence=True).new_chunk_ms == 120


def test_a_shrink_that_makes_video_yield_is_undone_and_not_repeated() -> None:
    policy = AudioPolicy()
    feed(policy, 0.3, SHRINK_WINDOW_CHUNKS, is_silence=True)
    assert policy.chunk_ms == 160
    # at 160 ms three chunks over budget: video yields, and the block goes back to 192 ms at the next silence
    over = [policy.step(0.7) for _ in range(YIELD_MIN_OVER_CHUNKS)]
    assert over[-1].video_yields and policy.pending_chunk_ms == 192
    back = policy.step(0.3, is_silence=True)
    assert (back.new_chunk_ms, back.reason) == (192, "grow")
    # spare time again: no shrink to 160 this session (it cost the picture once)
    assert all(d.new_chunk_ms is None for d in feed(policy, 0.3, 3 * SHRINK_WINDOW_CHUNKS, is_silence=True))
    assert policy.chunk_ms == 192


def test_yields_at_the_configured_block_or_above_do_not_change_it() -> None:
    policy = AudioPolicy()
    over = [policy.step(0.7) for _ in range(YIELD_MIN_OVER_CHUNKS)]
    assert over[-1].video_yields and policy.pending_chunk_ms is None  # growth is the mean rule's business
    feed(policy, 0.3, SHRINK_WINDOW_CHUNKS, is_silence=True)
    assert policy.chunk_ms == 160  # a block never shrunk is free to shrink


def test_mean_exactly_055_does_not_shrink() -> None:
    policy = AudioPolicy()
    feed(policy, 0.55, 400, is_silence=True)
    assert policy.chunk_ms == 192


def test_grow_wins_when_both_windows_ask() -> None:
    policy = AudioPolicy()
    feed(policy, 0.3, 80, is_silence=True)
    # 40 more at 0.76: the last-40 mean first exceeds 0.75 on the 120th chunk (0.7485 on the 119th), the same chunk
    # the 120-chunk window fills, with mean 0.453 < 0.55
    decisions = feed(policy, 0.76, 40, is_silence=True)
    assert [d.new_chunk_ms for d in decisions][-1] == 240
    assert all(d.new_chunk_ms is None for d in decisions[:-1])


def test_stays_within_bounds() -> None:
    top = AudioPolicy(chunk_ms=480)
    feed(top, 0.78, 400, is_silence=True)
    assert top.chunk_ms == 480
    bottom = AudioPolicy(chunk_ms=80)
    feed(bottom, 0.1, 600, is_silence=True)
    assert bottom.chunk_ms == 80


def test_custom_bounds_join_the_ladder() -> None:
    policy = AudioPolicy(chunk_ms=200, min_chunk_ms=100, max_chunk_ms=300)
    assert policy.ladder_ms == (100, 120, 160, 200, 240, 300)
    for _ in range(5):
        feed(policy, 0.78, GROW_WINDOW_CHUNKS, is_silence=True)
    assert policy.chunk_ms == 300
    assert all(v % 10 == 0 for v in policy.ladder_ms)


def test_failure_on_the_same_chunk_as_growth_wins_and_clears_windows() -> None:
    policy = AudioPolicy()
    feed(policy, 0.9, 39)
    failure = policy.step(0.9)  # 40th: both the failure count and the grow window are reached
    assert failure.failed
    assert failure.new_chunk_ms is None
    assert policy.pending_chunk_ms is None
    # the ratio window restarted: growth needs 40 new chunks
    feed(policy, 0.78, 39)
    assert policy.pending_chunk_ms is None
    policy.step(0.78)
    assert policy.pending_chunk_ms == 240


def test_failure_cancels_a_pending_change() -> None:
    policy = AudioPolicy()
    feed(policy, 0.78, 10)
    feed(policy, 0.9, 30)  # 40th chunk: mean 0.92 > 0.75 proposes a grow; 30 chunks over 0.80 so far
    assert policy.pending_chunk_ms == 240
    waiting = feed(policy, 0.9, 9)
    assert all(d.new_chunk_ms is None and not d.failed for d in waiting)
    failure = policy.step(0.9)  # 40 consecutive over 0.80, on the chunk the change would have applied
    assert failure.failed
    assert failure.new_chunk_ms is None
    assert policy.pending_chunk_ms is None
    assert policy.chunk_ms == 192


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_refuses_bad_ratios(bad: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        AudioPolicy().step(bad)


def test_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError, match="min_chunk_ms"):
        AudioPolicy(chunk_ms=60, min_chunk_ms=80)


def test_from_settings() -> None:
    settings = MirageSettings(chunk_ms=240, min_chunk_ms=120, max_chunk_ms=320, context_ms=400)
    policy = AudioPolicy.from_settings(settings)
    assert policy.chunk_ms == 240
    assert policy.ladder_ms == (120, 160, 240, 320)


def test_a_pending_change_lands_at_silence_without_recording_a_ratio() -> None:
    from mirage_ray.adapt import GROW_WINDOW_CHUNKS, AudioPolicy

    policy = AudioPolicy()
    assert policy.at_silence() is None  # nothing pending: nothing happens
    for _ in range(GROW_WINDOW_CHUNKS):
        policy.step(0.78)
    assert policy.pending_chunk_ms == 240
    assert policy.at_silence() == (240, "grow")
    assert policy.chunk_ms == 240 and policy.pending_chunk_ms is None
