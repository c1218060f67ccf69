"""Degrade/restore under a slowed stage, the controller actor's restarts, and live metrics (issue: sync, controller,
metrics). Audio flows throughout and every sample is accounted for."""

from __future__ import annotations

import asyncio
import json
import time

import cv2
import httpx
import pytest

from mirage_ray.adapt import build_ladder
from mirage_ray.codec import decode_image, encode_jpeg, float_to_pcm16, resize_max_side
from mirage_ray.protocol import Kind
from tests.conftest import ServeApp
from tests.integration.client import Client, ray_snippet, set_stage_delay
from tests.media import insightface_image, moving_face_frames
from tests.speech import speech

pytestmark = pytest.mark.integration
SEND_CHUNK = 200 * 16  # samples per audio message (200 ms)
MAX_BLOCK = 480 * 16  # the largest block the audio adaptation may reach
SLOW_SWAP_MS = 120.0


class Streamer:
    """Sends real speech (real time) and a moving face on one client's shared clock, following the directives (fps,
    size, JPEG quality) as the page does."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.start = time.monotonic()
        self.audio_sent = 0
        self.fps = 20.0
        self._stop = asyncio.Event()
        self._voice = speech()
        self._faces = [decode_image(f, 512 * 512) for f in moving_face_frames(40, step_px=2)]
        self._encoded: dict[tuple[int, int, int], bytes] = {}

    def frame(self, seq: int, max_side: int, quality: int) -> bytes:
        """Frame ``seq`` of the moving face at the directed size and quality (each encoded once)."""
        key = (seq % len(self._faces), max_side, quality)
        if key not in self._encoded:
            self._encoded[key] = encode_jpeg(resize_max_side(self._faces[key[0]], max_side), quality)
        return self._encoded[key]

    def now_us(self) -> int:
        return int((time.monotonic() - self.start) * 1e6)

    async def audio(self) -> None:
        seq = 0
        while not self._stop.is_set():
            offset = (seq * SEND_CHUNK) % (len(self._voice) - SEND_CHUNK)
            await asyncio.sleep(max(0.0, self.start + (seq + 1) * 0.2 - time.monotonic()))
            capture = self.now_us() - 200_000  # the chunk's first sample was captured 200 ms ago
            await self.client.send(Kind.AUDIO, seq, capture, float_to_pcm16(self._voice[offset : offset + SEND_CHUNK]))
            self.audio_sent += SEND_CHUNK
            seq += 1

    async def video(self) -> None:
        seq = 0
        max_side, quality = 512, 85
        while not self._stop.is_set():
            directives = [d for d in self.client.json["directive"] if "video" in d]
            if directives:
                level = directives[-1]["video"]
                self.fps, max_side, quality = level["fps"], max(level["width"], level["height"]), level["jpeg_quality"]
            await self.client.send(Kind.VIDEO, seq, self.now_us(), self.frame(seq, max_side, quality))
            seq += 1
            await asyncio.sleep(1.0 / self.fps)

    def run(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self.audio()), asyncio.create_task(self.video())]

    async def stop(self, tasks: list[asyncio.Task]) -> None:
        self._stop.set()
        await asyncio.gather(*tasks)


def received_audio(client: Client) -> int:
    return sum(len(m.payload) // 2 for m in client.media[Kind.AUDIO])


async def test_slowed_swapper_steps_down_the_ladder_in_order_then_restores(serve_app: ServeApp) -> None:
    ladder = build_ladder(512, 512, 20.0, 85)
    client = await Client.open(serve_app, serve_app.token())
    streamer = Streamer(client)
    tasks = streamer.run()
    try:
        await client.next_json("hello")
        set_stage_delay(serve_app, "Swapper", SLOW_SWAP_MS)
        video_levels = lambda: [d["video"] for d in client.json["directive"] if "video" in d]  # noqa: E731
        # the swapper runs only with a reference: set one so every frame pays the slowed stage
        _, png = cv2.imencode(".png", insightface_image("Tom_Hanks_54745.png"))
        await client.send(Kind.REFERENCE, 0, 0, png.tobytes())
        await client.next_json("reference", 60)
        first_resolution_step = next(lv.index for lv in ladder if lv.max_side < 512)
        await client.wait_for(lambda: len(video_levels()) >= first_resolution_step, 90, "degrade to 384 px")
        steps = video_levels()[:first_resolution_step]
        assert steps == [lv.as_directive() for lv in ladder[1 : first_resolution_step + 1]]  # quality, fps, size
        # JPEG quality steps come first, then fps toward 15, then resolution
        assert [s["jpeg_quality"] for s in steps[:3]] == [75, 65, 55] and steps[4]["fps"] == 15.0
        # frames processed before the delay is lifted: none of them can count toward the 300 stable ones
        stats_before = client.json["stats"][-1]["frames"]["out"]
        lifted_at = client.json["stats"][-1]["_arrival"]
        set_stage_delay(serve_app, "Swapper", 0.0)
        try:
            await client.wait_for(
                lambda: any(d.get("reason") == "restore" for d in client.json["directive"]), 180, "a restore directive"
            )
        except AssertionError:
            last = client.json["stats"][-1]
            recent = [d.get("reason") for d in client.json["directive"] if "video" in d][-3:]
            if recent and all(r == "request:audio over budget" for r in recent):
                # audio first, working as designed: on a machine this slow the voice keeps missing its budget and
                # video keeps yielding, so a restore cannot be observed here (the rule is unit-tested)
                pytest.skip(f"no restore observable: audio over budget throughout; last stats ratio {last['ratio']}")
            raise AssertionError(
                f"no restore; directives {client.json['directive']}; last stats: ratio {last['ratio']}, "
                f"timings {last['timings_ms']}, frames {last['frames']}, fps_out {last['fps_out']}"
            ) from None
        restore = next(d for d in client.json["directive"] if d.get("reason") == "restore")
        level_before = max(lv.index for lv in ladder if lv.as_directive() in video_levels()[:-1])
        assert restore["video"] == ladder[level_before - 1].as_directive()  # one level back up, in reverse order
        await client.wait_for(lambda: client.json["stats"][-1]["frames"]["out"] > stats_before, 5, "fresh stats")
        # the 300-stable-frame rule itself is the policy's (tests/unit/test_adapt_video.py); through Serve on a busy
        # machine the ladder may go below 15 fps, where a 120 ms swap is within budget, so the count is not checked
        # here: only that the restore came after the delay was lifted
        assert restore["_arrival"] > lifted_at
    finally:
        set_stage_delay(serve_app, "Swapper", 0.0)
        await streamer.stop(tasks)
    # audio flowed throughout: every sample accounted for (server counted all of them; all complete blocks came back)
    await client.wait_for(
        lambda: any(m["audio"]["samples_in"] == streamer.audio_sent for m in client.json["stats"]), 10, "final stats"
    )
    final = next(m["audio"] for m in client.json["stats"] if m["audio"]["samples_in"] == streamer.audio_sent)
    await client.wait_for(lambda: received_audio(client) >= final["samples_out"], 10, "the last audio replies")
    assert received_audio(client) == final["samples_out"]
    assert streamer.audio_sent - received_audio(client) < MAX_BLOCK
    await client.close()


async def test_session_survives_a_controller_kill_and_the_controller_comes_back(serve_app: ServeApp) -> None:
    client = await Client.open(serve_app, serve_app.token())
    streamer = Streamer(client)
    tasks = streamer.run()
    try:
        await client.next_json("hello")
        await client.wait_for(lambda: len(client.json["stats"]) >= 2, 10, "two stats (controller pushes)")
        before = json.loads(
            ray_snippet(
                serve_app,
                "import json\nh = ray.get_actor('mirage_controller', namespace='mirage')\n"
                "print(json.dumps(ray.get(h.snapshot.remote())))\n"
                "ray.kill(h, no_restart=False)",
            )
        )
        audio_at_kill = received_audio(client)
        video_at_kill = len(client.media[Kind.VIDEO])
        await client.wait_for(
            lambda: (
                received_audio(client) > audio_at_kill + 16000 and len(client.media[Kind.VIDEO]) > video_at_kill + 10
            ),
            30,
            "audio and video after the kill",
        )
        after = json.loads(
            ray_snippet(
                serve_app,
                "import json, time\n"
                "for _ in range(60):\n"
                "    try:\n"
                "        h = ray.get_actor('mirage_controller', namespace='mirage')\n"
                "        s = ray.get(h.snapshot.remote(), timeout=5)\n"
                "        if s['sessions'] >= 1: break\n"
                "    except Exception: pass\n"
                "    time.sleep(0.5)\n"
                "print(json.dumps(s))",
            )
        )
        assert after["started_at"] > before["started_at"]  # a new incarnation
        assert after["sessions"] >= 1  # rebuilt from the sessions' next pushes
        assert all(m.get("code") != "internal" for m in client.json["error"])
    finally:
        await streamer.stop(tasks)
        await client.close()


async def test_stats_endpoint_and_ray_metrics_show_live_values(serve_app: ServeApp) -> None:
    client = await Client.open(serve_app, serve_app.token())
    streamer = Streamer(client)
    tasks = streamer.run()
    try:
        await client.next_json("hello")
        await client.wait_for(lambda: len(client.media[Kind.VIDEO]) >= 20, 30, "20 video replies")
        stats = httpx.get(serve_app.url + "v1/stats", timeout=10).json()
        assert stats["sessions"] >= 1
        mine = [s for s in stats["per_session"].values() if s["frames"]["out"] > 0]
        assert mine and mine[0]["audio"]["chunks_in"] > 0
        assert "video" in mine[0]["timings_ms"] and "decode" in mine[0]["timings_ms"]["video"]
        wanted = [
            "mirage_video_frames_processed",
            "mirage_audio_chunks_processed",
            "mirage_stage_ms",
            "mirage_runtime_ratio",
            "mirage_detector_interval_frames",
            "mirage_queue_backlog",
        ]
        metrics_url = f"http://127.0.0.1:{serve_app.metrics_port}/metrics"
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = httpx.get(metrics_url, timeout=10).text
            if all(name in text for name in wanted):
                break
            await asyncio.sleep(2)
        missing = [name for name in wanted if name not in text]
        assert not missing, f"not on Ray's metrics endpoint: {missing}"
        processed = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(("ray_mirage_video_frames_processed", "mirage_video_frames_processed"))
        ]
        assert processed and max(processed) > 0
    finally:
        await streamer.stop(tasks)
        await client.close()
