"""Hostile client input for the fuzz test and bench/bench_fuzz.py: an in-process app, media samples, a generator.

The app is the real front door (:func:`mirage_ray.server.build_app`) over :class:`~mirage_ray.stages.LocalStages`
with the embedded CPU backends; only the abuse limits that would end a fuzz run early (connection and message
rates) are raised, so that every input reaches the parsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import cv2
import jwt
import numpy as np
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mirage_ray import protocol
from mirage_ray.codec import PNG_SIGNATURE, encode_jpeg
from mirage_ray.config import MirageSettings
from mirage_ray.protocol import Kind
from mirage_ray.security import build_auth
from mirage_ray.server import ServerContext, build_app
from mirage_ray.session import Session
from mirage_ray.stages import LocalStages, StageInfo

SECRET = "fuzz-test-secret-0123456789abcdefghij"
SUBJECT = "fuzzer"
PROBE_PREFIX = "probe-"
# limits raised so that the parsers, not the rate limits, see the inputs (the rate limits have their own tests)
FUZZ_OVERRIDES: dict[str, object] = {
    "max_connections_per_s": 1000.0,
    "connection_burst": 10_000,
    "max_connections_per_address_per_s": 1000.0,
    "address_connection_burst": 10_000,
    "max_connections_per_subject_per_s": 1000.0,
    "subject_connection_burst": 10_000,
    "max_messages_per_s": 10_000.0,
    "message_burst": 100_000,
    "max_frame_bytes": 262_144,
    "flood_cooldown_s": 0.0,  # a session closed 4029 must not lock the fuzzer out
}
OVERSIZE_BYTES = 300_000
# a session that ends with one of these closed the connection on purpose; anything else is a failure
EXPECTED_CLOSES = frozenset({1009, 4002, 4003, 4029})
FAILURE_CLOSES = frozenset({1006, 1011})
REPLY_TIMEOUT_S = 20.0  # a session that stops answering (a dead worker, a swallowed send error) fails here
SESSION_HANDLERS = ("on_text", "on_video", "on_audio", "on_reference", "on_invalid", "admit")


def backends() -> dict[str, Any]:
    from mirage_ray.vision.detect_retinaface import RetinaFaceDetector
    from mirage_ray.vision.enhance_none import NoEnhancer
    from mirage_ray.vision.swap_classical import ClassicalSwapper
    from mirage_ray.voice.convert_passthrough import PassthroughConverter
    from mirage_ray.voice.convert_world import WorldConverter

    return {
        "detector": RetinaFaceDetector(),
        "swapper": ClassicalSwapper(),
        "enhancer": NoEnhancer(),
        "converter": WorldConverter(),
        "fallback": PassthroughConverter(),
    }


def no_models() -> dict[str, Any]:
    """For tests that send no media: no backend is ever called."""
    return dict.fromkeys(("detector", "swapper", "enhancer", "converter", "fallback"))


def local_stages(settings: MirageSettings, models: dict[str, Any]) -> LocalStages:
    """In-process stages over the models of :func:`backends` (or any dict with its keys)."""
    return LocalStages(settings, *[models[k] for k in ("detector", "swapper", "enhancer", "converter", "fallback")])


def make_app(models: dict[str, Any], **overrides: object) -> Starlette:
    """The in-process front door (one ingress replica) with the fuzz limits; ``overrides`` win."""
    settings = MirageSettings(jwt_secret=SECRET, **{**FUZZ_OVERRIDES, **overrides})
    stages = local_stages(settings, models)
    report = {name: {"ready": True} for name in ("detector", "swapper", "enhancer", "voice")}

    async def readiness() -> dict[str, Any]:
        return report

    return build_app(ServerContext(settings, build_auth(settings), stages, StageInfo(report=report), readiness))


def make_client(models: dict[str, Any], address: str = "testclient", **overrides: object) -> TestClient:
    """A TestClient connecting from ``address`` to a new :func:`make_app`."""
    return TestClient(make_app(models, **overrides), client=(address, 50000))


def token(subject: str = SUBJECT, ttl_s: float = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": subject, "aud": "mirage", "nbf": now, "exp": now + int(ttl_s)}, SECRET, "HS256")


def connect(client: TestClient, bearer: str | None = None, query: str = "", headers: dict[str, str] | None = None):
    subprotocols = ["mirage.v1"] + ([f"bearer.{bearer}"] if bearer else [])
    return client.websocket_connect(f"/ws{query}", subprotocols=subprotocols, headers=headers or {})


def send(ws: Any, message: bytes | str) -> None:
    if isinstance(message, bytes):
        ws.send_bytes(message)
    else:
        ws.send_text(message)


def receive(ws: Any, timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
    """The next message from the server, failing after ``timeout_s`` (TestClient's own receive waits forever)."""

    async def next_message() -> dict[str, Any]:
        with anyio.fail_after(timeout_s):
            return await ws._send_rx.receive()

    return ws.portal.call(next_message)


def probe(ws: Any, t: str, limit: int = 10_000) -> int | None:
    """Send a well-formed ping and read until its pong (None) or the close (its code)."""
    with contextlib.suppress(Exception):  # the server may have closed already; its close frame is still queued
        ws.send_text(protocol.dumps({"type": "ping", "t": t}))
    for _ in range(limit):
        message = receive(ws)
        if message["type"] == "websocket.close":
            return int(message["code"])
        text = message.get("text")
        if text and json.loads(text) == {"type": "pong", "t": t}:
            return None
    raise AssertionError(f"no pong for {t} within {limit} messages")


@contextlib.contextmanager
def session_exceptions() -> Iterator[list[BaseException]]:
    """Records every exception that escapes a :class:`Session` handler (the transport would swallow some)."""
    escaped: list[BaseException] = []
    originals = {name: getattr(Session, name) for name in SESSION_HANDLERS}

    def recording(method: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(method):

            async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await method(*args, **kwargs)
                except Exception as exc:
                    escaped.append(exc)
                    raise

            return wrapped_async

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                escaped.append(exc)
                raise

        return wrapped

    for name, method in originals.items():
        setattr(Session, name, recording(method))
    try:
        yield escaped
    finally:
        for name, method in originals.items():
            setattr(Session, name, method)


# --- media samples ----------------------------------------------------------------------------------------------
@functools.cache
def small_jpeg() -> bytes:
    rng = np.random.default_rng(1)
    return encode_jpeg(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), 80)


@functools.cache
def small_png() -> bytes:
    ok, png = cv2.imencode(".png", np.full((40, 40, 3), 99, np.uint8))
    if not ok:
        raise RuntimeError("cv2 could not encode a PNG")
    return png.tobytes()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(small_jpeg())
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    struct.pack_into(">HH", data, sof + 5, height & 0xFFFF, width & 0xFFFF)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG signature + IHDR that claims ``width`` x ``height`` (CRC correct), and no pixels."""
    ihdr = struct.pack(">II5B", width & 0xFFFFFFFF, height & 0xFFFFFFFF, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return PNG_SIGNATURE + chunk


# --- a generator of hostile messages (the bench; the test draws the same shapes with hypothesis) ------------------
JSON_ATOMS: tuple[str, ...] = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e-400",
    "9" * 5000,
    "9" * 4000,
    "-0",
    "true",
    "null",
    '"\\ud800"',
    '"\\u0000"',
    "[]",
    "{}",
)
SETTING_NAMES = ("max_faces", "swap", "enhance", "fidelity", "pitch_semitones", "formant_shift", "voice", "type")


def _header(rng: random.Random, kind: int | None = None) -> bytes:
    return struct.pack(
        "<BBHIq",
        rng.randrange(256) if kind is None else kind,
        rng.choice((0, 0, 1, rng.randrange(256))),
        rng.choice((0, 0, 0, rng.randrange(65536))),
        rng.randrange(1 << 32),
        rng.randrange(-(1 << 63), 1 << 63),
    )


def _nested(rng: random.Random) -> str:
    depth = rng.choice((8, 31, 33, 100, 1000, 20_000))  # the longest stays under FUZZ_OVERRIDES["max_frame_bytes"]
    opener, closer = rng.choice((("[", "]"), ('{"a":', "}"), ('[{"b":', "}]")))
    tail = closer * depth if rng.random() < 0.5 else ""
    wrapped = opener * depth + "1" + tail
    return wrapped if rng.random() < 0.5 else '{"type":"ping","t":' + wrapped + "}"


def _json_value(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if roll < 0.3 or depth > 3:
        return rng.choice((*JSON_ATOMS, str(rng.randrange(-(10**30), 10**30)), repr(rng.uniform(-1e9, 1e9))))
    if roll < 0.5:
        return json.dumps("".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(0, 40))))
    if roll < 0.75:
        return "[" + ",".join(_json_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))) + "]"
    fields = (f"{json.dumps(rng.choice(SETTING_NAMES))}:{_json_value(rng, depth + 1)}" for _ in range(rng.randrange(4)))
    return "{" + ",".join(fields) + "}"


def hostile_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return _nested(rng)
    if roll < 0.25:
        return "".join(chr(rng.randrange(0x0, 0x110000)) for _ in range(rng.randrange(0, 64)))
    if roll < 0.3:
        return '{"type":"ping","t":"' + "x" * rng.choice((70_000, 200_000)) + '"}'
    if roll < 0.7:
        kind = rng.choice(('"settings"', '"ping"', '"flush"', '"hello"', "1", "null", '"x"'))
        fields = ",".join(
            f"{json.dumps(rng.choice((*SETTING_NAMES, 't')))}:{_json_value(rng)}" for _ in range(rng.randrange(4))
        )
        return "{" + f'"type":{kind}' + ("," + fields if fields else "") + "}"
    text = _json_value(rng)
    return text[: rng.randrange(len(text) + 1)] if rng.random() < 0.3 else text


def hostile_media(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.002:  # larger than FUZZ_OVERRIDES' max_frame_bytes: closed with 1009 before any parsing
        return protocol.pack(Kind.VIDEO, 0, 0, bytes(OVERSIZE_BYTES))
    if roll < 0.1:
        return rng.randbytes(rng.randrange(0, 40))
    if roll < 0.2:
        return _header(rng) + rng.randbytes(rng.randrange(0, 64))
    kind = rng.choice((Kind.VIDEO, Kind.VIDEO, Kind.AUDIO, Kind.AUDIO, Kind.REFERENCE))
    header = _header(rng, kind) if rng.random() < 0.2 else protocol.pack(kind, rng.randrange(1 << 32), 0, b"")
    if kind == Kind.AUDIO:
        length = rng.choice((0, 1, 7, 319, 320 * rng.randrange(1, 4), 321, rng.randrange(0, 4000)))
        return header + rng.randbytes(length)
    image = rng.choice((small_jpeg, small_png))()
    shape = rng.random()
    if shape < 0.3:
        payload = image[: rng.randrange(len(image))]
    elif shape < 0.5:
        corrupt = bytearray(image)
        for _ in range(rng.randrange(1, 8)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        payload = bytes(corrupt)
    elif shape < 0.7:
        size = (rng.choice((0, 1, 65535, rng.randrange(1, 70_000))), rng.choice((0, 1, 65535, rng.randrange(70_000))))
        payload = jpeg_claiming(*size) if rng.random() < 0.5 else png_claiming(*size)
    elif shape < 0.8:
        payload = image[:2] + rng.randbytes(rng.randrange(0, 200))
    else:
        payload = rng.randbytes(rng.randrange(0, 300))
    return header + payload


def hostile_message(rng: random.Random) -> bytes | str:
    return hostile_text(rng) if rng.random() < 0.45 else hostile_media(rng)


class SeqStamper:
    """Gives a binary message the next seq of its kind, as a conforming client would, so that the rules behind the
    seq rule (payloads) still see hostile input; text, and binary without a known kind, pass unchanged."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def __call__(self, message: bytes | str) -> bytes | str:
        if isinstance(message, str) or len(message) < protocol.HEADER_SIZE or message[0] not in Kind._value2member_map_:
            return message
        kind, flags, reserved, _, capture_us = protocol.HEADER.unpack_from(message)
        seq = self._next.get(kind, 0)
        self._next[kind] = (seq + 1) % protocol.UINT32_MOD
        return protocol.HEADER.pack(kind, flags, reserved, seq, capture_us) + message[protocol.HEADER_SIZE :]
