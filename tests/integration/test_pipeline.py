"""Video and voice journeys through the running Serve app: a swapped moving face, converted real speech."""

from __future__ import annotations

import asyncio
import time

import cv2
import numpy as np
import pytest
import pyworld

from mirage_ray import protocol
from mirage_ray.codec import float_to_pcm16, pcm16_to_float
from mirage_ray.protocol import Kind
from tests.conftest import ServeApp
from tests.integration.client import Client
from tests.media import insightface_image, moving_face_frames
from tests.speech import speech

pytestmark = pytest.mark.integration
FRAME_INTERVAL_US = 50_000  # 20 fps capture times
SEND_CHUNK_MS = 200  # hello's 192 ms rounded up to whole 10 ms frames


async def test_moving_face_is_swapped_with_the_detector_every_fifth_frame(serve_app: ServeApp) -> None:
    client = await Client.open(serve_app, serve_app.token())
    try:
        await client.next_json("hello")
        _, png = cv2.imencode(".png", insightface_image("Tom_Hanks_54745.png"))
        await client.send(Kind.REFERENCE, 0, 0, png.tobytes())
        assert (await client.next_json("reference", 60))["ok"] is True
        frames = moving_face_frames(30, step_px=2)
        originals = [cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) for f in frames]
        for seq, frame in enumerate(frames):  # one in flight: every frame is processed
            await client.send(Kind.VIDEO, seq, seq * FRAME_INTERVAL_US, frame)
            await client.wait_for(lambda n=seq: len(client.media[Kind.VIDEO]) > n, 30, f"reply to frame {seq}")
        replies = client.media[Kind.VIDEO]
        assert [r.seq for r in replies] == list(range(len(frames)))
        assert all(not r.flags & protocol.FLAG_PASSTHROUGH for r in replies)
        changed = []
        for reply, original in zip(replies, originals, strict=True):
            swapped = cv2.imdecode(np.frombuffer(reply.payload, np.uint8), cv2.IMREAD_COLOR)
            diff = np.abs(swapped.astype(np.int16) - original.astype(np.int16)).max(axis=2) > 40
            changed.append(diff.mean())
            assert diff[:, :40].mean() < 0.01  # the left margin (background) is untouched
        assert min(changed) > 0.002  # the face region changed in every frame (the swap follows the moving head)
        await client.wait_for(
            lambda: any(m["frames"]["out"] == len(frames) for m in client.json["stats"]), 5, "stats of all frames"
        )
        stats = next(m for m in client.json["stats"] if m["frames"]["out"] == len(frames))
        interval = stats["detector_interval_frames"]
        assert interval == 5.0, stats  # the detector ran on every 5th frame, the tracker carried the rest
    finally:
        await client.close()


async def test_spoken_sentence_in_real_time_comes_back_converted_in_order(serve_app: ServeApp) -> None:
    sentence = speech()
    chunk = SEND_CHUNK_MS * 16
    client = await Client.open(serve_app, serve_app.token())
    try:
        hello = await client.next_json("hello")
        assert hello["backends"]["voice"]["name"] == "world"
        start = time.monotonic()
        sent = 0
        for seq, offset in enumerate(range(0, len(sentence) - chunk + 1, chunk)):
            await asyncio.sleep(max(0.0, start + offset / 16000 - time.monotonic()))  # real time
            await client.send(Kind.AUDIO, seq, offset * 1000 // 16, float_to_pcm16(sentence[offset : offset + chunk]))
            sent += chunk
        block = hello["audio"]["chunk_ms"] * 16
        expected = (sent // block) * block
        received = lambda: sum(len(m.payload) // 2 for m in client.media[Kind.AUDIO])  # noqa: E731
        await client.wait_for(lambda: received() >= expected, 30, "every complete block back")
        replies = client.media[Kind.AUDIO]
        assert received() == expected and sent - expected < block
        assert [r.seq for r in replies] == sorted(r.seq for r in replies)  # in order
        output = np.concatenate([pcm16_to_float(r.payload) for r in replies])
        converted = [r for r in replies if not r.flags & protocol.FLAG_PASSTHROUGH]
        assert len(converted) >= len(replies) - 2  # the gate or a busy machine may pass one through
        latency = 800  # VoiceStream hold-back: 40 ms crossfade + 10 ms SOLA search at 16 kHz
        aligned_in = sentence[: len(output) - latency]
        aligned_out = output[latency:]
        assert np.sqrt(np.mean(aligned_out**2)) > 0.3 * np.sqrt(np.mean(aligned_in**2))  # speech, not silence
        assert np.abs(aligned_out - aligned_in).mean() > 0.2 * np.abs(aligned_in).mean()  # converted, not echoed
        # the default preset ("deeper", -4 semitones), measured by pyworld's harvest tracker on what came back
        f0_in, f0_out = (
            pyworld.harvest(x.astype(np.float64), 16000, f0_floor=50.0, f0_ceil=900.0, frame_period=10.0)[0]
            for x in (aligned_in, aligned_out)
        )
        voiced = (f0_in > 0) & (f0_out > 0)
        assert voiced.sum() > 100
        cents = 1200.0 * np.log2(f0_out[voiced] / f0_in[voiced])
        assert abs(np.median(cents) - 100.0 * hello["settings"]["pitch_semitones"]) < 50.0
    finally:
        await client.close()
