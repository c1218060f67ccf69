"""Wire format of protocol v1 (docs/protocol.md): binary header, control messages, close codes.

Nothing else in the code base slices bytes or builds protocol JSON by hand.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from mirage_ray.config import MirageSettings, field_range

PROTOCOL_VERSION = 1
SUBPROTOCOL = "mirage.v1"
BEARER_PREFIX = "bearer."
HEADER = struct.Struct("<BBHIq")
HEADER_SIZE = HEADER.size  # 16 bytes
FLAG_PASSTHROUGH = 0x01
UINT32_MOD = 1 << 32  # seq is a uint32: it wraps here
AUDIO_SAMPLE_RATE = 16_000  # the wire's PCM16 mono rate, Hz
AUDIO_FRAME_MS = 10  # the audio unit: a payload is a whole number of these
PCM_SAMPLE_BYTES = 2
SAMPLES_PER_10MS = AUDIO_SAMPLE_RATE * AUDIO_FRAME_MS // 1000  # 160
AUDIO_FRAME_BYTES = SAMPLES_PER_10MS * PCM_SAMPLE_BYTES  # 320
MAX_JSON_BYTES: int = MirageSettings.model_fields["max_json_bytes"].default
MAX_JSON_DEPTH: int = MirageSettings.model_fields["max_json_depth"].default
ECHO_CHARS = 80  # a refused value is quoted back at most this long


class Kind(IntEnum):
    VIDEO = 1
    AUDIO = 2
    REFERENCE = 3


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # the server is shutting down (SIGTERM drain); the client may reconnect
    POLICY = 1008  # authentication failed, origin not allowed
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_AGAIN = 1013
    TOKEN_EXPIRED = 4001
    PROTOCOL_ERROR = 4002
    ABANDONED = 4003
    RATE_LIMITED = 4029


class ErrorCode:
    """``code`` values of non-fatal ``error`` messages."""

    BAD_HEADER = "bad_header"
    BAD_KIND = "bad_kind"
    BAD_PAYLOAD = "bad_payload"
    BAD_JSON = "bad_json"
    BAD_SETTING = "bad_setting"
    BAD_SEQ = "bad_seq"  # seq outside the tolerance window of the expected next value for its kind


class ProtocolError(ValueError):
    """A message that does not follow protocol v1; ``code`` is an :class:`ErrorCode` value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Header:
    kind: int
    flags: int
    seq: int
    capture_us: int


def pack(kind: int, seq: int, capture_us: int, payload: bytes, flags: int = 0) -> bytes:
    """One binary message: 16-byte little-endian header + payload."""
    return HEADER.pack(int(kind), flags, 0, seq % UINT32_MOD, capture_us) + payload


def seq_ahead(seq: int, expected: int) -> int:
    """How far ``seq`` is ahead of ``expected`` on the wrapping uint32 circle (0 .. 2**32 - 1)."""
    return (seq - expected) % UINT32_MOD


def audio_payload_problem(payload: bytes) -> str | None:
    """Why an audio payload breaks the 10 ms rule (empty, or not whole 10 ms PCM16 frames), or None."""
    if payload and len(payload) % AUDIO_FRAME_BYTES == 0:
        return None
    return (
        f"audio payload must be a non-empty multiple of {SAMPLES_PER_10MS} PCM16 samples ({AUDIO_FRAME_MS} ms),"
        f" got {len(payload)} bytes"
    )


def unpack(message: bytes) -> tuple[Header, bytes]:
    """Header and payload of a binary message; raises :class:`ProtocolError` on a malformed header."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise ProtocolError(ErrorCode.BAD_HEADER, "binary message must be bytes")
    if len(message) < HEADER_SIZE:
        raise ProtocolError(ErrorCode.BAD_HEADER, f"binary message shorter than the {HEADER_SIZE}-byte header")
    kind, flags, reserved, seq, capture_us = HEADER.unpack_from(message)
    if kind not in Kind._value2member_map_:
        raise ProtocolError(ErrorCode.BAD_KIND, f"unknown kind {kind}; allowed: 1 video, 2 audio, 3 reference")
    if reserved != 0:
        raise ProtocolError(ErrorCode.BAD_HEADER, "reserved header bytes 2-3 must be 0")
    return Header(kind, flags, seq, capture_us), bytes(message[HEADER_SIZE:])


# a JSON string literal, or an unterminated one running to the end of the text: it matches at every '"', so a scan
# never backtracks to retry a later '"' (which made text like '"\\"\\"\\"...' quadratic); and the characters that nest
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 per opener, -1 (int8) per closer


def json_depth(text: str) -> int:
    """Deepest nesting of arrays/objects in ``text``, brackets inside strings not counted; linear, no recursion.

    On malformed JSON it may over-count (an unterminated string), never under-count what the parser would reach.
    """
    outside_strings = _JSON_STRING.sub("", text) if '"' in text else text
    brackets = _NOT_BRACKET.sub("", outside_strings)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets.encode("ascii").translate(_DEPTH_STEPS), dtype=np.int8)
    return max(0, int(np.cumsum(steps, dtype=np.int64).max()))


def _refuse_constant(name: str) -> float:
    raise ProtocolError(ErrorCode.BAD_JSON, f"text message contains {name}, which is not JSON")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ProtocolError(ErrorCode.BAD_JSON, f"number {literal[:ECHO_CHARS]} is out of range")
    return value


def parse_text(text: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A client JSON message; raises :class:`ProtocolError` unless it is an object with a string ``type``.

    Bounded before parsing: at most ``max_bytes`` of UTF-8 and ``max_depth`` levels of nesting. ``NaN``,
    ``Infinity`` and numbers beyond a double are refused (they could not be sent back as JSON).
    No input raises anything but :class:`ProtocolError`.
    """
    if not isinstance(text, str):
        raise ProtocolError(ErrorCode.BAD_JSON, "text message must be a string")
    size = len(text) if len(text) * 4 <= max_bytes else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(ErrorCode.BAD_JSON, f"text message of {size} bytes exceeds max_json_bytes={max_bytes}")
    depth = json_depth(text)
    if depth > max_depth:
        raise ProtocolError(ErrorCode.BAD_JSON, f"text message nests {depth} levels; max_json_depth={max_depth}")
    try:
        message = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"text message is not JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer beyond the interpreter's digit limit
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(ErrorCode.BAD_JSON, f"text message is not usable JSON: {type(exc).__name__}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(ErrorCode.BAD_JSON, "text message must be a JSON object with a string 'type'")
    return message


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def hello(
    session_id: str,
    audio: dict[str, Any],
    video: dict[str, Any],
    limits: dict[str, Any],
    backends: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "hello",
        "session_id": session_id,
        "protocol": PROTOCOL_VERSION,
        "audio": audio,
        "video": video,
        "limits": limits,
        "backends": backends,
        **extra,
    }


def reference_reply(ok: bool, faces: int, error: str | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": "reference", "ok": ok, "faces": faces}
    if error is not None:
        reply["error"] = error
    return reply


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}


def directive(reason: str, audio_chunk_ms: int | None = None, video: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "directive", "reason": reason}
    if audio_chunk_ms is not None:
        message["audio_chunk_ms"] = audio_chunk_ms
    if video is not None:
        message["video"] = video
    return message


def pong(t: Any) -> dict[str, Any]:
    return {"type": "pong", "t": t}


def stats(body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "stats", **body}


def bearer_from_subprotocols(offered: list[str]) -> str | None:
    """The JWT offered as ``bearer.<JWT>`` among the client's subprotocols, if any."""
    for item in offered:
        if item.startswith(BEARER_PREFIX) and len(item) > len(BEARER_PREFIX):
            return item[len(BEARER_PREFIX) :]
    return None


# --- settings (client -> server) -------------------------------------------------------------------
SETTING_RANGES: dict[str, tuple[float, float]] = {  # the same ranges as the service's settings (config.py)
    "max_faces": field_range("max_faces"),
    "fidelity": field_range("codeformer_fidelity"),
    "pitch_semitones": field_range("pitch_semitones"),
    "formant_shift": field_range("formant_shift"),
}
BOOL_SETTINGS = ("swap", "enhance")
STRING_SETTINGS = ("voice",)


def _echo(value: Any) -> str:
    """A refused value as quoted back to the client: its repr, cut to ``ECHO_CHARS``."""
    try:
        text = repr(value)
    except ValueError:  # an integer beyond the interpreter's digit limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


def parse_settings(message: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Valid settings from a ``settings`` message, and one human message per refused field (with its range).

    Unknown fields are ignored (forward compatibility); a refused field leaves the previous value in force.
    """
    accepted: dict[str, Any] = {}
    refused: list[str] = []
    for name, (low, high) in SETTING_RANGES.items():
        if name not in message:
            continue
        value = message[name]
        integer = name == "max_faces"
        valid_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not valid_type or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            refused.append(f"{name} must be {kind} in [{low}, {high}], got {_echo(value)}")
        else:
            accepted[name] = int(value) if integer else float(value)
    for name in BOOL_SETTINGS:
        if name in message:
            if isinstance(message[name], bool):
                accepted[name] = message[name]
            else:
                refused.append(f"{name} must be true or false, got {_echo(message[name])}")
    for name in STRING_SETTINGS:
        if name in message:
            if isinstance(message[name], str) and 0 < len(message[name]) <= 64:
                accepted[name] = message[name]
            else:
                refused.append(f"{name} must be a voice name (1-64 characters), got {_echo(message[name])}")
    return accepted, refused


# --- media messages as typed values ------------------------------------------------------------------
@dataclass(frozen=True)
class Media:
    """One binary message as a value: what the session sees instead of bytes."""

    kind: Kind
    seq: int
    capture_us: int
    payload: bytes
    flags: int = 0


def parse_media(message: bytes) -> Media:
    header, payload = unpack(message)
    return Media(Kind(header.kind), header.seq, header.capture_us, payload, header.flags)


def pack_media(media: Media) -> bytes:
    return pack(media.kind, media.seq, media.capture_us, media.payload, media.flags)
