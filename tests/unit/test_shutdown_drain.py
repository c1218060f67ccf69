"""Shutting a replica down (issue 10, SIGTERM drain): every session closes with 1001 (going away), each only after
the audio it already received has been answered, and a replica that is draining admits no new session.

The Ray side (the ingress noticing that Serve deletes the application) is tested through the launcher in
tests/integration/test_drain.py; here the core: ``Connection.shutdown`` and ``ServerContext.shutdown``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from mirage_ray.config import MirageSettings
from mirage_ray.protocol import CloseCode, Kind
from mirage_ray.security import build_auth
from mirage_ray.server import ServerContext, build_app
from mirage_ray.session import Session
from mirage_ray.stages import LocalStages, StageInfo
from mirage_ray.transport import Connection
from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from tests import hostile
from tests.speech import speech
from tests.unit.test_transport import CHUNK, INFO, WAIT_S, FakeSocket, HeldStages, audio


@pytest.fixture(scope="module")
def voiced() -> np.ndarray:
    return speech()[1600 : 1600 + 10 * CHUNK]  # 2 s of speech, past the leading silence


async def test_shutdown_answers_the_received_audio_then_closes_1001(voiced: np.ndarray) -> None:
    stages = HeldStages(RetinaFaceDetector())
    socket = FakeSocket()
    session = Session(MirageSettings(chunk_ms=200), stages, INFO, session_id="d1")
    connection = Connection(socket, session)
    running = asyncio.create_task(connection.run())
    stages.hold("convert")  # the first block is in the voice stage when the shutdown comes (answered at 160 ms)
    for seq in range(3):
        socket.push(audio(seq, voiced))
    await asyncio.wait_for(stages.entered["convert"].wait(), WAIT_S)
    await socket.drained()
    closing = asyncio.create_task(connection.shutdown(CloseCode.GOING_AWAY, "bye", timeout_s=WAIT_S))
    await asyncio.sleep(0.05)  # fires before the session's 160 ms budget for the held block (same loop clock)
    assert socket.closes == [] and not closing.done()  # waits for the held block and the two queued ones
    await asyncio.wait_for(closing, WAIT_S)
    await asyncio.wait_for(running, WAIT_S)
    assert socket.closes == [(CloseCode.GOING_AWAY, "bye")]
    blocks = socket.media(Kind.AUDIO)
    assert [m.seq for m in blocks] == [0, 1, 2]  # sent before the close (nothing is sent after it)
    assert sum(len(m.payload) // 2 for m in blocks) == session.samples_in == 3 * CHUNK


async def test_shutdown_is_bounded_when_the_audio_cannot_be_answered(voiced: np.ndarray) -> None:
    stages = HeldStages(RetinaFaceDetector())
    socket = FakeSocket()
    connection = Connection(socket, Session(MirageSettings(chunk_ms=200), stages, INFO, session_id="d2"))
    running = asyncio.create_task(connection.run())
    stages.hold("convert")  # never released: the session's own 0.8 x block budget answers it (failed closed)
    socket.push(audio(0, voiced))
    await asyncio.wait_for(stages.entered["convert"].wait(), WAIT_S)
    started = asyncio.get_running_loop().time()
    await connection.shutdown(CloseCode.GOING_AWAY, "bye", timeout_s=2.0)
    assert asyncio.get_running_loop().time() - started < 2.5
    await asyncio.wait_for(running, WAIT_S)
    assert socket.closes == [(CloseCode.GOING_AWAY, "bye")]
    assert [m.seq for m in socket.media(Kind.AUDIO)] == [0]  # the block the stage could not answer, failed closed


def drained_app() -> tuple[ServerContext, TestClient]:
    """The in-process front door (no models: these sessions send no media) with its context at hand."""
    settings = MirageSettings(jwt_secret=hostile.SECRET, **hostile.FUZZ_OVERRIDES)
    report = {name: {"ready": True} for name in ("detector", "swapper", "enhancer", "voice")}

    async def readiness() -> dict[str, Any]:
        return report

    stages = LocalStages(settings, None, None, None, None, None)
    ctx = ServerContext(settings, build_auth(settings), stages, StageInfo(report=report), readiness)
    return ctx, TestClient(build_app(ctx))


def test_server_shutdown_closes_every_session_1001_and_refuses_new_ones() -> None:
    ctx, client = drained_app()
    with (
        client,
        hostile.connect(client, hostile.token("a")) as first,
        hostile.connect(client, hostile.token("b")) as second,
    ):
        for ws in (first, second):
            assert json.loads(hostile.receive(ws)["text"])["type"] == "hello"
        assert len(ctx.connections) == 2
        client.portal.call(ctx.shutdown)
        for ws in (first, second):
            assert hostile.probe(ws, "after") == CloseCode.GOING_AWAY
        with hostile.connect(client, hostile.token("c")) as late:
            refused = hostile.receive(late)
        assert refused["type"] == "websocket.close" and refused["code"] == CloseCode.GOING_AWAY
    assert ctx.connections == {} and ctx.sessions == {}
