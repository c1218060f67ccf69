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
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

from actors.launch import _process_tree, launched
from bench.bench_capacity import process_name
from bench.common import BENCH_JWT_SECRET, CPU_CONFIG, LoadMedia, ServeApp, WireSession, load_media, machine_lines, pct
from mirage_ray.protocol import Kind

MINUTE_S = 60.0
RSS_BASELINE_S = 10.0  # the first RSS sample: after the warm-up (models loaded, first calls made, sessions open)
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


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


def minute_line(minute: int, sessions: list[WireSession], start: float, rss: dict[str, float]) -> str:
    lo, hi = start + (minute - 1) * MINUTE_S, start + minute * MINUTE_S
    replies = [r for s in sessions for r in s.replies if lo <= r.at < hi]
    video = [r.latency_ms for r in replies if r.kind == Kind.VIDEO]
    audio = [r.latency_ms for r in replies if r.kind == Kind.AUDIO]
    sent = sum(1 for s in sessions for at in s.video_sent_at if lo <= at < hi)
    flagged_v = sum(r.flagged for r in replies if r.kind == Kind.VIDEO)
    flagged_a = sum(r.flagged for r in replies if r.kind == Kind.AUDIO)
    top = ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(rss.items(), key=lambda kv: -kv[1]))
    return (
        f"| {minute} | {pct(video, 50):.0f} / {pct(video, 95):.0f} | {pct(audio, 50):.0f} / {pct(audio, 95):.0f} |"
        f" {len(video)} / {sent} ({100.0 * (sent - len(video)) / max(sent, 1):.1f} % dropped) |"
        f" {100.0 * flagged_v / max(len(video), 1):.1f} / {100.0 * flagged_a / max(len(audio), 1):.1f} |"
        f" {sum(rss.values()):.0f} | {top} | {os.getloadavg()[0]:.1f} |"
    )


async def soak(app: ServeApp, temp_dir: str, media: LoadMedia, sessions: int, minutes: int) -> None:
    start = time.perf_counter()
    stop_at = start + minutes * MINUTE_S
    clients = [WireSession(app, media, 0.0, 0.0, i, flush=True) for i in range(sessions)]
    tasks = [asyncio.create_task(c.run(stop_at)) for c in clients]
    print(
        "| minute | video RTT p50 / p95 ms | audio block p50 / p95 ms | frames out / sent | flagged % video / audio "
        "| RSS MiB total | RSS MiB per process | load (1 min) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    await asyncio.sleep(RSS_BASELINE_S)
    rss_first = rss_last = rss_by_process(temp_dir)
    for minute in range(1, minutes + 1):
        await asyncio.sleep(max(0.0, start + minute * MINUTE_S - time.perf_counter()))
        rss_last = rss_by_process(temp_dir)
        print(minute_line(minute, clients, start, rss_last), flush=True)
    await asyncio.gather(*tasks)
    print(totals_line(clients))
    print("\nsamples in / out per session (after flush):")
    for i, c in enumerate(clients):
        stats = c.last_stats.get("audio", {})
        verdict = "equal" if c.samples_in == c.samples_out else f"DIFFER by {c.samples_in - c.samples_out}"
        print(
            f"  session {i}: client sent {c.samples_in}, received {c.samples_out} ({verdict}); server's last"
            f" stats: in {stats.get('samples_in')}, out {stats.get('samples_out')}; {c.figures.refused or 'not closed'}"
        )
    print(f"\nRSS growth, {RSS_BASELINE_S:.0f} s -> minute {minutes} (MiB):")
    for name in sorted(rss_last, key=lambda n: -rss_last[n]):
        first, last = rss_first.get(name, float("nan")), rss_last[name]
        print(f"  {name}: {first:.0f} -> {last:.0f} ({100.0 * (last - first) / first:+.1f} %)")
    total_first, total_last = sum(rss_first.values()), sum(rss_last.values())
    print(f"  total: {total_first:.0f} -> {total_last:.0f} ({100.0 * (total_last - total_first) / total_first:+.1f} %)")


def totals_line(sessions: list[WireSession]) -> str:
    """The whole run: latency percentiles, frames dropped, flagged replies."""
    replies = [r for s in sessions for r in s.replies]
    video = [r.latency_ms for r in replies if r.kind == Kind.VIDEO]
    audio = [r.latency_ms for r in replies if r.kind == Kind.AUDIO]
    sent = sum(len(s.video_sent_at) for s in sessions)
    flagged_v = sum(r.flagged for r in replies if r.kind == Kind.VIDEO)
    flagged_a = sum(r.flagged for r in replies if r.kind == Kind.AUDIO)
    return (
        f"\nwhole run: video RTT p50 / p95 {pct(video, 50):.0f} / {pct(video, 95):.0f} ms, audio block p50 / p95"
        f" {pct(audio, 50):.0f} / {pct(audio, 95):.0f} ms; frames out / sent {len(video)} / {sent}"
        f" ({100.0 * (sent - len(video)) / max(sent, 1):.1f} % dropped); flagged video {flagged_v}, audio blocks"
        f" {flagged_a} of {len(audio)}"
    )


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
    print(machine_lines()[1].replace("date:", "at the end:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=None, help="default: max_sessions of serve_config.cpu.yaml")
    parser.add_argument("--set", action="append", default=[], help="application arg key=value (repeatable)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the app it started (launched's finally) on kill
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
