"""A minimal Mirage protocol server for testing the browser page on its own.

Happy path of docs/protocol.md: HS256 JWT in the subprotocol, ``hello``, video and audio echoed with the input's seq
and capture time (video flagged passthrough until a reference is set), ``reference`` replies (the image is decoded,
not searched for faces: any decodable image counts as one face), range-checked ``settings`` answered like the real
server (``error`` per refused field, then ``settings`` with ``applied`` and the current values), ``pong``, ``stats``
once a second, a ``directive`` after a number of frames, ``GET v1/page-token``, ``GET v1/stats`` (live sessions)
and the static page.

Run by hand: ``python tests/e2e/echo_server.py --port 8765`` then open http://127.0.0.1:8765/mirage/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import jwt
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from mirage_ray.protocol import FLAG_PASSTHROUGH, HEADER, SAMPLES_PER_10MS, SETTING_RANGES, Kind
from mirage_ray.security import SeqWindow
from mirage_ray.voice.presets import PRESETS

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[2] / "mirage_ray" / "web"
SECRET = "mirage-e2e-echo-secret-for-tests-only"  # test-only HS256 key (>= 32 bytes)
AUDIENCE = "mirage"
TOKEN_TTL_S = 600
KIND_VIDEO, KIND_AUDIO, KIND_REFERENCE = Kind.VIDEO, Kind.AUDIO, Kind.REFERENCE
STATS_INTERVAL_S = 1.0
VOICE_PRESETS = {name: (p.pitch_semitones, p.formant_shift) for name, p in PRESETS.items()}
HELLO_VIDEO = {"width": 512, "height": 512, "fps": 20, "jpeg_quality": 85}
HELLO_SETTINGS = {
    "max_faces": 1,
    "swap": True,
    "enhance": False,
    "fidelity": 0.75,
    "pitch_semitones": -4.0,
    "formant_shift": 0.9,
    "voice": "deeper",
}
BACKENDS = {  # the real server's shape (actors/ingress.py): no enhancer here
    "detector": {"ready": True, "name": "echo", "reason": "echo server", "fallback": True},
    "swapper": {"ready": True, "name": "echo", "reason": "echo server", "fallback": True, "passthrough": False},
    "enhancer": {"ready": True, "name": "none", "reason": "echo server: enhancement unavailable", "fallback": True},
    "voice": {"ready": True, "name": "echo", "reason": "echo server", "fallback": True, "voices": []},
    "voices": [],
}
HELLO_CHUNK_MS = 100
DIRECTIVE_AFTER_FRAMES = 15
DIRECTIVE = {
    "type": "directive",
    "reason": "echo server test directive",
    "audio_chunk_ms": 80,  # the real server's starting block with the embedded defaults
    "video": {"width": 256, "height": 256, "fps": 15, "jpeg_quality": 70},
}

PAUSED_DIRECTIVE = {  # what the real server sends on its last rung: no processed video, so audio stays in time
    "type": "directive",
    "reason": "request:audio over budget: video paused so that audio stays in time",
    "video": {"width": 256, "height": 256, "fps": 0, "jpeg_quality": 55, "paused": True},
}


def make_token(subject: str = "e2e", ttl_s: int = TOKEN_TTL_S) -> str:
    """A token the echo server accepts."""
    now = int(time.time())
    return jwt.encode({"sub": subject, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s}, SECRET, algorithm="HS256")


@dataclass
class EchoRecord:
    """What the server saw, for tests to inspect (written from the server thread, read after waits)."""

    sessions: int = 0
    live_sessions: int = 0
    page_tokens: int = 0  # GET v1/page-token answered with a token
    frames: int = 0
    frame_sizes: list[tuple[int, int]] = field(default_factory=list)
    video_seqs: list[int] = field(default_factory=list)
    seq_problems: list[str] = field(default_factory=list)  # any seq not exactly +1 per message of its kind
    clock_skews_us: list[int] = field(default_factory=list)  # arrival wall clock − capture time, video and audio
    audio_chunks: int = 0
    audio_samples: int = 0
    audio_chunk_lengths: list[int] = field(default_factory=list)
    audio_peak: int = 0
    references: list[bool] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)
    invalid: int = 0


def _bearer(websocket: WebSocket) -> str | None:
    for proto in websocket.scope.get("subprotocols", []):
        if proto.startswith("bearer."):
            return proto.removeprefix("bearer.")
    return websocket.query_params.get("token")


def _check_setting(key: str, value: object) -> str | None:
    if key in SETTING_RANGES:
        lo, hi = SETTING_RANGES[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            return f"{key} must lie in [{lo}, {hi}], got {value!r}"
    elif key in ("swap", "enhance") and not isinstance(value, bool):
        return f"{key} must be true or false, got {value!r}"
    elif key == "voice" and value not in VOICE_PRESETS:
        return f"voice must be one of [{', '.join(VOICE_PRESETS)}], got {value!r}"
    return None


class EchoSession:
    """One connection: echoes media, answers control messages, pushes stats."""

    def __init__(self, websocket: WebSocket, record: EchoRecord, directive: dict[str, object] = DIRECTIVE) -> None:
        self.ws = websocket
        self.record = record
        self.directive = directive
        self.video = dict(HELLO_VIDEO)
        self.has_reference = False
        self.seqs = SeqWindow(tolerance=0)  # the page sends +1 per message of each kind, from any start
        self.frames_in = 0
        self.audio_in = 0
        self.settings = dict(HELLO_SETTINGS)

    async def run(self) -> None:
        await self.ws.send_json(
            {
                "type": "hello",
                "session_id": f"echo-{self.record.sessions}",
                "protocol": 1,
                "audio": {"sample_rate": 16000, "chunk_ms": HELLO_CHUNK_MS},
                "video": HELLO_VIDEO,
                "limits": {"max_frame_bytes": 2_000_000, "max_messages_per_s": 120},
                "backends": BACKENDS,
                "settings": self.settings,
            }
        )
        stats_task = asyncio.create_task(self._stats_loop())
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    await self._on_binary(message["bytes"])
                elif message.get("text") is not None:
                    await self._on_text(message["text"])
        except WebSocketDisconnect:
            return
        finally:
            stats_task.cancel()

    async def _on_binary(self, data: bytes) -> None:
        if len(data) < HEADER.size:
            self.record.invalid += 1
            await self.ws.send_json({"type": "error", "code": "bad_header", "message": "shorter than the header"})
            return
        kind, _flags, _reserved, seq, capture_us = HEADER.unpack_from(data)
        if (problem := self.seqs.check(kind, seq)) is not None:
            self.record.seq_problems.append(f"kind {kind}: {problem}")
        if kind in (KIND_VIDEO, KIND_AUDIO):
            self.record.clock_skews_us.append(time.time_ns() // 1000 - capture_us)
        payload = data[HEADER.size :]
        if kind == KIND_VIDEO:
            await self._on_video(seq, capture_us, payload)
        elif kind == KIND_AUDIO:
            await self._on_audio(seq, capture_us, payload)
        elif kind == KIND_REFERENCE:
            await self._on_reference(payload)
        else:
            self.record.invalid += 1

    async def _on_video(self, seq: int, capture_us: int, payload: bytes) -> None:
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            self.record.invalid += 1
            return
        self.frames_in += 1
        self.record.frames += 1
        self.record.frame_sizes.append((image.shape[1], image.shape[0]))
        self.record.video_seqs.append(seq)
        flags = 0 if self.has_reference else FLAG_PASSTHROUGH
        await self.ws.send_bytes(HEADER.pack(KIND_VIDEO, flags, 0, seq, capture_us) + payload)
        if self.frames_in == DIRECTIVE_AFTER_FRAMES:
            self.video = dict(self.directive.get("video", self.video))
            await self.ws.send_json(self.directive)

    async def _on_audio(self, seq: int, capture_us: int, payload: bytes) -> None:
        samples = np.frombuffer(payload, "<i2")
        if len(payload) % 2 or len(samples) % SAMPLES_PER_10MS:
            self.record.invalid += 1
            await self.ws.send_json({"type": "error", "code": "bad_audio", "message": "not a multiple of 10 ms"})
            return
        self.audio_in += 1
        self.record.audio_chunks += 1
        self.record.audio_samples += len(samples)
        self.record.audio_chunk_lengths.append(len(samples))
        self.record.audio_peak = max(self.record.audio_peak, int(np.abs(samples.astype(np.int32)).max(initial=0)))
        await self.ws.send_bytes(HEADER.pack(KIND_AUDIO, 0, 0, seq, capture_us) + payload)

    async def _on_reference(self, payload: bytes) -> None:
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        ok = image is not None
        self.record.references.append(ok)
        self.has_reference = self.has_reference or ok
        reply: dict[str, object] = {"type": "reference", "ok": ok, "faces": 1 if ok else 0}
        if not ok:
            reply["error"] = "the image could not be decoded"
        await self.ws.send_json(reply)

    async def _on_text(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            self.record.invalid += 1
            await self.ws.send_json({"type": "error", "code": "bad_json", "message": "unparseable JSON"})
            return
        if msg.get("type") == "ping":
            await self.ws.send_json({"type": "pong", "t": msg.get("t")})
        elif msg.get("type") == "settings":
            applied = []
            for key, value in msg.items():
                if key == "type":
                    continue
                problem = _check_setting(key, value)
                if problem:
                    await self.ws.send_json({"type": "error", "code": "bad_setting", "message": problem})
                elif key in self.settings:
                    self.record.settings[key] = value
                    self.settings[key] = value
                    applied.append(key)
                    if key == "voice":  # a preset sets pitch and formant unless the same message sets them
                        pitch, formant = VOICE_PRESETS[value]
                        for name, preset in (("pitch_semitones", pitch), ("formant_shift", formant)):
                            if name not in msg:
                                self.settings[name] = preset
                                applied.append(name)
            if applied:
                await self.ws.send_json({"type": "settings", "applied": sorted(applied), **self.settings})

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            await self.ws.send_json(
                {
                    "type": "stats",
                    "frames_in": self.frames_in,
                    "frames_out": self.frames_in,
                    "frames_dropped": 0,
                    "audio_chunks_in": self.audio_in,
                    "audio_chunks_out": self.audio_in,
                    "invalid": self.record.invalid,
                    "stages_ms": {},
                    "runtime_ratio": 0.0,
                    "degrade_level": 0 if self.video == HELLO_VIDEO else 1,
                    "video": self.video,
                }
            )


@dataclass(frozen=True)
class EchoOptions:
    """Variations for testing the page's other paths."""

    prefix: str = "/mirage"
    page_token: bool = True  # False: GET v1/page-token answers 404, as a server with a configured key does
    reject_first: int = 0  # close this many sessions right after accepting them ...
    reject_code: int = 1013  # ... with this code
    directive: dict[str, object] = field(default_factory=lambda: dict(DIRECTIVE))  # sent after a few frames


def build_app(record: EchoRecord, options: EchoOptions = EchoOptions()) -> Starlette:
    """The echo application, with the page and its WebSocket under ``options.prefix``."""

    async def index(_request: object) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    async def stats(_request: object) -> JSONResponse:
        return JSONResponse({"sessions": record.live_sessions})

    async def page_token(_request: object) -> JSONResponse:
        if not options.page_token:
            return JSONResponse({"detail": "not found"}, status_code=404)
        record.page_tokens += 1
        return JSONResponse({"token": make_token("local-page"), "expires_in": TOKEN_TTL_S})

    async def ws_endpoint(websocket: WebSocket) -> None:
        token = _bearer(websocket)
        await websocket.accept(subprotocol="mirage.v1" if "mirage.v1" in websocket.scope["subprotocols"] else None)
        try:
            jwt.decode(
                token or "", SECRET, algorithms=["HS256"], audience=AUDIENCE, options={"require": ["exp", "sub"]}
            )
        except jwt.PyJWTError:
            await websocket.close(code=1008, reason="authentication failed")
            return
        record.sessions += 1
        if record.sessions <= options.reject_first:
            await websocket.close(code=options.reject_code, reason="echo server: rejected on purpose")
            return
        record.live_sessions += 1
        try:
            await EchoSession(websocket, record, options.directive).run()
        finally:
            record.live_sessions -= 1

    routes = [
        Route("/", index),
        Route("/v1/page-token", page_token),
        Route("/v1/stats", stats),
        WebSocketRoute("/ws", ws_endpoint),
        Mount("/web", StaticFiles(directory=WEB_DIR)),
    ]
    return Starlette(routes=[Mount(options.prefix, routes=routes)])


class EchoServer:
    """The echo app on 127.0.0.1 in a background thread; ``base_url`` ends with the prefix and a slash."""

    def __init__(self, options: EchoOptions = EchoOptions()) -> None:
        self.record = EchoRecord()
        self.prefix = options.prefix
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(build_app(self.record, options), log_level="warning", ws="websockets-sansio")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}/"

    def start(self, timeout_s: float = 20.0) -> EchoServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    logger.info("echo server on http://127.0.0.1:%d/mirage/", args.port)
    uvicorn.run(build_app(EchoRecord()), host="127.0.0.1", port=args.port, ws="websockets-sansio")


if __name__ == "__main__":
    main()
