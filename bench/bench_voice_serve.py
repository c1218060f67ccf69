"""Voice pipeline: WORLD cost per chunk across the adaptation ladder, latency through Serve, modelled end to end.

- WORLD runtime/real per chunk in-process at every chunk size of the adaptation ladder (80..480 ms), with the
  served window layout (context 384 ms, crossfade 40 ms, SOLA search 10 ms), over real espeak-ng speech; only
  blocks above the gate (those the server would convert) are timed.
- The real Serve app (serve_config.cpu.yaml via actors.launch): espeak-ng speech sent in real time as 200 ms
  chunks (the server's 192 ms block rounded up to 10 ms); per-reply latency from sending the chunk that completed a
  block to receiving that block; loopback round trip of ping/pong through the same proxy and ingress.
- Modelled end-to-end latency per chunk size = chunk + processing (WORLD in-process + the measured Serve overhead
  beyond the ping round trip) + crossfade hold-back (``VoiceStream.latency_samples``) + network (ping round trip).
  Client playout buffering is not included.
- Click score at block boundaries (mirage_ray/voice/quality.py; ≈1 = clean), crossfade on vs off, per chunk size,
  and on the audio the Serve app actually sent back.

    python -m bench.bench_voice_serve [--seconds 15] [--skip-serve]      (from the repository root)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import numpy as np

from bench.common import BenchClient, ServeApp, load_line, machine_lines, p50_p95, serve_app, world_context_ms
from mirage_ray import protocol
from mirage_ray.adapt import ACCEPT_BELOW, AudioPolicy
from mirage_ray.codec import float_to_pcm16, pcm16_to_float
from mirage_ray.config import MirageSettings
from mirage_ray.protocol import Kind
from mirage_ray.voice.base import SAMPLE_RATE
from mirage_ray.voice.convert_world import WorldConverter
from mirage_ray.voice.presets import preset_params
from mirage_ray.voice.quality import block_boundaries, click_score
from mirage_ray.voice.stream import VoiceStream
from tests.speech import speech

SEND_CHUNK_MS = 200  # the hello's 192 ms rounded up to whole 10 ms frames, as docs/protocol.md suggests
PASSES = 2  # passes over the speech per WORLD timing
PINGS = 30
E2E_REFERENCE_MS = 250.0  # the end-to-end figure FACTS.md discusses (not a goal given to this bench)
REPLY_DRAIN_S = 5.0
FIRST_BLOCKS = 6  # about the session's first second, which includes the first call through the Voice handle


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _stream(settings: MirageSettings, block_ms: int, crossfade: bool | None = None) -> VoiceStream:
    """The session's stream for WORLD at ``block_ms`` (crossfade on/off as asked, else as the settings say)."""
    changes: dict[str, object] = {"chunk_ms": block_ms}
    if crossfade is not None:
        changes["crossfade"] = crossfade
    return VoiceStream.from_settings(settings.model_copy(update=changes), world_context_ms(settings))


# --- in-process WORLD across the ladder ----------------------------------------------------------------------------
def world_ladder(settings: MirageSettings, x: np.ndarray, ladder: tuple[int, ...]) -> dict[int, tuple[float, float]]:
    """(p50, p95) ms of one WORLD conversion per ladder chunk size; prints the table."""
    world, params = WorldConverter(), preset_params(settings.voice_preset)
    print(f"\n(1) WORLD in-process per chunk, preset {settings.voice_preset!r}, {PASSES} passes, gated blocks skipped")
    print(
        f"  {'chunk ms':>8s} {'window ms':>9s} {'blocks':>6s} {'p50 ms':>7s} {'p95 ms':>7s} {'cpu p50':>7s}"
        f" {'rt/real p50':>11s} {'rt/real p95':>11s} {'accepted (<' + str(ACCEPT_BELOW) + ')':>15s}"
    )
    result = {}
    for block_ms in ladder:
        stream = _stream(settings, block_ms)
        stream.push(x)
        windows = []
        while (window := stream.next_window()) is not None:
            windows.append(window)
        times, cpu = [], []
        for _ in range(PASSES):
            for window in windows:
                if window.gated:
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                world.convert(window.samples, params)
                times.append(_ms(time.perf_counter() - t0))
                cpu.append(_ms(time.process_time() - c0))
        p50, p95 = p50_p95(times)
        ratios = np.asarray(times) / block_ms
        accepted = float(np.mean(ratios < ACCEPT_BELOW))
        result[block_ms] = (p50, p95)
        print(
            f"  {block_ms:8d} {_ms(len(windows[0].samples) / SAMPLE_RATE):9.0f} {len(times) // PASSES:6d}"
            f" {p50:7.2f} {p95:7.2f} {float(np.median(cpu)):7.2f} {p50 / block_ms:11.3f} {p95 / block_ms:11.3f}"
            f" {accepted:15.0%}"
        )
    return result


# --- clicks in-process ---------------------------------------------------------------------------------------------
def clicks(settings: MirageSettings, x: np.ndarray, ladder: tuple[int, ...]) -> None:
    world, params = WorldConverter(), preset_params(settings.voice_preset)
    print("\n(4) click score at block boundaries (mean jump / local mean step; ≈1 clean), WORLD in-process")
    print(f"  {'chunk ms':>8s} {'crossfade on':>12s} {'crossfade off':>13s} {'mid-block control':>17s}")
    for block_ms in ladder:
        row = {}
        for crossfade in (True, False):
            stream = _stream(settings, block_ms, crossfade)
            out = stream.process(x, lambda w: world.convert(w, params))
            block = stream.block_samples
            row[crossfade] = click_score(out, block_boundaries(len(out), block))
            if crossfade:
                row["control"] = click_score(out, block_boundaries(len(out), block, offset=block // 2))
        print(f"  {block_ms:8d} {row[True]:12.2f} {row[False]:13.2f} {row['control']:17.2f}")


# --- the Serve path ------------------------------------------------------------------------------------------------
async def serve_voice(app: ServeApp, x: np.ndarray, seconds: float) -> dict[str, Any]:
    client = await BenchClient.connect(app)
    try:
        hello = await client.next_json("hello")
        block = hello["audio"]["chunk_ms"] * SAMPLE_RATE // 1000
        idle_pings = await client.ping_rtts(PINGS)
        chunk = SEND_CHUNK_MS * SAMPLE_RATE // 1000
        repeats = int(np.ceil(seconds * SAMPLE_RATE / len(x)))
        audio = np.tile(x, repeats)[: int(seconds * SAMPLE_RATE) // chunk * chunk]
        sent_at: dict[int, float] = {}
        replies: list[tuple[int, float, int, bytes]] = []  # (seq, latency ms, flags, payload)
        receiver = asyncio.create_task(_collect(client, sent_at, replies, len(audio) // block))
        start = time.perf_counter()
        capture0 = 10_000_000
        for seq, offset in enumerate(range(0, len(audio), chunk)):
            due = start + offset / SAMPLE_RATE
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            capture_us = capture0 + offset * 1_000_000 // SAMPLE_RATE
            sent_at[seq] = time.perf_counter()
            pcm = float_to_pcm16(audio[offset : offset + chunk])
            await client.socket.send(protocol.pack(Kind.AUDIO, seq, capture_us, pcm))
            if seq % 10 == 5:  # a ping now and then, under load
                sent_at[-seq - 1] = time.perf_counter()
                await client.socket.send(protocol.dumps({"type": "ping", "t": f"load-{seq}"}))
        try:
            await asyncio.wait_for(receiver, REPLY_DRAIN_S)
        except TimeoutError:
            print(f"  warning: only {len(replies)} of {len(audio) // block} blocks came back")
        stats = await client.next_json("stats", timeout_s=5, after=time.perf_counter())
        load_pings = [
            _ms(at - sent_at[-int(m["t"].split("-")[1]) - 1])
            for at, m in client.texts
            if m.get("type") == "pong" and str(m.get("t", "")).startswith("load-")
        ]
    finally:
        await client.close()
    return {
        "block": block,
        "hello": hello,
        "idle_pings": idle_pings,
        "load_pings": load_pings,
        "replies": replies,
        "stats": stats,
        "sent": len(audio),
    }


async def _collect(
    client: BenchClient, sent_at: dict[int, float], replies: list[tuple[int, float, int, bytes]], expected: int
) -> None:
    while len(replies) < expected:
        received = await client.media.get()
        media = received.media
        if media.kind == Kind.AUDIO:
            replies.append((media.seq, _ms(received.at - sent_at[media.seq]), media.flags, media.payload))


def report_serve(
    run: dict[str, Any], settings: MirageSettings, world: dict[int, tuple[float, float]]
) -> tuple[float, float]:
    """Prints the Serve figures; returns the Serve overhead beyond compute and network (ms, p50 and p95)."""
    block = run["block"]
    hold = _stream(settings, settings.chunk_ms).latency_samples
    kinds: dict[str, list[float]] = {"converted": [], "gated (silence, no converter call)": [], "passthrough": []}
    out = []
    for index, (_seq, latency, flags, payload) in enumerate(run["replies"]):
        samples = pcm16_to_float(payload)
        out.append(samples)
        if index < FIRST_BLOCKS:
            continue  # the session's first second: reported on its own below
        if flags & protocol.FLAG_PASSTHROUGH:
            kinds["passthrough"].append(latency)
        elif not np.any(samples[hold:]):
            kinds["gated (silence, no converter call)"].append(latency)
        else:
            kinds["converted"].append(latency)
    every = [latency for _, latency, _, _ in run["replies"]]
    first = ", ".join(
        f"{latency:.0f}{'(p)' if flags & protocol.FLAG_PASSTHROUGH else ''}"
        for _, latency, flags, _ in run["replies"][:FIRST_BLOCKS]
    )
    print(
        f"\n(2) Serve path: {run['sent'] / SAMPLE_RATE:.1f} s of speech sent in real time as {SEND_CHUNK_MS} ms"
        f" chunks; server block {run['hello']['audio']['chunk_ms']} ms; {len(run['replies'])} blocks back"
    )
    print(f"  first {FIRST_BLOCKS} blocks of the session, ms in order ((p) = passthrough flag): {first}")
    print(f"  {'per-block latency (send of completing chunk -> reply)':58s} {'n':>4s} {'p50 ms':>7s} {'p95 ms':>7s}")
    steady = [("after the first blocks: " + name, values) for name, values in kinds.items()]
    for name, values in [("every block, first ones included", every), *steady]:
        if values:
            p50, p95 = p50_p95(values)
            print(f"  {name:58s} {len(values):4d} {p50:7.1f} {p95:7.1f}")
    idle50, idle95 = p50_p95(run["idle_pings"])
    load50, load95 = p50_p95(run["load_pings"])
    print(f"  ping/pong round trip: idle p50 {idle50:.1f} / p95 {idle95:.1f} ms; while streaming p50 {load50:.1f}"
          f" / p95 {load95:.1f} ms ({len(run['load_pings'])} pings)")  # fmt: skip
    stats = run["stats"]
    audio_t = stats["timings_ms"].get("audio", {})
    print(
        f"  stats: chunks in {stats['audio']['chunks_in']}, out {stats['audio']['chunks_out']}, accept ratio"
        f" {stats['audio']['accept_ratio']}, runtime/real mean {stats['ratio'].get('audio')}, chunk_ms"
        f" {stats['audio']['chunk_ms']}, samples in/out {stats['audio']['samples_in']}/"
        f"{stats['audio']['samples_out']}, failed {stats['audio']['failed']}"
    )
    print(f"  session-measured audio timings (ms p50/p95; convert = through the Voice handle): {audio_t}")
    joined = np.concatenate(out) if out else np.zeros(0, np.float32)
    on_boundary = click_score(joined, block_boundaries(len(joined), block))
    control = click_score(joined, block_boundaries(len(joined), block, offset=block // 2))
    print(
        f"  click score of the audio Serve sent back (crossfade on): boundaries {on_boundary:.2f},"
        f" mid-block control {control:.2f}"
    )
    nan = (float("nan"), float("nan"))
    converted50, converted95 = p50_p95(kinds["converted"]) if kinds["converted"] else nan
    world50, world95 = world.get(settings.chunk_ms, nan)
    overhead50, overhead95 = converted50 - world50 - idle50, converted95 - world95 - idle95
    print(
        f"  converted p50 {converted50:.1f} ms = WORLD in-process {world50:.1f} + ping round trip {idle50:.1f}"
        f" + Serve overhead {overhead50:.1f} ms (handle hop to Voice, @serve.batch wait, proxy/ingress for the"
        f" 6.4 kB chunk); at p95: {converted95:.1f} = {world95:.1f} + {idle95:.1f} + {overhead95:.1f} ms"
    )
    return overhead50, overhead95


def model_e2e(
    settings: MirageSettings,
    world: dict[int, tuple[float, float]],
    overhead: tuple[float, float],
    rtt: tuple[float, float],
) -> None:
    print(
        "\n(3) modelled end-to-end voice latency = chunk + processing + crossfade hold-back + network"
        " (no client playout buffer)"
    )
    print(
        "    processing = WORLD in-process at that chunk + the Serve overhead measured at the served chunk size"
        " (p95 column: WORLD p95 + overhead at p95; network = idle ping round trip)"
    )
    print(
        f"  {'chunk ms':>8s} {'proc p50':>8s} {'proc p95':>8s} {'hold-back':>9s} {'net p50':>7s}"
        f" {'total p50':>9s} {'total p95':>9s} {'<= ' + str(int(E2E_REFERENCE_MS)) + ' ms':>9s}"
    )
    for block_ms, (p50, p95) in world.items():
        hold_ms = _ms(_stream(settings, block_ms).latency_samples / SAMPLE_RATE)
        proc50, proc95 = p50 + overhead[0], p95 + overhead[1]
        total50 = block_ms + proc50 + hold_ms + rtt[0]
        total95 = block_ms + proc95 + hold_ms + rtt[1]
        verdict = "yes" if total95 <= E2E_REFERENCE_MS else ("p50 only" if total50 <= E2E_REFERENCE_MS else "no")
        print(
            f"  {block_ms:8d} {proc50:8.1f} {proc95:8.1f} {hold_ms:9.0f} {rtt[0]:7.1f} {total50:9.1f}"
            f" {total95:9.1f} {verdict:>9s}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of speech streamed through Serve")
    parser.add_argument("--skip-serve", action="store_true")
    args = parser.parse_args()
    for line in machine_lines():
        print(line)
    settings = MirageSettings()
    ladder = AudioPolicy.from_settings(settings).ladder_ms
    x = speech()
    print(f"speech: {len(x) / SAMPLE_RATE:.2f} s of espeak-ng at 16 kHz; ladder {ladder} ms")
    world = world_ladder(settings, x, ladder)
    overhead, rtt = (0.0, 0.0), (0.0, 0.0)  # --skip-serve: in-process figures only, no hop and no network
    if not args.skip_serve:
        print(f"\nstarting the Serve app ({load_line()}) ...")
        with serve_app() as app:
            print(f"  every deployment RUNNING after {app.start_s:.0f} s")
            run = asyncio.run(serve_voice(app, x, args.seconds))
        overhead = report_serve(run, settings, world)
        rtt = p50_p95(run["idle_pings"])
    model_e2e(settings, world, overhead, rtt)
    clicks(settings, x, ladder)
    print(load_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
