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
from typing import Any

import jwt
import numpy as np
import websockets

from actors.launch import launched
from mirage_ray import protocol

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
