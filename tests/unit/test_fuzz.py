"""Property-based fuzzing of everything a client can send: the parsers directly, then the in-process front door over
a WebSocket (Starlette TestClient + LocalStages), then the handshake. No input may raise anything but a
ProtocolError from a parser, close a session with 1011/1006, or leave an exception escaping a session handler; and
a well-behaved session still works afterwards. Bounded for CI: a few seconds in all (bench/bench_fuzz.py runs long).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import urllib.parse
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from mirage_ray import protocol
from mirage_ray.codec import PNG_SIGNATURE
from mirage_ray.protocol import Kind, ProtocolError
from mirage_ray.security import SeqWindow
from tests import hostile

FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,  # CI sees the same inputs every run; bench/bench_fuzz.py explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# --- strategies ---------------------------------------------------------------------------------------------------
UINT32 = st.integers(0, (1 << 32) - 1)
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
any_header = st.builds(
    lambda *fields: struct.pack("<BBHIq", *fields), st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535),
    UINT32, INT64,
)  # fmt: skip


def good_header(kind: Kind) -> st.SearchStrategy[bytes]:
    return st.builds(lambda seq, capture: protocol.pack(kind, seq, capture, b""), UINT32, INT64)


image = st.sampled_from(["jpeg", "png"]).map(
    lambda name: hostile.small_jpeg() if name == "jpeg" else hostile.small_png()
)
side = st.one_of(st.sampled_from([0, 1, 65535]), st.integers(0, 70_000))


def corrupt(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out)


image_payload = st.one_of(
    st.tuples(image, st.floats(0.0, 1.0)).map(lambda p: p[0][: int(len(p[0]) * p[1])]),  # truncated
    st.tuples(image, st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)).map(
        lambda p: corrupt(*p)
    ),
    st.tuples(side, side).map(lambda wh: hostile.jpeg_claiming(*wh)),  # dimensions lie in the header
    st.tuples(UINT32, UINT32).map(lambda wh: hostile.png_claiming(*wh)),
    st.tuples(st.sampled_from([b"\xff\xd8", PNG_SIGNATURE]), st.binary(max_size=200)).map(lambda p: p[0] + p[1]),
    st.binary(max_size=300),
)
pcm_payload = st.one_of(
    st.binary(max_size=4000),
    st.integers(1, 8).map(lambda blocks: bytes(320 * blocks)),  # valid 10 ms multiples
    st.sampled_from([1, 7, 319, 321, 641]).map(bytes),
)
media_message = st.one_of(
    st.binary(max_size=40),
    st.tuples(any_header, st.binary(max_size=64)).map(lambda p: p[0] + p[1]),
    st.tuples(st.one_of(good_header(Kind.VIDEO), good_header(Kind.REFERENCE)), image_payload).map(
        lambda p: p[0] + p[1]
    ),
    st.tuples(good_header(Kind.AUDIO), pcm_payload).map(lambda p: p[0] + p[1]),
)

json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**300), 10**300), st.floats(allow_nan=False,
    allow_infinity=False), st.text(max_size=30),
)  # fmt: skip
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
field_name = st.sampled_from([*hostile.SETTING_NAMES, "t"])
typed_message = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["settings", "ping", "flush", "hello"]), json_value)},
    optional={name: json_value for name in [*hostile.SETTING_NAMES[:-1], "t"]},
).map(json.dumps)
raw_atom_message = st.tuples(
    st.sampled_from(["settings", "ping"]), field_name, st.sampled_from(hostile.JSON_ATOMS)
).map(
    lambda p: '{"type":"%s","%s":%s}' % p  # noqa: UP031 (the atoms are raw JSON text, not Python values)
)
deep_message = st.tuples(
    st.integers(1, 20_000), st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"b":', "}]")]), st.booleans()
).map(lambda p: p[1][0] * p[0] + "1" + (p[1][1] * p[0] if p[2] else ""))
huge_number = st.integers(300, 6000).map(lambda digits: '{"type":"settings","max_faces":' + "9" * digits + "}")
oversize = st.sampled_from([70_000, 200_000]).map(lambda n: '{"type":"ping","t":"' + "x" * n + '"}')
text_message = st.one_of(
    typed_message,
    raw_atom_message,
    deep_message,
    huge_number,
    oversize,
    st.text(max_size=80),
    typed_message.flatmap(lambda text: st.integers(0, len(text)).map(lambda cut: text[:cut])),  # truncated
)
client_message = st.one_of(text_message, media_message)


# --- 1. the parsers alone -----------------------------------------------------------------------------------------
@settings(FUZZ_SETTINGS, max_examples=150)
@given(st.one_of(text_message, st.text()))
def test_parse_text_raises_only_protocol_errors(text: str) -> None:
    try:
        message = protocol.parse_text(text)
    except ProtocolError as exc:
        assert exc.code == protocol.ErrorCode.BAD_JSON
        return
    assert isinstance(message, dict) and isinstance(message["type"], str)
    json.loads(protocol.dumps(message))  # whatever is accepted can be sent back (a pong echoes ``t``)


@settings(FUZZ_SETTINGS, max_examples=150)
@given(media_message)
def test_parse_media_raises_only_protocol_errors(raw: bytes) -> None:
    try:
        media = protocol.parse_media(raw)
    except ProtocolError as exc:
        assert exc.code in {protocol.ErrorCode.BAD_HEADER, protocol.ErrorCode.BAD_KIND}
        return
    assert media.kind in Kind
    assert protocol.pack_media(media) == raw  # every accepted header round-trips: nothing was silently changed


@settings(FUZZ_SETTINGS, max_examples=100)
@given(st.dictionaries(st.one_of(field_name, st.text(max_size=8)), json_value, max_size=8))
def test_parse_settings_accepts_only_in_range_values(message: dict[str, Any]) -> None:
    accepted, refused = protocol.parse_settings(message)
    for name, value in accepted.items():
        if name in protocol.SETTING_RANGES:
            low, high = protocol.SETTING_RANGES[name]
            assert not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
        elif name in protocol.BOOL_SETTINGS:
            assert isinstance(value, bool)
        else:
            assert isinstance(value, str) and 0 < len(value) <= 64
    assert all(isinstance(reason, str) and len(reason) < 300 for reason in refused)


kind = st.sampled_from(list(Kind))
seq_offset = st.one_of(st.just(0), st.just(0), st.integers(-5, 1100), UINT32)  # from the expected next seq


@settings(FUZZ_SETTINGS, max_examples=150)
@given(tolerance=st.integers(0, 1000), steps=st.lists(st.tuples(kind, seq_offset, UINT32), max_size=80))
def test_the_seq_rule_refuses_exactly_the_seqs_outside_the_window(
    tolerance: int, steps: list[tuple[Kind, int, int]]
) -> None:
    """Offset 0 is a conforming client (+1, wrapping); a refused seq leaves the expectation where it was."""
    window = SeqWindow(tolerance)
    expected: dict[Kind, int] = {}
    for message_kind, offset, first in steps:
        seq = (expected[message_kind] + offset) % protocol.UINT32_MOD if message_kind in expected else first
        refusal = window.check(message_kind, seq)
        if message_kind in expected and not 0 <= offset % protocol.UINT32_MOD <= tolerance:
            assert refusal is not None and f"the expected {expected[message_kind]}" in refusal
        else:
            assert refusal is None
            expected[message_kind] = (seq + 1) % protocol.UINT32_MOD


# --- 2. the front door, over a WebSocket --------------------------------------------------------------------------
class ErrorLog(logging.Handler):
    """Collects ERROR records from the service (``logger.exception`` marks an internal error)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def app() -> Iterator[TestClient]:
    with hostile.make_client(hostile.backends()) as client:
        yield client


@pytest.fixture(scope="module")
def failures() -> Iterator[tuple[list[BaseException], ErrorLog]]:
    log = ErrorLog()
    logging.getLogger("mirage_ray").addHandler(log)
    try:
        with hostile.session_exceptions() as escaped:
            yield escaped, log
    finally:
        logging.getLogger("mirage_ray").removeHandler(log)


def assert_no_failures(failures: tuple[list[BaseException], ErrorLog]) -> None:
    """No exception escaped a session handler and nothing was logged as an error since the last call."""
    escaped, log = failures
    found = [repr(exc) for exc in escaped] + [record.getMessage() for record in log.records]
    escaped.clear()
    log.records.clear()
    assert found == [], f"{len(found)} failures, first: {found[:3]}"


PROBES = iter(range(1 << 30))


@pytest.mark.timeout(120)
@settings(FUZZ_SETTINGS, max_examples=40)
@given(messages=st.lists(st.tuples(client_message, st.booleans()), min_size=1, max_size=10))
def test_hostile_messages_never_crash_a_session(
    app: TestClient, failures: Any, messages: list[tuple[bytes | str, bool]]
) -> None:
    """Each binary message keeps its drawn seq (the seq rule's input) or gets its kind's next (the payload rules')."""
    stamp = hostile.SeqStamper()
    with hostile.connect(app, hostile.token()) as ws:
        assert json.loads(hostile.receive(ws)["text"])["type"] == "hello"
        for message, conforming_seq in messages:
            hostile.send(ws, stamp(message) if conforming_seq else message)
        code = hostile.probe(ws, f"{hostile.PROBE_PREFIX}{next(PROBES)}")
    assert code is None or code in hostile.EXPECTED_CLOSES, f"closed with {code}"
    assert_no_failures(failures)


def test_a_well_behaved_session_works_after_the_fuzzing(app: TestClient, failures: Any) -> None:
    with hostile.connect(app, hostile.token()) as ws:
        assert json.loads(hostile.receive(ws)["text"])["type"] == "hello"
        assert hostile.probe(ws, "after-fuzz") is None
        ws.send_bytes(protocol.pack(Kind.VIDEO, 7, 1_000, hostile.small_jpeg()))
        video = next_media(ws, Kind.VIDEO)
        ws.send_bytes(protocol.pack(Kind.AUDIO, 9, 2_000, bytes(2 * 16 * 480)))  # 480 ms: completes a block
        audio = next_media(ws, Kind.AUDIO)
    assert (video.seq, video.capture_us, video.payload[:2]) == (7, 1_000, b"\xff\xd8")
    assert (audio.seq, audio.capture_us) == (9, 2_000) and len(audio.payload) % 2 == 0
    assert_no_failures(failures)


def next_media(ws: Any, kind: Kind, limit: int = 100) -> protocol.Media:
    for _ in range(limit):
        message = hostile.receive(ws)
        assert message["type"] != "websocket.close", f"closed with {message.get('code')}"
        if message.get("bytes"):
            media = protocol.parse_media(message["bytes"])
            if media.kind == kind:
                return media
    raise AssertionError(f"no {kind.name} reply")


# --- 3. the handshake ---------------------------------------------------------------------------------------------
header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), max_size=60)


def mangled_tokens(free_text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Near-misses of a valid token (one character changed, alg none, another key) and ``free_text``."""
    valid = hostile.token()
    return st.one_of(
        free_text,
        st.tuples(st.integers(0, len(valid) - 1), st.characters(min_codepoint=0x21, max_codepoint=0x7E))
        .map(lambda p: valid[: p[0]] + p[1] + valid[p[0] + 1 :])
        .filter(lambda t: t != valid),
        st.just(jwt.encode({"sub": "x", "aud": "mirage", "exp": 2**31}, key=None, algorithm="none")),
        st.just(jwt.encode({"sub": "x", "aud": "mirage", "exp": 2**31}, "another-secret-0123456789abcdef", "HS256")),
    )


@pytest.mark.timeout(60)
@settings(FUZZ_SETTINGS, max_examples=40)
@given(
    subprotocols=st.lists(header_text, max_size=4),
    bearer=st.one_of(st.none(), mangled_tokens(header_text)),  # header values are ASCII
    query=st.one_of(st.none(), mangled_tokens(st.text(max_size=200))),  # any text, URL-quoted
    origin=st.one_of(st.none(), header_text),
)
def test_hostile_handshakes_are_refused_with_1008(
    app: TestClient, failures: Any, subprotocols: list[str], bearer: str | None, query: str | None, origin: str | None
) -> None:
    offered = [*subprotocols, *([f"bearer.{bearer}"] if bearer else [])]
    url = "/ws" + (f"?token={urllib.parse.quote(query, safe='')}" if query is not None else "")
    headers = {"origin": origin} if origin is not None else {}
    with app.websocket_connect(url, subprotocols=offered, headers=headers) as ws:
        message = hostile.receive(ws)
    assert message["type"] == "websocket.close" and message["code"] == protocol.CloseCode.POLICY
    assert_no_failures(failures)
