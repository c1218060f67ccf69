"""Metric names, rolling windows, per-session metrics and the sink interface (the Ray sink lives in actors/).

``SessionMetrics`` records a session's counts and timings, forwards them to a ``MetricsSink`` when given one, and
produces the body of the protocol's ``stats`` message and the ``SessionSummary`` pushed to the controller.
Time comes in as an argument (seconds, any monotonic clock).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

logger = logging.getLogger(__name__)

MetricKind = Literal["counter", "gauge", "histogram"]
Tags = Mapping[str, str]


@dataclass(frozen=True)
class MetricSpec:
    """A metric's name, kind and tag keys (Ray metrics declare tag keys and histogram boundaries up front)."""

    name: str
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


STAGE_MS_BOUNDARIES = (1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 200.0, 500.0, 1000.0)
RATIO_BOUNDARIES = (0.25, 0.5, 0.55, 0.6, 0.65, 0.75, 0.8, 1.0, 1.5, 2.0)
INTERVAL_FRAMES_BOUNDARIES = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0)

AUDIO_CHUNKS_IN = MetricSpec("mirage_audio_chunks_in", "counter", "audio chunks received")
AUDIO_CHUNKS = MetricSpec("mirage_audio_chunks_processed", "counter", "audio chunks converted", ("accepted",))
AUDIO_ACCEPT_RATIO = MetricSpec("mirage_audio_accept_ratio", "gauge", "share of converted chunks accepted")
STAGE_MS = MetricSpec("mirage_stage_ms", "histogram", "per-stage time", ("kind", "stage"), STAGE_MS_BOUNDARIES)
RUNTIME_RATIO = MetricSpec("mirage_runtime_ratio", "histogram", "runtime/real ratio", ("kind",), RATIO_BOUNDARIES)
VIDEO_FRAMES_IN = MetricSpec("mirage_video_frames_in", "counter", "video frames received")
VIDEO_FRAMES_PROCESSED = MetricSpec("mirage_video_frames_processed", "counter", "video frames answered")
VIDEO_FRAMES_DROPPED = MetricSpec("mirage_video_frames_dropped", "counter", "video frames dropped", ("reason",))
INVALID_MESSAGES = MetricSpec("mirage_invalid_messages", "counter", "invalid binary messages")
DETECTOR_INTERVAL = MetricSpec(
    "mirage_detector_interval_frames", "histogram", "frames between detector calls", (), INTERVAL_FRAMES_BOUNDARIES
)
DEGRADE_LEVEL = MetricSpec("mirage_degrade_level", "gauge", "video degrade level (0 = full quality)")
QUEUE_BACKLOG = MetricSpec("mirage_queue_backlog", "gauge", "queued items", ("queue",))
GPU_MEMORY_ALLOCATED = MetricSpec("mirage_gpu_memory_allocated_bytes", "gauge", "GPU memory allocated", ("deployment",))
GPU_MEMORY_RESERVED = MetricSpec("mirage_gpu_memory_reserved_bytes", "gauge", "GPU memory reserved", ("deployment",))
GPU_MEMORY_FRAGMENTATION = MetricSpec(
    "mirage_gpu_memory_fragmentation", "gauge", "1 - allocated/reserved", ("deployment",)
)
ALL_METRICS: tuple[MetricSpec, ...] = (
    AUDIO_CHUNKS_IN,
    AUDIO_CHUNKS,
    AUDIO_ACCEPT_RATIO,
    STAGE_MS,
    RUNTIME_RATIO,
    VIDEO_FRAMES_IN,
    VIDEO_FRAMES_PROCESSED,
    VIDEO_FRAMES_DROPPED,
    INVALID_MESSAGES,
    DETECTOR_INTERVAL,
    DEGRADE_LEVEL,
    QUEUE_BACKLOG,
    GPU_MEMORY_ALLOCATED,
    GPU_MEMORY_RESERVED,
    GPU_MEMORY_FRAGMENTATION,
)

AUDIO_STAGES = ("decode", "convert", "post")
VIDEO_STAGES = ("decode", "detect", "swap", "enhance", "encode")
STAGES: Mapping[str, tuple[str, ...]] = {"audio": AUDIO_STAGES, "video": VIDEO_STAGES}
QUEUES = ("audio", "video", "outbound")
# video stages that run on shared model deployments: their time per second is what a session costs the GPU
SHARED_VIDEO_STAGES = ("detect", "swap", "enhance")
WINDOW_SAMPLES = 120  # samples per rolling window (timings and ratios) behind stats and summaries


class MetricsSink(Protocol):
    """Where metrics go: the Ray sink in actors/, or ``InMemorySink`` in tests."""

    def counter(self, name: str, value: float = 1.0, tags: Tags | None = None) -> None: ...

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None: ...

    def histogram(self, name: str, value: float, tags: Tags | None = None) -> None: ...


class InMemorySink:
    """Keeps everything in dicts; refuses metric names and tag keys that ``ALL_METRICS`` does not declare."""

    def __init__(self, specs: Iterable[MetricSpec] = ALL_METRICS) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.histograms: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}

    def _key(self, kind: MetricKind, name: str, tags: Tags | None) -> tuple[str, tuple[tuple[str, str], ...]]:
        spec = self._specs.get(name)
        if spec is None or spec.kind != kind:
            raise KeyError(f"no {kind} named {name!r} is declared")
        items = tuple(sorted((tags or {}).items()))
        if tuple(sorted(spec.tag_keys)) != tuple(k for k, _ in items):
            raise KeyError(f"{name} takes tags {spec.tag_keys}, got {tuple(k for k, _ in items)}")
        return name, items

    def counter(self, name: str, value: float = 1.0, tags: Tags | None = None) -> None:
        key = self._key("counter", name, tags)
        self.counters[key] = self.counters.get(key, 0.0) + value

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        self.gauges[self._key("gauge", name, tags)] = value

    def histogram(self, name: str, value: float, tags: Tags | None = None) -> None:
        self.histograms.setdefault(self._key("histogram", name, tags), []).append(value)

    @staticmethod
    def key(name: str, **tags: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(tags.items()))


class RollingWindow:
    """The last ``size`` values: count, mean, nearest-rank p50/p95, max (None when empty)."""

    def __init__(self, size: int = WINDOW_SAMPLES) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"window values must be finite, got {value!r}")
        self._values.append(float(value))

    @property
    def count(self) -> int:
        return len(self._values)

    @property
    def mean(self) -> float | None:
        return math.fsum(self._values) / len(self._values) if self._values else None

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile, q in [0, 100]."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        if not self._values:
            return None
        ordered = sorted(self._values)
        return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]

    @property
    def p50(self) -> float | None:
        return self.percentile(50.0)

    @property
    def p95(self) -> float | None:
        return self.percentile(95.0)

    @property
    def max(self) -> float | None:
        return max(self._values) if self._values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def gpu_fragmentation(allocated_bytes: int, reserved_bytes: int) -> float:
    """Share of reserved GPU memory not allocated (0 when nothing is reserved)."""
    if allocated_bytes < 0 or reserved_bytes < 0:
        raise ValueError(f"memory sizes must be >= 0, got {allocated_bytes}, {reserved_bytes}")
    return 0.0 if reserved_bytes == 0 else max(0.0, 1.0 - allocated_bytes / reserved_bytes)


def record_gpu_memory(sink: MetricsSink, deployment: str, allocated_bytes: int, reserved_bytes: int) -> None:
    """A GPU deployment's memory gauges (allocated, reserved, fragmentation)."""
    tags = {"deployment": deployment}
    fragmentation = gpu_fragmentation(allocated_bytes, reserved_bytes)
    sink.gauge(GPU_MEMORY_ALLOCATED.name, float(allocated_bytes), tags)
    sink.gauge(GPU_MEMORY_RESERVED.name, float(reserved_bytes), tags)
    sink.gauge(GPU_MEMORY_FRAGMENTATION.name, fragmentation, tags)


@dataclass(frozen=True)
class SessionSummary:
    """What a session pushes to the controller about once a second (plain data: crosses Ray as a dict)."""

    session_id: str
    t_s: float  # the session's clock when summarised
    stage_p95_ms: Mapping[str, float]  # "video.swap" -> p95 over the window
    video_ratio: float | None
    audio_ratio: float | None
    degrade_level: int
    max_level: int
    floor: int  # the controller's floor the session holds
    fps_out: float
    video_cost_ms_per_s: float  # shared-stage (detect + swap + enhance) ms per second: what the session costs
    queues: Mapping[str, int] = field(default_factory=dict)
    shared_queue: int | None = None  # requests waiting at the busiest shared stage, when known
    gpu_mem_fraction: float | None = None  # allocated / total of the busiest GPU, when known

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionSummary:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class SessionMetrics:
    """One session's metrics: counts, rolling timings and ratios, degrade level, queue backlogs."""

    def __init__(self, session_id: str, now_s: float, sink: MetricsSink | None = None) -> None:
        self.session_id = session_id
        self._sink = sink
        self._frames_in = 0
        self._frames_out = 0
        self._dropped: Counter[str] = Counter()
        self._invalid = 0
        self._audio_in = 0
        self._audio_out = 0
        self._audio_accepted = 0
        self._timings = {(kind, stage): RollingWindow() for kind, stages in STAGES.items() for stage in stages}
        self._ratios = {kind: RollingWindow() for kind in STAGES}
        self._detector_interval = RollingWindow()
        self._frames_since_detect: int | None = None  # None until the first detector call
        self._level = (0, 0, 0)  # (level, floor, max level)
        self._queues: dict[str, int] = {}
        self._shared_ms = 0.0
        self._last_summary = (now_s, 0, 0.0)  # (time, frames_out, shared ms) at the previous summary

    # --- recording -------------------------------------------------------------------------------------------
    def frame_in(self) -> None:
        self._frames_in += 1
        self._emit_counter(VIDEO_FRAMES_IN, {})

    def frame_out(self) -> None:
        self._frames_out += 1
        self._emit_counter(VIDEO_FRAMES_PROCESSED, {})

    def frame_dropped(self, reason: str) -> None:
        self._dropped[reason] += 1
        self._emit_counter(VIDEO_FRAMES_DROPPED, {"reason": reason})

    def invalid_message(self) -> None:
        self._invalid += 1
        self._emit_counter(INVALID_MESSAGES, {})

    def audio_in(self) -> None:
        self._audio_in += 1
        self._emit_counter(AUDIO_CHUNKS_IN, {})

    def audio_out(self, accepted: bool) -> None:
        self._audio_out += 1
        self._audio_accepted += int(accepted)
        self._emit_counter(AUDIO_CHUNKS, {"accepted": str(accepted).lower()})
        if self._sink is not None:
            self._sink.gauge(AUDIO_ACCEPT_RATIO.name, self._audio_accepted / self._audio_out)

    def stage_ms(self, kind: str, stage: str, ms: float) -> None:
        window = self._timings.get((kind, stage))
        if window is None:
            raise ValueError(f"unknown stage {kind}.{stage}; known: {dict(STAGES)}")
        window.add(ms)
        if kind == "video" and stage in SHARED_VIDEO_STAGES:
            self._shared_ms += ms
        if self._sink is not None:
            self._sink.histogram(STAGE_MS.name, ms, {"kind": kind, "stage": stage})

    def runtime_ratio(self, kind: str, ratio: float) -> None:
        if kind not in self._ratios:
            raise ValueError(f"unknown kind {kind!r}; known: {tuple(self._ratios)}")
        self._ratios[kind].add(ratio)
        if self._sink is not None:
            self._sink.histogram(RUNTIME_RATIO.name, ratio, {"kind": kind})

    def detector_call(self, invoked: bool) -> None:
        """Once per processed frame: whether the detector ran for it (the interval is counted in frames between
        two detector calls; the first call starts the count)."""
        if self._frames_since_detect is not None:
            self._frames_since_detect += 1
        if not invoked:
            return
        if self._frames_since_detect is not None:
            self._detector_interval.add(self._frames_since_detect)
            if self._sink is not None:
                self._sink.histogram(DETECTOR_INTERVAL.name, self._frames_since_detect)
        self._frames_since_detect = 0

    def degrade(self, level: int, floor: int, max_level: int) -> None:
        self._level = (level, floor, max_level)
        if self._sink is not None:
            self._sink.gauge(DEGRADE_LEVEL.name, level)

    def queue_backlog(self, queue: str, length: int) -> None:
        if queue not in QUEUES:
            raise ValueError(f"unknown queue {queue!r}; known: {QUEUES}")
        self._queues[queue] = length
        if self._sink is not None:
            self._sink.gauge(QUEUE_BACKLOG.name, length, {"queue": queue})

    def _emit_counter(self, spec: MetricSpec, tags: Tags) -> None:
        if self._sink is not None:
            self._sink.counter(spec.name, 1.0, tags)

    # --- reporting -------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Body of the protocol's ``stats`` message (``protocol.stats(body)`` adds the type)."""
        timings: dict[str, dict[str, dict[str, float | None]]] = {}
        for (kind, stage), window in self._timings.items():
            if window.count:
                timings.setdefault(kind, {})[stage] = {"p50": _round(window.p50), "p95": _round(window.p95)}
        return {
            "frames": {
                "in": self._frames_in,
                "out": self._frames_out,
                "dropped": sum(self._dropped.values()),
                "dropped_by_reason": dict(self._dropped),
            },
            "audio": {
                "chunks_in": self._audio_in,
                "chunks_out": self._audio_out,
                "accepted": self._audio_accepted,
                "accept_ratio": _round(self._audio_accepted / self._audio_out) if self._audio_out else None,
            },
            "invalid": self._invalid,
            "timings_ms": timings,
            "ratio": {kind: _round(window.mean) for kind, window in self._ratios.items()},
            "detector_interval_frames": _round(self._detector_interval.mean),
            "degrade_level": self._level[0],
            "queues": dict(self._queues),
        }

    def summary(
        self, now_s: float, shared_queue: int | None = None, gpu_mem_fraction: float | None = None
    ) -> SessionSummary:
        """The controller's summary; rates are over the time since the previous summary."""
        last_s, last_frames, last_shared = self._last_summary
        elapsed = now_s - last_s
        fps = (self._frames_out - last_frames) / elapsed if elapsed > 0 else 0.0
        cost = (self._shared_ms - last_shared) / elapsed if elapsed > 0 else 0.0
        self._last_summary = (now_s, self._frames_out, self._shared_ms)
        p95 = {f"{kind}.{stage}": w.p95 for (kind, stage), w in self._timings.items() if w.p95 is not None}
        level, floor, max_level = self._level
        return SessionSummary(
            session_id=self.session_id,
            t_s=now_s,
            stage_p95_ms=p95,
            video_ratio=self._ratios["video"].mean,
            audio_ratio=self._ratios["audio"].mean,
            degrade_level=level,
            max_level=max_level,
            floor=floor,
            fps_out=fps,
            video_cost_ms_per_s=cost,
            queues=dict(self._queues),
            shared_queue=shared_queue,
            gpu_mem_fraction=gpu_mem_fraction,
        )


def aggregate(summaries: Iterable[SessionSummary]) -> dict[str, Any]:
    """Service-wide view for GET /v1/stats from the latest summary of each live session."""
    items = list(summaries)
    levels = Counter(str(s.degrade_level) for s in items)
    stage_p95: dict[str, float] = {}
    for s in items:
        for stage, ms in s.stage_p95_ms.items():
            stage_p95[stage] = max(ms, stage_p95.get(stage, ms))

    def spread(values: list[float | None]) -> dict[str, float | None]:
        present = [v for v in values if v is not None]
        if not present:
            return {"mean": None, "max": None}
        return {"mean": _round(math.fsum(present) / len(present)), "max": _round(max(present))}

    return {
        "sessions": len(items),
        "fps_out": _round(math.fsum(s.fps_out for s in items)),
        "video_cost_ms_per_s": _round(math.fsum(s.video_cost_ms_per_s for s in items)),
        "degrade_levels": dict(sorted(levels.items())),
        "video_ratio": spread([s.video_ratio for s in items]),
        "audio_ratio": spread([s.audio_ratio for s in items]),
        "stage_p95_ms_max": {k: _round(v) for k, v in sorted(stage_p95.items())},
    }
