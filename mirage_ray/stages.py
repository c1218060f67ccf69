"""The session's view of the model stages: one async interface, in-process or through Ray handles.

`Session` talks only to :class:`Stages`. In the Serve application the implementation forwards to the stateless
model deployments (actors/); in unit tests and benchmarks :class:`LocalStages` runs the same backends in-process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from mirage_ray.config import MirageSettings
from mirage_ray.vision.base import Detector, Enhancer, Swapper
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.voice.base import VoiceConverter, VoiceParams

T = TypeVar("T")


class StageUnavailable(RuntimeError):
    """A stage call failed (dying replica, backend error); the session answers that payload in passthrough."""


@dataclass(frozen=True)
class StageFailure:
    """Returned in place of one batch item's result when that item failed (the others are unaffected)."""

    message: str


@dataclass(frozen=True)
class IdentityMiss:
    """A swapper replica does not hold the identity a request named by key; the caller resends it in full."""

    key: str


class Stages(Protocol):
    """What a session needs from the model stages. Every call is stateless."""

    async def detect(self, image: np.ndarray) -> list[Face]: ...

    async def identity(self, image: np.ndarray, face: Face) -> SourceIdentity: ...

    async def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray: ...

    async def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray: ...

    async def convert(self, window: np.ndarray, params: VoiceParams, fallback: bool = False) -> np.ndarray: ...


class TestDelay:
    """Test-only extra latency for one stage (0 unless configured); changeable at run time with test hooks on."""

    __test__ = False  # not a pytest class

    def __init__(self, settings: MirageSettings, stage: str) -> None:
        self.stage = stage
        self.ms = float(settings.test_delay_ms.get(stage, 0.0))
        self._hooks = settings.test_hooks

    def set(self, ms: float) -> None:
        if not self._hooks:
            raise PermissionError("stage delays can only change at run time with test_hooks enabled")
        self.ms = max(0.0, float(ms))

    def sleep(self) -> None:
        if self.ms > 0:
            time.sleep(self.ms / 1000.0)


class LocalStages:
    """In-process stages over ready backends (tests, benchmarks, the in-process baseline)."""

    def __init__(
        self,
        settings: MirageSettings,
        detector: Detector,
        swapper: Swapper,
        enhancer: Enhancer,
        converter: VoiceConverter,
        fallback_converter: VoiceConverter,
    ) -> None:
        self.detector = detector
        self.swapper = swapper
        self.enhancer = enhancer
        self.converter = converter
        self.fallback_converter = fallback_converter
        self.delays = {stage: TestDelay(settings, stage) for stage in ("detect", "swap", "enhance", "voice")}

    async def _run(self, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` off the event loop, after the stage's test delay (0 unless a test sets one)."""

        def call() -> T:
            self.delays[stage].sleep()
            return fn(*args)

        return await asyncio.to_thread(call)

    async def detect(self, image: np.ndarray) -> list[Face]:
        return await self._run("detect", self.detector.detect, image)

    async def identity(self, image: np.ndarray, face: Face) -> SourceIdentity:
        return await self._run("swap", self.swapper.identity, image, face)

    async def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray:
        return await self._run("swap", self.swapper.swap, image, list(faces), identity)

    async def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
        return await self._run("enhance", self.enhancer.restore, crops, fidelity)

    async def convert(self, window: np.ndarray, params: VoiceParams, fallback: bool = False) -> np.ndarray:
        converter = self.fallback_converter if fallback else self.converter
        return await self._run("voice", converter.convert, window, params)
