"""MetricsSink over Ray's metrics API, so Ray's Prometheus endpoint and dashboard show the session metrics."""

from __future__ import annotations

from typing import Any

from ray.util import metrics as ray_metrics

from mirage_ray.metrics import ALL_METRICS, MetricSpec, Tags


def _make(spec: MetricSpec) -> Any:
    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    return ray_metrics.Histogram(
        spec.name, description=spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tag_keys
    )


class RayMetricsSink:
    """One Ray metric object per declared metric; created once per process."""

    def __init__(self) -> None:
        self._metrics = {spec.name: _make(spec) for spec in ALL_METRICS}

    def counter(self, name: str, value: float = 1.0, tags: Tags | None = None) -> None:
        self._metrics[name].inc(value, tags=dict(tags) if tags else None)

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        self._metrics[name].set(value, tags=dict(tags) if tags else None)

    def histogram(self, name: str, value: float, tags: Tags | None = None) -> None:
        self._metrics[name].observe(value, tags=dict(tags) if tags else None)
