"""The abuse limits at the front door, in-process: connections per address and per token subject, concurrent
sessions per subject (4029 with a reason, others unaffected), and a hostile JSON text answered, never 1011."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from mirage_ray import protocol
from mirage_ray.protocol import CloseCode, ErrorCode
from tests import hostile


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return hostile.no_models()  # these tests send no media


def opened(client: Any, subject: str = hostile.SUBJECT) -> tuple[Any, dict[str, Any]]:
    """Connect and return the socket with its first message (hello, or the refusal's close)."""
    ws = hostile.connect(client, hostile.token(subject)).__enter__()
    return ws, hostile.receive(ws)


def refused_with(client: Any, subject: str = hostile.SUBJECT) -> tuple[int, str] | None:
    with hostile.connect(client, hostile.token(subject)) as ws:
        first = hostile.receive(ws)
    if first["type"] == "websocket.close":
        return first["code"], first.get("reason", "")
    assert json.loads(first["text"])["type"] == "hello"
    return None


def test_connections_per_address_are_limited_and_other_addresses_are_not(models: dict[str, Any]) -> None:
    limits = {"max_connections_per_address_per_s": 0.1, "address_connection_burst": 2}
    with hostile.make_client(models, address="198.51.100.7", **limits) as noisy:
        assert [refused_with(noisy) for _ in range(2)] == [None, None]
        code, reason = refused_with(noisy) or (0, "")
        assert code == CloseCode.RATE_LIMITED and "address" in reason
    # a fresh app: the same limits, another address; each app (replica) keeps its own buckets
    with hostile.make_client(models, address="198.51.100.8", **limits) as quiet:
        assert refused_with(quiet) is None


def test_an_address_flood_does_not_spend_the_replica_wide_budget(models: dict[str, Any]) -> None:
    app = hostile.make_app(
        models,
        max_connections_per_address_per_s=0.1,
        address_connection_burst=1,
        max_connections_per_s=0.1,
        connection_burst=2,
    )
    with TestClient(app, client=("198.51.100.9", 1)) as flooder, TestClient(app, client=("198.51.100.10", 1)) as other:
        assert refused_with(flooder) is None  # spends one of the replica's two tokens
        for _ in range(5):  # refused by the address bucket, before the replica-wide one is touched
            assert (refused_with(flooder) or (0, ""))[1].endswith("for this address")
        assert refused_with(other) is None  # the replica's second token is still there


def test_connections_per_subject_are_limited_and_other_subjects_are_not(models: dict[str, Any]) -> None:
    with hostile.make_client(models, max_connections_per_subject_per_s=0.1, subject_connection_burst=2) as client:
        assert [refused_with(client, "alice") for _ in range(2)] == [None, None]
        code, reason = refused_with(client, "alice") or (0, "")
        assert code == CloseCode.RATE_LIMITED and "token" in reason
        assert refused_with(client, "bob") is None


def test_concurrent_sessions_per_subject(models: dict[str, Any]) -> None:
    with hostile.make_client(models, max_sessions_per_subject=2) as client:
        first, hello = opened(client, "alice")
        second, _ = opened(client, "alice")
        assert json.loads(hello["text"])["type"] == "hello"
        code, reason = refused_with(client, "alice") or (0, "")
        assert code == CloseCode.RATE_LIMITED and "concurrent sessions" in reason
        assert refused_with(client, "bob") is None
        assert hostile.probe(first, "still-served") is None  # the live sessions are unaffected
        first.__exit__(None, None, None)
        assert hostile.probe(second, "wait-for-first-to-end") is None
        for _ in range(50):  # the first session's end is processed asynchronously
            if refused_with(client, "alice") is None:
                break
        else:
            pytest.fail("a slot freed by a closed session was never given back")
        second.__exit__(None, None, None)


@pytest.fixture
def client(models: dict[str, Any]) -> Iterator[Any]:
    with hostile.make_client(models) as test_client:
        yield test_client


def test_deeply_nested_json_is_an_error_reply_not_1011(client: Any) -> None:
    with hostile.connect(client, hostile.token()) as ws:
        hostile.receive(ws)  # hello
        ws.send_text("[" * 50_000)  # the message: once a RecursionError and a 1011
        too_big = json.loads(hostile.receive(ws)["text"])
        assert too_big["code"] == ErrorCode.BAD_JSON and "max_json_bytes" in too_big["message"]
        ws.send_text("[" * 10_000)
        too_deep = json.loads(hostile.receive(ws)["text"])
        assert too_deep["type"] == "error" and too_deep["code"] == ErrorCode.BAD_JSON and "nests" in too_deep["message"]
        ws.send_text('{"type":"ping","t":NaN}')
        assert json.loads(hostile.receive(ws)["text"])["code"] == ErrorCode.BAD_JSON
        assert hostile.probe(ws, "alive") is None


def test_a_stream_of_hostile_json_closes_4002(client: Any) -> None:
    with hostile.connect(client, hostile.token()) as ws:
        hostile.receive(ws)
        for _ in range(200):  # 4 MB in all: under the byte rate, every message over max_json_bytes
            ws.send_text('{"a":' * 4_000)
        assert hostile.probe(ws, "late") == CloseCode.PROTOCOL_ERROR


def test_the_configured_json_limits_apply(models: dict[str, Any]) -> None:
    strict = hostile.make_client(models, max_json_depth=2, max_json_bytes=256)
    with strict, hostile.connect(strict, hostile.token()) as ws:
        hostile.receive(ws)
        ws.send_text(protocol.dumps({"type": "ping", "t": [[1]]}))
        deep = json.loads(hostile.receive(ws)["text"])
        ws.send_text(protocol.dumps({"type": "ping", "t": "x" * 300}))
        big = json.loads(hostile.receive(ws)["text"])
    assert deep["code"] == ErrorCode.BAD_JSON and "max_json_depth=2" in deep["message"]
    assert big["code"] == ErrorCode.BAD_JSON and "max_json_bytes=256" in big["message"]


def test_bytes_per_second_per_session_close_4029(models: dict[str, Any]) -> None:
    limited = hostile.make_client(models, max_bytes_per_s=16_000, max_frame_bytes=16_384)  # burst: 32 kB
    with limited, hostile.connect(limited, hostile.token()) as ws:
        hostile.receive(ws)
        for _ in range(6):  # 72 kB at once: within the message rate, over the byte rate
            ws.send_text(protocol.dumps({"type": "ping", "t": "x" * 12_000}))
        assert hostile.probe(ws, "after") == CloseCode.RATE_LIMITED
