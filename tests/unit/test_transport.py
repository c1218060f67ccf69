"""transport.Connection over a fake socket: an asyncio queue of ASGI-style messages in, everything sent recorded.

The stages are the real RetinaFace detector and the passthrough voice converter; a stage can be held at its next call
(an asyncio.Event) so a test decides exactly what arrives while the pipeline is busy. Nothing here asserts timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from mirage_ray import adapt, protocol, transport
from mirage_ray.codec import float_to_pcm16
from mirage_ray.config import MirageSettings
from mirage_ray.protocol import FLAG_PASSTHROUGH, CloseCode, Kind, Media
from mirage_ray.session import Session
from mirage_ray.stages import StageInfo
from mirage_ray.transport import Connection
from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
from mirage_ray.vision.faces import Face, SourceIdentity
from mirage_ray.voice.base import VoiceParams
from mirage_ray.voice.convert_passthrough import PassthroughConverter
from tests.media import moving_face_frames
from tests.speech import speech

CHUNK = 3200  # 200 ms: with chunk_ms=200 every wire chunk completes exactly one block
WAIT_S = 20.0  # a guard against a hung test, not a timing assertion
INFO = StageInfo()


class FakeSocket:
    """The part of a Starlette WebSocket that Connection uses; ``sent`` holds parsed Media and JSON dicts."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[Any] = []
        self.closes: list[tuple[int, str | None]] = []
        self._changed = asyncio.Condition()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    def push(self, data: bytes | str) -> None:
        key = "bytes" if isinstance(data, bytes) else "text"
        self.inbox.put_nowait({"type": "websocket.receive", key: data})

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect"})

    async def send_bytes(self, data: bytes) -> None:
        await self._record(protocol.parse_media(data))

    async def send_text(self, data: str) -> None:
        await self._record(json.loads(data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        async with self._changed:
            self.closes.append((code, reason))
            self._changed.notify_all()
        self.disconnect()  # what the server sees after the close handshake

    async def _record(self, message: Any) -> None:
        async with self._changed:
            self.sent.append(message)
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[Any]], bool]) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.sent)), WAIT_S)

    async def drained(self) -> None:
        """Until the receive loop has taken (and so dispatched) everything pushed so far."""
        while not self.inbox.empty():
            await asyncio.sleep(0)

    def media(self, kind: Kind) -> list[Media]:
        return [m for m in self.sent if isinstance(m, Media) and m.kind == kind]

    def json(self, kind: str) -> list[dict]:
        return [m for m in self.sent if isinstance(m, dict) and m["type"] == kind]


class HeldStages:
    """Real detector and passthrough converter; ``hold(stage)`` makes the next call of that stage wait."""

    def __init__(self, detector: RetinaFaceDetector) -> None:
        self.detector = detector
        self.converter = PassthroughConverter()
        self._held: dict[str, asyncio.Event] = {}
        self.entered = {"detect": asyncio.Event(), "convert": asyncio.Event()}
        self.calls = {"detect": 0, "convert": 0}

    def hold(self, stage: str) -> asyncio.Event:
        self._held[stage] = release = asyncio.Event()
        return release

    async def _call(self, stage: str) -> None:
        self.calls[stage] += 1
        release = self._held.pop(stage, None)
        if release is not None:
            self.entered[stage].set()
            await release.wait()

    async def detect(self, image: np.ndarray) -> list[Face]:
        await self._call("detect")
        return self.detector.detect(image)

    async def identity(self, image: np.ndarray, face: Face) -> SourceIdentity:
        raise AssertionError("not used: no reference uploads here")

    async def swap(self, image: np.ndarray, faces: Sequence[Face], identity: SourceIdentity) -> np.ndarray:
        raise AssertionError("not used: no reference is set")

    async def restore(self, crops: np.ndarray, fidelity: float) -> np.ndarray:
        raise AssertionError("not used: the enhancer is off")

    async def convert(self, window: np.ndarray, params: VoiceParams, fallback: bool = False) -> np.ndarray:
        await self._call("convert")
        return self.converter.convert(window, params)


@pytest.fixture(scope="module")
def detector() -> RetinaFaceDetector:
    return RetinaFaceDetector()


@pytest.fixture(scope="module")
def voiced() -> np.ndarray:
    x = speech()
    return x[1600 : 1600 + 20 * CHUNK]  # 4 s of speech, past the leading silence


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return moving_face_frames(3)


def audio(seq: int, samples: np.ndarray) -> bytes:
    return protocol.pack(Kind.AUDIO, seq, seq * 200_000, float_to_pcm16(samples[seq * CHUNK : (seq + 1) * CHUNK]))


def video(seq: int, frame: bytes) -> bytes:
    return protocol.pack(Kind.VIDEO, seq, seq * 50_000, frame)


@dataclass(frozen=True)
class Live:
    socket: FakeSocket
    session: Session
    stages: HeldStages


@contextlib.asynccontextmanager
async def connected(detector: RetinaFaceDetector, **kwargs: Any) -> AsyncIterator[Live]:
    """A running Connection (chunk_ms=200) until the block ends, then the client disconnects."""
    stages = HeldStages(detector)
    live = Live(FakeSocket(), Session(MirageSettings(chunk_ms=200), stages, INFO, session_id="t1"), stages)
    task = asyncio.create_task(Connection(live.socket, live.session, **kwargs).run())
    try:
        yield live
    finally:
        live.socket.disconnect()
        await asyncio.wait_for(task, WAIT_S)


async def test_hello_first_then_audio_replies_in_order(
    detector: RetinaFaceDetector, voiced: np.ndarray, frames: list[bytes]
) -> None:
    async with connected(detector) as live:
        socket, stages = live.socket, live.stages
        for seq in range(3):
            socket.push(audio(seq, voiced))
        socket.push(video(0, frames[0]))
        await socket.wait_for(lambda sent: len(socket.media(Kind.AUDIO)) == 3 and socket.media(Kind.VIDEO))
    hello = socket.sent[0]
    assert hello["type"] == "hello" and hello["session_id"] == "t1" and hello["audio"]["chunk_ms"] == 200
    replies = socket.media(Kind.AUDIO)
    assert [(m.seq, m.capture_us, m.flags, len(m.payload)) for m in replies] == [
        (seq, seq * 200_000, 0, 2 * CHUNK) for seq in range(3)
    ]
    assert stages.calls["convert"] == 3
    assert [m.seq for m in socket.media(Kind.VIDEO)] == [0]


async def replace_while_busy(detector: RetinaFaceDetector, frames: list[bytes]) -> tuple[Live, dict]:
    """Frame 1 is held in the detector while frames 2 and 3 arrive; returns when both replies are out."""
    async with connected(detector) as live:
        socket = live.socket
        release = live.stages.hold("detect")
        socket.push(video(1, frames[0]))
        await asyncio.wait_for(live.stages.entered["detect"].wait(), WAIT_S)  # frame 1 is in the pipeline
        socket.push(video(2, frames[1]))  # waits in the slot ...
        socket.push(video(3, frames[2]))  # ... and is replaced by this one
        await socket.drained()
        release.set()
        await socket.wait_for(lambda sent: len(socket.media(Kind.VIDEO)) == 2)
        return live, live.session.stats_message()["frames"]


async def test_a_frame_arriving_while_busy_replaces_the_waiting_one(
    detector: RetinaFaceDetector, frames: list[bytes]
) -> None:
    live, counts = await replace_while_busy(detector, frames)
    assert [m.seq for m in live.socket.media(Kind.VIDEO)] == [1, 3]
    assert counts["dropped_by_reason"] == {"busy": 1}
    assert live.stages.calls["detect"] == 1  # frame 3 was tracked from frame 1's detection


async def test_busy_drops_count_as_frames_in(detector: RetinaFaceDetector, frames: list[bytes]) -> None:
    _, counts = await replace_while_busy(detector, frames)
    assert (counts["in"], counts["out"], counts["dropped"]) == (3, 2, 1)


async def test_an_audio_backlog_of_more_than_3_chunks_is_answered_in_passthrough(
    detector: RetinaFaceDetector, voiced: np.ndarray
) -> None:
    async with connected(detector) as live:
        socket, session, stages = live.socket, live.session, live.stages
        release = stages.hold("convert")
        socket.push(audio(0, voiced))
        await asyncio.wait_for(stages.entered["convert"].wait(), WAIT_S)  # chunk 0 is being converted
        for seq in range(1, 7):
            socket.push(audio(seq, voiced))
        await socket.drained()
        release.set()
        await socket.wait_for(lambda sent: len(socket.media(Kind.AUDIO)) == 7)
        stats = session.stats_message()["audio"]
    replies = socket.media(Kind.AUDIO)
    # when chunks 1-3 were taken, 3+ others still waited (more than 3 queued): passed through; 4-6 converted again
    assert [(m.seq, m.flags) for m in replies] == [
        (0, 0),
        *((s, FLAG_PASSTHROUGH) for s in (1, 2, 3)),
        (4, 0),
        (5, 0),
        (6, 0),
    ]
    assert all(len(m.payload) == 2 * CHUNK for m in replies)
    assert stages.calls["convert"] == 4
    assert stats["late_blocks"] == 3 and stats["samples_in"] == stats["samples_out"] == 7 * CHUNK


async def test_stats_are_sent_on_every_tick(
    detector: RetinaFaceDetector, frames: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert transport.STATS_INTERVAL_S == 1.0  # about once a second; ticked faster here to keep the run short
    monkeypatch.setattr(transport, "STATS_INTERVAL_S", 0.01)
    async with connected(detector) as live:
        socket = live.socket
        await socket.wait_for(lambda sent: len(socket.json("stats")) >= 1)
        socket.push(video(0, frames[0]))
        await socket.wait_for(lambda sent: any(s["frames"]["out"] == 1 for s in socket.json("stats")))
    stats = socket.json("stats")
    assert stats[0]["frames"]["in"] == 0 and stats[-1]["frames"]["in"] == 1
    assert stats[-1]["queues"] == {"audio": 0, "video": 0, "outbound": 0}
    assert stats[-1]["video"] == adapt.build_ladder()[0].as_directive()
    assert stats[-1]["controller"] == "ok"


async def test_controller_push_failures_do_not_stop_the_session(
    detector: RetinaFaceDetector, voiced: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "STATS_INTERVAL_S", 0.01)
    monkeypatch.setattr(transport, "CONTROLLER_TIMEOUT_S", 0.05)
    summaries: list[dict] = []

    async def push(summary: dict) -> dict | None:
        summaries.append(summary)
        if len(summaries) == 1:
            raise ConnectionError("controller actor is restarting")
        if len(summaries) == 2:
            await asyncio.Event().wait()  # never answers: the push times out
        return {"level": 2} if len(summaries) == 3 else None

    async with connected(detector, controller_push=push) as live:
        socket = live.socket
        await socket.wait_for(lambda sent: socket.json("directive") and len(socket.json("stats")) > len(summaries))
        socket.push(audio(0, voiced))  # the session still answers after the failures
        await socket.wait_for(lambda sent: socket.media(Kind.AUDIO))
    assert socket.closes == []
    assert all(s["session_id"] == "t1" for s in summaries)
    assert socket.json("directive") == [
        {"type": "directive", "reason": "controller", "video": adapt.build_ladder()[2].as_directive()}
    ]
    states = [s["controller"] for s in socket.json("stats")]
    changes = [state for i, state in enumerate(states) if i == 0 or state != states[i - 1]]
    assert changes == ["ok", "unreachable (local rules)", "ok"]
    assert [m.seq for m in socket.media(Kind.AUDIO)] == [0]


async def test_an_expired_token_closes_with_4001(detector: RetinaFaceDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "STATS_INTERVAL_S", 0.01)
    stages = HeldStages(detector)
    session = Session(MirageSettings(), stages, INFO, session_id="t1")
    socket = FakeSocket()
    await asyncio.wait_for(Connection(socket, session, expires_at=1000.0, wall_clock=lambda: 1000.0).run(), WAIT_S)
    assert socket.closes == [(CloseCode.TOKEN_EXPIRED, "token expired")]
    assert [m["type"] for m in socket.sent] == ["hello"]


async def test_invalid_messages_are_answered_and_an_oversized_one_closes_1009(
    detector: RetinaFaceDetector, frames: list[bytes]
) -> None:
    async with connected(detector) as live:
        socket, session = live.socket, live.session
        socket.push(b"\x01\x02")
        socket.push("{not json")
        socket.push(video(0, frames[0]))
        await socket.wait_for(lambda sent: socket.media(Kind.VIDEO))
        socket.push(b"\x00" * (session.settings.max_frame_bytes + 1))
        await socket.wait_for(lambda sent: socket.closes)
    assert [e["code"] for e in socket.json("error")] == ["bad_header", "bad_json"]
    assert socket.closes == [(CloseCode.TOO_BIG, f"message larger than max_frame_bytes={2_000_000}")]


async def test_flush_completes_the_partial_block_after_the_audio_before_it(
    detector: RetinaFaceDetector, voiced: np.ndarray
) -> None:
    async with connected(detector) as live:
        socket = live.socket
        partial = float_to_pcm16(voiced[: CHUNK // 2])  # half a 200 ms block: waits for more
        socket.push(audio(0, voiced))
        socket.push(protocol.pack(Kind.AUDIO, 1, 200_000, partial))
        socket.push('{"type": "flush"}')
        await socket.wait_for(lambda sent: len(socket.media(Kind.AUDIO)) == 2)
        stats = live.session.stats_message()["audio"]
    replies = socket.media(Kind.AUDIO)
    assert [(m.seq, len(m.payload) // 2) for m in replies] == [(0, CHUNK), (1, CHUNK // 2)]  # every sample back
    assert stats["samples_in"] == stats["samples_out"] == CHUNK + CHUNK // 2
    assert live.stages.calls["convert"] == 2  # the flushed block was converted (its input padded), not passed raw
    assert all(m.flags == 0 for m in replies)


async def test_flush_with_nothing_pending_sends_nothing(detector: RetinaFaceDetector, voiced: np.ndarray) -> None:
    async with connected(detector) as live:
        socket = live.socket
        socket.push(audio(0, voiced))
        socket.push('{"type": "flush"}')
        socket.push('{"type": "ping", "t": 7}')
        await socket.wait_for(lambda sent: any(m.get("type") == "pong" for m in sent if isinstance(m, dict)))
        await asyncio.sleep(0.2)
    assert [len(m.payload) // 2 for m in socket.media(Kind.AUDIO)] == [CHUNK]


# --- the seq rule (security.FrameGuard): per kind, +1 per message, wrapping; within seq_tolerance ---------------
def audio_at(seq: int, index: int, samples: np.ndarray) -> bytes:
    """Audio chunk ``index`` of ``samples`` sent with ``seq`` (any uint32)."""
    chunk = float_to_pcm16(samples[index * CHUNK : (index + 1) * CHUNK])
    return protocol.pack(Kind.AUDIO, seq, index * 200_000, chunk)


async def send_audio_seqs(detector: RetinaFaceDetector, voiced: np.ndarray, seqs: Sequence[int], answered: int) -> Live:
    """Audio chunks 0, 1, ... with ``seqs``; returns once ``answered`` chunks are answered and a ping after them."""
    async with connected(detector) as live:
        socket = live.socket
        for index, seq in enumerate(seqs):
            socket.push(audio_at(seq, index, voiced))
        socket.push('{"type": "ping", "t": "after"}')
        await socket.wait_for(lambda sent: len(socket.media(Kind.AUDIO)) == answered and socket.json("pong"))
        return live


async def test_seqs_in_order_and_across_the_wrap_are_accepted(detector: RetinaFaceDetector, voiced: np.ndarray) -> None:
    top = protocol.UINT32_MOD - 2
    live = await send_audio_seqs(detector, voiced, [top, top + 1, 0, 1], answered=4)
    assert [m.seq for m in live.socket.media(Kind.AUDIO)] == [top, top + 1, 0, 1]
    assert live.socket.json("error") == [] and live.session.stats_message()["invalid"] == 0


async def test_a_seq_jump_beyond_the_tolerance_is_an_error_and_the_session_goes_on(
    detector: RetinaFaceDetector, voiced: np.ndarray
) -> None:
    tolerance = MirageSettings().seq_tolerance
    seqs = [0, 2 + tolerance, 1 + tolerance, 2 + tolerance]  # expected 1: 1 + tolerance is the furthest allowed
    live = await send_audio_seqs(detector, voiced, seqs, answered=3)
    socket = live.socket
    assert [m.seq for m in socket.media(Kind.AUDIO)] == [0, 1 + tolerance, 2 + tolerance]  # the jump was dropped
    assert [m.capture_us for m in socket.media(Kind.AUDIO)] == [0, 400_000, 600_000]
    (error,) = socket.json("error")
    assert error["code"] == "bad_seq" and f"{1 + tolerance} ahead of the expected 1" in error["message"]
    stats = live.session.stats_message()
    assert stats["invalid"] == 1 and stats["audio"]["samples_in"] == 3 * CHUNK
    assert socket.closes == [] and socket.json("pong") == [{"type": "pong", "t": "after"}]


async def test_a_replayed_or_backwards_seq_is_an_error_and_the_session_goes_on(
    detector: RetinaFaceDetector, voiced: np.ndarray
) -> None:
    live = await send_audio_seqs(detector, voiced, [5, 6, 7, 7, 5, 8], answered=4)
    socket = live.socket
    assert [m.seq for m in socket.media(Kind.AUDIO)] == [5, 6, 7, 8]
    errors = socket.json("error")
    assert [e["code"] for e in errors] == ["bad_seq", "bad_seq"]
    assert "1 behind the expected 8" in errors[0]["message"] and "3 behind the expected 8" in errors[1]["message"]
    assert live.session.stats_message()["invalid"] == 2
    assert socket.closes == []


async def test_each_kind_has_its_own_seq(detector: RetinaFaceDetector, voiced: np.ndarray, frames: list[bytes]) -> None:
    async with connected(detector) as live:
        socket = live.socket
        socket.push(audio_at(100, 0, voiced))
        socket.push(video(0, frames[0]))  # the first video frame sets its own base
        await socket.wait_for(lambda sent: socket.media(Kind.AUDIO) and socket.media(Kind.VIDEO))
        socket.push(audio_at(101, 1, voiced))
        await socket.wait_for(lambda sent: len(socket.media(Kind.AUDIO)) == 2)
    assert socket.json("error") == []


async def test_the_session_ends_even_when_a_worker_swallows_its_cancellation(
    detector: RetinaFaceDetector, voiced: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 ``asyncio.wait_for`` returns its inner call's result when that call finishes as the
    cancellation arrives; the audio worker then waits for a chunk that never comes. The connection must still end."""
    swallowed = asyncio.Event()

    async def on_audio_that_swallows(media: Media, late: bool = False) -> list[Any]:
        try:
            await asyncio.Event().wait()  # a conversion under way when the client leaves
        except asyncio.CancelledError:
            swallowed.set()
            return []  # what that wait_for does: the result, not the cancellation
        raise AssertionError("unreachable")

    stages = HeldStages(detector)
    session = Session(MirageSettings(chunk_ms=200), stages, INFO, session_id="t1")
    monkeypatch.setattr(session, "on_audio", on_audio_that_swallows)
    socket = FakeSocket()
    task = asyncio.create_task(Connection(socket, session).run())
    socket.push(audio(0, voiced))
    await socket.drained()
    socket.disconnect()
    ended, _ = await asyncio.wait({task}, timeout=WAIT_S)  # (wait_for would cancel the hung task and hide it)
    try:
        assert task in ended, "the connection outlived the client: a worker outlived its one cancellation"
    finally:
        for _ in range(3):  # a hung connection ignores one cancel (the same swallowing): end it for the next tests
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
    assert swallowed.is_set()
