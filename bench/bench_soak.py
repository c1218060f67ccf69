"""Soak: the measured capacity's worth of sessions for minutes on end, through the running app on loopback.

As many sessions as the CPU profile holds (``max_sessions`` in serve_config.cpu.yaml), each sending what
bench/bench_capacity.py sends (a reference photo, a 512x512 moving face at 20 fps, real-time speech in 200 ms chunks).
Each minute it prints video round-trip and audio block p50/p95, frames dropped (sent and not answered), flagged
(fail-closed) replies, and the resident memory (RSS, from /proc) of every process of the run's Ray cluster (found by
its temp dir) and of this client. At the end every session sends ``flush`` and the audio samples out are compared
with the samples in, and RSS growth per process is printed from a baseline taken 10 s in (after the warm-up) to
the last minute. It stops by itself.

    .venv/bin/python -m bench.bench_soak [--minutes 10] [--sessions N] [--set key=value ...]

Nothing is asserted: the figures go to docs/security.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
import yaml

from actors.launch import _process_tree, launched
from bench.bench_capacity import SAMPLES_PER_CHUNK, LoadMedia, WireSession, load_media, process_name
from bench.common import BENCH_JWT_SECRET, CPU_CONFIG, MAX_MESSAGE_BYTES, ServeApp, machine_lines, pct
from mirage_ray import protocol
from mirage_ray.protocol import FLAG_PASSTHROUGH, Kind

MINUTE_S = 60.0
RSS_BASELINE_S = 10.0  # the first RSS sample: after the warm-up (models loaded, first calls made, sessions open)
FLUSH_WAIT_S = 15.0  # after the last chunk: until every sample is back
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Reply:
    at: float
    kind: Kind
    latency_ms: float
    flagged: bool
    samples: int = 0


@dataclass
class SoakFigures:
    replies: list[Reply] = field(default_factory=list)
    samples_out: int = 0
    last_stats: dict[str, Any] = field(default_factory=dict)
    closed: str | None = None


class SoakSession(WireSession):
    """bench_capacity's client, every reply kept with its time; at the end a ``flush`` and a wait for the samples."""

    def __init__(self, app: ServeApp, media: LoadMedia, index: int) -> None:
        super().__init__(app, media, 0.0, float("inf"), index)
        self.soak = SoakFigures()

    @property
    def frames_sent(self) -> int:
        return len(self._video_sent)

    @property
    def samples_in(self) -> int:
        return len(self._audio_sent) * SAMPLES_PER_CHUNK

    async def run(self, stop_at: float) -> None:
        try:
            self._socket = await websockets.connect(
                self._app.ws_url, subprotocols=["mirage.v1", f"bearer.{self._app.token()}"], max_size=MAX_MESSAGE_BYTES
            )
        except websockets.InvalidStatus as exc:
            self.soak.closed = f"refused: HTTP {exc.response.status_code}"
            return
        reader = asyncio.create_task(self._read())
        try:
            await self._socket.send(protocol.pack(Kind.REFERENCE, 0, 0, self._media.reference))
            await asyncio.gather(self._send_video(stop_at), self._send_audio(stop_at))
            await self._socket.send(json.dumps({"type": "flush"}))
            deadline = time.perf_counter() + FLUSH_WAIT_S
            while self.soak.samples_out < self.samples_in and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
        except websockets.ConnectionClosed as exc:
            self.soak.closed = f"closed {exc.rcvd.code if exc.rcvd else None} {exc.rcvd.reason if exc.rcvd else ''}"
        finally:
            with contextlib.suppress(Exception):
                await self._socket.close()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _read(self) -> None:
        async for raw in self._socket:
            now = time.perf_counter()
            if not isinstance(raw, bytes):
                message = json.loads(raw)
                if message.get("type") == "stats":
                    self.soak.last_stats = message
                continue
            media = protocol.parse_media(raw)
            flagged = bool(media.flags & FLAG_PASSTHROUGH)
            if media.kind == Kind.VIDEO and media.seq in self._video_sent:
                self.soak.replies.append(Reply(now, Kind.VIDEO, (now - self._video_sent[media.seq]) * 1000.0, flagged))
            elif media.kind == Kind.AUDIO:
                samples = len(media.payload) // 2
                self.soak.samples_out += samples
                sent = self._audio_sent.get(media.seq, now)
                self.soak.replies.append(Reply(now, Kind.AUDIO, (now - sent) * 1000.0, flagged, samples))


def rss_by_process(temp_dir: str) -> dict[str, float]:
    """MiB resident per process of the run's cluster (same-named processes summed) plus this client."""
    rss: dict[str, float] = defaultdict(float)
    for pid in [*_process_tree(temp_dir), os.getpid()]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        name = "client (this bench)" if pid == os.getpid() else process_name(cmdline, stat)
        rss[name] += pages * PAGE_KIB / 1024.0
    return dict(rss)


def minute_line(minute: int, sessions: list[SoakSession], start: float, rss: dict[str, float]) -> str:
    lo, hi = start + (minute - 1) * MINUTE_S, start + minute * MINUTE_S
    replies = [r for s in sessions for r in s.soak.replies if lo <= r.at < hi]
    video = [r.latency_ms for r in replies if r.kind == Kind.VIDEO]
    audio = [r.latency_ms for r in replies if r.kind == Kind.AUDIO]
    sent = sum(1 for s in sessions for at in s._video_sent.values() if lo <= at < hi)
    flagged_v = sum(r.flagged for r in replies if r.kind == Kind.VIDEO)
    flagged_a = sum(r.flagged for r in replies if r.kind == Kind.AUDIO)
    top = ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(rss.items(), key=lambda kv: -kv[1]))
    return (
        f"| {minute} | {pct(video, 50):.0f} / {pct(video, 95):.0f} | {pct(audio, 50):.0f} / {pct(audio, 95):.0f} |"
        f" {len(video)} / {sent} ({100.0 * (sent - len(video)) / max(sent, 1):.1f} % dropped) |"
        f" {100.0 * flagged_v / max(len(video), 1):.1f} / {100.0 * flagged_a / max(len(audio), 1):.1f} |"
        f" {sum(rss.values()):.0f} | {top} |"
    )


async def soak(app: ServeApp, temp_dir: str, media: LoadMedia, sessions: int, minutes: int) -> None:
    start = time.perf_counter()
    stop_at = start + minutes * MINUTE_S
    clients = [SoakSession(app, media, i) for i in range(sessions)]
    tasks = [asyncio.create_task(c.run(stop_at)) for c in clients]
    print(
        "| minute | video RTT p50 / p95 ms | audio block p50 / p95 ms | frames out / sent | flagged % video / audio "
        "| RSS MiB total | RSS MiB per process |"
    )
    print("|---|---|---|---|---|---|---|")
    await asyncio.sleep(RSS_BASELINE_S)
    rss_first = rss_last = rss_by_process(temp_dir)
    for minute in range(1, minutes + 1):
        await asyncio.sleep(max(0.0, start + minute * MINUTE_S - time.perf_counter()))
        rss_last = rss_by_process(temp_dir)
        print(minute_line(minute, clients, start, rss_last), flush=True)
    await asyncio.gather(*tasks)
    print("\nsamples in / out per session (after flush):")
    for i, c in enumerate(clients):
        stats = c.soak.last_stats.get("audio", {})
        verdict = "equal" if c.samples_in == c.soak.samples_out else f"DIFFER by {c.samples_in - c.soak.samples_out}"
        print(
            f"  session {i}: client sent {c.samples_in}, received {c.soak.samples_out} ({verdict}); server's last"
            f" stats: in {stats.get('samples_in')}, out {stats.get('samples_out')}; {c.soak.closed or 'not closed'}"
        )
    print(f"\nRSS growth, {RSS_BASELINE_S:.0f} s -> minute {minutes} (MiB):")
    for name in sorted(rss_last, key=lambda n: -rss_last[n]):
        first, last = rss_first.get(name, float("nan")), rss_last[name]
        print(f"  {name}: {first:.0f} -> {last:.0f} ({100.0 * (last - first) / first:+.1f} %)")
    total_first, total_last = sum(rss_first.values()), sum(rss_last.values())
    print(f"  total: {total_first:.0f} -> {total_last:.0f} ({100.0 * (total_last - total_first) / total_first:+.1f} %)")


def capacity() -> int:
    """``max_sessions`` of the CPU profile: the sessions bench_capacity measured it holds at full quality."""
    return int(yaml.safe_load(CPU_CONFIG.read_text())["applications"][0]["args"]["max_sessions"])


async def main_async(args: argparse.Namespace) -> None:
    media = load_media()
    sessions = args.sessions or capacity()
    print("\n".join(machine_lines()))
    print(f"soak: {sessions} sessions x {args.minutes} min, each a reference + 20 fps 512x512 + real-time speech")
    env = {"MIRAGE_JWT_SECRET": BENCH_JWT_SECRET}
    with launched(CPU_CONFIG, sets=args.set, num_cpus=2, env=env, timeout_s=300) as ready:
        app = ServeApp(ready["url"], ready["url"].replace("http://", "ws://") + "ws", ready["ray_address"], 0.0)
        await soak(app, ready["temp_dir"], media, sessions, args.minutes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=None, help="default: max_sessions of serve_config.cpu.yaml")
    parser.add_argument("--set", action="append", default=[], help="application arg key=value (repeatable)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
