"""Shared helpers for the benchmarks: the machine line, percentiles, a real Serve app, a protocol-v1 client.

The Serve app is started exactly as the integration tests do it (``python -m actors.launch run`` as a subprocess,
loopback only, its own Ray head in its own temp dir) and stopped with SIGTERM, which makes the launcher stop that
head and only its processes. Nothing here runs ``ray stop``: other Ray clusters may share the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import numpy as np
import websockets

from actors.launch import launched
from mirage_ray import protocol
from mirage_ray.codec import encode_jpeg, float_to_pcm16
from mirage_ray.config import MirageSettings
from mirage_ray.session import voice_context_ms
from mirage_ray.stages import StageInfo
from mirage_ray.voice.convert_shift import ShiftConverter
from mirage_ray.voice.convert_world import WorldConverter

if TYPE_CHECKING:
    from mirage_ray.backends import Choice
    from mirage_ray.stages import LocalStages, Workers
    from mirage_ray.vision.base import Detector, Enhancer, Swapper
    from mirage_ray.voice.base import VoiceConverter

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU_CONFIG = REPO_ROOT / "serve_config.cpu.yaml"
BENCH_JWT_SECRET = "mirage-bench-secret-0123456789abcdefghij"  # loopback-only app started by the bench itself
START_TIMEOUT_S = 300.0
MAX_MESSAGE_BYTES = 2**24


# --- numbers ------------------------------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``; NaN when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def p50_p95(values: Sequence[float]) -> tuple[float, float]:
    return pct(values, 50), pct(values, 95)


def world_context_ms(settings: MirageSettings) -> int:
    """The voice windows' left context of a session whose voice stage runs WORLD (the embedded default), by the
    session's own rule."""
    info = StageInfo(voice_context_ms=WorldConverter.context_ms)
    return voice_context_ms(settings, info, ShiftConverter())


def machine_lines() -> list[str]:
    """nproc, CPU model, RAM, load average and date: the context every table needs."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    ram_gib = float("nan")
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = int(line.split()[1]) / 2**20
    load = os.getloadavg()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"machine: {os.cpu_count()} CPUs (nproc), {model}, {ram_gib:.1f} GiB RAM, Python {platform.python_version()}",
        f"date: {now}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (the cores are shared with others)",
    ]


def load_line() -> str:
    load = os.getloadavg()
    return f"load average now: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


# --- a real Serve application ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServeApp:
    url: str
    ws_url: str
    ray_address: str
    start_s: float  # launcher start until every deployment RUNNING

    def token(self, sub: str = "bench", ttl_s: float = 900) -> str:
        now = int(time.time())
        claims = {"sub": sub, "aud": "mirage", "iat": now, "nbf": now, "exp": now + int(ttl_s)}
        return jwt.encode(claims, BENCH_JWT_SECRET, algorithm="HS256")


@contextlib.contextmanager
def serve_app(config: Path = CPU_CONFIG, sets: Sequence[str] = (), num_cpus: int = 2) -> Iterator[ServeApp]:
    """The app started by ``python -m actors.launch run`` on loopback (actors.launch.launched), stopped at exit."""
    started = time.monotonic()
    env = {"MIRAGE_JWT_SECRET": BENCH_JWT_SECRET}
    with launched(config, sets=sets, num_cpus=num_cpus, env=env, timeout_s=START_TIMEOUT_S) as ready:
        url = ready["url"]
        yield ServeApp(
            url=url,
            ws_url=url.replace("http://", "ws://") + "ws",
            ray_address=ready["ray_address"],
            start_s=time.monotonic() - started,
        )


# --- every stage in this process, no Ray (bench_capacity, bench_mouth_to_ear, bench_pipeline) -------------------------
@dataclass(frozen=True)
class LocalBackends:
    """Each stage's backend as the registry chooses it from the settings, built in this process."""

    detector: Detector
    swapper: Swapper
    enhancer: Enhancer
    converter: VoiceConverter
    fallback: VoiceConverter
    choices: dict[str, Choice]  # by stage: detector, swapper, enhancer, voice

    @classmethod
    def build(cls, settings: MirageSettings) -> LocalBackends:
        from mirage_ray.backends import build_converters, build_detector, build_enhancer, build_swapper
        from mirage_ray.models import ModelRegistry

        registry = ModelRegistry(settings)
        converter, fallback, voice = build_converters(settings, registry)
        detector, detector_choice = build_detector(settings, registry)
        swapper, swapper_choice = build_swapper(settings, registry)
        enhancer, enhancer_choice = build_enhancer(settings, registry)
        choices = {"detector": detector_choice, "swapper": swapper_choice, "enhancer": enhancer_choice, "voice": voice}
        return cls(detector, swapper, enhancer, converter, fallback, choices)

    def report(self) -> dict[str, dict[str, Any]]:
        """Each stage's choice as the readiness report gives it (name, reason, fallback)."""
        return {stage: choice.as_dict() for stage, choice in self.choices.items()}

    def stages(self, settings: MirageSettings, workers: Workers | None = None) -> LocalStages:
        from mirage_ray.stages import LocalStages

        return LocalStages(settings, self.detector, self.swapper, self.enhancer, self.converter, self.fallback, workers)


# --- a protocol-v1 client -----------------------------------------------------------------------------------------
@dataclass
class Received:
    """A media reply with the client's receive time (perf_counter seconds)."""

    media: protocol.Media
    at: float


@dataclass
class BenchClient:
    """One WebSocket; a reader task files media replies and JSON messages as they come (with receive times)."""

    socket: websockets.ClientConnection
    media: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    texts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _new_text: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, app: ServeApp) -> BenchClient:
        socket = await websockets.connect(
            app.ws_url, subprotocols=["mirage.v1", f"bearer.{app.token()}"], max_size=MAX_MESSAGE_BYTES
        )
        client = cls(socket)
        client._reader = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.socket:
                now = time.perf_counter()
                if isinstance(raw, bytes):
                    self.media.put_nowait(Received(protocol.parse_media(raw), now))
                else:
                    self.texts.append((now, json.loads(raw)))
                    self._new_text.set()

    async def next_json(self, wanted: str, timeout_s: float = 60.0, after: float = 0.0) -> dict[str, Any]:
        """The first ``wanted`` message received after ``after`` (perf_counter seconds)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for at, message in self.texts:
                if message.get("type") == wanted and at >= after:
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {wanted!r} message within {timeout_s} s")
            self._new_text.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_text.wait(), remaining)

    async def ping_rtts(self, count: int, gap_s: float = 0.02) -> list[float]:
        """Round trips (ms) of ``ping`` → ``pong`` through the proxy and the ingress, one at a time."""
        rtts = []
        for i in range(count):
            sent = time.perf_counter()
            await self.socket.send(json.dumps({"type": "ping", "t": f"bench-{sent}-{i}"}))
            pong = await self.next_json("pong", after=sent, timeout_s=10)
            if pong.get("t") != f"bench-{sent}-{i}":
                continue
            rtts.append((self._text_time(pong) - sent) * 1000.0)
            await asyncio.sleep(gap_s)
        return rtts

    def _text_time(self, message: dict[str, Any]) -> float:
        return next(at for at, m in self.texts if m is message)

    async def close(self) -> None:
        await self.socket.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 10)


# --- the load one session sends (bench_capacity, bench_soak) -------------------------------------------------------
FPS = 20.0
AUDIO_CHUNK_MS = 200
SAMPLES_PER_CHUNK = 16 * AUDIO_CHUNK_MS
FLUSH_WAIT_S = 15.0  # after the last chunk of a flushing session: until every sample is back


@dataclass
class LoadMedia:
    frames: list[bytes]
    voice: Any  # float32 speech
    reference: bytes


def load_media() -> LoadMedia:
    """A 512x512 moving face (scikit-image's astronaut), speech (espeak-ng), a reference photo (Tom Hanks)."""
    from tests.media import insightface_image, moving_face_frames
    from tests.speech import speech

    reference = encode_jpeg(insightface_image("Tom_Hanks_54745.png"), 95)
    return LoadMedia(moving_face_frames(40, step_px=3), speech(), reference)


@dataclass
class SessionFigures:
    """What one session saw during the measured window."""

    video_rtt_ms: list[float] = field(default_factory=list)
    audio_block_ms: list[float] = field(default_factory=list)
    frames_out: int = 0
    audio_blocks: int = 0
    flagged_video: int = 0
    flagged_audio: int = 0
    refused: str | None = None
    levels: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # directive reasons (why the ladder moved)


@dataclass
class Reply:
    """One media reply as a flushing session keeps it: receive time, round trip, flag, PCM samples."""

    at: float
    kind: protocol.Kind
    latency_ms: float
    flagged: bool
    samples: int = 0


class WireSession:
    """One protocol-v1 client: reference, then video and audio on the wall clock, replies timed by seq.

    Replies inside [measure_from, measure_to] go to ``figures``. With ``flush`` the session also keeps every reply
    (``replies``) and counts the PCM samples it gets back; at the end it sends ``flush`` and waits (at most
    FLUSH_WAIT_S) until samples out == samples in.
    """

    def __init__(
        self,
        app: ServeApp,
        media: LoadMedia,
        measure_from: float,
        measure_to: float,
        index: int,
        *,
        flush: bool = False,
    ) -> None:
        self._app, self._media = app, media
        self._from, self._to = measure_from, measure_to
        self._index = index
        self._flush = flush
        self.figures = SessionFigures()
        self.replies: list[Reply] = []
        self.samples_out = 0
        self.last_stats: dict[str, Any] = {}
        self._video_sent: dict[int, float] = {}
        self._audio_sent: dict[int, float] = {}
        self._socket: websockets.ClientConnection | None = None

    @property
    def video_sent_at(self) -> list[float]:
        return list(self._video_sent.values())

    @property
    def samples_in(self) -> int:
        return len(self._audio_sent) * SAMPLES_PER_CHUNK

    async def run(self, stop_at: float) -> None:
        try:
            self._socket = await websockets.connect(
                self._app.ws_url,
                subprotocols=["mirage.v1", f"bearer.{self._app.token(f'bench-user-{self._index}')}"],
                max_size=MAX_MESSAGE_BYTES,
            )
        except websockets.InvalidStatus as exc:
            self.figures.refused = f"HTTP {exc.response.status_code}"
            return
        reader = asyncio.create_task(self._read())
        try:
            await self._socket.send(protocol.pack(protocol.Kind.REFERENCE, 0, 0, self._media.reference))
            await asyncio.gather(self._send_video(stop_at), self._send_audio(stop_at))
            if self._flush:
                await self._socket.send(json.dumps({"type": "flush"}))
                deadline = time.perf_counter() + FLUSH_WAIT_S
                while self.samples_out < self.samples_in and time.perf_counter() < deadline:
                    await asyncio.sleep(0.1)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            self.figures.refused = self.figures.refused or f"closed {code} {exc.rcvd.reason if exc.rcvd else ''}"
        finally:
            with contextlib.suppress(Exception):
                await self._socket.close()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _send_video(self, stop_at: float) -> None:
        seq, start = 0, time.perf_counter() + 0.01 * self._index
        while (due := start + seq / FPS) < stop_at:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            now = time.perf_counter()
            self._video_sent[seq] = now
            frame = self._media.frames[seq % len(self._media.frames)]
            await self._socket.send(protocol.pack(protocol.Kind.VIDEO, seq, int(now * 1e6), frame))
            seq += 1

    async def _send_audio(self, stop_at: float) -> None:
        voice, seq = self._media.voice, 0
        start = time.perf_counter() + 0.013 * self._index
        while (due := start + (seq + 1) * AUDIO_CHUNK_MS / 1000.0) < stop_at:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            offset = (seq * SAMPLES_PER_CHUNK) % (len(voice) - SAMPLES_PER_CHUNK)
            now = time.perf_counter()
            self._audio_sent[seq] = now
            capture_us = int((now - AUDIO_CHUNK_MS / 1000.0) * 1e6)  # the chunk's first sample
            payload = float_to_pcm16(voice[offset : offset + SAMPLES_PER_CHUNK])
            await self._socket.send(protocol.pack(protocol.Kind.AUDIO, seq, capture_us, payload))
            seq += 1

    async def _read(self) -> None:
        figures = self.figures
        async for raw in self._socket:
            now = time.perf_counter()
            if not isinstance(raw, bytes):
                message = json.loads(raw)
                if message.get("type") == "stats":
                    self.last_stats = message
                    if self._from <= now <= self._to:
                        figures.levels.append(message.get("degrade_level", 0))
                elif message.get("type") == "directive":
                    figures.reasons.append(message.get("reason", ""))
                continue
            media = protocol.parse_media(raw)
            flagged = bool(media.flags & protocol.FLAG_PASSTHROUGH)
            if self._flush:
                self._keep(media, now, flagged)
            if not self._from <= now <= self._to:
                continue
            if media.kind == protocol.Kind.VIDEO and media.seq in self._video_sent:
                figures.video_rtt_ms.append((now - self._video_sent[media.seq]) * 1000.0)
                figures.frames_out += 1
                figures.flagged_video += flagged
            elif media.kind == protocol.Kind.AUDIO and media.seq in self._audio_sent:
                figures.audio_block_ms.append((now - self._audio_sent[media.seq]) * 1000.0)
                figures.audio_blocks += 1
                figures.flagged_audio += flagged

    def _keep(self, media: protocol.Media, now: float, flagged: bool) -> None:
        if media.kind == protocol.Kind.VIDEO and media.seq in self._video_sent:
            self.replies.append(Reply(now, media.kind, (now - self._video_sent[media.seq]) * 1000.0, flagged))
        elif media.kind == protocol.Kind.AUDIO:
            samples = len(media.payload) // protocol.PCM_SAMPLE_BYTES
            self.samples_out += samples
            sent = self._audio_sent.get(media.seq, now)
            self.replies.append(Reply(now, media.kind, (now - sent) * 1000.0, flagged, samples))
