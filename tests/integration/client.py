"""A protocol-v1 test client written from docs/protocol.md, and helpers that reach the running Ray cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any, ClassVar

import websockets

from mirage_ray import protocol
from mirage_ray.protocol import Kind
from tests.conftest import ServeApp


class Client:
    """One WebSocket; a background task files every message it receives by type / kind."""

    # open clients: closed after each test even when it failed (tests/integration/conftest.py)
    live: ClassVar[set[Client]] = set()

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self.json: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.media: dict[Kind, list[protocol.Media]] = defaultdict(list)
        self._arrived = asyncio.Event()
        self._arrivals = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, app: ServeApp, token: str) -> Client:
        socket = await websockets.connect(app.ws_url, subprotocols=["mirage.v1", f"bearer.{token}"], max_size=2**24)
        client = cls(socket)
        cls.live.add(client)
        return client

    @classmethod
    async def open_disguised(cls, app: ServeApp) -> Client:
        """A session past its hello with the Tom Hanks reference accepted (the disguise on)."""
        import cv2

        from tests.media import insightface_image

        client = await cls.open(app, app.token())
        await client.next_json("hello")
        _, png = cv2.imencode(".png", insightface_image("Tom_Hanks_54745.png"))
        await client.send(Kind.REFERENCE, 0, 0, png.tobytes())
        assert (await client.next_json("reference", 60))["ok"] is True
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.socket:
                if isinstance(raw, bytes):
                    media = protocol.parse_media(raw)
                    self.media[media.kind].append(media)
                else:
                    message = json.loads(raw)
                    message["_arrival"] = self._arrivals  # order across message types
                    self._arrivals += 1
                    self.json[message["type"]].append(message)
                self._arrived.set()
        except websockets.ConnectionClosed:
            self._arrived.set()

    async def send(self, kind: Kind, seq: int, capture_us: int, payload: bytes) -> None:
        await self.socket.send(protocol.pack(kind, seq, capture_us, payload))

    async def wait_for(self, predicate: Any, timeout_s: float = 30.0, what: str = "a condition") -> None:
        """Wait until ``predicate()`` is true, re-checking as messages arrive."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"gave up after {timeout_s} s waiting for {what}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))

    async def next_json(self, kind: str, timeout_s: float = 30.0) -> dict[str, Any]:
        await self.wait_for(lambda: self.json[kind], timeout_s, f"a {kind!r} message")
        return self.json[kind].pop(0)

    async def close(self) -> None:
        Client.live.discard(self)
        await self.socket.close()
        self._reader.cancel()

    @classmethod
    async def close_all(cls) -> None:
        """Close what a test left open: a session left streaming would hold its slot and its load in admission."""
        for client in list(cls.live):
            with contextlib.suppress(Exception):
                await client.close()


def ray_snippet(app: ServeApp, code: str, timeout_s: float = 120.0) -> str:
    """Run Python against the app's Ray cluster in a child process (keeps Ray out of the test process)."""
    prelude = (
        "import ray\nfrom ray import serve\n"
        f"ray.init(address={app.ray_address!r}, log_to_driver=False, logging_level='ERROR')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"ray snippet failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


def set_stage_delay(app: ServeApp, deployment: str, ms: float) -> None:
    """Add ``ms`` of latency to every model call of one deployment (tests/integration/instrumented.py)."""
    out = ray_snippet(
        app,
        f"print(serve.get_deployment_handle({deployment!r}, app_name='mirage').set_test_delay.remote({ms}).result())",
    )
    assert float(out.splitlines()[-1]) == ms
