"""Wire format: header pack/unpack, text messages, settings validation, close codes."""

import json
import struct
import time

import pytest

from mirage_ray import protocol
from mirage_ray.protocol import CloseCode, Kind, Media, ProtocolError


def test_header_is_16_bytes_little_endian() -> None:
    message = protocol.pack(Kind.AUDIO, seq=0x01020304, capture_us=-5, payload=b"xy", flags=1)
    assert len(message) == protocol.HEADER_SIZE + 2 == 18
    assert message[0] == 2 and message[1] == 1 and message[2:4] == b"\x00\x00"
    assert message[4:8] == bytes([4, 3, 2, 1])
    assert struct.unpack("<q", message[8:16])[0] == -5
    assert message[16:] == b"xy"


def test_round_trip_and_seq_wraps() -> None:
    media = Media(Kind.VIDEO, seq=(1 << 32) + 7, capture_us=1_700_000_000_000_000, payload=b"\xff\xd8jpeg")
    parsed = protocol.parse_media(protocol.pack_media(media))
    assert parsed.kind is Kind.VIDEO
    assert parsed.seq == 7
    assert parsed.capture_us == 1_700_000_000_000_000
    assert parsed.payload == b"\xff\xd8jpeg"
    assert parsed.flags == 0


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\x01" * 15, protocol.ErrorCode.BAD_HEADER),
        (struct.pack("<BBHIq", 9, 0, 0, 1, 2), protocol.ErrorCode.BAD_KIND),
        (struct.pack("<BBHIq", 1, 0, 5, 1, 2), protocol.ErrorCode.BAD_HEADER),
    ],
)
def test_malformed_headers_raise_typed_errors(raw: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.unpack(raw)
    assert info.value.code == code


def test_parse_text_requires_object_with_type() -> None:
    assert protocol.parse_text('{"type": "ping", "t": 3}') == {"type": "ping", "t": 3}
    for bad in ("not json", "[1, 2]", '{"t": 1}', '{"type": 5}'):
        with pytest.raises(ProtocolError) as info:
            protocol.parse_text(bad)
        assert info.value.code == protocol.ErrorCode.BAD_JSON


def test_settings_accept_in_range_and_refuse_with_the_range() -> None:
    accepted, refused = protocol.parse_settings(
        {"type": "settings", "max_faces": 3, "fidelity": 0.5, "swap": False, "voice": "deeper", "future": 1}
    )
    assert accepted == {"max_faces": 3, "fidelity": 0.5, "swap": False, "voice": "deeper"}
    assert refused == []
    accepted, refused = protocol.parse_settings(
        {"max_faces": 0, "fidelity": 1.5, "pitch_semitones": "high", "formant_shift": 3, "enhance": "yes"}
    )
    assert accepted == {}
    assert len(refused) == 5
    assert any("fidelity must be a number in [0.0, 1.0]" in r for r in refused)
    assert any("max_faces must be an integer in [1, 16]" in r for r in refused)


def test_settings_refuse_booleans_as_numbers() -> None:
    accepted, refused = protocol.parse_settings({"max_faces": True})
    assert accepted == {} and refused


def test_messages_serialise_as_protocol_json() -> None:
    hello = protocol.hello("s1", {"sample_rate": 16000, "chunk_ms": 192}, {"width": 512}, {"max_frame_bytes": 1}, {})
    assert json.loads(protocol.dumps(hello))["protocol"] == 1
    assert protocol.reference_reply(False, 0, "no face") == {
        "type": "reference",
        "ok": False,
        "faces": 0,
        "error": "no face",
    }
    assert protocol.directive("slow", audio_chunk_ms=240) == {
        "type": "directive",
        "reason": "slow",
        "audio_chunk_ms": 240,
    }
    assert protocol.pong(12.5) == {"type": "pong", "t": 12.5}


def test_close_codes_match_the_contract() -> None:
    # the contract's codes, plus 1001 (going away: the server shuts down), a compatible extension
    assert {c.value for c in CloseCode} == {1000, 1001, 1008, 1009, 1011, 1013, 4001, 4002, 4003, 4029}


def test_bearer_from_subprotocols() -> None:
    assert protocol.bearer_from_subprotocols(["mirage.v1", "bearer.abc.def"]) == "abc.def"
    assert protocol.bearer_from_subprotocols(["mirage.v1", "bearer."]) is None
    assert protocol.bearer_from_subprotocols([]) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[" * 50_000, "max_json_bytes"),  # the message: refused on size before anything else
        ("[" * 10_000, "nests"),
        ('{"type": "ping", "t": ' + "[" * 33 + "]" * 33 + "}", "nests"),
        ('{"type": "ping", "t": "' + "x" * 70_000 + '"}', "max_json_bytes"),
        ('{"type": "ping", "t": NaN}', "NaN"),
        ('{"type": "ping", "t": -Infinity}', "Infinity"),
        ('{"type": "ping", "t": 1e400}', "out of range"),
        ('{"type": "ping", "t": ' + "9" * 5000 + "}", "not usable JSON"),
        ("", "not JSON"),
        ('"\ud800"', "JSON object"),
        ("null", "JSON object"),
    ],
)
def test_hostile_text_raises_only_protocol_errors(text: str, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_text(text)
    assert info.value.code == protocol.ErrorCode.BAD_JSON
    assert why in str(info.value)


def test_nesting_at_the_limit_and_brackets_inside_strings_are_allowed() -> None:
    nested = '{"type": "ping", "t": ' + "[" * 31 + "]" * 31 + "}"  # 32 levels with the object
    assert protocol.json_depth(nested) == 32
    assert protocol.parse_text(nested)["type"] == "ping"
    quoted = '{"type": "ping", "t": "' + "[{" * 1000 + '\\" ]"}'
    assert protocol.json_depth(quoted) == 1
    assert protocol.parse_text(quoted)["t"].startswith("[{[{")


def test_the_depth_scan_is_linear_on_hostile_strings() -> None:
    """Escaped quotes once made the string-skipping scan quadratic (62 s for 42 kB); now it is one pass."""
    started = time.perf_counter()
    for text in ('"' + '\\"' * 32_768, '"' * 65_536, '"' + "\\" * 65_535, '["\\' * 21_845):
        with pytest.raises(ProtocolError):
            protocol.parse_text(text[:65_536], max_bytes=65_536)
    assert time.perf_counter() - started < 2.0  # generous: a few ms on any machine; the quadratic scan took minutes
    assert protocol.json_depth('["\\"[["]') == 1 and protocol.json_depth('"abc\\') == 0


def test_parse_text_limits_are_parameters() -> None:
    with pytest.raises(ProtocolError, match="max_json_depth=2"):
        protocol.parse_text('{"type": "ping", "t": [[1]]}', max_depth=2)
    with pytest.raises(ProtocolError, match="max_json_bytes=10"):
        protocol.parse_text('{"type": "ping"}', max_bytes=10)
    with pytest.raises(ProtocolError, match="bytes"):  # counted in UTF-8 bytes, not characters
        protocol.parse_text('{"type": "' + "é" * 10 + '"}', max_bytes=25)


def test_refused_settings_quote_the_value_briefly() -> None:
    _, refused = protocol.parse_settings({"voice": "v" * 10_000, "fidelity": [0] * 10_000})
    assert len(refused) == 2 and all(len(reason) < 200 for reason in refused)
