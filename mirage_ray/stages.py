"""The session's view of the model stages: one async interface, in-process or through Ray handles.

`Session` talks only to :class:`Stages`. In the Serve application the implementation forwards to the stateless
model deployments (actors/); in unit tests and benchmarks :class:`LocalStages` runs the same backends in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from mirage_ray.config import MirageSettings
from mirage_ray.vision.base import Detector, Enhancer, Swapper
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.voice.base import VoiceConverter, VoiceParams

T = TypeVar("T")
logger = logging.getLogger(__name__)
# a voice stage that does not report its need gets the most any backend needs (RVC's)
DEFAULT_VOICE_CONTEXT_MS = 384
DEFAULT_SWAP_MARGIN = 0.2  # context a bbox-local swapper gets unless it declares its own ``context_margin``


def swap_margin(swapper: object) -> float:
    """The region around the faces ``swapper`` needs, as a fraction of the face size on each side."""
    return float(getattr(swapper, "context_margin", DEFAULT_SWAP_MARGIN))


class StageUnavailable(RuntimeError):
    """A stage call failed (dying replica, backend error); the session answers that payload in passthrough."""


@dataclass(frozen=True)
class StageInfo:
    """What the stages can do, as the session needs to know it (built once per ingress from the stages' reports).

    ``report`` is the stages' own report (name, reason, fallback per stage), sent as ``hello.backends``.
    """

    swap_passthrough: bool = False  # the swapper returns frames unchanged (explicit diagnostics choice)
    swap_margin: float = DEFAULT_SWAP_MARGIN  # the swapper gets the face boxes grown by this on each side
    enhancer_available: bool = False
    voices: tuple[str, ...] = ()  # model voices the voice stage offers (presets come on top)
    fallback_converter: str = "the fallback converter"  # what the voice stage switches to on audio failure
    fail_closed_converter: str = "pitch-shift"  # what the ingress runs itself when the voice stage cannot answer
    voice_context_ms: int = DEFAULT_VOICE_CONTEXT_MS  # the left context the voice stage's converters need
    report: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_report(cls, report: Mapping[str, Mapping[str, Any]], fail_closed_converter: str) -> StageInfo:
        """From the per-stage ``ready()`` reports (detector, swapper, enhancer, voice)."""
        voice = report.get("voice", {})
        voices = tuple(voice.get("voices", ()))
        swapper = report.get("swapper", {})
        return cls(
            swap_passthrough=bool(swapper.get("passthrough", False)),
            swap_margin=float(swapper.get("context_margin", DEFAULT_SWAP_MARGIN)),
            enhancer_available=not report.get("enhancer", {}).get("fallback", True),
            voices=voices,
            fallback_converter=str(voice.get("fallback_converter", cls.fallback_converter)),
            voice_context_ms=int(voice.get("context_ms", cls.voice_context_ms)),
            fail_closed_converter=fail_closed_converter,
            report={**report, "voices": list(voices), "fail_closed_converter": fail_closed_converter},
        )


def lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (Linux: per thread; elsewhere the whole process would
    change, so nothing is done there)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except OSError as exc:  # a container may forbid it: the threads keep the process's priority
        logger.warning("could not lower the video threads' priority: %s", exc)


class Workers:
    """Thread pools for a replica's CPU work, off the event loop: one for video, one for audio, one for fail-closed.

    Separate pools so an audio job never queues behind frames (audio first), and a fail-closed pitch shift never
    queues behind the conversion that timed out (a timeout does not stop the thread running it); all shared by the
    replica's sessions.
    """

    def __init__(self, video_threads: int = 2, audio_threads: int = 1, video_nice: int = 0) -> None:
        """``video_nice`` > 0 lowers the video threads' CPU priority (Linux schedules threads one by one), so that
        on shared cores a frame never holds up the event loop or an audio job: audio first, down to the scheduler."""
        self._video = ThreadPoolExecutor(
            video_threads, thread_name_prefix="mirage-video", initializer=lower_priority, initargs=(video_nice,)
        )
        self._audio = ThreadPoolExecutor(audio_threads, thread_name_prefix="mirage-audio")
        self._fail_closed = ThreadPoolExecutor(1, thread_name_prefix="mirage-fail-closed")

    @classmethod
    def from_settings(cls, settings: MirageSettings) -> Workers:
        return cls(settings.video_threads, settings.audio_threads, settings.video_thread_nice)

    async def video(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._video, fn, *args)

    async def audio(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._audio, fn, *args)

    async def fail_closed(self, fn: Callable[..., T], *args: Any) -> T:
        """The fail-closed stand-in for a stage that failed or timed out, on its own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._fail_closed, fn, *args)

    def shutdown(self) -> None:
        for pool in (self._video, self._audio, self._fail_closed):
            pool.shutdown(wait=False, cancel_futures=True)


class Stages(Protocol):
    """What a session needs from the model stages. Every call is stateless."""

    async def detect(self, image: np.ndarray) -> list[Face]: ...

    async def identity(self, image: np.ndarray, face: Face) -> SourceIdentity: ...

    async def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray: ...

    async def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray: ...

    async def convert(self, window: np.ndarray, params: VoiceParams, fallback: bool = False) -> np.ndarray: ...


class LocalStages:
    """In-process stages over ready backends, run on the replica's workers (tests, benchmarks, the in-process
    baseline, and the ingress's own stages where ``local_stages`` places them there)."""

    def __init__(
        self,
        settings: MirageSettings,
        detector: Detector | None,
        swapper: Swapper | None,
        enhancer: Enhancer | None,
        converter: VoiceConverter | None,
        fallback_converter: VoiceConverter | None,
        workers: Workers | None = None,
    ) -> None:
        """Backends that are None are not placed here (calling them raises :class:`StageUnavailable`)."""
        self.workers = workers or Workers.from_settings(settings)
        self.detector = detector
        self.swapper = swapper
        self.enhancer = enhancer
        self.converter = converter
        self.fallback_converter = fallback_converter

    async def _run(self, stage: str, fn: Callable[..., T] | None, *args: Any) -> T:
        """``fn(*args)`` off the event loop: audio on the audio pool, video on the video pool."""
        if fn is None:
            raise StageUnavailable(f"the {stage} stage is not placed in this process")
        return await (self.workers.audio(fn, *args) if stage == "voice" else self.workers.video(fn, *args))

    async def detect(self, image: np.ndarray) -> list[Face]:
        return await self._run("detect", self.detector and self.detector.detect, image)

    async def identity(self, image: np.ndarray, face: Face) -> SourceIdentity:
        return await self._run("swap", self.swapper and self.swapper.identity, image, face)

    async def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray:
        return await self._run("swap", self.swapper and self.swapper.swap, image, list(faces), identity)

    async def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
        return await self._run("enhance", self.enhancer and self.enhancer.restore, crops, fidelity)

    async def convert(self, window: np.ndarray, params: VoiceParams, fallback: bool = False) -> np.ndarray:
        converter = self.fallback_converter if fallback else self.converter
        return await self._run("voice", converter and converter.convert, window, params)
