"""A long fuzz run against the in-process front door (the ASGI app with LocalStages; no Ray, no network).

Hostile inputs from tests/hostile.py (deeply nested and oversized JSON, NaN and huge numbers, wrong types, random
headers, truncated/corrupted/lying JPEG and PNG, wrong PCM lengths, random bytes) go over WebSocket sessions with a
well-formed ping every ``--batch`` inputs to drain the replies and prove the session still answers. A session the
server closes (4002/4003 after too many invalid messages, 1009 for an oversized one) is replaced by a new one.
Stops by itself after ``--count`` inputs or ``--max-seconds``. Prints the inputs tried, the exceptions that escaped
a session handler or were logged as errors, the closes by code, and whether a well-behaved session (ping, one video
frame, 480 ms of audio) still works afterwards. Exit status 1 when anything failed.

The sessions are driven through the ASGI WebSocket interface an ASGI server (uvicorn, Serve's proxy) uses, from
the same event loop as the app: no client threads, so the run measures the server's parsing, not thread hand-offs
(tests/unit/test_fuzz.py runs the same kind of inputs through Starlette's TestClient).

    .venv/bin/python -m bench.bench_fuzz [--count 100000] [--seed 0] [--batch 25] [--max-seconds 1800]

Nothing is asserted beyond the exit status: the figures go to docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp

from bench.common import machine_lines
from mirage_ray import protocol
from mirage_ray.protocol import Kind
from tests import hostile

PROGRESS_EVERY = 10_000
WELL_BEHAVED_AUDIO_BYTES = 2 * 16 * 480  # 480 ms of PCM16 at 16 kHz: completes a block at any chunk size
REPLY_TIMEOUT_S = 30.0  # a probe with no pong and no close by then counts the session as stalled
DISCONNECT_TIMEOUT_S = 10.0
CLOSED_BY_FUZZER = 1000
PARSE_REPEATS = 20
CONFORMING_SEQ_SHARE = 0.8  # binary messages given their kind's next seq, so that the payload rules see them
# the costliest texts of max_json_bytes for the bounded parse: each exercises one part of it
WORST_CASE_TEXTS: dict[str, Callable[[int], str]] = {
    "nested arrays": lambda n: "[" * n,
    "nested objects": lambda n: '{"a":' * (n // 5),
    "escaped quotes": lambda n: '"' + '\\"' * (n // 2 - 1),
    "empty strings": lambda n: '""' * (n // 2),
    "flat array (valid)": lambda n: '{"type":"ping","t":[' + "1," * (n // 2 - 20) + "1]}",
    "long string (valid)": lambda n: '{"type":"ping","t":"' + "x" * (n - 30) + '"}',
}


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class AsgiWebSocket:
    """One WebSocket session driven through the ASGI interface, as an ASGI server would (same event loop)."""

    def __init__(self, app: ASGIApp, subprotocols: list[str], client: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self._scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": "/ws",
            "raw_path": b"/ws",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"localhost"), (b"sec-websocket-protocol", ", ".join(subprotocols).encode())],
            "subprotocols": subprotocols,
            "client": client,
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        self._app = app
        self._inbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiWebSocket:
        self._task = asyncio.create_task(self._app(self._scope, self._inbound.get, self._outbound.put))
        self._inbound.put_nowait({"type": "websocket.connect"})
        return self

    async def __aexit__(self, *_: object) -> None:
        self._inbound.put_nowait({"type": "websocket.disconnect", "code": CLOSED_BY_FUZZER})
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, DISCONNECT_TIMEOUT_S)

    def send(self, message: bytes | str) -> None:
        key = "bytes" if isinstance(message, bytes) else "text"
        self._inbound.put_nowait({"type": "websocket.receive", key: message})

    async def receive(self) -> dict[str, Any]:
        """The server's next ASGI event (accept, send, close); an app that raised re-raises here."""
        getter = asyncio.ensure_future(self._outbound.get())
        assert self._task is not None
        done, _ = await asyncio.wait({getter, self._task}, timeout=REPLY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self._task in done:
            self._task.result()  # raises what the app raised
            return {"type": "websocket.close", "code": 1006}  # the app returned without closing
        raise TimeoutError("no message from the server")

    async def probe(self, t: str) -> int | None:
        """A well-formed ping; None once its pong arrives, or the close code."""
        self.send(protocol.dumps({"type": "ping", "t": t}))
        while True:
            event = await self.receive()
            if event["type"] == "websocket.close":
                return int(event.get("code", 1000))
            text = event.get("text")
            if text and json.loads(text) == {"type": "pong", "t": t}:
                return None


@dataclass
class Report:
    tried: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    sessions: int = 0
    closes: collections.Counter[int] = field(default_factory=collections.Counter)
    escaped: list[str] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    raised: list[str] = field(default_factory=list)  # exceptions out of the ASGI app itself
    stalled: int = 0  # probes that got no pong and no close in time
    well_behaved: str = "not run"
    seconds: float = 0.0

    @property
    def failures(self) -> int:
        bad_closes = sum(self.closes[code] for code in hostile.FAILURE_CLOSES)
        problems = len(self.escaped) + len(self.logged) + len(self.raised) + self.stalled + bad_closes
        return problems + (self.well_behaved != "ok")


def subprotocols() -> list[str]:
    return [protocol.SUBPROTOCOL, f"{protocol.BEARER_PREFIX}{hostile.token()}"]


async def well_behaved_exchange(app: ASGIApp) -> str:
    """ping -> pong, one JPEG -> its frame, 480 ms of audio -> a converted block; 'ok' or what went wrong."""
    async with AsgiWebSocket(app, subprotocols()) as ws:
        if (accept := await ws.receive())["type"] != "websocket.accept":
            return f"not accepted: {accept}"
        if (code := await ws.probe("well-behaved")) is not None:
            return f"closed with {code}"
        ws.send(protocol.pack(Kind.VIDEO, 1, 1_000, hostile.small_jpeg()))
        ws.send(protocol.pack(Kind.AUDIO, 2, 2_000, bytes(WELL_BEHAVED_AUDIO_BYTES)))
        wanted = {Kind.VIDEO: 1, Kind.AUDIO: 2}
        while wanted:
            event = await ws.receive()
            if event["type"] == "websocket.close":
                return f"closed with {event.get('code')}"
            if event.get("bytes"):
                media = protocol.parse_media(event["bytes"])
                if wanted.get(media.kind) == media.seq:
                    del wanted[media.kind]
    return "ok"


async def fuzz_session(
    app: ASGIApp, rng: random.Random, report: Report, count: int, batch: int, deadline: float
) -> None:
    report.sessions += 1
    async with AsgiWebSocket(app, subprotocols()) as ws:
        if (accept := await ws.receive())["type"] != "websocket.accept":
            raise RuntimeError(f"the fuzzing session was refused: {accept}")
        code = None
        stamp = hostile.SeqStamper()
        while code is None and report.tried < count and time.monotonic() < deadline:
            for _ in range(batch):
                message = hostile.hostile_message(rng)
                if rng.random() < CONFORMING_SEQ_SHARE:  # the rest try the seq rule itself
                    message = stamp(message)
                report.by_kind["text" if isinstance(message, str) else "binary"] += 1
                ws.send(message)
                report.tried += 1
                if report.tried % PROGRESS_EVERY == 0:
                    print(f"  {report.tried} inputs, {report.sessions} sessions", file=sys.stderr)
            try:
                code = await ws.probe(f"{hostile.PROBE_PREFIX}{report.tried}")
            except TimeoutError:
                report.stalled += 1
                return
        report.closes[code if code is not None else CLOSED_BY_FUZZER] += 1


async def fuzz(count: int, seed: int, batch: int, max_seconds: float) -> Report:
    report = Report()
    rng = random.Random(seed)
    log = ErrorLog()
    logging.getLogger("mirage_ray").addHandler(log)
    started = time.monotonic()
    deadline = started + max_seconds
    app = hostile.make_app(hostile.backends())
    try:
        with hostile.session_exceptions() as escaped:
            while report.tried < count and time.monotonic() < deadline:
                try:
                    await fuzz_session(app, rng, report, count, batch, deadline)
                except Exception as exc:  # the ASGI app raised: exactly what must never happen
                    report.raised.append(repr(exc)[:200])
            report.well_behaved = await well_behaved_exchange(app)
            report.escaped = [repr(exc)[:200] for exc in escaped]
    finally:
        logging.getLogger("mirage_ray").removeHandler(log)
    report.logged = log.messages
    report.seconds = time.monotonic() - started
    return report


def parse_costs(max_bytes: int) -> dict[str, float]:
    """Best-of-``PARSE_REPEATS`` milliseconds of :func:`protocol.parse_text` per worst-case text of ``max_bytes``."""
    costs = {}
    for name, make in WORST_CASE_TEXTS.items():
        text = make(max_bytes)[:max_bytes]
        best = float("inf")
        for _ in range(PARSE_REPEATS):
            started = time.perf_counter()
            with contextlib.suppress(protocol.ProtocolError):
                protocol.parse_text(text, max_bytes=max_bytes)
            best = min(best, time.perf_counter() - started)
        costs[name] = best * 1000.0
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="hostile inputs to send")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=25, help="hostile inputs between two well-formed pings")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long whatever the count")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the service logs every refusal at INFO; the report counts them
    for line in machine_lines():
        print(line)
    costs = parse_costs(protocol.MAX_JSON_BYTES)
    print(f"parse_text, worst cases at max_json_bytes={protocol.MAX_JSON_BYTES} (best of {PARSE_REPEATS}, ms):")
    print("  " + ", ".join(f"{name} {ms:.2f}" for name, ms in costs.items()))
    report = asyncio.run(fuzz(args.count, args.seed, args.batch, args.max_seconds))
    rate = report.tried / report.seconds if report.seconds else 0.0
    print(f"inputs tried: {report.tried} ({dict(report.by_kind)}) in {report.seconds:.1f} s ({rate:.0f}/s)")
    print(f"sessions: {report.sessions}")
    closes = ", ".join(f"{code}: {n}" for code, n in sorted(report.closes.items()))
    print(f"closes by code: {closes}  (1000 = the fuzzer ended the session; -1 = stalled)")
    print(f"exceptions out of the ASGI app: {len(report.raised)}")
    print(f"exceptions escaped a session handler: {len(report.escaped)}")
    print(f"errors logged by the service: {len(report.logged)}")
    print(f"stalled sessions (no pong, no close): {report.stalled}")
    print(f"well-behaved session afterwards: {report.well_behaved}")
    for line in (report.raised + report.escaped + report.logged)[:10]:
        print(f"  {line}")
    print(json.dumps({"tried": report.tried, "failures": report.failures, "closes": report.closes}))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
