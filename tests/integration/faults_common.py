"""The fault tests' shared machinery: kill a model replica through Ray while one client streams in real time, time
every reply, and check that the session survived (test_faults.py, test_faults_enhancer.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from mirage_ray.codec import float_to_pcm16, pcm16_to_float
from mirage_ray.protocol import FLAG_PASSTHROUGH, Kind, Media
from tests.conftest import ServeApp
from tests.integration.client import Client, ray_snippet
from tests.media import insightface_image, moving_face_frames
from tests.speech import speech

SEND_CHUNK = 200 * 16  # samples per audio message (200 ms, real time)
FPS = 10.0  # enough frames to see each phase; light on a shared 2-core machine
WORKING_TIMEOUT_S = 90.0  # until the stage answers before the kill (first calls, reference)
RECOVERY_TIMEOUT_S = 180.0  # Serve notices the dead replica (health check) and starts a new one
MAX_GAP_S = 3.0  # the longest silence of either stream while the replica is dead

KILL_REPLICAS = """
names = [a['name'] for a in ray.util.list_named_actors(all_namespaces=True)
         if a['namespace'] == 'serve' and a['name'].startswith('SERVE_REPLICA::mirage#{deployment}#')]
assert names, 'no replica of {deployment}'
for name in names:
    ray.kill(ray.get_actor(name, namespace='serve'), no_restart=False)
print(', '.join(names))
"""


async def kill_replica(app: ServeApp, deployment: str) -> tuple[str, float]:
    """Kill every replica of ``deployment`` through Ray (one, unless autoscaling added more: the stage is gone until
    Serve's controller replaces them): their names, and when.

    The Ray driver runs in a child process, waited for in a thread: the session's streams go on meanwhile."""
    out = await asyncio.to_thread(ray_snippet, app, KILL_REPLICAS.format(deployment=deployment))
    return out.splitlines()[-1], time.monotonic()


@dataclass
class Arrival:
    at: float
    media: Media


@dataclass
class FaultStreamer:
    """Real-time speech and a moving face on one client; every reply timed on arrival, every sent sample kept."""

    client: Client
    frames: list[bytes] = field(default_factory=lambda: moving_face_frames(40, step_px=2))
    voice: np.ndarray = field(default_factory=speech)
    sent_audio: list[np.ndarray] = field(default_factory=list)
    sent_video: dict[int, bytes] = field(default_factory=dict)  # seq -> the JPEG sent (``frames`` may be switched)
    arrivals: list[Arrival] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.start = time.monotonic()
        self._tasks = [asyncio.create_task(job()) for job in (self._audio, self._video, self._watch)]

    def now_us(self) -> int:
        return int((time.monotonic() - self.start) * 1e6)

    async def _audio(self) -> None:
        seq = 0
        while not self._stop.is_set():
            offset = (seq * SEND_CHUNK) % (len(self.voice) - SEND_CHUNK)
            await asyncio.sleep(max(0.0, self.start + (seq + 1) * 0.2 - time.monotonic()))
            chunk = self.voice[offset : offset + SEND_CHUNK]
            await self.client.send(Kind.AUDIO, seq, self.now_us() - 200_000, float_to_pcm16(chunk))
            self.sent_audio.append(pcm16_to_float(float_to_pcm16(chunk)))
            seq += 1

    async def _video(self) -> None:
        seq = 0
        while not self._stop.is_set():
            frame = self.sent_video[seq] = self.frames[seq % len(self.frames)]
            await self.client.send(Kind.VIDEO, seq, self.now_us(), frame)
            seq += 1
            await asyncio.sleep(1.0 / FPS)

    async def _watch(self) -> None:
        seen = {Kind.AUDIO: 0, Kind.VIDEO: 0}
        while not self._stop.is_set():
            for kind in seen:
                replies = self.client.media[kind]
                self.arrivals += [Arrival(time.monotonic(), m) for m in replies[seen[kind] :]]
                seen[kind] = len(replies)
            await asyncio.sleep(0.01)

    def replies(self, kind: Kind, since: float = 0.0) -> list[Arrival]:
        return [a for a in self.arrivals if a.media.kind == kind and a.at >= since]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def unflagged(arrivals: list[Arrival]) -> list[Arrival]:
    return [a for a in arrivals if not a.media.flags & FLAG_PASSTHROUGH]


def flagged(arrivals: list[Arrival]) -> list[Arrival]:
    return [a for a in arrivals if a.media.flags & FLAG_PASSTHROUGH]


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``predicate`` every 0.1 s; the time it became true."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic()


def max_gap_s(arrivals: list[Arrival], start: float, end: float) -> float:
    times = [start, *sorted(a.at for a in arrivals if start <= a.at <= end), end]
    return max(b - a for a, b in itertools.pairwise(times))


def assert_survived(streamer: FaultStreamer, killed_at: float, back_at: float, report: str) -> None:
    """The session survived the kill: both streams kept coming from ``killed_at`` to ``back_at`` (no silence of
    MAX_GAP_S or more). Prints ``report``, then each stream's longest gap."""
    video_gap = max_gap_s(streamer.replies(Kind.VIDEO), killed_at, back_at)
    audio_gap = max_gap_s(streamer.replies(Kind.AUDIO), killed_at, back_at)
    print(f"{report}; longest gap: video {video_gap:.1f} s, audio {audio_gap:.1f} s")
    assert video_gap < MAX_GAP_S, f"video stopped for {video_gap:.1f} s"
    assert audio_gap < MAX_GAP_S, f"audio stopped for {audio_gap:.1f} s"


async def still_served(client: Client) -> None:
    """The session is alive: a ping is answered (and nothing closed it)."""
    await client.socket.send(json.dumps({"type": "ping", "t": "after-fault"}))
    pong = await client.next_json("pong", 30)
    assert pong["t"] == "after-fault" and client.socket.close_code is None


async def set_reference(client: Client) -> None:
    _, png = cv2.imencode(".png", insightface_image("Tom_Hanks_54745.png"))
    await client.send(Kind.REFERENCE, 0, 0, png.tobytes())
    assert (await client.next_json("reference", 60))["ok"] is True
