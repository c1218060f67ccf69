"""The CPU profile (serve_config.cpu.yaml, what `make run` serves without a GPU): every deployment RUNNING, the
embedded detector, swapper and voice placed in the ingress process, a session swapped and converted end to end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import cv2
import httpx
import numpy as np
import pytest
import yaml

from actors.launch import launched
from mirage_ray.codec import float_to_pcm16
from mirage_ray.protocol import FLAG_PASSTHROUGH, Kind
from tests.conftest import REPO_ROOT, START_TIMEOUT_S, TEST_JWT_SECRET, ServeApp
from tests.integration.client import Client
from tests.media import insightface_image, moving_face_frames
from tests.speech import speech

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cpu_app() -> Iterator[ServeApp]:
    config = REPO_ROOT / "serve_config.cpu.yaml"
    env = {"MIRAGE_JWT_SECRET": TEST_JWT_SECRET}
    with launched(config, num_cpus=2, num_gpus=0, env=env, timeout_s=START_TIMEOUT_S) as ready:
        yield ServeApp.from_ready(ready)


def _tail_dbfs(pcm: bytes) -> float:
    """Level of a block's last 100 ms (past its crossfade) in dBFS."""
    tail = np.frombuffer(pcm, dtype="<i2")[-1600:].astype(np.float64) / 32768.0
    return 10.0 * np.log10(np.mean(tail**2) + 1e-12)


async def test_cpu_profile_swaps_and_converts_with_local_stages(cpu_app: ServeApp) -> None:
    assert set(cpu_app.deployments.values()) == {"RUNNING"} and len(cpu_app.deployments) == 5
    client = await Client.open(cpu_app, cpu_app.token())
    hello = await client.next_json("hello")
    assert hello["backends"]["fail_closed_converter"] == "pitch-shift"
    _, png = cv2.imencode(".png", insightface_image("Tom_Hanks_54745.png"))
    await client.send(Kind.REFERENCE, 0, 0, png.tobytes())
    assert (await client.next_json("reference", 60))["ok"] is True
    frames = moving_face_frames(20, step_px=2)
    voice = speech()
    chunk = 3200  # 200 ms of PCM a message
    start = time.monotonic()
    for seq in range(20):
        await client.send(Kind.VIDEO, seq, int((time.monotonic() - start) * 1e6), frames[seq])
        if seq % 4 == 3:
            audio_seq = seq // 4
            pcm = float_to_pcm16(voice[audio_seq * chunk : (audio_seq + 1) * chunk])
            await client.send(Kind.AUDIO, audio_seq, int((time.monotonic() - start) * 1e6), pcm)
        await asyncio.sleep(0.05)
    await client.wait_for(lambda: len(client.media[Kind.VIDEO]) >= 10, 30, "10 video replies")
    await client.wait_for(lambda: len(client.media[Kind.AUDIO]) >= 3, 30, "3 audio blocks")
    swapped = [m for m in client.media[Kind.VIDEO] if not m.flags & FLAG_PASSTHROUGH]
    assert len(swapped) >= 8  # swapped by the swapper placed in the ingress

    # converted by the voice placed in the ingress: a block it cannot convert within 0.8 x its length goes out
    # pitch-shifted and flagged (fail closed), which a loaded machine may do to the first blocks while video competes
    # for the cores; the rest of the sentence, audio only at real-time pace, must come back converted
    def converted() -> int:  # speech, not flagged (a gated block is unflagged silence: its tail holds no sound)
        return sum(not m.flags & FLAG_PASSTHROUGH and _tail_dbfs(m.payload) > -45.0 for m in client.media[Kind.AUDIO])

    for audio_seq in range(5, len(voice) // chunk):
        if converted() >= 2:
            break
        pcm = float_to_pcm16(voice[audio_seq * chunk : (audio_seq + 1) * chunk])
        await client.send(Kind.AUDIO, audio_seq, int((time.monotonic() - start) * 1e6), pcm)
        await asyncio.sleep(chunk / 16_000)
    await client.wait_for(lambda: converted() >= 2, 30, "2 audio blocks converted by the voice stage")
    stats = httpx.get(cpu_app.url + "v1/stats", timeout=10).json()
    profile = yaml.safe_load((REPO_ROOT / "serve_config.cpu.yaml").read_text())["applications"][0]["args"]
    assert stats["admission"]["capacity"] == profile["max_sessions"] and stats["admission"]["scope"] == "application"
    await client.close()
