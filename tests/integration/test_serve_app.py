"""The real Serve application (local Ray head, declared logical GPU, serve_config.yaml) over a real WebSocket."""

from __future__ import annotations

import asyncio
import json
import time

import cv2
import httpx
import numpy as np
import pytest
import websockets

from mirage_ray import protocol
from mirage_ray.codec import float_to_pcm16, pcm16_to_float
from mirage_ray.protocol import CloseCode, Kind
from tests.conftest import ServeApp
from tests.media import insightface_image, moving_face_frames

pytestmark = pytest.mark.integration
EXPECTED_DEPLOYMENTS = {"Ingress", "Detector", "Swapper", "Enhancer", "Voice"}


class Client:
    """A protocol-v1 client written from docs/protocol.md: one socket, text and binary messages."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self.texts: list[dict] = []
        self.media: list[protocol.Media] = []

    async def next_json(self, wanted: str, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        for index, message in enumerate(self.texts):
            if message["type"] == wanted:
                return self.texts.pop(index)
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(self.socket.recv(), deadline - time.monotonic())
            if isinstance(raw, bytes):
                self.media.append(protocol.parse_media(raw))
                continue
            message = json.loads(raw)
            if message["type"] == wanted:
                return message
            self.texts.append(message)
        raise AssertionError(f"no {wanted!r} within {timeout_s} s")

    async def next_media(self, kind: Kind, timeout_s: float = 30.0) -> protocol.Media:
        deadline = time.monotonic() + timeout_s
        for index, media in enumerate(self.media):
            if media.kind == kind:
                return self.media.pop(index)
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(self.socket.recv(), deadline - time.monotonic())
            if isinstance(raw, bytes):
                media = protocol.parse_media(raw)
                if media.kind == kind:
                    return media
                self.media.append(media)
            else:
                self.texts.append(json.loads(raw))
        raise AssertionError(f"no kind {kind} within {timeout_s} s")


async def open_client(app: ServeApp, token: str) -> Client:
    socket = await websockets.connect(app.ws_url, subprotocols=["mirage.v1", f"bearer.{token}"], max_size=2**24)
    return Client(socket)


def test_every_deployment_is_running(serve_app: ServeApp) -> None:
    assert set(serve_app.deployments) == EXPECTED_DEPLOYMENTS
    assert set(serve_app.deployments.values()) == {"RUNNING"}


def test_health_readiness_and_stats(serve_app: ServeApp) -> None:
    assert httpx.get(serve_app.url + "healthz").text == "ok"
    ready = httpx.get(serve_app.url + "readyz", timeout=30).json()
    assert ready["ready"] is True
    assert ready["stages"]["detector"]["name"] == "retinaface-mnet025"
    assert ready["stages"]["swapper"]["name"] == "classical-dlib68"
    assert ready["stages"]["voice"]["name"] == "world"
    assert ready["stages"]["enhancer"] == {**ready["stages"]["enhancer"], "name": "none", "fallback": True}
    stats = httpx.get(serve_app.url + "v1/stats").json()
    assert {"sessions", "capacity", "aggregate", "backends"} <= set(stats)
    assert "<html" in httpx.get(serve_app.url).text.lower()


async def test_bad_token_is_refused_with_1008(serve_app: ServeApp) -> None:
    for bad in ("not-a-token", serve_app.token(ttl_s=-60)):
        socket = await websockets.connect(serve_app.ws_url, subprotocols=["mirage.v1", f"bearer.{bad}"])
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(socket.recv(), 10)
        assert socket.close_code == CloseCode.POLICY


async def test_hello_video_echo_reference_and_swap(serve_app: ServeApp) -> None:
    client = await open_client(serve_app, serve_app.token())
    try:
        hello = await client.next_json("hello")
        assert hello["protocol"] == 1 and hello["audio"]["sample_rate"] == 16000
        assert hello["backends"]["swapper"]["name"] == "classical-dlib68"
        frames = moving_face_frames(6)
        # before a reference: frames come back unswapped with flag bit 0, seq and capture time echoed
        await client.socket.send(protocol.pack(Kind.VIDEO, 7, 1_000_000, frames[0]))
        reply = await client.next_media(Kind.VIDEO)
        assert (reply.seq, reply.capture_us) == (7, 1_000_000)
        assert reply.flags & protocol.FLAG_PASSTHROUGH
        _, png = cv2.imencode(".png", insightface_image("Tom_Hanks_54745.png"))
        await client.socket.send(protocol.pack(Kind.REFERENCE, 0, 0, png.tobytes()))
        reference = await client.next_json("reference", timeout_s=60)
        assert reference["ok"] is True, reference
        swapped = 0
        for i, frame in enumerate(frames[1:], start=8):
            capture = 1_000_000 + i * 50_000
            await client.socket.send(protocol.pack(Kind.VIDEO, i, capture, frame))
            out = await client.next_media(Kind.VIDEO)
            assert (out.seq, out.capture_us) == (i, capture)
            swapped += int(not out.flags & protocol.FLAG_PASSTHROUGH)
            image = cv2.imdecode(np.frombuffer(out.payload, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (512, 512, 3)
        assert swapped == len(frames) - 1
    finally:
        await client.socket.close()


async def test_audio_samples_out_equal_samples_in(serve_app: ServeApp) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(16000 * 3) / 16000
    speechlike = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    client = await open_client(serve_app, serve_app.token())
    try:
        hello = await client.next_json("hello")
        block = hello["audio"]["chunk_ms"] * 16
        sent, seq, offset = 0, 0, 0
        while offset < len(speechlike) - 3200:
            n = 160 * int(rng.integers(2, 25))
            await client.socket.send(
                protocol.pack(Kind.AUDIO, seq, seq * 10_000, float_to_pcm16(speechlike[offset : offset + n]))
            )
            offset += n
            sent += n
            seq += 1
        expected = (sent // block) * block
        received, last_seq = 0, -1
        while received < expected:
            media = await client.next_media(Kind.AUDIO, timeout_s=60)
            assert media.seq >= last_seq  # in order, tagged with the chunk that completed each block
            last_seq = media.seq
            received += len(pcm16_to_float(media.payload))
        assert received == expected and sent - received < block
    finally:
        await client.socket.close()
