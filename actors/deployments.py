"""Stateless model deployments: shims that unpack a request, call the core backend, and pack the result.

Classes stay undecorated; actors/app.py applies ``serve.deployment(cls, **options).bind(settings)``. Calls from
several sessions are batched with ``@serve.batch`` (sizes from settings through ``reconfigure``) and run off the
replica's event loop so one slow frame does not stall the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray import serve

from actors.metrics_sink import GpuMemoryReporter, RayMetricsSink
from mirage_ray.backends import build_converters, build_detector, build_enhancer, build_swapper
from mirage_ray.config import MirageSettings
from mirage_ray.models import ModelRegistry
from mirage_ray.stages import IdentityMiss, StageFailure, TestDelay, swap_margin
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.voice.base import VoiceParams

logger = logging.getLogger(__name__)

IDENTITY_CACHE_SIZE = 256  # identities a swapper replica keeps (one per live reference upload)


def _configure_batching(method: Any, settings: MirageSettings) -> None:
    method.set_max_batch_size(settings.batch_max_size)
    method.set_batch_wait_timeout_s(settings.batch_wait_s)


def _guarded(stage: str, fn: Any, *args: Any) -> Any:
    """One batch item's result, or a StageFailure so one bad item does not fail the whole batch."""
    try:
        return fn(*args)
    except Exception as exc:
        logger.exception("%s failed for one item of a batch", stage)
        return StageFailure(f"{stage}: {type(exc).__name__}: {exc}")


def cap_torch_gpu_memory(limit_mb: int) -> float | None:
    """Bound torch's allocator in this replica's process to ``limit_mb`` (the fraction set), when CUDA is present.

    Process-wide by nature, which is right here: a replica process holds only this deployment's model.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    fraction = min(1.0, limit_mb * 1024 * 1024 / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    logger.info("torch GPU memory capped at %d MiB (%.0f%% of the device)", limit_mb, 100 * fraction)
    return fraction


class IdentityCache:
    """LRU of source identities by key: an optimisation inside a stateless deployment (a miss is answered with
    IdentityMiss and the caller resends the identity in full)."""

    def __init__(self, size: int = IDENTITY_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[str, SourceIdentity] = OrderedDict()

    def resolve(self, identity: SourceIdentity | None, key: str) -> SourceIdentity | None:
        """Store a full identity under ``key``, or look ``key`` up; None on a miss."""
        if identity is not None:
            self._items[key] = identity
        else:
            identity = self._items.get(key)
        if identity is not None:
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return identity


def restore_batched(enhancer: Any, crops: list[np.ndarray], fidelity: list[float]) -> list[Any]:
    """Each request's restored crops: requests with the same fidelity concatenated into one model call."""
    results: list[Any] = [None] * len(crops)
    groups: dict[float, list[int]] = {}
    for index, weight in enumerate(fidelity):
        groups.setdefault(weight, []).append(index)
    for weight, indices in groups.items():
        joined = np.concatenate([crops[i] for i in indices])
        restored = _guarded("enhance", enhancer.restore, joined, weight)
        start = 0
        for i in indices:
            count = len(crops[i])
            results[i] = restored if isinstance(restored, StageFailure) else restored[start : start + count]
            start += count
    return results


class _StageDeployment:
    _delay: TestDelay
    _gpu: GpuMemoryReporter

    def set_test_delay(self, ms: float) -> float:
        """Test-only (needs ``test_hooks``): add ``ms`` of latency to every call of this stage."""
        self._delay.set(ms)
        return self._delay.ms


class DetectorDeployment(_StageDeployment):
    def __init__(self, settings: MirageSettings) -> None:
        self._settings = settings
        self._detector, self._choice = build_detector(settings, ModelRegistry(settings))
        self._delay = TestDelay(settings, "detect")
        self._gpu = GpuMemoryReporter("Detector", RayMetricsSink())
        _configure_batching(self.detect, settings)

    def ready(self) -> dict[str, Any]:
        return {"ready": True, **self._choice.as_dict()}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Frames from several sessions in one model run (same-size images batch together); if the batch fails,
        each frame again on its own so one bad item fails alone."""

        def run() -> list[Any]:
            self._delay.sleep()
            self._gpu.maybe_report()
            try:
                return self._detector.detect_batch(images)
            except Exception:
                return [_guarded("detect", self._detector.detect, image) for image in images]

        return await asyncio.to_thread(run)


class SwapperDeployment(_StageDeployment):
    def __init__(self, settings: MirageSettings) -> None:
        self._settings = settings
        self._swapper, self._choice = build_swapper(settings, ModelRegistry(settings))
        self._delay = TestDelay(settings, "swap")
        self._gpu = GpuMemoryReporter("Swapper", RayMetricsSink())
        self._identities = IdentityCache()
        _configure_batching(self.swap, settings)

    def ready(self) -> dict[str, Any]:
        return {
            "ready": True,
            "passthrough": self._swapper.name == "passthrough",
            "context_margin": swap_margin(self._swapper),
            **self._choice.as_dict(),
        }

    async def identity(self, image: np.ndarray, face: Face) -> SourceIdentity:
        return await asyncio.to_thread(self._swapper.identity, image, face)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def swap(
        self,
        images: list[np.ndarray],
        faces: list[Sequence[Face]],
        identities: list[SourceIdentity | None],
        keys: list[str],
    ) -> list[Any]:
        """Swap each item; an identity sent in full is cached under its key, a key alone is looked up (a miss
        answers IdentityMiss and the caller resends the identity)."""
        resolved = [self._identities.resolve(identity, key) for identity, key in zip(identities, keys, strict=True)]

        def run() -> list[Any]:
            self._delay.sleep()
            self._gpu.maybe_report()
            return [
                IdentityMiss(key) if identity is None else _guarded("swap", self._swapper.swap, image, face, identity)
                for image, face, identity, key in zip(images, faces, resolved, keys, strict=True)
            ]

        return await asyncio.to_thread(run)


class EnhancerDeployment(_StageDeployment):
    def __init__(self, settings: MirageSettings) -> None:
        self._settings = settings
        self._enhancer, self._choice = build_enhancer(settings, ModelRegistry(settings))
        if not self._choice.fallback:  # CodeFormer on torch: bound its allocator (weights count toward the cap)
            cap_torch_gpu_memory(settings.gpu_mem_limit_mb)
        self._delay = TestDelay(settings, "enhance")
        self._gpu = GpuMemoryReporter("Enhancer", RayMetricsSink())
        _configure_batching(self.restore, settings)

    def ready(self) -> dict[str, Any]:
        return {"ready": True, **self._choice.as_dict()}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def restore(self, crops: list[np.ndarray], fidelity: list[float]) -> list[Any]:
        """Face crops from several sessions run as one batch per fidelity (the model takes one weight per call)."""

        def run() -> list[Any]:
            self._delay.sleep()
            self._gpu.maybe_report()
            return restore_batched(self._enhancer, crops, fidelity)

        return await asyncio.to_thread(run)


class VoiceDeployment(_StageDeployment):
    def __init__(self, settings: MirageSettings) -> None:
        self._settings = settings
        self._primary, self._fallback, self._choice = build_converters(settings, ModelRegistry(settings))
        self._delay = TestDelay(settings, "voice")
        self._gpu = GpuMemoryReporter("Voice", RayMetricsSink())
        _configure_batching(self.convert, settings)

    def ready(self) -> dict[str, Any]:
        voices = list(getattr(self._primary, "voices", []) or [])
        return {"ready": True, "fallback_converter": self._fallback.name, "voices": voices, **self._choice.as_dict()}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def convert(
        self, windows: list[np.ndarray], params: list[VoiceParams], fallback: list[bool]
    ) -> list[np.ndarray]:
        def run() -> list[np.ndarray]:
            self._delay.sleep()
            self._gpu.maybe_report()
            jobs = zip(windows, params, fallback, strict=True)
            return [
                _guarded("voice", (self._fallback if use_fallback else self._primary).convert, window, p)
                for window, p, use_fallback in jobs
            ]

        return await asyncio.to_thread(run)
