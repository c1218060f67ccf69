"""MetricsSink over Ray's metrics API, so Ray's Prometheus endpoint and dashboard show the session metrics; and the
model deployments' stage reports (queue, GPU memory) to the controller's global view."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ray
from ray import serve
from ray.util import metrics as ray_metrics

from mirage_ray.metrics import ALL_METRICS, MetricSpec, Tags, record_gpu_memory

logger = logging.getLogger(__name__)


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


GPU_REPORT_INTERVAL_S = 2.0  # a working replica reports at most this often (controller: stale after 10 s)


@functools.cache
def _torch_cuda() -> Any:
    """torch when it is installed and sees a CUDA device, else None (looked up once: importing torch takes seconds)."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def gpu_memory_bytes() -> tuple[int, int] | None:
    """(allocated, reserved) GPU bytes of this process, or None without a CUDA device.

    torch's caching allocator gives both (CodeFormer); for onnxruntime, whose arena torch cannot see, NVML's
    per-process usage stands for both (nvidia-ml-py, installed with the ``gpu`` extra).
    """
    torch = _torch_cuda()
    if torch is None:
        return None
    reserved = int(torch.cuda.memory_reserved())
    if reserved > 0:
        return int(torch.cuda.memory_allocated()), reserved
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(_device_index())
        used = sum(
            p.usedGpuMemory or 0 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()
        )
    except Exception:  # NVML absent or not permitted: nothing to report
        return None
    return used, used


def _device_index() -> int:
    """The physical index of this worker's GPU (Ray's assignment; NVML counts physical devices)."""
    ids = ray.get_gpu_ids()
    try:
        return int(ids[0]) if ids else 0
    except (TypeError, ValueError):  # a UUID: NVML's index of the first device will do
        return 0


def gpu_memory_fraction() -> float | None:
    """Memory in use on this worker's GPU as a fraction of the device (all processes: the replicas share it), or
    None without a GPU. NVML first (no CUDA context needed); torch's ``mem_get_info`` when this process already
    holds a CUDA context (never creates one: a context costs hundreds of MB)."""
    torch = _torch_cuda()
    if torch is None:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(_device_index()))
        return round(float(info.used) / float(info.total), 4)
    except Exception:
        pass
    if torch.cuda.is_initialized():
        free, total = torch.cuda.mem_get_info()
        return round(1.0 - free / total, 4)
    return None


IN_FLIGHT_ATTR = "_requests_in_flight"
AsyncMethod = TypeVar("AsyncMethod", bound=Callable[..., Awaitable[Any]])


def in_flight(method: AsyncMethod) -> AsyncMethod:
    """Count a deployment method's requests in flight on its instance (running in a batch, or waiting for one):
    the queue the replica reports. (Serve's batch loop moves requests out of its own queue at once, so the
    requests a replica holds are counted where they enter.)"""

    @functools.wraps(method)
    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        setattr(self, IN_FLIGHT_ATTR, getattr(self, IN_FLIGHT_ATTR, 0) + 1)
        try:
            return await method(self, *args, **kwargs)
        finally:
            setattr(self, IN_FLIGHT_ATTR, getattr(self, IN_FLIGHT_ATTR) - 1)

    counted.counts_in_flight = True  # type: ignore[attr-defined]
    return counted  # type: ignore[return-value]


def requests_in_flight(servable: Any) -> int | None:
    """Requests the deployment instance holds now (None when none of its methods is counted)."""
    if not any(getattr(getattr(type(servable), n, None), "counts_in_flight", False) for n in dir(type(servable))):
        return None
    return int(getattr(servable, IN_FLIGHT_ATTR, 0))


class GpuMemoryReporter:
    """A model deployment's reports, at most every GPU_REPORT_INTERVAL_S while it works: GPU memory gauges to Ray's
    metrics (no-op without a GPU), and a stage report (queue, GPU memory fraction) to the controller actor."""

    def __init__(self, deployment: str, sink: RayMetricsSink) -> None:
        self._deployment = deployment
        self._sink = sink
        self._last = 0.0
        self._controller: Any = None
        self._sent: Any = None  # the previous report's ObjectRef (its error, if any, is read once)
        _torch_cuda()  # at replica start, not in the first request's time (a cold import made first swaps time out)

    def maybe_report(self) -> None:
        now = time.monotonic()
        if now - self._last < GPU_REPORT_INTERVAL_S:
            return
        self._last = now
        memory = gpu_memory_bytes()
        if memory is not None:
            record_gpu_memory(self._sink, self._deployment, *memory)
        try:
            self._report_stage()
        except Exception as exc:  # the controller is away: the next interval tries again
            self._controller = None
            logger.debug("stage report not sent: %s", exc)

    def stage_report(self) -> dict[str, Any]:
        context = serve.get_replica_context()
        return {
            "deployment": self._deployment,
            "replica": context.replica_id.unique_id,
            "queue": requests_in_flight(context.servable_object),
            "gpu_mem_fraction": gpu_memory_fraction(),
        }

    def _report_stage(self) -> None:
        from actors.controller import CONTROLLER_NAME, CONTROLLER_NAMESPACE

        if self._sent is not None:
            ready, _ = ray.wait([self._sent], timeout=0)
            if ready:
                self._sent = None
                ray.get(ready[0])  # raises when the controller died: look it up again
        if self._controller is None:
            self._controller = ray.get_actor(CONTROLLER_NAME, namespace=CONTROLLER_NAMESPACE)
        self._sent = self._controller.report_stage.remote(self.stage_report())
