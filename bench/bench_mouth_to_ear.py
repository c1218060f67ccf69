"""Mouth-to-ear budget of the voice: capture of a block's first sample → that converted sample heard, per component.

For each configuration (the previous defaults — 192 ms block, 40 + 10 ms crossfade/SOLA hold-back, 40 ms playback
margin, "interactive" output — and today's) this bench:

1. in-process, WORLD at that block size over real espeak-ng speech: the voice CPU per session-second (conversion
   thread time / audio time: what decides capacity) and the click score at block boundaries with the crossfade on and
   off (``mirage_ray/voice/quality.py``; ≈1 is clean);
2. through the real app (``actors.launch``, CPU profile), a Python client in the page's role: speech in real time in
   the page's chunks (``web/protocol.js`` ``sendChunkMs``, following directives), every returned block played by a
   port of the page's playout rule (``web/playout.js``: start after the margin, trim the queue to its smallest slack
   over 3 s by leaving out quiet 10 ms frames), and the output latency Chromium reports for the page's latencyHint.

Components per returned block (its first sample, as the page measures): block (the block's own duration), wait for
the chunk that completes it, server (conversion + Serve + loopback, from that chunk's send to the block's arrival),
hold-back (crossfade + SOLA search), queue (arrival → scheduled start) and output latency. Also the Voice, Ingress and
Proxy CPU per session-second over the run. Then totals (p50/p95) and the ratio to the previous defaults.

With ``--video`` the client also plays the page's camera (the reference photo, then a moving face at the rate, size
and JPEG quality the directives ask for), so that the voice shares the machine with video as in a call; the video
figures (fps back, round trip, ladder level and why it moved) are printed too.

    python -m bench.bench_mouth_to_ear [--seconds 20] [--skip-serve] [--video]      (from the repository root)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from actors.launch import LaunchError, _process_tree, launched
from bench.bench_capacity import cpu_seconds, cpu_split
from bench.common import (
    BENCH_JWT_SECRET,
    CPU_CONFIG,
    BenchClient,
    LoadMedia,
    LocalBackends,
    ServeApp,
    load_line,
    load_media,
    machine_lines,
    pct,
    world_context_ms,
)
from mirage_ray import protocol
from mirage_ray.codec import encode_jpeg, float_to_pcm16, pcm16_to_float
from mirage_ray.config import MirageSettings
from mirage_ray.voice.base import SAMPLE_RATE
from mirage_ray.voice.convert_world import WorldConverter
from mirage_ray.voice.presets import preset_params
from mirage_ray.voice.quality import block_boundaries, click_score
from mirage_ray.voice.stream import VoiceStream
from tests.speech import speech

MS_PER_SAMPLE = 1000.0 / SAMPLE_RATE
LAUNCH_ATTEMPTS = 3
WARM_UP_S = 4.0  # the first voice calls (cold Voice handle) are left out
# web/playout.js
TRIM_WINDOW_S = 3.0
TRIM_MIN_SAMPLES = 4
FRAME = SAMPLE_RATE // 100
QUIET_FRAME_DB = -40.0
RELATIVE_QUIET_DB = 25.0
# Chromium 156 headless, 44.1 kHz: output timestamp lag behind currentTime (what the page adds as "heard" latency),
# used when playwright/chromium are not there to ask
OUTPUT_LATENCY_FALLBACK_MS = {"interactive": 42.6, "0": 11.6}


@dataclass(frozen=True)
class Config:
    name: str
    block_ms: int
    crossfade_ms: int
    search_ms: int
    margin_ms: float
    latency_hint: str  # the page's AudioContext latencyHint
    context_ms: int | None = None  # the voice windows' left context (None: what the converters report)
    extra: tuple[str, ...] = ()  # more key=value settings (--set)

    @property
    def sets(self) -> list[str]:
        sets = [f"chunk_ms={self.block_ms}", f"crossfade_ms={self.crossfade_ms}", f"sola_search_ms={self.search_ms}"]
        return sets + ([] if self.context_ms is None else [f"context_ms={self.context_ms}"]) + list(self.extra)

    @property
    def hold_back_ms(self) -> float:
        return float(self.crossfade_ms + self.search_ms)


BEFORE = Config("before (seed defaults)", 192, 40, 10, 40.0, "interactive", 384)
_DEFAULTS = MirageSettings()
AFTER = Config(
    "after (today's defaults)", _DEFAULTS.chunk_ms, _DEFAULTS.crossfade_ms, _DEFAULTS.sola_search_ms, 20.0, "0", None
)


def send_chunk_ms(block_ms: int) -> int:
    """web/protocol.js sendChunkMs: one chunk per block when it is whole 10 ms frames, else half a block."""
    return block_ms if block_ms % 10 == 0 else max(10, round(block_ms / 20) * 10)


# --- in-process: CPU and clicks ------------------------------------------------------------------------------------
def in_process(x: np.ndarray, blocks: list[int], configs: list[Config]) -> None:
    world, params = WorldConverter(), preset_params("deeper")
    print("\n(1) WORLD in-process, preset 'deeper': voice CPU per session-second and click score")
    header = ("block ms", "context", "hold-back", "CPU s / session s", "click on", "click off", "control")
    print("  " + " ".join(f"{name:>{width}}" for name, width in zip(header, (8, 7, 9, 17, 8, 9, 7), strict=True)))
    for block_ms in blocks:
        for cfg in configs:
            row: dict[str, float] = {}
            context_ms = world_context_ms(MirageSettings(context_ms=cfg.context_ms))
            for crossfade in (True, False):
                stream = VoiceStream(
                    block_ms=block_ms,
                    context_ms=context_ms,
                    crossfade_ms=cfg.crossfade_ms,
                    search_ms=cfg.search_ms,
                    crossfade=crossfade,
                )
                cpu: list[float] = []

                def convert(window: np.ndarray, cpu: list[float] = cpu) -> np.ndarray:
                    started = time.thread_time()
                    out = world.convert(window, params)
                    cpu.append(time.thread_time() - started)
                    return out

                out = stream.process(x, convert)
                block = stream.block_samples
                row[str(crossfade)] = click_score(out, block_boundaries(len(out), block))
                if crossfade:
                    row["cpu"] = sum(cpu) / (len(out) / SAMPLE_RATE)
                    row["control"] = click_score(out, block_boundaries(len(out), block, offset=block // 2))
            print(
                f"  {block_ms:8d} {context_ms:5d}ms {cfg.hold_back_ms:7.0f}ms {row['cpu']:17.3f} {row['True']:8.2f}"
                f" {row['False']:9.2f}"
                f" {row['control']:7.2f}"
            )


# --- the page's output latency -------------------------------------------------------------------------------------
def output_latency_ms(hint: str) -> tuple[float, str]:
    """(ms between a context time being current and it being heard, source) for the page's latencyHint."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return OUTPUT_LATENCY_FALLBACK_MS[hint], "fallback"
    script = """async (h) => { const c = new AudioContext({latencyHint: h}); await c.resume();
        await new Promise((r) => setTimeout(r, 500)); const s = c.getOutputTimestamp();
        const lag = (c.currentTime - s.contextTime) * 1000; await c.close(); return lag; }"""
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--disable-gpu"],
            )
            page = browser.new_page()
            lags = [page.evaluate(script, 0 if hint == "0" else hint) for _ in range(3)]
            browser.close()
        return float(np.median(lags)), "headless Chromium"
    except Exception as exc:  # no browser here: the figure measured on the project's machine
        return OUTPUT_LATENCY_FALLBACK_MS[hint], f"fallback ({type(exc).__name__})"


# --- the page's playout rule ---------------------------------------------------------------------------------------
def quiet_cut(samples: np.ndarray, cut_ms: float) -> int:
    """Samples web/playout.js quietCut would leave out of ``samples`` to shorten the queue by about ``cut_ms``."""
    frames = len(samples) // FRAME
    if frames == 0:
        return 0
    power = (samples[: frames * FRAME].astype(np.float64).reshape(frames, FRAME) ** 2).mean(axis=1)
    levels = 10.0 * np.log10(power + 1e-20)
    loudest = float(levels.max())
    limit = frames - 1 if loudest < QUIET_FRAME_DB else frames // 2
    wanted = min(int(cut_ms // 10), limit)
    if wanted < 1:
        return 0
    quiet = int(np.count_nonzero((levels < QUIET_FRAME_DB) | (levels < loudest - RELATIVE_QUIET_DB)))
    return min(wanted, quiet) * FRAME


class PagePlayout:
    """web/playout.js AudioPlayout without the lip-sync hold: returns each chunk's queue wait (ms)."""

    def __init__(self, margin_ms: float) -> None:
        self.margin_s = margin_ms / 1000.0
        self.next_time: float | None = None
        self.slacks: deque[tuple[float, float]] = deque()
        self.underruns = 0

    def play(self, samples: np.ndarray, now: float) -> float:
        if self.next_time is None or self.next_time <= now:
            self.underruns += self.next_time is not None
            self.slacks.clear()
            at = now + self.margin_s
            kept = len(samples)
        else:
            at = self.next_time
            slack = at - now
            self.slacks.append((now, slack))
            while self.slacks and now - self.slacks[0][0] > TRIM_WINDOW_S:
                self.slacks.popleft()
            kept = len(samples)
            if len(self.slacks) >= TRIM_MIN_SAMPLES:
                excess_ms = (min(s for _, s in self.slacks) - self.margin_s) * 1000.0
                cut = quiet_cut(samples, excess_ms)
                kept -= cut
                self.slacks = deque((t, s - cut / SAMPLE_RATE) for t, s in self.slacks)
        self.next_time = at + kept / SAMPLE_RATE
        return (at - now) * 1000.0


# --- through the real app ------------------------------------------------------------------------------------------
@dataclass
class VideoFigures:
    """What the camera half of the page saw: frames sent and swapped back, their round trips, the ladder's levels."""

    sent: dict[int, float] = field(default_factory=dict)
    rtt_ms: list[float] = field(default_factory=list)
    flagged: int = 0
    levels: list[int] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)  # why the ladder moved (the directives' reasons)

    def returned(self, media: protocol.Media, at: float, measured: bool) -> None:
        if measured and media.seq in self.sent:
            self.rtt_ms.append((at - self.sent[media.seq]) * 1000.0)
            self.flagged += media.flags & protocol.FLAG_PASSTHROUGH != 0


async def camera(client: BenchClient, frames: list[np.ndarray], figures: VideoFigures, stop_at: float) -> None:
    """The page's camera: frames at the size, rate and JPEG quality the latest ``video`` directive asks for."""
    level = {"width": 512, "height": 512, "fps": 20.0, "jpeg_quality": 85}
    seq, seen, due = 0, 0, time.perf_counter()
    while due < stop_at:
        for _, message in client.texts[seen:]:
            if message.get("type") == "directive" and message.get("video"):
                level.update(message["video"])
        seen = len(client.texts)
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        image = frames[seq % len(frames)]
        if image.shape[1] != level["width"]:
            image = cv2.resize(image, (int(level["width"]), int(level["height"])), interpolation=cv2.INTER_AREA)
        now = time.perf_counter()
        figures.sent[seq] = now
        payload = await asyncio.to_thread(encode_jpeg, image, int(level["jpeg_quality"]))  # a browser encodes off
        # its main thread too: the audio half's send and arrival times are not held up by it
        await client.socket.send(protocol.pack(protocol.Kind.VIDEO, seq, int(now * 1e6), payload))
        seq, due = seq + 1, due + 1.0 / float(level["fps"])


async def page_role(
    app: ServeApp, x: np.ndarray, cfg: Config, seconds: float, out_ms: float, media: LoadMedia | None = None
) -> dict[str, Any]:
    """Speech in real time in the page's chunks; each returned block through the page's playout rule. With
    ``media``, the page's camera too: the reference photo first (the disguise is on), then frames at the
    directives' rate, so that the voice shares the machine with video as in a call."""
    client = await BenchClient.connect(app)
    video = VideoFigures()
    camera_task: asyncio.Task[None] | None = None
    try:
        hello = await client.next_json("hello")
        block_ms = int(hello["audio"]["chunk_ms"])
        if media is not None:
            await client.socket.send(protocol.pack(protocol.Kind.REFERENCE, 0, 0, media.reference))
            await client.next_json("reference", timeout_s=60)
            frames = [cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) for f in media.frames]
            camera_task = asyncio.create_task(camera(client, frames, video, time.perf_counter() + seconds + 1.0))
        audio = np.tile(x, math.ceil(seconds * SAMPLE_RATE / len(x)) + 1)
        total = int(seconds * SAMPLE_RATE) // FRAME * FRAME
        sent: list[tuple[int, int, float]] = []  # (first position, samples, send time)
        start = time.perf_counter() + 0.05
        position, seq, seen_texts = 0, 0, 0
        blocks: list[tuple[int, int, float, int]] = []  # (position, samples, arrival, flags)
        playout = PagePlayout(cfg.margin_ms)
        waits: list[float] = []
        returned = 0

        def drain() -> None:
            nonlocal returned
            while not client.media.empty():
                got = client.media.get_nowait()
                if got.media.kind != protocol.Kind.AUDIO:
                    video.returned(got.media, got.at, got.at >= start + WARM_UP_S)
                    continue
                pcm = pcm16_to_float(got.media.payload)
                blocks.append((returned, len(pcm), got.at, got.media.flags))
                waits.append(playout.play(pcm, got.at))
                returned += len(pcm)

        align_at: int | None = None  # where the latest block size starts: chunks end on block ends (web/app.js)
        while position < total:
            for at, message in client.texts[seen_texts:]:
                if message.get("type") == "directive" and message.get("audio_chunk_ms"):
                    block_ms = int(message["audio_chunk_ms"])
                    drain()
                    align_at = sum(length for _, length, arrival, _ in blocks if arrival <= at)
            seen_texts = len(client.texts)
            chunk = send_chunk_ms(block_ms) * SAMPLE_RATE // 1000
            if align_at is not None and chunk == block_ms * SAMPLE_RATE // 1000:  # web/audio-worklet.js
                to_boundary = (align_at - position) % chunk
                chunk = -(-to_boundary // FRAME) * FRAME or chunk  # rounded up to whole 10 ms frames
            end = min(position + chunk, total)
            due = start + end / SAMPLE_RATE  # its last sample is captured then
            while (wait := due - time.perf_counter()) > 0:
                drain()  # arrival times come from the reader task, so polling adds nothing to them
                await asyncio.sleep(min(wait, 0.005))
            capture_us = int((start + position / SAMPLE_RATE) * 1e6)
            pcm = float_to_pcm16(audio[position:end])
            await client.socket.send(protocol.pack(protocol.Kind.AUDIO, seq, capture_us, pcm))
            sent.append((position, end - position, time.perf_counter()))
            position, seq = end, seq + 1
        deadline = time.perf_counter() + 5.0
        while time.perf_counter() < deadline and returned + block_ms * 16 <= total:
            drain()
            await asyncio.sleep(0.005)
        drain()
        stats = await client.next_json("stats", timeout_s=5, after=time.perf_counter())
        video.levels = [m.get("degrade_level", 0) for at, m in client.texts if m.get("type") == "stats"]
        video.reasons.update(m["reason"] for _, m in client.texts if m.get("type") == "directive" and "video" in m)
    finally:
        if camera_task is not None:
            camera_task.cancel()
            with contextlib.suppress(BaseException):
                await camera_task
        await client.close()
    rows = []
    for (first, length, arrival, flags), queue_ms in zip(blocks, waits, strict=True):
        last = first + length - 1
        completing = next(s for s in sent if s[0] <= last < s[0] + s[1])
        captured_first = start + first / SAMPLE_RATE
        if captured_first < start + WARM_UP_S:
            continue
        rows.append(
            {
                "block": length * MS_PER_SAMPLE,
                "wait": (completing[2] - (start + (last + 1) / SAMPLE_RATE)) * 1000.0,
                "server": (arrival - completing[2]) * 1000.0,
                "hold-back": cfg.hold_back_ms,
                "queue": queue_ms,
                "output": out_ms,
                "flagged": float(flags & protocol.FLAG_PASSTHROUGH != 0),
            }
        )
    for row in rows:
        row["total"] = sum(row[k] for k in ("block", "wait", "server", "hold-back", "queue", "output"))
    measured_s = seconds - WARM_UP_S
    result = {"rows": rows, "underruns": playout.underruns, "stats": stats, "final_block_ms": block_ms}
    return result | ({"video": video, "measured_s": measured_s} if media is not None else {})


async def _run_app(
    cfg: Config, x: np.ndarray, seconds: float, out_ms: float, media: LoadMedia | None
) -> dict[str, Any]:
    env = {"MIRAGE_JWT_SECRET": BENCH_JWT_SECRET}
    with launched(CPU_CONFIG, sets=cfg.sets, num_cpus=2, env=env, timeout_s=300.0) as ready:
        url = ready["url"]
        app = ServeApp(url, url.replace("http://", "ws://") + "ws", ready["ray_address"], 0.0)
        before = cpu_seconds(_process_tree(ready["temp_dir"]))
        began = time.perf_counter()
        result = await page_role(app, x, cfg, seconds, out_ms, media)
        elapsed = time.perf_counter() - began
        split = cpu_split(before, cpu_seconds(_process_tree(ready["temp_dir"])))
    result["cpu"] = {k: v / elapsed for k, v in split.items() if k in ("Voice", "Ingress", "ProxyActor")}
    result["load"] = load_line()
    return result


def _serve_local(port: int, sets: list[str]) -> None:
    """The ingress's own front door (mirage_ray.server) with every stage in its process, on loopback (no Ray)."""
    import uvicorn

    from actors.launch import parse_sets
    from mirage_ray.config import MirageSettings
    from mirage_ray.security import build_auth
    from mirage_ray.server import ServerContext, build_app
    from mirage_ray.stages import StageInfo, Workers

    settings = MirageSettings(jwt_secret=BENCH_JWT_SECRET, **parse_sets(sets))
    workers = Workers.from_settings(settings)
    backends = LocalBackends.build(settings)
    stages = backends.stages(settings, workers)
    report = backends.report()

    async def readiness() -> dict[str, Any]:
        return report

    info = StageInfo.from_report(report, "pitch-shift")
    app = build_app(ServerContext(settings, build_auth(settings), stages, info, readiness, workers=workers))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def _run_local(
    cfg: Config, x: np.ndarray, seconds: float, out_ms: float, media: LoadMedia | None
) -> dict[str, Any]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "bench.bench_mouth_to_ear", "--serve-local", str(port), *cfg.sets]
    server = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "healthz", timeout=2):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise LaunchError(f"the local server did not start (exit {server.poll()})")
            await asyncio.sleep(0.5)
        app = ServeApp(url, url.replace("http://", "ws://") + "ws", "", 0.0)
        before = cpu_seconds([server.pid])
        began = time.perf_counter()
        result = await page_role(app, x, cfg, seconds, out_ms, media)
        elapsed = time.perf_counter() - began
        split = cpu_split(before, cpu_seconds([server.pid]))
    finally:
        server.terminate()
        server.wait(30)
    result["cpu"] = {"server process (ingress + WORLD)": sum(split.values()) / elapsed}
    result["load"] = load_line()
    return result


COMPONENTS = ("block", "wait", "server", "hold-back", "queue", "output", "total")


def report(cfg: Config, result: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    rows = result["rows"]
    stats = result["stats"]
    print(
        f"\n  {cfg.name}: settings {' '.join(cfg.sets)}, margin {cfg.margin_ms:.0f} ms, latencyHint {cfg.latency_hint}"
    )
    print(
        f"  blocks measured {len(rows)}, block at the end {result['final_block_ms']} ms, flagged"
        f" {sum(r['flagged'] for r in rows):.0f}, underruns {result['underruns']}, server runtime/real"
        f" {stats.get('runtime_ratio', float('nan')):.3f}; {result['load']}"
    )
    if "video" in result:
        video: VideoFigures = result["video"]
        p50, p95 = pct(video.rtt_ms, 50), pct(video.rtt_ms, 95)
        levels = video.levels or [0]
        print(
            f"  video: {len(video.rtt_ms) / result['measured_s']:.1f} fps back ({len(video.sent)} frames sent),"
            f" round trip p50/p95 {p50:.0f}/{p95:.0f} ms, flagged {video.flagged}, ladder level at the end"
            f" {levels[-1]} (max {max(levels)}); ladder moves: "
            + ", ".join(f"{reason} ×{n}" for reason, n in video.reasons.most_common())
        )
    print("  CPU s per session-second: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(result["cpu"].items())))
    print(f"  {'component':>10} {'p50 ms':>8} {'p95 ms':>8}" + ("  × before (p50)" if baseline else ""))
    for key in COMPONENTS:
        values = [r[key] for r in rows]
        line = f"  {key:>10} {pct(values, 50):8.1f} {pct(values, 95):8.1f}"
        if baseline and key == "total":
            line += f"  {pct(values, 50) / pct([r[key] for r in baseline['rows']], 50):.2f}"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="speech streamed per configuration")
    parser.add_argument("--skip-serve", action="store_true", help="only the in-process part")
    parser.add_argument("--blocks", default="80,120,160,192", help="block sizes for the in-process part (ms)")
    parser.add_argument(
        "--extra-block",
        type=int,
        action="append",
        default=[],
        help="also run today's settings at this start block through the app",
    )
    parser.add_argument(
        "--server",
        choices=("serve", "local"),
        default="serve",
        help="serve: the Ray Serve app (actors.launch); local: the same ingress code with every stage in one process",
    )
    parser.add_argument(
        "--video",
        action="store_true",
        help="the page's camera too (reference photo, then a moving face at the directives' rate): voice beside video",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for the --extra-block runs"
    )
    parser.add_argument(
        "--only-extra", action="store_true", help="skip the before/after configurations (only --extra-block ones)"
    )
    parser.add_argument("--serve-local", type=int, default=None, help=argparse.SUPPRESS)  # internal: run the server
    args, rest = parser.parse_known_args()
    if args.serve_local is not None:
        _serve_local(args.serve_local, rest)
        return 0
    for line in machine_lines():
        print(line)
    x = speech()
    if args.blocks:  # --blocks "" skips the in-process part
        in_process(x, [int(b) for b in args.blocks.split(",")], [BEFORE, AFTER])
    if args.skip_serve:
        return 0
    media = load_media() if args.video else None
    configs = ([] if args.only_extra else [BEFORE, AFTER]) + [
        Config(
            f"today's hold-back/margin, block {b} ms",
            b,
            AFTER.crossfade_ms,
            AFTER.search_ms,
            AFTER.margin_ms,
            "0",
            extra=tuple(args.set),
        )
        for b in args.extra_block
    ]
    where = "the real app (serve_config.cpu.yaml)" if args.server == "serve" else "the ingress code, stages in-process"
    where += ", with video" if args.video else ", audio only"
    out = {hint: output_latency_ms(hint) for hint in {c.latency_hint for c in configs}}
    print(
        f"\n(2) through {where}, a client in the page's role; output latency per hint: "
        + ", ".join(f"{h}: {ms:.1f} ms ({src})" for h, (ms, src) in out.items())
    )
    baseline = None
    for cfg in configs:
        for attempt in range(LAUNCH_ATTEMPTS):
            try:
                run = _run_app if args.server == "serve" else _run_local
                result = asyncio.run(run(cfg, x, args.seconds, out[cfg.latency_hint][0], media))
                break
            except LaunchError as exc:  # Ray's start times out on a machine this loaded; try again
                print(f"  {cfg.name}: launch attempt {attempt + 1} failed: {str(exc).splitlines()[0]}")
        else:
            return 1
        report(cfg, result, baseline)
        baseline = baseline or result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
