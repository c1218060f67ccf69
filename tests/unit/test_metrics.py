"""Metrics: rolling windows, the stats body, controller summaries, the in-memory sink, aggregation."""

from __future__ import annotations

import re

import pytest

from mirage_ray.metrics import (
    ALL_METRICS,
    AUDIO_CHUNKS,
    DETECTOR_INTERVAL,
    GPU_MEMORY_FRAGMENTATION,
    STAGE_MS,
    VIDEO_FRAMES_DROPPED,
    InMemorySink,
    RollingWindow,
    SessionMetrics,
    SessionSummary,
    aggregate,
    gpu_fragmentation,
    record_gpu_memory,
)

PROMETHEUS_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def test_metric_specs_are_valid_and_unique() -> None:
    names = [spec.name for spec in ALL_METRICS]
    assert len(names) == len(set(names))
    assert all(PROMETHEUS_NAME.match(name) for name in names)
    for spec in ALL_METRICS:
        assert bool(spec.boundaries) == (spec.kind == "histogram"), spec.name
        assert list(spec.boundaries) == sorted(spec.boundaries)


def test_rolling_window_statistics() -> None:
    window = RollingWindow(size=20)
    assert (window.count, window.mean, window.p50, window.p95, window.max) == (0, None, None, None, None)
    for value in range(1, 21):  # 1..20
        window.add(float(value))
    assert (window.count, window.mean, window.p50, window.p95, window.max) == (20, 10.5, 10.0, 19.0, 20.0)


def test_rolling_window_keeps_only_the_last_n() -> None:
    window = RollingWindow(size=3)
    for value in (100.0, 1.0, 2.0, 3.0):
        window.add(value)
    assert (window.count, window.mean, window.max) == (3, 2.0, 3.0)
    assert window.percentile(0.0) == 1.0
    assert window.percentile(100.0) == 3.0


def test_rolling_window_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="size"):
        RollingWindow(size=0)
    window = RollingWindow()
    with pytest.raises(ValueError, match="finite"):
        window.add(float("nan"))
    with pytest.raises(ValueError, match="percentile"):
        window.percentile(101.0)


def scripted_session(sink: InMemorySink | None = None) -> SessionMetrics:
    metrics = SessionMetrics("s1", now_s=100.0, sink=sink)
    for i in range(10):
        metrics.frame_in()
        if i < 2:
            metrics.frame_dropped("late")
            continue
        if i == 2:
            metrics.frame_dropped("fps_gate")
            continue
        metrics.stage_ms("video", "decode", 1.0)
        metrics.stage_ms("video", "swap", 10.0 + i)  # 13..19
        metrics.detector_call(invoked=i in (3, 8))
        metrics.runtime_ratio("video", 0.5)
        metrics.frame_out()
    metrics.invalid_message()
    for accepted in (True, True, True, False):
        metrics.audio_in()
        metrics.stage_ms("audio", "convert", 40.0)
        metrics.runtime_ratio("audio", 0.25 if accepted else 0.75)
        metrics.audio_out(accepted)
    metrics.degrade(level=2, floor=1, max_level=7)
    metrics.queue_backlog("video", 3)
    return metrics


def test_stats_body() -> None:
    assert scripted_session().stats() == {
        "frames": {"in": 10, "out": 7, "dropped": 3, "dropped_by_reason": {"late": 2, "fps_gate": 1}},
        "audio": {"chunks_in": 4, "chunks_out": 4, "accepted": 3, "accept_ratio": 0.75},
        "invalid": 1,
        "timings_ms": {
            "video": {"decode": {"p50": 1.0, "p95": 1.0}, "swap": {"p50": 16.0, "p95": 19.0}},
            "audio": {"convert": {"p50": 40.0, "p95": 40.0}},
        },
        "ratio": {"audio": 0.375, "video": 0.5},
        "detector_interval_frames": 5.0,
        "degrade_level": 2,
        "queues": {"video": 3},
    }


def test_stats_before_anything_happened() -> None:
    stats = SessionMetrics("s", now_s=0.0).stats()
    assert stats["audio"]["accept_ratio"] is None
    assert stats["timings_ms"] == {}
    assert stats["ratio"] == {"audio": None, "video": None}


def test_sink_receives_declared_metrics() -> None:
    sink = InMemorySink()
    scripted_session(sink)
    assert sink.counters[sink.key(VIDEO_FRAMES_DROPPED.name, reason="late")] == 2.0
    assert sink.counters[sink.key(AUDIO_CHUNKS.name, accepted="false")] == 1.0
    assert sink.histograms[sink.key(STAGE_MS.name, kind="video", stage="swap")] == [13, 14, 15, 16, 17, 18, 19]
    assert sink.histograms[sink.key(DETECTOR_INTERVAL.name)] == [5]  # the first call starts the count; 5 frames on


def test_in_memory_sink_refuses_undeclared_metrics_and_tags() -> None:
    sink = InMemorySink()
    with pytest.raises(KeyError, match="no counter"):
        sink.counter("mirage_nope")
    with pytest.raises(KeyError, match="takes tags"):
        sink.counter(VIDEO_FRAMES_DROPPED.name, 1.0, {"why": "late"})
    with pytest.raises(KeyError, match="no gauge"):
        sink.gauge(STAGE_MS.name, 1.0, {"kind": "video", "stage": "swap"})


def test_unknown_stage_kind_or_queue_is_refused() -> None:
    metrics = SessionMetrics("s", now_s=0.0)
    with pytest.raises(ValueError, match="unknown stage"):
        metrics.stage_ms("video", "blend", 1.0)
    with pytest.raises(ValueError, match="unknown kind"):
        metrics.runtime_ratio("subtitles", 1.0)
    with pytest.raises(ValueError, match="unknown queue"):
        metrics.queue_backlog("inbound", 1)


def test_summary_rates_are_over_the_time_since_the_previous_summary() -> None:
    metrics = scripted_session()
    first = metrics.summary(now_s=102.0)
    assert first.fps_out == 3.5  # 7 frames in 2 s
    assert first.video_cost_ms_per_s == pytest.approx((13 + 14 + 15 + 16 + 17 + 18 + 19) / 2)  # swap only
    assert (first.degrade_level, first.floor, first.max_level) == (2, 1, 7)
    assert first.stage_p95_ms == {"video.decode": 1.0, "video.swap": 19.0, "audio.convert": 40.0}
    assert first.video_ratio == 0.5
    metrics.frame_out()
    metrics.stage_ms("video", "detect", 8.0)
    metrics.stage_ms("video", "encode", 100.0)  # not a shared stage: no cost
    second = metrics.summary(now_s=104.0)
    assert second.fps_out == 0.5
    assert second.video_cost_ms_per_s == 4.0


def test_summary_round_trips_through_a_dict() -> None:
    summary = scripted_session().summary(now_s=101.0, shared_queue=4, gpu_mem_fraction=0.5)
    data = summary.to_dict()
    assert data["shared_queue"] == 4
    assert SessionSummary.from_dict({**data, "added_later": 1}) == summary


def test_gpu_memory_gauges() -> None:
    assert gpu_fragmentation(0, 0) == 0.0
    assert gpu_fragmentation(3 * 2**30, 4 * 2**30) == 0.25
    with pytest.raises(ValueError, match="memory"):
        gpu_fragmentation(-1, 0)
    sink = InMemorySink()
    record_gpu_memory(sink, "swapper", 3 * 2**30, 4 * 2**30)
    assert sink.gauges[sink.key(GPU_MEMORY_FRAGMENTATION.name, deployment="swapper")] == 0.25


def summary(
    sid: str, level: int, fps: float, cost: float, swap_p95: float, video_ratio: float | None
) -> SessionSummary:
    return SessionSummary(
        session_id=sid,
        t_s=0.0,
        stage_p95_ms={"video.swap": swap_p95},
        video_ratio=video_ratio,
        audio_ratio=0.4,
        degrade_level=level,
        max_level=7,
        floor=0,
        fps_out=fps,
        video_cost_ms_per_s=cost,
    )


def test_aggregate() -> None:
    stats = aggregate(
        [summary("a", 0, 20.0, 300.0, 15.0, 0.5), summary("b", 2, 15.0, 150.0, 25.0, None), summary("c", 2, 1, 0, 5, 1)]
    )
    assert stats == {
        "sessions": 3,
        "fps_out": 36.0,
        "video_cost_ms_per_s": 450.0,
        "degrade_levels": {"0": 1, "2": 2},
        "video_ratio": {"mean": 0.75, "max": 1.0},
        "audio_ratio": {"mean": 0.4, "max": 0.4},
        "stage_p95_ms_max": {"video.swap": 25.0},
    }
    assert aggregate([])["sessions"] == 0
    assert aggregate([])["video_ratio"] == {"mean": None, "max": None}
