"""MetricsSink over Ray's metrics API, so Ray's Prometheus endpoint and dashboard show the session metrics."""

from __future__ import annotations

from typing import Any

from ray.util import metrics as ray_metrics

from mirage_ray.metrics import ALL_METRICS, MetricSpec, Tags, record_gpu_memory


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


GPU_REPORT_INTERVAL_S = 5.0


def gpu_memory_bytes() -> tuple[int, int] | None:
    """(allocated, reserved) GPU bytes of this process, or None without a CUDA device.

    torch's caching allocator gives both (CodeFormer); for onnxruntime, whose arena torch cannot see, NVML's
    per-process usage stands for both (nvidia-ml-py, installed with the ``gpu`` extra).
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    reserved = int(torch.cuda.memory_reserved())
    if reserved > 0:
        return int(torch.cuda.memory_allocated()), reserved
    try:
        import os

        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        used = sum(
            p.usedGpuMemory or 0 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()
        )
    except Exception:  # NVML absent or not permitted: nothing to report
        return None
    return used, used


class GpuMemoryReporter:
    """Records a deployment's GPU memory gauges at most every GPU_REPORT_INTERVAL_S (no-op without a GPU)."""

    def __init__(self, deployment: str, sink: RayMetricsSink) -> None:
        self._deployment = deployment
        self._sink = sink
        self._last = 0.0

    def maybe_report(self) -> None:
        import time

        now = time.monotonic()
        if now - self._last < GPU_REPORT_INTERVAL_S:
            return
        self._last = now
        memory = gpu_memory_bytes()
        if memory is not None:
            record_gpu_memory(self._sink, self._deployment, *memory)
