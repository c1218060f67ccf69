"""Stateless model deployments: shims that unpack a typed request, call the core backend, and pack the response.

Classes stay undecorated; actors/app.py applies ``serve.deployment(cls, **options).bind(settings)``. Their public
methods are the handles API of mirage_ray/stage_api.py (docs/handles.md). Requests from several callers are batched
with ``@serve.batch``; batch size and wait come from the deployment's ``user_config`` through ``reconfigure`` (the
builder sets it from settings; serve_config.yaml may override it per deployment, also on live replicas). Batches
run off the replica's event loop so one slow frame does not stall the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
from ray import serve

from actors.metrics_sink import GpuMemoryReporter, RayMetricsSink, in_flight
from mirage_ray.backends import Choice, build_converters, build_detector, build_enhancer, build_swapper
from mirage_ray.config import MirageSettings
from mirage_ray.models import ModelRegistry
from mirage_ray.stage_api import (
    BatchConfig,
    BatchReport,
    ConvertRequest,
    ConvertResponse,
    DetectRequest,
    DetectResponse,
    IdentityMiss,
    IdentityRequest,
    IdentityResponse,
    RestoreRequest,
    RestoreResponse,
    StageError,
    StageFailure,
    SwapRequest,
    SwapResponse,
)
from mirage_ray.stages import swap_margin
from mirage_ray.vision.faces import SourceIdentity

logger = logging.getLogger(__name__)

IDENTITY_CACHE_SIZE = 256  # identities a swapper replica keeps (one per live reference upload)
# the @serve.batch literals below are placeholders: every replica applies its user_config (BatchConfig) at start
INITIAL_BATCH_SIZE = 8
INITIAL_BATCH_WAIT_S = 0.002
R = TypeVar("R")


def _guarded(stage: str, fn: Callable[..., R], *args: Any) -> R | StageFailure:
    """One batch item's result, or a StageFailure so one bad item does not fail the whole batch."""
    try:
        return fn(*args)
    except Exception as exc:
        logger.exception("%s failed for one item of a batch", stage)
        return StageFailure(f"{stage}: {type(exc).__name__}: {exc}")


def _raise_failure(result: R | StageFailure) -> R:
    """The caller's view of one batch item: its result, or StageError for that item alone."""
    if isinstance(result, StageFailure):
        raise StageError(result.message)
    return result


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

    def resolve(self, identity: SourceIdentity | None, key: str | None) -> SourceIdentity | None:
        """Store a full identity under ``key`` (when given), or look ``key`` up; None on a miss."""
        if key is None:
            return identity
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
    """What every model deployment shares: batching from ``user_config``, and a report of the batches it ran."""

    BATCHED: str  # the name of the class's @serve.batch method
    _choice: Choice  # the backend the registry chose (set by the subclass before this __init__)

    def __init__(self, settings: MirageSettings, name: str) -> None:
        self._gpu = GpuMemoryReporter(name, RayMetricsSink())
        self._batch_defaults = BatchConfig.from_settings(settings)
        self._batch_sizes: Counter[int] = Counter()
        self._apply_batching(self._batch_defaults)

    def _apply_batching(self, config: BatchConfig) -> None:
        method = getattr(self, self.BATCHED)
        method.set_max_batch_size(config.max_batch_size)
        method.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    def ready(self) -> dict[str, Any]:
        """The readiness report: ready, and the backend chosen (name, reason, fallback)."""
        return {"ready": True, **self._choice.as_dict()}

    def reconfigure(self, config: Mapping[str, Any] | None) -> None:
        """Serve calls this with the deployment's ``user_config`` at start and whenever it changes (replicas live on).

        Keys it leaves out keep the settings' values; a bad value is refused (ValueError with the allowed range).
        """
        batch = BatchConfig.from_user_config(config, self._batch_defaults)
        self._apply_batching(batch)
        logger.info("batching: max %d, wait %.3f s", batch.max_batch_size, batch.batch_wait_timeout_s)

    def batching(self) -> BatchReport:
        """The batch config in effect on this replica (as its batch queue holds it), and the sizes of the batches it
        ran since it started."""
        method = getattr(self, self.BATCHED)
        return BatchReport(
            replica=serve.get_replica_context().replica_id.unique_id,
            max_batch_size=method._get_max_batch_size(),
            batch_wait_timeout_s=method._get_batch_wait_timeout_s(),
            sizes=dict(self._batch_sizes),
        )

    async def _run_batch(self, size: int, run: Callable[[], list[R]]) -> list[R]:
        """Count a batch of ``size`` items, then ``run`` it off the replica's event loop (and report GPU memory when
        it is time)."""
        self._batch_sizes[size] += 1

        def reported_run() -> list[R]:
            self._gpu.maybe_report()
            return run()

        return await asyncio.to_thread(reported_run)


class DetectorDeployment(_StageDeployment):
    BATCHED = "_detect_batch"

    def __init__(self, settings: MirageSettings) -> None:
        self._detector, self._choice = build_detector(settings, ModelRegistry(settings))
        super().__init__(settings, "Detector")

    @in_flight
    async def detect(self, request: DetectRequest) -> DetectResponse:
        return _raise_failure(await self._detect_batch(request))

    @serve.batch(max_batch_size=INITIAL_BATCH_SIZE, batch_wait_timeout_s=INITIAL_BATCH_WAIT_S)
    async def _detect_batch(self, requests: list[DetectRequest]) -> list[DetectResponse | StageFailure]:
        """Frames from several callers in one model run (same-size images batch together); if the batch fails,
        each frame again on its own so one bad item fails alone."""
        images = [request.image for request in requests]

        def run() -> list[DetectResponse | StageFailure]:
            try:
                return [DetectResponse(tuple(faces)) for faces in self._detector.detect_batch(images)]
            except Exception:
                return [_guarded("detect", self._detect_one, image) for image in images]

        return await self._run_batch(len(requests), run)

    def _detect_one(self, image: np.ndarray) -> DetectResponse:
        return DetectResponse(tuple(self._detector.detect(image)))


class SwapperDeployment(_StageDeployment):
    BATCHED = "_swap_batch"

    def __init__(self, settings: MirageSettings) -> None:
        self._swapper, self._choice = build_swapper(settings, ModelRegistry(settings))
        self._identities = IdentityCache()
        super().__init__(settings, "Swapper")

    def ready(self) -> dict[str, Any]:
        return {
            "ready": True,
            "passthrough": self._swapper.name == "passthrough",
            "context_margin": swap_margin(self._swapper),
            **self._choice.as_dict(),
        }

    async def identity(self, request: IdentityRequest) -> IdentityResponse:
        identity = await asyncio.to_thread(self._swapper.identity, request.image, request.face)
        return IdentityResponse(identity)

    @in_flight
    async def swap(self, request: SwapRequest) -> SwapResponse | IdentityMiss:
        """The swapped image; IdentityMiss when the request named an identity by key this replica does not hold."""
        return _raise_failure(await self._swap_batch(request))

    @serve.batch(max_batch_size=INITIAL_BATCH_SIZE, batch_wait_timeout_s=INITIAL_BATCH_WAIT_S)
    async def _swap_batch(self, requests: list[SwapRequest]) -> list[SwapResponse | IdentityMiss | StageFailure]:
        resolved = [self._identities.resolve(r.identity, r.identity_key) for r in requests]
        return await self._run_batch(len(requests), lambda: self.swap_items(requests, resolved))

    def swap_items(
        self, requests: list[SwapRequest], identities: list[SourceIdentity | None]
    ) -> list[SwapResponse | IdentityMiss | StageFailure]:
        """Each request swapped with its resolved identity (None: a key this replica does not hold)."""
        return [
            IdentityMiss(str(request.identity_key))
            if identity is None
            else _guarded("swap", self._swap_one, request, identity)
            for request, identity in zip(requests, identities, strict=True)
        ]

    def _swap_one(self, request: SwapRequest, identity: SourceIdentity) -> SwapResponse:
        return SwapResponse(self._swapper.swap(request.image, list(request.faces), identity))


class EnhancerDeployment(_StageDeployment):
    BATCHED = "_restore_batch"

    def __init__(self, settings: MirageSettings) -> None:
        self._enhancer, self._choice = build_enhancer(settings, ModelRegistry(settings))
        if not self._choice.fallback:  # CodeFormer on torch: bound its allocator (weights count toward the cap)
            cap_torch_gpu_memory(settings.gpu_mem_limit_mb)
        super().__init__(settings, "Enhancer")

    @in_flight
    async def restore(self, request: RestoreRequest) -> RestoreResponse:
        return _raise_failure(await self._restore_batch(request))

    @serve.batch(max_batch_size=INITIAL_BATCH_SIZE, batch_wait_timeout_s=INITIAL_BATCH_WAIT_S)
    async def _restore_batch(self, requests: list[RestoreRequest]) -> list[RestoreResponse | StageFailure]:
        """Face crops from several callers run as one batch per fidelity (the model takes one weight per call)."""

        def run() -> list[RestoreResponse | StageFailure]:
            restored = restore_batched(self._enhancer, [r.crops for r in requests], [r.fidelity for r in requests])
            return [r if isinstance(r, StageFailure) else RestoreResponse(r) for r in restored]

        return await self._run_batch(len(requests), run)


class VoiceDeployment(_StageDeployment):
    BATCHED = "_convert_batch"

    def __init__(self, settings: MirageSettings) -> None:
        self._primary, self._fallback, self._choice = build_converters(settings, ModelRegistry(settings))
        super().__init__(settings, "Voice")

    def ready(self) -> dict[str, Any]:
        voices = list(getattr(self._primary, "voices", []) or [])
        context_ms = max(self._primary.context_ms, self._fallback.context_ms)
        return {
            "ready": True,
            "fallback_converter": self._fallback.name,
            "voices": voices,
            "context_ms": context_ms,
            **self._choice.as_dict(),
        }

    @in_flight
    async def convert(self, request: ConvertRequest) -> ConvertResponse:
        return _raise_failure(await self._convert_batch(request))

    @serve.batch(max_batch_size=INITIAL_BATCH_SIZE, batch_wait_timeout_s=INITIAL_BATCH_WAIT_S)
    async def _convert_batch(self, requests: list[ConvertRequest]) -> list[ConvertResponse | StageFailure]:
        return await self._run_batch(
            len(requests), lambda: [_guarded("voice", self._convert_one, request) for request in requests]
        )

    def _convert_one(self, request: ConvertRequest) -> ConvertResponse:
        converter = self._fallback if request.fallback else self._primary
        return ConvertResponse(converter.convert(request.window, request.params))
