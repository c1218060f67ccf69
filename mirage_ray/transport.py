"""One WebSocket connection's I/O loops around a :class:`Session`.

The socket is read in one loop, which applies the session's frame guard (:class:`~mirage_ray.security.FrameGuard`:
size cap, header, flags, seq, payload checks) to every message before it is queued; video and audio are processed
by two workers so audio never waits behind video:
- video keeps a one-frame slot: a frame that arrives while the previous one is still in the pipeline replaces
  the waiting one (the replaced frame is counted as dropped, reason ``busy``), so video latency stays constant;
- audio is processed strictly in order; when more than ``AUDIO_BACKLOG_BLOCKS`` chunks are waiting, the backlog
  skips the voice stage and goes out through the session's own cheap pitch shift (flagged, never the raw voice) so
  latency returns to normal instead of growing. No sample is ever dropped.
A ticker sends ``stats`` about once a second, pushes the session summary to the controller, and closes the
socket with 4001 when the token expires. ``shutdown`` closes it for the server (1001 when the replica stops) after
the audio already received has been answered and the pending sends have gone out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mirage_ray import protocol
from mirage_ray.protocol import CloseCode, Kind, Media
from mirage_ray.security import ByteRate, FrameRejected
from mirage_ray.session import Outgoing, Session

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0
AUDIO_BACKLOG_BLOCKS = 3  # chunks waiting beyond this skip the voice stage (fail-closed shift) to keep latency
CONTROLLER_TIMEOUT_S = 0.5
RECANCEL_AFTER_S = 0.5  # a worker still running this long after its cancellation is cancelled again


class SocketLike(Protocol):
    """The part of a Starlette WebSocket the loops use (tests substitute their own)."""

    async def receive(self) -> dict[str, Any]: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


ControllerPush = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class Connection:
    """Runs one session over one socket until either side closes."""

    def __init__(
        self,
        socket: SocketLike,
        session: Session,
        expires_at: float | None = None,
        controller_push: ControllerPush | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._socket = socket
        self._session = session
        self._expires_at = expires_at
        self._controller_push = controller_push
        self._wall_clock = wall_clock
        self._send_lock = asyncio.Lock()
        self._video_slot: Media | None = None
        self._video_ready = asyncio.Event()
        self._audio_queue: asyncio.Queue[Media | None] = asyncio.Queue()  # None: a flush
        self._closing: tuple[int, str] | None = None
        self._closed = False
        self._waiting_sends = 0  # outbound backlog: sends waiting for the socket
        self._bytes_in = ByteRate.from_settings(session.settings)
        self._finished = asyncio.Event()  # run() has returned: nothing more will be sent

    @property
    def closed_by_server(self) -> tuple[int, str] | None:
        """The code and reason the server closed with (None while open, or when the client left first)."""
        return self._closing

    async def run(self) -> None:
        await self._send([self._session.hello()])
        workers = [
            asyncio.create_task(self._video_worker(), name="video"),
            asyncio.create_task(self._audio_worker(), name="audio"),
            asyncio.create_task(self._ticker(), name="ticker"),
        ]
        try:
            await self._receive_loop()
        finally:
            await _cancel_until_done(workers)
            if self._closing is not None and not self._closed:
                code, reason = self._closing
                with contextlib.suppress(Exception):
                    await self._socket.close(code, reason)
            self._closed = True
            self._finished.set()

    async def shutdown(self, code: int, reason: str, timeout_s: float) -> None:
        """Close with ``code`` for the server, within ``timeout_s``: first every audio chunk already received is
        answered (converted, or failed closed) and the sends under way go out, so no computed audio is lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._close(code, reason)  # the receive loop takes no new message after the one it is waiting for
        answered = asyncio.ensure_future(self._audio_queue.join())
        ended = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait({answered, ended}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
            ended.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sends_done(), max(0.0, deadline - loop.time()))
        await self._socket_close_now()

    async def _sends_done(self) -> None:
        async with self._send_lock:
            return

    def _close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = (code, reason)
            logger.info("session %s closing: %d %s", self._session.id, code, reason)

    async def _receive_loop(self) -> None:
        session = self._session
        while self._closing is None:
            message = await self._socket.receive()
            if message["type"] == "websocket.disconnect":
                self._closed = True
                return
            raw_bytes, text = message.get("bytes"), message.get("text")
            size = len(raw_bytes) if raw_bytes is not None else len(text or "")
            if (too_big := session.guard.too_big(size)) is not None:
                self._close(CloseCode.TOO_BIG, too_big)
                return
            if not session.admit(time.monotonic()):
                self._close(CloseCode.RATE_LIMITED, "message rate limit exceeded")
                return
            if not self._bytes_in.allow(size, time.monotonic()):
                self._close(CloseCode.RATE_LIMITED, "byte rate limit exceeded")
                return
            if raw_bytes is not None:
                await self._dispatch_binary(raw_bytes)
            elif text is not None:
                await self._send(session.on_text(text))
                while session.take_flush():  # answered in order, after the audio received before it
                    self._audio_queue.put_nowait(None)
            if session.close_code is not None:
                self._close(session.close_code, session.close_reason)
                return

    async def _dispatch_binary(self, raw: bytes) -> None:
        try:
            media = self._session.guard.media(raw)  # header, flags, seq, payload checks (security.FrameGuard)
        except FrameRejected as exc:
            if exc.kind == Kind.VIDEO:
                self._session.count_video_drop("invalid")
            await self._send(self._session.on_invalid(exc, exc.what))
            return
        if media.kind == Kind.VIDEO:
            if self._video_slot is not None:
                self._session.count_video_drop("busy")
            self._video_slot = media
            self._video_ready.set()
        elif media.kind == Kind.AUDIO:
            self._audio_queue.put_nowait(media)
        else:
            # reference uploads are rare and answered in order with video (they use the same stages)
            await self._send(await self._session.on_reference(media))

    async def _video_worker(self) -> None:
        while True:
            await self._video_ready.wait()
            self._video_ready.clear()
            media, self._video_slot = self._video_slot, None
            if media is not None:
                await self._send(await self._session.on_video(media))
                await self._close_if_session_says()

    async def _audio_worker(self) -> None:
        while True:
            media = await self._audio_queue.get()
            try:
                if media is None:  # a flush
                    await self._send(await self._session.on_flush())
                else:
                    late = self._audio_queue.qsize() >= AUDIO_BACKLOG_BLOCKS
                    await self._send(await self._session.on_audio(media, late=late))
            finally:
                self._audio_queue.task_done()  # shutdown() waits for every received chunk to be answered
            await self._close_if_session_says()

    async def _close_if_session_says(self) -> None:
        """A worker found the session must end (e.g. too many invalid frames): close without waiting for input."""
        if self._session.close_code is not None:
            self._close(self._session.close_code, self._session.close_reason)
            await self._socket_close_now()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            if self._expires_at is not None and self._wall_clock() >= self._expires_at:
                self._close(CloseCode.TOKEN_EXPIRED, "token expired")
                await self._socket_close_now()
                return
            self._session.set_backlog(
                audio=self._audio_queue.qsize(), video=int(self._video_slot is not None), outbound=self._waiting_sends
            )
            await self._send([self._session.stats_message()])
            summary = self._session.summary()  # kept for admission and /v1/stats, pushed to the controller
            if self._controller_push is not None:
                await self._push_to_controller(summary)

    async def _push_to_controller(self, summary: dict[str, Any]) -> None:
        try:
            directive = await asyncio.wait_for(self._controller_push(summary), timeout=CONTROLLER_TIMEOUT_S)
        except Exception as exc:  # controller down or slow: the session keeps its local rules
            self._session.controller_unreachable(str(exc) or type(exc).__name__)
            return
        if directive:
            await self._send(self._session.apply_controller(directive))

    async def _socket_close_now(self) -> None:
        """Close from a worker: the receive loop is blocked in receive(), closing the socket ends it."""
        if self._closing is None or self._closed:
            return
        code, reason = self._closing
        with contextlib.suppress(Exception):
            await self._socket.close(code, reason)
        self._closed = True

    async def _send(self, messages: list[Outgoing]) -> None:
        if not messages or self._closed:
            return
        self._waiting_sends += 1
        async with self._send_lock:
            self._waiting_sends -= 1
            for message in messages:
                try:
                    if isinstance(message, Media):
                        await self._socket.send_bytes(protocol.pack_media(message))
                    else:
                        await self._socket.send_text(protocol.dumps(message))
                except Exception:  # the peer went away; the receive loop sees the disconnect
                    self._closed = True
                    return


async def _cancel_until_done(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` until every one has ended. Once is not always enough: on Python 3.11 ``asyncio.wait_for``
    returns its inner call's result when that call finishes as the cancellation arrives, and the worker then goes on
    waiting for input that never comes, so the session would never end (seen: a replaced page session still counted
    30 s later)."""
    pending: set[asyncio.Task[None]] = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER_S)
        if pending:
            logger.warning("%d session worker(s) outlived their cancellation: cancelling again", len(pending))
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.debug("session worker %s ended with %r", task.get_name(), error)
