"""Capacity: N concurrent sessions through the running app on loopback, and the same work in one process.

Each session is what a user sends: a 512x512 moving face (scikit-image's astronaut) at 20 fps, real-time speech
(espeak-ng) in 200 ms chunks, and a reference photo (insightface's Tom Hanks) set first. Per N it prints fps out
per session, video round-trip p95, audio block p95 (send of the chunk that completes a block -> that block back),
flagged (fail-closed) replies, sessions refused (1013), and CPU-seconds per session-second of the server's
processes (with the per-process split, from /proc), then the ratio against the same sessions run in one process
(Session + LocalStages, no Ray, no sockets) in the same run. The client runs on the same machine.

    .venv/bin/python -m bench.bench_capacity [--sessions 1 2 3 4 6 8] [--seconds 15] [--set key=value ...]

``--batching`` runs every stage in its model deployment (the A10G profile's shape, on this CPU) twice, batching on
(the profile's batch size) and off (batches of 1), and prints the batches each deployment ran per N.

Nothing is asserted: the figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from actors.launch import _process_tree, launched
from bench.common import (
    AUDIO_CHUNK_MS,
    BENCH_JWT_SECRET,
    CPU_CONFIG,
    FPS,
    SAMPLES_PER_CHUNK,
    LoadMedia,
    LocalBackends,
    ServeApp,
    SessionFigures,
    WireSession,
    load_media,
    machine_lines,
    pct,
)
from mirage_ray.codec import float_to_pcm16
from mirage_ray.config import MirageSettings
from mirage_ray.protocol import Kind, Media

WARM_UP_S = 4.0  # excluded from the figures: reference, first detections, first voice calls
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> dict[int, tuple[str, float]]:
    """pid -> (short process name, user+system CPU seconds so far)."""
    out: dict[int, tuple[str, float]] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[pid] = (process_name(cmdline, stat), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def process_name(cmdline: str, stat: str) -> str:
    for marker in ("Ingress", "Detector", "Swapper", "Enhancer", "Voice", "ProxyActor", "ServeController"):
        if marker in cmdline:
            return marker
    if "ControllerActor" in cmdline:
        return "Controller"
    return stat.split("(", 1)[1].split(")", 1)[0]  # raylet, gcs_server, python (agents), ...


def cpu_split(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    split: dict[str, float] = defaultdict(float)
    for pid, (name, seconds) in after.items():
        split[name] += seconds - before.get(pid, (name, 0.0))[1]
    return dict(split)


async def run_wire(app: ServeApp, temp_dir: str, media: LoadMedia, sessions: int, seconds: float) -> dict[str, Any]:
    start = time.perf_counter()
    measure_from, measure_to = start + WARM_UP_S, start + WARM_UP_S + seconds
    clients = [WireSession(app, media, measure_from, measure_to, i) for i in range(sessions)]
    tasks = [asyncio.create_task(c.run(measure_to + 0.5)) for c in clients]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    pids = _process_tree(temp_dir)
    cpu_before, client_before = cpu_seconds(pids), resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(max(0.0, measure_to - time.perf_counter()))
    cpu_after, client_after = cpu_seconds(_process_tree(temp_dir)), resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*tasks)
    await asyncio.sleep(2.0)  # sessions end and release their slots before the next N
    served = [c.figures for c in clients if c.figures.refused is None]
    split = cpu_split(cpu_before, cpu_after)
    client_cpu = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    return {
        "served": served,
        "refused": [c.figures.refused for c in clients if c.figures.refused is not None],
        "split": split,
        "server_cpu": sum(split.values()),
        "client_cpu": client_cpu,
        "seconds": seconds,
    }


async def run_in_process(settings: MirageSettings, media: LoadMedia, sessions: int, seconds: float) -> dict[str, Any]:
    """The same sessions (reference, 20 fps video, real-time audio) on Session + LocalStages in this process."""
    from mirage_ray.session import Session
    from mirage_ray.stages import StageInfo, Workers

    workers = Workers.from_settings(settings)
    backends = LocalBackends.build(settings)
    stages = backends.stages(settings, workers)
    info = StageInfo.from_report(backends.report(), "pitch-shift")
    figures = [SessionFigures() for _ in range(sessions)]
    start = time.perf_counter()
    measure_from, measure_to = start + WARM_UP_S, start + WARM_UP_S + seconds

    async def one(index: int) -> None:
        session = Session(settings, stages, info, workers, f"local{index}")
        await session.on_reference(Media(Kind.REFERENCE, 0, 0, media.reference))

        async def video() -> None:
            seq = 0
            while (due := start + seq / FPS) < measure_to:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                sent = time.perf_counter()
                replies = await session.on_video(Media(Kind.VIDEO, seq, int(sent * 1e6), media.frames[seq % 40]))
                if measure_from <= sent and any(isinstance(r, Media) for r in replies):
                    figures[index].video_rtt_ms.append((time.perf_counter() - sent) * 1000.0)
                    figures[index].frames_out += 1
                seq += 1

        async def audio() -> None:
            seq = 0
            while (due := start + (seq + 1) * AUDIO_CHUNK_MS / 1000.0) < measure_to:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                offset = (seq * SAMPLES_PER_CHUNK) % (len(media.voice) - SAMPLES_PER_CHUNK)
                sent = time.perf_counter()
                chunk = float_to_pcm16(media.voice[offset : offset + SAMPLES_PER_CHUNK])
                capture_us = int((sent - AUDIO_CHUNK_MS / 1000.0) * 1e6)  # the chunk's first sample, as on the wire
                replies = await session.on_audio(Media(Kind.AUDIO, seq, capture_us, chunk))
                if measure_from <= sent:
                    for reply in replies:
                        if isinstance(reply, Media):
                            figures[index].audio_block_ms.append((time.perf_counter() - sent) * 1000.0)
                            figures[index].audio_blocks += 1
                seq += 1

        await asyncio.gather(video(), audio())

    tasks = [asyncio.create_task(one(i)) for i in range(sessions)]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu_before = time.process_time()
    await asyncio.sleep(max(0.0, measure_to - time.perf_counter()))
    cpu = time.process_time() - cpu_before
    await asyncio.gather(*tasks)
    workers.shutdown()
    return {"served": figures, "refused": [], "split": {"in-process": cpu}, "server_cpu": cpu, "seconds": seconds}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    served: list[SessionFigures] = result["served"]
    seconds = result["seconds"]
    fps = [f.frames_out / seconds for f in served]
    video = [v for f in served for v in f.video_rtt_ms]
    audio = [a for f in served for a in f.audio_block_ms]
    blocks = sum(f.audio_blocks for f in served) or 1
    frames = sum(f.frames_out for f in served) or 1
    session_seconds = max(1, len(served)) * seconds
    return {
        "fps": (min(fps, default=float("nan")), max(fps, default=float("nan"))),
        "video_p95": pct(video, 95),
        "audio_p95": pct(audio, 95),
        "flagged_video": 100.0 * sum(f.flagged_video for f in served) / frames,
        "flagged_audio": 100.0 * sum(f.flagged_audio for f in served) / blocks,
        "max_level": max((max(f.levels, default=0) for f in served), default=0),
        "refused": len(result["refused"]),
        "cpu_per_session_s": result["server_cpu"] / session_seconds,
        "client_cpu_per_session_s": result.get("client_cpu", 0.0) / session_seconds,
    }


def print_row(label: str, n: int, s: dict[str, Any], ratio: float | None) -> None:
    ratio_text = f"{ratio:.2f}" if ratio is not None else "-"
    print(
        f"| {label} | {n} | {s['fps'][0]:.1f}-{s['fps'][1]:.1f} | {s['video_p95']:.0f} | {s['audio_p95']:.0f} | "
        f"{s['flagged_video']:.1f} / {s['flagged_audio']:.1f} | {s['max_level']} | {s['refused']} | "
        f"{s['cpu_per_session_s']:.3f} | {s['client_cpu_per_session_s']:.3f} | {ratio_text} |",
        flush=True,
    )


async def main_async(args: argparse.Namespace) -> None:
    media = load_media()
    sets = list(args.set)
    settings = MirageSettings(**{k: v for k, v in _parse_sets(sets).items() if k in MirageSettings.model_fields})
    settings = settings.model_copy(update=_cpu_profile_args()) if args.in_process else settings
    print("\n".join(machine_lines()))
    load = f"{FPS:.0f} fps 512x512 moving face + real-time speech ({AUDIO_CHUNK_MS} ms chunks) + reference"
    window = f"{args.seconds:.0f} s measured after {WARM_UP_S:.0f} s warm-up"
    print(f"load per session: {load}; {window}; the client on this machine")
    print(
        "| path | N | fps out per session (min-max) | video p95 ms | audio block p95 ms | flagged % video / audio "
        "| worst level | refused | server CPU-s per session-s | client CPU-s per session-s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    baseline: dict[int, float] = {}
    for n in args.in_process:
        s = summarise(await run_in_process(settings, media, n, args.seconds))
        baseline[n] = s["cpu_per_session_s"]
        print_row("one process", n, s, None)
    env = {"MIRAGE_JWT_SECRET": BENCH_JWT_SECRET}
    config = profile_variant(args.ingress_replicas)
    for label, variant in serve_variants(sets, args.batching):
        print(f"config: {CPU_CONFIG.name}, Ingress replicas {args.ingress_replicas}, sets {variant or 'none'}")
        with launched(config, sets=variant, num_cpus=2, env=env, timeout_s=300) as ready:
            app = ServeApp(ready["url"], ready["url"].replace("http://", "ws://") + "ws", ready["ray_address"], 0.0)
            splits, moves = {}, {}
            for n in args.sessions:
                batches_before = batch_sizes(ready["ray_address"]) if args.batching else {}
                result = await run_wire(app, ready["temp_dir"], media, n, args.seconds)
                s = summarise(result)
                near = min(baseline, key=lambda b: abs(b - n)) if baseline else None
                reference = baseline.get(n) or (baseline[near] if near is not None else None)
                print_row(label, n, s, s["cpu_per_session_s"] / reference if reference else None)
                if args.batching:
                    print(
                        f"   batches during N={n}: {batch_summary(batches_before, batch_sizes(ready['ray_address']))}"
                    )
                splits[n] = result["split"]
                if result["refused"]:
                    print(f"   refused at N={n}: {sorted(set(result['refused']))}", flush=True)
                moves[n] = [r for f in result["served"] for r in f.reasons]
            print("\nserver CPU by process (cores, i.e. CPU-s per wall-s):")
            for n, split in splits.items():
                parts = sorted(split.items(), key=lambda kv: -kv[1])
                print(f"N={n}: " + ", ".join(f"{name} {sec / args.seconds:.2f}" for name, sec in parts if sec > 0.005))
            print("\nwhy the ladder moved (directive reasons, all sessions):")
            for n, reasons in moves.items():
                print(f"N={n}: {dict(Counter(reasons))}")


BATCHED_DEPLOYMENTS = ("Detector", "Swapper", "Voice")


def serve_variants(sets: list[str], batching: bool) -> list[tuple[str, list[str]]]:
    """(row label, application sets) per Serve run: the profile as it is, or (``--batching``) every stage in its
    model deployment with batching on (the profile's batch size) and off (batches of 1)."""
    if not batching:
        return [("Serve", sets)]
    deployments = [*sets, "local_stages=[]"]
    return [("Serve, batching on", deployments), ("Serve, batching off", [*deployments, "batch_max_size=1"])]


def batch_sizes(ray_address: str) -> dict[str, dict[int, int]]:
    """How many batches of each size every model deployment has run (its ``batching()`` report, via its handle)."""
    code = (
        "import json, ray\nfrom ray import serve\n"
        f"ray.init(address={ray_address!r}, log_to_driver=False, logging_level='ERROR')\n"
        f"names = {BATCHED_DEPLOYMENTS!r}\n"
        "print(json.dumps({n: serve.get_deployment_handle(n, app_name='mirage').batching.remote().result().sizes"
        " for n in names}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    reports = json.loads(result.stdout.strip().splitlines()[-1])
    return {name: {int(size): count for size, count in sizes.items()} for name, sizes in reports.items()}


def batch_summary(before: dict[str, dict[int, int]], after: dict[str, dict[int, int]]) -> str:
    """Per deployment: calls, batches and mean batch size between two reports."""
    parts = []
    for name, sizes in after.items():
        delta = {size: count - before.get(name, {}).get(size, 0) for size, count in sizes.items()}
        batches = sum(delta.values())
        calls = sum(size * count for size, count in delta.items())
        mean = calls / batches if batches else 0.0
        parts.append(f"{name} {calls} calls in {batches} batches (mean {mean:.2f}, largest {max(delta, default=0)})")
    return "; ".join(parts)


def profile_variant(ingress_replicas: int) -> Path:
    """serve_config.cpu.yaml, or a copy of it with another number of Ingress replicas (to compare placements)."""
    if ingress_replicas == 1:
        return CPU_CONFIG
    import tempfile

    import yaml

    config = yaml.safe_load(CPU_CONFIG.read_text())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Ingress":  # a fixed count on one machine: no autoscaling, no one-per-node rule
            deployment.pop("autoscaling_config", None)
            deployment.pop("max_replicas_per_node", None)
            deployment["num_replicas"] = ingress_replicas
    target = Path(tempfile.mkdtemp(prefix="mirage-bench-")) / "serve_config.cpu.yaml"
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def _parse_sets(items: list[str]) -> dict[str, Any]:
    import yaml

    return {k.strip(): yaml.safe_load(v) for k, _, v in (item.partition("=") for item in items)}


def _cpu_profile_args() -> dict[str, Any]:
    """The CPU profile's application args (serve_config.cpu.yaml), so the in-process run does the same work."""
    import yaml

    args = yaml.safe_load(CPU_CONFIG.read_text())["applications"][0].get("args", {})
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items() if k in MirageSettings.model_fields}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--in-process", type=int, nargs="*", default=[1, 4], help="baseline session counts")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--set", action="append", default=[], help="application arg key=value (repeatable)")
    parser.add_argument("--ingress-replicas", type=int, default=1, help="compare with more Ingress replicas")
    parser.add_argument(
        "--batching", action="store_true", help="every stage in its deployment, batching on and off (batch sizes)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the app it started (launched's finally) on kill
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
