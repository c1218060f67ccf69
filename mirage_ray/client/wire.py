"""A protocol-v1 client over ``websockets`` (docs/protocol.md): token as subprotocol, hello, reference, settings,
directives and stats; media replies go to callbacks. Bytes are packed and parsed by :mod:`mirage_ray.protocol`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from mirage_ray import protocol
from mirage_ray.client.extras import ClientError, require
from mirage_ray.protocol import BEARER_PREFIX, SUBPROTOCOL, CloseCode, Kind, Media

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 60.0
MAX_MESSAGE_BYTES = 2**24
CLOSE_ADVICE = {
    CloseCode.POLICY: "the server refused the token or origin: pass a valid --token (`mirage-ray token --sub NAME` "
    "on the server with its MIRAGE_JWT_SECRET)",
    CloseCode.TRY_AGAIN: "the server is at capacity: try again later",
    CloseCode.TOKEN_EXPIRED: "the token expired: get a new one",
    CloseCode.RATE_LIMITED: "rate limited: the client sent too fast",
    CloseCode.TOO_BIG: "a message was larger than the server's max_frame_bytes",
    CloseCode.GOING_AWAY: "the server is shutting down: reconnect later",
}

MediaCallback = Callable[[Media], None]


class ServerClosedError(ClientError):
    """The server closed the WebSocket; ``code`` is the close code."""

    def __init__(self, code: int | None, reason: str) -> None:
        advice = CLOSE_ADVICE.get(code, "") if code is not None else ""
        text = f"the server closed the connection ({code} {reason or 'no reason'})"
        super().__init__(f"{text}: {advice}" if advice else text)
        self.code = code
        self.reason = reason


class MirageConnection:
    """One WebSocket session. A background reader files JSON messages and hands media replies to callbacks."""

    def __init__(self, socket: Any, on_video: MediaCallback | None = None, on_audio: MediaCallback | None = None):
        self._socket = socket
        self.on_video = on_video
        self.on_audio = on_audio
        self.hello: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self.video_target: dict[str, Any] = {}  # hello's video, then each directive's
        self.audio_chunk_ms: int | None = None
        self.errors: list[dict[str, Any]] = []
        self._settings_answers = 0
        self.closed: ServerClosedError | None = None
        self._seq = {Kind.VIDEO: 0, Kind.AUDIO: 0, Kind.REFERENCE: 0}
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        token: str,
        on_video: MediaCallback | None = None,
        on_audio: MediaCallback | None = None,
        timeout_s: float = OPEN_TIMEOUT_S,
    ) -> MirageConnection:
        """Connect with ``["mirage.v1", "bearer.<JWT>"]`` and wait for ``hello``."""
        websockets = require("websockets", "the desktop client")
        try:
            socket = await asyncio.wait_for(
                websockets.connect(url, subprotocols=[SUBPROTOCOL, BEARER_PREFIX + token], max_size=MAX_MESSAGE_BYTES),
                timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise ClientError(f"cannot reach {url} ({exc or 'timed out'}): is `mirage-ray serve` running?") from None
        except websockets.InvalidStatus as exc:
            raise ClientError(f"{url} answered HTTP {exc.response.status_code}, not a WebSocket: check --url") from None
        connection = cls(socket, on_video, on_audio)
        connection._reader = asyncio.create_task(connection._read())
        connection.hello = await connection.wait_json("hello", timeout_s)
        connection.settings = dict(connection.hello.get("settings", {}))
        connection.video_target = dict(connection.hello.get("video", {}))
        connection.audio_chunk_ms = connection.hello.get("audio", {}).get("chunk_ms")
        return connection

    # -- receiving ------------------------------------------------------------------------------------------------
    async def _read(self) -> None:
        websockets = require("websockets", "the desktop client")
        try:
            async for raw in self._socket:
                if isinstance(raw, bytes):
                    self._on_media(protocol.parse_media(raw))
                else:
                    self._on_json(json.loads(raw))
                self._changed.set()
        except websockets.ConnectionClosed as exc:
            received = exc.rcvd
            self.closed = ServerClosedError(received.code if received else None, received.reason if received else "")
        finally:
            if self.closed is None:
                self.closed = ServerClosedError(CloseCode.NORMAL, "closed")
            for waiters in self._waiters.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(self.closed)
            self._changed.set()

    def _on_media(self, media: Media) -> None:
        callback = self.on_video if media.kind == Kind.VIDEO else self.on_audio
        if callback is not None:
            callback(media)

    def _on_json(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "stats":
            self.stats = message
        elif kind == "directive":
            if isinstance(message.get("video"), dict):
                self.video_target.update(message["video"])
            if message.get("audio_chunk_ms"):
                self.audio_chunk_ms = int(message["audio_chunk_ms"])
            logger.info("directive: %s", {k: v for k, v in message.items() if k != "type"})
        elif kind == "settings":
            self._settings_answers += 1
            self.settings.update({k: v for k, v in message.items() if k not in ("type", "applied")})
        elif kind == "error":
            self.errors.append(message)
            logger.warning("server: %s: %s", message.get("code"), message.get("message"))
        for waiter in self._waiters.pop(str(kind), []):
            if not waiter.done():
                waiter.set_result(message)

    async def wait_json(self, kind: str, timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """The next JSON message of type ``kind``."""
        if self.closed is not None:
            raise self.closed
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(kind, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            raise ClientError(f"no {kind!r} message from the server within {timeout_s:.0f} s") from None

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds (re-checked as messages arrive); False on timeout or close."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed is not None:
                return predicate()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))
        return True

    # -- sending --------------------------------------------------------------------------------------------------
    async def _send_media(self, kind: Kind, capture_us: int, payload: bytes) -> int:
        if self.closed is not None:
            raise self.closed
        seq = self._seq[kind]
        self._seq[kind] = (seq + 1) % protocol.UINT32_MOD
        await self._socket.send(protocol.pack(kind, seq, capture_us, payload))
        return seq

    async def send_video(self, jpeg: bytes, capture_us: int) -> int:
        """Send one JPEG frame; returns its seq."""
        return await self._send_media(Kind.VIDEO, capture_us, jpeg)

    async def send_audio(self, pcm16: bytes, capture_us: int) -> int:
        """Send PCM16 mono 16 kHz (a multiple of 10 ms); ``capture_us`` is the capture instant of the first sample."""
        return await self._send_media(Kind.AUDIO, capture_us, pcm16)

    async def send_json(self, message: dict[str, Any]) -> None:
        if self.closed is not None:
            raise self.closed
        await self._socket.send(protocol.dumps(message))

    async def set_reference(self, image: bytes, timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """Send a JPEG/PNG reference image; raises :class:`ClientError` when the server refuses it."""
        reply_waiter = asyncio.ensure_future(self.wait_json("reference", timeout_s))
        await asyncio.sleep(0)  # the waiter is registered before the reply can arrive
        await self._send_media(Kind.REFERENCE, 0, image)
        reply = await reply_waiter
        if not reply.get("ok"):
            raise ClientError(f"the server refused the reference photo: {reply.get('error', 'no face found')}")
        return reply

    async def apply_settings(self, timeout_s: float = REPLY_TIMEOUT_S, **fields: Any) -> dict[str, Any]:
        """Send a ``settings`` message and wait for its answer (``settings``, or an ``error`` for a refused field:
        the contract only promises the latter); a refused field raises :class:`ClientError`."""
        if not fields:
            return self.settings
        errors_before, answers_before = len(self.errors), self._settings_answers
        await self.send_json({"type": "settings", **fields})

        def refused() -> list[dict[str, Any]]:
            return [e for e in self.errors[errors_before:] if e.get("code") == "bad_setting"]

        answered = await self.wait_until(lambda: self._settings_answers > answers_before or bool(refused()), timeout_s)
        if refused():
            raise ClientError(f"the server refused a setting: {refused()[0].get('message')}")
        if not answered:
            raise self.closed or ClientError(f"no answer to the settings within {timeout_s:.0f} s")
        return self.settings

    async def flush(self) -> None:
        """End of stream: the server completes the partial audio block so that samples out == samples in."""
        await self.send_json({"type": "flush"})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._socket.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
