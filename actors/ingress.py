"""The ingress deployment: one Starlette app per replica (built at replica start), sessions over Ray handles.

Shutdown: Serve stops a replica by draining its ongoing requests (every WebSocket session is one, for its whole life)
for up to ``graceful_shutdown_timeout_s``, then kills it; the replica's ``__del__`` runs only once the drain is over,
too late to say goodbye. So each replica watches its application's status (the controller actor polls it; see
``actors.controller.application_deleting``), and when Serve deletes the application
(``serve.delete``, ``serve.shutdown``, the launcher's SIGTERM, a RayService update that drops it) it closes every
session with 1001 after answering the audio it received (``ServerContext.shutdown``); the drain then ends at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from actors.controller import application_deleting, get_or_create_controller
from actors.metrics_sink import RayMetricsSink
from mirage_ray.admission import LocalAdmission, Verdict
from mirage_ray.backends import build_converters, build_detector, build_enhancer, build_swapper
from mirage_ray.config import MirageSettings
from mirage_ray.models import ModelRegistry
from mirage_ray.security import build_auth
from mirage_ray.server import ServerContext, build_app
from mirage_ray.stage_api import (
    ConvertRequest,
    DetectRequest,
    IdentityMiss,
    IdentityRequest,
    RestoreRequest,
    SwapRequest,
)
from mirage_ray.stages import LocalStages, StageInfo, StageUnavailable, Workers
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.voice.base import SAMPLE_RATE, VoiceParams
from mirage_ray.voice.convert_shift import ShiftConverter

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0
WARM_UP_SIDE_PX = 64
STAGES = ("detector", "swapper", "enhancer", "voice")
ADMISSION_TIMEOUT_S = 1.0
SHUTDOWN_POLL_S = 1.0  # how often a replica looks whether Serve is deleting its application (adds to the drain time)


def build_local_stages(settings: MirageSettings, workers: Workers) -> LocalStages | None:
    """The stages ``settings.local_stages`` places in the ingress process (the CPU profile: detect and swap)."""
    placed = set(settings.local_stages)
    if not placed:
        return None
    registry = ModelRegistry(settings)
    converter, fallback = build_converters(settings, registry)[:2] if "voice" in placed else (None, None)
    return LocalStages(
        settings,
        build_detector(settings, registry)[0] if "detect" in placed else None,
        build_swapper(settings, registry)[0] if "swap" in placed else None,
        build_enhancer(settings, registry)[0] if "enhance" in placed else None,
        converter,
        fallback,
        workers,
    )


class RayStages:
    """:class:`~mirage_ray.stages.Stages` over the model deployments' handles API (mirage_ray/stage_api.py), except
    the stages placed in this process (``local``): those run on the replica's workers with no hop at all."""

    def __init__(
        self, handles: dict[str, DeploymentHandle], local: LocalStages | None = None, placed: Sequence[str] = ()
    ) -> None:
        self._handles = handles
        self._local = local
        self._placed = frozenset(placed) if local is not None else frozenset()
        self._identity_keys: weakref.WeakKeyDictionary[SourceIdentity, str] = weakref.WeakKeyDictionary()

    async def _call(self, stage: str, method: str, request: Any) -> Any:
        try:
            return await getattr(self._handles[stage], method).remote(request)
        except Exception as exc:  # StageError for this request, replica died, actor error, backpressure
            raise StageUnavailable(f"{stage}.{method}: {type(exc).__name__}: {exc}") from exc

    async def detect(self, image: np.ndarray) -> list[Face]:
        if "detect" in self._placed:
            return await self._local.detect(image)
        return list((await self._call("detector", "detect", DetectRequest(image))).faces)

    async def identity(self, image: np.ndarray, face: Face) -> SourceIdentity:
        if "swap" in self._placed:
            return await self._local.identity(image, face)
        return (await self._call("swapper", "identity", IdentityRequest(image, face))).identity

    async def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray:
        """The identity travels in full once per replica; after that only its key does (~200 kB saved per frame)."""
        if "swap" in self._placed:
            return await self._local.swap(image, faces, identity)
        key = self._identity_keys.get(identity)
        first = key is None
        if key is None:
            key = self._identity_keys[identity] = uuid.uuid4().hex
        request = SwapRequest(image, tuple(faces), identity if first else None, key)
        result = await self._call("swapper", "swap", request)
        if isinstance(result, IdentityMiss):  # another replica, or it was evicted: send it in full
            result = await self._call("swapper", "swap", SwapRequest(image, tuple(faces), identity, key))
        return result.image

    async def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
        if "enhance" in self._placed:
            return await self._local.restore(crops, fidelity)
        return (await self._call("enhancer", "restore", RestoreRequest(crops, fidelity))).crops

    async def convert(self, window: np.ndarray, params: VoiceParams, fallback: bool = False) -> np.ndarray:
        if "voice" in self._placed:
            return await self._local.convert(window, params, fallback)
        return (await self._call("voice", "convert", ConvertRequest(window, params, fallback))).audio


class ControllerAdmission:
    """Admission through the controller's application-wide view; this replica's own view when it cannot answer."""

    def __init__(self, controller: Any, local: LocalAdmission) -> None:
        self._controller = controller  # a callable returning the controller's handle (it may be recreated)
        self._local = local

    async def admit(self, session_id: str) -> Verdict:
        try:
            verdict = await asyncio.wait_for(self._controller().admit.remote(session_id), ADMISSION_TIMEOUT_S)
        except Exception as exc:
            logger.warning("controller unreachable for admission (%s); this replica decides alone", exc)
            return await self._local.admit(session_id)
        return Verdict(**verdict)

    async def release(self, session_id: str) -> None:
        await self._local.release(session_id)
        try:
            await asyncio.wait_for(self._controller().release.remote(session_id), ADMISSION_TIMEOUT_S)
        except Exception as exc:  # its reservation expires by itself
            logger.warning("controller unreachable to release session %s: %s", session_id, exc)

    async def load(self) -> dict[str, Any]:
        try:
            report = await asyncio.wait_for(self._controller().load.remote(), ADMISSION_TIMEOUT_S)
        except Exception as exc:
            return {**await self._local.load(), "controller": f"unreachable: {exc}"}
        return {**report, "scope": "application"}


class IngressDeployment:
    """Holds the WebSocket sessions of this replica; everything else is a handle call away."""

    def __init__(
        self,
        settings: MirageSettings,
        detector: DeploymentHandle,
        swapper: DeploymentHandle,
        enhancer: DeploymentHandle,
        voice: DeploymentHandle,
        auto_secret: str | None = None,
    ) -> None:
        logging.basicConfig(level=settings.log_level)
        self._settings = settings
        self._handles = {"detector": detector, "swapper": swapper, "enhancer": enhancer, "voice": voice}
        self._auth = build_auth(settings, auto_secret=auto_secret)
        self._metrics = RayMetricsSink()
        self._controller: Any = None
        self._shutdown_watch: asyncio.Task[None] | None = None

    async def _readiness(self) -> dict[str, Any]:
        async def one(stage: str) -> tuple[str, dict[str, Any]]:
            try:
                report = await asyncio.wait_for(self._handles[stage].ready.remote(), READY_TIMEOUT_S)
            except Exception as exc:
                return stage, {"ready": False, "error": f"{type(exc).__name__}: {exc}"}
            return stage, report

        return dict(await asyncio.gather(*(one(stage) for stage in STAGES)))

    def _controller_handle(self) -> Any:
        if self._controller is None:
            self._controller = get_or_create_controller(
                dict(self._settings.stage_budget_ms),
                self._settings.max_sessions,
                self._settings.admission_live_load,
                self._settings.sessions_per_replica,  # admission's capacity follows the running replicas
                serve.get_replica_context().app_name,
            )
        return self._controller

    async def _controller_push(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return await self._controller_handle().push.remote(summary)
        except ray.exceptions.RayActorError:
            self._controller = None  # look it up again next time (it restarts under the same name)
            raise

    async def _warm_up(self) -> None:
        """The first call through each handle is slow (~0.85 s measured for voice): pay it before any session."""
        image = np.zeros((WARM_UP_SIDE_PX, WARM_UP_SIDE_PX, 3), np.uint8)
        window = (np.random.default_rng(0).standard_normal(SAMPLE_RATE // 2) * 0.01).astype(np.float32)
        calls = {
            "detector": self._handles["detector"].detect.remote(DetectRequest(image)),
            "voice": self._handles["voice"].convert.remote(ConvertRequest(window)),
        }
        for stage, call in calls.items():
            try:
                await asyncio.wait_for(call, READY_TIMEOUT_S)
            except Exception as exc:  # readiness reports a broken stage; warm-up only saves time
                logger.warning("warm-up call to %s failed: %s", stage, exc)

    async def __serve_build_asgi_app__(self) -> Starlette:
        report = await self._readiness()
        await self._warm_up()
        workers = Workers.from_settings(self._settings)
        local = await asyncio.to_thread(build_local_stages, self._settings, workers)
        if local is not None:
            logger.info("stages placed in the ingress process: %s", ", ".join(self._settings.local_stages))
        context = ServerContext(
            settings=self._settings,
            auth=self._auth,
            stages=RayStages(self._handles, local, self._settings.local_stages),
            info=StageInfo.from_report(report, ShiftConverter.name),
            readiness=self._readiness,
            controller_push=self._controller_push,
            metrics_sink=self._metrics,
            workers=workers,
        )
        context.admission = ControllerAdmission(
            self._controller_handle,
            LocalAdmission(
                self._settings.sessions_per_replica, context.summaries, live_load=self._settings.admission_live_load
            ),
        )
        logger.info("ingress ready; backends: %s", {k: v.get("name") for k, v in report.items()})
        app_name = serve.get_replica_context().app_name
        self._shutdown_watch = asyncio.create_task(
            close_sessions_when_deleted(context, app_name, self._controller_handle)
        )
        return build_app(context)


async def application_deleted(app_name: str, controller: Callable[[], Any], since: float) -> bool:
    """Whether Serve is deleting ``app_name``: the controller actor's answer for a replica started at wall time
    ``since`` (it polls ``serve.status()`` in its own process; see ``actors.controller.application_deleting``), else
    Serve's own when the controller cannot say."""
    try:
        answer = await asyncio.wait_for(controller().deleting.remote(since), ADMISSION_TIMEOUT_S)
    except Exception as exc:  # the controller restarting: ask Serve directly this time
        logger.debug("the controller could not say whether the app is being deleted: %s", exc)
        answer = None
    if answer is not None:
        return bool(answer)
    return application_deleting(await asyncio.to_thread(serve.status), app_name)


async def close_sessions_when_deleted(context: ServerContext, app_name: str, controller: Callable[[], Any]) -> None:
    """Close every session of this replica with 1001 once Serve deletes the application (see the module doc)."""
    started_at = time.time()
    while True:
        await asyncio.sleep(SHUTDOWN_POLL_S)
        try:
            if await application_deleted(app_name, controller, started_at):
                break
        except Exception as exc:  # Serve's controller restarting: look again next time
            logger.debug("serve.status() failed: %s", exc)
    logger.info("application %s is being deleted: closing this replica's sessions", app_name)
    await context.shutdown()
