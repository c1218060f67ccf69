"""SIGTERM drain through the real launcher (issue 10): SIGTERM to ``python -m actors.launch run`` closes every
session with 1001 (going away) within a bounded time, and the audio the server took in is answered first.

The app here is its own (the CPU profile, as ``make run`` serves it without a GPU): the test stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import websockets

from actors.launch import _alive, launched
from mirage_ray.codec import float_to_pcm16
from mirage_ray.protocol import CloseCode, Kind
from tests.conftest import REPO_ROOT, START_TIMEOUT_S, TEST_JWT_SECRET, ServeApp
from tests.integration.client import Client
from tests.speech import speech

pytestmark = pytest.mark.integration
SESSIONS = 2
SEND_CHUNK = 200 * 16  # samples per audio message (200 ms, real time)
STREAM_BEFORE_S = 3.0  # audio flowing before the SIGTERM
CLOSE_WITHIN_S = 20.0  # SIGTERM -> 1001 on every session (the launcher's Ray connect, one status poll, the flush)
EXIT_WITHIN_S = 45.0  # SIGTERM -> the launcher has stopped the application and its Ray head
MAX_BLOCK_SAMPLES = 480 * 16  # the largest audio block the adaptation may reach: at most this is left unanswered


async def stream_audio_until_closed(client: Client) -> int:
    """Real-time speech until the server closes the socket; the samples sent."""
    voice, seq, start = speech(), 0, time.monotonic()
    try:
        while True:
            offset = (seq * SEND_CHUNK) % (len(voice) - SEND_CHUNK)
            await asyncio.sleep(max(0.0, start + (seq + 1) * 0.2 - time.monotonic()))
            payload = float_to_pcm16(voice[offset : offset + SEND_CHUNK])
            await client.send(Kind.AUDIO, seq, int((time.monotonic() - start) * 1e6), payload)
            seq += 1
    except websockets.ConnectionClosed:
        return seq * SEND_CHUNK


async def test_sigterm_closes_every_session_1001_and_answers_the_audio_it_took() -> None:
    config = REPO_ROOT / "serve_config.cpu.yaml"
    env = {"MIRAGE_JWT_SECRET": TEST_JWT_SECRET}
    sets = [f"max_sessions={SESSIONS}", f"sessions_per_replica={SESSIONS}"]  # the profile admits 1; this test needs 2
    with launched(config, sets=sets, num_cpus=2, num_gpus=0, env=env, timeout_s=START_TIMEOUT_S) as ready:
        app = ServeApp.from_ready(ready)
        clients = [await Client.open(app, app.token(sub=f"drain-{i}")) for i in range(SESSIONS)]
        for client in clients:
            await client.next_json("hello")
        streams = [asyncio.create_task(stream_audio_until_closed(client)) for client in clients]
        await asyncio.sleep(STREAM_BEFORE_S)
        os.kill(ready["launcher_pid"], signal.SIGTERM)
        signalled = time.monotonic()
        sent = await asyncio.wait_for(asyncio.gather(*streams), CLOSE_WITHIN_S + 10)
        for client in clients:
            await client.wait_for(lambda c=client: c.socket.close_code is not None, CLOSE_WITHIN_S, "the close")
        closed_after = time.monotonic() - signalled
        codes = [client.socket.close_code for client in clients]
        while _alive(ready["launcher_pid"]) and time.monotonic() - signalled < EXIT_WITHIN_S:
            await asyncio.sleep(0.5)
        exited_after = time.monotonic() - signalled
        assert not _alive(ready["launcher_pid"]), f"the launcher still runs {EXIT_WITHIN_S} s after SIGTERM"
    print(
        f"\nSIGTERM: {SESSIONS} sessions closed {codes} within {closed_after:.1f} s;"
        f" launcher gone after {exited_after:.1f} s"
    )
    assert codes == [CloseCode.GOING_AWAY] * SESSIONS, [c.socket.close_reason for c in clients]
    assert closed_after < CLOSE_WITHIN_S
    for client, sent_samples in zip(clients, sent, strict=True):
        stats = client.json["stats"]
        took = stats[-1]["audio"]["samples_in"] if stats else 0  # the server's count at its last stats message
        received = sum(len(m.payload) // 2 for m in client.media[Kind.AUDIO])
        print(f"sent {sent_samples}, server took >= {took}, received {received} samples")
        # every block the server could complete from what it took came back before the close
        assert received >= took - MAX_BLOCK_SAMPLES and received > 0
