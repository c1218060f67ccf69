"""The front door in-process (Starlette TestClient + LocalStages over the real embedded backends): protocol v1 paths
and every close code, without Ray. The same paths through Serve are in tests/integration."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import jwt
import numpy as np
import pytest
from starlette.testclient import TestClient

from mirage_ray import protocol
from mirage_ray.admission import AdmissionGate
from mirage_ray.codec import float_to_pcm16
from mirage_ray.config import MirageSettings
from mirage_ray.protocol import CloseCode, Kind
from mirage_ray.security import build_auth
from mirage_ray.server import ServerContext, build_app
from mirage_ray.session import Session
from mirage_ray.stages import StageInfo
from mirage_ray.voice.convert_shift import ShiftConverter
from tests import hostile
from tests.media import moving_face_frames

SECRET = "unit-test-secret-0123456789abcdefghij"


@pytest.fixture(scope="module")
def backends() -> dict:
    return hostile.backends()


def make_context(backends: dict, admission: AdmissionGate | None = None, **overrides: object) -> ServerContext:
    settings = MirageSettings(jwt_secret=SECRET, **overrides)
    stages = hostile.local_stages(settings, backends)
    report = {
        "detector": {"ready": True, "name": "retinaface-mnet025", "fallback": True},
        "swapper": {"ready": True, "name": "classical-dlib68", "fallback": True},
        "enhancer": {"ready": True, "name": "none", "fallback": True},
        "voice": {"ready": True, "name": "world", "fallback": True},
    }

    async def readiness() -> dict:
        return report

    info = StageInfo.from_report(report, ShiftConverter.name)
    return ServerContext(settings, build_auth(settings), stages, info, readiness, admission=admission)


def make_client(backends: dict, admission: AdmissionGate | None = None, **overrides: object) -> TestClient:
    return TestClient(build_app(make_context(backends, admission, **overrides)))


def token(ttl_s: float = 300, **claims: object) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "u1", "aud": "mirage", "nbf": now, "exp": now + ttl_s, **claims}, SECRET, "HS256")


@pytest.fixture
def client(backends: dict) -> Iterator[TestClient]:
    with make_client(backends) as test_client:
        yield test_client


def connect(client: TestClient, bearer: str | None = None, query: str = ""):
    subprotocols = ["mirage.v1"] + ([f"bearer.{bearer}"] if bearer else [])
    return client.websocket_connect(f"/ws{query}", subprotocols=subprotocols)


def receive_json(ws, wanted: str, limit: int = 50) -> dict:
    for _ in range(limit):
        message = ws.receive()
        if message.get("text"):
            body = json.loads(message["text"])
            if body["type"] == wanted:
                return body
    raise AssertionError(f"no {wanted} message")


def closed_with(ws, limit: int = 500) -> int:
    """The close code the server sent, skipping the messages before it."""
    for _ in range(limit):
        message = ws.receive()
        if message["type"] == "websocket.close":
            return message["code"]
    raise AssertionError("the server did not close the socket")


def test_http_endpoints(client: TestClient) -> None:
    assert client.get("/healthz").text == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/v1/stats").json()["sessions"] == 0
    assert "<html" in client.get("/").text.lower()
    assert client.get("/v1/page-token").status_code == 404  # a secret is configured: no page tokens


def test_page_token_in_local_auto_mode(backends: dict) -> None:
    settings = MirageSettings()
    auth = build_auth(settings)
    assert auth.auto_secret

    async def readiness() -> dict:
        return {}

    stages = hostile.local_stages(settings, backends)
    app = build_app(ServerContext(settings, auth, stages, StageInfo(), readiness))
    with TestClient(app, client=("127.0.0.1", 5000)) as local:
        page_token = local.get("/v1/page-token").json()["token"]
        with connect(local, page_token) as ws:
            assert json.loads(ws.receive_text())["type"] == "hello"
    with TestClient(app, client=("203.0.113.9", 5000)) as remote:
        assert remote.get("/v1/page-token").status_code == 404


def test_hello_and_accepted_subprotocol(client: TestClient) -> None:
    with connect(client, token()) as ws:
        assert ws.accepted_subprotocol == "mirage.v1"
        hello = json.loads(ws.receive_text())
    assert hello["type"] == "hello" and hello["protocol"] == 1
    assert hello["audio"] == {"sample_rate": 16000, "chunk_ms": MirageSettings().chunk_ms}
    assert hello["video"] == {"width": 512, "height": 512, "fps": 20.0, "jpeg_quality": 85}
    assert set(hello["limits"]) == {"max_frame_bytes", "max_messages_per_s"}
    assert hello["backends"]["swapper"]["name"] == "classical-dlib68"


@pytest.mark.parametrize(
    "bad",
    [None, "not-a-jwt", "EXPIRED", "WRONG_AUD"],
)
def test_bad_tokens_close_1008(client: TestClient, bad: str | None) -> None:
    value = {"EXPIRED": token(ttl_s=-30), "WRONG_AUD": token(aud="other")}.get(bad or "", bad)
    with connect(client, value) as ws:
        assert closed_with(ws) == CloseCode.POLICY


def test_query_token_is_accepted(client: TestClient) -> None:
    with connect(client, query=f"?token={token()}") as ws:
        assert json.loads(ws.receive_text())["type"] == "hello"


def test_video_reply_echoes_seq_and_capture_time_and_is_passthrough_without_reference(client: TestClient) -> None:
    frame = moving_face_frames(1)[0]
    with connect(client, token()) as ws:
        receive_json(ws, "hello")
        ws.send_bytes(protocol.pack(Kind.VIDEO, 41, 123_456_789, frame))
        reply = protocol.parse_media(ws.receive_bytes())
    assert (reply.kind, reply.seq, reply.capture_us) == (Kind.VIDEO, 41, 123_456_789)
    assert reply.flags & protocol.FLAG_PASSTHROUGH
    assert reply.payload[:2] == b"\xff\xd8"


def test_reference_then_swapped_frames(client: TestClient) -> None:
    from tests.media import insightface_image

    reference = insightface_image("Tom_Hanks_54745.png")
    import cv2

    ok, png = cv2.imencode(".png", reference)
    assert ok
    with connect(client, token()) as ws:
        receive_json(ws, "hello")
        ws.send_bytes(protocol.pack(Kind.REFERENCE, 0, 0, png.tobytes()))
        reply = receive_json(ws, "reference")
        assert reply["ok"] is True and reply["faces"] >= 1
        frame = moving_face_frames(1)[0]
        ws.send_bytes(protocol.pack(Kind.VIDEO, 1, 50_000, frame))
        message = ws.receive()
        while message.get("bytes") is None:  # a stats message may come first (the first swap takes a while)
            message = ws.receive()
        out = protocol.parse_media(message["bytes"])
    assert out.flags & protocol.FLAG_PASSTHROUGH == 0
    assert out.seq == 1


def test_reference_without_a_face_is_refused_and_explained(client: TestClient) -> None:
    from mirage_ray.codec import encode_jpeg

    blank = encode_jpeg(np.full((256, 256, 3), 127, np.uint8), 90)
    with connect(client, token()) as ws:
        receive_json(ws, "hello")
        ws.send_bytes(protocol.pack(Kind.REFERENCE, 0, 0, blank))
        reply = receive_json(ws, "reference")
        ws.send_bytes(protocol.pack(Kind.REFERENCE, 1, 0, b"definitely not an image"))
        second = receive_json(ws, "reference")
    assert reply == {"type": "reference", "ok": False, "faces": 0, "error": reply["error"]}
    assert "No face" in reply["error"]
    assert second["ok"] is False and "not a usable image" in second["error"]


def test_audio_samples_are_conserved(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    sent = 0
    received = 0
    t = np.arange(16000 * 2) / 16000
    voice = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    with connect(client, token()) as ws:
        block = receive_json(ws, "hello")["audio"]["chunk_ms"] * 16
        seq = 0
        while sent < len(voice) - 3200:
            n = 160 * int(rng.integers(1, 20))
            ws.send_bytes(protocol.pack(Kind.AUDIO, seq, seq * 1000, float_to_pcm16(voice[sent : sent + n])))
            sent += n
            seq += 1
        expected = (sent // block) * block
        while received < expected:
            message = ws.receive()
            if message.get("bytes"):
                media = protocol.parse_media(message["bytes"])
                assert media.kind == Kind.AUDIO
                received += len(media.payload) // 2
    assert received == expected
    assert sent - received < block


def test_settings_ping_and_unknown_messages(client: TestClient) -> None:
    with connect(client, token()) as ws:
        receive_json(ws, "hello")
        ws.send_text(json.dumps({"type": "settings", "max_faces": 2, "fidelity": 7}))
        error = receive_json(ws, "error")
        applied = receive_json(ws, "settings")
        ws.send_text(json.dumps({"type": "future-thing", "x": 1}))
        ws.send_text(json.dumps({"type": "ping", "t": 99}))
        pong = receive_json(ws, "pong")
    assert error["code"] == "bad_setting" and "[0.0, 1.0]" in error["message"]
    assert applied["max_faces"] == 2 and applied["applied"] == ["max_faces"]
    assert pong == {"type": "pong", "t": 99}


def test_invalid_frames_are_answered_then_abandoned_4003(client: TestClient) -> None:
    with connect(client, token()) as ws:
        receive_json(ws, "hello")
        for _ in range(10):
            ws.send_bytes(b"\x01\x02")  # shorter than the header
            assert receive_json(ws, "error")["code"] == "bad_header"
        ws.send_bytes(protocol.pack(Kind.VIDEO, 0, 0, b"not a jpeg"))
        assert receive_json(ws, "error")["code"] == "bad_payload"
        for i in range(200):
            ws.send_bytes(protocol.pack(Kind.AUDIO, i, 0, b"\x00" * 7))  # not a multiple of 10 ms
        assert closed_with(ws) == CloseCode.ABANDONED


def test_a_stream_of_broken_headers_closes_4002(client: TestClient) -> None:
    with connect(client, token()) as ws:
        receive_json(ws, "hello")
        for _ in range(200):
            ws.send_bytes(b"\x07" * 20)  # unknown kind
        assert closed_with(ws) == CloseCode.PROTOCOL_ERROR


def test_oversized_message_closes_1009(backends: dict) -> None:
    with make_client(backends, max_frame_bytes=4096) as small, connect(small, token()) as ws:
        receive_json(ws, "hello")
        ws.send_bytes(protocol.pack(Kind.VIDEO, 0, 0, b"\xff" * 5000))
        assert closed_with(ws) == CloseCode.TOO_BIG


def test_message_rate_limit_closes_4029(backends: dict) -> None:
    with make_client(backends, max_messages_per_s=1.0, message_burst=5) as limited, connect(limited, token()) as ws:
        receive_json(ws, "hello")
        for _ in range(10):
            ws.send_text(json.dumps({"type": "ping", "t": 0}))
        assert closed_with(ws) == CloseCode.RATE_LIMITED


def test_capacity_closes_1013(backends: dict) -> None:
    with make_client(backends, sessions_per_replica=1) as one, connect(one, token()) as first:
        receive_json(first, "hello")
        with connect(one, token()) as second:
            assert closed_with(second) == CloseCode.TRY_AGAIN


def test_origin_allowlist_closes_1008(backends: dict) -> None:
    with make_client(backends, allowed_origins=("https://app.example",)) as strict:
        with strict.websocket_connect(
            "/ws", subprotocols=["mirage.v1", f"bearer.{token()}"], headers={"origin": "https://evil.example"}
        ) as ws:
            assert closed_with(ws) == CloseCode.POLICY
        with strict.websocket_connect(
            "/ws", subprotocols=["mirage.v1", f"bearer.{token()}"], headers={"origin": "https://app.example"}
        ) as ws:
            assert receive_json(ws, "hello")["protocol"] == 1


def test_token_expiry_mid_session_closes_4001(client: TestClient) -> None:
    with connect(client, token(ttl_s=2)) as ws:
        receive_json(ws, "hello")
        assert closed_with(ws) == CloseCode.TOKEN_EXPIRED


def test_stats_arrive_about_once_a_second(client: TestClient) -> None:
    with connect(client, token()) as ws:
        receive_json(ws, "hello")
        ws.send_bytes(protocol.pack(Kind.VIDEO, 0, 0, moving_face_frames(1)[0]))
        stats = receive_json(ws, "stats")
    assert stats["frames"]["in"] == 1
    assert "timings_ms" in stats and "degrade_level" in stats
    assert stats["runtime_ratio"] is None  # the voice's runtime/real: a number once audio flows, none yet


def test_stats_endpoint_lists_live_sessions(client: TestClient) -> None:
    with connect(client, token()) as ws:
        receive_json(ws, "hello")
        body = client.get("/v1/stats").json()
    assert body["sessions"] == 1
    assert body["capacity"] == 8


def test_polling_the_stats_endpoint_leaves_a_sessions_fps_alone(backends: dict) -> None:
    """GET /v1/stats reads a snapshot: the fps a session reports in its own ``stats`` still covers the whole second."""
    context = make_context(backends)
    now = [0.0]
    session = Session(context.settings, context.stages, context.info, session_id="s1", clock=lambda: now[0])
    context.sessions[session.id] = session
    with TestClient(build_app(context)) as client:
        for _ in range(10):
            session.count_video_drop("busy")  # ten frames in
        now[0] = 0.5
        polled = client.get("/v1/stats").json()["per_session"]["s1"]
        now[0] = 1.0
        client.get("/v1/stats")
    assert polled["fps_in"] == 20.0  # ten frames in the half second since the session started
    assert session.stats_message()["fps_in"] == 10.0  # the polls did not start a new window: ten frames in 1 s
    now[0] = 2.0
    assert session.stats_message()["fps_in"] == 0.0  # the session's own message did


def test_flags_from_a_client_are_refused_as_a_bad_header(client: TestClient) -> None:
    frame = moving_face_frames(1)[0]
    with connect(client, token()) as ws:
        receive_json(ws, "hello")
        ws.send_bytes(protocol.pack(Kind.VIDEO, 1, 0, frame, flags=1))
        error = receive_json(ws, "error")
        assert error["code"] == "bad_header" and "flags must be 0" in error["message"]
        ws.send_text('{"type": "ping", "t": 1}')
        assert receive_json(ws, "pong")["t"] == 1  # counted and answered; the session goes on
